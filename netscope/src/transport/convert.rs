//! Conversions between [`Report`] and the protobuf `FlowReport`, with
//! validation of everything that comes off the wire. Nothing here panics on
//! input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use super::pb;
use crate::flow::{Counters, Direction, FlowKey, FlowSample, L4};
use crate::report::{InstanceId, Report};

/// Limits a report must respect to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationLimits {
    /// Most samples in one report.
    pub max_samples: usize,
    /// Longest node name (a Kubernetes node name is at most 253 bytes).
    pub max_node_name_len: usize,
    /// Longest window one report may cover (an agent that was cut off for
    /// long merges its deltas into one long window).
    pub max_window: Duration,
    /// Most bytes one packet may carry: an IPv6 packet with the largest
    /// non-jumbo payload, 40 + 65 535.
    pub max_bytes_per_packet: u64,
    /// Fewest bytes one packet may carry: a bare IPv4 header.
    pub min_bytes_per_packet: u64,
    /// Most bytes one sample (or the overflow) may carry: 1 PiB.
    pub max_bytes_per_sample: u64,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        ValidationLimits {
            max_samples: 200_000,
            max_node_name_len: 253,
            max_window: Duration::from_secs(7 * 24 * 3600),
            max_bytes_per_packet: 65_575,
            min_bytes_per_packet: 20,
            max_bytes_per_sample: 1 << 50,
        }
    }
}

/// Why a report was rejected. The server answers `InvalidArgument` with this
/// text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// `node_name` is empty.
    #[error("node_name is empty")]
    EmptyNodeName,
    /// `node_name` is too long.
    #[error("node_name is {len} bytes, over the limit of {max}")]
    NodeNameTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `agent_instance_id` is not 16 bytes.
    #[error("agent_instance_id is {len} bytes, expected 16")]
    InstanceIdLength {
        /// Its length.
        len: usize,
    },
    /// `sequence` is 0.
    #[error("sequence 0 is reserved: sequences start at 1")]
    ZeroSequence,
    /// A window bound is before the Unix epoch.
    #[error("window {which} {nanos} ns is before the Unix epoch")]
    NegativeTime {
        /// `start` or `end`.
        which: &'static str,
        /// The value.
        nanos: i64,
    },
    /// The window ends before it starts.
    #[error("window ends at {end_nanos} ns, before it starts at {start_nanos} ns")]
    WindowEndsBeforeStart {
        /// Window start.
        start_nanos: i64,
        /// Window end.
        end_nanos: i64,
    },
    /// The window is longer than allowed.
    #[error("window of {secs} s is longer than the limit of {max_secs} s")]
    WindowTooLong {
        /// Window length.
        secs: u64,
        /// The limit.
        max_secs: u64,
    },
    /// Too many samples.
    #[error("{count} samples, over the limit of {max}")]
    TooManySamples {
        /// Samples in the report.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An address has the wrong length for its family.
    #[error("sample {index}: {field} address is {len} bytes, expected {expected} for IPv{family}")]
    AddressLength {
        /// Index of the sample.
        index: usize,
        /// `src` or `dst`.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The length the family needs.
        expected: usize,
        /// 4 or 6.
        family: u8,
    },
    /// Unknown address family.
    #[error("sample {index}: unknown address family {value}")]
    UnknownFamily {
        /// Index of the sample.
        index: usize,
        /// The value on the wire.
        value: i32,
    },
    /// Unknown direction.
    #[error("sample {index}: unknown direction {value}")]
    UnknownDirection {
        /// Index of the sample.
        index: usize,
        /// The value on the wire.
        value: i32,
    },
    /// An L4 field does not fit its width.
    #[error("sample {index}: L4 {field} {value} does not fit in {bits} bits")]
    L4OutOfRange {
        /// Index of the sample.
        index: usize,
        /// `protocol`, `src_port` or `dst_port`.
        field: &'static str,
        /// The value on the wire.
        value: u32,
        /// Its width.
        bits: u8,
    },
    /// Bytes and packets that no real traffic can produce.
    #[error("{what}: {bytes} bytes in {packets} packets is impossible ({reason})")]
    AbsurdCounters {
        /// `sample N` or `overflow`.
        what: String,
        /// Bytes.
        bytes: u64,
        /// Packets.
        packets: u64,
        /// Which bound was broken.
        reason: &'static str,
    },
}

