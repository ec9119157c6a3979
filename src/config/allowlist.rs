//! The webhook target allowlist entries, parsed once here: `webhooks.allowed_cidrs` become
//! [`IpNet`]s and `webhooks.allowed_hosts` become [`AllowedHost`]s, so the SSRF policy built from
//! them has nothing left to refuse.
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Serialize, Serializer};
use url::Host;

/// An `allowed_cidrs` entry: a network (`10.0.0.0/8`, `fd00::/8`) or a bare address, which is a
/// /32 or /128. The host bits must be zero: `10.0.0.1/8` is refused as a likely typo.
pub fn parse_cidr(entry: &str) -> Result<IpNet, &'static str> {
    let entry = entry.trim();
    let (addr, has_prefix) = match entry.split_once('/') {
        Some((addr, _)) => (addr, true),
        None => (entry, false),
    };
    // The standard parser for the address: it refuses forms a reader could take for octal
    // (`010.0.0.0`), which the network parser would read as decimal.
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let net = if has_prefix {
        entry.parse::<IpNet>().map_err(
            |_| "the prefix length is not a number within range (0-32 for IPv4, 0-128 for IPv6)",
        )?
    } else {
        IpNet::from(addr)
    };
    if net.trunc() != net {
        return Err("host bits are set (write the network address, e.g. 10.0.0.0/8)");
    }
    Ok(net)
}

/// An `allowed_hosts` entry: a host name (`hooks.internal`), or `*.suffix` for every subdomain of
/// `suffix` (not `suffix` itself). Stored lower-case, in ASCII (IDNA), without a trailing dot.
/// IP addresses are refused: they belong in `allowed_cidrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    name: String,
    subdomains: bool,
}

// === impl AllowedHost ===

impl AllowedHost {
    /// The host name, or the suffix of a `*.suffix` entry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a `*.suffix` entry (subdomains only).
    pub fn subdomains(&self) -> bool {
        self.subdomains
    }
}

impl FromStr for AllowedHost {
    type Err = &'static str;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        let (subdomains, name) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        if name.is_empty() {
            return Err("empty");
        }
        if name.contains(['/', ':', '@', '*', ' ']) {
            return Err(
                "write a bare host name (`hooks.internal` or `*.internal`), no scheme or port",
            );
        }
        let name = match Host::parse(name).map_err(|_| "not a valid host name")? {
            Host::Domain(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            Host::Ipv4(_) | Host::Ipv6(_) => {
                return Err("an IP address; put it in allowed_cidrs instead");
            }
        };
        if name.is_empty() {
            return Err("empty");
        }
        Ok(Self { name, subdomains })
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

impl Serialize for AllowedHost {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_cidrs_are_refused_with_the_reason() {
        for (entry, reason) in [
            ("", "not an IP address"),
            ("nonsense", "not an IP address"),
            ("localhost/8", "not an IP address"),
            ("010.0.0.0/8", "not an IP address"),
            ("10.0.0.1/8", "host bits are set"),
            ("fd00::1/8", "host bits are set"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/-1", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/8/8", "prefix length"),
            ("fd00::/129", "prefix length"),
            ("10.0.0.0/256", "prefix length"),
        ] {
            let error = parse_cidr(entry).unwrap_err();
            assert!(error.contains(reason), "{entry}: {error}");
        }
    }

    #[test]
    fn cidrs_and_bare_addresses_parse_to_networks() {
        for (entry, canonical) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 10.0.0.0/8 ", "10.0.0.0/8"),
            ("192.168.1.5", "192.168.1.5/32"),
            ("fd00::/8", "fd00::/8"),
            ("::1", "::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
        ] {
            assert_eq!(parse_cidr(entry).unwrap().to_string(), canonical, "{entry}");
        }
        let net = parse_cidr("10.1.0.0/16").unwrap();
        assert!(net.contains(&"10.1.255.255".parse::<IpAddr>().unwrap()));
        assert!(!net.contains(&"10.2.0.0".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn host_entries_are_normalised() {
        let exact: AllowedHost = "Hooks.Internal.".parse().unwrap();
        assert_eq!(
            (exact.name(), exact.subdomains()),
            ("hooks.internal", false)
        );
        assert_eq!(exact.to_string(), "hooks.internal");
        let wildcard: AllowedHost = " *.SVC.cluster.local ".parse().unwrap();
        assert_eq!(
            (wildcard.name(), wildcard.subdomains()),
            ("svc.cluster.local", true)
        );
        assert_eq!(wildcard.to_string(), "*.svc.cluster.local");
        let idna: AllowedHost = "bücher.example".parse().unwrap();
        assert_eq!(idna.name(), "xn--bcher-kva.example");
        assert_eq!(
            "10.0.0.1".parse::<AllowedHost>().unwrap_err(),
            "an IP address; put it in allowed_cidrs instead"
        );
        assert!(
            "hooks.internal:8080"
                .parse::<AllowedHost>()
                .unwrap_err()
                .contains("no scheme or port")
        );
    }
}
