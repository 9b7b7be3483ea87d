//! Where a mistake is: every error names the file, the line and the dotted key. `Locator` turns
//! byte offsets (toml's spans) into `file:line: key:`; `Seen` points a duplicate name at the line
//! that defined it first.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::ConfigError;

/// Turns byte offsets into `file:line: key:` messages.
pub(super) struct Locator<'a> {
    /// The config file, as named in messages; relative paths in it are resolved beside it.
    pub(super) file: &'a Path,
    /// Its text, which the offsets index.
    pub(super) text: &'a str,
}

impl Locator<'_> {
    /// The dotted key whose value is at byte `offset` (`site.bare_newline`): the `key =` that
    /// starts its line, under the last table header above it. `None` inside a multi-line value.
    fn key_at(&self, offset: usize) -> Option<String> {
        let before = self.text.get(..offset.min(self.text.len()))?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[line_start..].lines().next()?;
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        let bare = |k: &str| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !bare(key) {
            return None;
        }
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(['[', ']']).trim());
        Some(match table {
            Some(table) if bare(table) => format!("{table}.{key}"),
            _ => key.to_string(),
        })
    }

    /// The 1-based line `span` starts on.
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    /// A `file:line: key: message` error about the value at `span`.
    pub(super) fn err(
        &self,
        span: &Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A toml error (syntax, unknown or missing key, wrong type), located as well as toml allows.
    pub(super) fn toml(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| self.line(&s)).unwrap_or(0);
        // toml's message can span lines; the first is the one that says what is wrong.
        let message = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        let named = key_from_toml_message(e.message());
        let key = named
            .or_else(|| e.span().and_then(|span| self.key_at(span.start)))
            .unwrap_or_else(|| "(document)".to_string());
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            key,
            message,
        }
    }
}

/// toml reports unknown and missing keys as "unknown field `x`" / "missing field `x`"; the key is the
/// backquoted name. Other messages quote the bad *value* (e.g. "unknown variant `strip`"), so only
/// these two are read for a key.
fn key_from_toml_message(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    let len = rest.find('`')?;
    Some(rest[..len].to_string())
}

/// Remembers where each name was first seen so a duplicate can point at both.
pub(super) struct Seen<'a> {
    at: &'a Locator<'a>,
    key: &'static str,
    what: &'static str,
    first: HashMap<String, (usize, String)>,
}

impl<'a> Seen<'a> {
    /// Names for `key`, called a `what` in messages (`role`, `mailbox`).
    pub(super) fn new(at: &'a Locator<'a>, key: &'static str, what: &'static str) -> Self {
        Seen {
            at,
            key,
            what,
            first: HashMap::new(),
        }
    }

    /// Records `name` (owned by `owner`), failing if it was already recorded.
    pub(super) fn add(&mut self, name: &Spanned<String>, owner: &str) -> Result<(), ConfigError> {
        let line = self.at.line(&name.span());
        let folded = name.get_ref().to_ascii_lowercase();
        if let Some((first_line, first_owner)) = self.first.get(&folded) {
            let whose = if first_owner.is_empty() {
                String::new()
            } else {
                format!(" in {first_owner}")
            };
            return Err(self.at.err(
                &name.span(),
                self.key,
                format!(
                    "{} `{}` is already defined{whose} at line {first_line}; names must be unique",
                    self.what,
                    name.get_ref()
                ),
            ));
        }
        self.first.insert(folded, (line, owner.to_string()));
        Ok(())
    }
}
