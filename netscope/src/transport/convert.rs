//! Conversions between [`Report`] and the protobuf `FlowReport`, with
//! validation of everything that comes off the wire. Nothing here panics on
//! input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use super::pb;
use crate::flow::{Counters, Direction, FlowKey, FlowSample, L4};
use crate::report::{InstanceId, Report};

/// Default most samples in one report. The agent splits its buffer into
/// reports of at most this many samples.
pub const DEFAULT_MAX_SAMPLES: usize = crate::report::DEFAULT_MAX_REPORT_SAMPLES;

/// The most bytes one sample can take on the wire: an IPv6 sample with L4
/// ports and 64-bit counters at their widest (75 bytes), plus its field tag
/// and length prefix. The agent sizes its reports with it.
pub const MAX_ENCODED_SAMPLE_BYTES: usize = 77;

/// Room for everything in a report but its samples (node name up to 253
/// bytes, instance id, sequence, window, overflow, folded flows).
pub const REPORT_HEADER_BYTES: usize = 512;

/// Most samples one report may carry so that it is accepted by an
/// aggregator with `max_samples` and `max_message_bytes`, whatever the
/// samples hold: the agent builds no report larger than this. At least 1.
pub fn samples_per_report(max_samples: usize, max_message_bytes: usize) -> usize {
    let by_size = max_message_bytes.saturating_sub(REPORT_HEADER_BYTES) / MAX_ENCODED_SAMPLE_BYTES;
    max_samples.min(by_size).max(1)
}

/// Default line rate the plausibility bound assumes for one node: 100 GB/s
/// (800 Gbit/s), counting every pod link of the node in both directions.
pub const DEFAULT_MAX_NODE_BYTES_PER_SEC: u64 = 100_000_000_000;

/// Limits a report must respect to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationLimits {
    /// Most samples in one report. Checked while decoding, before the
    /// samples are allocated.
    pub max_samples: usize,
    /// Longest node name (a Kubernetes node name is at most 253 bytes).
    pub max_node_name_len: usize,
    /// Longest window one report may cover (an agent that was cut off for
    /// long merges its deltas into one long window).
    pub max_window: Duration,
    /// How far in the future (by the aggregator's clock) a window may end:
    /// the clock skew tolerated between agents and the aggregator.
    pub max_clock_skew: Duration,
    /// Most bytes one packet may carry: an IPv6 packet with the largest
    /// non-jumbo payload, 40 + 65 535.
    pub max_bytes_per_packet: u64,
    /// Fewest bytes one packet may carry: a bare IPv4 header.
    pub min_bytes_per_packet: u64,
    /// Most bytes one sample (or the overflow) may carry: 1 PiB.
    pub max_bytes_per_sample: u64,
    /// The line rate a node can reach, in bytes per second, all its pods'
    /// links and both directions together. A report may carry at most
    /// `max_node_bytes_per_sec x (window + report_grace)` bytes.
    pub max_node_bytes_per_sec: u64,
    /// Time added to every window for the plausibility bound (a window's
    /// counters can include packets counted just before it started, and
    /// short windows must not be starved).
    pub report_grace: Duration,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        ValidationLimits {
            max_samples: DEFAULT_MAX_SAMPLES,
            max_node_name_len: 253,
            max_window: Duration::from_secs(7 * 24 * 3600),
            max_clock_skew: Duration::from_secs(300),
            max_bytes_per_packet: 65_575,
            min_bytes_per_packet: 20,
            max_bytes_per_sample: 1 << 50,
            max_node_bytes_per_sec: DEFAULT_MAX_NODE_BYTES_PER_SEC,
            report_grace: Duration::from_secs(60),
        }
    }
}

impl ValidationLimits {
    /// Most bytes a report covering `window` may carry.
    pub fn byte_budget(&self, window: Duration) -> u64 {
        let secs = window.saturating_add(self.report_grace).as_secs_f64();
        let budget = self.max_node_bytes_per_sec as f64 * secs;
        if budget >= u64::MAX as f64 {
            u64::MAX
        } else {
            budget as u64
        }
    }
}

