//! Incremental DATA receiver (RFC 5321 §4.1.1.4, §4.5.2).
//!
//! Written here rather than taken from `smtp_proto::DataReceiver` because smtp-proto 0.1.7
//! ends the data on `CRLF . CR CR LF` (an SMTP smuggling vector) and drops the dot of
//! `CRLF . CR x`. The rules this receiver keeps:
//!
//! - The data ends **only** at `CRLF . CRLF`, where the first CRLF ends the last line of
//!   the message (so data that starts with `.CRLF` is an empty message).
//! - Bare CR and bare LF are content: kept byte-for-byte, and never a line end — not for the
//!   terminator, not for dot-unstuffing, not for line length. Keeping them (instead of
//!   normalising to CRLF) leaves the message exactly as sent; a well-behaved client never
//!   sends them, and a `\n.\n` kept as content cannot end the data at our own mailbox nodes,
//!   which run this same receiver.
//! - A line that starts with `..` loses its first dot; any other line starting with a dot is
//!   kept as sent (lenient towards clients that forget to stuff).
//! - The size limit counts the unstuffed bytes; a line longer than the line limit (CRLF
//!   included, stuffing dot not) fails the message. Either failure stops buffering but keeps
//!   reading to the terminator, so the session stays in step and memory stays bounded.

/// Why a received message is refused; both are answered `552 5.3.4` after the terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DataError {
    /// More bytes than `max_message_size`.
    #[error("message exceeds fixed maximum message size")]
    TooLarge,
    /// A line longer than `max_data_line_length`.
    #[error("message line too long")]
    LineTooLong,
}

/// Where the receiver is relative to the last real CRLF; pending bytes (a dot or CR whose
/// meaning depends on the next byte) are emitted once that byte arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after a CRLF (or at the start of the data).
    LineStart,
    /// `LineStart` then `.`: a stuffed dot, part of the terminator, or content.
    Dot,
    /// `LineStart . CR`: only an LF now completes the terminator.
    DotCr,
    /// Inside a line.
    Text,
    /// A CR inside a line: a line end if LF follows, content otherwise.
    Cr,
}

/// Consumes the bytes after `354` until the terminator, returning the unstuffed message.
#[derive(Debug)]
pub(crate) struct DataReceiver {
    state: State,
    body: Vec<u8>,
    size: u64,
    line_len: usize,
    max_size: u64,
    max_line: usize,
    too_large: bool,
    line_too_long: bool,
}

impl DataReceiver {
    /// A receiver for one message under the given limits.
    pub(crate) fn new(max_size: u64, max_line: usize) -> Self {
        DataReceiver {
            state: State::LineStart,
            body: Vec::new(),
            size: 0,
            line_len: 0,
            max_size,
            max_line,
            too_large: false,
            line_too_long: false,
        }
    }

