//! JSON helpers: counts and weights from `Value`s, and the raw-JSON text the scan borrows.
use std::borrow::Cow;

use serde_json::{Value, value::RawValue};

pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A non-negative integer, written as an integer or as an integral float.
pub(super) fn as_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0)
            .and_then(round_count)
    })
}

/// A float rounded to a count (`None` when negative, not finite or too large).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the range is checked first"
)]
pub(super) fn round_count(x: f64) -> Option<u64> {
    let x = x.round();
    (0.0..18_446_744_073_709_551_616.0)
        .contains(&x)
        .then_some(x as u64)
}

pub(super) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "item counts stay far below 2^53, where the conversion is exact"
)]
pub(super) fn as_weight(n: u64) -> f64 {
    n as f64
}

pub(super) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first position at or after `from` whose byte `skip_over` does not accept.
pub(super) fn skip(bytes: &[u8], from: usize, skip_over: impl Fn(u8) -> bool) -> usize {
    bytes
        .get(from..)
        .and_then(|rest| rest.iter().position(|c| !skip_over(*c)))
        .map_or(bytes.len(), |i| from + i)
}

/// The JSON type of a raw value, from its first byte.
pub(super) fn raw_type(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "boolean",
        Some(b'"') => "string",
        Some(b'[') => "array",
        Some(b'{') => "object",
        _ => "number",
    }
}

pub(super) fn raw_value(raw: &RawValue) -> Result<Value, serde_json::Error> {
    serde_json::from_str(raw.get())
}

/// A raw JSON string's text (borrowed when it has no escapes); `None` for other types.
pub(super) fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = raw.get();
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(s).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// A raw value as a count ([`as_count`]); `None` when it is not one.
pub(super) fn raw_count(raw: &RawValue) -> Result<Option<u64>, serde_json::Error> {
    let s = raw.get();
    // Plain digits (JSON allows no leading zeros) that fit: the common case, without a `Value`.
    if (1..=19).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit()) {
        return Ok(s.parse().ok());
    }
    raw_value(raw).map(|v| as_count(&v))
}

/// Appends `n` in decimal.
pub(super) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + u8::try_from(n % 10).unwrap_or(0);
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or_default());
}
