//! Callers: tenant names and the digests callers' tokens are looked up by.
use std::{fmt, sync::Arc};

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A tenant's name: `[a-z0-9-]{1,63}`. Cheap to clone (shared); a metric label and a store column.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(Arc<str>);

/// The tenant every caller is when `auth.mode = "none"`, and the owner of jobs created before
/// tenants existed.
pub const DEFAULT_TENANT: &str = "default";

impl TenantName {
    /// Accepts `[a-z0-9-]{1,63}`; `None` otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        let valid = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then(|| Self(Arc::from(s)))
    }

    /// The tenant `"default"`.
    pub fn default_tenant() -> Self {
        Self(Arc::from(DEFAULT_TENANT))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string (a clone of the pointer, no copy).
    pub fn to_shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for TenantName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The SHA-256 of a caller token. Tokens are looked up by digest, so the configured set may hold
/// digests only (`sha256:<hex>`) and no token value is kept in memory longer than needed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// 64 hexadecimal digits, either case.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0_u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            *byte = u8::try_from(high * 16 + low).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but nothing needs to print it either.
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_digits_and_dashes() {
        for good in ["default", "team-a", "a", "0", &"x".repeat(63)] {
            assert!(TenantName::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "Team-a",
            "team_a",
            "team a",
            "é",
            &"x".repeat(64),
            "a/b",
        ] {
            assert!(TenantName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_digest_matches_its_hex_form() {
        // printf %s vq_team_a_token | sha256sum
        let hex = "21f1b1276b1f61edc86f413dedb18174703fb77af02c83cabbbc73eeeb8c1814";
        let parsed = TokenDigest::from_hex(hex).unwrap();
        assert!(TokenDigest::of("vq_team_a_token") == parsed);
        assert!(TokenDigest::of("vq_team_b_token") != parsed);
        assert!(TokenDigest::from_hex(&hex.to_ascii_uppercase()) == Some(parsed));
        assert!(TokenDigest::from_hex(&hex[1..]).is_none());
        assert!(TokenDigest::from_hex(&format!("g{}", &hex[1..])).is_none());
    }
}
