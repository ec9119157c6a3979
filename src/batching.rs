//! Splitting oversize datasets into batches, byte for byte and without copying the dataset.
//!
//! A submit body (`{..., "dataset": [...], ...}`, valiqor-api.md §4.2–4.4) is validated in one
//! borrowed pass: every top-level value and every dataset item is read as a `&RawValue`, and its
//! position inside the original body is found by pointer arithmetic (the technique of
//! `http::byok`). What comes out is a list of byte ranges into the original [`Bytes`]; a batch's
//! items are then one zero-copy slice of it, so items are forwarded exactly as sent (escapes,
//! whitespace, key order, number spelling) and no `serde_json::Value` of the dataset is ever built.
//! Beyond the body itself, the memory is 16 bytes per item (a `Vec` of ranges, up to twice that
//! while it grows) plus the members; each batch body is built on demand, one at a time.
//!
//! ```text
//! {"run_eval": true, "dataset": [ {"input": …} , {"input": …} ], "project_name": "p"}
//!  └──── members ───┘            └─ item 0 ─┘   └─ item 1 ─┘    └──── members ───┘
//! batch body = {  members  , "dataset": [  payload (items i..j, separators as sent)  ]}
//! ```
use std::{fmt, ops::Range, str};

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The top-level field the Valiqor submit endpoints read the items from.
pub const DATASET: &str = "dataset";

/// What `batch_body` puts between the members and the payload.
const DATASET_OPEN: &[u8] = br#""dataset": ["#;

/// Why a body (or a JSONL file) cannot be split. The messages are shown to the caller
/// (`400 {"detail": ...}`), so they say what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatasetError {
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object, not an array or a scalar")]
    NotAnObject,
    #[error("request body has no `dataset` field")]
    NoDataset,
    #[error("`dataset` appears more than once in the request body")]
    DuplicateDataset,
    #[error("`dataset` must be a JSON array of items")]
    DatasetNotArray,
    #[error("`dataset` is empty; send at least one item")]
    Empty,
    #[error("`options` must be a JSON object")]
    OptionsNotObject,
    #[error("`options` must not contain `dataset`; the dataset goes at the top level")]
    DatasetInOptions,
    /// A caller bug: `from_parts` was given a dataset that was not borrowed from the body.
    #[error("internal error: the dataset is not part of the request body")]
    Detached,
    /// `parse_json_lines`: line and column are 1-based.
    #[error("line {line}, column {column}: {message}")]
    BadLine {
        line: usize,
        column: usize,
        message: String,
    },
}

/// A submit body split into what every batch repeats and where each dataset item is.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The original body (kept; everything below points into it).
    pub body: Bytes,
    /// The top-level members other than `dataset`, as raw JSON object *members* exactly as sent,
    /// comma-separated, no braces (e.g. `"run_eval": true, "project_name": "p"`), possibly empty.
    /// The separators are the ones sent; when `dataset` sat between two members, the separator
    /// before it is kept and the one after it dropped. A zero-copy slice of `body` unless
    /// `dataset` was in the middle. Built once; repeated in every batch body.
    pub members: Bytes,
    /// Byte range of each dataset item inside `body`, in order (no surrounding whitespace).
    pub items: Vec<Range<usize>>,
}

impl Submission {
    /// Parses a Valiqor submit body (`{..., "dataset": [...], ...}`): one validating pass over the
    /// whole body, no copy of the dataset. The key may be spelled with escapes (`"d\u0061taset"`).
    ///
    /// Validation is `serde_json`'s grammar check, as in `http::byok`: strings are skipped, not
    /// decoded, so a lone surrogate escape (`"\uD800"`) passes, as it does in Python's `json`.
    /// Items are skipped without recursion, so deep nesting inside an item is neither refused nor
    /// a stack risk.
    pub fn parse(body: Bytes) -> Result<Self, DatasetError> {
        let text = object_text(&body)?;
        let layout = deserialize(text, LayoutSeed::new(text))?;
        if layout.duplicate {
            return Err(DatasetError::DuplicateDataset);
        }
        let dataset = layout.dataset.ok_or(DatasetError::NoDataset)?;
        let items = dataset.items.into_items()?;
        let members = join_members(
            &body,
            &layout.members,
            dataset.members_before,
            dataset.key_start,
        );
        Ok(Self {
            body,
            members,
            items,
        })
    }

    /// Builds one from evalgate's native API: the dataset array and the options object are
    /// `&RawValue`s borrowed from `body` (the native request `{"kind", "dataset": [...],
    /// "options": {...}}`). `options` may be absent or `null`; its members become [`Self::members`]
    /// exactly as sent. An `options` member named `dataset` is an error. An `options` not borrowed
    /// from `body` is accepted (its members are copied); a `dataset` not borrowed from `body` is
    /// [`DatasetError::Detached`].
    pub fn from_parts(
        body: Bytes,
        dataset: &RawValue,
        options: Option<&RawValue>,
    ) -> Result<Self, DatasetError> {
        if offset_in(&body, dataset.get()).is_none() {
            return Err(DatasetError::Detached);
        }
        let items = deserialize(
            dataset.get(),
            ItemsSeed {
                base: body.as_ptr().addr(),
            },
        )?
        .into_items()?;
        let members = match options.map(RawValue::get).filter(|o| *o != "null") {
            None => Bytes::new(),
            Some(options) => options_members(&body, options)?,
        };
        Ok(Self {
            body,
            members,
            items,
        })
    }

