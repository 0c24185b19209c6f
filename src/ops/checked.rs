//! A body stream that hashes what flows through it and, when told what to expect, fails at
//! its end on a mismatch — so the `put` it feeds fails and nothing corrupt becomes visible.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use indicatif::ProgressBar;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use crate::store::ByteStream;

/// Chunk size for reading local files: large enough for throughput, small enough that
/// `jobs` files in flight stay far below a megabyte each.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// What a body must turn out to be; `None` is not checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expect {
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// Size and hex SHA-256 of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub size: u64,
    pub sha256: String,
}

/// Set once the checked stream reached its end and matched what was expected.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome(Arc<OnceLock<Fingerprint>>);

impl Outcome {
    pub fn get(&self) -> Option<Fingerprint> {
        self.0.get().cloned()
    }
}

impl Expect {
    fn check(&self, got: &Fingerprint) -> Result<(), String> {
        if let Some(size) = self.size
            && size != got.size
        {
            return Err(format!(
                "size mismatch: expected {size} bytes, read {}",
                got.size
            ));
        }
        if let Some(sha) = &self.sha256
            && !sha.eq_ignore_ascii_case(&got.sha256)
        {
            return Err(format!(
                "checksum mismatch: expected sha256 {sha}, read {}",
                got.sha256
            ));
        }
        Ok(())
    }
}

struct State {
    inner: ByteStream,
    hasher: Sha256,
    size: u64,
    expect: Expect,
    outcome: Outcome,
    progress: ProgressBar,
    done: bool,
}

/// Wraps `inner`: every chunk is hashed and counted on the progress bar; at the end the
/// fingerprint is compared with `expect` (an error item on mismatch) and published in the
/// returned [`Outcome`].
pub(crate) fn checked(
    inner: ByteStream,
    expect: Expect,
    progress: ProgressBar,
) -> (ByteStream, Outcome) {
    let outcome = Outcome::default();
    let state = State {
        inner,
        hasher: Sha256::new(),
        size: 0,
        expect,
        outcome: outcome.clone(),
        progress,
        done: false,
    };
    let stream = stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        match s.inner.next().await {
            Some(Ok(chunk)) => {
                s.hasher.update(&chunk);
                s.size += chunk.len() as u64;
                s.progress.inc(chunk.len() as u64);
                Some((Ok(chunk), s))
            }
            Some(Err(e)) => {
                s.done = true;
                Some((Err(e), s))
            }
            None => {
                s.done = true;
                let got = Fingerprint {
                    size: s.size,
                    sha256: hex::encode(std::mem::take(&mut s.hasher).finalize()),
                };
                match s.expect.check(&got) {
                    Ok(()) => {
                        let _ = s.outcome.0.set(got);
                        None
                    }
                    Err(msg) => Some((Err(io::Error::new(io::ErrorKind::InvalidData, msg)), s)),
                }
            }
        }
    });
    (stream.boxed(), outcome)
}

/// A local file as a body stream, read in [`READ_CHUNK`] pieces.
pub(crate) fn file_stream(file: tokio::fs::File) -> ByteStream {
    tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
        .map(|r: io::Result<Bytes>| r)
        .boxed()
}

/// Size and SHA-256 of a local file, streamed.
pub(crate) async fn hash_file(path: &Path) -> io::Result<Fingerprint> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Fingerprint {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        let parts: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        stream::iter(parts).boxed()
    }

    const ABC_SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[tokio::test]
    async fn publishes_the_fingerprint_of_what_went_through() {
        let (s, outcome) = checked(
            body(&[b"a", b"bc"]),
            Expect::default(),
            ProgressBar::hidden(),
        );
        let chunks: Vec<_> = s.collect().await;
        assert_eq!(chunks.len(), 2);
        let got = outcome.get().unwrap();
        assert_eq!(got.size, 3);
        assert_eq!(got.sha256, ABC_SHA);
    }

    #[tokio::test]
    async fn fails_at_the_end_on_a_checksum_mismatch() {
        let expect = Expect {
            size: Some(3),
            sha256: Some("00".repeat(32)),
        };
        let (s, outcome) = checked(body(&[b"abc"]), expect, ProgressBar::hidden());
        let items: Vec<_> = s.collect().await;
        assert!(items[0].is_ok());
        let err = items[1].as_ref().unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(outcome.get().is_none());
    }

    #[tokio::test]
    async fn fails_on_a_size_mismatch() {
        let expect = Expect {
            size: Some(4),
            sha256: Some(ABC_SHA.into()),
        };
        let (s, _) = checked(body(&[b"abc"]), expect, ProgressBar::hidden());
        let items: Vec<_> = s.collect().await;
        assert!(
            items
                .last()
                .unwrap()
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("size mismatch")
        );
    }
}
