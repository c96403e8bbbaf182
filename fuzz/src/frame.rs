//! The BPF parser target: frames through the real netscope program with
//! `BPF_PROG_TEST_RUN`, checked against [`expected`], a reference parser
//! written from the byte definition (README, "What a byte is"), not from
//! the C code's structure.
//!
//! Input layout: byte 0 holds flags (bit 0: direction, 0 from the pod, 1 to
//! the pod; bit 1: a GSO context follows), then, with bit 1, one byte of
//! `gso_segs`; the rest is the Ethernet frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, OnceLock};

use ipnet::IpNet;
use netscope::{Counters, Direction, FlowKey, L4};
use netscope_bpf::testing::{skb_ctx, take_active};
use netscope_bpf::{test_run, Capture, CaptureConfig};

/// The program's return value for every frame: TC_ACT_UNSPEC (-1).
const TC_ACT_UNSPEC: u32 = u32::MAX;
/// Frames longer than this are skipped (BPF_PROG_TEST_RUN takes at most a
/// page minus the skb's head- and tailroom).
pub const MAX_FRAME: usize = 3000;

/// Service CIDRs the program is loaded with: two realistic ones, and one
/// half of each address space, so that random addresses often take the
/// Service path (protocol and ports in the key).
pub fn service_cidrs() -> Vec<IpNet> {
    ["10.96.0.0/12", "fd00:96::/112", "128.0.0.0/1", "8000::/1"]
        .iter()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

/// One fuzz input, decoded.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Which program (hook) runs.
    pub direction: Direction,
    /// `gso_segs` of the skb context, when one is passed.
    pub gso_segs: Option<u32>,
    /// The Ethernet frame.
    pub frame: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits fuzz bytes into flags, GSO segments and frame.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let direction = if flags & 1 == 0 {
            Direction::FromPod
        } else {
            Direction::ToPod
        };
        let (gso_segs, frame) = if flags & 2 != 0 {
            let (&segs, frame) = rest.split_first()?;
            (Some(u32::from(segs)), frame)
        } else {
            (None, rest)
        };
        Some(Input {
            direction,
            gso_segs,
            frame,
        })
    }

    /// The fuzz bytes for this input (the inverse of [`Input::parse`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![u8::from(self.direction == Direction::ToPod)];
        if let Some(s) = self.gso_segs {
            v[0] |= 2;
            v.push(u8::try_from(s).expect("gso_segs fits a byte"));
        }
        v.extend_from_slice(self.frame);
        v
    }
}

