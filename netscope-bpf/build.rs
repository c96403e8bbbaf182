//! Compiles the BPF C programs with clang and generates their libbpf-rs
//! skeletons into OUT_DIR.
//!
//! Environment:
//! - `CLANG`: the clang to use (default `clang` on `PATH`).
//! - `NETSCOPE_BPF_INCLUDE`: an extra include directory for the UAPI headers'
//!   `<asm/types.h>` (default: the multiarch directory clang or cc reports,
//!   `/usr/include/<triple>`, when it exists).
//! - `NETSCOPE_BPF_WERROR=1`: compile with `-Werror` (this workspace's own
//!   `make` targets set it; a consumer's build never fails on a new warning
//!   of a newer clang).
//!
//! The helper programs of `src/bpf/testprogs.bpf.c` are compiled only with
//! the `testing` feature.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = env::var_os("CLANG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("clang"));

    println!("cargo:rerun-if-changed=src/bpf/netscope.h");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=NETSCOPE_BPF_INCLUDE");
    println!("cargo:rerun-if-env-changed=NETSCOPE_BPF_WERROR");

    let mut args = vec!["-O2".to_string(), "-g".to_string(), "-Wall".to_string()];
    if env::var("NETSCOPE_BPF_WERROR").is_ok_and(|v| v == "1") {
        args.push("-Werror".to_string());
    }
    match include_dir(&clang) {
        Some(dir) => args.push(format!("-I{}", dir.display())),
        None => println!(
            "cargo:warning=netscope-bpf: no multiarch include directory found; \
             relying on clang's default include path for <asm/types.h> \
             (set NETSCOPE_BPF_INCLUDE if the build cannot find it)"
        ),
    }

    let mut programs = vec!["netscope"];
    if env::var_os("CARGO_FEATURE_TESTING").is_some() {
        if !Path::new("src/bpf/testprogs.bpf.c").exists() {
            panic!(
                "netscope-bpf: the `testing` feature needs the test harness, which only \
                 netscope's own repository has (the published crate leaves it out)"
            );
        }
        programs.push("testprogs");
    }
    for name in programs {
        let src = format!("src/bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args(&args)
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| {
                panic!(
                    "netscope-bpf: building {src} failed: {e:#}\n\
                     (needs clang and the kernel UAPI headers, e.g. Debian's \
                     clang and linux-libc-dev; see NETSCOPE_BPF_INCLUDE above)"
                )
            });
    }
}

/// The directory holding `<asm/types.h>` for the target: the override, or
/// `/usr/include/<multiarch triple>` as clang (`-print-multiarch`) or the C
/// compiler (`-dumpmachine`) names it, if that directory exists. `None`
/// leaves clang's default search path (enough where asm/ is not split out).
fn include_dir(clang: &Path) -> Option<PathBuf> {
    if let Some(dir) = env::var_os("NETSCOPE_BPF_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    // Cross builds: the host tools would name the host's directory.
    if env::var("TARGET").ok() != env::var("HOST").ok() {
        let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
        let dir = Path::new("/usr/include").join(format!("{arch}-linux-gnu"));
        return dir.join("asm").is_dir().then_some(dir);
    }
    let asks: [(&Path, &str); 2] = [
        (clang, "-print-multiarch"),
        (Path::new("cc"), "-dumpmachine"),
    ];
    for (tool, flag) in asks {
        let Ok(out) = Command::new(tool).arg(flag).output() else {
            continue;
        };
        let triple = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || triple.is_empty() {
            continue;
        }
        let dir = Path::new("/usr/include").join(&triple);
        if dir.join("asm").is_dir() {
            return Some(dir);
        }
    }
    None
}