    /// The number of dataset items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Never true for a value built by `parse` or `from_parts` (an empty dataset is an error).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Total bytes of the items (sum of ranges; separators not counted).
    pub fn item_bytes(&self) -> usize {
        self.items.iter().map(ExactSizeIterator::len).sum()
    }

    /// The items `range` (item indexes) as one zero-copy slice of `body`: from the first item's
    /// first byte to the last item's last byte, separators as sent in between. Empty for an empty
    /// range; panics if `range` is out of bounds, like slice indexing.
    pub fn payload(&self, range: Range<usize>) -> Bytes {
        let items = &self.items[range];
        match (items.first(), items.last()) {
            (Some(first), Some(last)) => self.body.slice(first.start..last.end),
            _ => Bytes::new(),
        }
    }

    /// The batches of this submission under `limits` (see [`split`]).
    pub fn split(&self, limits: BatchLimits) -> Vec<Range<usize>> {
        split(&self.items, limits)
    }

    /// The complete request body for the items `range`: [`Self::batch_body`] of the members and
    /// [`Self::payload`].
    pub fn batch(&self, range: Range<usize>) -> Bytes {
        Self::batch_body(&self.members, &self.payload(range))
    }

    /// A complete batch request body: `{` + members + `, "dataset": [` + payload + `]}` (no
    /// leading comma when `members` is empty). One allocation of
    /// [`Self::batch_body_len`] bytes.
    pub fn batch_body(members: &[u8], payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(Self::batch_body_len(members.len(), payload.len()));
        out.put_u8(b'{');
        if !members.is_empty() {
            out.put_slice(members);
            out.put_slice(b", ");
        }
        out.put_slice(DATASET_OPEN);
        out.put_slice(payload);
        out.put_slice(b"]}");
        out.freeze()
    }

    /// The length of [`Self::batch_body`] for members and a payload of these lengths, for callers
    /// that budget whole request bodies (`max_bytes` in [`BatchLimits`] counts the payload only).
    pub const fn batch_body_len(members: usize, payload: usize) -> usize {
        let separator = if members == 0 { 0 } else { 2 };
        1 + members + separator + DATASET_OPEN.len() + payload + 2
    }
}

/// How big one batch may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Items per batch; `0` is treated as `1`.
    pub max_items: usize,
    /// Payload bytes per batch: first item's first byte to last item's last byte, separators
    /// included (the batch body adds [`Submission::batch_body_len`]'s overhead on top).
    pub max_bytes: usize,
}

