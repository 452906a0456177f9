//! Recognising and decompressing the NAR files stock Nix uploads
//! (docs/protocol.md "What real Nix clients do"). Nix 2.8 compresses with
//! libarchive (`xz`, `bzip2`, `gzip`, `lz4`, `lzip`, `zstd`), its own brotli
//! sink (`br`), or not at all (`none`), and names gzip and none alike
//! (`.nar`), so the format comes from the first bytes, never from the name.
//!
//! Every format but brotli starts with a magic number. Brotli has none: bytes
//! that match no magic are tried as brotli, and are "unrecognised" if that
//! fails. Decoding is synchronous (run it on the blocking pool) and streams:
//! memory is bounded by the decoder's window, never by the file.

use std::io::{self, BufRead, BufReader, Read};

use bytes::Bytes;

use larder_core::nix::narinfo::Compression;

/// Bytes [`detect`] needs to recognise every format: the uncompressed NAR's
/// first string (8-byte length 13, `nix-archive-1`) is the longest magic.
pub const DETECT_LEN: usize = 21;

/// Largest piece of decompressed output handed to the sink.
const OUT_PIECE: usize = 256 * 1024;

/// Memory the xz and lzip decoders may use: xz -9 needs 65 MiB, lzip -9 33 MiB.
const LZMA_MEMLIMIT: u64 = 256 * 1024 * 1024;

const NAR_MAGIC: &[u8] = b"\x0d\0\0\0\0\0\0\0nix-archive-1";
const MAGICS: [(Compression, &[u8]); 7] = [
    (Compression::None, NAR_MAGIC),
    (Compression::Xz, b"\xfd7zXZ\0"),
    (Compression::Zstd, b"\x28\xb5\x2f\xfd"),
    (Compression::Gzip, b"\x1f\x8b\x08"),
    (Compression::Lz4, b"\x04\x22\x4d\x18"),
    (Compression::Lzip, b"LZIP"),
    (Compression::Bzip2, b"BZh"),
];

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// The format to decode with.
    pub compression: Compression,
    /// False for brotli, which is only a guess (no magic number).
    pub by_magic: bool,
}

/// Recognises the format from the first [`DETECT_LEN`] bytes (fewer only
/// if the file is shorter).
pub fn detect(head: &[u8]) -> Detected {
    for (compression, magic) in MAGICS {
        let bzip2_level = compression != Compression::Bzip2
            || head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b));
        if head.starts_with(magic) && bzip2_level {
            return Detected {
                compression,
                by_magic: true,
            };
        }
    }
    Detected {
        compression: Compression::Brotli,
        by_magic: false,
    }
}

/// How to decode a file: its format, and the decoder's memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoding {
    /// What the first bytes (or `Content-Encoding`) say.
    pub detected: Detected,
    /// A zstd frame's window may be at most `2^window_log_max` bytes
    /// (`[http] max-zstd-window-log`).
    pub window_log_max: u32,
}

/// Why a file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No magic number matched and the bytes are not brotli either.
    #[error(
        "unrecognised compression: the file is not xz, zstd, bzip2, gzip, lz4, lzip or brotli \
         data, nor an uncompressed NAR"
    )]
    Unrecognised,
    /// The format was recognised but the data is corrupt or truncated.
    #[error("invalid {compression} data: {message}")]
    Corrupt {
        /// The detected format.
        compression: Compression,
        /// The decoder's complaint.
        message: String,
    },
    /// A zstd frame asks for a larger window than `[http]
    /// max-zstd-window-log` allows: refused before its window is allocated.
    #[error(
        "zstd frame needs a window larger than 2^{limit_log} bytes ([http] max-zstd-window-log); \
         compress with a smaller window (no --long, or --long={limit_log} or less)"
    )]
    WindowTooLarge {
        /// The configured limit (log2 bytes).
        limit_log: u32,
    },
    /// Bytes after the end of the compressed stream.
    #[error("{compression} data is followed by {extra} bytes of trailing garbage")]
    TrailingData {
        /// The detected format.
        compression: Compression,
        /// How many bytes followed.
        extra: u64,
    },
    /// The sink refused output (its consumer failed; that error wins).
    #[error("decompressed output not accepted: {0}")]
    Sink(io::Error),
}

/// Decodes `input` as `detected` says, handing decompressed pieces to `sink`,
/// then reads `input` to its end (so a producer feeding it never blocks) and
/// rejects trailing bytes the decoder did not consume.
pub fn decode<R, F>(decoding: Decoding, input: &mut R, mut sink: F) -> Result<(), DecodeError>
where
    R: Read,
    F: FnMut(Bytes) -> io::Result<()>,
{
    let Decoding {
        detected,
        window_log_max,
    } = decoding;
    let compression = detected.compression;
    let corrupt = |e: io::Error| {
        // libzstd's only word for ZSTD_error_frameParameter_windowTooLarge.
        if compression == Compression::Zstd && e.to_string().contains("too much memory") {
            DecodeError::WindowTooLarge {
                limit_log: window_log_max,
            }
        } else if compression == Compression::Brotli && !detected.by_magic {
            DecodeError::Unrecognised
        } else {
            DecodeError::Corrupt {
                compression,
                message: e.to_string(),
            }
        }
    };
    let mut produced = false;
    let mut emit = |piece: &[u8]| -> Result<(), DecodeError> {
        produced = true;
        sink(Bytes::copy_from_slice(piece)).map_err(DecodeError::Sink)
    };
    {
        let mut decoder = decoder(compression, window_log_max, &mut *input).map_err(corrupt)?;
        let mut buf = vec![0u8; OUT_PIECE];
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(e)),
            };
            emit(&buf[..n])?;
        }
    }
    if !produced && compression == Compression::Brotli && !detected.by_magic {
        // An empty brotli stream: nothing that a NAR could be.
        return Err(DecodeError::Unrecognised);
    }
    let extra = io::copy(input, &mut io::sink()).map_err(corrupt)?;
    if extra > 0 {
        return Err(DecodeError::TrailingData { compression, extra });
    }
    Ok(())
}

