// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * netscope data path: count L3 bytes and packets per (src, dst, direction)
 * on the host side of pod interfaces.
 *
 * - Two entry points share one inlined body: netscope_from_pod runs on the
 *   host-side TC ingress hook (packets leaving the pod), netscope_to_pod on
 *   the host-side TC egress hook (packets entering the pod).
 * - Transparent: every path returns TC_ACT_UNSPEC (== TCX_NEXT). The program
 *   never drops, redirects or edits a packet, and never ends the chain.
 * - Exact drain: state is double-buffered. active_gen (a global) is
 *   incremented by the collector at every drain; its low bit picks the side
 *   (half of flow_slots, flow_cache entries) the program counts into. The
 *   collector flips it, then waits for an RCU grace period (a map-in-map
 *   update: it returns only after every running program has finished), so
 *   the old side is quiescent when it reads and empties it.
 * - Counters live in an mmap-able array of slots: the collector reads a
 *   side with memory loads, not one syscall per flow. A flow finds its slot
 *   through flow_index (LRU hash: key -> generation, slot); an entry of an
 *   older generation is left over and is replaced, never cleared by the
 *   collector. Should the LRU evict a live entry, the flow gets a second
 *   slot of the same side and the collector adds the two.
 * - Uses only UAPI __sk_buff fields: loads without kernel BTF.
 */
#ifndef NETSCOPE_BPF_C
#define NETSCOPE_BPF_C

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netscope.h"

#define NS_IP_OFFSET 0x1fff /* fragment offset mask of iphdr.frag_off */
#define NS_MAX_IPV6_EXT 6   /* extension headers walked to find L4 */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* An in-band 802.1Q / 802.1ad tag. */
struct ns_vlan_hdr {
	__be16 tci;	    /* priority, DEI, VLAN id */
	__be16 encap_proto; /* ethertype that follows the tag */
};

/* IPv6 extension header prefix (hop-by-hop, routing, dest opts, AH). */
struct ns_ipv6_ext {
	__u8 nexthdr; /* next header */
	__u8 hdrlen;  /* length, in 8-octet units (4-octet for AH), not counting the first */
};

/* The flow slots of both sides; side s, slot i is entry s * (slot_cap + 1) + i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);			/* the collector reads it by mmap */
	__uint(max_entries, 2 * (NS_DEFAULT_MAX_FLOWS + 1)); /* set by the loader */
	__type(key, __u32);					/* side * (slot_cap + 1) + slot */
	__type(value, struct flow_slot);			/* key and counters */
} flow_slots SEC(".maps");

/* Which slot a flow counts into in the current generation. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);		/* left-over entries age out */
	__uint(max_entries, NS_DEFAULT_MAX_FLOWS);	/* set by the loader */
	__type(key, struct flow_key);			/* the flow */
	__type(value, struct flow_index_val);		/* generation and slot */
} flow_index SEC(".maps");

/* Next free slot of each side. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY); /* spin lock inside: 5.10 has no fetch-add */
	__uint(max_entries, 2);		  /* one per side */
	__type(key, __u32);		  /* side */
	__type(value, struct slot_alloc); /* lock and next slot */
} slot_alloc SEC(".maps");

/* Per-CPU last-flow cache, one entry per side and direction. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); /* per-CPU: no atomics */
	__uint(max_entries, 4);			 /* side * 2 + direction */
	__type(key, __u32);			 /* side * 2 + direction */
	__type(value, struct flow_cache);	 /* last flow, its slot, its counters */
} flow_cache SEC(".maps");

/* Generation of the side the program writes to (side = low bit). Written
 * only by the collector; its own section keeps it apart from .bss. */
__u32 active_gen SEC(".data.ctl") = 0;

/* Slots per side (the overflow slot comes on top); set before load. */
const volatile __u32 slot_cap = NS_DEFAULT_MAX_FLOWS;

/* Service CIDRs, set before load. With a count of 0 the verifier removes the check. */
const volatile __u32 svc_cidr_count = 0;
const volatile struct svc_cidr svc_cidrs[NS_MAX_SERVICE_CIDRS] = {};

/*
 * Bytes that found no slot at all (an index outside flow_slots). The array
 * always has the overflow slots, so this stays 0 unless something is badly
 * wrong; it is reported, never ignored.
 */