fn nanos_to_time(nanos: i64, which: &'static str) -> Result<SystemTime, ValidationError> {
    let n = u64::try_from(nanos).map_err(|_| ValidationError::NegativeTime { which, nanos })?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_nanos(n))
}

/// Nanoseconds since the Unix epoch, clamped to the `i64` range (times
/// before the epoch become 0).
pub fn time_to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn check_counters(
    what: impl FnOnce() -> String,
    c: Counters,
    limits: &ValidationLimits,
) -> Result<(), ValidationError> {
    let reason = if c.packets == 0 && c.bytes > 0 {
        Some("bytes without packets")
    } else if c.bytes > limits.max_bytes_per_sample {
        Some("more bytes than one sample may carry")
    } else if c.bytes < c.packets.saturating_mul(limits.min_bytes_per_packet) {
        Some("fewer bytes per packet than an IP header")
    } else if c.bytes > c.packets.saturating_mul(limits.max_bytes_per_packet) {
        Some("more bytes per packet than an IP packet can hold")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ValidationError::AbsurdCounters {
            what: what(),
            bytes: c.bytes,
            packets: c.packets,
            reason,
        }),
        None => Ok(()),
    }
}

fn addr(
    raw: &[u8],
    family: u8,
    index: usize,
    field: &'static str,
) -> Result<IpAddr, ValidationError> {
    let expected = if family == 4 { 4 } else { 16 };
    let err = || ValidationError::AddressLength {
        index,
        field,
        len: raw.len(),
        expected,
        family,
    };
    if family == 4 {
        let b: [u8; 4] = raw.try_into().map_err(|_| err())?;
        Ok(IpAddr::V4(Ipv4Addr::from(b)))
    } else {
        let b: [u8; 16] = raw.try_into().map_err(|_| err())?;
        Ok(IpAddr::V6(Ipv6Addr::from(b)))
    }
}

fn narrow<T: TryFrom<u32>>(
    value: u32,
    index: usize,
    field: &'static str,
    bits: u8,
) -> Result<T, ValidationError> {
    T::try_from(value).map_err(|_| ValidationError::L4OutOfRange {
        index,
        field,
        value,
        bits,
    })
}

/// Converts one wire sample.
///
/// # Errors
/// [`ValidationError`] naming the sample's `index` and the bad field.
pub fn sample_from_proto(
    s: &pb::FlowSample,
    index: usize,
    limits: &ValidationLimits,
) -> Result<FlowSample, ValidationError> {
    let family = match pb::AddressFamily::try_from(s.family) {
        Ok(pb::AddressFamily::Ipv4) => 4,
        Ok(pb::AddressFamily::Ipv6) => 6,
        _ => {
            return Err(ValidationError::UnknownFamily {
                index,
                value: s.family,
            })
        }
    };
    let direction = match pb::Direction::try_from(s.direction) {
        Ok(pb::Direction::FromPod) => Direction::FromPod,
        Ok(pb::Direction::ToPod) => Direction::ToPod,
        _ => {
            return Err(ValidationError::UnknownDirection {
                index,
                value: s.direction,
            })
        }
    };
    let src = addr(&s.src, family, index, "src")?;
    let dst = addr(&s.dst, family, index, "dst")?;
    let l4 = match &s.l4 {
        Some(l) => Some(L4 {
            proto: narrow(l.protocol, index, "protocol", 8)?,
            src_port: narrow(l.src_port, index, "src_port", 16)?,
            dst_port: narrow(l.dst_port, index, "dst_port", 16)?,
        }),
        None => None,
    };
    let counters = Counters::new(s.bytes, s.packets);
    check_counters(|| format!("sample {index}"), counters, limits)?;
    Ok(FlowSample {
        key: FlowKey {
            src,
            dst,
            direction,
            l4,
        },
        counters,
    })
}

