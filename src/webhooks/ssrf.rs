//! The SSRF guard: which webhook targets a delivery may connect to.
//!
//! Two checks, both pure:
//! 1. [`TargetPolicy::check_url`] at submit time (and again before each attempt): the scheme is
//!    `http` or `https`, there is no userinfo, there is a host and a non-zero port, and a literal IP
//!    host is classified. URLs are parsed with the WHATWG parser of the `url` crate (the one reqwest
//!    uses), so odd IPv4 spellings are normalized before classification exactly as the HTTP client
//!    would connect: `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` are all `127.0.0.1`. IPv6
//!    literals with a zone id (`[fe80::1%25eth0]`) are refused. A host name passes (except
//!    `localhost` and `*.localhost`, which RFC 6761 pins to loopback); it is resolved per attempt.
//! 2. [`TargetPolicy::check_resolved`] / [`TargetPolicy::resolve_checked`] before each attempt:
//!    **every** resolved address must be allowed (one private address among public ones refuses
//!    the target), and the caller connects to exactly the addresses returned, never resolving
//!    again, so a DNS answer that changes between the check and the connection (DNS rebinding)
//!    cannot reach a refused address.
//!
//! An address is refused when [`TargetPolicy::classify`] gives it a class, unless an
//! `allowed_cidrs` entry contains it (or the IPv4 address it embeds), or the URL's host name is in
//! `allowed_hosts` (exact match, or `*.suffix` for any subdomain of `suffix`; an allowed host
//! bypasses every class).
//!
//! Refused classes (IANA special-purpose registries; the class names are what
//! [`Refusal::AddressRefused`] reports):
//!
//! | class | IPv4 | IPv6 |
//! | --- | --- | --- |
//! | `unspecified` | `0.0.0.0` | `::` |
//! | `this-network` | `0.0.0.0/8` | |
//! | `loopback` | `127.0.0.0/8` | `::1` |
//! | `private` | `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` | |
//! | `cgnat` | `100.64.0.0/10` (shared address space) | |
//! | `link-local` | `169.254.0.0/16` (incl. the `169.254.169.254` metadata service) | `fe80::/10` |
//! | `unique-local` | | `fc00::/7` (incl. AWS's `fd00:ec2::254`) |
//! | `site-local` | | `fec0::/10` (deprecated) |
//! | `ietf-protocol-assignments` | `192.0.0.0/24` | `2001::/23` (rest of) |
//! | `teredo` | | `2001::/32` |
//! | `documentation` | `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24` | `2001:db8::/32`, `3fff::/20` |
//! | `benchmarking` | `198.18.0.0/15` | `2001:2::/48` |
//! | `6to4-relay` | `192.88.99.0/24` (deprecated anycast) | |
//! | `multicast` | `224.0.0.0/4` | `ff00::/8` |
//! | `broadcast` | `255.255.255.255` | |
//! | `reserved` | `240.0.0.0/4` | everything outside `2000::/3` not listed here |
//! | `discard-only` | | `100::/64` |
//! | `nat64-local-use` | | `64:ff9b:1::/48` |
//!
//! IPv6 addresses that embed an IPv4 address are classified by that IPv4 address: IPv4-mapped
//! `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` and 6to4 `2002::/16`
//! (`2002:7f00:1::` is loopback, `::ffff:10.0.0.1` is private; `64:ff9b::8.8.8.8` is allowed).
//!
//! Ports: any port but 0. Redirects are not this module's business: the delivery client must not
//! follow them (a redirect would bypass both checks).
#[cfg(test)]
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, PoisonError},
};
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::future::BoxFuture;
use ipnet::IpNet;
use url::{Host, Url};

use crate::config::AllowedHost;

