//! The reverse- and forward-path of MAIL and RCPT, checked against RFC 5321 §4.1.2.
//!
//! smtp-proto 0.1.7 parses the rest of these commands (the parameters) but is lenient about the
//! path itself: it accepts `<user@>`, drops quotes, skips spaces inside the brackets and keeps
//! going past unbalanced brackets. A relay that accepts such a path hands the problem to every
//! hop after it, so the path is read here, strictly, before smtp-proto sees the line:
//!
//! - **501** (syntax): no `<...>`, unbalanced brackets or quotes, an unquoted space, a control
//!   character, or text glued to the closing `>`.
//! - **553** (mailbox name not allowed): a well-delimited path that is not a mailbox: empty
//!   local part or domain, a dot out of place, a bad domain label or address literal, a
//!   malformed source route, a part over its RFC 5321 §4.5.3.1 length, non-ASCII (SMTPUTF8 is
//!   not offered), or `<>` as a recipient.
//!
//! A well-formed source route (`<@relay:user@domain>`) is accepted and ignored, as §4.1.2 and
//! Appendix C ask; the address kept is the mailbox alone. `RCPT TO:<Postmaster>` (no domain)
//! is accepted as §4.1.1.3 requires.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Reply;

/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
const MAX_DOMAIN: usize = 255;
/// Longest path, brackets included (RFC 5321 §4.5.3.1.3).
const MAX_PATH: usize = 256;
/// Longest domain label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

/// Which path a command carries; they differ in `<>` and in the reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    /// MAIL FROM: `<>` (the null sender) is valid.
    Reverse,
    /// RCPT TO: `<Postmaster>` is valid, `<>` is not.
    Forward,
}

/// Why a path is refused. The first five are syntax (501), the rest bad mailbox names (553).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// No `<` where the path starts.
    #[error("the address must be enclosed in <>")]
    NotBracketed,
    /// The line ends before the closing `>`, a quote is left open, or a `<` is inside.
    #[error("unbalanced <> or quotes")]
    Unbalanced,
    /// A space outside a quoted local part.
    #[error("space in the address")]
    Space,
    /// A control character (or DEL) anywhere in the path.
    #[error("control character in the address")]
    Control,
    /// Something other than a space or the end of the line right after `>`.
    #[error("unexpected text after the address")]
    Trailing,
    /// `<>` where a recipient is needed.
    #[error("empty address")]
    Empty,
    /// Nothing before the `@`, or no `@` at all.
    #[error("no local part or no @")]
    NoLocalPart,
    /// Nothing after the `@`.
    #[error("no domain")]
    NoDomain,
    /// A local part that is neither a dot-atom nor a quoted string.
    #[error("invalid local part")]
    LocalPart,
    /// A domain that is not LDH labels separated by single dots, nor an IP address literal.
    #[error("invalid domain")]
    Domain,
    /// A source route that is not `@domain[,@domain...]:`.
    #[error("invalid source route")]
    SourceRoute,
    /// Longer than RFC 5321 §4.5.3.1 allows.
    #[error("address too long")]
    TooLong,
    /// A byte over 127: addresses are ASCII unless SMTPUTF8 was negotiated.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
}

impl PathError {
    /// The reply to the command that carried the path.
    pub(crate) fn reply(self, kind: PathKind) -> Reply {
        let (esc, who) = match kind {
            PathKind::Reverse => ("5.1.7", "sender"),
            PathKind::Forward => ("5.1.3", "recipient"),
        };
        match self {
            PathError::NotBracketed
            | PathError::Unbalanced
            | PathError::Space
            | PathError::Control
            | PathError::Trailing => {
                Reply::new(501, esc, format!("bad {who} address syntax: {self}"))
            }
            PathError::NonAscii => Reply::new(553, "5.6.7", format!("{who} address: {self}")),
            _ => Reply::new(553, esc, format!("{who} address not allowed: {self}")),
        }
    }
}

/// A path that passed, and what follows it on the line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Path<'a> {
    /// The mailbox without brackets or source route; `""` for the null sender.
    pub mailbox: String,
    /// The rest of the line after `>`: the parameters and the line end.
    pub rest: &'a [u8],
}