/// Splits items into consecutive batches (ranges of item indexes) so that each batch has at most
/// `max_items` items and its payload (first item start .. last item end, i.e. including
/// separators) at most `max_bytes` bytes.
///
/// Greedy: a batch takes items until the next one would break a limit, so only the last batch can
/// be smaller than necessary. An item bigger than `max_bytes` on its own gets a batch to itself:
/// evalgate does not drop or cut items, the upstream decides whether it accepts it (typically 413
/// or 400 for that batch alone). Never returns an empty batch; covers every item exactly once, in
/// order; no items → no batches. `items` must be in order and non-overlapping, as
/// [`Submission::items`] are.
pub fn split(items: &[Range<usize>], limits: BatchLimits) -> Vec<Range<usize>> {
    let max_items = limits.max_items.max(1);
    let mut batches = Vec::new();
    let mut start = 0;
    while let Some(first) = items.get(start) {
        let mut end = start + 1;
        while end - start < max_items
            && items
                .get(end)
                .is_some_and(|next| next.end.saturating_sub(first.start) <= limits.max_bytes)
        {
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

/// Turns JSONL (one JSON value per non-empty line) or a JSON array into a JSON array body, each
/// item byte for byte (for `evalgate submit data.jsonl`).
///
/// A text that is one JSON array is returned as is (trimmed). Otherwise every line that is not
/// blank must hold exactly one JSON value; the items are joined with `,\n` inside `[` `]`. A UTF-8
/// byte-order mark and `\r\n` line ends are accepted. Errors name the line of the first bad one
/// ([`DatasetError::BadLine`]); no items at all is [`DatasetError::Empty`].
pub fn parse_json_lines(text: &[u8]) -> Result<Bytes, DatasetError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let trimmed = trim(text);
    if trimmed.first() != Some(&b'[') {
        return json_lines(text);
    }
    let whole = str::from_utf8(trimmed)
        .map_err(|e| invalid_utf8(&e))
        .and_then(|array| {
            deserialize(
                array,
                ItemsSeed {
                    base: array.as_ptr().addr(),
                },
            )
        });
    match whole {
        Ok(items) => {
            items.into_items()?;
            Ok(Bytes::copy_from_slice(trimmed))
        }
        // Not one array: maybe JSONL whose lines are arrays. If even the first line is not a
        // value, it was meant as one (pretty-printed) array, and its own error is the useful one.
        Err(whole) => match json_lines(text) {
            Err(DatasetError::BadLine { line: 1, .. }) => Err(whole),
            lines => lines,
        },
    }
}

fn json_lines(text: &[u8]) -> Result<Bytes, DatasetError> {
    let mut out = BytesMut::with_capacity(text.len() + 2);
    out.put_u8(b'[');
    let mut count = 0_usize;
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        let item = trim(line);
        if item.is_empty() {
            continue;
        }
        let leading = line.iter().take_while(|b| is_ws(**b)).count();
        let bad = |column: usize, message: String| DatasetError::BadLine {
            line: index + 1,
            column: leading + column,
            message,
        };
        let value = str::from_utf8(item)
            .map_err(|e| bad(e.valid_up_to() + 1, "invalid UTF-8".to_owned()))?;
        serde_json::from_str::<IgnoredAny>(value).map_err(|e| {
            let message = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
            bad(e.column(), message)
        })?;
        if count > 0 {
            out.put_slice(b",\n");
        }
        out.put_slice(item);
        count += 1;
    }
    if count == 0 {
        return Err(DatasetError::Empty);
    }
    out.put_u8(b']');
    Ok(out.freeze())
}

/// JSON whitespace (RFC 8259 §2); `u8::is_ascii_whitespace` would also accept form feed.
const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !is_ws(*b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(*b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn invalid_utf8(error: &str::Utf8Error) -> DatasetError {
    DatasetError::NotJson(format!("invalid UTF-8 at byte {}", error.valid_up_to()))
}

/// The body as text, if it is (at least on its face) a JSON object. Distinguishes "not JSON at
/// all" from "JSON but not an object" for a clearer message.
fn object_text(body: &[u8]) -> Result<&str, DatasetError> {
    if body.iter().find(|b| !is_ws(**b)) != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => DatasetError::NotAnObject,
            Err(error) => DatasetError::NotJson(error.to_string()),
        });
    }
    // Validated once here so serde_json can borrow without re-checking every raw value.
    str::from_utf8(body).map_err(|e| invalid_utf8(&e))
}

/// Runs `seed` over all of `text` (trailing characters are an error).
fn deserialize<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> Result<S::Value, DatasetError> {
    let mut de = serde_json::Deserializer::from_str(text);
    seed.deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
        .map_err(|error| DatasetError::NotJson(error.to_string()))
}

/// Where `part` starts inside `body`, if it lies entirely within it.
fn offset_in(body: &[u8], part: &str) -> Option<usize> {
    let start = part.as_ptr().addr().checked_sub(body.as_ptr().addr())?;
    (start.checked_add(part.len())? <= body.len()).then_some(start)
}

/// Byte range of `raw` relative to `base` (the address `raw` was borrowed from, or before).
fn span(base: usize, raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr().addr() - base;
    start..start + raw.get().len()
}

/// Whether a raw (quoted, possibly escaped) key means `dataset`.
fn is_dataset_key(raw: &str) -> bool {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(plain) if !plain.contains('\\') => plain == DATASET,
        _ => serde_json::from_str::<String>(raw).is_ok_and(|key| key == DATASET),
    }
}

/// The members text: from the first member to the last, minus the `dataset` member and the
/// separator after it.
fn join_members(
    body: &Bytes,
    members: &[Range<usize>],
    before: usize,
    dataset_start: usize,
) -> Bytes {
    let (Some(first), Some(last)) = (members.first(), members.last()) else {
        return Bytes::new();
    };
    match members.get(before) {
        Some(after) if before > 0 => {
            let head = &body[first.start..dataset_start];
            let tail = &body[after.start..last.end];
            let mut out = BytesMut::with_capacity(head.len() + tail.len());
            out.put_slice(head);
            out.put_slice(tail);
            out.freeze()
        }
        _ => body.slice(first.start..last.end),
    }
}

/// The members of the native `options` object, exactly as sent.
fn options_members(body: &Bytes, options: &str) -> Result<Bytes, DatasetError> {
    if options
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
        != Some(&b'{')
    {
        return Err(DatasetError::OptionsNotObject);
    }
    let layout = deserialize(options, LayoutSeed::new(options))?;
    if layout.dataset.is_some() || layout.duplicate {
        return Err(DatasetError::DatasetInOptions);
    }
    let (Some(first), Some(last)) = (layout.members.first(), layout.members.last()) else {
        return Ok(Bytes::new());
    };
    let members = first.start..last.end;
    Ok(match offset_in(body, options) {
        Some(at) => body.slice(at + members.start..at + members.end),
        None => Bytes::copy_from_slice(&options.as_bytes()[members]),
    })
}

