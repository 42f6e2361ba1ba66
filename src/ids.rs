//! Ids and hashes several layers need: random bytes for new ids, and the FNV-1 hash the original shards by.

/// 16 random bytes from the OS (with a time- and process-based fallback should the OS refuse).
pub fn random_bytes() -> [u8; 16] {
    let mut buf = [0u8; 16];
    if getrandom::fill(&mut buf).is_err() {
        // Fall back on the randomly keyed std hasher, mixed with the time and the process id.
        use std::hash::{BuildHasher, Hasher};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    buf
}

/// FNV-1 64-bit hash (as the original's sharding uses FNV-1, not FNV-1a).
pub fn fnv1_64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h = h.wrapping_mul(0x100000001b3);
        h ^= *b as u64;
    }
    h
}
