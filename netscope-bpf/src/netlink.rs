//! rtnetlink (not BPF links): link events, the source that feeds
//! [`netscope::discover::Reconciler`], and dumps of links and tc filters.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use netscope::discover::{Link, LinkEvent, LinkKind};
use netscope::Interface;

/// `RTMGRP_LINK`: the multicast group of link changes.
const RTMGRP_LINK: u32 = 1;
/// Receive buffer for events: room for a burst of pod churn.
const RCVBUF: usize = 8 << 20;

/// Watches link additions and removals in the calling thread's network
/// namespace (fixed when the watcher is created). The first call to
/// [`LinkWatcher::next`] returns a [`LinkEvent::Snapshot`] of all links; it
/// returns another one whenever the kernel dropped events (`ENOBUFS`), so
/// nothing is missed.
#[derive(Debug)]
pub struct LinkWatcher {
    events: Socket,
    need_snapshot: bool,
    buf: Vec<u8>,
}

impl LinkWatcher {
    /// Subscribes to link events. Subscribing happens before the first
    /// dump, so no change falls between the two.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or bound.
    pub fn new() -> io::Result<Self> {
        let mut events = Socket::new(NETLINK_ROUTE)?;
        events.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        // Best effort: a bigger buffer only makes resyncs rarer.
        let _ = events.set_rx_buf_sz(RCVBUF);
        Ok(LinkWatcher {
            events,
            need_snapshot: true,
            buf: vec![0; 1 << 16],
        })
    }

    /// Waits up to `timeout` for link changes. Returns an empty list on
    /// timeout.
    ///
    /// # Errors
    /// Netlink errors other than an overflow (which yields a snapshot).
    pub fn next(&mut self, timeout: Duration) -> io::Result<Vec<LinkEvent>> {
        if self.need_snapshot {
            self.need_snapshot = false;
            return Ok(vec![LinkEvent::Snapshot(dump_links()?)]);
        }
        let mut pfd = libc::pollfd {
            fd: self.events.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        loop {
            match self.events.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(size) => parse_into(&self.buf[..size], &mut out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("link event socket overflowed; resyncing from a full dump");
                    return Ok(vec![LinkEvent::Snapshot(dump_links()?)]);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn link_of(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = String::new();
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link {
        iface: Interface {
            name: name?,
            ifindex: msg.header.index,
        },
        kind: LinkKind::from_kind(&kind),
    })
}

fn parse_into(mut bytes: &[u8], out: &mut Vec<LinkEvent>) {
    while !bytes.is_empty() {
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "unparsable rtnetlink message skipped");
                return;
            }
        };
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                if let Some(l) = link_of(&m) {
                    out.push(LinkEvent::Added(l));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                let name = link_of(&m).map(|l| l.iface.name).unwrap_or_default();
                out.push(LinkEvent::Removed(Interface {
                    name,
                    ifindex: m.header.index,
                }));
            }
            _ => {}
        }
        if len == 0 || len > bytes.len() {
            return;
        }
        bytes = &bytes[netlink_align(len).min(bytes.len())..];
    }
}

fn netlink_align(len: usize) -> usize {
    (len + 3) & !3
}

/// Sends one rtnetlink dump request and hands every message of the answer
/// to `each`, until the kernel says the dump is done.
fn dump(request: RouteNetlinkMessage, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    req.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf[..]);
    sock.send(&buf, 0)?;

    let mut rx = vec![0u8; 1 << 16];
    loop {
        let size = sock.recv(&mut &mut rx[..], 0)?;
        let mut bytes = &rx[..size];
        while !bytes.is_empty() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                .map_err(io::Error::other)?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                        None => Ok(()), // an acknowledgement
                    };
                }
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
            if len == 0 || len > bytes.len() {
                break;
            }
            bytes = &bytes[netlink_align(len).min(bytes.len())..];
        }
    }
}

/// All links of the calling thread's network namespace.
///
/// # Errors
/// Netlink errors.
pub fn dump_links() -> io::Result<Vec<Link>> {
    let mut links = Vec::new();
    dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), |m| {
        if let RouteNetlinkMessage::NewLink(m) = m {
            links.extend(link_of(&m));
        }
    })?;
    Ok(links)
}

/// One tc filter of a clsact hook, as an rtnetlink filter dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcFilterEntry {
    /// Priority (the kernel runs lower numbers first).
    pub priority: u32,
    /// Protocol (host byte order; `ETH_P_ALL` is 3).
    pub protocol: u16,
    /// Filter handle.
    pub handle: u32,
    /// Classifier kind (`bpf`, `matchall`, …).
    pub kind: String,
    /// The BPF program's name for cls_bpf filters, else empty.
    pub prog_name: String,
    /// Filter chain (0 is the one every packet runs).
    pub chain: u32,
}

/// The filters of `ifindex`'s clsact ingress or egress hook in the calling
/// thread's namespace, in the order the kernel lists them: chain by chain,
/// by priority, and within one priority in the classifier's own run order
/// (cls_bpf: newest first). Empty when the hook has no clsact qdisc or no
/// filter.
///
/// # Errors
/// Netlink errors (ENODEV when the interface is gone).
pub fn tc_filters(ifindex: u32, ingress: bool) -> io::Result<Vec<TcFilterEntry>> {
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};

    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: if ingress {
            TcHandle::MIN_INGRESS
        } else {
            TcHandle::MIN_EGRESS
        },
    };
    let mut out = Vec::new();
    let res = dump(RouteNetlinkMessage::GetTrafficFilter(msg), |m| {
        let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
            return;
        };
        let handle = u32::from(f.header.handle);
        // Each priority's classifier is listed first without a handle.
        if handle == 0 {
            return;
        }
        let mut e = TcFilterEntry {
            // info = priority << 16 | protocol (network byte order)
            priority: f.header.info >> 16,
            protocol: u16::from_be((f.header.info & 0xffff) as u16),
            handle,
            kind: String::new(),
            prog_name: String::new(),
            chain: 0,
        };
        for a in &f.attributes {
            match a {
                TcAttribute::Kind(k) => e.kind = k.clone(),
                TcAttribute::Chain(c) => e.chain = *c,
                TcAttribute::Options(opts) => {
                    for o in opts {
                        if let TcOption::Bpf(TcFilterBpfOption::ProgName(n)) = o {
                            // cls_bpf reports "name:[id]".
                            e.prog_name = n
                                .rsplit_once(":[")
                                .map_or(n.as_str(), |(n, _)| n)
                                .to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(e);
    });
    match res {
        Ok(()) => Ok(out),
        // No clsact or no filter chain: no filter.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// The BPF program name (as tc shows it) of the cls_bpf filter at
/// `handle`/`priority` on `ifindex`'s clsact ingress or egress hook, read
/// from an rtnetlink filter dump. Unlike looking the program up by id, this
/// needs no CAP_SYS_ADMIN. `None` when there is no such filter.
///
/// # Errors
/// Netlink errors.
pub fn tc_filter_prog_name(
    ifindex: u32,
    ingress: bool,
    handle: u32,
    priority: u32,
) -> io::Result<Option<String>> {
    Ok(tc_filters(ifindex, ingress)?
        .into_iter()
        .find(|f| f.handle == handle && f.priority == priority)
        .map(|f| f.prog_name))
}
