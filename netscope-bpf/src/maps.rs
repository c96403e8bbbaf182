//! Byte layouts of the program's map keys and values (mirrors
//! `src/bpf/netscope.h`).

use netscope::flow::{addr_from_raw, addr_to_raw, family_of};
use netscope::{Counters, Direction, FlowKey, L4};

/// `sizeof(struct flow_key)`.
pub const KEY_SIZE: usize = 40;
/// `sizeof(struct flow_value)`.
pub const VALUE_SIZE: usize = 16;

/// `sizeof(struct flow_slot)`: a key, a value and 8 bytes of padding (one
/// slot per cache line).
pub const SLOT_SIZE: usize = 64;
/// `sizeof(struct flow_cache)`: a key, the slot (4 bytes + 4 of padding)
/// and a value.
pub const CACHE_ENTRY_SIZE: usize = KEY_SIZE + 8 + VALUE_SIZE;
/// `sizeof(struct flow_index_val)`.
pub const INDEX_VALUE_SIZE: usize = 8;
/// `sizeof(struct slot_alloc)`: the lock and the next free slot.
pub const SLOT_ALLOC_SIZE: usize = 8;

const _: () = assert!(std::mem::size_of::<crate::skel::types::flow_key>() == KEY_SIZE);
const _: () = assert!(std::mem::size_of::<crate::skel::types::flow_cache>() == CACHE_ENTRY_SIZE);
const _: () = assert!(std::mem::size_of::<crate::skel::types::flow_slot>() == SLOT_SIZE);
const _: () = assert!(std::mem::size_of::<crate::skel::types::flow_value>() == VALUE_SIZE);
const _: () =
    assert!(std::mem::size_of::<crate::skel::types::flow_index_val>() == INDEX_VALUE_SIZE);
const _: () = assert!(std::mem::size_of::<crate::skel::types::slot_alloc>() == SLOT_ALLOC_SIZE);

/// Counters at `off` of a raw entry (bytes, then packets, native endian).
pub fn counters_at(raw: &[u8], off: usize) -> Counters {
    let word = |i: usize| u64::from_ne_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
    Counters::new(word(off), word(off + 8))
}

/// Sizes of per-CPU values (the cache entries) for this machine.
#[derive(Debug, Clone, Copy)]
pub struct FlowMapLayout {
    ncpus: usize,
}

impl FlowMapLayout {
    /// Layout for `ncpus` possible CPUs.
    pub fn new(ncpus: usize) -> Self {
        FlowMapLayout {
            ncpus: ncpus.max(1),
        }
    }

    /// Bytes of one per-CPU `flow_cache` entry as the syscalls transfer it.
    pub fn cache_stride(&self) -> usize {
        CACHE_ENTRY_SIZE * self.ncpus
    }

    /// Number of possible CPUs.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }
}

/// A decoded raw key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKey {
    /// The overflow slot.
    Overflow,
    /// A flow.
    Flow(FlowKey),
    /// Bytes the program should never write (unknown family or direction).
    Invalid,
}

/// Decodes a 40-byte key.
pub fn decode_key(raw: &[u8]) -> RawKey {
    let family = raw[32];
    if family == 0 && raw.iter().all(|&b| b == 0) {
        return RawKey::Overflow;
    }
    let (Ok(src), Ok(dst)) = (
        <[u8; 16]>::try_from(&raw[0..16]),
        <[u8; 16]>::try_from(&raw[16..32]),
    ) else {
        return RawKey::Invalid;
    };
    let (Some(src), Some(dst), Some(direction)) = (
        addr_from_raw(src, family),
        addr_from_raw(dst, family),
        Direction::from_raw(raw[33]),
    ) else {
        return RawKey::Invalid;
    };
    let proto = raw[34];
    let l4 = (proto != 0).then(|| L4 {
        proto,
        src_port: u16::from_ne_bytes([raw[36], raw[37]]),
        dst_port: u16::from_ne_bytes([raw[38], raw[39]]),
    });
    RawKey::Flow(FlowKey {
        src,
        dst,
        direction,
        l4,
    })
}

/// Encodes a key as the program would (for tests and benchmarks).
pub fn encode_key(key: &FlowKey) -> [u8; KEY_SIZE] {
    let mut raw = [0u8; KEY_SIZE];
    raw[0..16].copy_from_slice(&addr_to_raw(key.src));
    raw[16..32].copy_from_slice(&addr_to_raw(key.dst));
    raw[32] = family_of(key.src);
    raw[33] = key.direction.as_raw();
    if let Some(l4) = key.l4 {
        raw[34] = l4.proto;
        raw[36..38].copy_from_slice(&l4.src_port.to_ne_bytes());
        raw[38..40].copy_from_slice(&l4.dst_port.to_ne_bytes());
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip() {
        let k = FlowKey {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.96.0.10".parse().unwrap(),
            direction: Direction::FromPod,
            l4: Some(L4 {
                proto: 6,
                src_port: 40000,
                dst_port: 80,
            }),
        };
        assert_eq!(decode_key(&encode_key(&k)), RawKey::Flow(k));
        let k6 = FlowKey::new(
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            Direction::ToPod,
        );
        assert_eq!(decode_key(&encode_key(&k6)), RawKey::Flow(k6));
        assert_eq!(decode_key(&[0u8; KEY_SIZE]), RawKey::Overflow);
        let mut bad = encode_key(&k6);
        bad[33] = 7;
        assert_eq!(decode_key(&bad), RawKey::Invalid);
    }

    #[test]
    fn counters_are_read_at_their_offset() {
        let mut v = vec![0u8; CACHE_ENTRY_SIZE];
        v[48..56].copy_from_slice(&150u64.to_ne_bytes());
        v[56..64].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(counters_at(&v, KEY_SIZE + 8), Counters::new(150, 3));
    }
}
