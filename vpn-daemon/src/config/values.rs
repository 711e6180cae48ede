//! Checks for single values (names, interface names, addresses, prefixes). Pure functions, so the
//! rules are easy to test on their own; `validate` adds where the value was written.
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// Longest Linux interface name, in bytes (IFNAMSIZ - 1 for the terminating NUL).
pub(super) const IFNAME_MAX_BYTES: usize = 15;

/// Why a node or tunnel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NameError {
    #[error("{what} `{name}` is {length} characters; the limit is {max}")]
    TooLong {
        what: &'static str,
        name: String,
        length: usize,
        max: usize,
    },
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error(
        "{what} `{name}` contains {found:?}; only lowercase letters, digits and '-' are allowed"
    )]
    BadCharacter {
        what: &'static str,
        name: String,
        found: char,
    },
    #[error("{what} `{name}` must start with a lowercase letter")]
    BadStart { what: &'static str, name: String },
}

/// Node and tunnel names end up in paths (/sys/fs/bpf/<node>/) and interface names, hence the
/// small alphabet.
pub(super) fn check_name(
    what: &'static str,
    name: &str,
    max: usize,
    must_start_with_letter: bool,
) -> Result<(), NameError> {
    let length = name.chars().count();
    if length == 0 {
        return Err(NameError::Empty { what });
    }
    if length > max {
        return Err(NameError::TooLong {
            what,
            name: name.to_owned(),
            length,
            max,
        });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadCharacter {
            what,
            name: name.to_owned(),
            found,
        });
    }
    if must_start_with_letter && !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::BadStart {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Why an interface name is not one Linux would accept (see `dev_valid_name` in the kernel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum IfnameError {
    #[error("interface name is empty")]
    Empty,
    #[error("interface name `{name}` is {length} bytes; Linux allows at most {IFNAME_MAX_BYTES}")]
    TooLong { name: String, length: usize },
    #[error(
        "interface name `{name}` contains {found:?}; '/', ':', whitespace and NUL are not allowed"
    )]
    BadCharacter { name: String, found: char },
    #[error("interface name cannot be `{name}`")]
    Dots { name: String },
}

pub(super) fn check_ifname(name: &str) -> Result<(), IfnameError> {
    if name.is_empty() {
        return Err(IfnameError::Empty);
    }
    if name.len() > IFNAME_MAX_BYTES {
        return Err(IfnameError::TooLong {
            name: name.to_owned(),
            length: name.len(),
        });
    }
    if let Some(found) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(IfnameError::BadCharacter {
            name: name.to_owned(),
            found,
        });
    }
    if name == "." || name == ".." {
        return Err(IfnameError::Dots {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Why an `IP:PORT` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AddressError {
    #[error("`{given}` has no port; write it as \"{suggestion}\"")]
    MissingPort { given: String, suggestion: String },
    #[error(
        "`{given}` is a hostname; schema v1 needs an IP address (IP:PORT, e.g. \"192.0.2.1:1194\")"
    )]
    Hostname { given: String },
    #[error("`{given}` is not a valid IP:PORT address (e.g. \"192.0.2.1:1194\" or \"[2001:db8::1]:1194\")")]
    Invalid { given: String },
}

/// Parses `IP:PORT` (IPv6 as `[IP]:PORT`), telling apart the usual mistakes.
pub(super) fn parse_socket_addr(given: &str) -> Result<SocketAddr, AddressError> {
    if let Ok(address) = SocketAddr::from_str(given) {
        return Ok(address);
    }
    if let Ok(ip) = IpAddr::from_str(given) {
        let suggestion = SocketAddr::new(ip, 1194).to_string();
        return Err(AddressError::MissingPort {
            given: given.to_owned(),
            suggestion,
        });
    }
    let host = match given.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        Some(_) => "",
        None => given,
    };
    if looks_like_hostname(host) {
        return Err(AddressError::Hostname {
            given: given.to_owned(),
        });
    }
    Err(AddressError::Invalid {
        given: given.to_owned(),
    })
}

