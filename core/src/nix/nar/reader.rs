//! NAR framing: splitting input pushed in pieces of any size into the
//! length-prefixed, zero-padded strings of the format. Short strings are
//! buffered whole; file contents are skipped, never held.

use super::NarError;

/// How to read a string once its length is known.
pub(super) enum Framing {
    /// Buffer it (the sink has checked the length is small) and hand it to
    /// [`StringSink::on_string`].
    Buffer(usize),
    /// Skip it: file contents, which are only counted.
    Skip,
}

/// The grammar driven by the reader.
pub(super) trait StringSink {
    /// A length prefix starting at `start` has been read.
    fn on_len(&mut self, start: u64, len: u64) -> Result<Framing, NarError>;
    /// A buffered string starting at `start` is complete.
    fn on_string(&mut self, start: u64, s: Vec<u8>) -> Result<(), NarError>;
    /// Whether the root node is closed: any further byte is trailing data.
    fn is_done(&self) -> bool;
}

/// Where the reader is.
#[derive(Debug)]
enum State {
    /// Reading a length prefix; `buf[..have]` is filled.
    Len {
        start: u64,
        buf: [u8; 8],
        have: usize,
    },
    /// Buffering a string of `len` bytes.
    Bytes {
        start: u64,
        len: usize,
        buf: Vec<u8>,
    },
    /// Skipping file contents.
    Skip { remaining: u64, pad: usize },
    /// Checking `remaining` zero padding bytes.
    Padding { remaining: usize },
}

/// Byte-level NAR reader.
#[derive(Debug)]
pub(super) struct Reader {
    /// Bytes consumed so far.
    offset: u64,
    state: State,
}

/// Bytes of zero padding after a string of `len` bytes.
fn padding(len: u64) -> usize {
    // `len % 8 < 8`, so the cast is lossless.
    ((8 - len % 8) % 8) as usize
}

impl Reader {
    pub(super) fn new() -> Self {
        Self {
            offset: 0,
            state: State::Len {
                start: 0,
                buf: [0; 8],
                have: 0,
            },
        }
    }

    /// Bytes consumed so far.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the input so far ends exactly after a string and its padding.
    pub(super) fn at_boundary(&self) -> bool {
        matches!(self.state, State::Len { have: 0, .. })
    }

    /// Whether the input so far ends inside padding.
    pub(super) fn in_padding(&self) -> bool {
        matches!(self.state, State::Padding { .. })
    }

    /// Consumes `data`, calling `sink` for each length and string.
    pub(super) fn feed(
        &mut self,
        mut data: &[u8],
        sink: &mut impl StringSink,
    ) -> Result<(), NarError> {
        while !data.is_empty() {
            let n = match &mut self.state {
                State::Len { start, buf, have } => {
                    if *have == 0 && sink.is_done() {
                        return Err(NarError::TrailingData {
                            offset: self.offset,
                        });
                    }
                    let n = (8 - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    if *have == 8 {
                        let (start, len) = (*start, u64::from_le_bytes(*buf));
                        self.offset += n as u64;
                        match sink.on_len(start, len)? {
                            Framing::Buffer(0) => {
                                self.state = State::Padding { remaining: 0 };
                                sink.on_string(start, Vec::new())?;
                            }
                            Framing::Buffer(len) => {
                                self.state = State::Bytes {
                                    start,
                                    len,
                                    buf: Vec::with_capacity(len),
                                };
                            }
                            Framing::Skip => {
                                self.state = State::Skip {
                                    remaining: len,
                                    pad: padding(len),
                                };
                            }
                        }
                        self.next_string_if_done();
                        data = &data[n..];
                        continue;
                    }
                    n
                }
                State::Bytes { start, len, buf } => {
                    let n = (*len - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..n]);
                    if buf.len() == *len {
                        let (start, s) = (*start, std::mem::take(buf));
                        self.offset += n as u64;
                        self.state = State::Padding {
                            remaining: padding(s.len() as u64),
                        };
                        sink.on_string(start, s)?;
                        self.next_string_if_done();
                        data = &data[n..];
                        continue;
                    }
                    n
                }
                State::Skip { remaining, .. } => {
                    // `n <= data.len()`, so it fits in usize.
                    let n = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= n as u64;
                    n
                }
                State::Padding { remaining } => {
                    let n = (*remaining).min(data.len());
                    if let Some(i) = data[..n].iter().position(|&b| b != 0) {
                        return Err(NarError::NonZeroPadding {
                            offset: self.offset + i as u64,
                        });
                    }
                    *remaining -= n;
                    n
                }
            };
            self.offset += n as u64;
            data = &data[n..];
            self.next_string_if_done();
        }
        Ok(())
    }

    /// Moves on from finished contents to their padding, and from finished
    /// padding to the next length prefix.
    fn next_string_if_done(&mut self) {
        if let State::Skip { remaining: 0, pad } = self.state {
            self.state = State::Padding { remaining: pad };
        }
        if let State::Padding { remaining: 0 } = self.state {
            self.state = State::Len {
                start: self.offset,
                buf: [0; 8],
                have: 0,
            };
        }
    }
}
