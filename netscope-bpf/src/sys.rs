//! The one place that calls libbpf-sys directly. Every function here is safe
//! to call: the map functions check the caller's buffers against the sizes
//! the kernel reports for the map (`BPF_OBJ_GET_INFO_BY_FD`) before handing
//! pointers over, and answer `InvalidInput` when they do not fit; the others
//! pass the lengths of the slices they are given.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// libbpf (1.x) returns `-errno` on failure.
fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(ret)
    }
}

/// Number of possible CPUs: the stride of per-CPU map values.
pub fn possible_cpus() -> io::Result<usize> {
    // SAFETY: takes no arguments; reads /sys/devices/system/cpu/possible once.
    let n = unsafe { libbpf_sys::libbpf_num_possible_cpus() };
    check(n).map(|n| n as usize)
}

/// What one element of a map takes in a user buffer, as the kernel reads or
/// writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MapLayout {
    /// `key_size`.
    key: usize,
    /// `value_size`, or for per-CPU maps `possible_cpus * round_up(value_size, 8)`.
    value: usize,
}

/// The map's layout from the kernel's own description of it.
fn map_layout(map: BorrowedFd<'_>) -> io::Result<MapLayout> {
    let mut info = libbpf_sys::bpf_map_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_map_info>() as u32;
    // SAFETY: info is a writable bpf_map_info and len its size; the kernel
    // writes at most len bytes.
    let ret = unsafe { libbpf_sys::bpf_map_get_info_by_fd(map.as_raw_fd(), &mut info, &mut len) };
    check(ret)?;
    let per_cpu = matches!(
        info.type_,
        libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH
            | libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY
            | libbpf_sys::BPF_MAP_TYPE_LRU_PERCPU_HASH
            | libbpf_sys::BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
    );
    let value = if per_cpu {
        (info.value_size as usize).next_multiple_of(8) * possible_cpus()?
    } else {
        info.value_size as usize
    };
    Ok(MapLayout {
        key: info.key_size as usize,
        value,
    })
}

fn too_small(what: &str, have: usize, need: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} buffer of {have} bytes; the map needs {need}"),
    )
}

/// Checks that `key` and `value` buffers hold `n` elements of `map`.
fn check_fit(map: BorrowedFd<'_>, key: usize, value: usize, n: usize) -> io::Result<MapLayout> {
    let l = map_layout(map)?;
    let (need_k, need_v) = (l.key.saturating_mul(n), l.value.saturating_mul(n));
    if key < need_k {
        return Err(too_small("key", key, need_k));
    }
    if value < need_v {
        return Err(too_small("value", value, need_v));
    }
    Ok(l)
}

/// Checks the strides a batch caller uses against the map's own.
fn check_strides(l: MapLayout, key_size: usize, value_size: usize) -> io::Result<()> {
    if key_size != l.key || value_size != l.value {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "batch strides {key_size}/{value_size} bytes; the map's are {}/{}",
                l.key, l.value
            ),
        ));
    }
    Ok(())
}

/// `BPF_MAP_UPDATE_ELEM`. `value` must hold the map's full value size (for
/// per-CPU maps: `possible_cpus * round_up(value_size, 8)`).
///
/// # Errors
/// `InvalidInput` when a buffer is smaller than the map's key or value; the
/// kernel's error otherwise.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    check_fit(map, key.len(), value.len(), 1)?;
    // SAFETY: the kernel reads key_size bytes from key and the (per-CPU)
    // value size from value; check_fit verified both buffers hold that much.
    let ret = unsafe {
        libbpf_sys::bpf_map_update_elem(
            map.as_raw_fd(),
            key.as_ptr().cast(),
            value.as_ptr().cast(),
            flags,
        )
    };
    check(ret).map(|_| ())
}

