//! Test data: deterministic byte streams of any length, generated as they are read (never
//! held whole), with their SHA-256 computed on the way.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use offload::store::ByteStream;
use sha2::{Digest, Sha256};

/// Chunk size of generated streams.
pub const CHUNK: usize = 64 * 1024;

/// The SHA-256 of what a generated stream has yielded so far.
#[derive(Clone, Default)]
pub struct Expected(Arc<Mutex<Sha256>>);

impl Expected {
    pub fn hex(&self) -> String {
        hex::encode(self.0.lock().unwrap().clone().finalize())
    }
}

/// xorshift64*: fast, seeded, good enough to make every part of an object distinct.
struct Prng(u64);

impl Prng {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bytes = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`, in chunks of [`CHUNK`]; then, if `fail` is set, an
/// I/O error instead of the end (a client that went away).
pub fn body(seed: u64, len: u64, fail: bool) -> (ByteStream, Expected) {
    let expected = Expected::default();
    let hasher = expected.clone();
    let state = (Prng(seed | 1), len, fail);
    let stream = stream::unfold(state, move |(mut prng, left, fail)| {
        let hasher = hasher.clone();
        async move {
            if left == 0 {
                return fail.then(|| {
                    let err = io::Error::new(io::ErrorKind::ConnectionReset, "client went away");
                    (Err(err), (prng, 0, false))
                });
            }
            let n = left.min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            prng.fill(&mut buf);
            hasher.0.lock().unwrap().update(&buf);
            Some((Ok(Bytes::from(buf)), (prng, left - n as u64, fail)))
        }
    });
    (stream.boxed(), expected)
}

/// `bytes` as a one-chunk stream.
pub fn bytes_body(bytes: impl Into<Bytes>) -> ByteStream {
    stream::iter([Ok(bytes.into())]).boxed()
}

/// Reads a stream to its end: (length, hex SHA-256).
pub async fn digest(mut stream: ByteStream) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut len = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((len, hex::encode(hasher.finalize())))
}

/// Reads a (small) stream whole.
pub async fn collect(mut stream: ByteStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}