/// Reads the path of a `MAIL FROM:` or `RCPT TO:` line (CRLF or LF included).
///
/// `None` when the line does not have that shape (wrong verb or keyword), which is left to
/// the command parser to answer; otherwise the path, or why it is refused.
pub(crate) fn parse(line: &[u8], kind: PathKind) -> Option<Result<Path<'_>, PathError>> {
    let rest = after_keyword(line, kind)?;
    Some(path(rest, kind))
}

/// The bytes after `MAIL FROM:` / `RCPT TO:` and any spaces, matched case-insensitively and
/// with spaces allowed around the keyword as smtp-proto allows them.
fn after_keyword(line: &[u8], kind: PathKind) -> Option<&[u8]> {
    let (verb, keyword): (&[u8], &[u8]) = match kind {
        PathKind::Reverse => (b"MAIL", b"FROM"),
        PathKind::Forward => (b"RCPT", b"TO"),
    };
    let rest = strip_prefix_ignore_case(line, verb)?;
    let rest = strip_prefix_ignore_case(skip_spaces(rest), keyword)?;
    let rest = skip_spaces(rest).strip_prefix(b":")?;
    Some(skip_spaces(rest))
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &bytes[prefix.len()..])
}

fn skip_spaces(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().take_while(|&&b| b == b' ').count();
    &bytes[n..]
}

/// Delimits `<...>` (quotes respected) and checks what follows it, then the mailbox.
fn path(rest: &[u8], kind: PathKind) -> Result<Path<'_>, PathError> {
    if rest.first() != Some(&b'<') {
        return Err(PathError::NotBracketed);
    }
    let mut in_quote = false;
    let mut escaped = false;
    let mut end = None;
    for (i, &b) in rest.iter().enumerate().skip(1) {
        if b == b'\r' || b == b'\n' {
            break;
        }
        if b < 0x20 || b == 0x7f {
            return Err(PathError::Control);
        }
        if escaped {
            escaped = false;
        } else if in_quote {
            match b {
                b'\\' => escaped = true,
                b'"' => in_quote = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_quote = true,
                b'>' => {
                    end = Some(i);
                    break;
                }
                b'<' => return Err(PathError::Unbalanced),
                b' ' => return Err(PathError::Space),
                _ => {}
            }
        }
    }
    let end = end.ok_or(PathError::Unbalanced)?;
    let after = &rest[end + 1..];
    if !matches!(after.first(), None | Some(b' ' | b'\r' | b'\n')) {
        return Err(PathError::Trailing);
    }
    if end + 1 > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let path = |mailbox: &str| Path {
        mailbox: mailbox.to_string(),
        rest: after,
    };
    let inner = &rest[1..end];
    if !inner.is_ascii() {
        return Err(PathError::NonAscii);
    }
    let inner = std::str::from_utf8(inner).expect("checked ASCII");
    if inner.is_empty() {
        return match kind {
            PathKind::Reverse => Ok(path("")),
            PathKind::Forward => Err(PathError::Empty),
        };
    }
    if kind == PathKind::Forward && inner.eq_ignore_ascii_case("postmaster") {
        return Ok(path(inner));
    }
    let mailbox = strip_source_route(inner)?;
    check_mailbox(mailbox)?;
    Ok(path(mailbox))
}

/// `@a,@b:user@c` → `user@c`, once every route domain is checked.
fn strip_source_route(inner: &str) -> Result<&str, PathError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    let (route, mailbox) = inner.split_once(':').ok_or(PathError::SourceRoute)?;
    for hop in route.split(',') {
        let domain = hop.strip_prefix('@').ok_or(PathError::SourceRoute)?;
        check_domain(domain).map_err(|_| PathError::SourceRoute)?;
    }
    Ok(mailbox)
}

/// `Local-part "@" ( Domain / address-literal )`.
fn check_mailbox(mailbox: &str) -> Result<(), PathError> {
    let (local, domain) = split_at_domain(mailbox)?;
    if local.is_empty() {
        return Err(PathError::NoLocalPart);
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(PathError::TooLong);
    }
    if local.starts_with('"') {
        check_quoted(local)?;
    } else if !local.split('.').all(is_atom) {
        return Err(PathError::LocalPart);
    }
    if domain.is_empty() {
        return Err(PathError::NoDomain);
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let literal = literal.strip_suffix(']').ok_or(PathError::Domain)?;
        return check_address_literal(literal);
    }
    check_domain(domain)
}