/// `BPF_MAP_LOOKUP_ELEM` into `value`. Returns false when the key is absent.
///
/// # Errors
/// As [`map_update`].
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    check_fit(map, key.len(), value.len(), 1)?;
    // SAFETY: as for map_update; value is writable and holds the map's value.
    let ret = unsafe {
        libbpf_sys::bpf_map_lookup_elem(
            map.as_raw_fd(),
            key.as_ptr().cast(),
            value.as_mut_ptr().cast(),
        )
    };
    match check(ret) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One `BPF_MAP_LOOKUP_AND_DELETE_BATCH` call. `keys` holds `keys.len() /
/// key_size` slots and `values` as many value slots. `token` carries the
/// position between calls (`None` on the first call). Returns the number of
/// entries written and whether the map is exhausted.
pub fn map_lookup_and_delete_batch(
    map: BorrowedFd<'_>,
    token: &mut Option<[u8; 8]>,
    keys: &mut [u8],
    key_size: usize,
    values: &mut [u8],
    value_size: usize,
) -> io::Result<(usize, bool)> {
    batch(
        libbpf_sys::bpf_map_lookup_and_delete_batch,
        map,
        token,
        (keys, key_size),
        (values, value_size),
    )
}

/// A libbpf batch call: `bpf_map_lookup_batch` or
/// `bpf_map_lookup_and_delete_batch` (one signature).
type BatchFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::c_void,
    *mut libc::c_void,
    *mut libc::c_void,
    *mut libc::c_void,
    *mut u32,
    *const libbpf_sys::bpf_map_batch_opts,
) -> libc::c_int;

/// One batch call of `op` into `keys`/`values` (each a buffer and the
/// caller's stride), checked against the map's own sizes first.
fn batch(
    op: BatchFn,
    map: BorrowedFd<'_>,
    token: &mut Option<[u8; 8]>,
    (keys, key_size): (&mut [u8], usize),
    (values, value_size): (&mut [u8], usize),
) -> io::Result<(usize, bool)> {
    let slots = keys.len().checked_div(key_size).unwrap_or(0);
    let layout = check_fit(map, keys.len(), values.len(), slots)?;
    check_strides(layout, key_size, value_size)?;
    let mut count = u32::try_from(slots).unwrap_or(u32::MAX);
    let mut out_batch = [0u8; 8];
    let mut in_batch = token.unwrap_or([0; 8]);
    let in_ptr = if token.is_some() {
        in_batch.as_mut_ptr().cast()
    } else {
        std::ptr::null_mut()
    };
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    // SAFETY: op is one of libbpf's two batch lookups (this private fn's
    // only callers); keys/values have room for `count` entries of the map's
    // own key and value sizes (check_fit, check_strides); the batch tokens
    // of hash maps and arrays are 4 bytes and both buffers are 8; opts is a
    // valid, sized struct.
    let ret = unsafe {
        op(
            map.as_raw_fd(),
            in_ptr,
            out_batch.as_mut_ptr().cast(),
            keys.as_mut_ptr().cast(),
            values.as_mut_ptr().cast(),
            &mut count,
            &opts,
        )
    };
    match check(ret) {
        Ok(_) => {
            *token = Some(out_batch);
            Ok((count as usize, false))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((count as usize, true)),
        Err(e) => Err(e),
    }
}

#[cfg(feature = "testing")]
/// `BPF_MAP_UPDATE_BATCH` of `count` entries.
pub fn map_update_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
    values: &[u8],
    value_size: usize,
) -> io::Result<()> {
    let n = keys.len().checked_div(key_size).unwrap_or(0);
    let layout = check_fit(map, keys.len(), values.len(), n)?;
    check_strides(layout, key_size, value_size)?;
    let mut count = u32::try_from(n).unwrap_or(u32::MAX);
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    // SAFETY: both buffers hold `count` entries of the map's key and value size.
    let ret = unsafe {
        libbpf_sys::bpf_map_update_batch(
            map.as_raw_fd(),
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            &mut count,
            &opts,
        )
    };
    check(ret).map(|_| ())
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, Copy)]
pub struct TestRun {
    /// The program's return code.
    pub retval: u32,
    /// Average run time per repetition, as the kernel measured it.
    pub duration: Duration,
}

/// `BPF_PROG_TEST_RUN` of a sched_cls program on `data`, with an optional
/// `__sk_buff` context (`ctx`), repeated `repeat` times.
pub fn prog_test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&mut [u8]>,
    repeat: u32,
) -> io::Result<TestRun> {
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: data.as_ptr().cast(),
        data_size_in: data.len() as u32,
        repeat: repeat as i32,
        ..Default::default()
    };
    if let Some(ctx) = ctx {
        opts.ctx_in = ctx.as_ptr().cast();
        opts.ctx_size_in = ctx.len() as u32;
        opts.ctx_out = ctx.as_mut_ptr().cast();
        opts.ctx_size_out = ctx.len() as u32;
    }
    // SAFETY: data_in/ctx_in point to live buffers of the given sizes; ctx_out
    // has ctx_size_out bytes of room; no data_out is requested.
    let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    check(ret)?;
    Ok(TestRun {
        retval: opts.retval,
        duration: Duration::from_nanos(opts.duration as u64),
    })
}

