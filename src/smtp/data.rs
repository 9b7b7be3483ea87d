//! Incremental DATA receiver (RFC 5321 §4.1.1.4, §4.5.2).
//!
//! Written here rather than taken from `smtp_proto::DataReceiver` because smtp-proto 0.1.7
//! ends the data on `CRLF . CR CR LF` (an SMTP smuggling vector) and drops the dot of
//! `CRLF . CR x`. The rules this receiver keeps:
//!
//! - The data ends **only** at `CRLF . CRLF`, where the first CRLF ends the last line of
//!   the message (so data that starts with `.CRLF` is an empty message).
//! - Bare CR and bare LF in the input are never a line end of SMTP — not for the terminator,
//!   not for dot-unstuffing. What becomes of them is the [`BareNewline`] policy: normalised
//!   (bare LF becomes CRLF, bare CR is removed) or the message refused. Either way nothing
//!   this server passes on holds a bare CR or LF, so a lenient next hop cannot be made to end
//!   the message early and run smuggled commands (RFC 5321 §2.3.8, Postfix's
//!   `smtpd_forbid_bare_newline`). Normalising here, before the message is stamped and
//!   queued, means the queue, the dumpster, resubmission and the dedup digest all see the
//!   same bytes.
//! - A line that starts with `..` loses its first dot; any other line starting with a dot is
//!   kept as sent (lenient towards clients that forget to stuff).
//! - The size limit counts the bytes kept (unstuffed, normalised); a line longer than the
//!   line limit (CRLF included, stuffing dot not) fails the message. Any failure stops
//!   buffering but keeps reading to the terminator, so the session stays in step and memory
//!   stays bounded.

use super::Reply;

/// What happens to a bare CR or LF in a message (the config key `bare_newline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Bare LF becomes CRLF and bare CR is removed (so `CR CR LF`, the usual product of a
    /// double line-end conversion, becomes one CRLF). The default: the message is delivered,
    /// and nothing passed on holds a bare line end.
    #[default]
    Normalize,
    /// The message is refused with `550 5.5.2` after its terminator (the session stays in
    /// step), and a command line ending in a bare LF gets `500 5.5.2`.
    Reject,
}

/// Why a received message is refused after its terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DataError {
    /// More bytes than `max_message_size`.
    #[error("message exceeds fixed maximum message size")]
    TooLarge,
    /// A bare CR or LF under [`BareNewline::Reject`].
    #[error("message contains a bare CR or LF; lines must end with CRLF")]
    BareNewline,
    /// A line longer than `max_data_line_length`.
    #[error("message line too long")]
    LineTooLong,
}

impl DataError {
    /// The reply the client gets for the refused message.
    pub(crate) fn reply(self) -> Reply {
        match self {
            DataError::TooLarge | DataError::LineTooLong => {
                Reply::new(552, "5.3.4", self.to_string())
            }
            DataError::BareNewline => Reply::new(550, "5.5.2", self.to_string()),
        }
    }
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
    /// BDAT (RFC 3030): the bytes are the message as they are, with no dot-stuffing and no
    /// terminator; the session cuts the chunks by their announced sizes.
    chunked: bool,
    policy: BareNewline,
    state: State,
    body: Vec<u8>,
    size: u64,
    line_len: usize,
    max_size: u64,
    max_line: usize,
    too_large: bool,
    line_too_long: bool,
    bare_newline: bool,
}

impl DataReceiver {
    /// A receiver for one message under the given limits and bare line-end policy.
    pub(crate) fn new(max_size: u64, max_line: usize, policy: BareNewline) -> Self {
        DataReceiver {
            chunked: false,
            policy,
            state: State::LineStart,
            body: Vec::new(),
            size: 0,
            line_len: 0,
            max_size,
            max_line,
            too_large: false,
            line_too_long: false,
            bare_newline: false,
        }
    }

    /// A receiver for a message sent with BDAT: the same limits and line-end policy, no dots.
    pub(crate) fn chunked(max_size: u64, max_line: usize, policy: BareNewline) -> Self {
        DataReceiver {
            chunked: true,
            ..Self::new(max_size, max_line, policy)
        }
    }

    /// Whether the message has already gone over `max_message_size` (so a BDAT transaction can
    /// be refused at the chunk that crossed it, not only at the last).
    pub(crate) fn too_large(&self) -> bool {
        self.too_large
    }

    /// Feeds the next bytes of the stream. Returns `Some(n)` when the terminator ends within
    /// `input` — `n` bytes (terminator included) were consumed and the rest belongs to the
    /// command stream — or `None` when all of `input` was consumed and more is needed.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // Fast path: everything up to the next CR is content (a bare LF in it is
                // handled by `emit`).
                let run = memchr::memchr(b'\r', &input[i..]);
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
                (State::LineStart, b'.') if !self.chunked => State::Dot,
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
                    self.line_end();
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

