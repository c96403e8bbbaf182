//! A hash map keyed by IP address, built for the lookup hot path.
//!
//! IPv4 and IPv6 keys live in separate tables keyed by `u32` and `u128`, so
//! an IPv4 entry is small (the table for 10k pods fits in L2) and hashing a
//! key is one or two multiplications instead of SipHash over an enum. The
//! hasher is seeded once per process at random, so the bucket layout cannot
//! be predicted from outside.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| RandomState::new().hash_one(0x6e65_7473_636f_7065_u64))
}

/// Builds [`IpHasher`]s with the process seed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpHashBuilder {
    seed: u64,
}

impl Default for IpHashBuilder {
    fn default() -> Self {
        IpHashBuilder {
            seed: process_seed(),
        }
    }
}

impl BuildHasher for IpHashBuilder {
    type Hasher = IpHasher;

    #[inline]
    fn build_hasher(&self) -> IpHasher {
        IpHasher { state: self.seed }
    }
}

/// A fast hasher for `u32`/`u128` address keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpHasher {
    state: u64,
}

impl Hasher for IpHasher {
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.state = folded_multiply(self.state ^ u64::from(v), K1);
    }

    #[inline]
    fn write_u128(&mut self, v: u128) {
        let first = folded_multiply(self.state ^ (v as u64), K1);
        self.state = folded_multiply(first ^ ((v >> 64) as u64), K2);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by the address keys; correct for anything else.
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.state = folded_multiply(self.state ^ u64::from_le_bytes(buf), K1);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

/// A map from IP address to `V`. IPv4-mapped IPv6 addresses are stored and
/// looked up as IPv4.
#[derive(Debug, Clone)]
pub(crate) struct IpMap<V> {
    v4: HashMap<u32, V, IpHashBuilder>,
    v6: HashMap<u128, V, IpHashBuilder>,
}

impl<V> Default for IpMap<V> {
    fn default() -> Self {
        IpMap {
            v4: HashMap::with_hasher(IpHashBuilder::default()),
            v6: HashMap::with_hasher(IpHashBuilder::default()),
        }
    }
}

impl<V> IpMap<V> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        IpMap {
            v4: HashMap::with_capacity_and_hasher(n, IpHashBuilder::default()),
            v6: HashMap::with_hasher(IpHashBuilder::default()),
        }
    }

    #[inline]
    pub(crate) fn get(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.v4.get(&u32::from(v4)),
                None => self.v6.get(&u128::from(a)),
            },
        }
    }

    /// The value for `ip`, inserting `make()` first when absent.
    pub(crate) fn get_or_insert_with(&mut self, ip: IpAddr, make: impl FnOnce() -> V) -> &mut V {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.entry(u32::from(a)).or_insert_with(make),
            IpAddr::V6(a) => self.v6.entry(u128::from(a)).or_insert_with(make),
        }
    }

    /// Inserts unless present; returns whether it inserted.
    pub(crate) fn insert_if_absent(&mut self, ip: IpAddr, value: V) -> bool {
        let mut inserted = false;
        self.get_or_insert_with(ip, || {
            inserted = true;
            value
        });
        inserted
    }

    pub(crate) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub(crate) fn into_iter(self) -> impl Iterator<Item = (IpAddr, V)> {
        self.v4
            .into_iter()
            .map(|(k, v)| (IpAddr::V4(Ipv4Addr::from(k)), v))
            .chain(
                self.v6
                    .into_iter()
                    .map(|(k, v)| (IpAddr::V6(Ipv6Addr::from(k)), v)),
            )
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.v4.shrink_to_fit();
        self.v6.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_and_mapped_addresses() {
        let mut m = IpMap::default();
        for i in 0..5000u32 {
            assert!(m.insert_if_absent(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), i));
            assert!(m.insert_if_absent(
                IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))),
                i + 10_000
            ));
        }
        assert!(!m.insert_if_absent("10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")), 99));
        assert_eq!(m.len(), 10_000);
        let get = |s: &str| m.get(s.parse().unwrap_or_else(|e| panic!("{e}"))).copied();
        assert_eq!(get("10.0.0.1"), Some(1));
        assert_eq!(get("::ffff:10.0.0.2"), Some(2));
        assert_eq!(get("fd00::3"), Some(10_003));
        assert_eq!(get("10.0.20.0"), None);
        assert_eq!(get("fd01::3"), None);
        assert_eq!(m.into_iter().count(), 10_000);
    }

    #[test]
    fn hashes_spread_sequential_keys() {
        // Sequential pod IPs must not pile into a few buckets: check that the
        // low 10 bits (bucket index) and top 7 bits (hashbrown's tag) vary.
        let b = IpHashBuilder::default();
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let h = b.hash_one(0x0af4_0000u32 + i);
            low.insert(h & 1023);
            top.insert(h >> 57);
        }
        assert!(low.len() > 900, "{} distinct low bit patterns", low.len());
        assert_eq!(top.len(), 128);
    }
}
