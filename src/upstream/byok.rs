//! BYOK: applying the configured judge key (`openai_api_key`) to a submit body, byte-exactly.
//!
//! The body is validated as a JSON object, then the key is spliced in (or a caller's value
//! replaced) without re-serialising anything else: a 100 MB dataset is forwarded byte for byte,
//! and the work is one validating parse plus one copy.
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ByokMode;

/// The field the Valiqor submit endpoints read the judge key from (reference §3).
pub(crate) const FIELD: &str = "openai_api_key";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ByokError {
    #[error("request body must be a JSON object: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object, not an array or a scalar")]
    NotAnObject,
}

/// Only the field we care about; everything else is validated and skipped.
#[derive(Deserialize)]
struct Probe<'a> {
    /// `Some` whenever the field is present, `null` included (plain `Option` would hide a null).
    #[serde(
        borrow,
        default,
        rename = "openai_api_key",
        deserialize_with = "present"
    )]
    key: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Validates `body` as a JSON object and applies `key` under `mode`:
/// - `CallerFirst`: a caller's non-null key is kept; otherwise ours is inserted;
/// - `Force`: ours replaces the caller's;
/// - `Off` or no key configured: the body is validated and left untouched.
///
/// Returns the body to forward (the same `Bytes` when nothing changed).
pub(crate) fn apply(body: Bytes, mode: ByokMode, key: Option<&str>) -> Result<Bytes, ByokError> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    if first.is_none_or(|i| body[i] != b'{') {
        // Distinguish "not JSON at all" from "JSON but not an object" for a clearer message.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                Ok(_) => ByokError::NotAnObject,
                Err(error) => ByokError::NotJson(error.to_string()),
            },
        );
    }
    let probe: Probe<'_> =
        serde_json::from_slice(&body).map_err(|error| ByokError::NotJson(error.to_string()))?;
    let Some(key) = key else {
        return Ok(body);
    };
    let caller = probe.key.filter(|raw| raw.get() != "null");
    let existing = probe.key;
    match (mode, caller, existing) {
        (ByokMode::Off, _, _) | (ByokMode::CallerFirst, Some(_), _) => Ok(body),
        // Replace the caller's value (or a null) in place.
        (ByokMode::Force | ByokMode::CallerFirst, _, Some(raw)) => {
            let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
            let end = start + raw.get().len();
            let value = json_string(key);
            let mut out = BytesMut::with_capacity(body.len() + value.len());
            out.put_slice(&body[..start]);
            out.put_slice(value.as_bytes());
            out.put_slice(&body[end..]);
            Ok(out.freeze())
        }
        // Insert right after the opening brace.
        (ByokMode::Force | ByokMode::CallerFirst, _, None) => {
            let open = first.unwrap_or(0);
            let empty = body[open + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'}');
            let value = json_string(key);
            let mut out = BytesMut::with_capacity(body.len() + FIELD.len() + value.len() + 4);
            out.put_slice(&body[..=open]);
            out.put_slice(b"\"");
            out.put_slice(FIELD.as_bytes());
            out.put_slice(b"\": ");
            out.put_slice(value.as_bytes());
            if !empty {
                out.put_slice(b", ");
            }
            out.put_slice(&body[open + 1..]);
            Ok(out.freeze())
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn run(body: &str, mode: ByokMode, key: Option<&str>) -> Result<String, ByokError> {
        apply(Bytes::from(body.to_owned()), mode, key)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn inserts_when_absent_and_keeps_every_other_byte() {
        let body = r#"{"run_eval": true,  "dataset": [{"input": "\u00e9", "output": "x"}]}"#;
        let out = run(body, ByokMode::CallerFirst, Some("sk-ours")).unwrap();
        assert_eq!(
            out,
            r#"{"openai_api_key": "sk-ours", "run_eval": true,  "dataset": [{"input": "\u00e9", "output": "x"}]}"#
        );
        let empty = run(" {} ", ByokMode::CallerFirst, Some("sk")).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&empty).unwrap(),
            json!({"openai_api_key": "sk"})
        );
    }

    #[test]
    fn caller_key_wins_in_caller_first_and_loses_in_force() {
        let body = r#"{"dataset": [], "openai_api_key": "sk-caller"}"#;
        assert_eq!(
            run(body, ByokMode::CallerFirst, Some("sk-ours")).unwrap(),
            body
        );
        let forced = run(body, ByokMode::Force, Some("sk-ours")).unwrap();
        assert_eq!(forced, r#"{"dataset": [], "openai_api_key": "sk-ours"}"#);
        let null = run(
            r#"{"openai_api_key": null}"#,
            ByokMode::CallerFirst,
            Some("sk-ours"),
        )
        .unwrap();
        assert_eq!(null, r#"{"openai_api_key": "sk-ours"}"#);
    }

    #[test]
    fn off_or_unconfigured_leaves_the_body_alone_but_still_validates() {
        let body = r#"{"dataset": []}"#;
        assert_eq!(run(body, ByokMode::Off, Some("sk")).unwrap(), body);
        assert_eq!(run(body, ByokMode::Force, None).unwrap(), body);
        assert!(matches!(
            run("not json", ByokMode::Off, None),
            Err(ByokError::NotJson(_))
        ));
        assert_eq!(
            run("[1, 2]", ByokMode::CallerFirst, Some("sk")),
            Err(ByokError::NotAnObject)
        );
        assert!(matches!(
            run(r#"{"a": 1"#, ByokMode::CallerFirst, Some("sk")),
            Err(ByokError::NotJson(_))
        ));
        assert!(matches!(
            run("", ByokMode::CallerFirst, Some("sk")),
            Err(ByokError::NotJson(_))
        ));
    }

    #[test]
    fn keys_needing_escapes_stay_valid_json() {
        let out = run("{}", ByokMode::Force, Some("sk-\"quoted\"\\")).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[FIELD], "sk-\"quoted\"\\");
    }
}
