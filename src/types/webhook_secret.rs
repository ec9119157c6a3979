//! The text form of a webhook signing secret (Standard Webhooks): `whsec_` + standard base64 of
//! the key. The key is the decoded bytes, never the text. A secret without the prefix is taken as
//! the base64 part alone (as the reference libraries do); padded and unpadded base64 are both
//! accepted. The key must be 24 to 64 bytes, the range the specification gives.
//!
//! This is the one parser of that text: configuration validates endpoint secrets with it, and the
//! signer keys its HMAC from the bytes it returns.
use std::fmt;

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// The prefix of a secret in its text form.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// Standard base64; decoding accepts padded and unpadded input, encoding always pads.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a secret's text was refused. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookSecretError {
    #[error("webhook secret is empty")]
    Empty,
    #[error("webhook secret is not valid base64 (expected `whsec_<base64 key>`)")]
    NotBase64,
    #[error(
        "webhook secret key is {len} bytes; it must be {} to {} bytes",
        WebhookSecretKey::MIN_BYTES,
        WebhookSecretKey::MAX_BYTES
    )]
    KeyLength { len: usize },
}

/// The key bytes of a valid webhook secret. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecretKey(Vec<u8>);

// === impl WebhookSecretKey ===

impl WebhookSecretKey {
    /// Shortest key the specification allows.
    pub const MIN_BYTES: usize = 24;
    /// Longest key the specification allows.
    pub const MAX_BYTES: usize = 64;

    /// Parses `whsec_<base64>`, or the base64 part alone; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, WebhookSecretError> {
        let encoded = text.trim();
        let encoded = encoded
            .strip_prefix(WEBHOOK_SECRET_PREFIX)
            .unwrap_or(encoded);
        if encoded.is_empty() {
            return Err(WebhookSecretError::Empty);
        }
        let key = BASE64
            .decode(encoded)
            .map_err(|_| WebhookSecretError::NotBase64)?;
        Self::from_bytes(key)
    }

    /// A key given as bytes, checked against the length limits.
    pub fn from_bytes(key: Vec<u8>) -> Result<Self, WebhookSecretError> {
        if (Self::MIN_BYTES..=Self::MAX_BYTES).contains(&key.len()) {
            Ok(Self(key))
        } else {
            Err(WebhookSecretError::KeyLength { len: key.len() })
        }
    }

    /// The key, `MIN_BYTES..=MAX_BYTES` long.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `whsec_` text form (padded base64). Show it only to whoever configures the receiver.
    pub fn to_text(&self) -> String {
        format!("{WEBHOOK_SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }
}

impl fmt::Debug for WebhookSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecretKey(*****)")
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn the_prefix_is_optional_and_padding_is_indifferent() {
        let key: Vec<u8> = (0u8..25).collect();
        let padded = STANDARD.encode(&key);
        let unpadded = padded.trim_end_matches('=');
        assert_ne!(padded, unpadded);
        for text in [
            format!("whsec_{padded}"),
            format!("whsec_{unpadded}"),
            padded.clone(),
            format!("  whsec_{padded}\n"),
        ] {
            assert_eq!(
                WebhookSecretKey::parse(&text).unwrap().as_bytes(),
                key,
                "{text}"
            );
        }
    }

    #[test]
    fn the_text_form_round_trips() {
        let key = WebhookSecretKey::from_bytes(vec![7u8; 32]).unwrap();
        let text = key.to_text();
        assert_eq!(text, format!("whsec_{}", STANDARD.encode([7u8; 32])));
        assert_eq!(WebhookSecretKey::parse(&text).unwrap(), key);
    }

    #[test]
    fn bad_text_is_refused_with_the_reason_and_never_the_secret() {
        for empty in ["", "whsec_", "   "] {
            assert_eq!(
                WebhookSecretKey::parse(empty).unwrap_err(),
                WebhookSecretError::Empty
            );
        }
        assert_eq!(
            WebhookSecretKey::parse("whsec_@@@@").unwrap_err(),
            WebhookSecretError::NotBase64
        );
        for len in [0, 23, 65] {
            assert_eq!(
                WebhookSecretKey::from_bytes(vec![1; len]).unwrap_err(),
                WebhookSecretError::KeyLength { len }
            );
        }
        let text = STANDARD.encode([1u8; 23]);
        let message = WebhookSecretKey::parse(&text).unwrap_err().to_string();
        assert_eq!(
            message,
            "webhook secret key is 23 bytes; it must be 24 to 64 bytes"
        );
        let message = WebhookSecretKey::parse("whsec_@@@@canary")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("canary"), "{message}");
        let key = WebhookSecretKey::parse(&STANDARD.encode([3u8; 24])).unwrap();
        assert_eq!(format!("{key:?}"), "WebhookSecretKey(*****)");
    }
}