/// Validates and converts a wire report.
///
/// # Errors
/// The first [`ValidationError`] found.
pub fn report_from_proto(
    r: pb::FlowReport,
    limits: &ValidationLimits,
) -> Result<Report, ValidationError> {
    if r.node_name.is_empty() {
        return Err(ValidationError::EmptyNodeName);
    }
    if r.node_name.len() > limits.max_node_name_len {
        return Err(ValidationError::NodeNameTooLong {
            len: r.node_name.len(),
            max: limits.max_node_name_len,
        });
    }
    let instance: [u8; 16] = r.agent_instance_id.as_slice().try_into().map_err(|_| {
        ValidationError::InstanceIdLength {
            len: r.agent_instance_id.len(),
        }
    })?;
    if r.sequence == 0 {
        return Err(ValidationError::ZeroSequence);
    }
    let window_start = nanos_to_time(r.window_start_unix_nanos, "start")?;
    let window_end = nanos_to_time(r.window_end_unix_nanos, "end")?;
    let Ok(len) = window_end.duration_since(window_start) else {
        return Err(ValidationError::WindowEndsBeforeStart {
            start_nanos: r.window_start_unix_nanos,
            end_nanos: r.window_end_unix_nanos,
        });
    };
    if len > limits.max_window {
        return Err(ValidationError::WindowTooLong {
            secs: len.as_secs(),
            max_secs: limits.max_window.as_secs(),
        });
    }
    if r.samples.len() > limits.max_samples {
        return Err(ValidationError::TooManySamples {
            count: r.samples.len(),
            max: limits.max_samples,
        });
    }
    let overflow = r
        .overflow
        .map_or_else(Counters::default, |c| Counters::new(c.bytes, c.packets));
    check_counters(|| String::from("overflow"), overflow, limits)?;
    let samples = r
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| sample_from_proto(s, i, limits))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Report {
        node: r.node_name,
        instance: InstanceId(instance),
        seq: r.sequence,
        window_start,
        window_end,
        samples,
        overflow,
        folded_flows: r.folded_flows,
    })
}

/// Converts one sample to its wire form.
pub fn sample_to_proto(s: &FlowSample) -> pb::FlowSample {
    let (src, dst, family) = match (s.key.src, s.key.dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (
            a.octets().to_vec(),
            b.octets().to_vec(),
            pb::AddressFamily::Ipv4,
        ),
        // Mixed families cannot come from one packet; send both as IPv6
        // (IPv4-mapped) rather than fail.
        (a, b) => (
            crate::flow::addr_to_raw(a).to_vec(),
            crate::flow::addr_to_raw(b).to_vec(),
            pb::AddressFamily::Ipv6,
        ),
    };
    pb::FlowSample {
        src,
        dst,
        family: family as i32,
        direction: match s.key.direction {
            Direction::FromPod => pb::Direction::FromPod as i32,
            Direction::ToPod => pb::Direction::ToPod as i32,
        },
        l4: s.key.l4.map(|l| pb::L4 {
            protocol: u32::from(l.proto),
            src_port: u32::from(l.src_port),
            dst_port: u32::from(l.dst_port),
        }),
        bytes: s.counters.bytes,
        packets: s.counters.packets,
    }
}