/// Creates a TCX link for `prog` on `ifindex` (`BPF_TCX_INGRESS` or
/// `BPF_TCX_EGRESS`), placed before every other program on the hook.
///
/// # Minimum kernel version
/// 6.6. Older kernels answer `EINVAL` (unknown attach type).
pub fn tcx_link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    attach_type: libbpf_sys::bpf_attach_type,
) -> io::Result<OwnedFd> {
    tcx_link_create_flags(prog, ifindex, attach_type, libbpf_sys::BPF_F_BEFORE)
}

/// Like [`tcx_link_create`] with explicit placement flags (`BPF_F_BEFORE`
/// for the head of the chain, 0 to append).
pub fn tcx_link_create_flags(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    attach_type: libbpf_sys::bpf_attach_type,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    // BPF_F_BEFORE with no relative program: head of the chain; 0: the end.
    opts.flags = flags;
    // SAFETY: prog is a valid program fd; opts is a sized struct whose union
    // member for TCX (relative_fd/expected_revision) is zero = no anchor.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, attach_type, &opts)
    };
    let fd = check(fd)?;
    // SAFETY: the kernel just returned this new link fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Program ids attached to a TCX hook, in chain order.
pub fn tcx_query(ifindex: u32, attach_type: libbpf_sys::bpf_attach_type) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut opts = libbpf_sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as _,
        prog_ids: ids.as_mut_ptr(),
        ..Default::default()
    };
    opts.__bindgen_anon_1.count = ids.len() as u32;
    // SAFETY: prog_ids has room for `count` ids; the other out-arrays are null.
    let ret = unsafe { libbpf_sys::bpf_prog_query_opts(ifindex as i32, attach_type, &mut opts) };
    check(ret)?;
    // SAFETY: `count` is the union member the kernel fills for prog queries.
    let n = unsafe { opts.__bindgen_anon_1.count };
    ids.truncate(n as usize);
    Ok(ids)
}

/// The kernel id of a loaded program.
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a bpf_prog_info of len bytes; all its pointer fields are
    // null, so the kernel fills scalars only.
    let ret = unsafe {
        libbpf_sys::bpf_obj_get_info_by_fd(
            prog.as_raw_fd(),
            (&mut info as *mut libbpf_sys::bpf_prog_info).cast(),
            &mut len,
        )
    };
    check(ret)?;
    Ok(info.id)
}

/// The name of a loaded program, by kernel id (as the kernel stores it:
/// at most 15 bytes).
pub fn prog_name_by_id(id: u32) -> io::Result<String> {
    // SAFETY: plain syscall wrapper; returns a new fd or -errno.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    let fd = check(fd)?;
    // SAFETY: the kernel just returned this fd; we own it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: as in prog_id.
    let ret = unsafe {
        libbpf_sys::bpf_obj_get_info_by_fd(
            fd.as_raw_fd(),
            (&mut info as *mut libbpf_sys::bpf_prog_info).cast(),
            &mut len,
        )
    };
    check(ret)?;
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// Explicitly detaches a BPF link (the fd stays open, but defunct).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall wrapper on a valid fd.
    let ret = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
    check(ret).map(|_| ())
}

/// Inode of the calling thread's network namespace.
pub fn current_netns() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Interface index of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL byte")
    })?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// A legacy-TC filter location: clsact hook of an interface plus the
/// filter's handle and priority. Plain data, so it is `Send`.
///
/// netscope calls libbpf's `bpf_tc_*` directly rather than through
/// libbpf-rs's `TcHook`, whose errors drop the errno that restart safety
/// and coexistence decisions need, and which is not `Send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcFilter {
    /// Interface index (in the caller's network namespace).
    pub ifindex: u32,
    /// True for the ingress hook, false for egress.
    pub ingress: bool,
    /// Filter handle.
    pub handle: u32,
    /// Filter priority.
    pub priority: u32,
}

