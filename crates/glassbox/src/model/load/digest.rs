//! The sha256 of a weight file, computed from the bytes the loader reads as it reads them
//! (`HashingReader`), so that loading a model does not read its file a second time to know
//! which weights it holds. Reads may come in any order: bytes read ahead of the hash's cursor
//! wait in a bounded buffer until the bytes before them arrive; at the end, what the loader
//! never read (the header, padding, skipped tensors) is read and hashed in order.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// The most bytes kept while they wait for earlier ones; past it they are read again at the end.
const MAX_AHEAD: usize = 64 << 20;

/// A reader that hashes what passes through it, in file order.
pub(crate) struct HashingReader<R> {
    inner: R,
    pos: u64,
    hasher: Sha256,
    /// Bytes `[0, hashed)` are in the hash.
    hashed: u64,
    /// Bytes read beyond `hashed`, by their start.
    ahead: BTreeMap<u64, Vec<u8>>,
    ahead_bytes: usize,
}

impl<R: Read + Seek> HashingReader<R> {
    /// Wraps `inner` at its current position.
    pub(crate) fn new(mut inner: R) -> std::io::Result<Self> {
        let pos = inner.stream_position()?;
        Ok(HashingReader { inner, pos, hasher: Sha256::new(), hashed: 0, ahead: BTreeMap::new(), ahead_bytes: 0 })
    }

    fn absorb(&mut self, start: u64, data: &[u8]) {
        let end = start + data.len() as u64;
        if end <= self.hashed || data.is_empty() {
            return;
        }
        if start <= self.hashed {
            self.hasher.update(&data[(self.hashed - start) as usize..]);
            self.hashed = end;
            self.drain();
        } else if self.ahead_bytes + data.len() <= MAX_AHEAD && !self.ahead.contains_key(&start) {
            self.ahead_bytes += data.len();
            self.ahead.insert(start, data.to_vec());
        }
    }

    /// Hashes the waiting bytes that now follow the cursor.
    fn drain(&mut self) {
        while let Some((&s, _)) = self.ahead.first_key_value() {
            if s > self.hashed {
                break;
            }
            let (s, d) = self.ahead.pop_first().expect("a first entry exists");
            self.ahead_bytes -= d.len();
            let end = s + d.len() as u64;
            if end > self.hashed {
                self.hasher.update(&d[(self.hashed - s) as usize..]);
                self.hashed = end;
            }
        }
    }

    /// The sha256 (lowercase hex) of the whole file: what was never read is read now.
    pub(crate) fn finish(mut self) -> std::io::Result<String> {
        let len = self.inner.seek(SeekFrom::End(0))?;
        let mut buf = vec![0u8; 1 << 20];
        while self.hashed < len {
            let next = self.ahead.first_key_value().map_or(len, |(&s, _)| s.min(len));
            if next <= self.hashed {
                self.drain();
                continue;
            }
            self.inner.seek(SeekFrom::Start(self.hashed))?;
            let want = ((next - self.hashed) as usize).min(buf.len());
            self.inner.read_exact(&mut buf[..want])?;
            self.hasher.update(&buf[..want]);
            self.hashed += want as u64;
            self.drain();
        }
        Ok(hex(&self.hasher.finalize()))
    }
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<R: Read + Seek> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.pos;
        self.pos += n as u64;
        self.absorb(start, &buf[..n]);
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for HashingReader<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

/// The sha256 of files read in order, one after the other (a model folder's weight files, in
/// name order).
pub(crate) fn files_sha256(paths: &[std::path::PathBuf]) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = crate::files::open_regular(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_any_order_hash_as_the_whole_file() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let want = hex(&Sha256::digest(&data));
        for order in [vec![(50_000, 20_000), (0, 10_000), (10_000, 40_000)], vec![(70_000, 30_000), (5, 100)], vec![]] {
            let mut r = HashingReader::new(std::io::Cursor::new(data.clone())).unwrap();
            for (start, len) in order {
                r.seek(SeekFrom::Start(start)).unwrap();
                let mut buf = vec![0u8; len];
                r.read_exact(&mut buf).unwrap();
                assert_eq!(&buf[..], &data[start as usize..start as usize + len]);
            }
            assert_eq!(r.finish().unwrap(), want);
        }
    }
}
