//! Standard Webhooks signatures: the `webhook-id`, `webhook-timestamp` and `webhook-signature`
//! headers of every delivery.
//!
//! - **Signed content**: `"{webhook-id}.{webhook-timestamp}.{body}"`, the timestamp in unix
//!   seconds written in decimal, the body as the exact bytes sent.
//! - **Signature**: `v1,` + standard base64 (with padding) of HMAC-SHA256 over the signed content.
//! - **Secrets**: `whsec_` + standard base64 of the key; the key is the decoded bytes, never the
//!   text. A secret without the prefix is taken as the base64 part alone (as the reference
//!   libraries do). The key must be 24 to 64 bytes, the range the specification gives. The text
//!   is parsed by [`WebhookSecretKey`], the same parser configuration validates with.
//! - **Rotation**: with several active secrets, the header carries one signature per secret, in
//!   the order given, separated by a single space; a receiver accepts the message when any of them
//!   verifies, so old and new secrets both work during a rotation.
//! - **Retries**: the id stays the same across attempts (receivers deduplicate on it); the
//!   timestamp, and therefore the signature, is fresh for each attempt.
//!
//! The `.` separator is ambiguous when an id contains a `.` (`a.1` + `2` signs the same content as
//! `a` + `1` with a body starting `2.`); [`new_message_id`] never produces one.
//!
//! [`verify`] compares in constant time. It checks the signature only: enforcing a timestamp
//! tolerance (the reference libraries use ±5 minutes) is the receiver's business.
use std::fmt;

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::types::{WEBHOOK_SECRET_PREFIX, WebhookSecretError, WebhookSecretKey};

/// The only signature version this module writes or accepts.
pub const VERSION: &str = "v1";
/// Length of a key made by [`SigningSecret::generate`].
pub const GENERATED_KEY_BYTES: usize = 32;
/// HMAC-SHA256's block size, which is also the longest key a secret may hold.
const BLOCK_BYTES: usize = WebhookSecretKey::MAX_BYTES;

/// Standard base64 for encoding (always padded); decoding accepts padded and unpadded input, as
/// the reference libraries do.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// One signing key. `Debug` never shows the key.
///
/// Holds the keyed HMAC state, so signing never re-derives it and cannot fail.
#[derive(Clone)]
pub struct SigningSecret {
    mac: HmacSha256,
}

// === impl SigningSecret ===

impl SigningSecret {
    /// Parses `whsec_<base64>`, or the base64 part alone (see [`WebhookSecretKey::parse`]).
    pub fn parse(s: &str) -> Result<Self, WebhookSecretError> {
        WebhookSecretKey::parse(s).map(|key| Self::keyed_with(key.as_bytes()))
    }

    /// Makes a new random 32-byte secret; returns it and its `whsec_` text form (show it once, to
    /// whoever configures the receiver).
    pub fn generate() -> (Self, String) {
        let key: [u8; GENERATED_KEY_BYTES] = rand::random();
        let text = format!("{WEBHOOK_SECRET_PREFIX}{}", BASE64.encode(key));
        (Self::keyed_with(&key), text)
    }

    /// Keys the MAC. HMAC pads a key shorter than the hash's block size (64 bytes for SHA-256)
    /// with zeros, and no valid key is longer than that block, so padding here first is exactly
    /// HMAC's own key derivation and keying with a full block cannot fail.
    fn keyed_with(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK_BYTES];
        let len = key.len().min(BLOCK_BYTES);
        block[..len].copy_from_slice(&key[..len]);
        Self {
            mac: HmacSha256::new(&block.into()),
        }
    }

    /// The MAC, fed with the signed content and not yet finalized.
    fn keyed(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(*****)")
    }
}

/// The `webhook-signature` value: one `v1,<base64>` per secret, in order, separated by one space.
/// An empty slice gives an empty string; callers configure at least one secret.
pub fn sign(secrets: &[SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        let tag = secret
            .keyed(msg_id, timestamp, body)
            .finalize()
            .into_bytes();
        header.push_str(VERSION);
        header.push(',');
        BASE64.encode_string(tag, &mut header);
    }
    header
}

/// Whether any `v1` signature in the space-separated `header` is `secret`'s signature of the
/// message. Each comparison is constant time. Unknown versions and undecodable entries are skipped.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let keyed = secret.keyed(msg_id, timestamp, body);
    header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, signature)| BASE64.decode(signature).ok())
        .any(|signature| keyed.clone().verify_slice(&signature).is_ok())
}

