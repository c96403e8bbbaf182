//! Addresses whose traffic stays on the link between a pod and its node.
//!
//! IPv6 neighbour discovery and MLD (from `fe80::/10` to `ff02::…`), IPv4
//! link-local services (`169.254.0.0/16`: a CNI's gateway address, the cloud
//! metadata endpoint, NodeLocal DNSCache) and multicast are never forwarded
//! off the node by a Kubernetes pod network. No resolver can name them (a
//! link-local address is the same on every link, a multicast group is nobody),
//! so the aggregator leaves samples with such an address out of the traffic
//! metrics and counts them in its own self-metrics (`docs/resolution.md`,
//! "Link-local and multicast").

use std::net::IpAddr;

/// True when `ip` is link-local or multicast: `fe80::/10`, `ff00::/8`,
/// `169.254.0.0/16`, `224.0.0.0/4`. IPv4-mapped IPv6 addresses are judged by
/// their IPv4 address.
pub fn is_link_scoped(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(s: &str) -> bool {
        is_link_scoped(s.parse().expect("test address parses"))
    }

    #[test]
    fn ipv6_link_local_unicast() {
        assert!(scoped("fe80::1"));
        assert!(scoped("fe80::a8c1:abff:fe12:3456"));
        // fe80::/10 reaches up to febf:ffff:…
        assert!(scoped("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!scoped("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        // fec0::/10 (deprecated site-local) is not link-local.
        assert!(!scoped("fec0::1"));
    }

    #[test]
    fn ipv6_multicast() {
        // MLDv2 reports, all-nodes, solicited-node, a global-scope group.
        assert!(scoped("ff02::16"));
        assert!(scoped("ff02::1"));
        assert!(scoped("ff02::1:ff12:3456"));
        assert!(scoped("ff0e::1"));
        assert!(scoped("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!scoped("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn ipv4_link_local() {
        assert!(scoped("169.254.0.0"));
        assert!(scoped("169.254.169.254"));
        assert!(scoped("169.254.20.10"));
        assert!(scoped("169.254.255.255"));
        assert!(!scoped("169.253.255.255"));
        assert!(!scoped("169.255.0.0"));
    }

    #[test]
    fn ipv4_multicast() {
        assert!(scoped("224.0.0.0"));
        assert!(scoped("224.0.0.22"));
        assert!(scoped("239.255.255.250"));
        assert!(!scoped("223.255.255.255"));
        // 240.0.0.0/4 is reserved, not multicast.
        assert!(!scoped("240.0.0.0"));
        assert!(!scoped("255.255.255.255"));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_judged_as_ipv4() {
        assert!(scoped("::ffff:169.254.1.1"));
        assert!(scoped("::ffff:224.0.0.251"));
        assert!(!scoped("::ffff:10.0.0.1"));
    }

    #[test]
    fn pod_node_and_public_addresses_are_not() {
        for a in [
            "10.244.1.5",
            "192.168.0.1",
            "172.16.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "8.8.8.8",
            "fd00:10:244::5",
            "2001:db8::1",
            "::1",
            "::",
        ] {
            assert!(!scoped(a), "{a} is not link-scoped");
        }
    }
}
