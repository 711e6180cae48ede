//! `vpn-daemon import-openvpn`: an existing OpenVPN 2.6 config (server, client or p2p) turned
//! into the equivalent TOML for our schema.
//!
//! Layout: `tokenize` splits the file like OpenVPN does (quotes, comments, inline `<tag>` blocks),
//! `table` says what happens to each option (translated by which function of `read`, ignored
//! with a reason, or refused), `read` puts each directive into the settings, `translate`
//! decides the tunnel from them into a `plan`, `render` writes the TOML text.
//!
//! Semantics follow OpenVPN 2.6: `topology` defaults to `net30`, later options override earlier
//! ones (`remote`, `route` and `push` accumulate), relative paths resolve against `cd DIR` if the
//! file has one, else against the config file's directory (what the systemd units do by
//! starting OpenVPN in that directory).
//!
//! Every problem is collected before anything is printed: the caller gets either the whole TOML
//! or the whole list of problems, each as `FILE:LINE: option: reason`.
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

mod plan;
mod read;
mod render;
mod table;
mod tokenize;
mod translate;

#[cfg(test)]
mod tests;

/// Largest OpenVPN config (or ccd file) read; real ones, even with inline keys, are a few KiB.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Choices the OpenVPN file cannot make: where this appliance meets its networks, names, and
/// where inline keys go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// `--ccd DIR`: the client-config-dir to check and to name in the TOML, instead of the
    /// config's own `client-config-dir` (whose path may only be valid on the old server).
    pub ccd_dir: Option<PathBuf>,
    /// `--write-inline DIR`: write inline `<ca>`, `<cert>`, `<key>`, `<tls-auth>`, `<tls-crypt>`
    /// and `<crl-verify>` blocks to files in DIR (created if missing) and name those files.
    /// Without it an inline block is an error, since the TOML can only name files.
    pub write_inline: Option<PathBuf>,
    /// `--wan IFACE` (default `eth0`, flagged as a placeholder in the output).
    pub wan: Option<String>,
    /// `--lan IFACE`, if the appliance has one.
    pub lan: Option<String>,
    /// `--node NAME` (default: derived from the file name).
    pub node: Option<String>,
    /// `--tunnel NAME` (default: derived from the file name).
    pub tunnel: Option<String>,
}

/// A successful import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The TOML config, starting with a comment block that lists the ignored options.
    pub toml: String,
    /// Files written for inline blocks (with `--write-inline`).
    pub written: Vec<PathBuf>,
}

/// One problem, shown as `FILE:LINE: option: reason` (`FILE: option: reason` when it is about
/// something missing rather than a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The OpenVPN config file (or ccd file) it is about.
    pub file: PathBuf,
    /// 1-based line, if the problem is at one.
    pub line: Option<usize>,
    /// The option (or ccd directive) concerned, if any.
    pub option: Option<String>,
    /// Why it cannot be imported.
    pub reason: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(formatter, ":{line}")?;
        }
        if let Some(option) = &self.option {
            write!(formatter, ": {option}")?;
        }
        write!(formatter, ": {}", self.reason)
    }
}

/// Why an import failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The OpenVPN config could not be read.
    #[error("{}: cannot read: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    /// Options that cannot be imported, every one of them, in file order (one per line).
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Diagnostic>),
    /// An inline block could not be written out.
    #[error("{}: cannot write the inline block: {reason}", path.display())]
    WriteInline { path: PathBuf, reason: String },
    /// The generated TOML fails our own config check (a file it names is missing or not what
    /// it should be, or a translation bug). `error` locates the problem in the generated text.
    #[error("{}: the generated config does not pass check-config: line {} of the output: {}", file.display(), error.line, error.reason)]
    Generated { file: PathBuf, error: ConfigError },
}

fn display_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Imports the OpenVPN config at `path`: reads it, translates it, writes any inline blocks
/// (`options.write_inline`), and checks the result with [`Config::parse`] before returning it.
pub fn import_openvpn(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let text = read_text(path).map_err(|reason| ImportError::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    let plan = translate::translate(&text, path, options).map_err(ImportError::Invalid)?;
    let written = plan.write_inline_files()?;
    let toml = render::render(&plan);
    // The name only shows in errors; every path in the output is absolute.
    let check_path = Path::new("import-openvpn-output.toml");
    Config::parse(&toml, check_path).map_err(|error| ImportError::Generated {
        file: path.to_path_buf(),
        error,
    })?;
    Ok(Imported { toml, written })
}

/// Reads a small UTF-8 text file (OpenVPN configs and ccd files); the error is a short reason.
fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let metadata = std::fs::metadata(path).map_err(|error| describe(&error))?;
    if !metadata.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|error| describe(&error))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("larger than {MAX_CONFIG_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|error| {
        format!(
            "not valid UTF-8 (at byte {})",
            error.utf8_error().valid_up_to()
        )
    })
}

/// An I/O error without the " (os error N)" suffix.
fn describe(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(suffix) if text.ends_with(')') => text[..suffix].to_owned(),
        _ => text,
    }
}
