//! The DSN parameters of MAIL FROM (RET, ENVID) and RCPT TO (NOTIFY, ORCPT), RFC 3461 §4.
//!
//! smtp-proto recognises these parameters but decodes xtext leniently and keeps only the last
//! of a repeated parameter, so the values are read here from the command line itself: each
//! parameter at most once, xtext strictly (`+` and two upper-case hex digits), decoded values
//! printable US-ASCII, NEVER alone. smtp-proto has already accepted the rest of the line.

use store::hub::{MessageDsn, Notify, RcptDsn, Ret};

use super::Reply;

/// ENVID is at most 100 characters (RFC 3461 §4.4).
const MAX_ENVID: usize = 100;
/// ORCPT is at most 500 characters (RFC 3461 §4.2).
const MAX_ORCPT: usize = 500;

/// What the sender asked for, carried with a message from DATA to the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dsn {
    /// RET and ENVID of MAIL FROM.
    pub message: MessageDsn,
    /// NOTIFY and ORCPT of each accepted RCPT TO, in the order of [`super::Incoming::recipients`].
    pub recipients: Vec<RcptDsn>,
}

/// A DSN parameter that breaks RFC 3461; answered 501 5.5.4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DsnParamError {
    /// The same parameter twice in one command.
    #[error("{0} parameter given twice")]
    Repeated(&'static str),
    /// A value outside the parameter's grammar.
    #[error("invalid {param} parameter: {why}")]
    Invalid {
        /// RET, ENVID, NOTIFY or ORCPT.
        param: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl DsnParamError {
    /// The reply RFC 3461 wants for a syntax error in a parameter.
    pub(crate) fn reply(&self) -> Reply {
        Reply::new(501, "5.5.4", self.to_string())
    }
}

/// RET and ENVID among the parameters of a MAIL FROM line (what follows its path).
pub(crate) fn mail_params(line: &[u8]) -> Result<MessageDsn, DsnParamError> {
    let mut dsn = MessageDsn::default();
    for (key, value) in params(line) {
        if key.eq_ignore_ascii_case("RET") {
            let ret = match value {
                v if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                v if v.eq_ignore_ascii_case("HDRS") => Ret::Hdrs,
                _ => return Err(invalid("RET", "not FULL or HDRS")),
            };
            once(&mut dsn.ret, ret, "RET")?;
        } else if key.eq_ignore_ascii_case("ENVID") {
            let envid = xtext(value, "ENVID")?;
            if envid.is_empty() {
                return Err(invalid("ENVID", "empty"));
            }
            if envid.len() > MAX_ENVID {
                return Err(invalid("ENVID", "longer than 100 characters"));
            }
            once(&mut dsn.envid, envid, "ENVID")?;
        }
    }
    Ok(dsn)
}

/// NOTIFY and ORCPT among the parameters of a RCPT TO line (what follows its path).
pub(crate) fn rcpt_params(line: &[u8]) -> Result<RcptDsn, DsnParamError> {
    let mut dsn = RcptDsn::default();
    for (key, value) in params(line) {
        if key.eq_ignore_ascii_case("NOTIFY") {
            once(&mut dsn.notify, notify(value)?, "NOTIFY")?;
        } else if key.eq_ignore_ascii_case("ORCPT") {
            once(&mut dsn.orcpt, orcpt(value)?, "ORCPT")?;
        }
    }
    Ok(dsn)
}

fn invalid(param: &'static str, why: &'static str) -> DsnParamError {
    DsnParamError::Invalid { param, why }
}

fn once<T>(slot: &mut Option<T>, value: T, param: &'static str) -> Result<(), DsnParamError> {
    if slot.is_some() {
        return Err(DsnParamError::Repeated(param));
    }
    *slot = Some(value);
    Ok(())
}

/// `NEVER` or a comma list of SUCCESS, FAILURE, DELAY (case-insensitive).
fn notify(value: &str) -> Result<Notify, DsnParamError> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::default());
    }
    let mut notify = Notify::default();
    for word in value.split(',') {
        match word {
            w if w.eq_ignore_ascii_case("SUCCESS") => notify.success = true,
            w if w.eq_ignore_ascii_case("FAILURE") => notify.failure = true,
            w if w.eq_ignore_ascii_case("DELAY") => notify.delay = true,
            w if w.eq_ignore_ascii_case("NEVER") => {
                return Err(invalid("NOTIFY", "NEVER combined with other values"))
            }
            _ => {
                return Err(invalid(
                    "NOTIFY",
                    "not NEVER or a list of SUCCESS, FAILURE, DELAY",
                ))
            }
        }
    }
    Ok(notify)
}