/// Why a target was refused. Messages never contain the URL (its query may carry a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the URL is not valid: {0}")]
    Malformed(String),
    #[error("only http and https targets are allowed")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL must not carry a user name or password")]
    Userinfo,
    #[error("the URL's port is not allowed")]
    Port,
    #[error("IPv6 zone ids are not allowed")]
    ZoneId,
    #[error("the host name is refused ({class})")]
    HostRefused { class: &'static str },
    /// The address itself is never shown: it may be an internal one the target's name resolved to.
    #[error("an address of the target is refused ({class})")]
    AddressRefused { addr: IpAddr, class: &'static str },
    #[error("cannot resolve the host: {0}")]
    Unresolvable(String),
}

/// Which webhook targets are allowed beyond the public internet.
#[derive(Debug, Clone, Default)]
pub(crate) struct TargetPolicy {
    allowed_cidrs: Vec<IpNet>,
    /// Lower-case ASCII (IDNA) names without a trailing dot; `*.suffix` entries are kept as
    /// `.suffix`.
    allowed_hosts: Vec<String>,
}

/// A URL that passed [`TargetPolicy::check_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedUrl {
    url: Url,
    host: CheckedHost,
    /// The host as connected to: the lower-case name, or the address (IPv6 without brackets).
    host_text: String,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CheckedHost {
    /// A literal address, already checked.
    Ip(IpAddr),
    /// A host name, to resolve and check per attempt.
    Name(String),
}

// === impl CheckedUrl ===

impl CheckedUrl {
    /// The parsed URL; send to this, not to the text it came from.
    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// The host name, or the literal address (IPv6 without brackets).
    #[cfg(test)]
    pub(crate) fn host(&self) -> &str {
        &self.host_text
    }

    /// The literal address, when the host is one.
    #[cfg(test)]
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self.host {
            CheckedHost::Ip(addr) => Some(addr),
            CheckedHost::Name(_) => None,
        }
    }

    /// The explicit port, or the scheme's default.
    #[cfg(test)]
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

// === impl TargetPolicy ===

impl TargetPolicy {
    /// `allowed_cidrs`: networks (`10.0.0.0/8`, `fd00::/8`, `192.168.1.5/32`) let through although
    /// their class is refused. `allowed_hosts`: host names (`hooks.internal`, `*.svc.cluster.local`)
    /// whose addresses are all let through. Both come parsed and checked from the configuration
    /// ([`crate::config::parse_cidr`], [`AllowedHost`]).
    pub(crate) fn new(allowed_cidrs: &[IpNet], allowed_hosts: &[AllowedHost]) -> Self {
        let allowed_hosts = allowed_hosts
            .iter()
            .map(|host| {
                if host.subdomains() {
                    format!(".{}", host.name())
                } else {
                    host.name().to_owned()
                }
            })
            .collect();
        Self {
            allowed_cidrs: allowed_cidrs.to_vec(),
            allowed_hosts,
        }
    }

    /// The submit-time check; see the module documentation.
    pub(crate) fn check_url(&self, url: &str) -> Result<CheckedUrl, Refusal> {
        let parsed = Url::parse(url).map_err(|error| self.parse_failure(url, error))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refusal::Scheme);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refusal::Userinfo);
        }
        let port = match parsed.port_or_known_default() {
            Some(0) | None => return Err(Refusal::Port),
            Some(port) => port,
        };
        let host = match parsed.host() {
            None => return Err(Refusal::NoHost),
            Some(Host::Ipv4(v4)) => CheckedHost::Ip(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => CheckedHost::Ip(IpAddr::V6(v6)),
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name.is_empty() {
                    return Err(Refusal::NoHost);
                }
                // The WHATWG parser turns every IPv4-looking host into `Host::Ipv4`; this is a
                // second line of defence should a name still read as an address.
                match name.parse::<IpAddr>() {
                    Ok(addr) => CheckedHost::Ip(addr),
                    Err(_) => CheckedHost::Name(name),
                }
            }
        };
        match &host {
            CheckedHost::Ip(addr) => {
                self.check_addr(None, *addr)?;
            }
            CheckedHost::Name(name) => {
                if (name == "localhost" || name.ends_with(".localhost")) && !self.host_allowed(name)
                {
                    return Err(Refusal::HostRefused { class: "loopback" });
                }
            }
        }
        let host_text = match &host {
            CheckedHost::Ip(addr) => addr.to_string(),
            CheckedHost::Name(name) => name.clone(),
        };
        Ok(CheckedUrl {
            url: parsed,
            host,
            host_text,
            port,
        })
    }

    /// The per-attempt check: every address `host` resolved to must be allowed. Returns the
    /// addresses to connect to (all of `addrs`, in order); an empty answer is unresolvable.
    pub(crate) fn check_resolved(
        &self,
        host: &str,
        addrs: &[IpAddr],
    ) -> Result<Vec<IpAddr>, Refusal> {
        if addrs.is_empty() {
            return Err(Refusal::Unresolvable(format!("{host}: no addresses")));
        }
        for addr in addrs {
            self.check_addr(Some(host), *addr)?;
        }
        Ok(addrs.to_vec())
    }

    /// Resolves `url`'s host once with `resolver` and checks every address: what the delivery
    /// client's resolver does for a name (see `webhooks::client`), here for the policy's tests.
    /// A literal address is not resolved.
    #[cfg(test)]
    pub(crate) async fn resolve_checked(
        &self,
        resolver: &dyn Resolve,
        url: &CheckedUrl,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let addrs = match &url.host {
            CheckedHost::Ip(addr) => {
                self.check_addr(None, *addr)?;
                vec![*addr]
            }
            CheckedHost::Name(name) => {
                let addrs = resolver
                    .resolve(name, url.port)
                    .await
                    .map_err(|e| Refusal::Unresolvable(format!("{name}: {e}")))?;
                self.check_resolved(name, &addrs)?
            }
        };
        Ok(addrs
            .into_iter()
            .map(|addr| SocketAddr::new(addr, url.port))
            .collect())
    }

    /// The class an address is refused as by default, or `None` for a public address.
    pub(crate) fn classify(addr: IpAddr) -> Option<&'static str> {
        match addr {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => classify_v6(v6),
        }
    }

    fn check_addr(&self, host: Option<&str>, addr: IpAddr) -> Result<(), Refusal> {
        let Some(class) = Self::classify(addr) else {
            return Ok(());
        };
        if host.is_some_and(|h| self.host_allowed(h)) || self.addr_allowed(addr) {
            return Ok(());
        }
        Err(Refusal::AddressRefused { addr, class })
    }

    fn addr_allowed(&self, addr: IpAddr) -> bool {
        let embedded = match addr {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed_cidrs
            .iter()
            .any(|net| net.contains(&addr) || embedded.is_some_and(|v4| net.contains(&v4)))
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts
            .iter()
            .any(|allowed| match allowed.strip_prefix('.') {
                // `*.example.com`: any subdomain, not the apex.
                Some(_) => host.ends_with(allowed.as_str()) && host.len() > allowed.len(),
                None => host == *allowed,
            })
    }

    /// `Url::parse` failed: refuse a zone id by its address class when it has one, else say why.
    fn parse_failure(&self, url: &str, error: url::ParseError) -> Refusal {
        if error == url::ParseError::EmptyHost {
            return Refusal::NoHost;
        }
        if let Some(addr) = zoned_ipv6(url) {
            return match self.check_addr(None, IpAddr::V6(addr)) {
                Err(refusal) => refusal,
                Ok(()) => Refusal::ZoneId,
            };
        }
        Refusal::Malformed(error.to_string())
    }
}