/// One pass over an object: where its members are, and the `dataset` items.
struct Layout {
    /// Byte range (key start .. value end) of each member other than `dataset`, in order.
    members: Vec<Range<usize>>,
    dataset: Option<DatasetMember>,
    duplicate: bool,
}

struct DatasetMember {
    /// How many other members come before it.
    members_before: usize,
    /// Where its key starts.
    key_start: usize,
    items: Items,
}

enum Items {
    Array(Vec<Range<usize>>),
    NotArray,
}

impl Items {
    fn into_items(self) -> Result<Vec<Range<usize>>, DatasetError> {
        match self {
            Self::NotArray => Err(DatasetError::DatasetNotArray),
            Self::Array(items) if items.is_empty() => Err(DatasetError::Empty),
            Self::Array(items) => Ok(items),
        }
    }
}

/// Reads a JSON object into a [`Layout`]; offsets are relative to `base`.
struct LayoutSeed {
    base: usize,
}

impl LayoutSeed {
    fn new(text: &str) -> Self {
        Self {
            base: text.as_ptr().addr(),
        }
    }
}

impl<'de> DeserializeSeed<'de> for LayoutSeed {
    type Value = Layout;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Layout, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LayoutSeed {
    type Value = Layout;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Layout, A::Error> {
        let mut layout = Layout {
            members: Vec::new(),
            dataset: None,
            duplicate: false,
        };
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            let key_start = span(self.base, key).start;
            if is_dataset_key(key.get()) {
                let items = map.next_value_seed(ItemsSeed { base: self.base })?;
                if layout.dataset.is_some() {
                    layout.duplicate = true;
                } else {
                    layout.dataset = Some(DatasetMember {
                        members_before: layout.members.len(),
                        key_start,
                        items,
                    });
                }
            } else {
                let value = map.next_value::<&'de RawValue>()?;
                layout.members.push(key_start..span(self.base, value).end);
            }
        }
        Ok(layout)
    }
}