/// Splits at the `@` that ends the local part: the last one, since a quoted local part may
/// hold `@` and a domain may not.
fn split_at_domain(mailbox: &str) -> Result<(&str, &str), PathError> {
    mailbox.rsplit_once('@').ok_or(PathError::NoLocalPart)
}

/// `DQUOTE *QcontentSMTP DQUOTE`: printable ASCII, with `"` and `\` only as `\"`, `\\`.
fn check_quoted(local: &str) -> Result<(), PathError> {
    let body = local
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .filter(|_| local.len() >= 2)
        .ok_or(PathError::LocalPart)?;
    let mut bytes = body.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                bytes
                    .next()
                    .filter(|c| (32..=126).contains(c))
                    .ok_or(PathError::LocalPart)?;
            }
            b'"' => return Err(PathError::LocalPart),
            32..=126 => {}
            _ => return Err(PathError::LocalPart),
        }
    }
    Ok(())
}

/// `1*atext` (RFC 5322 §3.2.3).
fn is_atom(atom: &str) -> bool {
    !atom.is_empty()
        && atom
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
}

/// `sub-domain *("." sub-domain)`, each `Let-dig [Ldh-str]`, within the length limits.
fn check_domain(domain: &str) -> Result<(), PathError> {
    if domain.is_empty() {
        return Err(PathError::NoDomain);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(PathError::TooLong);
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_LABEL
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    if domain.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(PathError::Domain)
    }
}