/// Whether `BPF_PROG_TEST_RUN` refuses the frame (EINVAL) before the
/// program runs: shorter than an Ethernet header, or with an IP ethertype
/// but shorter than the fixed IP header.
pub fn refused(frame: &[u8]) -> bool {
    match be16(frame, 12) {
        None => true,
        Some(0x0800) => frame.len() < 14 + 20,
        Some(0x86dd) => frame.len() < 14 + 40,
        Some(_) => false,
    }
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

fn bytes<const N: usize>(f: &[u8], off: usize) -> Option<[u8; N]> {
    f.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// The 16-byte form the program keys and matches on (IPv4 mapped).
fn raw(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// True when `ip` is in one of `nets`. An IPv4 network covers the
/// IPv4-mapped IPv6 addresses too: the program matches 16-byte addresses.
fn in_service(ip: IpAddr, nets: &[IpNet]) -> bool {
    let a = raw(ip);
    nets.iter().any(|n| {
        let (net, len) = match n {
            IpNet::V4(n) => (raw(IpAddr::V4(n.network())), 96 + u32::from(n.prefix_len())),
            IpNet::V6(n) => (raw(IpAddr::V6(n.network())), u32::from(n.prefix_len())),
        };
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        a & mask == net & mask
    })
}

/// Finds the upper-layer header after the fixed IPv6 header at `off`:
/// (offset, protocol), walking at most 6 extension headers; `None` when it
/// is cut off or further away. Sets `nonfirst` for a fragment other than
/// the first.
fn ipv6_upper(f: &[u8], mut off: usize, mut nh: u8, nonfirst: &mut bool) -> Option<(usize, u8)> {
    for _ in 0..6 {
        match nh {
            // Hop-by-hop, routing, destination options: length in 8-octet units.
            0 | 43 | 60 => {
                let [next, len] = bytes::<2>(f, off)?;
                nh = next;
                off += (usize::from(len) + 1) * 8;
            }
            // AH: length in 4-octet units, minus 2.
            51 => {
                let [next, len] = bytes::<2>(f, off)?;
                nh = next;
                off += (usize::from(len) + 2) * 4;
            }
            // Fragment: 8 bytes; offset in the upper 13 bits of bytes 2-3.
            44 => {
                let h = bytes::<4>(f, off)?;
                nh = h[0];
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    *nonfirst = true;
                }
                off += 8;
            }
            _ => return Some((off, nh)),
        }
    }
    None
}

/// Ports and header length of the L4 header at `off`, when all of it
/// (TCP: 20 bytes; UDP, UDP-Lite, SCTP: 8) is in the frame.
fn l4_header(f: &[u8], off: usize, proto: u8) -> Option<(u16, u16, u64)> {
    match proto {
        6 => {
            let h = bytes::<20>(f, off)?;
            let ports = (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
            );
            Some((ports.0, ports.1, u64::from(h[12] >> 4) * 4))
        }
        17 | 136 | 132 => {
            let h = bytes::<8>(f, off)?;
            let len = if proto == 132 { 12 } else { 8 };
            Some((
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                len,
            ))
        }
        _ => None,
    }
}

/// What the program must count for `frame`: its flow and counters, or
/// `None` for a frame that is not counted. The byte definition:
///
/// - Ethernet, then up to two in-band 802.1Q/802.1ad tags; IPv4 or IPv6.
/// - IPv4: version 4, IHL ≥ 5, and a total length from the header length
///   up to the bytes the frame has after L2; the total length is counted
///   (Ethernet padding is not). Otherwise the kernel drops the frame in
///   ip_rcv_core, so it is not counted.
/// - IPv6: version 6, and 40 + payload length no more than the frame has;
///   that is counted. Payload length 0 is 40 bytes (ipv6_rcv trims the
///   packet to its header), or the whole frame after L2 when a hop-by-hop
///   header follows (jumbogram).
/// - GSO (`gso_segs` > 1): a zero IPv4 total length / IPv6 payload length
///   (BIG TCP) means the whole skb; each further segment repeats the IP
///   (and IPv6 extension) and TCP/UDP headers; packets = `gso_segs`.
/// - Protocol and ports are kept only when the remote address (destination
///   from the pod, source to the pod) is in a Service CIDR; an L4 header
///   cut off, behind a non-first fragment, or more than 6 IPv6 extension
///   headers away gives ports 0.
pub fn expected(
    frame: &[u8],
    direction: Direction,
    gso_segs: u32,
    svc: &[IpNet],
) -> Option<(FlowKey, Counters)> {
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = be16(frame, l3 + 2)?;
        l3 += 4;
    }
    let gso = gso_segs > 1;
    let avail = frame.len().checked_sub(l3)?;
    // (src, dst, counted length, fixed header length, protocol, L4 location)
    let (src, dst, ip_len, hdr_len, mut proto, mut nonfirst, l4_off) = match ethertype {
        0x0800 => {
            let h = bytes::<20>(frame, l3)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if h[0] >> 4 != 4 || ihl < 20 {
                return None;
            }
            let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let len = if tot == 0 && gso { avail } else { tot };
            if len < ihl || len > avail {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&h[12..16]).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?);
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
            (
                IpAddr::V4(src),
                IpAddr::V4(dst),
                len,
                ihl,
                h[9],
                frag,
                Some(l3 + ihl),
            )
        }
        0x86dd => {
            let h = bytes::<40>(frame, l3)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let len = match payload {
                0 if gso || h[6] == 0 => avail,
                p => 40 + p,
            };
            if len > avail {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?);
            // L4 is found below, by walking the extension headers.
            (IpAddr::V6(src), IpAddr::V6(dst), len, 40, h[6], false, None)
        }
        _ => return None,
    };
    let remote = match direction {
        Direction::FromPod => dst,
        Direction::ToPod => src,
    };
    let service = in_service(remote, svc);
    let mut counters = Counters::new(ip_len as u64, 1);
    let mut l4 = None;
    if service || gso {
        let l4_off = match src {
            IpAddr::V4(_) => l4_off,
            IpAddr::V6(_) => ipv6_upper(frame, l3 + 40, proto, &mut nonfirst).map(|(off, p)| {
                proto = p;
                off
            }),
        };
        let header = match l4_off {
            Some(off) if !nonfirst => l4_header(frame, off, proto),
            _ => None,
        };
        let (sport, dport, l4_len) = header.unwrap_or((0, 0, 0));
        if service && proto != 0 {
            l4 = Some(L4 {
                proto,
                src_port: sport,
                dst_port: dport,
            });
        }
        if gso {
            let headers = match l4_off {
                Some(off) => (off - l3) as u64 + l4_len,
                None => hdr_len as u64,
            };
            counters = Counters::new(
                ip_len as u64 + u64::from(gso_segs - 1) * headers,
                u64::from(gso_segs),
            );
        }
    }
    let key = FlowKey {
        src,
        dst,
        direction,
        l4,
    };
    Some((key, counters))
}