    /// Feeds the next bytes of the stream. Returns `Some(n)` when the terminator ends within
    /// `input` — `n` bytes (terminator included) were consumed and the rest belongs to the
    /// command stream — or `None` when all of `input` was consumed and more is needed.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // Fast path: everything up to the next CR is plain content.
                let run = input[i..].iter().position(|&b| b == b'\r');
                let end = run.map_or(input.len(), |r| i + r);
                self.emit(&input[i..end]);
                i = end;
                if i == input.len() {
                    break;
                }
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart | State::Text, b'\r') => State::Cr,
                (State::LineStart | State::Text, _) => {
                    self.emit(&[b]);
                    State::Text
                }
                (State::Dot, b'.') => {
                    self.emit(b".");
                    State::Text
                }
                (State::Dot, b'\r') => State::DotCr,
                (State::Dot, _) => {
                    self.emit(&[b'.', b]);
                    State::Text
                }
                (State::DotCr, b'\n') => return Some(i),
                (State::DotCr, b'\r') => {
                    self.emit(b".\r");
                    State::Cr
                }
                (State::DotCr, _) => {
                    self.emit(&[b'.', b'\r', b]);
                    State::Text
                }
                (State::Cr, b'\n') => {
                    self.emit(b"\r\n");
                    self.line_len = 0;
                    State::LineStart
                }
                (State::Cr, b'\r') => {
                    self.emit(b"\r");
                    State::Cr
                }
                (State::Cr, _) => {
                    self.emit(&[b'\r', b]);
                    State::Text
                }
            };
        }
        None
    }

    /// The message once [`feed`](Self::feed) has returned `Some`, or why it is refused.
    pub(crate) fn finish(self) -> Result<Vec<u8>, DataError> {
        if self.too_large {
            Err(DataError::TooLarge)
        } else if self.line_too_long {
            Err(DataError::LineTooLong)
        } else {
            Ok(self.body)
        }
    }

    /// Appends message bytes, enforcing both limits before buffering anything.
    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.line_len += bytes.len();
        self.too_large |= self.size > self.max_size;
        self.line_too_long |= self.line_len > self.max_line;
        if self.too_large || self.line_too_long {
            // The message is refused anyway: free what was buffered and keep nothing more.
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DataError, DataReceiver};

    /// What feeding a case must produce: bytes consumed and the message, or "needs more".
    type Outcome = Option<(usize, Result<Vec<u8>, DataError>)>;

    /// Feeds `chunks` in order, stopping at the terminator as the session does.
    fn run<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
        max_size: u64,
        max_line: usize,
    ) -> Outcome {
        let mut rx = DataReceiver::new(max_size, max_line);
        let mut offset = 0;
        for chunk in chunks {
            if let Some(n) = rx.feed(chunk) {
                return Some((offset + n, rx.finish()));
            }
            offset += chunk.len();
        }
        None
    }

    fn done(consumed: usize, body: &[u8]) -> Outcome {
        Some((consumed, Ok(body.to_vec())))
    }

    fn failed(consumed: usize, error: DataError) -> Outcome {
        Some((consumed, Err(error)))
    }

    #[test]
    fn table_in_one_chunk_byte_by_byte_and_every_split() {
        let big = 1 << 20;
        let cases: Vec<(&str, &[u8], u64, usize, Outcome)> = vec![
            ("empty message", b".\r\n", big, 1000, done(3, b"")),
            ("one line", b"a\r\n.\r\n", big, 1000, done(6, b"a\r\n")),
            (
                "empty line then end",
                b"\r\n.\r\n",
                big,
                1000,
                done(5, b"\r\n"),
            ),
            (
                "stops at terminator",
                b"a\r\n.\r\nQUIT\r\n",
                big,
                1000,
                done(6, b"a\r\n"),
            ),
            (
                "unstuffs at start",
                b"..a\r\n.\r\n",
                big,
                1000,
                done(8, b".a\r\n"),
            ),
            (
                "unstuffs lone dot",
                b"a\r\n..\r\nb\r\n.\r\n",
                big,
                1000,
                done(13, b"a\r\n.\r\nb\r\n"),
            ),
            (
                "unstuffs one dot only",
                b"...\r\n.\r\n",
                big,
                1000,
                done(8, b"..\r\n"),
            ),
            (
                "keeps unstuffed dot line",
                b".x\r\n.\r\n",
                big,
                1000,
                done(7, b".x\r\n"),
            ),
            (
                "bare LF dot bare LF",
                b"a\n.\nb\r\n.\r\n",
                big,
                1000,
                done(10, b"a\n.\nb\r\n"),
            ),
            (
                "bare CR dot bare CR",
                b"a\r.\rb\r\n.\r\n",
                big,
                1000,
                done(10, b"a\r.\rb\r\n"),
            ),
            (
                "bare LF dot CRLF",
                b"a\n.\r\nb\r\n.\r\n",
                big,
                1000,
                done(11, b"a\n.\r\nb\r\n"),
            ),
            (
                "CRLF dot CR CRLF",
                b"a\r\n.\r\r\nb\r\n.\r\n",
                big,
                1000,
                done(13, b"a\r\n.\r\r\nb\r\n"),
            ),
            (
                "CRLF dot CR x",
                b"a\r\n.\rx\r\n.\r\n",
                big,
                1000,
                done(11, b"a\r\n.\rx\r\n"),
            ),
            (
                "CRLF dot bare LF",
                b"a\r\n.\nb\r\n.\r\n",
                big,
                1000,
                done(11, b"a\r\n.\nb\r\n"),
            ),
            ("CR CR LF", b"a\r\r\n.\r\n", big, 1000, done(7, b"a\r\r\n")),
            (
                "dot dot bare LF after CRLF",
                b"a\r\n..\n.\r\n",
                big,
                1000,
                None,
            ),
            (
                "bare LF then dot dot is content",
                b"a\n..b\r\n.\r\n",
                big,
                1000,
                done(10, b"a\n..b\r\n"),
            ),
            ("unterminated", b"a\r\n.\r", big, 1000, None),
            ("dot LF only", b".\n", big, 1000, None),
            (
                "size at limit",
                b"01234567\r\n.\r\n",
                10,
                1000,
                done(13, b"01234567\r\n"),
            ),
            (
                "size over limit",
                b"012345678\r\n.\r\n",
                10,
                1000,
                failed(14, DataError::TooLarge),
            ),
            (
                "size counts unstuffed",
                b"..234567\r\n.\r\n",
                9,
                1000,
                done(13, b".234567\r\n"),
            ),
            (
                "line at limit",
                b"12345678\r\n.\r\n",
                big,
                10,
                done(13, b"12345678\r\n"),
            ),
            (
                "line over limit",
                b"123456789\r\n.\r\n",
                big,
                10,
                failed(14, DataError::LineTooLong),
            ),
            (
                "line limit skips stuffing",
                b"..2345678\r\n.\r\n",
                big,
                10,
                done(14, b".2345678\r\n"),
            ),
            (
                "bare LF is not a line end",
                b"1234\n6789\r\n.\r\n",
                big,
                10,
                failed(14, DataError::LineTooLong),
            ),
            (
                "line limit resets per line",
                b"12345678\r\n12345678\r\n.\r\n",
                big,
                10,
                done(23, b"12345678\r\n12345678\r\n"),
            ),
            (
                "too large wins",
                b"123456789012\r\n.\r\n",
                5,
                10,
                failed(17, DataError::TooLarge),
            ),
        ];
        for (name, input, max_size, max_line, expected) in cases {
            assert_eq!(
                run([input], max_size, max_line),
                expected,
                "{name}: one chunk"
            );
            let bytes = input.chunks(1);
            assert_eq!(
                run(bytes, max_size, max_line),
                expected,
                "{name}: byte by byte"
            );
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(
                    run([a, b], max_size, max_line),
                    expected,
                    "{name}: split at {k}"
                );
            }
        }
    }

    #[test]
    fn refused_message_is_not_buffered() {
        let mut rx = DataReceiver::new(10, 1000);
        assert_eq!(rx.feed(&[b'x'; 100]), None);
        assert!(
            rx.body.is_empty(),
            "bytes past the limit must be discarded, not kept"
        );
        assert_eq!(rx.feed(b"\r\n.\r\n"), Some(5));
        assert_eq!(rx.finish(), Err(DataError::TooLarge));
    }
}
