//! SMTP replies: the one type every part of the server (and every backend) speaks.

use std::fmt;

/// A reply line: code, enhanced status code, text.
///
/// Backends build these for their own refusals (`550 5.1.1`, `451 4.3.2`, ...) so the
/// session can send them unchanged; the wire format (multi-line, enhanced codes) lives here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code (RFC 5321 §4.2).
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. `"4.3.2"`; `""` for replies that carry none
    /// (the greeting, EHLO/HELO and 354, per RFC 2034 §3).
    pub esc: &'static str,
    /// Human-readable text; a `'\n'` splits it into the lines of a multi-line reply.
    pub text: String,
}

impl Reply {
    /// The refusal of a role whose disk is short of its reserve (`min_free_space`): RFC 3463
    /// 4.3.1, mail system full; the client keeps the message and tries again later.
    pub fn insufficient_storage() -> Reply {
        Reply::new(452, "4.3.1", "insufficient system storage, try again later")
    }

    /// Builds a reply; see the field docs for what each part means.
    pub fn new(code: u16, esc: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            esc,
            text: text.into(),
        }
    }

    /// True for a 2xx (positive completion) reply: the command, or the message, was accepted.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Appends the wire form, one `code[-| ][esc ]text CRLF` line per text line.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self
            .text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .collect();
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let line = if self.esc.is_empty() {
                format!("{}{sep}{line}\r\n", self.code)
            } else {
                format!("{}{sep}{} {line}\r\n", self.code, self.esc)
            };
            out.extend_from_slice(line.as_bytes());
        }
    }
}

/// The first line as sent, for logs.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.text.lines().next().unwrap_or("");
        if self.esc.is_empty() {
            write!(f, "{} {first}", self.code)
        } else {
            write!(f, "{} {} {first}", self.code, self.esc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reply;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).expect("replies built from &str are UTF-8")
    }

    #[test]
    fn wire_format() {
        let cases = [
            (Reply::new(250, "2.0.0", "ok"), "250 2.0.0 ok\r\n"),
            (Reply::new(220, "", "mx ESMTP"), "220 mx ESMTP\r\n"),
            (
                Reply::new(250, "", "mx\nSIZE 10\nPIPELINING"),
                "250-mx\r\n250-SIZE 10\r\n250 PIPELINING\r\n",
            ),
            (
                Reply::new(451, "4.3.0", "a\r\nb"),
                "451-4.3.0 a\r\n451 4.3.0 b\r\n",
            ),
        ];
        for (reply, expected) in cases {
            assert_eq!(wire(&reply), expected);
        }
    }

    #[test]
    fn positive_is_2xx_only() {
        assert!(Reply::new(250, "2.0.0", "").is_positive());
        assert!(!Reply::new(354, "", "").is_positive());
        assert!(!Reply::new(451, "4.3.2", "").is_positive());
        assert!(!Reply::new(550, "5.1.1", "").is_positive());
    }

    #[test]
    fn display_is_first_line() {
        assert_eq!(Reply::new(250, "", "mx\nSIZE 10").to_string(), "250 mx");
        assert_eq!(
            Reply::new(550, "5.7.1", "relaying denied").to_string(),
            "550 5.7.1 relaying denied"
        );
    }
}