    /// The message once [`feed`](Self::feed) has returned `Some` (or, for BDAT, after the last
    /// chunk), or why it is refused.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, DataError> {
        if self.chunked {
            // No terminator ends a BDAT message: a CR left pending is bare, and a last line
            // without its CRLF gets one, as DATA's terminator would have given it.
            match self.state {
                State::Cr => {
                    self.emit(b"\r");
                    self.line_end();
                }
                State::Text => self.line_end(),
                _ => {}
            }
        }
        if self.too_large {
            Err(DataError::TooLarge)
        } else if self.bare_newline {
            Err(DataError::BareNewline)
        } else if self.line_too_long {
            Err(DataError::LineTooLong)
        } else {
            Ok(self.body)
        }
    }

    /// Appends content. Every CR or LF the state machine passes here is bare (a CRLF line end
    /// goes through [`line_end`](Self::line_end)), so this is where the policy applies.
    fn emit(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(at) = memchr::memchr2(b'\r', b'\n', rest) {
            self.keep(&rest[..at]);
            match self.policy {
                BareNewline::Reject => {
                    self.bare_newline = true;
                    self.body = Vec::new();
                }
                BareNewline::Normalize if rest[at] == b'\n' => self.line_end(),
                BareNewline::Normalize => {}
            }
            rest = &rest[at + 1..];
        }
        self.keep(rest);
    }

    /// Appends a CRLF: the end of a line of the message as it will be passed on.
    fn line_end(&mut self) {
        self.keep(b"\r\n");
        self.line_len = 0;
    }

    /// Appends bytes as they are, enforcing both limits before buffering anything.
    fn keep(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.line_len += bytes.len();
        self.too_large |= self.size > self.max_size;
        self.line_too_long |= self.line_len > self.max_line;
        if self.too_large || self.line_too_long || self.bare_newline {
            // The message is refused anyway: free what was buffered and keep nothing more.
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BareNewline, DataError, DataReceiver};

    /// What feeding a case must produce: bytes consumed and the message, or "needs more".
    type Outcome = Option<(usize, Result<Vec<u8>, DataError>)>;

    /// Feeds `chunks` in order, stopping at the terminator as the session does.
    fn run<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
        max_size: u64,
        max_line: usize,
        policy: BareNewline,
    ) -> Outcome {
        let mut rx = DataReceiver::new(max_size, max_line, policy);
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
                done(10, b"a\r\n.\r\nb\r\n"),
            ),
            (
                "bare CR dot bare CR",
                b"a\r.\rb\r\n.\r\n",
                big,
                1000,
                done(10, b"a.b\r\n"),
            ),
            (
                "bare LF dot CRLF",
                b"a\n.\r\nb\r\n.\r\n",
                big,
                1000,
                done(11, b"a\r\n.\r\nb\r\n"),
            ),
            (
                "CRLF dot CR CRLF",
                b"a\r\n.\r\r\nb\r\n.\r\n",
                big,
                1000,
                done(13, b"a\r\n.\r\nb\r\n"),
            ),
            (
                "CRLF dot CR x",
                b"a\r\n.\rx\r\n.\r\n",
                big,
                1000,
                done(11, b"a\r\n.x\r\n"),
            ),
            (
                "CRLF dot bare LF",
                b"a\r\n.\nb\r\n.\r\n",
                big,
                1000,
                done(11, b"a\r\n.\r\nb\r\n"),
            ),
            ("CR CR LF", b"a\r\r\n.\r\n", big, 1000, done(7, b"a\r\n")),
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
                done(10, b"a\r\n..b\r\n"),
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
                "normalised bare LF ends a line",
                b"1234\n6789\r\n.\r\n",
                big,
                10,
                done(14, b"1234\r\n6789\r\n"),
            ),
            (
                "size counts normalised bytes",
                b"a\nbcd\r\n.\r\n",
                5,
                1000,
                failed(10, DataError::TooLarge),
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
        for (name, input, max_size, max_line, normalized) in cases {
            let rejected = match &normalized {
                Some((n, Ok(_))) if has_bare_line_end(input, *n) => {
                    failed(*n, DataError::BareNewline)
                }
                Some((n, Err(DataError::LineTooLong))) if has_bare_line_end(input, *n) => {
                    failed(*n, DataError::BareNewline)
                }
                other => other.clone(),
            };
            for (policy, expected) in [
                (BareNewline::Normalize, normalized),
                (BareNewline::Reject, rejected),
            ] {
                assert_eq!(
                    run([input], max_size, max_line, policy),
                    expected,
                    "{name} ({policy:?}): one chunk"
                );
                let bytes = input.chunks(1);
                assert_eq!(
                    run(bytes, max_size, max_line, policy),
                    expected,
                    "{name} ({policy:?}): byte by byte"
                );
                for k in 0..=input.len() {
                    let (a, b) = input.split_at(k);
                    assert_eq!(
                        run([a, b], max_size, max_line, policy),
                        expected,
                        "{name} ({policy:?}): split at {k}"
                    );
                }
            }
        }
    }

    /// True when the first `n` bytes hold a CR not followed by LF or an LF not after a CR.
    fn has_bare_line_end(input: &[u8], n: usize) -> bool {
        let data = &input[..n];
        data.iter().enumerate().any(|(i, &b)| match b {
            b'\r' => data.get(i + 1) != Some(&b'\n'),
            b'\n' => i == 0 || data[i - 1] != b'\r',
            _ => false,
        })
    }

    #[test]
    fn refused_message_is_not_buffered() {
        let mut rx = DataReceiver::new(10, 1000, BareNewline::Normalize);
        assert_eq!(rx.feed(&[b'x'; 100]), None);
        assert!(
            rx.body.is_empty(),
            "bytes past the limit must be discarded, not kept"
        );
        assert_eq!(rx.feed(b"\r\n.\r\n"), Some(5));
        assert_eq!(rx.finish(), Err(DataError::TooLarge));
    }

    #[test]
    fn rejected_message_is_not_buffered() {
        let mut rx = DataReceiver::new(1 << 20, 1000, BareNewline::Reject);
        assert_eq!(rx.feed(b"a\nbcdef"), None);
        assert!(rx.body.is_empty(), "a refused message must not be kept");
        assert_eq!(rx.feed(b"\r\n.\r\n"), Some(5));
        assert_eq!(rx.finish(), Err(DataError::BareNewline));
    }

    mod props {
        use proptest::prelude::*;

        use super::super::{BareNewline, DataReceiver};
        use super::{has_bare_line_end, run};

        /// Bytes that matter to the receiver, drawn often enough to meet in every order.
        fn smtp_bytes() -> impl Strategy<Value = Vec<u8>> {
            let alphabet = vec![b'\r', b'\n', b'.', b'a', b'\r', b'\n'];
            prop::collection::vec(prop::sample::select(alphabet), 0..80)
        }

        /// `input` cut at the given places, in order.
        fn cut<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for to in at.into_iter().chain([input.len()]) {
                pieces.push(&input[from..to]);
                from = to;
            }
            pieces
        }

        fn policy() -> impl Strategy<Value = BareNewline> {
            prop_oneof![Just(BareNewline::Normalize), Just(BareNewline::Reject)]
        }

        /// Where RFC 5321 says the data ends: after `.CRLF` opening it, or else after the
        /// first CRLF.CRLF (every CRLF of the raw input is a line end).
        fn reference_end(input: &[u8]) -> Option<usize> {
            if input.starts_with(b".\r\n") {
                return Some(3);
            }
            input
                .windows(5)
                .position(|w| w == b"\r\n.\r\n")
                .map(|i| i + 5)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn only_crlf_dot_crlf_ends_data(input in smtp_bytes(), policy in policy()) {
                let consumed = run([input.as_slice()], 1 << 20, 1 << 20, policy).map(|(n, _)| n);
                prop_assert_eq!(consumed, reference_end(&input));
            }

            #[test]
            fn any_split_gives_the_same_result(
                input in smtp_bytes(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
                policy in policy(),
                max_line in prop_oneof![Just(1usize << 20), 2usize..12],
            ) {
                prop_assert_eq!(
                    run(cut(&input, &cuts), 1 << 20, max_line, policy),
                    run([input.as_slice()], 1 << 20, max_line, policy)
                );
            }

            #[test]
            fn nothing_kept_holds_a_bare_line_end(input in smtp_bytes(), policy in policy()) {
                if let Some((n, Ok(body))) = run([input.as_slice()], 1 << 20, 1 << 20, policy) {
                    prop_assert!(!has_bare_line_end(&body, body.len()), "{:?}", body);
                    prop_assert!(body.is_empty() || body.ends_with(b"\r\n"), "{:?}", body);
                    if policy == BareNewline::Reject {
                        prop_assert!(!has_bare_line_end(&input, n), "accepted bare line ends");
                    }
                }
            }

            /// BDAT: however a message is cut into chunks it is the same message; every byte of
            /// a chunk is content (a dot included), and what is kept has CRLF line ends only and
            /// ends with one.
            #[test]
            fn bdat_chunks_are_content_however_cut(
                input in smtp_bytes(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
                policy in policy(),
            ) {
                let chunked = |pieces: Vec<&[u8]>| {
                    let mut rx = DataReceiver::chunked(1 << 20, 1 << 20, policy);
                    for piece in pieces {
                        assert_eq!(rx.feed(piece), None, "a chunk has no terminator");
                    }
                    rx.finish()
                };
                let whole = chunked(vec![input.as_slice()]);
                prop_assert_eq!(&chunked(cut(&input, &cuts)), &whole);
                if let Ok(body) = whole {
                    prop_assert!(!has_bare_line_end(&body, body.len()), "{:?}", body);
                    prop_assert!(body.is_empty() || body.ends_with(b"\r\n"), "{:?}", body);
                    let dots = |b: &[u8]| b.iter().filter(|&&c| c == b'.').count();
                    prop_assert_eq!(dots(&body), dots(&input), "a dot was taken for stuffing");
                }
            }
        }
    }
}
