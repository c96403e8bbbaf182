/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the netscope BPF program and its user-space loader.
 * The Rust side mirrors these layouts in src/maps.rs and checks the sizes.
 */
#ifndef NETSCOPE_H
#define NETSCOPE_H

#include <linux/bpf.h>
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

/* Default flow capacity (slots per side); the loader overrides it before load. */
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

/* Counters of one flow. */
struct flow_value {
	__u64 bytes;   /* L3 wire bytes: IP header + payload, per segment */
	__u64 packets; /* wire packets (GSO segments) */
};

/*
 * One slot of the flow slot array (mmap-able; read by the collector without
 * a syscall per flow). Slot i of side s is entry s * (slot_cap + 1) + i; the
 * last slot of each side (i == slot_cap) is the overflow slot, key all-zero.
 * The key is written once when the slot is handed out; the counters are
 * added atomically. 64 bytes: a slot never straddles two cache lines (the
 * array starts page-aligned).
 */
struct flow_slot {
	struct flow_key key;   /* the flow (all-zero: overflow or unused) */
	struct flow_value val; /* counted into this slot */
	__u64 pad;	       /* to 64 bytes: one slot, one cache line */
};

/*
 * Where a flow's slot is: the generation it was handed out in and its index
 * within its side. A generation other than the current one means no slot
 * yet in this interval (the entry is left over; the LRU ages it out).
 */
struct flow_index_val {
	__u32 gen;  /* active_gen when the slot was handed out */
	__u32 slot; /* index within the side, slot_cap = overflow slot */
};

/* Per-side slot allocator: the next free slot, under a lock (5.10 has no
 * fetching atomics in BPF). The collector resets it when it empties a side. */
struct slot_alloc {
	struct bpf_spin_lock lock; /* guards next */
	__u32 next;		   /* next free slot of the side, at most slot_cap */
};

/*
 * Per-CPU last-flow cache, one entry per side and direction: the flow this
 * CPU counted last in that direction, its slot, and what it has accumulated
 * since. A packet of the same flow adds here (no lookup at all); a packet of
 * another flow first adds this entry into its slot. family 0 means empty.
 * The collector reads it with the slots.
 */
struct flow_cache {
	struct flow_key key;   /* the cached flow */
	__u32 slot;	       /* its slot within the side */
	__u32 pad;	       /* explicit padding, always 0 */
	struct flow_value val; /* counted since it was cached */
};

/* A Service CIDR, pre-masked, as 4 network-order words of an IPv6 address. */
struct svc_cidr {
	__u32 addr[4]; /* network address, already masked */
	__u32 mask[4]; /* prefix mask */
};

#endif /* NETSCOPE_H */
