//! OpenVPN config files split into directives, following OpenVPN 2.6's own rules
//! (`options_parse.c` / `options.c`: `parse_line`, `read_config_file`, `check_inline_file`):
//!
//! - one directive per line, tokens separated by whitespace;
//! - `#` or `;` where a token would start begins a comment (`remote 192.0.2.1 # old` has two
//!   tokens; `a#b` is one token);
//! - `"double quotes"` group a token and honour `\"`, `\\` and `\ ` escapes; `'single quotes'`
//!   take everything literally up to the next `'`; outside single quotes a backslash may only
//!   escape `\`, `"` or whitespace (anything else is an error, as in OpenVPN);
//! - a leading `--` on the option name is dropped (`--verb 3` works in a file, as in OpenVPN);
//! - a line that is only `<tag>` opens an inline file that runs up to the line starting (after
//!   blanks) with `</tag>`; its text becomes the directive's last argument;
//! - a UTF-8 byte order mark at the very start is skipped.

/// OpenVPN's `MAX_PARMS`: tokens beyond this many on one line are dropped by OpenVPN; we refuse
/// them instead, as such a line can only be a mistake.
const MAX_TOKENS: usize = 16;

/// One option of the file, e.g. `remote 192.0.2.1 1194` or an inline `<ca>` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Directive {
    /// 1-based line the directive (or its opening `<tag>`) is on.
    pub line: usize,
    /// The option name without any leading `--`, e.g. `remote`.
    pub name: String,
    /// The arguments after the name, quotes removed.
    pub args: Vec<String>,
    /// For an inline `<tag>` … `</tag>` block: the text between the tags, newlines kept.
    pub inline: Option<String>,
}

/// A line OpenVPN itself would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(super) struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Unquoted,
    DoubleQuoted,
    SingleQuoted,
}

/// Splits one line into tokens the way OpenVPN's `parse_line` does.
pub(super) fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut token = String::new();
    let mut state = State::Between;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && state != State::SingleQuoted {
            let escaped = chars.next().unwrap_or('\0');
            if !(escaped == '\\' || escaped == '"' || escaped.is_whitespace()) {
                return Err(
                    "bad backslash: outside single quotes a backslash may only escape \\, \" or a space (write \\\\ for one backslash)"
                        .to_owned(),
                );
            }
            match state {
                // OpenVPN skips an escaped blank between tokens.
                State::Between if escaped.is_whitespace() => {}
                State::Between => {
                    token.push(escaped);
                    state = State::Unquoted;
                }
                _ => token.push(escaped),
            }
            continue;
        }
        match state {
            State::Between => {
                if c.is_whitespace() {
                    continue;
                }
                match c {
                    '#' | ';' => break,
                    '"' => state = State::DoubleQuoted,
                    '\'' => state = State::SingleQuoted,
                    _ => {
                        token.push(c);
                        state = State::Unquoted;
                    }
                }
            }
            State::Unquoted if c.is_whitespace() => {
                tokens.push(std::mem::take(&mut token));
                state = State::Between;
            }
            State::DoubleQuoted if c == '"' => {
                tokens.push(std::mem::take(&mut token));
                state = State::Between;
            }
            State::SingleQuoted if c == '\'' => {
                tokens.push(std::mem::take(&mut token));
                state = State::Between;
            }
            _ => token.push(c),
        }
    }
    match state {
        State::Between => {}
        State::Unquoted => tokens.push(token),
        State::DoubleQuoted => return Err("no closing quotation (\")".to_owned()),
        State::SingleQuoted => return Err("no closing single quotation (')".to_owned()),
    }
    if tokens.len() > MAX_TOKENS {
        return Err(format!(
            "{} tokens on one line; OpenVPN reads at most {MAX_TOKENS}",
            tokens.len()
        ));
    }
    Ok(tokens)
}

