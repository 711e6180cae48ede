//! Where a configuration problem is, and why: byte spans from the TOML parser become 1-based
//! LINE:COL positions so that every error can be shown as `FILE:LINE:COL: reason`.
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration problem at a 1-based line and column (counted in characters) of the file.
///
/// Displays as `FILE:LINE:COL: reason`, with `FILE` exactly as the caller named it. Problems that
/// have no better position (unreadable file, missing top-level key) are reported at 1:1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{}:{line}:{column}: {reason}", file.display())]
pub struct ConfigError {
    /// The config file, as given to [`Config::load`](super::Config::load) or
    /// [`Config::parse`](super::Config::parse).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, in one line.
    pub reason: String,
}

/// A problem found while checking the text, located by a byte span of that text.
///
/// It becomes a [`ConfigError`] once, at the end, where the text is at hand to turn the span into
/// a line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    /// Byte range in the config text; `None` means "no better place than the start".
    pub span: Option<Range<usize>>,
    pub reason: String,
}

impl Problem {
    /// A problem with the value (or key) at `span`.
    pub(super) fn at(span: Range<usize>, reason: impl Into<String>) -> Self {
        Problem {
            span: Some(span),
            reason: reason.into(),
        }
    }

    /// A problem that has no place in the text (reported at 1:1).
    pub(super) fn unplaced(reason: impl Into<String>) -> Self {
        Problem {
            span: None,
            reason: reason.into(),
        }
    }

    /// Locates the problem in `text` (the whole config file).
    pub(super) fn locate(self, text: &str, file: &Path) -> ConfigError {
        let (line, column) = match self.span {
            Some(span) => line_column(text, span.start),
            None => (1, 1),
        };
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            reason: self.reason,
        }
    }
}

impl From<toml::de::Error> for Problem {
    /// Serde-level problems (syntax, unknown key, wrong type, missing key, bad enum variant).
    fn from(error: toml::de::Error) -> Self {
        Problem {
            span: error.span(),
            reason: tidy_toml_message(error.message()),
        }
    }
}

/// Makes a parser message fit the one-line `FILE:LINE:COL: reason` format and speak TOML rather
/// than Rust ("expected i64" or "expected struct RawNode" mean nothing in a config file).
fn tidy_toml_message(message: &str) -> String {
    let one_line = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let mut reason = one_line
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("wanted string or table", "expected a string")
        .replace("missing field", "missing required key");
    // "expected struct RawKeepalive" names a type of this module: it is a TOML table.
    if let Some(start) = reason.find("expected struct ") {
        let name_start = start + "expected struct ".len();
        let name_end = reason[name_start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(reason.len(), |end| name_start + end);
        reason.replace_range(start..name_end, "expected a table");
    }
    if reason.is_empty() {
        "invalid TOML".to_owned()
    } else {
        reason
    }
}

/// 1-based (line, column) of byte `offset` in `text`; the column counts characters.
///
/// Offsets past the end clamp to the end, and an offset inside a multi-byte character counts that
/// character as started: the caller's span may come from anywhere, so this never panics.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let before = &bytes[..offset.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
    // Every byte that is not a UTF-8 continuation byte starts a character.
    let column = before[line_start..]
        .iter()
        .filter(|&&byte| byte & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

/// `std::io::Error` as a person reads it: "No such file or directory", without the
/// " (os error 2)" suffix that only matters to programs.
pub(super) fn describe_io_error(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(suffix) if text.ends_with(')') => text[..suffix].to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "ab\nçd = 1\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (1, 3));
        assert_eq!(line_column(text, 3), (2, 1));
        // 'ç' is two bytes but one column.
        assert_eq!(line_column(text, 5), (2, 2));
        // Inside the two-byte 'ç': counts it as started, does not panic.
        assert_eq!(line_column(text, 4), (2, 2));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }

    #[test]
    fn display_is_file_line_column_reason() {
        let error = ConfigError {
            file: PathBuf::from("conf/site.toml"),
            line: 3,
            column: 7,
            reason: "bad".to_owned(),
        };
        assert_eq!(error.to_string(), "conf/site.toml:3:7: bad");
    }

    #[test]
    fn parser_messages_speak_toml() {
        assert_eq!(
            tidy_toml_message("invalid type: integer `10`, expected struct RawKeepalive"),
            "invalid type: integer `10`, expected a table"
        );
        assert_eq!(
            tidy_toml_message("invalid table header\nduplicate key `node` in document root"),
            "invalid table header: duplicate key `node` in document root"
        );
        assert_eq!(tidy_toml_message(""), "invalid TOML");
    }

    #[test]
    fn io_errors_lose_the_os_error_suffix() {
        let error = std::io::Error::from_raw_os_error(2);
        assert_eq!(describe_io_error(&error), "No such file or directory");
    }
}