/// The address of a bracketed IPv6 host with a zone id (`[fe80::1%25eth0]`), if the URL has one.
fn zoned_ipv6(url: &str) -> Option<Ipv6Addr> {
    let start = url.find('[')?;
    let end = start + url[start..].find(']')?;
    let inside = &url[start + 1..end];
    let (addr, _zone) = inside.split_once('%')?;
    addr.parse().ok()
}

fn classify_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = v4.octets();
    let class = match (a, b, c) {
        _ if v4.is_unspecified() => "unspecified",
        (0, _, _) => "this-network",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, _, _) if b & 0xf0 == 16 => "private",
        (100, _, _) if b & 0xc0 == 64 => "cgnat",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "ietf-protocol-assignments",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, _, _) if b & 0xfe == 18 => "benchmarking",
        (192, 88, 99) => "6to4-relay",
        _ if v4.is_broadcast() => "broadcast",
        _ if a & 0xf0 == 224 => "multicast",
        _ if a & 0xf0 == 240 => "reserved",
        _ => return None,
    };
    Some(class)
}

/// The IPv4 address an IPv6 address embeds: IPv4-mapped, IPv4-compatible (not `::`/`::1`),
/// NAT64 well-known prefix, 6to4.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    const NAT64_WELL_KNOWN: u128 = 0x0064_ff9b_0000_0000_0000_0000;
    let bits = u128::from(v6);
    let prefix_96 = bits >> 32;
    if prefix_96 == 0xffff || prefix_96 == NAT64_WELL_KNOWN || (prefix_96 == 0 && bits > 1) {
        return u32::try_from(bits & 0xffff_ffff).ok().map(Ipv4Addr::from);
    }
    if bits >> 112 == 0x2002 {
        return u32::try_from((bits >> 80) & 0xffff_ffff)
            .ok()
            .map(Ipv4Addr::from);
    }
    None
}

fn classify_v6(v6: Ipv6Addr) -> Option<&'static str> {
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    if v6.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = embedded_v4(v6) {
        return classify_v4(v4);
    }
    let bits = u128::from(v6);
    let within = |prefix: u128, len: u32| {
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        bits & mask == prefix
    };
    let class = if within(0xff00 << 112, 8) {
        "multicast"
    } else if within(0xfe80 << 112, 10) {
        "link-local"
    } else if within(0xfec0 << 112, 10) {
        "site-local"
    } else if within(0xfc00 << 112, 7) {
        "unique-local"
    } else if within((0x0064 << 112) | (0xff9b << 96) | (0x0001 << 80), 48) {
        "nat64-local-use"
    } else if within(0x0100 << 112, 64) {
        "discard-only"
    } else if within((0x2001 << 112) | (0x0db8 << 96), 32) || within(0x3fff << 112, 20) {
        "documentation"
    } else if within((0x2001 << 112) | (0x0002 << 96), 48) {
        "benchmarking"
    } else if within(0x2001 << 112, 32) {
        "teredo"
    } else if within(0x2001 << 112, 23) {
        "ietf-protocol-assignments"
    } else if !within(0x2000 << 112, 3) {
        "reserved"
    } else {
        return None;
    };
    Some(class)
}

/// Name resolution, abstracted so tests can script the answers.
pub(crate) trait Resolve: Send + Sync {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<IpAddr>>>;
}