/// `addr-type ";" xtext`, kept as `addr-type;decoded-address`.
fn orcpt(value: &str) -> Result<String, DsnParamError> {
    let Some((addr_type, address)) = value.split_once(';') else {
        return Err(invalid("ORCPT", "not addr-type;address"));
    };
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if addr_type.is_empty() || !addr_type.chars().all(atext) {
        return Err(invalid("ORCPT", "the address type is not an atom"));
    }
    let address = xtext(address, "ORCPT")?;
    if address.is_empty() {
        return Err(invalid("ORCPT", "empty address"));
    }
    let orcpt = format!("{addr_type};{address}");
    if orcpt.len() > MAX_ORCPT {
        return Err(invalid("ORCPT", "longer than 500 characters"));
    }
    Ok(orcpt)
}

/// Decodes xtext (RFC 3461 §4): printable ASCII but `+` and `=` as is, anything as `+XX`; the
/// result must be printable US-ASCII, since it is echoed into a report header.
fn xtext(value: &str, param: &'static str) -> Result<String, DsnParamError> {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'+' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| {
                h.iter()
                    .all(|d| d.is_ascii_digit() || (b'A'..=b'F').contains(d))
            });
            let Some(hex) = hex else {
                return Err(invalid(
                    param,
                    "malformed xtext (+ needs two upper-case hex digits)",
                ));
            };
            let decoded = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or_default(), 16)
                .map_err(|_| invalid(param, "malformed xtext"))?;
            if !(b' '..=b'~').contains(&decoded) {
                return Err(invalid(param, "not printable US-ASCII"));
            }
            out.push(decoded as char);
            i += 3;
        } else if (b'!'..=b'~').contains(&c) && c != b'=' {
            out.push(c as char);
            i += 1;
        } else {
            return Err(invalid(param, "malformed xtext"));
        }
    }
    Ok(out)
}

