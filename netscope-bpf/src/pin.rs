//! Kernel state that outlives the agent (issue 15): the flow tables, the
//! control maps and the TCX links pinned in bpffs under a layout-versioned
//! directory, `<pin root>/v<LAYOUT>/`.
//!
//! ```text
//! /sys/fs/bpf/netscope/v2/
//!   meta          array map: magic, layout version, max_flows, key size, slot size, CPUs
//!   flow_slots flow_index slot_alloc flow_cache data_ctl bss
//!   links/<ifindex>-<ingress|egress>    TCX links (kernel 6.6+)
//! ```
//!
//! A starting agent checks `meta` (never assumes) before it adopts the maps;
//! libbpf checks type, key, value and capacity again when it reuses them.
//! The pin directory is written last-meta-first-gone: `meta` is pinned after
//! every map, and removed before them, so a directory with `meta` is complete.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use netscope::Direction;

use crate::maps::{KEY_SIZE, SLOT_SIZE};
use crate::sys;

/// Version of the pinned layout (map set, key and value formats). A build
/// whose layout differs pins under another `v<N>` directory and takes over
/// from the `v<N-1>` one (see docs/restarts.md).
///
/// - 1: per-CPU hash flow tables `flows_a`/`flows_b` behind `flow_tables`.
/// - 2: mmap-able slot array `flow_slots`, LRU index `flow_index`, slot
///   allocators, a cache entry per side and direction (issue 20: a drain
///   reads memory instead of walking hash buckets).
pub const LAYOUT_VERSION: u32 = 2;

/// Test-only: makes this build present itself as another layout version
/// (to exercise the upgrade path without a second build). Never set it in
/// production.
pub const LAYOUT_VERSION_ENV: &str = "NETSCOPE_TEST_LAYOUT_VERSION";

/// The maps that are pinned, by their names in the BPF object.
pub const PINNED_MAPS: [&str; 6] = [
    "flow_slots",
    "flow_index",
    "slot_alloc",
    "flow_cache",
    "data_ctl",
    "bss",
];
/// Maps earlier layouts pinned (layout 1): removed with their directory.
const OLDER_MAPS: [&str; 3] = ["flows_a", "flows_b", "flow_tables"];

/// Every map name a netscope layout pins, meta first (a directory without
/// meta is never adopted).
fn all_map_names() -> impl Iterator<Item = &'static str> {
    std::iter::once(META).chain(PINNED_MAPS).chain(OLDER_MAPS)
}
/// Name of the meta map's pin.
pub const META: &str = "meta";
/// Subdirectory of the TCX link pins.
pub const LINKS: &str = "links";

/// `"NETSCOPE"` in little-endian bytes.
const MAGIC: u64 = u64::from_le_bytes(*b"NETSCOPE");
/// Size of the meta value.
const META_SIZE: usize = 64;

/// The layout version this process uses (the build's, unless overridden by
/// [`LAYOUT_VERSION_ENV`]).
pub fn layout_version() -> u32 {
    std::env::var(LAYOUT_VERSION_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&v| v >= 1)
        .unwrap_or(LAYOUT_VERSION)
}