/// A reader of the decompressed bytes.
fn decoder<'a, R: Read + 'a>(
    compression: Compression,
    window_log_max: u32,
    input: R,
) -> io::Result<Box<dyn Read + 'a>> {
    let lzma = |e: liblzma::stream::Error| io::Error::other(e.to_string());
    Ok(match compression {
        Compression::None => Box::new(input),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                LZMA_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(lzma)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(
                BufReader::new(input),
                stream,
            ))
        }
        Compression::Lzip => {
            let stream = liblzma::stream::Stream::new_lzip_decoder(
                LZMA_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(lzma)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(
                BufReader::new(input),
                stream,
            ))
        }
        Compression::Zstd => {
            // Decodes concatenated frames (Nix 2.35 writes 16 MiB ones).
            let mut d = zstd::stream::read::Decoder::new(input)?;
            d.window_log_max(window_log_max)?;
            Box::new(d)
        }
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
        Compression::Lz4 => Box::new(Lz4Frames::new(input)),
        Compression::Brotli => Box::new(brotli_decompressor::Decompressor::new(input, 64 * 1024)),
    })
}

/// lz4 frames one after another (lz4_flex's decoder stops at each frame end).
struct Lz4Frames<R: Read> {
    inner: lz4_flex::frame::FrameDecoder<BufReader<R>>,
}

impl<R: Read> Lz4Frames<R> {
    fn new(input: R) -> Self {
        Self {
            inner: lz4_flex::frame::FrameDecoder::new(BufReader::new(input)),
        }
    }
}

impl<R: Read> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() || self.inner.get_mut().fill_buf()?.is_empty() {
                return Ok(n);
            }
            // A frame ended and more input follows: the next frame.
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use larder_core::nix::nar::NarNode;

    fn nar() -> Vec<u8> {
        NarNode::directory([
            ("a", NarNode::file(b"hello ".repeat(5000))),
            ("b", NarNode::executable(b"#!/bin/sh\n".to_vec())),
        ])
        .to_bytes()
    }

    fn decode_all(data: &[u8]) -> Result<(Compression, Vec<u8>), DecodeError> {
        let detected = detect(&data[..data.len().min(DETECT_LEN)]);
        let mut out = Vec::new();
        let mut input = data;
        let decoding = Decoding {
            detected,
            window_log_max: 27,
        };
        decode(decoding, &mut input, |b| {
            out.extend_from_slice(&b);
            Ok(())
        })?;
        Ok((detected.compression, out))
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Brotli | Compression::Lzip => unreachable!("covered by api/tests"),
        }
    }

    #[test]
    fn detects_and_decodes_each_format() {
        let nar = nar();
        for c in [
            Compression::None,
            Compression::Xz,
            Compression::Zstd,
            Compression::Gzip,
            Compression::Bzip2,
            Compression::Lz4,
        ] {
            let (got, out) = decode_all(&compress(c, &nar)).unwrap();
            assert_eq!(got, c);
            assert!(out == nar, "{c} round trip");
        }
    }

    #[test]
    fn concatenated_members_decode_whole() {
        let nar = nar();
        let (a, b) = nar.split_at(1000);
        for c in [
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Xz,
        ] {
            let mut data = compress(c, a);
            data.extend(compress(c, b));
            let (_, out) = decode_all(&data).unwrap();
            assert!(out == nar, "{c} members");
        }
    }

    #[test]
    fn garbage_is_unrecognised_and_truncation_is_corrupt() {
        assert!(matches!(
            decode_all(b"this is certainly not a NAR, nor brotli"),
            Err(DecodeError::Unrecognised)
        ));
        assert!(matches!(decode_all(b""), Err(DecodeError::Unrecognised)));
        let xz = compress(Compression::Xz, &nar());
        assert!(matches!(
            decode_all(&xz[..xz.len() / 2]),
            Err(DecodeError::Corrupt {
                compression: Compression::Xz,
                ..
            })
        ));
        let mut zst = compress(Compression::Zstd, &nar());
        zst.extend_from_slice(b"junk");
        assert!(decode_all(&zst).is_err());
    }

    #[test]
    fn a_zstd_window_past_the_limit_is_refused() {
        let data = nar();
        let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(28).unwrap();
        e.long_distance_matching(true).unwrap();
        e.write_all(&data).unwrap();
        let zst = e.finish().unwrap();
        let run = |window_log_max| {
            let decoding = Decoding {
                detected: detect(&zst[..DETECT_LEN]),
                window_log_max,
            };
            decode(decoding, &mut &zst[..], |_| Ok(()))
        };
        assert!(matches!(
            run(27),
            Err(DecodeError::WindowTooLarge { limit_log: 27 })
        ));
        assert!(run(28).is_ok());
    }

    #[test]
    fn bzip2_needs_a_level_digit() {
        assert_eq!(detect(b"BZh9rest").compression, Compression::Bzip2);
        assert!(!detect(b"BZhx").by_magic);
    }
}