/// Why one sample was dropped: the label values of
/// `netscope_aggregator_dropped_samples_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// An address has the wrong length for its family.
    AddressLength,
    /// Unknown address family.
    UnknownFamily,
    /// Unknown direction.
    UnknownDirection,
    /// An L4 field does not fit its width.
    L4OutOfRange,
    /// Bytes without packets.
    BytesWithoutPackets,
    /// More bytes than one sample may carry.
    SampleTooLarge,
    /// Fewer bytes per packet than an IP header.
    BelowIpHeader,
    /// More bytes per packet than an IP packet can hold.
    AboveMaxPacket,
    /// The observation was reported by a node other than the observed
    /// pod's (aggregator side, see [`crate::aggregate`]).
    WrongNode,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 9] = [
        DropReason::AddressLength,
        DropReason::UnknownFamily,
        DropReason::UnknownDirection,
        DropReason::L4OutOfRange,
        DropReason::BytesWithoutPackets,
        DropReason::SampleTooLarge,
        DropReason::BelowIpHeader,
        DropReason::AboveMaxPacket,
        DropReason::WrongNode,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::AddressLength => "address_length",
            DropReason::UnknownFamily => "unknown_family",
            DropReason::UnknownDirection => "unknown_direction",
            DropReason::L4OutOfRange => "l4_out_of_range",
            DropReason::BytesWithoutPackets => "bytes_without_packets",
            DropReason::SampleTooLarge => "sample_too_large",
            DropReason::BelowIpHeader => "below_ip_header",
            DropReason::AboveMaxPacket => "above_max_packet",
            DropReason::WrongNode => "wrong_node",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Samples dropped from one report, per reason, and the first one's error
/// (logged once per report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleDrops {
    counts: [u64; DropReason::ALL.len()],
    /// The first dropped sample's error, naming its index and field.
    pub first: Option<ValidationError>,
}

impl SampleDrops {
    /// Records one dropped sample.
    pub fn add(&mut self, reason: DropReason, error: impl FnOnce() -> ValidationError) {
        self.counts[reason.index()] += 1;
        if self.first.is_none() {
            self.first = Some(error());
        }
    }

    /// Dropped samples with `reason`.
    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// All dropped samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.counts[r.index()]))
            .filter(|(_, n)| *n > 0)
    }
}

