//! Arize-style identifiers and paging: standard base64 (with `+`, `/` and `=` padding), resource ids that decode
//! to `Kind:N:emul…` (what the SDK's `is_resource_id` takes for an id), opaque keyset cursors, and one page of a
//! list with its `pagination` object.

use serde_json::{Value, json};

use super::problem::ArizeError;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4usize {
            if i <= chunk.len() {
                let sextet = (n >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sextet(c: u8) -> Option<u32> {
    ALPHABET
        .iter()
        .position(|&a| a == c)
        .and_then(|p| u32::try_from(p).ok())
}

/// Strict standard base64 (padding required, no whitespace), like Python's `b64decode(s, validate=True)`.
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let groups = bytes.len() / 4;
    let mut out = Vec::with_capacity(groups * 3);
    for (g, chunk) in bytes.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && g + 1 != groups) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad;
        for i in 0..3 - pad {
            out.push(n.to_be_bytes()[1 + i]);
        }
    }
    Some(out)
}

/// What the SDK takes for an id rather than a name: strict base64 of UTF-8 text containing `:`.
pub(crate) fn is_resource_id(s: &str) -> bool {
    b64_decode(s)
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|text| text.contains(':'))
}

/// A plain id: `base64("{kind}:{n}:emul")`, e.g. `U3BhY2U6MTplbXVs` for `Space:1:emul`.
pub(crate) fn plain_id(kind: &str, n: u64) -> String {
    b64_encode(format!("{kind}:{n}:emul").as_bytes())
}

/// An id whose base64 carries a `/` (odd `n`) or `+` (even `n`) and `=` padding (`==`, or `=` when `n` is a
/// multiple of 3), so that paths exercise `%2F`, `%2B` and `%3D`.
pub(crate) fn encoded_id(kind: &str, n: u64) -> String {
    let mut text = format!("{kind}:{n}:emul");
    while text.len() % 3 != 2 {
        text.push('.');
    }
    // Last byte of a 3-byte group: its low six bits are one base64 digit; 0x3F ('?') is '/', 0x3E ('>') is '+'.
    text.push(if n % 2 == 1 { '?' } else { '>' });
    // One or two more bytes leave a partial group, padded with `==` or `=`.
    text.push('~');
    if n.is_multiple_of(3) {
        text.push('~');
    }
    b64_encode(text.as_bytes())
}

// === paging ===

/// Which way a list runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Oldest first (increasing sequence numbers).
    Ascending,
    /// Newest first.
    Descending,
}

/// `limit` and `cursor` of a list request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    pub(crate) limit: usize,
    /// The sequence number of the last item of the previous page.
    pub(crate) after: Option<u64>,
}

pub(crate) const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 100;

impl Page {
    /// Parses `limit` (1..=100, default 50) and `cursor` (one this list issued) from a query.
    pub(crate) fn parse(
        limit: Option<&str>,
        cursor: Option<&str>,
        list: &str,
    ) -> Result<Self, ArizeError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ArizeError::bad_request(format!(
                        "limit must be an integer between 1 and {MAX_LIMIT}, got '{raw}'"
                    ))
                })?,
        };
        let after = cursor
            .map(|raw| {
                decode_cursor(raw, list).ok_or_else(|| {
                    ArizeError::bad_request_code(
                        "INVALID_CURSOR",
                        format!("cursor '{raw}' is not a cursor of this list"),
                    )
                })
            })
            .transpose()?;
        Ok(Self { limit, after })
    }
}

fn cursor(list: &str, after: u64) -> String {
    b64_encode(format!("{list}/after/{after}").as_bytes())
}

fn decode_cursor(raw: &str, list: &str) -> Option<u64> {
    let text = String::from_utf8(b64_decode(raw)?).ok()?;
    text.strip_prefix(list)?
        .strip_prefix("/after/")?
        .parse()
        .ok()
}

