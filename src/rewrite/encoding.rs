//! Content codings: decode the upstream body, re-encode the rewritten one with the same coding,
//! so the `Content-Encoding` header stays as the app sent it.

use std::io;
use std::pin::Pin;

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZlibDecoder, ZlibEncoder, ZstdDecoder,
    ZstdEncoder,
};
use bytes::Bytes;
use futures_util::Stream;
use tokio_util::io::{ReaderStream, StreamReader};

/// A boxed stream of body bytes, the currency between the stages.
pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Read size of the decoding and encoding stages.
const CHUNK: usize = 16 * 1024;

/// Brotli's default quality (11) is for static files; 5 keeps on-the-fly encoding cheap.
const BROTLI_QUALITY: i32 = 5;

/// A supported `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Identity,
    Gzip,
    /// HTTP's "deflate" is the zlib format.
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The coding named by a `Content-Encoding` value; None for unsupported ones, including
    /// stacked codings (`gzip, br`).
    pub(crate) fn parse(value: Option<&str>) -> Option<Coding> {
        let Some(value) = value.map(str::trim) else {
            return Some(Coding::Identity);
        };
        // Matched without lowercasing a copy: this runs for every compressed response.
        const NAMES: [(&str, Coding); 6] = [
            ("identity", Coding::Identity),
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Brotli),
            ("zstd", Coding::Zstd),
        ];
        if value.is_empty() {
            return Some(Coding::Identity);
        }
        NAMES
            .iter()
            .find(|(name, _)| value.eq_ignore_ascii_case(name))
            .map(|(_, coding)| *coding)
    }

    pub(crate) fn decode(self, input: ByteStream) -> ByteStream {
        let reader = StreamReader::new(input);
        match self {
            Coding::Identity => Box::pin(StreamReader::into_inner(reader)),
            Coding::Gzip => {
                let mut decoder = GzipDecoder::new(reader);
                decoder.multiple_members(true);
                Box::pin(ReaderStream::with_capacity(decoder, CHUNK))
            }
            Coding::Deflate => {
                Box::pin(ReaderStream::with_capacity(ZlibDecoder::new(reader), CHUNK))
            }
            Coding::Brotli => Box::pin(ReaderStream::with_capacity(
                BrotliDecoder::new(reader),
                CHUNK,
            )),
            Coding::Zstd => Box::pin(ReaderStream::with_capacity(ZstdDecoder::new(reader), CHUNK)),
        }
    }

    pub(crate) fn encode(self, input: ByteStream) -> ByteStream {
        let reader = StreamReader::new(input);
        match self {
            Coding::Identity => Box::pin(StreamReader::into_inner(reader)),
            Coding::Gzip => Box::pin(ReaderStream::with_capacity(GzipEncoder::new(reader), CHUNK)),
            Coding::Deflate => {
                Box::pin(ReaderStream::with_capacity(ZlibEncoder::new(reader), CHUNK))
            }
            Coding::Brotli => {
                let encoder = BrotliEncoder::with_quality(reader, Level::Precise(BROTLI_QUALITY));
                Box::pin(ReaderStream::with_capacity(encoder, CHUNK))
            }
            Coding::Zstd => Box::pin(ReaderStream::with_capacity(ZstdEncoder::new(reader), CHUNK)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_codings() {
        assert_eq!(Coding::parse(None), Some(Coding::Identity));
        assert_eq!(Coding::parse(Some("identity")), Some(Coding::Identity));
        assert_eq!(Coding::parse(Some("GZIP")), Some(Coding::Gzip));
        assert_eq!(Coding::parse(Some(" br ")), Some(Coding::Brotli));
        assert_eq!(Coding::parse(Some("deflate")), Some(Coding::Deflate));
        assert_eq!(Coding::parse(Some("zstd")), Some(Coding::Zstd));
        assert_eq!(Coding::parse(Some("gzip, br")), None);
        assert_eq!(Coding::parse(Some("compress")), None);
    }
}
