//! Per-client files of a server (OpenVPN `client-config-dir`): one file per certificate common
//! name, in OpenVPN's own syntax so that an existing server's directory works unchanged.
//!
//! Understood directives: `ifconfig-push LOCAL NETMASK|REMOTE`, `iroute NET [MASK]`,
//! `push "OPTION"`, `push-reset` and `disable`; `#`/`;` comments and blank lines. Anything else
//! is an error that names the file, the line and the directive: silently ignoring a line of a
//! security-relevant file (a client's routes, its address) would be worse than refusing it.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::error::describe_io_error;
use super::files::read_small_file;
use super::ConfigError;

use crate::proto::server::ClientConfig;

/// Parses the text of one ccd file; `file` is only used in errors.
pub fn parse_client_config(text: &str, file: &Path) -> Result<ClientConfig, ConfigError> {
    let mut config = ClientConfig::default();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let error = |column: usize, reason: String| ConfigError {
            file: file.to_path_buf(),
            line: line_number,
            column,
            reason,
        };
        let tokens = tokenize(line).map_err(|(column, reason)| error(column, reason))?;
        let Some(first) = tokens.first() else {
            continue;
        };
        let directive = first.text.as_str();
        let arguments: Vec<&str> = tokens.iter().skip(1).map(|t| t.text.as_str()).collect();
        let at = |token: usize| tokens.get(token).map_or(first.column, |t| t.column);
        let wrong_count = |usage: &str| {
            error(
                first.column,
                format!(
                    "`{directive}` takes {usage}, got {} argument(s)",
                    arguments.len()
                ),
            )
        };
        match directive {
            "ifconfig-push" => {
                let [local, second] = arguments.as_slice() else {
                    return Err(wrong_count("2 arguments: LOCAL NETMASK|REMOTE"));
                };
                let local = parse_ipv4(local).map_err(|reason| error(at(1), reason))?;
                let second = parse_ipv4(second).map_err(|reason| error(at(2), reason))?;
                config.ifconfig_push = Some((local, second));
            }
            "iroute" => {
                let (network, mask) = match arguments.as_slice() {
                    [network] => (*network, "255.255.255.255"),
                    [network, mask] => (*network, *mask),
                    _ => return Err(wrong_count("1 or 2 arguments: NETWORK [NETMASK]")),
                };
                let address = parse_ipv4(network).map_err(|reason| error(at(1), reason))?;
                let mask_address = parse_ipv4(mask).map_err(|reason| error(at(2), reason))?;
                let prefix_len = netmask_length(mask_address).ok_or_else(|| {
                    error(at(2), format!("`{mask}` is not a netmask (ones then zeros)"))
                })?;
                let prefix = Ipv4Net::new(address, prefix_len)
                    .map_err(|problem| error(at(1), problem.to_string()))?;
                if prefix.network() != address {
                    return Err(error(
                        at(1),
                        format!(
                            "iroute {address} {mask} has host bits set; did you mean {} {mask}?",
                            prefix.network()
                        ),
                    ));
                }
                if !config.iroutes.contains(&prefix) {
                    config.iroutes.push(prefix);
                }
            }
            "push" => {
                let [option] = arguments.as_slice() else {
                    return Err(wrong_count("1 argument (quote it: push \"route ...\")"));
                };
                let option = option.trim();
                if option.is_empty() || option.contains(',') || option.chars().any(char::is_control)
                {
                    return Err(error(
                        at(1),
                        format!("push option `{option}` is empty or contains ',' or a control character"),
                    ));
                }
                config.push.push(option.to_owned());
            }
            "push-reset" | "disable" => {
                if !arguments.is_empty() {
                    return Err(wrong_count("no arguments"));
                }
                if directive == "disable" {
                    config.disable = true;
                } else {
                    config.push_reset = true;
                }
            }
            other => {
                return Err(error(
                    first.column,
                    format!(
                        "unsupported directive `{other}` in a client config file (understood: ifconfig-push, iroute, push, push-reset, disable)"
                    ),
                ))
            }
        }
    }
    Ok(config)
}

/// Reads the ccd file of `common_name` in `dir`: `Ok(None)` if there is none, or if the name
/// cannot be a file name there (empty, `.`/`..`, containing `/` or NUL: never read outside `dir`).
pub fn read_client_config(
    dir: &Path,
    common_name: &str,
) -> Result<Option<ClientConfig>, ConfigError> {
    let Some(path) = client_config_path(dir, common_name) else {
        return Ok(None);
    };
    match std::fs::metadata(&path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let bytes = read_small_file(&path).map_err(|error| ConfigError {
        file: path.clone(),
        line: 1,
        column: 1,
        reason: format!("cannot read the client config file: {error}"),
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|utf8_error| ConfigError {
        file: path.clone(),
        line: 1,
        column: 1,
        reason: format!(
            "the file is not valid UTF-8 (at byte {})",
            utf8_error.valid_up_to()
        ),
    })?;
    parse_client_config(text, &path).map(Some)
}

/// Parses every file in `dir` (what `check-config` and a reload do, so that a broken file is
/// reported at once rather than when its client connects). Hidden files are skipped.
pub fn check_client_config_dir(dir: &Path) -> Result<usize, ConfigError> {
    let unreadable = |error: std::io::Error| ConfigError {
        file: dir.to_path_buf(),
        line: 1,
        column: 1,
        reason: format!(
            "cannot read the client config directory: {}",
            describe_io_error(&error)
        ),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let is_file = entry
            .file_type()
            .map(|kind| kind.is_file())
            .unwrap_or(false);
        if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
            if !name.starts_with('.') {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    for name in &names {
        read_client_config(dir, name)?;
    }
    Ok(names.len())
}

/// `dir/common_name`, if the name is a plain file name.
fn client_config_path(dir: &Path, common_name: &str) -> Option<PathBuf> {
    let plain = !common_name.is_empty()
        && common_name != "."
        && common_name != ".."
        && !common_name.contains(['/', '\0']);
    plain.then(|| dir.join(common_name))
}

/// One word of a line, with its 1-based column.
struct Token {
    text: String,
    column: usize,
}

/// Splits a line the way OpenVPN's config parser does: whitespace separates words, `"..."` and
/// `'...'` group them (backslash escapes inside double quotes), and a word starting with `#` or
/// `;` starts a comment. Errors carry a 1-based column.
fn tokenize(line: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().enumerate().peekable();
    while let Some(&(index, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' || c == ';' {
            break;
        }
        let column = index + 1;
        let mut text = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '"' | '\'' => {
                    let quote = c;
                    let mut closed = false;
                    while let Some((_, inner)) = chars.next() {
                        if inner == quote {
                            closed = true;
                            break;
                        }
                        if inner == '\\' && quote == '"' {
                            match chars.next() {
                                Some((_, escaped)) => text.push(escaped),
                                None => break,
                            }
                        } else {
                            text.push(inner);
                        }
                    }
                    if !closed {
                        return Err((column, format!("unterminated {quote} quote")));
                    }
                }
                _ => text.push(c),
            }
        }
        tokens.push(Token { text, column });
    }
    Ok(tokens)
}

fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IPv4 address"))
}

/// The prefix length of a contiguous netmask, or `None` if the mask has holes.
fn netmask_length(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}