/// `IPv4-address-literal / "IPv6:" IPv6-addr` (general literals name no route we can use).
fn check_address_literal(literal: &str) -> Result<(), PathError> {
    let valid = match literal.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => literal[5..].parse::<Ipv6Addr>().is_ok(),
        _ => literal.parse::<Ipv4Addr>().is_ok(),
    };
    if valid {
        Ok(())
    } else {
        Err(PathError::Domain)
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, PathError, PathKind};

    /// Every form of RFC 5321 §4.1.2 this server must refuse or accept, in MAIL and in RCPT.
    #[test]
    fn table() {
        use PathError::*;
        let long_local = format!("<{}@example.test>", "a".repeat(65));
        let long_label = format!("<a@{}.test>", "b".repeat(64));
        let long_path = format!("<a@{}.test>", vec!["c".repeat(60); 5].join("."));
        let cases: Vec<(&str, Result<&str, PathError>)> = vec![
            ("<user@example.test>", Ok("user@example.test")),
            (
                "<first.last+tag@sub.example.test>",
                Ok("first.last+tag@sub.example.test"),
            ),
            (
                "<\"john doe\"@example.test>",
                Ok("\"john doe\"@example.test"),
            ),
            (
                "<\"a\\\"b@c\"@example.test>",
                Ok("\"a\\\"b@c\"@example.test"),
            ),
            ("<user@[192.0.2.1]>", Ok("user@[192.0.2.1]")),
            ("<user@[IPv6:2001:db8::1]>", Ok("user@[IPv6:2001:db8::1]")),
            (
                "<@relay.test,@b.test:user@example.test>",
                Ok("user@example.test"),
            ),
            ("<user@example.test> SIZE=100", Ok("user@example.test")),
            ("<USER@Example.Test>", Ok("USER@Example.Test")),
            ("user@example.test", Err(NotBracketed)),
            ("", Err(NotBracketed)),
            ("<user@example.test", Err(Unbalanced)),
            ("<<user@example.test>", Err(Unbalanced)),
            ("<<user@example.test>>", Err(Unbalanced)),
            ("<\"user@example.test>", Err(Unbalanced)),
            ("<user @example.test>", Err(Space)),
            ("< user@example.test>", Err(Space)),
            ("<user@example.test >", Err(Space)),
            ("<us\ter@example.test>", Err(Control)),
            ("<user@exa\x01mple.test>", Err(Control)),
            ("<user@example.test\x7f>", Err(Control)),
            ("<user@example.test>x", Err(Trailing)),
            ("<user@example.test>>", Err(Trailing)),
            ("<user@>", Err(NoDomain)),
            ("<@example.test>", Err(SourceRoute)),
            ("<user>", Err(NoLocalPart)),
            ("<user@@example.test>", Err(LocalPart)),
            ("<.user@example.test>", Err(LocalPart)),
            ("<user.@example.test>", Err(LocalPart)),
            ("<us..er@example.test>", Err(LocalPart)),
            ("<us(er@example.test>", Err(LocalPart)),
            ("<\"\"\"@example.test>", Err(Unbalanced)),
            ("<\"a\"b@example.test>", Err(LocalPart)),
            ("<user@example..test>", Err(Domain)),
            ("<user@.example.test>", Err(Domain)),
            ("<user@example.test.>", Err(Domain)),
            ("<user@-example.test>", Err(Domain)),
            ("<user@exa_mple.test>", Err(Domain)),
            ("<user@[192.0.2.300]>", Err(Domain)),
            ("<user@[IPv6:zz::1]>", Err(Domain)),
            ("<user@[192.0.2.1>", Err(Domain)),
            ("<@relay.test:>", Err(NoLocalPart)),
            ("<@relay..test:user@example.test>", Err(SourceRoute)),
            ("<@relay.test,user@example.test>", Err(SourceRoute)),
            ("<relay.test:user@example.test>", Err(LocalPart)),
            ("<usér@example.test>", Err(NonAscii)),
            (long_local.as_str(), Err(TooLong)),
            (long_label.as_str(), Err(Domain)),
            (long_path.as_str(), Err(TooLong)),
        ];
        for (path, expected) in cases {
            for (kind, prefix) in [
                (PathKind::Reverse, "MAIL FROM:"),
                (PathKind::Forward, "RCPT TO:"),
            ] {
                let line = format!("{prefix}{path}\r\n");
                let got = parse(line.as_bytes(), kind).expect("the keyword is there");
                let got = got.map(|p| p.mailbox);
                assert_eq!(got.as_deref().map_err(|e| *e), expected, "{line:?}");
            }
        }
    }

    #[test]
    fn null_path_and_postmaster() {
        let mail = |l: &str| {
            let parsed = parse(l.as_bytes(), PathKind::Reverse).expect("shape");
            parsed.map(|p| (p.mailbox, String::from_utf8_lossy(p.rest).into_owned()))
        };
        let rcpt = |l: &str| {
            let parsed = parse(l.as_bytes(), PathKind::Forward).expect("shape");
            parsed.map(|p| p.mailbox)
        };
        assert_eq!(mail("MAIL FROM:<>\r\n"), Ok((String::new(), "\r\n".into())));
        assert_eq!(
            mail("mail from: <> BODY=8BITMIME\r\n"),
            Ok((String::new(), " BODY=8BITMIME\r\n".into()))
        );
        assert_eq!(rcpt("RCPT TO:<>\r\n"), Err(PathError::Empty));
        assert_eq!(rcpt("RCPT TO:<Postmaster>\r\n"), Ok("Postmaster".into()));
        assert_eq!(
            mail("MAIL FROM:<postmaster>\r\n"),
            Err(PathError::NoLocalPart)
        );
    }

    #[test]
    fn other_shapes_are_left_to_the_command_parser() {
        assert_eq!(parse(b"MAIL TO:<a@b.test>\r\n", PathKind::Reverse), None);
        assert_eq!(parse(b"RCPT FROM:<a@b.test>\r\n", PathKind::Forward), None);
        assert_eq!(parse(b"MAIL FROM<a@b.test>\r\n", PathKind::Reverse), None);
    }

    #[test]
    fn syntax_is_501_and_names_are_553_with_the_role_in_the_code() {
        let r = PathError::Space.reply(PathKind::Reverse);
        assert_eq!((r.code, r.esc), (501, "5.1.7"));
        let r = PathError::NoDomain.reply(PathKind::Forward);
        assert_eq!((r.code, r.esc), (553, "5.1.3"));
        let r = PathError::NonAscii.reply(PathKind::Forward);
        assert_eq!((r.code, r.esc), (553, "5.6.7"));
    }
}