/// One page of `items` (already in list order, each with its sequence number) and the `pagination` object:
/// `{"has_more": true, "next_cursor": …}` or `{"has_more": false}`.
pub(crate) fn paginate(
    items: Vec<(u64, Value)>,
    order: Order,
    page: Page,
    list: &str,
) -> (Vec<Value>, Value) {
    let mut rest = items.into_iter().filter(|(seq, _)| match page.after {
        None => true,
        Some(after) => match order {
            Order::Ascending => *seq > after,
            Order::Descending => *seq < after,
        },
    });
    let taken: Vec<(u64, Value)> = rest.by_ref().take(page.limit).collect();
    let has_more = rest.next().is_some();
    let pagination = match taken.last() {
        Some((last_seq, _)) if has_more => {
            json!({"has_more": true, "next_cursor": cursor(list, *last_seq)})
        }
        _ => json!({"has_more": false}),
    };
    (taken.into_iter().map(|(_, v)| v).collect(), pagination)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_is_strict() {
        for text in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "OnlineTask:1:emul",
        ] {
            let enc = b64_encode(text.as_bytes());
            if !text.is_empty() {
                assert_eq!(b64_decode(&enc).unwrap(), text.as_bytes(), "{enc}");
            }
        }
        assert_eq!(b64_encode(b"Space:1:emul"), "U3BhY2U6MTplbXVs");
        assert_eq!(b64_encode(b"Dataset:1:emul"), "RGF0YXNldDoxOmVtdWw=");
        assert_eq!(b64_encode(b"Evaluator:1:emul"), "RXZhbHVhdG9yOjE6ZW11bA==");
        for bad in ["", "abc", "ab=c", "a===", "ab==ab==", "ab cd", "ab-_"] {
            assert!(b64_decode(bad).is_none(), "{bad}");
        }
        assert!(is_resource_id("U3BhY2U6MTplbXVs"));
        assert!(!is_resource_id("demo-space"));
        assert!(!is_resource_id("Zm9v")); // "foo": no ':'
    }

    #[test]
    fn encoded_ids_carry_slash_or_plus_and_padding() {
        for n in 1..=30 {
            for kind in ["OnlineTask", "TaskRun", "Experiment"] {
                let id = encoded_id(kind, n);
                assert!(is_resource_id(&id), "{id}");
                assert!(id.contains(if n % 2 == 1 { '/' } else { '+' }), "{id}");
                assert!(id.ends_with('='), "{id}");
                let text = String::from_utf8(b64_decode(&id).unwrap()).unwrap();
                assert!(text.starts_with(&format!("{kind}:{n}:emul")), "{text}");
            }
        }
        assert_ne!(encoded_id("TaskRun", 1), encoded_id("TaskRun", 2));
    }

    #[test]
    fn pages_follow_the_cursor_in_either_order() {
        let items: Vec<(u64, Value)> = (1..=5).map(|i| (i, json!(i))).collect();
        let first = Page::parse(Some("2"), None, "tasks").unwrap();
        let (got, pagination) = paginate(items.clone(), Order::Ascending, first, "tasks");
        assert_eq!(got, [json!(1), json!(2)]);
        assert_eq!(pagination["has_more"], true);
        let next = pagination["next_cursor"].as_str().unwrap();
        let second = Page::parse(Some("3"), Some(next), "tasks").unwrap();
        let (got, pagination) = paginate(items.clone(), Order::Ascending, second, "tasks");
        assert_eq!(got, [json!(3), json!(4), json!(5)]);
        assert_eq!(pagination, json!({"has_more": false}));
        assert!(Page::parse(None, Some(next), "runs").is_err());
        assert!(Page::parse(Some("0"), None, "tasks").is_err());
        assert!(Page::parse(Some("101"), None, "tasks").is_err());
        assert!(Page::parse(Some("x"), None, "tasks").is_err());

        let newest_first: Vec<(u64, Value)> = items.into_iter().rev().collect();
        let page = Page::parse(Some("4"), None, "runs").unwrap();
        let (got, pagination) = paginate(newest_first.clone(), Order::Descending, page, "runs");
        assert_eq!(got.len(), 4);
        let next = pagination["next_cursor"].as_str().unwrap();
        let page = Page::parse(Some("4"), Some(next), "runs").unwrap();
        let (got, _) = paginate(newest_first, Order::Descending, page, "runs");
        assert_eq!(got, [json!(1)]);
    }
}