/// Errors of the pin directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The pin root is not on a bpffs mount.
    #[error("{path} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf, or --pin-root \"\" to run without pinning)")]
    NotBpffs {
        /// The path.
        path: PathBuf,
    },
    /// A filesystem or bpf syscall failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Something pinned there is not netscope's, or not this layout.
    #[error("{path}: {reason}; not adopting it (remove it, or run netscope-agent --cleanup if it is netscope's)")]
    Foreign {
        /// The path.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the meta map records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Layout version.
    pub layout: u32,
    /// Flow-table capacity (without the overflow slot).
    pub max_flows: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size of the flow table (layout 1: per-CPU value; layout 2:
    /// slot).
    pub value_size: u32,
    /// Possible CPUs when the maps were made.
    pub ncpus: u32,
}

impl Meta {
    fn encode(&self) -> [u8; META_SIZE] {
        let mut v = [0u8; META_SIZE];
        v[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        v[8..12].copy_from_slice(&self.layout.to_le_bytes());
        v[12..16].copy_from_slice(&self.max_flows.to_le_bytes());
        v[16..20].copy_from_slice(&self.key_size.to_le_bytes());
        v[20..24].copy_from_slice(&self.value_size.to_le_bytes());
        v[24..28].copy_from_slice(&self.ncpus.to_le_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Meta> {
        let u32_at = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
        if v.len() < META_SIZE || u64::from_le_bytes(v[0..8].try_into().ok()?) != MAGIC {
            return None;
        }
        Some(Meta {
            layout: u32_at(8),
            max_flows: u32_at(12),
            key_size: u32_at(16),
            value_size: u32_at(20),
            ncpus: u32_at(24),
        })
    }

    /// The meta of this build for `max_flows` and `ncpus`.
    pub fn current(layout: u32, max_flows: u32, ncpus: usize) -> Meta {
        Meta {
            layout,
            max_flows,
            key_size: KEY_SIZE as u32,
            value_size: SLOT_SIZE as u32,
            ncpus: ncpus as u32,
        }
    }
}

/// A layout-versioned pin directory.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
    layout: u32,
}

impl PinDir {
    /// The directory for this process's layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> PinDir {
        PinDir {
            root: root.into(),
            layout: layout_version(),
        }
    }

    /// The directory of another layout under `root` (to read an older
    /// agent's maps during an upgrade).
    pub fn with_layout(root: impl Into<PathBuf>, layout: u32) -> PinDir {
        PinDir {
            root: root.into(),
            layout,
        }
    }

    /// The pin root (`--pin-root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This layout's directory, `<root>/v<N>`.
    pub fn dir(&self) -> PathBuf {
        self.root.join(format!("v{}", self.layout))
    }

    /// The layout version.
    pub fn layout(&self) -> u32 {
        self.layout
    }

    /// The pin of map `name`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// The pin of the TCX link of `ifindex`/`direction`.
    pub fn link_path(&self, ifindex: u32, direction: Direction) -> PathBuf {
        link_path(&self.dir(), ifindex, direction)
    }

    /// Creates the root and this layout's directory (mode 0700) and checks
    /// that they are on bpffs.
    ///
    /// # Errors
    /// [`PinError::NotBpffs`], or the filesystem's error naming the path.
    pub fn prepare(&self) -> Result<(), PinError> {
        use std::os::unix::fs::DirBuilderExt;
        // Never create directories outside bpffs (under /sys, say, where
        // bpffs is not mounted): the nearest existing ancestor must be on it.
        let existing = self
            .root
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if !sys::is_bpffs(existing).map_err(io_err("statfs", existing))? {
            return Err(PinError::NotBpffs {
                path: self.root.clone(),
            });
        }
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(&self.root)
            .map_err(io_err("creating the pin root", &self.root))?;
        if !sys::is_bpffs(&self.root).map_err(io_err("statfs", &self.root))? {
            return Err(PinError::NotBpffs {
                path: self.root.clone(),
            });
        }
        let links = self.dir().join(LINKS);
        b.create(&links)
            .map_err(io_err("creating the pin directory", &links))?;
        Ok(())
    }

    /// Reads and checks this layout's meta. `Ok(None)` when the directory
    /// holds no meta (nothing to adopt).
    ///
    /// # Errors
    /// [`PinError::Foreign`] when `meta` is no netscope meta map of this
    /// layout, or a map pin is missing or of another kind.
    pub fn check_existing(&self, want: &Meta) -> Result<Option<Meta>, PinError> {
        let path = self.map_path(META);
        let fd = match sys::obj_get(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.check_no_stray_maps()?;
                return Ok(None);
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let meta = read_meta(fd.as_fd(), &path)?;
        if meta.layout != want.layout
            || meta.key_size != want.key_size
            || meta.value_size != want.value_size
            || meta.ncpus != want.ncpus
        {
            return Err(PinError::Foreign {
                path,
                reason: format!("pinned layout {meta:?} differs from this agent's {want:?}"),
            });
        }
        for name in PINNED_MAPS {
            let p = self.map_path(name);
            let fd = sys::obj_get(&p).map_err(|e| PinError::Foreign {
                path: p.clone(),
                reason: format!("the map is missing or unreadable ({e}) next to a complete meta"),
            })?;
            sys::map_info(fd.as_fd()).map_err(|e| PinError::Foreign {
                path: p.clone(),
                reason: format!("not a BPF map ({e})"),
            })?;
        }
        Ok(Some(meta))
    }

    /// Without meta, the directory may hold maps of an agent killed while
    /// pinning (meta goes last): those are removed. Anything else is refused.
    fn check_no_stray_maps(&self) -> Result<(), PinError> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        let mut ours = Vec::new();
        for e in entries {
            let e = e.map_err(io_err("listing", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == LINKS {
                continue;
            }
            if !PINNED_MAPS.contains(&name.as_str()) {
                return Err(PinError::Foreign {
                    path: e.path(),
                    reason: "an unknown pin in netscope's pin directory, which has no meta".into(),
                });
            }
            ours.push(e.path());
        }
        for p in ours {
            tracing::warn!(path = ?p, "removing a map pinned by an agent that stopped before it finished pinning");
            std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
        }
        Ok(())
    }

    /// Opens the pinned map `name`.
    ///
    /// # Errors
    /// The kernel's error, naming the path.
    pub fn open_map(&self, name: &str) -> Result<OwnedFd, PinError> {
        let p = self.map_path(name);
        sys::obj_get(&p).map_err(io_err("opening", &p))
    }

    /// Pins `fd` as map `name` (replacing nothing: the name must be free).
    ///
    /// # Errors
    /// The kernel's error, naming the path.
    pub fn pin_map(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), PinError> {
        let p = self.map_path(name);
        sys::obj_pin(fd, &p).map_err(io_err("pinning", &p))
    }

    /// Creates and pins the meta map (the last pin of a new directory).
    ///
    /// # Errors
    /// The kernel's error, naming the path.
    pub fn write_meta(&self, meta: &Meta) -> Result<(), PinError> {
        let p = self.map_path(META);
        let fd = sys::array_map_create("netscope_meta", META_SIZE as u32, 1)
            .map_err(io_err("creating the meta map for", &p))?;
        sys::map_update(fd.as_fd(), &0u32.to_ne_bytes(), &meta.encode(), 0)
            .map_err(io_err("writing the meta map for", &p))?;
        sys::obj_pin(fd.as_fd(), &p).map_err(io_err("pinning", &p))
    }

    /// Other layouts' directories under the root (`v<M>`, M != this layout),
    /// oldest first.
    pub fn other_layouts(&self) -> Vec<(u32, PathBuf)> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(v) = name.strip_prefix('v').and_then(|v| v.parse::<u32>().ok()) {
                    if v != self.layout {
                        out.push((v, e.path()));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// The two-phase drain's epoch (bytes 32..40 of the meta value) and the
/// side staged under it and not yet committed (byte 40: 1 = staged, byte 41:
/// the side).
pub(crate) fn read_epoch(meta: BorrowedFd<'_>) -> io::Result<(u64, Option<usize>)> {
    let mut v = [0u8; META_SIZE];
    sys::map_lookup(meta, &0u32.to_ne_bytes(), &mut v)?;
    let epoch = u64::from_le_bytes(v[32..40].try_into().expect("8 bytes"));
    let staged = (v[40] == 1 && v[41] < 2).then_some(usize::from(v[41]));
    Ok((epoch, staged))
}

/// Writes the epoch and staged side into the meta value (the rest kept).
pub(crate) fn write_epoch(
    meta: BorrowedFd<'_>,
    epoch: u64,
    staged: Option<usize>,
) -> io::Result<()> {
    let mut v = [0u8; META_SIZE];
    sys::map_lookup(meta, &0u32.to_ne_bytes(), &mut v)?;
    v[32..40].copy_from_slice(&epoch.to_le_bytes());
    v[40] = u8::from(staged.is_some());
    v[41] = staged.map_or(0, |s| s as u8);
    sys::map_update(meta, &0u32.to_ne_bytes(), &v, 0)
}

fn read_meta(fd: BorrowedFd<'_>, path: &Path) -> Result<Meta, PinError> {
    let info = sys::map_info(fd).map_err(|e| PinError::Foreign {
        path: path.to_path_buf(),
        reason: format!("not a BPF map ({e})"),
    })?;
    if info.map_type != libbpf_sys::BPF_MAP_TYPE_ARRAY
        || info.key_size != 4
        || info.value_size != META_SIZE as u32
        || info.name != "netscope_meta"
    {
        return Err(PinError::Foreign {
            path: path.to_path_buf(),
            reason: format!("not netscope's meta map (kernel says {info:?})"),
        });
    }
    let mut v = [0u8; META_SIZE];
    sys::map_lookup(fd, &0u32.to_ne_bytes(), &mut v).map_err(io_err("reading", path))?;
    Meta::decode(&v).ok_or_else(|| PinError::Foreign {
        path: path.to_path_buf(),
        reason: "the meta map has no netscope magic".into(),
    })
}

/// Reads the meta pinned in layout directory `dir` (for an older layout).
///
/// # Errors
/// [`PinError::Foreign`] when it is not netscope's.
pub fn meta_of(dir: &Path) -> Result<Meta, PinError> {
    let p = dir.join(META);
    let fd = sys::obj_get(&p).map_err(io_err("opening", &p))?;
    read_meta(fd.as_fd(), &p)
}

fn dir_name(direction: Direction) -> &'static str {
    match direction {
        Direction::FromPod => "ingress",
        Direction::ToPod => "egress",
    }
}

/// The pin of a TCX link in layout directory `dir`.
pub fn link_path(dir: &Path, ifindex: u32, direction: Direction) -> PathBuf {
    dir.join(LINKS)
        .join(format!("{ifindex}-{}", dir_name(direction)))
}

fn tcx_attach_type(direction: Direction) -> u32 {
    match direction {
        Direction::FromPod => libbpf_sys::BPF_TCX_INGRESS,
        Direction::ToPod => libbpf_sys::BPF_TCX_EGRESS,
    }
}

/// Opens the TCX link pinned at `path` if it is live on `ifindex` in
/// `direction` and runs a netscope program. A pin whose link is defunct
/// (device gone) or points elsewhere (ifindex reused) is removed.
/// `Ok(None)` when there is no usable pin.
///
/// # Errors
/// A pin that is not a TCX link of a netscope program (something else's),
/// named by path.
pub fn adopt_link(
    path: &Path,
    ifindex: u32,
    direction: Direction,
) -> Result<Option<OwnedFd>, PinError> {
    let fd = match sys::obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let info = sys::link_info(fd.as_fd()).map_err(|e| PinError::Foreign {
        path: path.to_path_buf(),
        reason: format!("not a BPF link ({e})"),
    })?;
    if info.link_type != libbpf_sys::BPF_LINK_TYPE_TCX {
        return Err(PinError::Foreign {
            path: path.to_path_buf(),
            reason: format!("not a TCX link (link type {})", info.link_type),
        });
    }
    // Reading a program's name by id needs CAP_SYS_ADMIN, which the chart
    // does not grant: a name that cannot be read is not held against a
    // TCX link pinned in netscope's own (meta-checked) directory.
    if let Ok(name) = sys::prog_name_by_id(info.prog_id) {
        if !name.starts_with(crate::PROGRAM_NAME_PREFIX) {
            return Err(PinError::Foreign {
                path: path.to_path_buf(),
                reason: format!(
                    "the link runs another tool's program ({name:?}, id {})",
                    info.prog_id
                ),
            });
        }
    }
    if info.ifindex != ifindex || info.attach_type != tcx_attach_type(direction) {
        // Defunct (ifindex 0: the device is gone) or stale after ifindex
        // reuse: the pin holds nothing attached here.
        tracing::info!(path = ?path, link_ifindex = info.ifindex, "removing the pin of a TCX link whose device is gone");
        let _ = sys::link_detach(fd.as_fd());
        std::fs::remove_file(path).map_err(io_err("removing", path))?;
        return Ok(None);
    }
    Ok(Some(fd))
}

/// What [`cleanup`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// TCX links detached and unpinned.
    pub links: Vec<PathBuf>,
    /// Map pins removed.
    pub maps: Vec<PathBuf>,
    /// Directories removed.
    pub dirs: Vec<PathBuf>,
}

/// Detaches and unpins every netscope TCX link and removes every netscope
/// map pin under `root` (every `v<N>` layout), then the emptied
/// directories. Pins that are not netscope's are left alone (and named in
/// the error log); directories that still hold them stay.
///
/// # Errors
/// A filesystem error other than "not found".
pub fn cleanup(root: &Path) -> Result<Cleanup, PinError> {
    let mut out = Cleanup::default();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("listing", root)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err("listing", root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix('v')
            .and_then(|v| v.parse::<u32>().ok())
            .is_none()
        {
            tracing::warn!(path = ?e.path(), "not netscope's: left alone");
            continue;
        }
        let dir = e.path();
        let links = dir.join(LINKS);
        if let Ok(ls) = std::fs::read_dir(&links) {
            for l in ls.flatten() {
                let p = l.path();
                let Ok(fd) = sys::obj_get(&p) else {
                    tracing::warn!(path = ?p, "not a bpf object: left alone");
                    continue;
                };
                // A TCX link in netscope's directory whose program is
                // netscope's, or whose name cannot be read (no CAP_SYS_ADMIN).
                let ours = sys::link_info(fd.as_fd()).ok().is_some_and(|i| {
                    i.link_type == libbpf_sys::BPF_LINK_TYPE_TCX
                        && sys::prog_name_by_id(i.prog_id)
                            .map_or(true, |n| n.starts_with(crate::PROGRAM_NAME_PREFIX))
                });
                // A defunct link has no program any more either: its pin
                // is named like ours and is a TCX link.
                let defunct = sys::link_info(fd.as_fd()).ok().is_some_and(|i| {
                    i.link_type == libbpf_sys::BPF_LINK_TYPE_TCX && i.ifindex == 0
                });
                if !ours && !defunct {
                    tracing::warn!(path = ?p, "not a netscope TCX link: left alone");
                    continue;
                }
                match sys::link_detach(fd.as_fd()) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOLINK) => {
                        return Err(io_err("detaching", &p)(e))
                    }
                    _ => {}
                }
                std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
                out.links.push(p);
            }
            if std::fs::remove_dir(&links).is_ok() {
                out.dirs.push(links);
            }
        }
        remove_map_pins(&dir, &mut out)?;
        if std::fs::remove_dir(&dir).is_ok() {
            out.dirs.push(dir);
        }
    }
    if std::fs::remove_dir(root).is_ok() {
        out.dirs.push(root.to_path_buf());
    }
    Ok(out)
}

/// Removes netscope's map pins (of any layout) from `dir`, meta first: a
/// directory without meta is never adopted. A pin of that name that is no
/// BPF map is left alone.
fn remove_map_pins(dir: &Path, out: &mut Cleanup) -> Result<(), PinError> {
    for name in all_map_names() {
        let p = dir.join(name);
        let Ok(fd) = sys::obj_get(&p) else { continue };
        if sys::map_info(fd.as_fd()).is_err() {
            tracing::warn!(path = ?p, "not a BPF map: left alone");
            continue;
        }
        std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
        out.maps.push(p);
    }
    Ok(())
}

/// Removes one layout directory (after its maps were drained in an
/// upgrade): its remaining links are detached, its pins removed. Returns
/// what went.
///
/// # Errors
/// As [`cleanup`].
pub fn remove_layout(dir: &Path) -> Result<Cleanup, PinError> {
    let mut out = Cleanup::default();
    let links = dir.join(LINKS);
    if let Ok(ls) = std::fs::read_dir(&links) {
        for l in ls.flatten() {
            let p = l.path();
            if let Ok(fd) = sys::obj_get(&p) {
                if sys::link_info(fd.as_fd())
                    .is_ok_and(|i| i.link_type == libbpf_sys::BPF_LINK_TYPE_TCX)
                {
                    // Unpinned, not detached: a link the new layout adopted
                    // is pinned there too (a crash between its re-pin and
                    // this unlink leaves both pins) and must stay; a link
                    // pinned only here goes with its last reference.
                    std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
                    out.links.push(p);
                }
            }
        }
        if std::fs::remove_dir(&links).is_ok() {
            out.dirs.push(links);
        }
    }
    remove_map_pins(dir, &mut out)?;
    if std::fs::remove_dir(dir).is_ok() {
        out.dirs.push(dir.to_path_buf());
    }
    Ok(out)
}
