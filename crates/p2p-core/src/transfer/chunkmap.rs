//! Which chunks of a file are done: a bitmap that travels in `Ready` on a resume and is kept
//! in the state store.

/// A bitmap of a file's chunks; chunk `i` is bit `i % 8` of byte `i / 8`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChunkMap {
    bits: Vec<u8>,
    len: u64,
}

/// Number of chunks of a file of `size` bytes.
pub(crate) fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

impl ChunkMap {
    /// An empty map of `len` chunks.
    pub(crate) fn new(len: u64) -> Self {
        ChunkMap {
            bits: vec![0; len.div_ceil(8) as usize],
            len,
        }
    }

    /// A map of `len` chunks from stored or received bytes. Bytes beyond the map and bits
    /// beyond `len` are ignored, missing bytes count as zero: a peer cannot make it claim
    /// chunks that do not exist.
    pub(crate) fn from_bytes(len: u64, bytes: &[u8]) -> Self {
        let mut map = Self::new(len);
        let n = map.bits.len().min(bytes.len());
        map.bits[..n].copy_from_slice(&bytes[..n]);
        if len % 8 != 0 {
            if let Some(last) = map.bits.last_mut() {
                *last &= (1u8 << (len % 8)) - 1;
            }
        }
        map
    }

    /// The map's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Whether chunk `i` is done.
    pub(crate) fn get(&self, i: u64) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Marks chunk `i` done (ignored beyond the map).
    pub(crate) fn set(&mut self, i: u64) {
        if i < self.len {
            self.bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }

    /// Marks chunks `0..n` done.
    pub(crate) fn set_prefix(&mut self, n: u64) {
        for i in 0..n.min(self.len) {
            self.set(i);
        }
    }

    /// Number of chunks done.
    pub(crate) fn count(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Length of the run of done chunks from chunk 0.
    pub(crate) fn prefix(&self) -> u64 {
        (0..self.len).find(|&i| !self.get(i)).unwrap_or(self.len)
    }

    /// Payload bytes of the done chunks of a file of `size` bytes.
    pub(crate) fn bytes_done(&self, size: u64, chunk_size: u32) -> u64 {
        let cs = u64::from(chunk_size.max(1));
        let mut total = 0u64;
        for (byte_index, byte) in self.bits.iter().enumerate() {
            if *byte == 0 {
                continue;
            }
            for bit in 0..8 {
                let i = byte_index as u64 * 8 + bit;
                if byte & (1 << bit) != 0 {
                    let start = i * cs;
                    total += size.saturating_sub(start).min(cs);
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_and_extra_bits_are_ignored() {
        let mut m = ChunkMap::new(10);
        m.set(0);
        m.set(9);
        m.set(10);
        assert!(m.get(0) && m.get(9) && !m.get(10) && !m.get(1));
        assert_eq!(m.count(), 2);
        let again = ChunkMap::from_bytes(10, m.as_bytes());
        assert_eq!(again, m);
        // A peer claiming chunks past the end, with extra bytes: trimmed.
        let claimed = ChunkMap::from_bytes(10, &[0xff, 0xff, 0xff]);
        assert_eq!(claimed.count(), 10);
        assert_eq!(ChunkMap::from_bytes(10, &[0x01]).count(), 1);
    }

    #[test]
    fn prefix_and_bytes_done() {
        let mut m = ChunkMap::new(4);
        m.set_prefix(2);
        m.set(3);
        assert_eq!(m.prefix(), 2);
        // 4 chunks of 10 bytes for a 35-byte file: the last has 5.
        assert_eq!(m.bytes_done(35, 10), 25);
        assert_eq!(chunk_count(35, 10), 4);
        assert_eq!(chunk_count(0, 10), 0);
        assert_eq!(ChunkMap::new(0).prefix(), 0);
    }
}
