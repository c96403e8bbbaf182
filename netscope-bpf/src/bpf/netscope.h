/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the netscope BPF program and its user-space loader.
 * The Rust side mirrors these layouts in src/maps.rs and checks the sizes.
 */
#ifndef NETSCOPE_H
#define NETSCOPE_H

#include <linux/types.h>

/* Direction of a packet, seen from the host side of the pod's link. */
#define NS_DIR_FROM_POD 0 /* host-side TC ingress: leaving the pod */
#define NS_DIR_TO_POD 1	  /* host-side TC egress: entering the pod */

/* Address families stored in flow_key.family. 0 marks the overflow slot. */
#define NS_FAMILY_OVERFLOW 0
#define NS_FAMILY_V4 4
#define NS_FAMILY_V6 6

/* How many Service CIDRs the program can match against. */
#define NS_MAX_SERVICE_CIDRS 8

/* Default flow-table capacity; the loader overrides it before load. */
#define NS_DEFAULT_MAX_FLOWS 65536

/*
 * One counted flow. Addresses are 16 bytes; IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d). proto/sport/dport are set only when the remote address is
 * inside a Service CIDR, so that the agent can undo the Service NAT. The
 * all-zero key (family 0) is the overflow slot.
 */
struct flow_key {
	/* 8-byte aligned so that the hot path compares it as five u64 words */
	__u32 src[4] __attribute__((aligned(8)));	/* source address, network byte order */
	__u32 dst[4];	/* destination address, network byte order */
	__u8 family;	/* NS_FAMILY_V4 or NS_FAMILY_V6 (0: overflow slot) */
	__u8 direction; /* NS_DIR_FROM_POD or NS_DIR_TO_POD */
	__u8 proto;	/* L4 protocol, Service traffic only, else 0 */
	__u8 pad;	/* explicit padding, always 0 */
	__u16 sport;	/* L4 source port, host byte order, Service traffic only */
	__u16 dport;	/* L4 destination port, host byte order, Service traffic only */
};

/* Per-CPU counters of one flow. */
struct flow_value {
	__u64 bytes;   /* L3 wire bytes: IP header + payload, per segment */
	__u64 packets; /* wire packets (GSO segments) */
};

/*
 * Per-CPU one-entry cache: the flow this CPU counted last and what it has
 * accumulated since. A packet of the same flow adds here (no hash lookup);
 * a packet of another flow first moves this entry into the flow table.
 * family 0 means empty. The collector drains it with the table.
 */
struct flow_cache {
	struct flow_key key;   /* the cached flow */
	struct flow_value val; /* counted since it was cached */
};

/* A Service CIDR, pre-masked, as 4 network-order words of an IPv6 address. */
struct svc_cidr {
	__u32 addr[4]; /* network address, already masked */
	__u32 mask[4]; /* prefix mask */
};

#endif /* NETSCOPE_H */