__u64 lost_bytes = 0;
__u64 lost_packets = 0;

/* The packet being parsed. data/data_end are read once: bpf_skb_load_bytes
 * does not change packet data, so they stay valid for the whole run. */
struct ns_pkt {
	struct __sk_buff *skb; /* the context */
	void *data;	       /* start of the linear part */
	void *data_end;	       /* end of the linear part */
};

/*
 * Returns len bytes at offset off: a pointer into the packet when they are in
 * the linear part, else a copy in buf. NULL when the packet is shorter.
 */
static __always_inline void *ns_header(const struct ns_pkt *p, __u32 off, __u32 len, void *buf)
{
	if (p->data + off + len <= p->data_end)
		return p->data + off;
	if (bpf_skb_load_bytes(p->skb, off, buf, len) < 0)
		return NULL;
	return buf;
}

/* True when addr (4 network-order words) is inside a configured Service CIDR. */
static __always_inline int ns_in_service_cidr(const __u32 *addr)
{
	if (svc_cidr_count == 0)
		return 0;
#pragma unroll
	for (int i = 0; i < NS_MAX_SERVICE_CIDRS; i++) {
		if (i >= svc_cidr_count)
			break;
		if ((addr[0] & svc_cidrs[i].mask[0]) == svc_cidrs[i].addr[0] &&
		    (addr[1] & svc_cidrs[i].mask[1]) == svc_cidrs[i].addr[1] &&
		    (addr[2] & svc_cidrs[i].mask[2]) == svc_cidrs[i].addr[2] &&
		    (addr[3] & svc_cidrs[i].mask[3]) == svc_cidrs[i].addr[3])
			return 1;
	}
	return 0;
}

/*
 * Walks IPv6 extension headers from off. On return *proto is the upper-layer
 * protocol and the result its offset; 0 when it cannot be found (truncated,
 * or more headers than NS_MAX_IPV6_EXT). *nonfirst_frag is set for a fragment
 * other than the first, which carries no L4 header.
 */
static __always_inline __u32 ns_ipv6_l4(const struct ns_pkt *p, __u32 off, __u8 *proto,
					 int *nonfirst_frag)
{
	struct ns_ipv6_ext buf, *ext;
	__u8 nh = *proto;

#pragma unroll
	for (int i = 0; i < NS_MAX_IPV6_EXT; i++) {
		switch (nh) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			ext = ns_header(p, off, sizeof(*ext), &buf);
			if (!ext)
				return 0;
			nh = ext->nexthdr;
			off += ((__u32)ext->hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			ext = ns_header(p, off, sizeof(*ext), &buf);
			if (!ext)
				return 0;
			nh = ext->nexthdr;
			off += ((__u32)ext->hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT: {
			/* nexthdr, reserved, frag_off (13 bits offset << 3 | flags), id */
			__be16 fbuf[2], *f = ns_header(p, off, sizeof(fbuf), fbuf);

			if (!f)
				return 0;
			nh = *(__u8 *)f;
			if (bpf_ntohs(f[1]) & 0xfff8)
				*nonfirst_frag = 1;
			off += 8;
			break;
		}
		default:
			*proto = nh;
			return off;
		}
	}
	return 0;
}

/*
 * Reads the L4 header at off: ports for TCP/UDP/SCTP-like protocols and the
 * header length a GSO segment repeats. Returns 0 when it is not there.
 */
static __always_inline int ns_l4(const struct ns_pkt *p, __u32 off, __u8 proto, __u16 *sport,
				 __u16 *dport, __u32 *hdr_len)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr buf, *th = ns_header(p, off, sizeof(*th), &buf);

		if (!th)
			return 0;
		*sport = bpf_ntohs(th->source);
		*dport = bpf_ntohs(th->dest);
		*hdr_len = (__u32)th->doff * 4;
		return 1;
	}
	if (proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE || proto == IPPROTO_SCTP) {
		/* UDP, UDP-Lite and SCTP all start with 16-bit source and destination ports. */
		struct udphdr buf, *uh = ns_header(p, off, sizeof(*uh), &buf);

		if (!uh)
			return 0;
		*sport = bpf_ntohs(uh->source);
		*dport = bpf_ntohs(uh->dest);
		*hdr_len = proto == IPPROTO_SCTP ? 12 : sizeof(struct udphdr);
		return 1;
	}
	return 0;
}