/// A report that passed validation, and the samples dropped from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The report, with the valid samples only.
    pub report: Report,
    /// What was dropped, by reason.
    pub drops: SampleDrops,
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
    /// The window ends further in the future than the tolerated clock skew.
    #[error(
        "window ends {ahead_secs} s in the future, beyond the tolerated clock skew of {max_secs} s"
    )]
    WindowInFuture {
        /// How far ahead of the aggregator's clock, in seconds.
        ahead_secs: u64,
        /// The tolerated skew.
        max_secs: u64,
    },
    /// The report carries more bytes than its window allows at the
    /// documented line rate.
    #[error("{bytes} bytes in a window of {window_secs} s is more than a node can carry ({budget} bytes at most)")]
    ImplausibleBytes {
        /// Bytes in the report (saturated sum).
        bytes: u64,
        /// Window length.
        window_secs: u64,
        /// The bound.
        budget: u64,
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

impl ValidationError {
    /// For an error about one sample: why it is dropped. `None` for errors
    /// about the report as a whole, which refuse it.
    pub fn drop_reason(&self) -> Option<DropReason> {
        Some(match self {
            ValidationError::AddressLength { .. } => DropReason::AddressLength,
            ValidationError::UnknownFamily { .. } => DropReason::UnknownFamily,
            ValidationError::UnknownDirection { .. } => DropReason::UnknownDirection,
            ValidationError::L4OutOfRange { .. } => DropReason::L4OutOfRange,
            ValidationError::AbsurdCounters { reason, .. } => match *reason {
                BYTES_WITHOUT_PACKETS => DropReason::BytesWithoutPackets,
                SAMPLE_TOO_LARGE => DropReason::SampleTooLarge,
                BELOW_IP_HEADER => DropReason::BelowIpHeader,
                _ => DropReason::AboveMaxPacket,
            },
            _ => return None,
        })
    }
}

const BYTES_WITHOUT_PACKETS: &str = "bytes without packets";
const SAMPLE_TOO_LARGE: &str = "more bytes than one sample may carry";
const BELOW_IP_HEADER: &str = "fewer bytes per packet than an IP header";
const ABOVE_MAX_PACKET: &str = "more bytes per packet than an IP packet can hold";

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
        Some(BYTES_WITHOUT_PACKETS)
    } else if c.bytes > limits.max_bytes_per_sample {
        Some(SAMPLE_TOO_LARGE)
    } else if c.bytes < c.packets.saturating_mul(limits.min_bytes_per_packet) {
        Some(BELOW_IP_HEADER)
    } else if c.bytes > c.packets.saturating_mul(limits.max_bytes_per_packet) {
        Some(ABOVE_MAX_PACKET)
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

/// Validates and converts a wire report, as of `now` (the receiver's
/// clock, for the future-window check).
///
/// Errors about the report as a whole (node name, instance id, sequence,
/// window, sample count, byte budget) refuse it. A bad sample, or bad
/// overflow counters, is dropped and counted in [`Validated::drops`]; the
/// rest of the report counts.
///
/// # Errors
/// The first report-level [`ValidationError`] found.
pub fn report_from_proto(
    r: pb::FlowReport,
    limits: &ValidationLimits,
    now: SystemTime,
) -> Result<Validated, ValidationError> {
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
    if let Ok(ahead) = window_end.duration_since(now) {
        if ahead > limits.max_clock_skew {
            return Err(ValidationError::WindowInFuture {
                ahead_secs: ahead.as_secs(),
                max_secs: limits.max_clock_skew.as_secs(),
            });
        }
    }
    if r.samples.len() > limits.max_samples {
        return Err(ValidationError::TooManySamples {
            count: r.samples.len(),
            max: limits.max_samples,
        });
    }
    let mut drops = SampleDrops::default();
    let mut overflow = r
        .overflow
        .map_or_else(Counters::default, |c| Counters::new(c.bytes, c.packets));
    if let Err(e) = check_counters(|| String::from("overflow"), overflow, limits) {
        if let Some(reason) = e.drop_reason() {
            drops.add(reason, || e);
        }
        overflow = Counters::default();
    }
    let mut total = overflow;
    let mut samples = Vec::with_capacity(r.samples.len());
    for (i, s) in r.samples.iter().enumerate() {
        match sample_from_proto(s, i, limits) {
            Ok(s) => {
                total += s.counters;
                samples.push(s);
            }
            Err(e) => match e.drop_reason() {
                Some(reason) => drops.add(reason, || e),
                None => return Err(e),
            },
        }
    }
    let budget = limits.byte_budget(len);
    if total.bytes > budget {
        return Err(ValidationError::ImplausibleBytes {
            bytes: total.bytes,
            window_secs: len.as_secs(),
            budget,
        });
    }
    Ok(Validated {
        report: Report {
            node: r.node_name,
            instance: InstanceId(instance),
            seq: r.sequence,
            window_start,
            window_end,
            samples,
            overflow,
            folded_flows: r.folded_flows,
        },
        drops,
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

/// Counts the `samples` fields (field 6) of an encoded `FlowReport` by
/// walking its top-level fields, without decoding or allocating anything:
/// the server checks the sample limit with it before decoding. Returns
/// `None` when the bytes are not a well-formed sequence of protobuf fields
/// (the decoder then reports them as malformed).
pub fn count_encoded_samples(mut buf: &[u8]) -> Option<usize> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn skip(buf: &mut &[u8], n: u64) -> Option<()> {
        let n = usize::try_from(n).ok()?;
        *buf = buf.get(n..)?;
        Some(())
    }
    let mut samples = 0usize;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => {
                varint(&mut buf)?;
            }
            1 => skip(&mut buf, 8)?,
            2 => {
                let len = varint(&mut buf)?;
                skip(&mut buf, len)?;
                if key >> 3 == 6 {
                    samples += 1;
                }
            }
            5 => skip(&mut buf, 4)?,
            // Groups (3, 4) and reserved wire types: not in this schema.
            _ => return None,
        }
    }
    Some(samples)
}

#[cfg(test)]
mod tests;