/// The system resolver (`getaddrinfo` through `tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// Scripted answers for tests. Each host has a list of answers; every lookup takes the next one
/// and the last one repeats, so an answer that changes between lookups (DNS rebinding) is
/// `with_answers(host, [first, second])`. Unknown hosts fail with `NotFound`.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct StaticResolver {
    hosts: Mutex<HashMap<String, Answers>>,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct Answers {
    answers: Vec<Vec<IpAddr>>,
    lookups: usize,
}

// === impl StaticResolver ===

#[cfg(test)]
impl StaticResolver {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// `host` always resolves to `addrs`.
    #[must_use]
    pub(crate) fn with(self, host: &str, addrs: &[IpAddr]) -> Self {
        self.with_answers(host, vec![addrs.to_vec()])
    }

    /// `host` resolves to each answer in turn, then keeps giving the last.
    #[must_use]
    pub(crate) fn with_answers(self, host: &str, answers: Vec<Vec<IpAddr>>) -> Self {
        self.lock().insert(
            host.to_ascii_lowercase(),
            Answers {
                answers,
                lookups: 0,
            },
        );
        self
    }

    /// How many times `host` was looked up.
    pub(crate) fn lookups(&self, host: &str) -> usize {
        self.lock()
            .get(&host.to_ascii_lowercase())
            .map_or(0, |a| a.lookups)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Answers>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
impl Resolve for StaticResolver {
    fn resolve(&self, host: &str, _port: u16) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        let answer = self
            .lock()
            .get_mut(&host.to_ascii_lowercase())
            .map(|entry| {
                let index = entry.lookups.min(entry.answers.len().saturating_sub(1));
                entry.lookups += 1;
                entry.answers.get(index).cloned().unwrap_or_default()
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"));
        Box::pin(std::future::ready(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A policy from configuration text, parsed as the configuration parses it.
    fn policy(cidrs: &[&str], hosts: &[&str]) -> TargetPolicy {
        let cidrs = cidrs
            .iter()
            .map(|c| crate::config::parse_cidr(c).unwrap())
            .collect::<Vec<_>>();
        let hosts = hosts
            .iter()
            .map(|h| h.parse::<AllowedHost>().unwrap())
            .collect::<Vec<_>>();
        TargetPolicy::new(&cidrs, &hosts)
    }

    fn refused(addr: &str, class: &'static str) -> Result<(), Refusal> {
        Err(Refusal::AddressRefused {
            addr: ip(addr),
            class,
        })
    }

    fn assert_classified(table: &[(&str, Option<&str>)]) {
        let mut failures = Vec::new();
        for (addr, expected) in table {
            let got = TargetPolicy::classify(ip(addr));
            if got != *expected {
                failures.push(format!("{addr}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Every refused IPv4 class with its edges, and the public neighbours of each range.
    #[test]
    fn classify_v4_table() {
        assert_classified(&[
            ("0.0.0.0", Some("unspecified")),
            ("0.0.0.1", Some("this-network")),
            ("0.255.255.255", Some("this-network")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.0.0.0", Some("private")),
            ("10.255.255.255", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.0.1", Some("private")),
            ("192.168.255.255", Some("private")),
            ("100.64.0.1", Some("cgnat")),
            ("100.100.100.200", Some("cgnat")),
            ("100.127.255.255", Some("cgnat")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.0.1", Some("link-local")),
            ("192.0.0.1", Some("ietf-protocol-assignments")),
            ("192.0.0.170", Some("ietf-protocol-assignments")),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.255", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("192.88.99.1", Some("6to4-relay")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("255.255.255.255", Some("broadcast")),
            // IPv4 public, including the neighbours of every refused range
            ("8.8.8.8", None),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("11.0.0.0", None),
            ("126.255.255.255", None),
            ("128.0.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.169.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("169.253.255.255", None),
            ("169.255.0.0", None),
            ("192.0.1.255", None),
            ("192.0.3.0", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("198.51.99.255", None),
            ("203.0.112.255", None),
            ("192.88.98.255", None),
            ("223.255.255.255", None),
        ]);
    }

    /// Every refused IPv6 class, IPv6 embedding IPv4, and public neighbours.
    #[test]
    fn classify_v6_table() {
        assert_classified(&[
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("febf:ffff::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("fc00::1", Some("unique-local")),
            ("fd00:ec2::254", Some("unique-local")),
            ("fdff:ffff::1", Some("unique-local")),
            ("ff02::1", Some("multicast")),
            ("ff0e::101", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("2001:db8:ffff::1", Some("documentation")),
            ("3fff::1", Some("documentation")),
            ("3fff:fff::1", Some("documentation")),
            ("2001:2::1", Some("benchmarking")),
            ("2001::1", Some("teredo")),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some("teredo")),
            ("2001:100::1", Some("ietf-protocol-assignments")),
            ("2001:1ff::1", Some("ietf-protocol-assignments")),
            ("100::1", Some("discard-only")),
            ("64:ff9b:1::1", Some("nat64-local-use")),
            ("4000::1", Some("reserved")),
            ("5f00::1", Some("reserved")),
            ("1::1", Some("reserved")),
            ("::ffff:0:7f00:1", Some("reserved")),
            // IPv6 embedding IPv4: classified by the IPv4 address
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:7f00:1", Some("loopback")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:0.0.0.0", Some("unspecified")),
            ("::ffff:100.64.0.1", Some("cgnat")),
            ("::127.0.0.1", Some("loopback")),
            ("::10.0.0.1", Some("private")),
            ("::2", Some("this-network")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::169.254.169.254", Some("link-local")),
            ("64:ff9b::192.168.1.1", Some("private")),
            ("2002:7f00:1::", Some("loopback")),
            ("2002:a00:1::1", Some("private")),
            ("2002:a9fe:a9fe::1", Some("link-local")),
            ("2002:c0a8:101:1::1", Some("private")),
            // IPv6 public
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("2001:200::1", None),
            ("2001:db7:ffff::1", None),
            ("2001:db9::1", None),
            ("3fff:1000::1", None),
            ("2001:3:0:0::1", Some("ietf-protocol-assignments")),
            ("::ffff:8.8.8.8", None),
            ("::8.8.8.8", None),
            ("64:ff9b::8.8.8.8", None),
            ("2002:808:808::1", None),
        ]);
    }

    /// Literal hosts, however spelled, are normalized before classification.
    #[test]
    fn literal_hosts_in_odd_encodings_are_refused() {
        let p = TargetPolicy::default();
        let table: &[(&str, &str, &str)] = &[
            ("http://127.0.0.1/", "127.0.0.1", "loopback"),
            ("http://2130706433/", "127.0.0.1", "loopback"),
            ("http://0x7f000001/", "127.0.0.1", "loopback"),
            ("http://0X7F000001/", "127.0.0.1", "loopback"),
            ("http://017700000001/", "127.0.0.1", "loopback"),
            ("http://0177.0.0.1/", "127.0.0.1", "loopback"),
            ("http://0x7f.0.0.1/", "127.0.0.1", "loopback"),
            ("http://127.1/", "127.0.0.1", "loopback"),
            ("http://0x7f.1/", "127.0.0.1", "loopback"),
            ("http://127.0.1/", "127.0.0.1", "loopback"),
            ("http://127.0.0.1./", "127.0.0.1", "loopback"),
            ("http://%31%32%37.0.0.1/", "127.0.0.1", "loopback"),
            ("http://１２７.０.０.１/", "127.0.0.1", "loopback"),
            ("http://0/", "0.0.0.0", "unspecified"),
            ("http://0.0.0.0:8080/", "0.0.0.0", "unspecified"),
            ("http://0x0a.0.0.1/", "10.0.0.1", "private"),
            ("http://167772161/", "10.0.0.1", "private"),
            ("https://10.0.0.1:8443/hook?token=x", "10.0.0.1", "private"),
            (
                "http://169.254.43518/latest/meta-data/",
                "169.254.169.254",
                "link-local",
            ),
            ("http://0xa9fea9fe/", "169.254.169.254", "link-local"),
            (
                "http://0251.0376.0251.0376/",
                "169.254.169.254",
                "link-local",
            ),
            ("http://100.64.0.1/", "100.64.0.1", "cgnat"),
            ("http://224.0.0.1/", "224.0.0.1", "multicast"),
            ("http://255.255.255.255/", "255.255.255.255", "broadcast"),
            ("http://192.0.2.1/", "192.0.2.1", "documentation"),
            ("http://[::1]/", "::1", "loopback"),
            ("http://[0:0:0:0:0:0:0:1]:8080/", "::1", "loopback"),
            ("http://[::]/", "::", "unspecified"),
            ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", "loopback"),
            ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1", "loopback"),
            (
                "http://[0:0:0:0:0:ffff:127.0.0.1]/",
                "::ffff:127.0.0.1",
                "loopback",
            ),
            (
                "http://[::ffff:a9fe:a9fe]/",
                "::ffff:169.254.169.254",
                "link-local",
            ),
            ("http://[::127.0.0.1]/", "::127.0.0.1", "loopback"),
            (
                "http://[64:ff9b::127.0.0.1]/",
                "64:ff9b::7f00:1",
                "loopback",
            ),
            ("http://[2002:7f00:1::]/", "2002:7f00:1::", "loopback"),
            ("http://[fe80::1]/", "fe80::1", "link-local"),
            ("http://[FD00:EC2::254]/", "fd00:ec2::254", "unique-local"),
            ("http://[fe80::1%25eth0]/", "fe80::1", "link-local"),
            ("http://[fe80::1%eth0]/", "fe80::1", "link-local"),
            ("http://[ff02::1]/", "ff02::1", "multicast"),
            ("http://[2001:db8::1]/", "2001:db8::1", "documentation"),
        ];
        let mut failures = Vec::new();
        for (url, addr, class) in table {
            let got = p.check_url(url).map(|_| ());
            if got != refused(addr, class) {
                failures.push(format!("{url}: expected {addr} ({class}), got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn public_literals_and_host_names_pass_the_submit_check() {
        let p = TargetPolicy::default();
        let ok = p.check_url("https://8.8.8.8/hook").unwrap();
        assert_eq!(ok.ip(), Some(ip("8.8.8.8")));
        assert_eq!(ok.port(), 443);
        let ok = p.check_url("http://[2606:4700:4700::1111]:8080/").unwrap();
        assert_eq!(ok.host(), "2606:4700:4700::1111");
        assert_eq!(ok.port(), 8080);
        assert!(p.check_url("http://[::ffff:8.8.8.8]/").is_ok());
        // Names are resolved per attempt, even when they look internal.
        for url in [
            "https://hooks.example.com/x?token=1",
            "http://Hooks.Example.COM./",
            "http://127.0.0.1.nip.io/",
            "http://metadata.google.internal/",
            "https://bücher.example/",
        ] {
            let checked = p.check_url(url).unwrap();
            assert!(checked.ip().is_none(), "{url}");
        }
        // `\` is `/` in special URLs (as for the HTTP client, which uses the same parser).
        let checked = p.check_url("http://example.com\\@127.0.0.1/").unwrap();
        assert_eq!(checked.host(), "example.com");
        let checked = p.check_url("http://Hooks.Example.COM./p").unwrap();
        assert_eq!(checked.host(), "hooks.example.com");
        assert_eq!(checked.port(), 80);
        assert_eq!(
            p.check_url("https://bücher.example/").unwrap().host(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn zone_ids_on_public_addresses_are_refused_too() {
        let p = TargetPolicy::default();
        assert_eq!(
            p.check_url("http://[2606:4700::1%25eth0]/"),
            Err(Refusal::ZoneId)
        );
        // Even an allowed link-local address: a scoped address cannot be pinned.
        let p = policy(&["fe80::/10"], &[]);
        assert_eq!(
            p.check_url("http://[fe80::1%25eth0]/"),
            Err(Refusal::ZoneId)
        );
    }

    #[test]
    fn localhost_names_are_refused_unless_allowed() {
        let p = TargetPolicy::default();
        for url in [
            "http://localhost/",
            "http://LOCALHOST:8080/",
            "http://localhost./",
            "http://api.localhost/",
        ] {
            assert_eq!(
                p.check_url(url),
                Err(Refusal::HostRefused { class: "loopback" }),
                "{url}"
            );
        }
        assert!(p.check_url("http://localhost.example.com/").is_ok());
        assert!(
            policy(&[], &["localhost"])
                .check_url("http://localhost:9000/")
                .is_ok()
        );
    }

    #[test]
    fn bad_schemes_are_refused() {
        let p = TargetPolicy::default();
        for url in [
            "file:///etc/passwd",
            "file://localhost/etc/passwd",
            "gopher://127.0.0.1:70/_GET",
            "gopher://example.com/",
            "ftp://example.com/",
            "ws://example.com/",
            "wss://example.com/",
            "dict://example.com:11211/",
            "ldap://example.com/",
            "javascript:alert(1)",
            "data:text/plain,hi",
            "mailto:a@example.com",
            "httpx://example.com/",
        ] {
            assert_eq!(p.check_url(url), Err(Refusal::Scheme), "{url}");
        }
    }

    #[test]
    fn userinfo_is_refused() {
        let p = TargetPolicy::default();
        for url in [
            "http://user@example.com/",
            "http://user:pass@example.com/",
            "http://:pass@example.com/",
            "https://example.com@127.0.0.1/",
            "http://a%40b@example.com/",
        ] {
            assert_eq!(p.check_url(url), Err(Refusal::Userinfo), "{url}");
        }
        // The refusal never echoes the URL (a password or token would end up in logs).
        let message = p
            .check_url("http://user:s3cr3t@example.com/")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn missing_hosts_ports_and_malformed_urls_are_refused() {
        let p = TargetPolicy::default();
        for url in [
            "http://",
            "http:///",
            "https://?x=1",
            "http://:80/",
            "http://#f",
        ] {
            assert_eq!(p.check_url(url), Err(Refusal::NoHost), "{url}");
        }
        assert_eq!(p.check_url("http://example.com:0/"), Err(Refusal::Port));
        assert_eq!(p.check_url("http://8.8.8.8:0/"), Err(Refusal::Port));
        for url in [
            "",
            "not a url",
            "example.com/hook",
            "http://exa mple.com/",
            "http://[::1/",
            "http://example.com:99999/",
            "http://1.2.3.4.5/",
            "http://0x100000000/",
        ] {
            assert!(
                matches!(p.check_url(url), Err(Refusal::Malformed(_))),
                "{url}: {:?}",
                p.check_url(url)
            );
        }
        let message = p
            .check_url("http://exa mple.com/?token=s3cr3t")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn allowed_cidrs_let_exactly_their_range_through() {
        let p = policy(
            &["10.1.0.0/16", "169.254.169.254/32", "fd00:1234::/32"],
            &[],
        );
        for (addr, expected) in [
            ("10.1.0.0", Ok(())),
            ("10.1.2.3", Ok(())),
            ("10.1.255.255", Ok(())),
            ("10.0.255.255", refused("10.0.255.255", "private")),
            ("10.2.0.0", refused("10.2.0.0", "private")),
            ("10.255.255.255", refused("10.255.255.255", "private")),
            ("169.254.169.254", Ok(())),
            ("169.254.169.253", refused("169.254.169.253", "link-local")),
            ("127.0.0.1", refused("127.0.0.1", "loopback")),
            ("192.168.1.1", refused("192.168.1.1", "private")),
            // The embedded IPv4 address counts.
            ("::ffff:10.1.2.3", Ok(())),
            ("::ffff:10.2.2.3", refused("::ffff:10.2.2.3", "private")),
            ("64:ff9b::10.1.0.1", Ok(())),
            ("fd00:1234::5", Ok(())),
            ("fd00:1234:ffff::5", Ok(())),
            ("fd00:1235::1", refused("fd00:1235::1", "unique-local")),
            (
                "fd00:1233:ffff::1",
                refused("fd00:1233:ffff::1", "unique-local"),
            ),
            ("8.8.8.8", Ok(())),
        ] {
            let url = match ip(addr) {
                IpAddr::V4(_) => format!("http://{addr}/"),
                IpAddr::V6(_) => format!("http://[{addr}]/"),
            };
            assert_eq!(p.check_url(&url).map(|_| ()), expected, "{url}");
            assert_eq!(
                p.check_resolved("h.example", &[ip(addr)]).map(|_| ()),
                expected,
                "{addr}"
            );
        }
        let wide = policy(&["10.0.0.0/8"], &[]);
        assert!(wide.check_url("http://10.200.3.4/").is_ok());
        assert_eq!(
            wide.check_url("http://172.16.0.1/").map(|_| ()),
            refused("172.16.0.1", "private")
        );
        let everything = policy(&["0.0.0.0/0", "::/0"], &[]);
        assert!(everything.check_url("http://127.0.0.1/").is_ok());
        assert!(everything.check_url("http://[::1]/").is_ok());
    }

    #[test]
    /// The entries a policy is built from are checked where the configuration is parsed.
    fn bad_allowlist_entries_are_rejected() {
        for cidr in [
            "",
            "nonsense",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "fd00::/129",
            "fd00::1/8",
            "10.0.0.0/256",
            "localhost/8",
        ] {
            let parsed = crate::config::parse_cidr(cidr);
            assert!(parsed.is_err(), "{cidr}: {parsed:?}");
        }
        for host in [
            "",
            "*.",
            "*",
            "http://hooks.internal",
            "hooks.internal:8080",
            "hooks.internal/path",
            "user@hooks.internal",
            "a*b.internal",
            "10.0.0.1",
            "[::1]",
            "2130706433",
        ] {
            let parsed = host.parse::<AllowedHost>();
            assert!(parsed.is_err(), "{host}: {parsed:?}");
        }
        let ok = policy(
            &["10.0.0.0/8", "192.168.1.5", "fd00::/8", "::1"],
            &["Hooks.Internal.", "*.svc.cluster.local"],
        );
        assert!(ok.check_url("http://10.1.2.3/").is_ok());
        assert!(ok.check_url("http://192.168.1.5/").is_ok());
        assert_eq!(
            ok.check_url("http://192.168.1.6/").map(|_| ()),
            refused("192.168.1.6", "private")
        );
        assert!(ok.check_url("http://[::1]/").is_ok());
        assert_eq!(
            crate::config::parse_cidr("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            crate::config::parse_cidr("192.168.1.5")
                .unwrap()
                .to_string(),
            "192.168.1.5/32"
        );
    }

    #[test]
    fn allowed_hosts_match_exactly_or_as_subdomains() {
        let p = policy(&[], &["Hooks.Internal.", "*.svc.cluster.local"]);
        let private = [ip("10.0.0.5"), ip("127.0.0.1")];
        for host in [
            "hooks.internal",
            "HOOKS.internal.",
            "a.svc.cluster.local",
            "a.b.svc.cluster.local",
        ] {
            assert_eq!(
                p.check_resolved(host, &private),
                Ok(private.to_vec()),
                "{host}"
            );
        }
        for host in [
            "other.internal",
            "hooks.internal.evil.com",
            "xhooks.internal",
            "svc.cluster.local",
            "evilsvc.cluster.local",
        ] {
            assert_eq!(
                p.check_resolved(host, &private).map(|_| ()),
                refused("10.0.0.5", "private"),
                "{host}"
            );
        }
        // A host name does not allow a literal address.
        assert_eq!(
            p.check_url("http://10.0.0.5/").map(|_| ()),
            refused("10.0.0.5", "private")
        );
    }

    #[test]
    fn every_resolved_address_is_checked() {
        let p = TargetPolicy::default();
        let public = ip("93.184.216.34");
        for addrs in [
            vec![public, ip("10.0.0.1")],
            vec![ip("10.0.0.1"), public],
            vec![public, ip("2606:4700::1"), ip("::ffff:127.0.0.1")],
        ] {
            let bad = *addrs
                .iter()
                .find(|a| TargetPolicy::classify(**a).is_some())
                .unwrap();
            let got = p.check_resolved("mixed.example", &addrs);
            assert!(
                matches!(got, Err(Refusal::AddressRefused { addr, .. }) if addr == bad),
                "{addrs:?}: {got:?}"
            );
        }
        let all_public = [public, ip("2606:4700::1")];
        assert_eq!(
            p.check_resolved("ok.example", &all_public),
            Ok(all_public.to_vec())
        );
        assert!(matches!(
            p.check_resolved("empty.example", &[]),
            Err(Refusal::Unresolvable(_))
        ));
    }

    #[tokio::test]
    async fn resolve_checked_refuses_a_name_with_one_private_address() {
        let p = TargetPolicy::default();
        let resolver =
            StaticResolver::new().with("mixed.example", &[ip("93.184.216.34"), ip("192.168.0.10")]);
        let url = p.check_url("https://mixed.example/hook").unwrap();
        assert_eq!(
            p.resolve_checked(&resolver, &url).await,
            Err(Refusal::AddressRefused {
                addr: ip("192.168.0.10"),
                class: "private"
            })
        );
    }

    #[tokio::test]
    async fn resolve_checked_returns_the_socket_addresses_to_pin() {
        let p = TargetPolicy::default();
        let resolver = StaticResolver::new().with(
            "ok.example",
            &[ip("93.184.216.34"), ip("2606:2800:220:1::1")],
        );
        let url = p.check_url("https://OK.example:8443/hook").unwrap();
        assert_eq!(
            p.resolve_checked(&resolver, &url).await.unwrap(),
            vec![
                "93.184.216.34:8443".parse::<SocketAddr>().unwrap(),
                "[2606:2800:220:1::1]:8443".parse().unwrap()
            ]
        );
        let url = p.check_url("http://ok.example/").unwrap();
        assert!(
            p.resolve_checked(&resolver, &url)
                .await
                .unwrap()
                .iter()
                .all(|a| a.port() == 80)
        );
        assert_eq!(resolver.lookups("ok.example"), 2);
    }

    #[tokio::test]
    async fn dns_rebinding_is_caught_on_the_next_attempt() {
        let p = TargetPolicy::default();
        let resolver = StaticResolver::new().with_answers(
            "rebind.example",
            vec![vec![ip("93.184.216.34")], vec![ip("127.0.0.1")]],
        );
        // Submit time: a name passes.
        let url = p.check_url("http://rebind.example/").unwrap();
        // First attempt: public, and these are the only addresses the client may use.
        assert_eq!(
            p.resolve_checked(&resolver, &url).await,
            Ok(vec!["93.184.216.34:80".parse().unwrap()])
        );
        // The answer changes: the next attempt refuses instead of connecting.
        assert_eq!(
            p.resolve_checked(&resolver, &url).await,
            refused("127.0.0.1", "loopback").map(|()| Vec::new())
        );
        assert_eq!(resolver.lookups("rebind.example"), 2);
        // Allowing the host lets the same answer through.
        let allowing = policy(&[], &["rebind.example"]);
        assert!(allowing.resolve_checked(&resolver, &url).await.is_ok());
    }

    #[tokio::test]
    async fn literals_are_not_resolved_and_failures_are_unresolvable() {
        let p = TargetPolicy::default();
        let resolver = StaticResolver::new().with("empty.example", &[]);
        let url = p.check_url("https://8.8.8.8:8443/").unwrap();
        assert_eq!(
            p.resolve_checked(&resolver, &url).await,
            Ok(vec!["8.8.8.8:8443".parse().unwrap()])
        );
        let url = p.check_url("https://unknown.example/").unwrap();
        assert!(matches!(
            p.resolve_checked(&resolver, &url).await,
            Err(Refusal::Unresolvable(_))
        ));
        let url = p.check_url("https://empty.example/").unwrap();
        assert!(matches!(
            p.resolve_checked(&resolver, &url).await,
            Err(Refusal::Unresolvable(_))
        ));
    }

    #[tokio::test]
    async fn the_system_resolver_answers_and_its_answer_is_checked() {
        let addrs = SystemResolver.resolve("127.0.0.1", 80).await.unwrap();
        assert_eq!(addrs, vec![ip("127.0.0.1")]);
        let p = TargetPolicy::default();
        let url = p.check_url("http://127.0.0.1.invalid/").unwrap();
        assert!(matches!(
            p.resolve_checked(&SystemResolver, &url).await,
            Err(Refusal::Unresolvable(_))
        ));
    }
}