static __always_inline void ns_add(struct flow_value *v, __u64 bytes, __u64 packets)
{
	v->bytes += bytes;
	v->packets += packets;
}

static __always_inline int ns_key_eq(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* Adds to entry idx of flow_slots (atomic: several CPUs share a slot). */
static __always_inline void ns_slot_add(__u32 idx, __u64 bytes, __u64 packets)
{
	struct flow_slot *s = bpf_map_lookup_elem(&flow_slots, &idx);

	if (s) {
		__sync_fetch_and_add(&s->val.bytes, bytes);
		__sync_fetch_and_add(&s->val.packets, packets);
	} else {
		__sync_fetch_and_add(&lost_bytes, bytes);
		__sync_fetch_and_add(&lost_packets, packets);
	}
}

/*
 * The slot of key in side `side` for generation gen: the indexed one, or a
 * new one (its key written before it is indexed). A full side gives the
 * overflow slot (slot_cap), indexed as well so that the flow does not ask
 * again in this generation.
 */
static __always_inline __u32 ns_find_slot(const struct flow_key *key, __u32 gen, __u32 side,
					   __u32 base)
{
	struct flow_index_val *iv = bpf_map_lookup_elem(&flow_index, key);

	if (iv && iv->gen == gen)
		return iv->slot;

	struct slot_alloc *a = bpf_map_lookup_elem(&slot_alloc, &side);
	__u32 n = slot_cap;

	if (a) {
		bpf_spin_lock(&a->lock);
		if (a->next < slot_cap) {
			n = a->next;
			a->next = n + 1;
		}
		bpf_spin_unlock(&a->lock);
	}
	if (n < slot_cap) {
		__u32 idx = base + n;
		struct flow_slot *s = bpf_map_lookup_elem(&flow_slots, &idx);

		if (s)
			s->key = *key;
	}
	struct flow_index_val v = {.gen = gen, .slot = n};

	bpf_map_update_elem(&flow_index, key, &v, BPF_ANY);
	return n;
}

static __always_inline int ns_count(struct __sk_buff *skb, const __u8 dir)
{
	struct flow_key key = {};
	struct ethhdr ebuf, *eth;
	__u32 l3_off = sizeof(struct ethhdr), l4_off = 0, l3_hdr_len, l3_len, ip_len;
	__u32 segs = skb->gso_segs;
	__u16 proto;
	__u8 l4_proto;
	int nonfirst_frag = 0;

	struct ns_pkt pkt = {
		.skb = skb,
		.data = (void *)(long)skb->data,
		.data_end = (void *)(long)skb->data_end,
	};

	eth = ns_header(&pkt, 0, sizeof(*eth), &ebuf);
	if (!eth)
		return TC_ACT_UNSPEC;
	proto = eth->h_proto;

	/*
	 * Up to two in-band tags. A tag the kernel already moved into
	 * skb->vlan_tci (the outer one on receive) is no longer in the data,
	 * so the walk below sees only what is really in band.
	 */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct ns_vlan_hdr vbuf, *vh;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		vh = ns_header(&pkt, l3_off, sizeof(*vh), &vbuf);
		if (!vh)
			return TC_ACT_UNSPEC;
		proto = vh->encap_proto;
		l3_off += sizeof(*vh);
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ibuf, *ip = ns_header(&pkt, l3_off, sizeof(*ip), &ibuf);

		if (!ip || ip->version != 4 || ip->ihl < 5)
			return TC_ACT_UNSPEC;
		l3_hdr_len = (__u32)ip->ihl * 4;
		ip_len = bpf_ntohs(ip->tot_len); /* checked below */
		key.family = NS_FAMILY_V4;
		key.src[2] = bpf_htonl(0xffff);
		key.src[3] = ip->saddr;
		key.dst[2] = bpf_htonl(0xffff);
		key.dst[3] = ip->daddr;
		l4_proto = ip->protocol;
		nonfirst_frag = (ip->frag_off & bpf_htons(NS_IP_OFFSET)) != 0;
		l4_off = l3_off + l3_hdr_len;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ibuf, *ip6 = ns_header(&pkt, l3_off, sizeof(*ip6), &ibuf);

		if (!ip6 || ip6->version != 6)
			return TC_ACT_UNSPEC;
		l3_hdr_len = sizeof(struct ipv6hdr);
		ip_len = bpf_ntohs(ip6->payload_len) + sizeof(struct ipv6hdr); /* checked below */
		l4_proto = ip6->nexthdr;
		key.family = NS_FAMILY_V6;
		__builtin_memcpy(key.src, &ip6->saddr, 16);
		__builtin_memcpy(key.dst, &ip6->daddr, 16);
		/* L4 is located lazily below, only when needed. */
	} else {
		return TC_ACT_UNSPEC; /* ARP, LLDP, ...: not IP, not counted */
	}

	key.direction = dir;

	int svc = ns_in_service_cidr(dir == NS_DIR_FROM_POD ? key.dst : key.src);

	/*
	 * The IP length, as ip_rcv_core / ipv6_rcv check it; a frame they drop
	 * never reaches a forward hook and is not counted. Checked after the
	 * Service match, so that its paths do not multiply the states the
	 * verifier walks through the unrolled match (6.1: 2.4x as many).
	 * - Zero: on a GSO (BIG TCP) packet, and on IPv6 before a hop-by-hop
	 *   header (a jumbogram), the whole skb; IPv6 without one is trimmed
	 *   to its 40-byte header; IPv4 is dropped (below the header length).
	 * - Below the IPv4 header length, or beyond the frame: dropped.
	 */
	l3_len = skb->len - l3_off; /* >= the fixed header: it was read */
	if (ip_len == (key.family == NS_FAMILY_V6 ? sizeof(struct ipv6hdr) : 0) &&
	    (segs > 1 || (key.family == NS_FAMILY_V6 && l4_proto == IPPROTO_HOPOPTS)))
		ip_len = l3_len;
	if (ip_len < l3_hdr_len || ip_len > l3_len)
		return TC_ACT_UNSPEC;

	/* L3 bytes: the IP length, which excludes Ethernet padding. */
	__u64 bytes = ip_len;
	__u64 packets = 1;

	if (svc || segs > 1) {
		__u16 sport = 0, dport = 0;
		__u32 l4_hdr_len = 0;

		if (key.family == NS_FAMILY_V6)
			l4_off = ns_ipv6_l4(&pkt, l3_off + sizeof(struct ipv6hdr), &l4_proto,
					    &nonfirst_frag);
		if (l4_off && !nonfirst_frag)
			ns_l4(&pkt, l4_off, l4_proto, &sport, &dport, &l4_hdr_len);
		if (svc) {
			key.proto = l4_proto;
			key.sport = sport;
			key.dport = dport;
		}
		if (segs > 1) {
			/*
			 * A GSO skb becomes segs packets, each with its own copy of
			 * the L3 (incl. IPv6 extension) and L4 headers.
			 */
			__u32 hdrs = l4_off ? l4_off - l3_off + l4_hdr_len : l3_hdr_len;

			bytes += (__u64)(segs - 1) * hdrs;
			packets = segs;
		}
	}

	__u32 gen = *(volatile __u32 *)&active_gen;
	__u32 side = gen & 1;
	__u32 ci = side * 2 + dir;
	struct flow_cache *c = bpf_map_lookup_elem(&flow_cache, &ci);

	if (!c)
		return TC_ACT_UNSPEC;
	if (ns_key_eq(&c->key, &key)) {
		/* Hot path: same flow as this CPU's previous packet in this direction. */
		ns_add(&c->val, bytes, packets);
		return TC_ACT_UNSPEC;
	}

	/* Add the previous flow into its slot, then cache this one. */
	__u32 base = side * (slot_cap + 1);

	if (c->key.family != NS_FAMILY_OVERFLOW)
		ns_slot_add(base + c->slot, c->val.bytes, c->val.packets);
	c->slot = ns_find_slot(&key, gen, side, base);
	c->key = key;
	c->val.bytes = bytes;
	c->val.packets = packets;
	return TC_ACT_UNSPEC;
}

/* Host-side TC ingress: packets leaving the pod. */
SEC("tc")
int netscope_from_pod(struct __sk_buff *skb)
{
	return ns_count(skb, NS_DIR_FROM_POD);
}

/* Host-side TC egress: packets entering the pod. */
SEC("tc")
int netscope_to_pod(struct __sk_buff *skb)
{
	return ns_count(skb, NS_DIR_TO_POD);
}

#endif /* NETSCOPE_BPF_C */
