//! What the node's datapath does before netscope: other tools' BPF
//! programs on the ingress hooks of the node's links.
//!
//! A program on the ingress of a host link (the uplink: Cilium's
//! `bpf_host`, Calico's eBPF dataplane) or of a pod link (Cilium's
//! `bpf_lxc`) can deliver into a pod with `bpf_redirect_peer()`: those
//! packets never pass the host-side link's egress hook, where netscope's
//! `to_pod` observation sits. What this can know: that such programs are
//! attached (TCX programs and cls_bpf filters that are not netscope's).
//! What it cannot know: whether they redirect, and which traffic; a
//! program there is a reason to expect `to_pod` observations to be
//! missing, not a proof.

use std::io;

use netscope::discover::InterfaceFilter;
use netscope::Direction;

use crate::attach::{tcx_programs, PROGRAM_NAME_PREFIX};
use crate::netlink::{dump_links, tc_filters};

/// Foreign programs found on the ingress hooks of one kind of link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignIngress {
    /// Links that are not pod links (the uplink, bridges, …) with at
    /// least one foreign ingress program: (name, programs).
    pub host_links: Vec<(String, usize)>,
    /// Pod links (as `filter` selects them) with a foreign ingress program.
    pub pod_links: Vec<(String, usize)>,
}

impl ForeignIngress {
    /// Programs on host links' ingress.
    pub fn host_programs(&self) -> usize {
        self.host_links.iter().map(|(_, n)| n).sum()
    }
    /// Programs on pod links' ingress.
    pub fn pod_programs(&self) -> usize {
        self.pod_links.iter().map(|(_, n)| n).sum()
    }
}

/// Lists the TCX programs and cls_bpf filters on every link's ingress in
/// the calling thread's namespace that are not netscope's (`netscope_ids`:
/// its program ids; legacy filters are recognised by program name).
///
/// # Errors
/// Netlink errors on the link dump.
pub fn foreign_ingress(
    filter: &InterfaceFilter,
    netscope_ids: &[u32],
) -> io::Result<ForeignIngress> {
    let mut out = ForeignIngress::default();
    for link in dump_links()? {
        if link.iface.name == "lo" {
            continue;
        }
        let ifindex = link.iface.ifindex;
        // EINVAL on kernels without TCX: no TCX programs there.
        let tcx = tcx_programs(ifindex, Direction::FromPod).unwrap_or_default();
        // A pinned link of an earlier agent runs a netscope program of
        // another id until this agent replaces it (issue 15): by name.
        let mut n = tcx
            .iter()
            .filter(|id| !netscope_ids.contains(id))
            .filter(|id| {
                !crate::sys::prog_name_by_id(**id).is_ok_and(|n| n.starts_with(PROGRAM_NAME_PREFIX))
            })
            .count();
        n += tc_filters(ifindex, true)
            .unwrap_or_default()
            .iter()
            .filter(|f| !f.prog_name.starts_with(PROGRAM_NAME_PREFIX))
            .count();
        if n == 0 {
            continue;
        }
        if filter.matches(&link) {
            out.pod_links.push((link.iface.name.clone(), n));
        } else {
            out.host_links.push((link.iface.name.clone(), n));
        }
    }
    Ok(out)
}

/// Runs [`foreign_ingress`], exports the gauge
/// `netscope_agent_foreign_ingress_programs{links="host"|"pod"}` and logs
/// the result (warn when any is found). Meant for the agent's start.
pub fn report_foreign_ingress(filter: &InterfaceFilter, netscope_ids: &[u32]) {
    match foreign_ingress(filter, netscope_ids) {
        Ok(f) => {
            metrics::gauge!(netscope::metrics::AGENT_FOREIGN_INGRESS_PROGRAMS, "links" => "host")
                .set(f.host_programs() as f64);
            metrics::gauge!(netscope::metrics::AGENT_FOREIGN_INGRESS_PROGRAMS, "links" => "pod")
                .set(f.pod_programs() as f64);
            if f.host_links.is_empty() && f.pod_links.is_empty() {
                tracing::info!("no other BPF program on any link's ingress: packets into pods pass the host-side egress hook");
            } else {
                tracing::warn!(host_links = ?f.host_links, pod_links = ?f.pod_links, "other BPF programs run on link ingress hooks (a CNI datapath such as Cilium's bpf_host/bpf_lxc or Calico eBPF); if they deliver into pods with bpf_redirect_peer, packets skip the host-side egress hook and its to_pod observation");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not inspect the links' ingress programs"),
    }
}
