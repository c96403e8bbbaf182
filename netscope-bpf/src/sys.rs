//! The one place that calls libbpf-sys directly. Every function here is safe
//! to call: it checks buffer sizes against what the kernel will write before
//! handing pointers over.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

/// `BPF_MAP_UPDATE_ELEM`. `value` must be the map's full value size (for
/// per-CPU maps: `possible_cpus * round_up(value_size, 8)`).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    // SAFETY: the kernel reads key_size bytes from key and value_size bytes
    // (times CPUs for per-CPU maps) from value; callers pass buffers of exactly
    // those sizes, as the map was created with them (checked in the callers'
    // constructors against the map's info).
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
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    // SAFETY: as for map_update; value is writable and of the map's value size.
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
    let slots = keys.len() / key_size;
    assert!(
        values.len() >= slots * value_size,
        "value buffer smaller than key buffer"
    );
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
    // SAFETY: keys/values have room for `count` entries of key_size/value_size
    // (checked above); the batch tokens of hash maps are 4 bytes, arrays' too,
    // and both buffers are 8; opts is a valid, sized struct.
    let ret = unsafe {
        libbpf_sys::bpf_map_lookup_and_delete_batch(
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

/// `BPF_MAP_UPDATE_BATCH` of `count` entries.
pub fn map_update_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
    values: &[u8],
    value_size: usize,
) -> io::Result<()> {
    let n = keys.len() / key_size;
    assert!(
        values.len() >= n * value_size,
        "value buffer smaller than key buffer"
    );
    let mut count = n as u32;
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
    let mut opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    // BPF_F_BEFORE with no relative program: head of the chain.
    opts.flags = libbpf_sys::BPF_F_BEFORE;
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
