// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Helper programs for netscope's tests and benchmarks. None of these is part
 * of the product:
 * - empty / baseline_count: baselines that the datapath benchmark compares
 *   the real program against, in the same run;
 * - vlan_push / vlan_pop: tag and untag a pod's frames, since the test
 *   kernels have no 802.1Q devices;
 * - cni_count / cni_drop: stand-ins for a CNI's own program on the same hook,
 *   for coexistence tests;
 * - redirect_peer: delivers into local pods the way Cilium's bpf_host (on
 *   the uplink's ingress) and bpf_lxc (on a pod link's ingress) do with BPF
 *   host routing: rewrite the MACs and bpf_redirect_peer() into the pod's
 *   netns, skipping the host's stack and the host-side link's egress.
 */
#ifndef NETSCOPE_TESTPROGS_BPF_C
#define NETSCOPE_TESTPROGS_BPF_C

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
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

/* A local pod redirect_peer delivers to: its address (IPv4 in the first 4
 * bytes, rest zero) -> host-side link and MACs. */
struct redirect_key {
	__u32 family; /* 4 or 6 */
	__u8 addr[16];
};

struct redirect_target {
	__u32 ifindex;	    /* host-side link of the pod (the peer is its eth0) */
	__u8 pod_mac[6];    /* destination MAC: the pod's own eth0 */
	__u8 host_mac[6];   /* source MAC: the host-side link */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct redirect_key);
	__type(value, struct redirect_target);
} redirect_targets SEC(".maps");

/* [0] packets redirected into a pod, [1] redirects the kernel refused. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} redirect_stats SEC(".maps");

static __always_inline void redirect_stat(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&redirect_stats, &i);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tc")
int redirect_peer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct redirect_key key = {};
	struct redirect_target *t;
	long ret;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return TC_ACT_OK;
		key.family = 4;
		__builtin_memcpy(key.addr, &ip->daddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		key.family = 6;
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
	} else {
		return TC_ACT_OK;
	}
	t = bpf_map_lookup_elem(&redirect_targets, &key);
	if (!t)
		return TC_ACT_OK; /* not a local pod: the kernel routes it */
	__builtin_memcpy(eth->h_dest, t->pod_mac, 6);
	__builtin_memcpy(eth->h_source, t->host_mac, 6);
	ret = bpf_redirect_peer(t->ifindex, 0);
	redirect_stat(ret == TC_ACT_REDIRECT ? 0 : 1);
	return ret;
}

#endif /* NETSCOPE_TESTPROGS_BPF_C */
