//! Content hashes. Everything that decides whether work is up to date is keyed by sha256 of bytes, never by
//! names or timestamps alone.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Lowercase hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex sha256 of a file's content, streamed so that large files are never held in memory.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A writer that hashes what passes through it, so a file's digest comes for free while it is written instead of
/// costing a second read.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the hex digest and the byte count of everything written.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(self.hasher.finalize()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A sha256 over a sequence of labelled parts; the labels and lengths are hashed too, so that ("ab", "c") and
/// ("a", "bc") differ.
#[derive(Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn part(&mut self, label: &str, value: &[u8]) -> &mut Self {
        for piece in [label.as_bytes(), value] {
            self.0.update((piece.len() as u64).to_le_bytes());
            self.0.update(piece);
        }
        self
    }

    pub fn finish(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (bytes, digest, n) = w.finish();
        assert_eq!(bytes, b"abc");
        assert_eq!(n, 3);
        assert_eq!(digest, sha256_hex(b"abc"));
    }

    #[test]
    fn fingerprint_separates_parts() {
        let a = Fingerprint::new().part("x", b"ab").part("y", b"c").finish();
        let b = Fingerprint::new().part("x", b"a").part("y", b"bc").finish();
        assert_ne!(a, b);
    }
}
