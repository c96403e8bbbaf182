//! Compiles the BPF C programs with clang and generates their libbpf-rs
//! skeletons into OUT_DIR.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["netscope", "testprogs"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH is set by cargo");
    // The UAPI headers include <asm/types.h>, which lives in the multiarch
    // directory on Debian and Ubuntu.
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        other => panic!("netscope-bpf: no multiarch include path known for target arch {other}"),
    };
    let clang = env::var_os("CLANG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("clang"));

    println!("cargo:rerun-if-changed=src/bpf/netscope.h");
    println!("cargo:rerun-if-env-changed=CLANG");
    for name in PROGRAMS {
        let src = format!("src/bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args([
                "-O2".to_string(),
                "-g".to_string(),
                "-Wall".to_string(),
                "-Werror".to_string(),
                format!("-I/usr/include/{multiarch}"),
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| {
                panic!(
                    "netscope-bpf: building {src} failed: {e:#}\n\
                     (needs clang and the kernel UAPI headers: run `make deps`)"
                )
            });
    }
}