impl TcFilter {
    fn hook(&self) -> libbpf_sys::bpf_tc_hook {
        libbpf_sys::bpf_tc_hook {
            sz: std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as _,
            ifindex: self.ifindex as i32,
            attach_point: if self.ingress {
                libbpf_sys::BPF_TC_INGRESS
            } else {
                libbpf_sys::BPF_TC_EGRESS
            },
            parent: 0,
            handle: 0,
            qdisc: std::ptr::null(),
        }
    }

    fn opts(&self) -> libbpf_sys::bpf_tc_opts {
        libbpf_sys::bpf_tc_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_tc_opts>() as _,
            handle: self.handle,
            priority: self.priority,
            ..Default::default()
        }
    }

    /// Creates the clsact qdisc; `Ok(false)` when it already existed.
    pub fn create_clsact(&self) -> io::Result<bool> {
        let mut hook = self.hook();
        // SAFETY: hook is a sized, fully initialised bpf_tc_hook (qdisc null).
        let ret = unsafe { libbpf_sys::bpf_tc_hook_create(&mut hook) };
        match check(ret) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Id of the program at this handle/priority, or `None`.
    pub fn query(&self) -> io::Result<Option<u32>> {
        let hook = self.hook();
        let mut opts = self.opts();
        // SAFETY: hook and opts are sized and initialised; prog_fd/flags/prog_id are 0 as required.
        let ret = unsafe { libbpf_sys::bpf_tc_query(&hook, &mut opts) };
        match check(ret) {
            Ok(_) => Ok(Some(opts.prog_id)),
            // ENOENT: no filter at this priority; EINVAL: the hook has no
            // filter chain at all yet ("Cannot find specified filter chain").
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Attaches `prog` (direct-action), replacing what is at this
    /// handle/priority when `replace` is set.
    pub fn attach(&self, prog: BorrowedFd<'_>, replace: bool) -> io::Result<u32> {
        let hook = self.hook();
        let mut opts = self.opts();
        opts.prog_fd = prog.as_raw_fd();
        if replace {
            opts.flags = libbpf_sys::BPF_TC_F_REPLACE;
        }
        // SAFETY: hook and opts are sized and initialised; prog is a valid fd.
        let ret = unsafe { libbpf_sys::bpf_tc_attach(&hook, &mut opts) };
        check(ret)?;
        Ok(opts.prog_id)
    }

    /// Removes the filter at this handle/priority, and nothing else.
    pub fn detach(&self) -> io::Result<()> {
        let hook = self.hook();
        let opts = self.opts();
        // SAFETY: hook and opts are sized and initialised; prog fields are 0 as required.
        let ret = unsafe { libbpf_sys::bpf_tc_detach(&hook, &opts) };
        check(ret).map(|_| ())
    }
}

#[cfg(feature = "testing")]
/// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (the first with `None`).
/// Returns false at the end.
pub fn map_get_next_key(
    map: BorrowedFd<'_>,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> io::Result<bool> {
    let layout = check_fit(map, next.len(), usize::MAX, 1)?;
    if let Some(k) = key.filter(|k| k.len() < layout.key) {
        return Err(too_small("key", k.len(), layout.key));
    }
    let kp = key.map_or(std::ptr::null(), |k| k.as_ptr().cast());
    // SAFETY: key (if any) and next hold the map's key size (checked above).
    let ret =
        unsafe { libbpf_sys::bpf_map_get_next_key(map.as_raw_fd(), kp, next.as_mut_ptr().cast()) };
    match check(ret) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(feature = "testing")]
/// `BPF_MAP_DELETE_ELEM`. Returns false when the key was absent.
///
/// # Errors
/// `InvalidInput` when `key` is smaller than the map's key; the kernel's
/// error otherwise.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    check_fit(map, key.len(), usize::MAX, 1)?;
    // SAFETY: the kernel reads key_size bytes from key (checked above).
    let ret = unsafe { libbpf_sys::bpf_map_delete_elem(map.as_raw_fd(), key.as_ptr().cast()) };
    match check(ret) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(feature = "testing")]
/// Ids of every BPF program loaded in the system.
pub fn all_prog_ids() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: plain syscall wrapper writing one u32.
        let ret = unsafe { libbpf_sys::bpf_prog_get_next_id(id, &mut next) };
        match check(ret) {
            Ok(_) => {
                ids.push(next);
                id = next;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
    }
}

// ---- Pinning (issue 15): bpffs objects that outlive the agent. ----

fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// `BPF_OBJ_PIN`: pins `fd` (map, program or link) at `path` in bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: p is a NUL-terminated path that outlives the call; fd is valid.
    let ret = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), p.as_ptr()) };
    check(ret).map(|_| ())
}