/// Reads any JSON value; for an array, the byte range of each element relative to `base`.
struct ItemsSeed {
    base: usize,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = Items;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Items, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed {
    type Value = Items;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(span(self.base, item));
        }
        Ok(Items::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Items, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Items::NotArray)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Items, E> {
        Ok(Items::NotArray)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Items, E> {
        Ok(Items::NotArray)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Items, E> {
        Ok(Items::NotArray)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Items, E> {
        Ok(Items::NotArray)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Items, E> {
        Ok(Items::NotArray)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Items, E> {
        Ok(Items::NotArray)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    fn parse(body: &str) -> Result<Submission, DatasetError> {
        Submission::parse(Bytes::from(body.to_owned()))
    }

    fn text(bytes: &[u8]) -> &str {
        str::from_utf8(bytes).unwrap()
    }

    fn items(sub: &Submission) -> Vec<&str> {
        sub.items
            .iter()
            .map(|r| text(&sub.body[r.clone()]))
            .collect()
    }

    #[test]
    fn members_are_kept_byte_for_byte_wherever_the_dataset_is() {
        let first = parse(
            "{ \"dataset\" :[{\"input\": \"a\"}] ,\n  \"z_last\":\t\"\\u00e9\\n\" , \"a\": [1, 2.50, -0e0] }",
        )
        .unwrap();
        assert_eq!(
            text(&first.members),
            "\"z_last\":\t\"\\u00e9\\n\" , \"a\": [1, 2.50, -0e0]"
        );
        let middle =
            parse(r#"{"run_eval":true ,  "dataset": [1], "project_name" : "p\"q", "b": {}}"#)
                .unwrap();
        assert_eq!(
            text(&middle.members),
            r#""run_eval":true ,  "project_name" : "p\"q", "b": {}"#
        );
        let last = parse("{\"k\\u0065y\": null,\r\n\"x\": 1e3, \"dataset\": [2]}\n").unwrap();
        assert_eq!(text(&last.members), "\"k\\u0065y\": null,\r\n\"x\": 1e3");
        assert_eq!(items(&first), [r#"{"input": "a"}"#]);
        assert_eq!(items(&middle), ["1"]);
        assert_eq!(items(&last), ["2"]);
        // Zero-copy when the dataset is first or last.
        let at = |sub: &Submission| sub.members.as_ptr().addr() - sub.body.as_ptr().addr();
        assert!(at(&first) < first.body.len());
        assert!(at(&last) < last.body.len());
    }

    #[test]
    fn empty_members() {
        let sub = parse(r#" { "dataset" : [ 1 , 2 ] } "#).unwrap();
        assert!(sub.members.is_empty());
        assert_eq!(
            Submission::batch_body(&sub.members, &sub.payload(0..2)),
            r#"{"dataset": [1 , 2]}"#
        );
        assert_eq!(
            Submission::batch_body(b"\"a\": 1", b"3"),
            r#"{"a": 1, "dataset": [3]}"#
        );
    }

    #[test]
    fn items_with_brackets_commas_quotes_and_nesting() {
        let body = r#"{"dataset": [
            {"input": "a], [b", "output": "\"dataset\": [1,2]", "context": ["x]", ["y", {"z": "]}"}]]},
            "plain, string ]",
            [[], {}, [[]]],
            {"dataset": [{"dataset": []}]} ,-1.5E+10,true,null,
            "\\\"]\u005d"
        ], "note": "\"dataset\": [\"not me\"]"}"#;
        let sub = parse(body).unwrap();
        assert_eq!(
            items(&sub),
            [
                r#"{"input": "a], [b", "output": "\"dataset\": [1,2]", "context": ["x]", ["y", {"z": "]}"}]]}"#,
                r#""plain, string ]""#,
                "[[], {}, [[]]]",
                r#"{"dataset": [{"dataset": []}]}"#,
                "-1.5E+10",
                "true",
                "null",
                r#""\\\"]\u005d""#,
            ]
        );
        assert_eq!(text(&sub.members), r#""note": "\"dataset\": [\"not me\"]""#);
        assert_eq!(sub.len(), 8);
        assert!(!sub.is_empty());
        assert_eq!(
            sub.item_bytes(),
            items(&sub).iter().map(|i| i.len()).sum::<usize>()
        );
        // Separators as sent inside a payload.
        assert_eq!(
            sub.payload(3..5),
            "{\"dataset\": [{\"dataset\": []}]} ,-1.5E+10"
        );
        assert_eq!(sub.payload(2..2), "");
    }

    #[test]
    fn an_escaped_dataset_key_is_the_dataset_and_lookalikes_are_not() {
        let sub = parse(r#"{"d\u0061taset": [1], "datasets": [2], "Dataset": [3]}"#).unwrap();
        assert_eq!(items(&sub), ["1"]);
        assert_eq!(text(&sub.members), r#""datasets": [2], "Dataset": [3]"#);
        assert_eq!(
            parse(r#"{"dataset": [1], "dat\u0061set": [2]}"#).unwrap_err(),
            DatasetError::DuplicateDataset
        );
    }

    #[test]
    fn every_error() {
        for bad in [
            "",
            "not json",
            r#"{"dataset": [1]"#,
            r#"{"dataset": [1,]}"#,
            "{} x",
            "{\"a\": 1,}",
        ] {
            assert!(
                matches!(parse(bad), Err(DatasetError::NotJson(_))),
                "{bad:?}"
            );
        }
        let invalid_utf8 = Submission::parse(Bytes::from_static(b"{\"dataset\": [\"\xff\"]}"));
        assert!(matches!(invalid_utf8, Err(DatasetError::NotJson(m)) if m.contains("UTF-8")));
        for scalar in ["[1]", " \"s\" ", "1", "null"] {
            assert_eq!(parse(scalar).unwrap_err(), DatasetError::NotAnObject);
        }
        assert_eq!(parse("{}").unwrap_err(), DatasetError::NoDataset);
        assert_eq!(
            parse(r#"{"trace_id": "t", "inner": {"dataset": [1]}}"#).unwrap_err(),
            DatasetError::NoDataset
        );
        assert_eq!(
            parse(r#"{"dataset": [1], "a": 1, "dataset": [2]}"#).unwrap_err(),
            DatasetError::DuplicateDataset
        );
        for value in [
            r#"{"a": [1]}"#,
            r#""[1]""#,
            "null",
            "1",
            "true",
            "-2.5",
            "{}",
        ] {
            let body = format!(r#"{{"dataset": {value}, "x": 1}}"#);
            assert_eq!(
                parse(&body).unwrap_err(),
                DatasetError::DatasetNotArray,
                "{value}"
            );
        }
        assert_eq!(
            parse(r#"{"dataset": [ ]}"#).unwrap_err(),
            DatasetError::Empty
        );
        // Items are skipped iteratively: deep nesting neither overflows the stack nor is refused.
        let deep = format!(
            r#"{{"dataset": [{}{}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(parse(&deep).unwrap().item_bytes(), 200_000);
        // Grammatical JSON that `serde_json::Value` would refuse is forwarded as sent.
        let lone = parse(r#"{"dataset": ["\uD800"]}"#).unwrap();
        assert_eq!(items(&lone), [r#""\uD800""#]);
        // Invalid JSON after an invalid dataset is still reported as invalid JSON.
        assert!(matches!(
            parse(r#"{"dataset": {}, "x": }"#),
            Err(DatasetError::NotJson(_))
        ));

        let body = Bytes::from_static(br#"{"dataset": [1], "options": [1]}"#);
        let native: Native<'_> = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            Submission::from_parts(body.clone(), native.dataset, native.options).unwrap_err(),
            DatasetError::OptionsNotObject
        );
        let body =
            Bytes::from_static(br#"{"dataset": [1], "options": {"a": 1, "d\u0061taset": []}}"#);
        let native: Native<'_> = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            Submission::from_parts(body.clone(), native.dataset, native.options).unwrap_err(),
            DatasetError::DatasetInOptions
        );
        let elsewhere = RawValue::from_string("[1]".to_owned()).unwrap();
        assert_eq!(
            Submission::from_parts(body, &elsewhere, None).unwrap_err(),
            DatasetError::Detached
        );
        assert!(matches!(
            parse_json_lines(b"{\"a\": 1}\n\n{\"a\": }\n"),
            Err(DatasetError::BadLine { line: 3, .. })
        ));
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            DatasetError::DatasetNotArray.to_string(),
            "`dataset` must be a JSON array of items"
        );
        assert_eq!(
            parse_json_lines(b"1\n  {\"a\" 1}").unwrap_err().to_string(),
            "line 2, column 8: expected `:`"
        );
    }

    #[derive(Deserialize)]
    struct Native<'a> {
        #[serde(borrow)]
        dataset: &'a RawValue,
        #[serde(borrow, default)]
        options: Option<&'a RawValue>,
    }

    fn native(body: &'static str) -> Result<Submission, DatasetError> {
        let body = Bytes::from_static(body.as_bytes());
        let native: Native<'_> = serde_json::from_slice(&body).unwrap();
        Submission::from_parts(body.clone(), native.dataset, native.options)
    }

    #[test]
    fn from_parts_takes_the_options_members_as_sent() {
        let sub = native(
            r#"{"kind": "eval", "options": { "metrics" : ["a"],
                "project_name": "caf\u00e9" }, "dataset": [ {"input": "x"},{"input": "y"} ]}"#,
        )
        .unwrap();
        assert_eq!(
            text(&sub.members),
            "\"metrics\" : [\"a\"],\n                \"project_name\": \"caf\\u00e9\""
        );
        assert_eq!(items(&sub), [r#"{"input": "x"}"#, r#"{"input": "y"}"#]);
        let batch = sub.batch(1..2);
        assert_eq!(
            serde_json::from_slice::<Value>(&batch).unwrap(),
            json!({"metrics": ["a"], "project_name": "café", "dataset": [{"input": "y"}]})
        );
        for no_options in [
            r#"{"kind": "fa", "dataset": [1]}"#,
            r#"{"kind": "fa", "dataset": [1], "options": null}"#,
            r#"{"kind": "fa", "dataset": [1], "options": { }}"#,
        ] {
            let sub = native(no_options).unwrap();
            assert!(sub.members.is_empty(), "{no_options}");
            assert_eq!(sub.batch(0..1), r#"{"dataset": [1]}"#);
        }
        assert_eq!(
            native(r#"{"dataset": {"a": 1}}"#).unwrap_err(),
            DatasetError::DatasetNotArray
        );
        assert_eq!(
            native(r#"{"dataset": []}"#).unwrap_err(),
            DatasetError::Empty
        );
        // Options that were not borrowed from the body are copied.
        let body = Bytes::from_static(br#"{"dataset": [1]}"#);
        let dataset: Native<'_> = serde_json::from_slice(&body).unwrap();
        let options = RawValue::from_string(r#"{"a":  1}"#.to_owned()).unwrap();
        let sub = Submission::from_parts(body.clone(), dataset.dataset, Some(&options)).unwrap();
        assert_eq!(sub.members, r#""a":  1"#);
    }

    #[test]
    fn batch_bodies_round_trip() {
        let body = r#"{"run_eval": true, "dataset": [{"i": 0}, {"i": "1,]"},
            {"i": 2}], "project_name": "p", "metadata": {"dataset": "no"}}"#;
        let sub = parse(body).unwrap();
        let original: Value = serde_json::from_str(body).unwrap();
        for range in [0..1, 1..3, 0..3, 2..3] {
            let batch = sub.batch(range.clone());
            let mut expected = original.clone();
            let all = expected["dataset"].as_array().unwrap().clone();
            expected["dataset"] = Value::Array(all[range.clone()].to_vec());
            assert_eq!(serde_json::from_slice::<Value>(&batch).unwrap(), expected);
            let again = Submission::parse(batch).unwrap();
            assert_eq!(items(&again), items(&sub)[range]);
            assert_eq!(again.members, sub.members);
        }
        assert_eq!(
            Submission::batch_body_len(sub.members.len(), 7),
            Submission::batch_body(&sub.members, b"1234567").len()
        );
        assert_eq!(
            Submission::batch_body_len(0, 1),
            Submission::batch_body(b"", b"1").len()
        );
    }

    fn ranges(lengths: &[usize], gap: usize) -> Vec<Range<usize>> {
        let mut at = 1;
        lengths
            .iter()
            .map(|len| {
                let r = at..at + len;
                at += len + gap;
                r
            })
            .collect()
    }

    #[test]
    fn split_examples() {
        let limits = |max_items, max_bytes| BatchLimits {
            max_items,
            max_bytes,
        };
        let items = ranges(&[10, 10, 10, 10, 10], 2);
        // Payload bytes include the separators: 2 items = 22 bytes.
        assert_eq!(split(&items, limits(10, 22)), [0..2, 2..4, 4..5]);
        assert_eq!(
            split(&items, limits(10, 21)),
            [0..1, 1..2, 2..3, 3..4, 4..5]
        );
        assert_eq!(split(&items, limits(3, 1000)), [0..3, 3..5]);
        assert_eq!(
            split(&items, limits(0, 1000)),
            [0..1, 1..2, 2..3, 3..4, 4..5]
        );
        let whole = split(&items, limits(100, 1000));
        assert_eq!((whole.len(), &whole[0]), (1, &(0..5)));
        // An oversize item goes alone; its neighbours are batched normally.
        let items = ranges(&[5, 50, 5, 5], 1);
        assert_eq!(split(&items, limits(10, 11)), [0..1, 1..2, 2..4]);
        assert_eq!(split(&items, limits(10, 0)), [0..1, 1..2, 2..3, 3..4]);
        assert!(split(&[], limits(10, 10)).is_empty());
    }

    #[test]
    fn json_lines_and_arrays() {
        let out = parse_json_lines(
            b"\xEF\xBB\xBF{\"input\": \"a\\u00e9\"}\r\n\n   \n  [1, 2]  \r\n\"s\"\n\t{}",
        )
        .unwrap();
        assert_eq!(out, "[{\"input\": \"a\\u00e9\"},\n[1, 2],\n\"s\",\n{}]");
        assert_eq!(
            parse_json_lines(b"\n [ {\"a\": 1},\n  {\"a\": 2} ]\n").unwrap(),
            "[ {\"a\": 1},\n  {\"a\": 2} ]"
        );
        assert_eq!(
            parse_json_lines(b"[1]\n[2, 3]\n").unwrap(),
            "[[1],\n[2, 3]]"
        );
        let round = Submission::parse(Submission::batch_body(
            b"",
            &parse_json_lines(b"1\n2").unwrap()[1..5],
        ))
        .unwrap();
        assert_eq!(round.len(), 2);
        assert_eq!(parse_json_lines(b"").unwrap_err(), DatasetError::Empty);
        assert_eq!(
            parse_json_lines(b" \n\r\n").unwrap_err(),
            DatasetError::Empty
        );
        assert_eq!(parse_json_lines(b" [ ] ").unwrap_err(), DatasetError::Empty);
        assert_eq!(
            parse_json_lines(b"{}\n{} {}\n"),
            Err(DatasetError::BadLine {
                line: 2,
                column: 4,
                message: "trailing characters".to_owned()
            })
        );
        assert_eq!(
            parse_json_lines(b"1\n\"\xff\""),
            Err(DatasetError::BadLine {
                line: 2,
                column: 2,
                message: "invalid UTF-8".to_owned()
            })
        );
        // A broken pretty-printed array reports the array's own error, not "line 1".
        assert!(matches!(
            parse_json_lines(b"[\n  {\"a\": 1},\n  {\"a\" 2}\n]"),
            Err(DatasetError::NotJson(m)) if m.contains("line 3")
        ));
    }

    // ---- properties ----

    fn ws() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just(" "), Just("\t"), Just("\n"), Just("\r\n")],
            0..3,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A JSON string literal with random escaping of random (often JSON-special) characters.
    fn json_string() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            4 => any::<char>(),
            1 => prop_oneof![Just(']'), Just('['), Just(','), Just('"'), Just('\\'), Just('{'), Just('}'), Just('\n'), Just('é'), Just('😀')],
        ];
        proptest::collection::vec((ch, 0_u8..3), 0..10).prop_map(|chars| {
            let mut out = String::from("\"");
            for (c, style) in chars {
                match (c, style) {
                    ('"', _) => out.push_str("\\\""),
                    ('\\', _) => out.push_str("\\\\"),
                    ('\n', 0) => out.push_str("\\n"),
                    (c, _) if u32::from(c) < 0x20 => {
                        write!(out, "\\u{:04x}", u32::from(c)).unwrap();
                    }
                    (c, 1) => {
                        let mut units = [0_u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            write!(out, "\\u{unit:04X}").unwrap();
                        }
                    }
                    (c, _) => out.push(c),
                }
            }
            out.push('"');
            out
        })
    }

    fn json_item() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("-0.5e-3".to_owned()),
            Just("1E+2".to_owned()),
            json_string(),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec((ws(), inner.clone(), ws()), 0..4).prop_map(|parts| {
                    let parts: Vec<String> = parts
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    format!("[{}]", parts.join(","))
                }),
                proptest::collection::vec((json_string(), ws(), inner, ws()), 0..4).prop_map(
                    |parts| {
                        let parts: Vec<String> = parts
                            .into_iter()
                            .map(|(k, a, v, b)| format!("{a}{k}{b}:{a}{v}{b}"))
                            .collect();
                        format!("{{{}}}", parts.join(","))
                    }
                ),
            ]
        })
    }

    /// A submit body: members around a dataset at a random position, and what it was built from.
    #[derive(Debug)]
    struct Case {
        body: String,
        members: Vec<String>,
        items: Vec<String>,
    }

    fn case() -> impl Strategy<Value = Case> {
        let member = (json_item(), ws(), ws());
        (
            proptest::collection::vec(member, 0..4),
            proptest::collection::vec((ws(), json_item(), ws()), 1..30),
            any::<prop::sample::Index>(),
            ws(),
        )
            .prop_map(|(members, items, position, outer)| {
                let members: Vec<String> = members
                    .into_iter()
                    .enumerate()
                    .map(|(i, (value, a, b))| format!("\"m{i}\\u00e9\"{a}:{b}{value}"))
                    .collect();
                let dataset = format!(
                    "\"dataset\"{outer}:{outer}[{}]",
                    items
                        .iter()
                        .map(|(a, item, b)| format!("{a}{item}{b}"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let mut all = members.clone();
                all.insert(position.index(members.len() + 1), dataset);
                let body = format!(
                    "{outer}{{{outer}{}{outer}}}{outer}",
                    all.join(&format!("{outer},{outer}"))
                );
                Case {
                    body,
                    members,
                    items: items.into_iter().map(|(_, item, _)| item).collect(),
                }
            })
    }

    proptest! {
        #[test]
        fn batches_are_exact_and_within_limits(
            case in case(),
            max_items in 1_usize..8,
            max_bytes in 0_usize..400,
        ) {
            let sub = parse(&case.body).unwrap();
            prop_assert_eq!(items(&sub), case.items.iter().map(String::as_str).collect::<Vec<_>>());

            // The members are the other members, in order, exactly as sent.
            let mut rest = text(&sub.members);
            for member in &case.members {
                let at = rest.find(member.as_str());
                prop_assert!(at.is_some(), "{:?} not in {:?}", member, rest);
                rest = &rest[at.unwrap_or(0) + member.len()..];
            }
            let mut expected: Value = serde_json::from_str(&case.body).unwrap();
            expected.as_object_mut().unwrap().remove(DATASET);
            let members: Value = serde_json::from_str(&format!("{{{}}}", text(&sub.members))).unwrap();
            prop_assert_eq!(members, expected);

            let limits = BatchLimits { max_items, max_bytes };
            let batches = split(&sub.items, limits);
            let mut next = 0;
            let mut rejoined = Vec::new();
            for (n, batch) in batches.iter().enumerate() {
                prop_assert_eq!(batch.start, next);
                prop_assert!(batch.start < batch.end, "empty batch");
                next = batch.end;
                let payload = sub.payload(batch.clone());
                prop_assert!(batch.len() <= max_items);
                prop_assert!(payload.len() <= max_bytes || batch.len() == 1, "{} bytes", payload.len());
                // Greedy: the next item would not have fitted.
                if let Some(following) = sub.items.get(batch.end).filter(|_| n + 1 < batches.len()) {
                    prop_assert!(
                        batch.len() == max_items || following.end - sub.items[batch.start].start > max_bytes
                    );
                }
                let body = Submission::batch_body(&sub.members, &payload);
                let again = Submission::parse(body).unwrap();
                prop_assert_eq!(items(&again), items(&sub)[batch.clone()].to_vec());
                prop_assert_eq!(&again.members, &sub.members);
                rejoined.extend(again.items.iter().map(|r| again.body[r.clone()].to_vec()));
            }
            prop_assert_eq!(next, sub.len());
            let original: Vec<Vec<u8>> = case.items.iter().map(|i| i.as_bytes().to_vec()).collect();
            prop_assert_eq!(rejoined, original);
        }

        /// Damaged bodies never panic, and whatever `parse` accepts is valid JSON (grammatically:
        /// like Python's `json`, a lone surrogate escape such as `"\uD800"` is accepted and
        /// forwarded, although `serde_json::Value` would refuse it).
        #[test]
        fn damaged_bodies_are_rejected_cleanly(
            case in case(),
            at in any::<prop::sample::Index>(),
            damage in prop_oneof![Just(None), any::<u8>().prop_map(Some)],
            replace in any::<bool>(),
        ) {
            let mut body = case.body.into_bytes();
            let at = at.index(body.len());
            match (damage, replace) {
                (None, _) => { body.remove(at); }
                (Some(byte), true) => body[at] = byte,
                (Some(byte), false) => body.insert(at, byte),
            }
            let valid = serde_json::from_slice::<IgnoredAny>(&body).is_ok();
            if let Ok(sub) = Submission::parse(Bytes::from(body)) {
                prop_assert!(valid);
                let first = sub.split(BatchLimits { max_items: 1, max_bytes: 0 });
                prop_assert!(Submission::parse(sub.batch(first[0].clone())).is_ok());
            }
        }

        #[test]
        fn json_lines_keep_every_item(values in proptest::collection::vec(json_item(), 1..20)) {
            // A lone array line is the array itself (covered by `json_lines_and_arrays`).
            prop_assume!(values.len() > 1 || !values[0].starts_with('['));
            let lines: Vec<String> = values.iter().map(|i| i.replace(['\n', '\r'], " ")).collect();
            let array = parse_json_lines(lines.join("\n").as_bytes()).unwrap();
            let sub = Submission::parse(Submission::batch_body(b"", &array[1..array.len() - 1])).unwrap();
            prop_assert_eq!(items(&sub), lines.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
