//! Undoing Service NAT in the agent (docs/design.md §4).
//!
//! kube-proxy DNATs a request to a ClusterIP on the client's node and
//! un-DNATs the reply there. So on the client pod's interface the request
//! (`FromPod`) has `dst = ClusterIP` and the reply (`ToPod`) has
//! `src = ClusterIP`. The data path keeps protocol and ports for exactly
//! those packets; [`ServiceNat`] looks each such sample up in the node's
//! conntrack table and rewrites the ClusterIP to the real backend, then
//! merges samples that now have the same key.
//!
//! - The tuple is looked up as the client sent it: for a `ToPod` reply,
//!   source and destination are swapped first.
//! - The entry's reply source is the backend only if the entry's status has
//!   `IPS_DST_NAT` (0x20).
//! - A sample with no usable entry (gone, never made, or not DNATed) keeps
//!   the Service address, is counted, and resolves to kind `service` at the
//!   aggregator. It is never dropped.
//!
//! The lookup itself is the [`ConntrackLookup`] trait; on Linux with the
//! `conntrack` feature, [`NetlinkConntrack`] implements it over ctnetlink
//! (needs `CAP_NET_ADMIN` in the node's network namespace).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::flow::{Counters, Direction, FlowKey, FlowSample};

/// conntrack status bit: the destination was NATed.
pub const IPS_DST_NAT: u32 = 0x20;

/// Protocols whose conntrack tuples carry ports: TCP, UDP, SCTP, UDP-Lite.
pub const PORT_PROTOCOLS: [u8; 4] = [6, 17, 132, 136];

/// A conntrack original-direction tuple: the connection as the client sent
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// IP protocol number.
    pub proto: u8,
    /// Client address.
    pub src: IpAddr,
    /// Address the client sent to (the ClusterIP).
    pub dst: IpAddr,
    /// Client port.
    pub src_port: u16,
    /// Service port.
    pub dst_port: u16,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proto {} {}:{} -> {}:{}",
            self.proto, self.src, self.src_port, self.dst, self.dst_port
        )
    }
}

impl Tuple {
    /// The original tuple behind a sample that carries L4 information, or
    /// `None` for samples without it (or without ports).
    pub fn of_sample(key: &FlowKey) -> Option<Tuple> {
        let l4 = key.l4?;
        if !PORT_PROTOCOLS.contains(&l4.proto) {
            return None;
        }
        Some(match key.direction {
            // Request leaving the client: as sent.
            Direction::FromPod => Tuple {
                proto: l4.proto,
                src: key.src,
                dst: key.dst,
                src_port: l4.src_port,
                dst_port: l4.dst_port,
            },
            // Reply entering the client (src = ClusterIP): swap.
            Direction::ToPod => Tuple {
                proto: l4.proto,
                src: key.dst,
                dst: key.src,
                src_port: l4.dst_port,
                dst_port: l4.src_port,
            },
        })
    }
}

/// What conntrack knows about one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatEntry {
    /// The entry's status bits.
    pub status: u32,
    /// Source of the reply-direction tuple: the backend when DNATed.
    pub reply_src: IpAddr,
}

impl NatEntry {
    /// The backend address, if the entry was DNATed.
    pub fn backend(&self) -> Option<IpAddr> {
        (self.status & IPS_DST_NAT != 0).then_some(self.reply_src)
    }
}

/// Errors from a conntrack lookup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatError {
    /// The netlink request failed for another reason than "no such entry".
    #[error("conntrack lookup of {tuple} failed")]
    Lookup {
        /// The tuple looked up.
        tuple: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer lacked an attribute.
    #[error("conntrack answer for {tuple} has no {attr}")]
    Answer {
        /// The tuple looked up.
        tuple: String,
        /// The missing attribute.
        attr: &'static str,
    },
}

/// Looks tuples up in a conntrack table.
pub trait ConntrackLookup: Send {
    /// The entry whose original tuple is `tuple`, or `None` if there is none.
    ///
    /// # Errors
    /// [`NatError`] when the table could not be asked.
    fn lookup(&mut self, tuple: &Tuple) -> Result<Option<NatEntry>, NatError>;
}