/// `BPF_OBJ_GET`: opens the object pinned at `path`.
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    // SAFETY: p is a NUL-terminated path that outlives the call.
    let fd = check(unsafe { libbpf_sys::bpf_obj_get(p.as_ptr()) })?;
    // SAFETY: the kernel just returned this new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel says about a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Kernel id.
    pub id: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// The kernel's copy of the name (at most 15 bytes).
    pub name: String,
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a map; `EINVAL` when `fd` is no map.
pub fn map_info(map: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut info = libbpf_sys::bpf_map_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_map_info>() as u32;
    // SAFETY: info is a bpf_map_info of len bytes; its pointer fields are
    // null, so the kernel fills scalars only.
    let ret = unsafe { libbpf_sys::bpf_map_get_info_by_fd(map.as_raw_fd(), &mut info, &mut len) };
    check(ret)?;
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(MapInfo {
        map_type: info.type_,
        id: info.id,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
        name: String::from_utf8_lossy(&name).into_owned(),
    })
}

/// What the kernel says about a TCX link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcxLinkInfo {
    /// `BPF_LINK_TYPE_*`.
    pub link_type: u32,
    /// The program behind the link.
    pub prog_id: u32,
    /// The device; 0 once the device is gone (the link is defunct).
    pub ifindex: u32,
    /// `BPF_TCX_INGRESS` or `BPF_TCX_EGRESS`.
    pub attach_type: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a link.
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<TcxLinkInfo> {
    // SAFETY: bpf_link_info is plain old data; all zeroes is valid.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info is a bpf_link_info of len bytes with null pointer fields.
    let ret = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) };
    check(ret)?;
    // SAFETY: the tcx member is two u32s; read for any link type (it is only
    // meaningful for BPF_LINK_TYPE_TCX, which the caller checks).
    let tcx = unsafe { info.__bindgen_anon_1.tcx };
    Ok(TcxLinkInfo {
        link_type: info.type_,
        prog_id: info.prog_id,
        ifindex: tcx.ifindex,
        attach_type: tcx.attach_type,
    })
}

/// `BPF_LINK_UPDATE`: puts `prog` behind `link` atomically (no detach, no gap).
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds are valid; null opts means no flags, no expected program.
    let ret = unsafe {
        libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null())
    };
    check(ret).map(|_| ())
}

/// `BPF_MAP_CREATE` of a plain array map (the pin directory's meta map).
pub fn array_map_create(name: &str, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let n = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "map name has a NUL byte"))?;
    // SAFETY: n is NUL-terminated and outlives the call; null opts = defaults.
    let fd = check(unsafe {
        libbpf_sys::bpf_map_create(
            libbpf_sys::BPF_MAP_TYPE_ARRAY,
            n.as_ptr(),
            4,
            value_size,
            max_entries,
            std::ptr::null(),
        )
    })?;
    // SAFETY: the kernel just returned this new map fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// True when `path` is on a bpffs mount.
