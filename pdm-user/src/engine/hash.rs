//! The loader's hash for flow keys.

use std::{collections::HashMap, hash::Hasher};

/// FxHash-style hasher with a per-process random seed and a final avalanche. The keys
/// can come from spoofed packets, so a plain Fx hash (whose low bits, which pick the
/// bucket, depend only on the low bits of the last word) would let a flood of crafted
/// ports pile into one bucket; SipHash, on the other hand, was the largest userspace
/// cost at 10 000 flows.
pub struct FlowHasher(u64);

/// Builds [`FlowHasher`]s that start from this process's random seed.
#[derive(Clone, Copy)]
pub struct FlowHasherBuilder(u64);

impl Default for FlowHasherBuilder {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        Self(*SEED.get_or_init(|| {
            let mut b = [0u8; 8];
            // SAFETY: writes at most 8 octets into `b`. Should it fail, the seed is
            // merely predictable.
            unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
            u64::from_ne_bytes(b)
        }))
    }
}

impl std::hash::BuildHasher for FlowHasherBuilder {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher(self.0)
    }
}

/// A HashMap with [`FlowHasher`].
pub type FastMap<K, V> = HashMap<K, V, FlowHasherBuilder>;

impl Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    /// MurmurHash3's 64-bit finaliser: every output bit depends on every input bit.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use pdm_common::flow::FlowKey;

    use super::*;

    /// Keys that differ only in the remote port's high bits (what a spoofer controls)
    /// must not share the low hash bits that pick a bucket.
    #[test]
    fn crafted_ports_do_not_share_buckets() {
        use std::hash::BuildHasher as _;
        let b = FlowHasherBuilder::default();
        let mut buckets = std::collections::HashSet::new();
        for i in 0..4096u16 {
            let key = FlowKey::new([1; 16], [2; 16], 443, i << 4, 17);
            buckets.insert(b.hash_one(key) & 0xffff);
        }
        assert!(buckets.len() > 3900, "{} distinct buckets", buckets.len());
    }
}