/// Counts from one [`ServiceNat::resolve`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Samples rewritten to their backend.
    pub resolved: u64,
    /// Samples left with the Service address: no entry.
    pub unresolved: u64,
    /// Bytes and packets of the unresolved samples.
    pub unresolved_counters: Counters,
    /// Samples left unresolved because the entry was not DNATed.
    pub not_dnat: u64,
    /// Lookups that failed.
    pub errors: u64,
    /// Samples before merging.
    pub samples_in: usize,
    /// Samples after merging.
    pub samples_out: usize,
}

/// Rewrites Service-CIDR samples to their backends through a
/// [`ConntrackLookup`], then merges same-key samples. Every byte is kept.
pub struct ServiceNat<L> {
    lookup: L,
    totals: NatStats,
}

impl<L> fmt::Debug for ServiceNat<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceNat")
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl<L: ConntrackLookup> ServiceNat<L> {
    /// A resolver using `lookup`.
    pub fn new(lookup: L) -> Self {
        ServiceNat {
            lookup,
            totals: NatStats::default(),
        }
    }

    /// Sums over all calls so far (`samples_in`/`samples_out` included).
    pub fn totals(&self) -> NatStats {
        self.totals
    }

    /// Resolves and merges one drain's samples. Also records
    /// `netscope_agent_nat_*` metrics.
    pub fn resolve(&mut self, samples: Vec<FlowSample>) -> (Vec<FlowSample>, NatStats) {
        let mut stats = NatStats {
            samples_in: samples.len(),
            ..NatStats::default()
        };
        // One connection shows up as a request and a reply sample: look each
        // tuple up once per drain.
        let mut cache: HashMap<Tuple, Option<NatEntry>> = HashMap::new();
        let mut merged: HashMap<FlowKey, Counters> = HashMap::with_capacity(samples.len());
        let mut order: Vec<FlowKey> = Vec::with_capacity(samples.len());
        for s in samples {
            let mut key = s.key;
            if let Some(tuple) = Tuple::of_sample(&s.key) {
                let entry = match cache.get(&tuple) {
                    Some(e) => *e,
                    None => {
                        let e = match self.lookup.lookup(&tuple) {
                            Ok(e) => e,
                            Err(err) => {
                                stats.errors += 1;
                                tracing::debug!(error = %err, "conntrack lookup failed");
                                None
                            }
                        };
                        cache.insert(tuple, e);
                        e
                    }
                };
                match entry.map(|e| (e, e.backend())) {
                    Some((_, Some(backend))) => {
                        match key.direction {
                            Direction::FromPod => key.dst = backend,
                            Direction::ToPod => key.src = backend,
                        }
                        key.l4 = None;
                        stats.resolved += 1;
                    }
                    Some((_, None)) => {
                        stats.not_dnat += 1;
                        stats.unresolved += 1;
                        stats.unresolved_counters += s.counters;
                        key.l4 = None;
                    }
                    None => {
                        stats.unresolved += 1;
                        stats.unresolved_counters += s.counters;
                        key.l4 = None;
                    }
                }
            } else if s.key.l4.is_some() {
                // Service traffic without ports (ICMP, fragments): keep the
                // Service address.
                stats.unresolved += 1;
                stats.unresolved_counters += s.counters;
                key.l4 = None;
            }
            match merged.get_mut(&key) {
                Some(c) => *c += s.counters,
                None => {
                    merged.insert(key, s.counters);
                    order.push(key);
                }
            }
        }
        let out: Vec<FlowSample> = order
            .into_iter()
            .filter_map(|key| merged.get(&key).map(|c| FlowSample { key, counters: *c }))
            .collect();
        stats.samples_out = out.len();
        metrics::counter!(crate::metrics::AGENT_NAT_RESOLVED_TOTAL).increment(stats.resolved);
        metrics::counter!(crate::metrics::AGENT_NAT_UNRESOLVED_TOTAL).increment(stats.unresolved);
        metrics::counter!(crate::metrics::AGENT_NAT_UNRESOLVED_BYTES_TOTAL)
            .increment(stats.unresolved_counters.bytes);
        metrics::counter!(crate::metrics::AGENT_NAT_LOOKUP_ERRORS_TOTAL).increment(stats.errors);
        if stats.unresolved > 0 {
            tracing::debug!(
                unresolved = stats.unresolved,
                bytes = stats.unresolved_counters.bytes,
                "Service samples without a conntrack entry: reported with the Service address"
            );
        }
        let t = &mut self.totals;
        t.resolved += stats.resolved;
        t.unresolved += stats.unresolved;
        t.unresolved_counters += stats.unresolved_counters;
        t.not_dnat += stats.not_dnat;
        t.errors += stats.errors;
        t.samples_in += stats.samples_in;
        t.samples_out += stats.samples_out;
        (out, stats)
    }
}

