//! Content codings: decode the upstream body, re-encode the rewritten one with the same coding,
//! so the `Content-Encoding` header stays as the app sent it.

use std::io;
use std::pin::Pin;

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, DeflateDecoder, GzipDecoder, GzipEncoder, ZlibDecoder,
    ZlibEncoder, ZstdDecoder, ZstdEncoder,
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
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

    /// Whether a body beginning with `head` (its first 4 bytes, or all of a shorter one) can
    /// be in this coding: gzip and zstd by their magic numbers; deflate when it has a zlib
    /// header or its first bits name a raw DEFLATE block type (a weak test: three in four
    /// bytes pass it, so plain text labelled deflate still fails in the decoder); brotli,
    /// which has no signature, when it is not empty. A body that is not (mislabelled, or
    /// empty) is passed on as it is.
    pub(crate) fn fits(self, head: &[u8]) -> bool {
        match self {
            Coding::Identity => true,
            Coding::Gzip => head.starts_with(&[0x1f, 0x8b]),
            Coding::Zstd => head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            Coding::Brotli => !head.is_empty(),
            Coding::Deflate => match head {
                [first, _, ..] => is_zlib(head) || (first >> 1) & 0b11 != 0b11,
                _ => false,
            },
        }
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
            Coding::Deflate => deflate_decoder(StreamReader::into_inner(reader)),
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

/// Whether a body beginning with `head` (its first [`SNIFF_BYTES`]) can be in the coding
/// `content_encoding` names, and that coding is one the rewriter reads: a body that is not
/// (mislabelled, or empty) is passed on as it is rather than cut short by a decoder.
pub fn coding_fits(content_encoding: Option<&str>, head: &[u8]) -> bool {
    Coding::parse(content_encoding).is_some_and(|coding| coding.fits(head))
}

/// How many bytes of a body [`coding_fits`] looks at.
pub const SNIFF_BYTES: usize = 4;

/// Whether `head` begins a zlib stream: method 8 (deflate) and a header checksum that adds
/// up (RFC 1950, 2.2).
fn is_zlib(head: &[u8]) -> bool {
    match head {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// HTTP's deflate is the zlib format, but some servers send raw DEFLATE, which browsers take
/// too: the first two bytes tell which decoder reads `input`.
fn deflate_decoder(mut input: ByteStream) -> ByteStream {
    let decoder = async move {
        let mut head = BytesMut::new();
        let mut failed = None;
        while head.len() < 2 {
            match input.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                None => break,
            }
        }
        let zlib = is_zlib(&head);
        let again = stream::once(async move { Ok(head.freeze()) })
            .chain(stream::iter(failed.map(Err)))
            .chain(input);
        let reader = StreamReader::new(again);
        let decoded: ByteStream = if zlib {
            Box::pin(ReaderStream::with_capacity(ZlibDecoder::new(reader), CHUNK))
        } else {
            Box::pin(ReaderStream::with_capacity(
                DeflateDecoder::new(reader),
                CHUNK,
            ))
        };
        decoded
    };
    Box::pin(stream::once(decoder).flatten())
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

    #[test]
    fn first_bytes_tell_whether_a_body_is_in_its_coding() {
        let gzip = [0x1f, 0x8b, 0x08, 0x00];
        let zstd = [0x28, 0xb5, 0x2f, 0xfd];
        let zlib = [0x78, 0x9c, 0x01, 0x02];
        // Raw DEFLATE: a final fixed-Huffman block, and a stored one.
        let (fixed, stored) = ([0x4b, 0x4c, 0x4a, 0x06], [0x01, 0x05, 0x00, 0xfa]);
        for (coding, head, fits) in [
            (Coding::Gzip, &gzip[..], true),
            (Coding::Gzip, b"<htm", false),
            (Coding::Gzip, b"", false),
            (Coding::Zstd, &zstd[..], true),
            (Coding::Zstd, &gzip[..], false),
            (Coding::Deflate, &zlib[..], true),
            (Coding::Deflate, &fixed[..], true),
            (Coding::Deflate, &stored[..], true),
            (Coding::Deflate, &[0x07, 0x00][..], false),
            (Coding::Deflate, &[0x78][..], false),
            (Coding::Brotli, b"\x1b", true),
            (Coding::Brotli, b"", false),
            (Coding::Identity, b"", true),
        ] {
            assert_eq!(coding.fits(head), fits, "{coding:?} {head:?}");
        }
        assert!(is_zlib(&zlib));
        assert!(!is_zlib(&fixed));
    }
}
