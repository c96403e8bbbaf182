//! The flow model: what the kernel counts and what a drain returns.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which way a packet crossed the pod's link, seen from the host side.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Host-side TC ingress: the packet is leaving the pod.
    FromPod,
    /// Host-side TC egress: the packet is entering the pod.
    ToPod,
}

impl Direction {
    /// Both directions, in attach order.
    pub const BOTH: [Direction; 2] = [Direction::FromPod, Direction::ToPod];

    /// The value the BPF program stores in its key.
    pub fn as_raw(self) -> u8 {
        match self {
            Direction::FromPod => 0,
            Direction::ToPod => 1,
        }
    }

    /// Parses the BPF program's raw value.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Direction::FromPod),
            1 => Some(Direction::ToPod),
            _ => None,
        }
    }

    /// The TC hook on the host side of the pod's link that sees this direction.
    pub fn hook_name(self) -> &'static str {
        match self {
            Direction::FromPod => "ingress",
            Direction::ToPod => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::FromPod => "from_pod",
            Direction::ToPod => "to_pod",
        })
    }
}

/// Transport protocol and ports, kept only for packets whose remote address
/// is inside a Service CIDR, so that the agent can undo the Service NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct L4 {
    /// IP protocol number (6 = TCP, 17 = UDP, 132 = SCTP, ...).
    pub proto: u8,
    /// Source port (0 for protocols without ports and for non-first fragments).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// The identity of a counted flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address as it was on the wire.
    pub src: IpAddr,
    /// Destination address as it was on the wire.
    pub dst: IpAddr,
    /// Which hook saw the packet.
    pub direction: Direction,
    /// Protocol and ports, only for Service-CIDR traffic.
    pub l4: Option<L4>,
}

impl FlowKey {
    /// A key without L4 information.
    pub fn new(src: IpAddr, dst: IpAddr, direction: Direction) -> Self {
        FlowKey {
            src,
            dst,
            direction,
            l4: None,
        }
    }

    /// The address on the far side of the pod: `dst` for [`Direction::FromPod`],
    /// `src` for [`Direction::ToPod`].
    pub fn remote(&self) -> IpAddr {
        match self.direction {
            Direction::FromPod => self.dst,
            Direction::ToPod => self.src,
        }
    }

    /// The pod's own address: the other side of [`FlowKey::remote`].
    pub fn local(&self) -> IpAddr {
        match self.direction {
            Direction::FromPod => self.src,
            Direction::ToPod => self.dst,
        }
    }
}

/// Byte and packet counters. Bytes are L3 wire bytes: IP header plus payload,
/// without L2 or VLAN headers; a GSO packet counts as the segments it becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    /// L3 bytes.
    pub bytes: u64,
    /// Wire packets (segments).
    pub packets: u64,
}

impl Counters {
    /// Counters with the given values.
    pub fn new(bytes: u64, packets: u64) -> Self {
        Counters { bytes, packets }
    }

    /// Adds `other`, saturating instead of wrapping.
    pub fn add(&mut self, other: Counters) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.packets = self.packets.saturating_add(other.packets);
    }

    /// True when both counters are zero.
    pub fn is_zero(&self) -> bool {
        self.bytes == 0 && self.packets == 0
    }
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, rhs: Counters) {
        self.add(rhs);
    }
}

/// One flow's counters for one drain interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSample {
    /// What was counted.
    pub key: FlowKey,
    /// How much.
    pub counters: Counters,
}

/// Converts a 16-byte address as the BPF program stores it (IPv4 as an
/// IPv4-mapped IPv6 address) into an [`IpAddr`].
pub fn addr_from_raw(raw: [u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        4 => {
            let v6 = Ipv6Addr::from(raw);
            v6.to_ipv4_mapped().map(IpAddr::V4)
        }
        6 => Some(IpAddr::V6(Ipv6Addr::from(raw))),
        _ => None,
    }
}

/// The 16-byte form of an address, IPv4 mapped into IPv6.
pub fn addr_to_raw(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address family number (4 or 6) of an address.
pub fn family_of(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    }
}

/// Unspecified IPv4 address, used where a record has no real address.
pub const UNSPECIFIED_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_both_families() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(addr_from_raw(addr_to_raw(v4), 4), Some(v4));
        assert_eq!(addr_from_raw(addr_to_raw(v6), 6), Some(v6));
        // A v6 address that is not IPv4-mapped is not a valid family-4 address.
        assert_eq!(addr_from_raw(addr_to_raw(v6), 4), None);
        assert_eq!(addr_from_raw(addr_to_raw(v4), 9), None);
    }

    #[test]
    fn remote_and_local_follow_direction() {
        let pod: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let out = FlowKey::new(pod, other, Direction::FromPod);
        let inn = FlowKey::new(other, pod, Direction::ToPod);
        assert_eq!((out.local(), out.remote()), (pod, other));
        assert_eq!((inn.local(), inn.remote()), (pod, other));
    }

    #[test]
    fn counters_saturate() {
        let mut c = Counters::new(u64::MAX - 1, 1);
        c += Counters::new(5, 2);
        assert_eq!(c, Counters::new(u64::MAX, 3));
    }
}