/// The program, loaded once per process (needs root). The mutex keeps one
/// frame at a time between its test run and the table read, which
/// `take_active` needs.
fn loaded() -> &'static Mutex<Capture> {
    static L: OnceLock<Mutex<Capture>> = OnceLock::new();
    L.get_or_init(|| {
        Mutex::new(
            Capture::load(&CaptureConfig {
                service_cidrs: service_cidrs(),
                ..CaptureConfig::default()
            })
            .unwrap_or_else(|e| panic!("loading the netscope program (needs root): {e:#?}")),
        )
    })
}

/// Runs one input through the real program and checks it against
/// [`expected`]: the program returns TC_ACT_UNSPEC, the test run refuses
/// exactly the frames [`refused`] names, and the table, read and emptied
/// after each frame (`take_active`, no RCU wait: the program runs nowhere
/// else), holds
/// exactly the expected flow and counters (nothing for a refused or
/// uncounted frame, no overflow).
pub fn bpf_frame(data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    if input.frame.len() > MAX_FRAME {
        return;
    }
    let capture = loaded().lock().unwrap_or_else(|p| p.into_inner());
    let mut ctx = input.gso_segs.map(|s| skb_ctx(s, 1000));
    let run = test_run(
        &capture,
        input.direction,
        input.frame,
        ctx.as_deref_mut(),
        1,
    );
    let refuse = refused(input.frame);
    let want = match run {
        Ok(out) => {
            assert_eq!(
                out.retval, TC_ACT_UNSPEC,
                "the program must return TC_ACT_UNSPEC"
            );
            assert!(!refuse, "the test run took a frame expected to be refused");
            expected(
                input.frame,
                input.direction,
                input.gso_segs.unwrap_or(0),
                &service_cidrs(),
            )
        }
        Err(e) => {
            assert!(refuse, "the test run refused the frame: {e}");
            None
        }
    };
    let drain = take_active(&capture).unwrap_or_else(|e| panic!("reading the flow table: {e}"));
    let got: Vec<(FlowKey, Counters)> = drain.samples.iter().map(|s| (s.key, s.counters)).collect();
    assert_eq!(
        got,
        want.into_iter().collect::<Vec<_>>(),
        "program (left) and reference (right) disagree"
    );
    assert!(
        drain.overflow.is_zero(),
        "overflow counted: {:?}",
        drain.overflow
    );
}