pub fn is_bpffs(path: &std::path::Path) -> io::Result<bool> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let p = c_path(path)?;
    // SAFETY: statfs is plain old data; all zeroes is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is NUL-terminated, st is a writable statfs.
    if unsafe { libc::statfs(p.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs by libc target"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Names and indexes of the interfaces in the calling thread's network
/// namespace (`if_nameindex`).
pub fn interfaces() -> io::Result<Vec<(String, u32)>> {
    // SAFETY: returns a heap array terminated by a zero entry, or null.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        // SAFETY: i stays within the array: it stops at the zero terminator.
        let e = unsafe { &*list.add(i) };
        if e.if_index == 0 || e.if_name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { std::ffi::CStr::from_ptr(e.if_name) };
        out.push((name.to_string_lossy().into_owned(), e.if_index));
        i += 1;
    }
    // SAFETY: list came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(list) };
    Ok(out)
}

/// One `BPF_MAP_LOOKUP_BATCH` call: like [`map_lookup_and_delete_batch`],
/// without deleting (the two-phase drain reads first, clears after the
/// journal holds what it read).
pub fn map_lookup_batch(
    map: BorrowedFd<'_>,
    token: &mut Option<[u8; 8]>,
    keys: &mut [u8],
    key_size: usize,
    values: &mut [u8],
    value_size: usize,
) -> io::Result<(usize, bool)> {
    batch(
        libbpf_sys::bpf_map_lookup_batch,
        map,
        token,
        (keys, key_size),
        (values, value_size),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A kernel map of our own (needs root or CAP_BPF).
    fn map(map_type: libbpf_sys::bpf_map_type, key: u32, value: u32) -> OwnedFd {
        // SAFETY: a null name and null opts are allowed; the returned fd is
        // checked and owned from here on.
        let fd = unsafe {
            libbpf_sys::bpf_map_create(map_type, std::ptr::null(), key, value, 4, std::ptr::null())
        };
        let fd = check(fd).unwrap_or_else(|e| panic!("creating a test map (root?): {e}"));
        // SAFETY: fd is a fresh descriptor nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn buffers_smaller_than_the_map_are_refused() {
        let hash = map(libbpf_sys::BPF_MAP_TYPE_HASH, 8, 16);
        let fd = hash.as_fd();
        let err = map_lookup(fd, &[0; 4], &mut [0; 16]).expect_err("short key accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = map_update(fd, &[0; 8], &[0; 15], 0).expect_err("short value accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        map_update(fd, &[1; 8], &[7; 16], 0).expect("fitting update");
        let mut v = [0u8; 16];
        assert!(map_lookup(fd, &[1; 8], &mut v).expect("fitting lookup"));
        assert_eq!(v, [7; 16]);

        // Per-CPU: a lookup writes every possible CPU's (8-aligned) value.
        let percpu = map(libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY, 4, 12);
        let need = 16 * possible_cpus().expect("possible CPUs");
        let mut short = vec![0u8; need - 1];
        let err = map_lookup(percpu.as_fd(), &[0; 4], &mut short).expect_err("one CPU's value");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let mut full = vec![0u8; need];
        assert!(map_lookup(percpu.as_fd(), &[0; 4], &mut full).expect("fitting lookup"));

        // Batch strides must be the map's own.
        let (mut keys, mut values) = (vec![0u8; 4 * 8], vec![0u8; 4 * 16]);
        let err = map_lookup_and_delete_batch(fd, &mut None, &mut keys, 8, &mut values[..63], 16)
            .expect_err("short value batch accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = map_lookup_and_delete_batch(fd, &mut None, &mut keys, 4, &mut values, 8)
            .expect_err("wrong strides accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = map_lookup_batch(fd, &mut None, &mut keys, 8, &mut values[..63], 16)
            .expect_err("short value batch accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        // A lookup batch reads without deleting ...
        let (n, _) =
            map_lookup_batch(fd, &mut None, &mut keys, 8, &mut values, 16).expect("fitting batch");
        assert_eq!((n, &values[..16]), (1, &[7u8; 16][..]));
        values.fill(0);
        // ... so the element is still there for lookup and delete.
        let (n, _) = map_lookup_and_delete_batch(fd, &mut None, &mut keys, 8, &mut values, 16)
            .expect("fitting batch");
        assert_eq!(n, 1, "the one element");
        assert_eq!(&values[..16], &[7; 16]);
    }
}

/// A pair of maps whose only use is to wait out running BPF programs: an
/// update of an array-of-maps returns only after an RCU grace period
/// (kernel/bpf/syscall.c, `maybe_wait_bpf_programs`), and every program
/// runs inside an RCU read-side section. Not shared with the program, never
/// pinned: any process's map-in-map update waits for every program.
#[derive(Debug)]
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    /// Creates the two maps (an array and an array-of-maps holding it).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn new() -> io::Result<RcuBarrier> {
        let inner = array_map_create("netscope_rcu_in", 4, 1)?;
        let name = c"netscope_rcu";
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: name is NUL-terminated and static; opts is a valid,
        // size-tagged bpf_map_create_opts that outlives the call.
        let fd = check(unsafe {
            libbpf_sys::bpf_map_create(
                libbpf_sys::BPF_MAP_TYPE_ARRAY_OF_MAPS,
                name.as_ptr(),
                4,
                4,
                1,
                &opts,
            )
        })?;
        // SAFETY: the kernel just returned this new map fd, owned by nobody else.
        let outer = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns once every BPF program that was running when it was called
    /// has finished.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn wait(&self) -> io::Result<()> {
        let fd = self.inner.as_raw_fd();
        map_update(
            self.outer.as_fd(),
            &0u32.to_ne_bytes(),
            &fd.to_ne_bytes(),
            0,
        )
    }
}

/// An `mmap` of a `BPF_F_MMAPABLE` array map: its values, back to back
/// (`value_size` is a multiple of 8 for the maps mapped here, so there is
/// no padding between them). Reads and writes go through bounds-checked
/// copies; never hand out a reference into it, the program writes to it
/// concurrently.
#[derive(Debug)]
pub struct MappedArray {
    ptr: std::ptr::NonNull<u8>,
    /// Bytes of values: value_size * max_entries.
    len: usize,
    /// Bytes mapped (len rounded up to pages).
    mapped: usize,
    value_size: usize,
}

// SAFETY: the mapping is plain shared memory; every access is a bounded
// copy through a raw pointer, and callers serialise the regions they touch.
unsafe impl Send for MappedArray {}
// SAFETY: as for Send; no method hands out references into the mapping.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps all of `map` read-write.
    ///
    /// # Errors
    /// `InvalidInput` for a map that is not an array; the kernel's error
    /// (EINVAL for an array without `BPF_F_MMAPABLE`).
    pub fn new(map: BorrowedFd<'_>) -> io::Result<MappedArray> {
        let info = map_info(map)?;
        if info.map_type != libbpf_sys::BPF_MAP_TYPE_ARRAY || !info.value_size.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot map {info:?}: not an array of 8-byte multiples"),
            ));
        }
        let value_size = info.value_size as usize;
        let len = value_size
            .checked_mul(info.max_entries as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "map too large"))?;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(1);
        let mapped = len.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd at offset 0 of the
        // size the kernel reports; the kernel checks the length again.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(MappedArray {
            ptr,
            len,
            mapped,
            value_size,
        })
    }

    fn range(&self, first: usize, count: usize) -> io::Result<(usize, usize)> {
        let start = first.checked_mul(self.value_size);
        let bytes = count.checked_mul(self.value_size);
        match (start, bytes) {
            (Some(s), Some(b)) if s.checked_add(b).is_some_and(|e| e <= self.len) => Ok((s, b)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "entries {first}..+{count} outside a mapped array of {} entries",
                    self.len / self.value_size
                ),
            )),
        }
    }

    /// Copies `count` entries from `first` into `out` (resized to fit).
    ///
    /// # Errors
    /// `InvalidInput` when the range is outside the array.
    pub fn read(&self, first: usize, count: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let (start, bytes) = self.range(first, count)?;
        out.clear();
        out.resize(bytes, 0);
        // SAFETY: start..start+bytes is inside the mapping (checked above),
        // out holds bytes bytes, and the two never overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(start), out.as_mut_ptr(), bytes);
        }
        Ok(())
    }

    /// Zeroes `count` entries from `first`.
    ///
    /// # Errors
    /// `InvalidInput` when the range is outside the array.
    pub fn zero(&self, first: usize, count: usize) -> io::Result<()> {
        let (start, bytes) = self.range(first, count)?;
        // SAFETY: start..start+bytes is inside the writable mapping.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(start), 0, bytes) };
        Ok(())
    }

    #[cfg(feature = "testing")]
    /// Writes `data` (whole entries) from entry `first`.
    ///
    /// # Errors
    /// `InvalidInput` when `data` is not whole entries or does not fit.
    pub fn write(&self, first: usize, data: &[u8]) -> io::Result<()> {
        if !data.len().is_multiple_of(self.value_size) {
            return Err(too_small("data", data.len(), self.value_size));
        }
        let (start, bytes) = self.range(first, data.len() / self.value_size)?;
        // SAFETY: start..start+bytes is inside the writable mapping and data
        // is a separate buffer of bytes bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(start), bytes);
        }
        Ok(())
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: ptr/mapped are exactly what mmap returned; nothing refers
        // into the mapping after this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped) };
    }
}