/// Splits a whole config file into directives. Every malformed line is reported, not just the
/// first.
pub(super) fn tokenize(text: &str) -> Result<Vec<Directive>, Vec<SyntaxError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut directives = Vec::new();
    let mut errors = Vec::new();
    let mut lines = text.split_inclusive('\n').enumerate();
    while let Some((index, raw_line)) = lines.next() {
        let line = index + 1;
        let mut tokens = match split_line(raw_line.trim_end_matches(['\n', '\r'])) {
            Ok(tokens) => tokens,
            Err(reason) => {
                errors.push(SyntaxError { line, reason });
                continue;
            }
        };
        if tokens.is_empty() {
            continue;
        }
        let mut name = tokens.remove(0);
        // OpenVPN's bypass_doubledash: only when something follows the dashes.
        if name.len() >= 3 && name.starts_with("--") {
            name.drain(..2);
        }
        let tag = (tokens.is_empty() && name.len() > 2)
            .then(|| {
                name.strip_prefix('<')
                    .and_then(|rest| rest.strip_suffix('>'))
            })
            .flatten()
            .map(str::to_owned);
        let Some(tag) = tag else {
            directives.push(Directive {
                line,
                name,
                args: tokens,
                inline: None,
            });
            continue;
        };
        let close = format!("</{tag}>");
        let mut body = String::new();
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            if inner.trim_start().starts_with(&close) {
                closed = true;
                break;
            }
            body.push_str(inner);
        }
        if !closed {
            errors.push(SyntaxError {
                line,
                reason: format!("inline <{tag}> block has no closing {close}"),
            });
            break;
        }
        directives.push(Directive {
            line,
            name: tag,
            args: Vec::new(),
            inline: Some(body),
        });
    }
    if errors.is_empty() {
        Ok(directives)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<String> {
        split_line(line).unwrap()
    }

    #[test]
    fn tokens_comments_and_quotes_follow_openvpn() {
        assert_eq!(
            split("remote 192.0.2.1 1194 udp"),
            ["remote", "192.0.2.1", "1194", "udp"]
        );
        assert_eq!(split("  # a comment"), Vec::<String>::new());
        assert_eq!(split("; also a comment"), Vec::<String>::new());
        // A comment starts only where a token would.
        assert_eq!(
            split("remote 192.0.2.1 # old server"),
            ["remote", "192.0.2.1"]
        );
        assert_eq!(split("key a#b;c"), ["key", "a#b;c"]);
        assert_eq!(
            split("push \"route 10.1.0.0 255.255.0.0\""),
            ["push", "route 10.1.0.0 255.255.0.0"]
        );
        assert_eq!(
            split("push 'dhcp-option DNS \\x'"),
            ["push", "dhcp-option DNS \\x"]
        );
        assert_eq!(
            split(r#"cert "my \"odd\" name.crt""#),
            ["cert", "my \"odd\" name.crt"]
        );
        assert_eq!(split(r"cert my\ file.crt"), ["cert", "my file.crt"]);
        assert_eq!(split(r"cert c:\\dir\\file"), ["cert", r"c:\dir\file"]);
        // A closing quote ends the token at once, as in OpenVPN.
        assert_eq!(split("a \"b\"c"), ["a", "b", "c"]);
        assert_eq!(split("a \"\""), ["a", ""]);
        assert_eq!(split("tab\tseparated\r"), ["tab", "separated"]);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(split_line("push \"route 10.0.0.0")
            .unwrap_err()
            .contains("closing quotation"));
        assert!(split_line("push 'x")
            .unwrap_err()
            .contains("single quotation"));
        assert!(split_line(r"cert c:\dir")
            .unwrap_err()
            .contains("backslash"));
        let many = format!("x{}", " a".repeat(16));
        assert!(split_line(&many).unwrap_err().contains("at most 16"));
        assert_eq!(
            split_line(&format!("x{}", " a".repeat(15))).unwrap().len(),
            16
        );
    }

    #[test]
    fn directives_with_inline_blocks_and_line_numbers() {
        let text = "\u{feff}--client\n\n<ca>\n-----BEGIN CERTIFICATE-----\nQUJD\n  </ca>\nverb 3 # loud\n<tls-auth>\nkey\n</tls-auth>\nkey-direction 1\n";
        let directives = tokenize(text).unwrap();
        let summary: Vec<(usize, &str, usize, Option<&str>)> = directives
            .iter()
            .map(|d| (d.line, d.name.as_str(), d.args.len(), d.inline.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, "client", 0, None),
                (3, "ca", 0, Some("-----BEGIN CERTIFICATE-----\nQUJD\n")),
                (7, "verb", 1, None),
                (8, "tls-auth", 0, Some("key\n")),
                (11, "key-direction", 1, None),
            ]
        );
    }

    #[test]
    fn every_bad_line_is_reported_and_unclosed_blocks_fail() {
        let errors = tokenize("a \"b\nok 1\nc 'd\n").unwrap_err();
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 3]);
        let errors = tokenize("<key>\nabc\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("</key>"), "{errors:?}");
        // "<>" and a tag with arguments are ordinary (unknown) options, not blocks.
        let directives = tokenize("<> x\n<ca> y\n").unwrap();
        assert_eq!(directives.len(), 2);
        assert!(directives.iter().all(|d| d.inline.is_none()));
    }
}