/// The `key=value` parameters (what follows the path); keyword-only ones get an empty value.
fn params(params: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    std::str::from_utf8(params)
        .unwrap_or_default()
        .split_ascii_whitespace()
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::path::{self, PathKind};

    /// The parameters of a command line, as the command parser hands them over.
    fn after_path(line: &str, kind: PathKind) -> &[u8] {
        path::parse(line.as_bytes(), kind)
            .expect("a MAIL FROM: or RCPT TO: line")
            .expect("a valid path")
            .rest
    }

    fn notify(success: bool, failure: bool, delay: bool) -> Option<Notify> {
        Some(Notify {
            success,
            failure,
            delay,
        })
    }

    #[test]
    fn mail_parameters() {
        let ok: &[(&str, MessageDsn)] = &[
            ("MAIL FROM:<a@b.test>\r\n", MessageDsn::default()),
            (
                "MAIL FROM:<a@b.test> RET=FULL\r\n",
                MessageDsn {
                    ret: Some(Ret::Full),
                    envid: None,
                },
            ),
            (
                "MAIL FROM:<a@b.test> ret=hdrs ENVID=QQ314159 SIZE=10\r\n",
                MessageDsn {
                    ret: Some(Ret::Hdrs),
                    envid: Some("QQ314159".into()),
                },
            ),
            (
                "MAIL FROM:<\"x> y\"@b.test> ENVID=hi+20there+2B+3D\r\n",
                MessageDsn {
                    ret: None,
                    envid: Some("hi there+=".into()),
                },
            ),
            (
                "MAIL FROM:<> BODY=8BITMIME ENVID=a\r\n",
                MessageDsn {
                    ret: None,
                    envid: Some("a".into()),
                },
            ),
        ];
        for (line, expected) in ok {
            assert_eq!(
                mail_params(after_path(line, PathKind::Reverse)).as_ref(),
                Ok(expected),
                "{line}"
            );
        }
        let bad: &[(&str, DsnParamError)] = &[
            (
                "MAIL FROM:<a@b.test> RET=FULL RET=FULL\r\n",
                DsnParamError::Repeated("RET"),
            ),
            (
                "MAIL FROM:<a@b.test> RET=HDRS RET=FULL\r\n",
                DsnParamError::Repeated("RET"),
            ),
            (
                "MAIL FROM:<a@b.test> ENVID=a ENVID=b\r\n",
                DsnParamError::Repeated("ENVID"),
            ),
            (
                "MAIL FROM:<a@b.test> RET=BODY\r\n",
                invalid("RET", "not FULL or HDRS"),
            ),
            (
                "MAIL FROM:<a@b.test> ENVID=a+2\r\n",
                invalid(
                    "ENVID",
                    "malformed xtext (+ needs two upper-case hex digits)",
                ),
            ),
            (
                "MAIL FROM:<a@b.test> ENVID=a+2f\r\n",
                invalid(
                    "ENVID",
                    "malformed xtext (+ needs two upper-case hex digits)",
                ),
            ),
            (
                "MAIL FROM:<a@b.test> ENVID=a=b\r\n",
                invalid("ENVID", "malformed xtext"),
            ),
            (
                "MAIL FROM:<a@b.test> ENVID=a+0D+0A\r\n",
                invalid("ENVID", "not printable US-ASCII"),
            ),
            ("MAIL FROM:<a@b.test> ENVID=\r\n", invalid("ENVID", "empty")),
        ];
        for (line, expected) in bad {
            assert_eq!(
                mail_params(after_path(line, PathKind::Reverse)).as_ref(),
                Err(expected),
                "{line}"
            );
        }
        let long = format!("MAIL FROM:<a@b.test> ENVID={}\r\n", "x".repeat(101));
        assert_eq!(
            mail_params(after_path(&long, PathKind::Reverse)),
            Err(invalid("ENVID", "longer than 100 characters"))
        );
    }

    #[test]
    fn rcpt_parameters() {
        let ok: &[(&str, RcptDsn)] = &[
            ("RCPT TO:<a@b.test>\r\n", RcptDsn::default()),
            (
                "RCPT TO:<a@b.test> NOTIFY=NEVER\r\n",
                RcptDsn {
                    notify: notify(false, false, false),
                    orcpt: None,
                },
            ),
            (
                "RCPT TO:<a@b.test> NOTIFY=success,Failure,DELAY\r\n",
                RcptDsn {
                    notify: notify(true, true, true),
                    orcpt: None,
                },
            ),
            (
                "RCPT TO:<a@b.test> ORCPT=rfc822;George+20@Tax-+20ME+20.GOV NOTIFY=SUCCESS\r\n",
                RcptDsn {
                    notify: notify(true, false, false),
                    orcpt: Some("rfc822;George @Tax- ME .GOV".into()),
                },
            ),
        ];
        for (line, expected) in ok {
            assert_eq!(
                rcpt_params(after_path(line, PathKind::Forward)).as_ref(),
                Ok(expected),
                "{line}"
            );
        }
        let bad: &[(&str, DsnParamError)] = &[
            (
                "RCPT TO:<a@b.test> NOTIFY=NEVER,SUCCESS\r\n",
                invalid("NOTIFY", "NEVER combined with other values"),
            ),
            (
                "RCPT TO:<a@b.test> NOTIFY=SUCCESS,NEVER\r\n",
                invalid("NOTIFY", "NEVER combined with other values"),
            ),
            (
                "RCPT TO:<a@b.test> NOTIFY=SUCCESS NOTIFY=FAILURE\r\n",
                DsnParamError::Repeated("NOTIFY"),
            ),
            (
                "RCPT TO:<a@b.test> NOTIFY=\r\n",
                invalid("NOTIFY", "not NEVER or a list of SUCCESS, FAILURE, DELAY"),
            ),
            (
                "RCPT TO:<a@b.test> ORCPT=a@b.test\r\n",
                invalid("ORCPT", "not addr-type;address"),
            ),
            (
                "RCPT TO:<a@b.test> ORCPT=;a@b.test\r\n",
                invalid("ORCPT", "the address type is not an atom"),
            ),
            (
                "RCPT TO:<a@b.test> ORCPT=rfc822;\r\n",
                invalid("ORCPT", "empty address"),
            ),
            (
                "RCPT TO:<a@b.test> ORCPT=rfc822;a+ZZ\r\n",
                invalid(
                    "ORCPT",
                    "malformed xtext (+ needs two upper-case hex digits)",
                ),
            ),
            (
                "RCPT TO:<a@b.test> ORCPT=rfc822;a@b ORCPT=rfc822;c@d\r\n",
                DsnParamError::Repeated("ORCPT"),
            ),
        ];
        for (line, expected) in bad {
            assert_eq!(
                rcpt_params(after_path(line, PathKind::Forward)).as_ref(),
                Err(expected),
                "{line}"
            );
        }
    }

    #[test]
    fn errors_are_501_5_5_4() {
        let reply = DsnParamError::Repeated("RET").reply();
        assert_eq!(reply, Reply::new(501, "5.5.4", "RET parameter given twice"));
    }
}