/// Converts a report to its wire form.
pub fn report_to_proto(r: &Report) -> pb::FlowReport {
    pb::FlowReport {
        node_name: r.node.clone(),
        agent_instance_id: r.instance.0.to_vec(),
        sequence: r.seq,
        window_start_unix_nanos: time_to_nanos(r.window_start),
        window_end_unix_nanos: time_to_nanos(r.window_end),
        samples: r.samples.iter().map(sample_to_proto).collect(),
        overflow: (!r.overflow.is_zero()).then_some(pb::Counters {
            bytes: r.overflow.bytes,
            packets: r.overflow.packets,
        }),
        folded_flows: r.folded_flows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::FlowReport {
        let r = Report {
            node: "node-a".into(),
            instance: InstanceId([7; 16]),
            seq: 3,
            window_start: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            window_end: SystemTime::UNIX_EPOCH + Duration::from_secs(110),
            samples: vec![
                FlowSample {
                    key: FlowKey::new(
                        "10.0.0.1".parse().expect("addr"),
                        "10.0.0.2".parse().expect("addr"),
                        Direction::FromPod,
                    ),
                    counters: Counters::new(1500, 1),
                },
                FlowSample {
                    key: FlowKey {
                        src: "fd00::1".parse().expect("addr"),
                        dst: "fd00::2".parse().expect("addr"),
                        direction: Direction::ToPod,
                        l4: Some(L4 {
                            proto: 6,
                            src_port: 443,
                            dst_port: 50000,
                        }),
                    },
                    counters: Counters::new(60, 1),
                },
            ],
            overflow: Counters::new(100, 2),
            folded_flows: 1,
        };
        report_to_proto(&r)
    }

    #[test]
    fn round_trip() {
        let p = good();
        let r = report_from_proto(p.clone(), &ValidationLimits::default()).expect("valid");
        assert_eq!(report_to_proto(&r), p);
    }

    #[test]
    fn bad_reports_are_rejected_with_context() {
        let limits = ValidationLimits {
            max_samples: 2,
            ..ValidationLimits::default()
        };
        type Mutate = fn(&mut pb::FlowReport);
        let cases: Vec<(&str, Mutate, &str)> = vec![
            ("empty node", |r| r.node_name.clear(), "node_name is empty"),
            (
                "short id",
                |r| r.agent_instance_id.truncate(3),
                "agent_instance_id is 3 bytes",
            ),
            ("seq 0", |r| r.sequence = 0, "sequence 0"),
            (
                "window backwards",
                |r| r.window_end_unix_nanos = r.window_start_unix_nanos - 1,
                "before it starts",
            ),
            (
                "negative",
                |r| r.window_start_unix_nanos = -5,
                "before the Unix epoch",
            ),
            (
                "src length",
                |r| r.samples[0].src = vec![1, 2, 3],
                "sample 0: src address is 3 bytes",
            ),
            (
                "v6 dst length",
                |r| r.samples[1].dst = vec![1; 4],
                "sample 1: dst address is 4 bytes",
            ),
            (
                "family",
                |r| r.samples[1].family = 5,
                "unknown address family 5",
            ),
            (
                "direction",
                |r| r.samples[0].direction = 0,
                "unknown direction 0",
            ),
            (
                "port",
                |r| r.samples[1].l4.as_mut().expect("l4").src_port = 70_000,
                "does not fit in 16 bits",
            ),
            (
                "bytes no packets",
                |r| r.samples[0].packets = 0,
                "bytes without packets",
            ),
            (
                "jumbo",
                |r| r.samples[0].bytes = 10_000_000,
                "more bytes per packet",
            ),
            (
                "tiny packets",
                |r| r.samples[0].packets = 1_000,
                "fewer bytes per packet",
            ),
            (
                "overflow",
                |r| r.overflow.as_mut().expect("overflow").bytes = u64::MAX,
                "overflow",
            ),
            (
                "too many",
                |r| {
                    let s = r.samples[0].clone();
                    r.samples.push(s);
                },
                "3 samples, over the limit of 2",
            ),
        ];
        for (name, mutate, want) in cases {
            let mut p = good();
            mutate(&mut p);
            match report_from_proto(p, &limits) {
                Ok(_) => panic!("{name}: accepted a bad report"),
                Err(e) => assert!(
                    e.to_string().contains(want),
                    "{name}: error {e:?} does not mention {want:?}"
                ),
            }
        }
    }
}