/// A DNS name has at least one letter, otherwise "1.2.3" would be called a hostname.
fn looks_like_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.chars().any(|c| c.is_ascii_alphabetic())
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        && !host.starts_with(['-', '.'])
}

/// Why an `ADDRESS/LENGTH` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PrefixError {
    #[error("`{given}` has host bits set; did you mean \"{meant}\"?")]
    HostBitsSet { given: String, meant: IpNet },
    #[error("`{given}` has no prefix length; write \"{single_host}\" for a single host")]
    MissingLength { given: String, single_host: IpNet },
    #[error("`{given}` is not a valid prefix (ADDRESS/LENGTH, e.g. \"10.2.0.0/16\")")]
    Invalid { given: String },
}

/// Parses `ADDRESS/LENGTH` and insists the host bits are clear: "10.2.0.1/16" is almost always a
/// typo for "10.2.0.0/16" or an address pasted where a network was meant.
pub(super) fn parse_prefix(given: &str) -> Result<IpNet, PrefixError> {
    match IpNet::from_str(given) {
        Ok(prefix) if prefix.trunc() == prefix => Ok(prefix),
        Ok(prefix) => Err(PrefixError::HostBitsSet {
            given: given.to_owned(),
            meant: prefix.trunc(),
        }),
        Err(_) => match IpAddr::from_str(given) {
            Ok(ip) => Err(PrefixError::MissingLength {
                given: given.to_owned(),
                single_host: IpNet::from(ip),
            }),
            Err(_) => Err(PrefixError::Invalid {
                given: given.to_owned(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("node name", "site-a", 15, true).is_ok());
        assert!(matches!(
            check_name("node name", "Site", 15, true),
            Err(NameError::BadCharacter { found: 'S', .. })
        ));
        assert!(matches!(
            check_name("node name", "1site", 15, true),
            Err(NameError::BadStart { .. })
        ));
        assert!(check_name("tunnel name", "1site", 32, false).is_ok());
        assert!(matches!(
            check_name("node name", "abcdefghijklmnop", 15, true),
            Err(NameError::TooLong { length: 16, .. })
        ));
        assert_eq!(
            check_name("node name", "", 15, true),
            Err(NameError::Empty { what: "node name" })
        );
    }

    #[test]
    fn interface_names() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("enp0s31f6.100").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        for bad in ["", ".", "..", "a/b", "a b", "eth0:1", "a\0"] {
            assert!(check_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket_addr("[::]:1194").unwrap(),
            "[::]:1194".parse::<SocketAddr>().unwrap()
        );
        assert!(matches!(
            parse_socket_addr("192.0.2.1"),
            Err(AddressError::MissingPort { suggestion, .. }) if suggestion == "192.0.2.1:1194"
        ));
        assert!(matches!(
            parse_socket_addr("2001:db8::1"),
            Err(AddressError::MissingPort { suggestion, .. }) if suggestion == "[2001:db8::1]:1194"
        ));
        assert!(matches!(
            parse_socket_addr("vpn.example.com:1194"),
            Err(AddressError::Hostname { .. })
        ));
        assert!(matches!(
            parse_socket_addr("vpn.example.com"),
            Err(AddressError::Hostname { .. })
        ));
        assert!(matches!(
            parse_socket_addr("1.2.3:99"),
            Err(AddressError::Invalid { .. })
        ));
        assert!(matches!(
            parse_socket_addr("192.0.2.1:99999"),
            Err(AddressError::Invalid { .. })
        ));
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("10.2.0.0/16").unwrap(),
            "10.2.0.0/16".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_prefix("10.2.0.1/16").unwrap_err().to_string(),
            "`10.2.0.1/16` has host bits set; did you mean \"10.2.0.0/16\"?"
        );
        assert_eq!(
            parse_prefix("10.2.0.1").unwrap_err().to_string(),
            "`10.2.0.1` has no prefix length; write \"10.2.0.1/32\" for a single host"
        );
        assert!(matches!(
            parse_prefix("10.2.0.0/33"),
            Err(PrefixError::Invalid { .. })
        ));
    }
}