/// A fresh `webhook-id`: `msg_` + a `UUIDv7` in simple (hex, no dashes) form. Never contains `.`.
pub fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference vector (the same in the specification's libraries; the
    /// Python package `standardwebhooks` 1.1.0 reproduces it).
    const REF_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const REF_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const REF_TIMESTAMP: i64 = 1_614_265_330;
    const REF_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const REF_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret(s: &str) -> SigningSecret {
        SigningSecret::parse(s).unwrap()
    }

    /// Signs with the raw primitives, independently of this module.
    fn reference_signature(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
        use base64::engine::general_purpose::STANDARD;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        let mut content = format!("{id}.{ts}.").into_bytes();
        content.extend_from_slice(body);
        mac.update(&content);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn reproduces_the_published_standard_webhooks_vector() {
        let s = secret(REF_SECRET);
        assert_eq!(
            sign(std::slice::from_ref(&s), REF_ID, REF_TIMESTAMP, REF_BODY),
            REF_SIGNATURE
        );
        assert!(verify(&s, REF_ID, REF_TIMESTAMP, REF_BODY, REF_SIGNATURE));
    }

    #[test]
    fn matches_an_independent_hmac_sha256_computation() {
        let key: Vec<u8> = (0u8..32).collect();
        let text = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&key)
        );
        let body =
            "{\"job\":\"j-1\",\"status\":\"succeeded\",\"note\":\"héllo ✓ 日本\"}".as_bytes();
        let expected = reference_signature(&key, "msg_abc", 1_700_000_000, body);
        assert_eq!(
            sign(&[secret(&text)], "msg_abc", 1_700_000_000, body),
            expected
        );
        // Pinned (computed with Python's `hmac`), so a change in the primitives shows up too.
        assert_eq!(text, "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        assert_eq!(expected, "v1,OiU03ywqjKSf9na71usFrQQ3xRxnsQ6N5pQZQccU1a0=");
    }

    #[test]
    fn empty_body_and_negative_timestamp_are_signed_as_written() {
        let key = [7u8; 24];
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        let s = secret(&text);
        assert_eq!(
            sign(std::slice::from_ref(&s), "msg_x", 0, b""),
            reference_signature(&key, "msg_x", 0, b"")
        );
        assert_eq!(
            sign(&[s], "msg_x", -5, b"b"),
            reference_signature(&key, "msg_x", -5, b"b")
        );
    }

    #[test]
    fn the_prefix_is_optional_and_unpadded_base64_is_accepted() {
        let with = sign(&[secret(REF_SECRET)], REF_ID, REF_TIMESTAMP, REF_BODY);
        let without = sign(
            &[secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
            REF_ID,
            REF_TIMESTAMP,
            REF_BODY,
        );
        assert_eq!(with, without);
        // 25 bytes encode to 36 chars with `==`; both forms parse to the same key.
        let key = [9u8; 25];
        let padded = base64::engine::general_purpose::STANDARD.encode(key);
        let unpadded = padded.trim_end_matches('=');
        assert_ne!(padded, unpadded);
        assert_eq!(
            sign(&[secret(&padded)], "m", 1, b"x"),
            sign(&[secret(&format!("whsec_{unpadded}"))], "m", 1, b"x")
        );
    }

    #[test]
    fn rotation_signs_once_per_secret_in_order_and_each_verifies() {
        let (a, _) = SigningSecret::generate();
        let (b, _) = SigningSecret::generate();
        let (c, _) = SigningSecret::generate();
        let header = sign(&[a.clone(), b.clone(), c.clone()], "msg_1", 42, b"body");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 3);
        assert!(!header.contains("  "));
        assert_eq!(
            parts[0],
            sign(std::slice::from_ref(&a), "msg_1", 42, b"body")
        );
        assert_eq!(
            parts[1],
            sign(std::slice::from_ref(&b), "msg_1", 42, b"body")
        );
        assert_eq!(
            parts[2],
            sign(std::slice::from_ref(&c), "msg_1", 42, b"body")
        );
        for s in [&a, &b, &c] {
            assert!(verify(s, "msg_1", 42, b"body", &header));
        }
        let (other, _) = SigningSecret::generate();
        assert!(!verify(&other, "msg_1", 42, b"body", &header));
    }

    #[test]
    fn no_secret_gives_an_empty_header_that_verifies_nothing() {
        assert_eq!(sign(&[], "m", 1, b"x"), "");
        assert!(!verify(&secret(REF_SECRET), "m", 1, b"x", ""));
    }

    #[test]
    fn tampering_with_any_signed_part_is_rejected() {
        let s = secret(REF_SECRET);
        let header = REF_SIGNATURE;
        assert!(!verify(
            &s,
            REF_ID,
            REF_TIMESTAMP,
            br#"{"test": 2432232315}"#,
            header
        ));
        assert!(!verify(
            &s,
            REF_ID,
            REF_TIMESTAMP,
            br#"{"test": 2432232314} "#,
            header
        ));
        assert!(!verify(&s, REF_ID, REF_TIMESTAMP, b"", header));
        assert!(!verify(
            &s,
            "msg_p5jXN8AQM9LWM0D4loKWxJeK",
            REF_TIMESTAMP,
            REF_BODY,
            header
        ));
        assert!(!verify(&s, REF_ID, REF_TIMESTAMP + 1, REF_BODY, header));
        assert!(!verify(&s, REF_ID, REF_TIMESTAMP - 1, REF_BODY, header));
        let (other, _) = SigningSecret::generate();
        assert!(!verify(&other, REF_ID, REF_TIMESTAMP, REF_BODY, header));
    }

    #[test]
    fn malformed_or_foreign_signature_entries_are_skipped_not_trusted() {
        let s = secret(REF_SECRET);
        let tag = REF_SIGNATURE.trim_start_matches("v1,");
        let ok = |h: &str| verify(&s, REF_ID, REF_TIMESTAMP, REF_BODY, h);
        // Only `v1` counts.
        assert!(!ok(&format!("v2,{tag}")));
        assert!(!ok(&format!("v1a,{tag}")));
        assert!(!ok(tag));
        assert!(!ok("v1,"));
        assert!(!ok("v1,!!!notbase64"));
        // A truncated or extended tag does not match.
        assert!(!ok(&format!("v1,{}", &tag[..tag.len() - 4])));
        assert!(!ok(&format!("v1,{tag}AAAA")));
        // The valid entry is found among junk, wherever it stands.
        assert!(ok(&format!("v1,bm9wZQ== v2,{tag} {REF_SIGNATURE}")));
        assert!(ok(&format!("{REF_SIGNATURE} garbage")));
        // Unpadded base64 in the header is accepted, as by the reference verifier.
        assert!(ok(&format!("v1,{}", tag.trim_end_matches('='))));
    }

    #[test]
    fn bad_secrets_are_rejected_with_a_clear_error() {
        assert_eq!(
            SigningSecret::parse("").unwrap_err(),
            WebhookSecretError::Empty
        );
        assert_eq!(
            SigningSecret::parse("whsec_").unwrap_err(),
            WebhookSecretError::Empty
        );
        assert_eq!(
            SigningSecret::parse("   ").unwrap_err(),
            WebhookSecretError::Empty
        );
        for bad in [
            "whsec_not base64!!",
            "whsec_@@@@",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            "whsec_Zg=Zg==",
            "whsec_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_",
        ] {
            assert_eq!(
                SigningSecret::parse(bad).unwrap_err(),
                WebhookSecretError::NotBase64,
                "{bad}"
            );
        }
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 23]);
        assert_eq!(
            SigningSecret::parse(&short).unwrap_err(),
            WebhookSecretError::KeyLength { len: 23 }
        );
        let long = base64::engine::general_purpose::STANDARD.encode([1u8; 65]);
        assert_eq!(
            SigningSecret::parse(&long).unwrap_err(),
            WebhookSecretError::KeyLength { len: 65 }
        );
        let msg = SigningSecret::parse("whsec_@@@@secretcanary")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("base64") && !msg.contains("canary"), "{msg}");
        for len in [WebhookSecretKey::MIN_BYTES, WebhookSecretKey::MAX_BYTES] {
            let ok = base64::engine::general_purpose::STANDARD.encode(vec![1u8; len]);
            assert!(SigningSecret::parse(&ok).is_ok());
        }
    }

    #[test]
    fn generate_round_trips_through_its_text_form() {
        let (s, text) = SigningSecret::generate();
        assert!(text.starts_with("whsec_"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&text[6..])
            .unwrap();
        assert_eq!(decoded.len(), GENERATED_KEY_BYTES);
        let header = sign(&[s], "m", 1, b"x");
        assert_eq!(header, reference_signature(&decoded, "m", 1, b"x"));
        assert!(verify(&secret(&text), "m", 1, b"x", &header));
        let (_, again) = SigningSecret::generate();
        assert_ne!(text, again);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let (s, text) = SigningSecret::generate();
        let b64 = &text[6..];
        for rendered in [
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{:?}", std::slice::from_ref(&s)),
        ] {
            assert!(!rendered.contains(b64), "{rendered}");
            assert!(rendered.contains("*****"), "{rendered}");
        }
        let reference = secret(REF_SECRET);
        assert_eq!(format!("{reference:?}"), "SigningSecret(*****)");
    }

    #[test]
    fn message_ids_are_msg_uuidv7_simple_and_unique() {
        let a = new_message_id();
        let b = new_message_id();
        assert_ne!(a, b);
        let hex = a.strip_prefix("msg_").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(
            hex.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(!a.contains('.'));
        let uuid = uuid::Uuid::parse_str(hex).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
    }
}
