// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Helper programs for netscope's tests and benchmarks. None of these is part
 * of the product:
 * - empty / baseline_count: baselines that the datapath benchmark compares
 *   the real program against, in the same run;
 * - vlan_push / vlan_pop: tag and untag a pod's frames, since the test
 *   kernels have no 802.1Q devices;
 * - cni_count / cni_drop: stand-ins for a CNI's own program on the same hook,
 *   for coexistence tests.
 */
#ifndef NETSCOPE_TESTPROGS_BPF_C
#define NETSCOPE_TESTPROGS_BPF_C

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netscope.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Baseline: the plain one-map per-CPU counting program. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH); /* same map type as netscope's tables */
	__uint(max_entries, NS_DEFAULT_MAX_FLOWS); /* room for the benchmark's keys */
	__type(key, struct flow_key);		/* same key as netscope */
	__type(value, struct flow_value);	/* same value as netscope */
} baseline_flows SEC(".maps");

/* VLAN id (and TPID) that vlan_push adds. */
const volatile __u16 push_vlan_id = 100;
const volatile __u16 push_vlan_proto = ETH_P_8021Q;

/* Packets seen by cni_count / cni_drop, and packets dropped by cni_drop. */
__u64 cni_seen = 0;
__u64 cni_dropped = 0;
/* Packets vlan_pop found with a tag in skb metadata. */
__u64 vlan_popped = 0;
/* cni_drop drops UDP packets to this destination port. */
const volatile __u16 drop_udp_port = 9;

SEC("tc")
int empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("tc")
int baseline_count(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct flow_key key = {};
	struct flow_value *v, init;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	key.family = NS_FAMILY_V4;
	key.src[3] = ip->saddr;
	key.dst[3] = ip->daddr;
	v = bpf_map_lookup_elem(&baseline_flows, &key);
	if (v) {
		v->bytes += skb->len - sizeof(*eth);
		v->packets += 1;
		return TC_ACT_UNSPEC;
	}
	init.bytes = skb->len - sizeof(*eth);
	init.packets = 1;
	bpf_map_update_elem(&baseline_flows, &key, &init, BPF_NOEXIST);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int vlan_push(struct __sk_buff *skb)
{
	bpf_skb_vlan_push(skb, bpf_htons(push_vlan_proto), push_vlan_id);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int vlan_pop(struct __sk_buff *skb)
{
	/* Pops the tag in skb metadata (or the outer in-band tag). */
	if (skb->vlan_present)
		__sync_fetch_and_add(&vlan_popped, 1);
	bpf_skb_vlan_pop(skb);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int cni_count(struct __sk_buff *skb)
{
	__sync_fetch_and_add(&cni_seen, 1);
	return TC_ACT_OK;
}

SEC("tc")
int cni_drop(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *uh;

	__sync_fetch_and_add(&cni_seen, 1);
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return TC_ACT_OK;
	uh = (void *)(ip + 1);
	if ((void *)(uh + 1) > data_end)
		return TC_ACT_OK;
	if (uh->dest == bpf_htons(drop_udp_port)) {
		__sync_fetch_and_add(&cni_dropped, 1);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

#endif /* NETSCOPE_TESTPROGS_BPF_C */