#[cfg(feature = "grpc")]
impl<L: ConntrackLookup> crate::report::SampleTransform for ServiceNat<L> {
    fn transform(&mut self, samples: Vec<FlowSample>) -> Vec<FlowSample> {
        self.resolve(samples).0
    }
}

#[cfg(all(target_os = "linux", feature = "conntrack"))]
pub use netlink::NetlinkConntrack;

#[cfg(all(target_os = "linux", feature = "conntrack"))]
mod netlink {
    use std::net::IpAddr;

    use netlink_bindings::conntrack;
    use netlink_socket2::NetlinkSocket;

    use super::{ConntrackLookup, NatEntry, NatError, Tuple};

    /// Linux address family numbers (`AF_INET`, `AF_INET6`).
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;

    /// conntrack lookups over ctnetlink (a real get-by-tuple, a few µs each).
    ///
    /// The netlink socket is opened at the first lookup, in the network
    /// namespace of the calling thread at that moment, and stays in that
    /// namespace. Needs `CAP_NET_ADMIN` there.
    #[derive(Default)]
    pub struct NetlinkConntrack {
        sock: NetlinkSocket,
    }

    impl std::fmt::Debug for NetlinkConntrack {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NetlinkConntrack").finish_non_exhaustive()
        }
    }

    impl NetlinkConntrack {
        /// A lookup that opens its socket on first use.
        pub fn new() -> Self {
            Self::default()
        }
    }

    fn ip_of(
        attrs: &conntrack::IterableTupleIpAttrs<'_>,
        tuple: &Tuple,
    ) -> Result<IpAddr, NatError> {
        if let Ok(v4) = attrs.get_ip_v4_src() {
            return Ok(IpAddr::V4(v4));
        }
        attrs
            .get_ip_v6_src()
            .map(IpAddr::V6)
            .map_err(|_| NatError::Answer {
                tuple: tuple.to_string(),
                attr: "reply source address",
            })
    }

    impl ConntrackLookup for NetlinkConntrack {
        fn lookup(&mut self, tuple: &Tuple) -> Result<Option<NatEntry>, NatError> {
            let family = match (tuple.src, tuple.dst) {
                (IpAddr::V4(_), IpAddr::V4(_)) => AF_INET,
                (IpAddr::V6(_), IpAddr::V6(_)) => AF_INET6,
                // A tuple cannot mix families.
                _ => return Ok(None),
            };
            let mut header = conntrack::Nfgenmsg::new();
            header.nfgen_family = family;
            let mut request = conntrack::Request::new().op_get_do(&header);
            {
                let ip = request.encode().nested_tuple_orig().nested_tuple_ip();
                let ip = match (tuple.src, tuple.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => ip.push_ip_v4_src(s).push_ip_v4_dst(d),
                    (IpAddr::V6(s), IpAddr::V6(d)) => ip.push_ip_v6_src(s).push_ip_v6_dst(d),
                    _ => ip,
                };
                ip.end_nested()
                    .nested_tuple_proto()
                    .push_proto_num(tuple.proto)
                    .push_proto_src_port(tuple.src_port)
                    .push_proto_dst_port(tuple.dst_port)
                    .end_nested()
                    .end_nested();
            }
            let lookup_err = |source: std::io::Error| NatError::Lookup {
                tuple: tuple.to_string(),
                source,
            };
            let mut reply = self.sock.request(&request).map_err(lookup_err)?;
            let (_, attrs) = match reply.recv_one() {
                Ok(r) => r,
                Err(e) if e.as_io_error().kind() == std::io::ErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(e) => return Err(lookup_err(e.into())),
            };
            let answer = |attr| NatError::Answer {
                tuple: tuple.to_string(),
                attr,
            };
            let status = attrs.get_status().map_err(|_| answer("status"))?;
            let reply_tuple = attrs.get_tuple_reply().map_err(|_| answer("reply tuple"))?;
            let ip = reply_tuple
                .get_tuple_ip()
                .map_err(|_| answer("reply addresses"))?;
            let reply_src = ip_of(&ip, tuple)?;
            Ok(Some(NatEntry { status, reply_src }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::L4;

    struct Table(HashMap<Tuple, NatEntry>, usize);
    impl ConntrackLookup for Table {
        fn lookup(&mut self, tuple: &Tuple) -> Result<Option<NatEntry>, NatError> {
            self.1 += 1;
            Ok(self.0.get(tuple).copied())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn key(src: &str, dst: &str, dir: Direction, sp: u16, dp: u16) -> FlowKey {
        FlowKey {
            src: ip(src),
            dst: ip(dst),
            direction: dir,
            l4: Some(L4 {
                proto: 6,
                src_port: sp,
                dst_port: dp,
            }),
        }
    }

    #[test]
    fn request_and_reply_resolve_to_backend_and_merge() {
        let client = "10.0.1.5";
        let vip = "10.96.0.10";
        let backend = "10.0.2.7";
        let orig = Tuple {
            proto: 6,
            src: ip(client),
            dst: ip(vip),
            src_port: 40000,
            dst_port: 80,
        };
        let mut table = HashMap::new();
        table.insert(
            orig,
            NatEntry {
                status: IPS_DST_NAT | 0x2,
                reply_src: ip(backend),
            },
        );
        // Same VIP, another client port, entry gone.
        let mut nat = ServiceNat::new(Table(table, 0));
        let samples = vec![
            FlowSample {
                key: key(client, vip, Direction::FromPod, 40000, 80),
                counters: Counters::new(100, 2),
            },
            FlowSample {
                key: key(vip, client, Direction::ToPod, 80, 40000),
                counters: Counters::new(2800, 3),
            },
            FlowSample {
                key: key(client, vip, Direction::FromPod, 40001, 80),
                counters: Counters::new(60, 1),
            },
            FlowSample {
                key: key(client, vip, Direction::FromPod, 40002, 80),
                counters: Counters::new(60, 1),
            },
            FlowSample {
                key: FlowKey::new(ip(client), ip(backend), Direction::FromPod),
                counters: Counters::new(40, 1),
            },
        ];
        let (out, stats) = nat.resolve(samples);
        assert_eq!(stats.resolved, 2);
        assert_eq!(stats.unresolved, 2);
        assert_eq!(stats.unresolved_counters, Counters::new(120, 2));
        assert_eq!(nat.lookup.1, 3, "request and reply share one lookup");
        let find = |k: FlowKey| out.iter().find(|s| s.key == k).map(|s| s.counters);
        assert_eq!(
            find(FlowKey::new(ip(client), ip(backend), Direction::FromPod)),
            Some(Counters::new(140, 3)),
            "resolved request merged with the direct sample"
        );
        assert_eq!(
            find(FlowKey::new(ip(backend), ip(client), Direction::ToPod)),
            Some(Counters::new(2800, 3))
        );
        assert_eq!(
            find(FlowKey::new(ip(client), ip(vip), Direction::FromPod)),
            Some(Counters::new(120, 2)),
            "unresolved samples keep the Service address and merge"
        );
        let total: u64 = out.iter().map(|s| s.counters.bytes).sum();
        assert_eq!(total, 100 + 2800 + 60 + 60 + 40, "every byte kept");
    }

    #[test]
    fn entry_without_dnat_is_not_trusted() {
        let t = Tuple {
            proto: 17,
            src: ip("10.0.1.5"),
            dst: ip("10.96.0.10"),
            src_port: 5353,
            dst_port: 53,
        };
        let mut table = HashMap::new();
        table.insert(
            t,
            NatEntry {
                status: 0x2,
                reply_src: ip("10.96.0.10"),
            },
        );
        let mut nat = ServiceNat::new(Table(table, 0));
        let mut k = key("10.0.1.5", "10.96.0.10", Direction::FromPod, 5353, 53);
        if let Some(l4) = k.l4.as_mut() {
            l4.proto = 17;
        }
        let (out, stats) = nat.resolve(vec![FlowSample {
            key: k,
            counters: Counters::new(80, 1),
        }]);
        assert_eq!((stats.resolved, stats.not_dnat), (0, 1));
        assert_eq!(out[0].key.dst, ip("10.96.0.10"));
    }
}

#[cfg(all(test, target_os = "linux", feature = "conntrack", feature = "grpc"))]
mod send_check {
    /// The agent spawns the reporter, so its NAT transform must be `Send`.
    #[test]
    fn netlink_service_nat_is_a_sample_transform() {
        fn is_transform<T: crate::report::SampleTransform + Send + 'static>() {}
        is_transform::<super::ServiceNat<super::NetlinkConntrack>>();
    }
}
