//! Merge rules: batch results combined into one result in the upstream's own shape.
//!
//! evalgate splits an oversize dataset into batches, submits each batch upstream and merges the
//! completed batches' results back into **one** result, in the shape the upstream itself returns
//! for that kind (`FARunResult`, `EvaluationResult`, `SecurityAuditResult`; `valiqor-api.md`
//! §4.2-4.4), in the original dataset order. [`merge_with_section`] is pure and CPU-bound (bytes
//! in, the merged JSON bytes out); call it from a blocking context for large jobs.
//!
//! The big per-item lists (`failure_tags`, `inputs`, `details`) never become `serde_json::Value`
//! trees: each entry is scanned once, borrowing its field values as raw JSON text, for its
//! `item_index` and the few fields the summary needs, and is then copied into the output byte for
//! byte with only its `item_index` rewritten. Every other field of a batch (summaries, metrics,
//! flags, scalars) is small and is read into a `Value`. The output is written top-level keys in
//! sorted order (the order of a `serde_json::Map`); unions and tallies use hash indexes (linear
//! time).
use std::{
    borrow::Cow,
    cmp::Ordering,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, value::RawValue};

use crate::jobs::JobKind;

/// One completed batch: where its items sit in the original dataset, and the upstream's result
/// JSON for it.
#[derive(Debug, Clone, Copy)]
pub struct BatchResult<'a> {
    /// Position of the batch's first item in the original dataset.
    pub item_start: usize,
    /// Number of dataset items the batch covers.
    pub item_count: usize,
    /// The upstream's result body for the batch (a JSON object).
    pub result: &'a [u8],
}

/// Facts about the whole job the merged result needs.
#[derive(Debug, Clone)]
pub struct MergeContext<'a> {
    /// Written as the merged result's `run_id` / `batch_id` (and the other ids, per kind).
    pub job_id: &'a str,
    /// Items covered by the batches being merged: the sum of their `item_count`, which is less
    /// than the dataset size when some batches failed. [`merge`] checks it.
    pub total_items: usize,
    /// The job's wall time, written as `duration_ms`.
    pub duration_ms: u64,
}

/// Why batches could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("there is no completed batch to merge")]
    NoBatches,
    #[error("the merge context counts {expected} items but the batches cover {actual}")]
    ItemCount { expected: usize, actual: usize },
    #[error("the batches starting at items {first} and {second} overlap")]
    Overlap { first: usize, second: usize },
    #[error("the result of the batch starting at item {item_start} is not valid JSON")]
    InvalidJson {
        item_start: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("the result of the batch starting at item {item_start} is malformed: {problem}")]
    Malformed {
        item_start: usize,
        problem: BatchProblem,
    },
    /// Only from [`merge`]: the merged bytes could not be read back into a `Value` (a copied
    /// entry holds a number `serde_json` cannot represent, such as `1e400`).
    #[error("the merged result cannot be represented as a JSON value")]
    Output {
        #[source]
        source: serde_json::Error,
    },
}

/// What is wrong with one batch's result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchProblem {
    #[error("it is a JSON {found}, not an object")]
    NotAnObject { found: &'static str },
    #[error("`{field}` is a JSON {found}, expected {expected}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`{field}[{position}]` is a JSON {found}, expected an object")]
    EntryType {
        field: &'static str,
        position: usize,
        found: &'static str,
    },
    #[error("`{field}[{position}].item_index` is not a non-negative integer")]
    BadItemIndex {
        field: &'static str,
        position: usize,
    },
    #[error("`{field}[{position}].item_index` is {index}, outside the batch's {count} items")]
    ItemIndexOutOfRange {
        field: &'static str,
        position: usize,
        index: u64,
        count: usize,
    },
}

/// Merges completed batches (any order in the slice; sorted by `item_start`) into one result and
/// returns it as a `Value`.
///
/// A convenience over [`merge_with_section`] (it reads the merged bytes back); large merges
/// should use that and keep the bytes.
pub fn merge(
    kind: JobKind,
    batches: &[BatchResult<'_>],
    ctx: &MergeContext<'_>,
) -> Result<Value, MergeError> {
    let bytes = merge_with_section(kind, batches, ctx, None)?;
    serde_json::from_slice(&bytes).map_err(|source| MergeError::Output { source })
}

/// Merges completed batches (any order in the slice; sorted by `item_start`) into one result,
/// written as JSON bytes.
///
/// The result is the upstream's shape for `kind`, with `run_id` / `batch_id` = `ctx.job_id` and
/// `status` `"completed"`; the module documentation lists every rule. `section`, when given, is
/// written as one more top-level field (replacing a batch field of that name), so a caller can
/// add its own object without reading the result back.
pub fn merge_with_section(
    kind: JobKind,
    batches: &[BatchResult<'_>],
    ctx: &MergeContext<'_>,
    section: Option<(&str, &Value)>,
) -> Result<Bytes, MergeError> {
    // Each batch is parsed and folded in before the next is parsed, while its data is in cache.
    let order = plan(batches, ctx)?;
    let lists: &'static [&'static str] = match kind {
        JobKind::FailureAnalysis => &["failure_tags", "inputs"],
        JobKind::Evaluation => &[],
        JobKind::SecurityAudit => &["details"],
    };
    let mut parsed = order.iter().map(|b| parse_batch(b, lists));
    let merged = match kind {
        JobKind::FailureAnalysis => {
            let mut acc = FaMerge::default();
            parsed.try_for_each(|batch| acc.add(batch?))?;
            acc.finish(ctx)
        }
        JobKind::Evaluation => {
            let mut acc = EvalMerge::default();
            parsed.try_for_each(|batch| batch.map(|b| acc.add(b)))?;
            acc.finish(ctx)
        }
        JobKind::SecurityAudit => {
            let mut acc = SecurityMerge::default();
            parsed.try_for_each(|batch| acc.add(batch?))?;
            acc.finish(ctx)
        }
    };
    merged.write(section).map(Bytes::from)
}

// === batches ===

/// A parsed batch result: its big lists as raw JSON, every other field as a `Value`.
#[derive(Debug)]
struct Batch<'a> {
    start: usize,
    count: usize,
    obj: Map<String, Value>,
    lists: Vec<(&'static str, &'a RawValue)>,
}

/// Sorts the batches by `item_start` and checks their ranges and the item total.
fn plan<'a>(
    batches: &[BatchResult<'a>],
    ctx: &MergeContext<'_>,
) -> Result<Vec<BatchResult<'a>>, MergeError> {
    if batches.is_empty() {
        return Err(MergeError::NoBatches);
    }
    let mut sorted = batches.to_vec();
    sorted.sort_by_key(|b| (b.item_start, b.item_count));
    for pair in sorted.windows(2) {
        let [a, b] = pair else { continue };
        if a.item_start.saturating_add(a.item_count) > b.item_start {
            return Err(MergeError::Overlap {
                first: a.item_start,
                second: b.item_start,
            });
        }
    }
    let actual = sorted
        .iter()
        .fold(0usize, |n, b| n.saturating_add(b.item_count));
    if actual != ctx.total_items {
        return Err(MergeError::ItemCount {
            expected: ctx.total_items,
            actual,
        });
    }
    Ok(sorted)
}

/// Parses a batch result, keeping the top-level fields named in `lists` as raw JSON.
fn parse_batch<'a>(
    b: &BatchResult<'a>,
    lists: &'static [&'static str],
) -> Result<Batch<'a>, MergeError> {
    let invalid = |source| MergeError::InvalidJson {
        item_start: b.item_start,
        source,
    };
    if b.result.iter().find(|c| !is_ws(**c)) != Some(&b'{') {
        // Not an object (or not JSON): the rare path can afford a full parse for the message.
        return Err(match serde_json::from_slice::<Value>(b.result) {
            Ok(other) => MergeError::Malformed {
                item_start: b.item_start,
                problem: BatchProblem::NotAnObject {
                    found: json_type(&other),
                },
            },
            Err(source) => invalid(source),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(b.result);
    let (obj, raw) = TopLevel { lists }
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(invalid)?;
    Ok(Batch {
        start: b.item_start,
        count: b.item_count,
        obj,
        lists: raw,
    })
}

/// Reads a JSON object: the fields named in `lists` as raw JSON, the others as `Value`s.
#[derive(Debug, Clone, Copy)]
struct TopLevel {
    lists: &'static [&'static str],
}

type TopFields<'a> = (Map<String, Value>, Vec<(&'static str, &'a RawValue)>);

impl<'de> DeserializeSeed<'de> for TopLevel {
    type Value = TopFields<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = TopFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut obj = Map::new();
        let mut raw: Vec<(&'static str, &'de RawValue)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if let Some(&name) = self.lists.iter().find(|name| **name == key) {
                let value: &'de RawValue = map.next_value()?;
                // A repeated key: the last one wins, as in a `Map`.
                match raw.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = value,
                    None => raw.push((name, value)),
                }
            } else {
                let value: Value = map.next_value()?;
                obj.insert(key, value);
            }
        }
        Ok((obj, raw))
    }
}

// === impl Batch ===

impl<'a> Batch<'a> {
    fn malformed(&self, problem: BatchProblem) -> MergeError {
        MergeError::Malformed {
            item_start: self.start,
            problem,
        }
    }

    fn invalid(&self, source: serde_json::Error) -> MergeError {
        MergeError::InvalidJson {
            item_start: self.start,
            source,
        }
    }

    /// The batch's item count as a counter.
    fn items(&self) -> u64 {
        to_u64(self.count)
    }

    /// The batch's item count as a mean weight.
    fn weight(&self) -> f64 {
        as_weight(self.items())
    }

    fn count_field(&self, key: &str) -> Option<u64> {
        self.obj.get(key).and_then(as_count)
    }

    /// Moves an object out of the result (absent or null → empty).
    fn take_object(&mut self, field: &'static str) -> Result<Map<String, Value>, MergeError> {
        match self.obj.remove(field) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map),
            Some(other) => Err(self.malformed(BatchProblem::FieldType {
                field,
                expected: "object",
                found: json_type(&other),
            })),
        }
    }

    /// Scans the list `field` (absent or null → empty): checks every entry, works out how its
    /// batch-local `item_index` becomes the original dataset's index, and calls `each` with the
    /// entry's `wanted` fields (in `wanted`'s order).
    ///
    /// With `positional`, an entry without one gets its position in the list (remapped).
    fn scan(
        &self,
        field: &'static str,
        positional: bool,
        wanted: &[&str],
        each: &mut dyn FnMut(&Wanted<'a>) -> Result<(), serde_json::Error>,
    ) -> Result<Vec<Entry<'a>>, MergeError> {
        let Some(&(_, raw)) = self.lists.iter().find(|(name, _)| *name == field) else {
            return Ok(Vec::new());
        };
        match raw.get().as_bytes().first() {
            Some(b'n') => return Ok(Vec::new()),
            Some(b'[') => {}
            _ => {
                return Err(self.malformed(BatchProblem::FieldType {
                    field,
                    expected: "array",
                    found: raw_type(raw),
                }));
            }
        }
        let text = raw.get();
        let mut scan = ListScan {
            batch: self,
            field,
            positional,
            wanted,
            text,
            each,
            entries: Vec::new(),
            problem: None,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let outcome = de.deserialize_seq(&mut scan);
        if let Some(problem) = scan.problem {
            return Err(problem);
        }
        outcome.map_err(|e| self.invalid(e))?;
        Ok(scan.entries)
    }

    /// Where a list entry's `item_index` goes, given the value it has (`None`: no such key).
    fn place(
        &self,
        field: &'static str,
        position: usize,
        positional: bool,
        index: Option<&RawValue>,
    ) -> Result<Option<u64>, MergeError> {
        let index = index.filter(|raw| raw.get() != "null");
        let local = match index {
            None if positional => to_u64(position),
            None => return Ok(None),
            Some(raw) => raw_count(raw)
                .map_err(|e| self.invalid(e))?
                .ok_or_else(|| self.malformed(BatchProblem::BadItemIndex { field, position }))?,
        };
        if local >= self.items() {
            return Err(self.malformed(BatchProblem::ItemIndexOutOfRange {
                field,
                position,
                index: local,
                count: self.count,
            }));
        }
        Ok(Some(to_u64(self.start).saturating_add(local)))
    }
}

/// The most fields a list scan reads from each entry.
const MAX_WANTED: usize = 7;

/// The values of the fields a scan wants from one entry (raw JSON, borrowed from the batch).
type Wanted<'a> = [Option<&'a RawValue>; MAX_WANTED];

/// One entry of a merged list: its text (borrowed from the batch) and how its `item_index` is
/// rewritten on output.
#[derive(Debug)]
struct Entry<'a> {
    text: Cow<'a, str>,
    patch: Patch,
}

#[derive(Debug, Clone, Copy)]
enum Patch {
    /// Copied unchanged.
    Keep,
    /// The bytes `at .. at + len` (the old `item_index` value) become `index`.
    Replace { at: usize, len: usize, index: u64 },
    /// `"item_index":index` is inserted after the opening brace.
    Insert { index: u64 },
}

impl Entry<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let text = self.text.as_bytes();
        match self.patch {
            Patch::Keep => out.extend_from_slice(text),
            Patch::Replace { at, len, index } => {
                let (head, rest) = text.split_at_checked(at).unwrap_or((text, &[]));
                out.extend_from_slice(head);
                push_u64(out, index);
                out.extend_from_slice(rest.get(len..).unwrap_or_default());
            }
            Patch::Insert { index } => {
                let body = text.get(1..).unwrap_or_default();
                out.extend_from_slice(b"{\"item_index\":");
                push_u64(out, index);
                if body.iter().find(|c| !is_ws(**c)) != Some(&b'}') {
                    out.push(b',');
                }
                out.extend_from_slice(body);
            }
        }
    }
}

/// A one-pass scan of a list's entries (the seq visitor; each entry is read by [`EntryScan`]).
struct ListScan<'s, 'a> {
    batch: &'s Batch<'a>,
    field: &'static str,
    positional: bool,
    wanted: &'s [&'s str],
    /// The list's JSON text (every raw value of the scan points into it).
    text: &'a str,
    each: &'s mut dyn FnMut(&Wanted<'a>) -> Result<(), serde_json::Error>,
    entries: Vec<Entry<'a>>,
    /// A merge error that stopped the scan (the deserializer sees a placeholder error).
    problem: Option<MergeError>,
}

impl ListScan<'_, '_> {
    fn stop<E: de::Error>(&mut self, problem: MergeError) -> E {
        self.problem = Some(problem);
        E::custom("merge error")
    }
}

impl<'a> Visitor<'a> for &mut ListScan<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
        let bytes = self.text.as_bytes();
        let base = self.text.as_ptr() as usize;
        // Entries are contiguous: each starts after the previous one (or the `[`), past
        // whitespace and a comma, and ends at the `}` after its last value.
        let mut cursor = 1;
        let mut position = 0;
        while let Some(scanned) = seq.next_element_seed(EntryScan {
            wanted: self.wanted,
        })? {
            let scanned = match scanned {
                Ok(scanned) => scanned,
                Err(found) => {
                    let problem = self.batch.malformed(BatchProblem::EntryType {
                        field: self.field,
                        position,
                        found,
                    });
                    return Err(self.stop(problem));
                }
            };
            let start = skip(bytes, cursor, |c| is_ws(c) || c == b',');
            let after = match scanned.last_end {
                Some(end) => end.wrapping_sub(base),
                None => start.saturating_add(1),
            };
            let close = skip(bytes, after, is_ws);
            if bytes.get(start) != Some(&b'{') || bytes.get(close) != Some(&b'}') {
                return Err(de::Error::custom("an entry's bounds were not found"));
            }
            let end = close + 1;
            cursor = end;
            let text = self.text.get(start..end).unwrap_or_default();
            let entry = if scanned.index_keys > 1 {
                // A repeated `item_index` (the last one counts): rare, so read into a `Value`.
                match self.remap_value(text, position) {
                    Ok(entry) => entry,
                    Err(problem) => return Err(self.stop(problem)),
                }
            } else {
                let placed = self
                    .batch
                    .place(self.field, position, self.positional, scanned.index);
                let patch = match (placed, scanned.index) {
                    (Err(problem), _) => return Err(self.stop(problem)),
                    (Ok(None), _) => Patch::Keep,
                    (Ok(Some(index)), None) => Patch::Insert { index },
                    (Ok(Some(index)), Some(raw)) => Patch::Replace {
                        at: (raw.get().as_ptr() as usize).wrapping_sub(base + start),
                        len: raw.get().len(),
                        index,
                    },
                };
                Entry {
                    text: Cow::Borrowed(text),
                    patch,
                }
            };
            if let Err(e) = (self.each)(&scanned.wanted) {
                let problem = self.batch.invalid(e);
                return Err(self.stop(problem));
            }
            self.entries.push(entry);
            position += 1;
        }
        Ok(())
    }
}

impl<'a> ListScan<'_, 'a> {
    /// Remaps an entry through a `Value` (for entries the byte splice does not cover).
    fn remap_value(&self, text: &str, position: usize) -> Result<Entry<'a>, MergeError> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| self.batch.invalid(e))?;
        let index = match &value {
            Value::Object(obj) => obj.get("item_index").map(Value::to_string),
            _ => None,
        };
        let raw = index
            .map(RawValue::from_string)
            .transpose()
            .map_err(|e| self.batch.invalid(e))?;
        let placed = self
            .batch
            .place(self.field, position, self.positional, raw.as_deref())?;
        if let (Some(index), Value::Object(obj)) = (placed, &mut value) {
            obj.insert("item_index".to_owned(), Value::from(index));
        }
        Ok(Entry {
            text: Cow::Owned(value.to_string()),
            patch: Patch::Keep,
        })
    }
}

/// One list entry, read in one pass: its `item_index` and wanted fields as raw JSON.
#[derive(Debug)]
struct Scanned<'a> {
    /// The last `item_index` value, and how many `item_index` keys there were.
    index: Option<&'a RawValue>,
    index_keys: usize,
    /// The wanted fields (a repeated key: the last one wins, as in a `Map`).
    wanted: Wanted<'a>,
    /// The address just past the entry's last value (`None` for `{}`).
    last_end: Option<usize>,
}

/// Reads one entry; `Err` holds the JSON type of an entry that is not an object.
#[derive(Clone, Copy)]
struct EntryScan<'w> {
    wanted: &'w [&'w str],
}

impl<'de> DeserializeSeed<'de> for EntryScan<'_> {
    type Value = Result<Scanned<'de>, &'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntryScan<'_> {
    type Value = Result<Scanned<'de>, &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut scanned = Scanned {
            index: None,
            index_keys: 0,
            wanted: [None; MAX_WANTED],
            last_end: None,
        };
        while let Some(key) = map.next_key_seed(KeyScan(self.wanted))? {
            let value: &'de RawValue = map.next_value()?;
            match key {
                Key::Index => {
                    scanned.index = Some(value);
                    scanned.index_keys += 1;
                }
                Key::Wanted(i) => {
                    if let Some(slot) = scanned.wanted.get_mut(i) {
                        *slot = Some(value);
                    }
                }
                Key::Other => {}
            }
            scanned.last_end = Some(value.get().as_ptr() as usize + value.get().len());
        }
        Ok(Ok(scanned))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("array"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("string"))
    }
}

/// Which field of an entry a key names.
#[derive(Debug, Clone, Copy)]
enum Key {
    Index,
    Wanted(usize),
    Other,
}

/// Reads an entry's key.
#[derive(Clone, Copy)]
struct KeyScan<'w>(&'w [&'w str]);

impl<'de> DeserializeSeed<'de> for KeyScan<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeyScan<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(if key == "item_index" {
            Key::Index
        } else {
            self.0
                .iter()
                .position(|w| *w == key)
                .map_or(Key::Other, Key::Wanted)
        })
    }
}

// === output ===

/// A merged result: its small fields, and its big lists as per-batch entries.
#[derive(Debug, Default)]
struct Merged<'a> {
    fields: Map<String, Value>,
    lists: Vec<(&'static str, Vec<Vec<Entry<'a>>>)>,
}

/// One top-level field of the output.
enum Piece<'m, 'a> {
    Value(&'m Value),
    List(&'m [Vec<Entry<'a>>]),
}

impl Merged<'_> {
    /// Writes the result as one JSON object, keys in sorted order; `section` is one more field.
    fn write(self, section: Option<(&str, &Value)>) -> Result<Vec<u8>, MergeError> {
        let output = |source| MergeError::Output { source };
        let mut fields: Vec<(&str, Piece<'_, '_>)> = Vec::with_capacity(self.fields.len() + 4);
        let taken = |key: &str| {
            section.is_some_and(|(name, _)| name == key)
                || self.lists.iter().any(|(name, _)| *name == key)
        };
        for (key, value) in &self.fields {
            if !taken(key) {
                fields.push((key, Piece::Value(value)));
            }
        }
        for (name, parts) in &self.lists {
            if section.is_none_or(|(key, _)| key != *name) {
                fields.push((name, Piece::List(parts)));
            }
        }
        if let Some((key, value)) = section {
            fields.push((key, Piece::Value(value)));
        }
        fields.sort_by(|a, b| a.0.cmp(b.0));

        let list_bytes: usize = self
            .lists
            .iter()
            .flat_map(|(_, parts)| parts)
            .flatten()
            .map(|e| e.text.len() + 24)
            .sum();
        let mut out = Vec::with_capacity(list_bytes + 64 * 1024);
        out.push(b'{');
        for (i, (key, piece)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, key).map_err(output)?;
            out.push(b':');
            match piece {
                Piece::Value(value) => serde_json::to_writer(&mut out, value).map_err(output)?,
                Piece::List(parts) => {
                    out.push(b'[');
                    for (j, entry) in parts.iter().flatten().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        entry.write(&mut out);
                    }
                    out.push(b']');
                }
            }
        }
        out.push(b'}');
        Ok(out)
    }
}

// === failure analysis ===

const FA_COUNTS: [&str; 5] = [
    "total_failures_detected",
    "total_passes",
    "total_uncertain",
    "items_with_failures",
    "items_all_passed",
];
const FA_FLAGS: [&str; 3] = ["should_alert", "should_gate_ci", "needs_human_review"];

/// The tag fields the summary reads, in [`Wanted`] order.
const TAG_FIELDS: [&str; 4] = ["decision", "severity", "subcategory_id", "subcategory_name"];

/// Running state of a failure-analysis merge.
#[derive(Debug, Default)]
struct FaMerge<'a> {
    /// The first batch's remaining fields and its summary.
    base: Option<(Map<String, Value>, Map<String, Value>)>,
    tags: Vec<Vec<Entry<'a>>>,
    inputs: Vec<Vec<Entry<'a>>>,
    counts: [u64; 5],
    summary_total: u64,
    severity: MaxNumber,
    confidence: WeightedMean,
    failures: FailureTally,
    buckets: OrderedUnion,
    flags: [bool; 3],
    detectors_run: OrderedUnion,
    detectors_skipped: OrderedUnion,
    tokens_used: u64,
    total_items: u64,
    eval_metrics: MeanMap,
    security_flags: Value,
    completed_at: Latest,
}

impl<'a> FaMerge<'a> {
    fn add(&mut self, mut batch: Batch<'a>) -> Result<(), MergeError> {
        let mut any_failing = false;
        let tags = batch.scan("failure_tags", false, &TAG_FIELDS, &mut |tag| {
            any_failing |= Self::add_tag(&mut self.severity, &mut self.failures, tag)?;
            Ok(())
        })?;
        let inputs = batch.scan("inputs", true, &[], &mut |_| Ok(()))?;
        let summary = batch.take_object("summary")?;

        self.add_summary(&summary, &batch, any_failing);
        self.tags.push(tags);
        self.inputs.push(inputs);

        let obj = &batch.obj;
        self.detectors_run.extend(obj.get("detectors_run"));
        self.detectors_skipped.extend(obj.get("detectors_skipped"));
        self.tokens_used = self
            .tokens_used
            .saturating_add(batch.count_field("tokens_used").unwrap_or(0));
        self.total_items = self.total_items.saturating_add(
            batch
                .count_field("total_items")
                .unwrap_or_else(|| batch.items()),
        );
        self.eval_metrics
            .add(obj.get("eval_metrics"), batch.weight());
        self.completed_at.add(obj.get("completed_at"));
        if let Some(flags) = batch.obj.remove("security_flags") {
            merge_loose(&mut self.security_flags, flags);
        }
        if self.base.is_none() {
            self.base = Some((batch.obj, summary));
        }
        Ok(())
    }

    /// Reads one tag (its [`TAG_FIELDS`]); true when it is failing.
    fn add_tag(
        severity_max: &mut MaxNumber,
        failures: &mut FailureTally,
        [decision, severity, id, name, ..]: &Wanted<'_>,
    ) -> Result<bool, serde_json::Error> {
        let failing = decision
            .and_then(raw_str)
            .is_some_and(|d| d.eq_ignore_ascii_case("fail"));
        if !failing {
            return Ok(false);
        }
        let severity: Option<Value> = severity.map(raw_value).transpose()?;
        severity_max.add(severity.as_ref());
        if let Some(id) = id.and_then(raw_str) {
            let severity = severity.as_ref().and_then(Value::as_f64).unwrap_or(0.0);
            failures.add(&id, || name.and_then(|n| raw_value(n).ok()), severity, 1);
        }
        Ok(true)
    }

    fn add_summary(&mut self, summary: &Map<String, Value>, batch: &Batch<'_>, any_failing: bool) {
        for (sum, key) in self.counts.iter_mut().zip(FA_COUNTS) {
            *sum = sum.saturating_add(summary.get(key).and_then(as_count).unwrap_or(0));
        }
        self.summary_total = self.summary_total.saturating_add(
            summary
                .get("total_items")
                .and_then(as_count)
                .unwrap_or_else(|| batch.items()),
        );
        self.severity.add(summary.get("overall_severity"));
        if let Some(confidence) = summary.get("overall_confidence") {
            self.confidence.add(confidence, batch.weight());
        }
        self.buckets.extend(summary.get("buckets_affected"));
        for (flag, key) in self.flags.iter_mut().zip(FA_FLAGS) {
            *flag |= summary.get(key).and_then(Value::as_bool).unwrap_or(false);
        }
        if !any_failing && let Some(id) = summary.get("primary_failure").and_then(Value::as_str) {
            let severity = summary
                .get("overall_severity")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let count = summary
                .get("total_failures_detected")
                .and_then(as_count)
                .unwrap_or(0)
                .max(1);
            self.failures.add(
                id,
                || summary.get("primary_failure_name").cloned(),
                severity,
                count,
            );
        }
    }

    fn finish(self, ctx: &MergeContext<'_>) -> Merged<'a> {
        let (mut out, mut summary) = self.base.unwrap_or_default();
        for (key, sum) in FA_COUNTS.into_iter().zip(self.counts) {
            put(&mut summary, key, sum);
        }
        put(&mut summary, "total_items", self.summary_total);
        put(
            &mut summary,
            "overall_severity",
            self.severity
                .into_value()
                .unwrap_or_else(|| Value::from(0.0)),
        );
        put(
            &mut summary,
            "overall_confidence",
            self.confidence.value().unwrap_or_else(|| Value::from(0.0)),
        );
        let (primary, primary_name) = self
            .failures
            .primary()
            .map_or((Value::Null, Value::Null), |e| {
                (Value::from(e.id.as_str()), e.name.clone())
            });
        put(&mut summary, "primary_failure", primary);
        put(&mut summary, "primary_failure_name", primary_name);
        put(&mut summary, "buckets_affected", self.buckets.items);
        for (key, flag) in FA_FLAGS.into_iter().zip(self.flags) {
            put(&mut summary, key, flag);
        }

        let skipped: Vec<Value> = self
            .detectors_skipped
            .items
            .into_iter()
            .filter(|d| !self.detectors_run.contains(d))
            .collect();
        put(&mut out, "run_id", ctx.job_id);
        put(&mut out, "status", "completed");
        put(&mut out, "summary", summary);
        put(&mut out, "eval_metrics", self.eval_metrics.finish());
        let flags = match self.security_flags {
            Value::Null => Value::Object(Map::new()),
            flags => flags,
        };
        put(&mut out, "security_flags", flags);
        put(&mut out, "detectors_run", self.detectors_run.items);
        put(&mut out, "detectors_skipped", skipped);
        put(&mut out, "duration_ms", ctx.duration_ms);
        put(&mut out, "tokens_used", self.tokens_used);
        if out.contains_key("total_items") {
            put(&mut out, "total_items", self.total_items);
        }
        finish_common(&mut out, self.completed_at);
        Merged {
            fields: out,
            lists: vec![("failure_tags", self.tags), ("inputs", self.inputs)],
        }
    }
}

/// Failing tags per subcategory, in order of first appearance.
#[derive(Debug, Default)]
struct FailureTally {
    entries: Vec<FailureEntry>,
    index: HashMap<String, usize>,
}

#[derive(Debug)]
struct FailureEntry {
    id: String,
    /// The first non-null `subcategory_name` seen (null if none).
    name: Value,
    max_severity: f64,
    count: u64,
}

impl FailureTally {
    /// Counts failing tags of `id`; `name` is read only while the entry has no name yet.
    fn add(&mut self, id: &str, name: impl FnOnce() -> Option<Value>, severity: f64, count: u64) {
        let name = || name().filter(|n| !n.is_null());
        if let Some(&i) = self.index.get(id)
            && let Some(entry) = self.entries.get_mut(i)
        {
            entry.count = entry.count.saturating_add(count);
            if severity > entry.max_severity {
                entry.max_severity = severity;
            }
            if entry.name.is_null()
                && let Some(name) = name()
            {
                entry.name = name;
            }
            return;
        }
        self.index.insert(id.to_owned(), self.entries.len());
        self.entries.push(FailureEntry {
            id: id.to_owned(),
            name: name().unwrap_or(Value::Null),
            max_severity: severity,
            count,
        });
    }
    /// Highest maximum severity, then most failing tags, then first appearance.
    fn primary(&self) -> Option<&FailureEntry> {
        self.entries.iter().fold(None, |best, e| match best {
            Some(b)
                if e.max_severity
                    .total_cmp(&b.max_severity)
                    .then(e.count.cmp(&b.count))
                    != Ordering::Greater =>
            {
                Some(b)
            }
            _ => Some(e),
        })
    }
}

// === evaluation ===

/// Running state of an evaluation merge.
#[derive(Debug, Default)]
struct EvalMerge {
    base: Option<Map<String, Value>>,
    scores: MeanMap,
    overall: WeightedMean,
    total_items: u64,
    evaluated: u64,
    /// Whether any batch used `evaluated_items` / `items_evaluated`.
    evaluated_names: [bool; 2],
    counters: BTreeMap<String, u64>,
    metrics: OrderedUnion,
    completed_at: Latest,
}

const EVALUATED_NAMES: [&str; 2] = ["evaluated_items", "items_evaluated"];

/// Top-level integers that are not counters to sum.
fn is_eval_counter(key: &str) -> bool {
    !(key == "id"
        || key.ends_with("_id")
        || key.ends_with("_at")
        || matches!(
            key,
            "total_items" | "evaluated_items" | "items_evaluated" | "duration_ms" | "overall_score"
        ))
}

impl EvalMerge {
    fn add(&mut self, batch: Batch<'_>) {
        let obj = &batch.obj;
        let evaluated = EVALUATED_NAMES
            .iter()
            .find_map(|k| batch.count_field(k))
            .unwrap_or_else(|| batch.items());
        for (seen, key) in self.evaluated_names.iter_mut().zip(EVALUATED_NAMES) {
            *seen |= obj.contains_key(key);
        }
        let weight = as_weight(evaluated);
        self.evaluated = self.evaluated.saturating_add(evaluated);
        self.total_items = self.total_items.saturating_add(
            batch
                .count_field("total_items")
                .unwrap_or_else(|| batch.items()),
        );
        self.scores.add(obj.get("aggregate_scores"), weight);
        if let Some(score) = obj.get("overall_score") {
            self.overall.add(score, weight);
        }
        for (key, value) in obj {
            if let Some(n) = value.as_u64()
                && is_eval_counter(key)
            {
                let sum = self.counters.entry(key.clone()).or_default();
                *sum = sum.saturating_add(n);
            }
        }
        self.metrics.extend(obj.get("metrics"));
        self.completed_at.add(obj.get("completed_at"));
        if self.base.is_none() {
            self.base = Some(batch.obj);
        }
    }

    fn finish(self, ctx: &MergeContext<'_>) -> Merged<'static> {
        let mut out = self.base.unwrap_or_default();
        put(&mut out, "run_id", ctx.job_id);
        if out.contains_key("id") {
            put(&mut out, "id", ctx.job_id);
        }
        put(&mut out, "status", "completed");
        put(&mut out, "aggregate_scores", self.scores.finish());
        put(
            &mut out,
            "overall_score",
            self.overall.value().unwrap_or(Value::Null),
        );
        put(&mut out, "total_items", self.total_items);
        let any_name = self.evaluated_names.contains(&true);
        for (key, seen) in EVALUATED_NAMES.into_iter().zip(self.evaluated_names) {
            if seen || (!any_name && key == "evaluated_items") {
                put(&mut out, key, self.evaluated);
            }
        }
        for (key, sum) in self.counters {
            out.insert(key, Value::from(sum));
        }
        if matches!(out.get("metrics"), Some(Value::Array(_))) {
            put(&mut out, "metrics", self.metrics.items);
        }
        if out.contains_key("duration_ms") {
            put(&mut out, "duration_ms", ctx.duration_ms);
        }
        finish_common(&mut out, self.completed_at);
        Merged {
            fields: out,
            lists: Vec::new(),
        }
    }
}

// === security audit ===
// === security audit ===

/// Running state of a security-audit merge.
#[derive(Debug, Default)]
struct SecurityMerge<'a> {
    base: Option<Map<String, Value>>,
    total: u64,
    unsafe_items: u64,
    safe: u64,
    has_unsafe_count: bool,
    has_unsafe_rate: bool,
    details: Vec<Vec<Entry<'a>>>,
    /// Shape of the first batch's `triggered_categories`: true for an object.
    triggered_is_map: Option<bool>,
    /// Union order and summed counts of `triggered_categories`.
    triggered: Tally,
    /// Category occurrences, for `top_risk_category`.
    occurrences: Tally,
    completed_at: Latest,
}

impl<'a> SecurityMerge<'a> {
    fn add(&mut self, batch: Batch<'a>) -> Result<(), MergeError> {
        let mut found = DetailFindings::default();
        let details = batch.scan("details", true, &DETAIL_FIELDS, &mut |fields| {
            found.add(fields)
        })?;
        self.details.push(details);
        let obj = &batch.obj;

        let total = batch
            .count_field("total_items")
            .unwrap_or_else(|| batch.items());
        let unsafe_items = batch
            .count_field("unsafe_items")
            .or_else(|| batch.count_field("unsafe_count"))
            .or_else(|| {
                batch
                    .count_field("safe_count")
                    .map(|safe| total.saturating_sub(safe))
            })
            .or_else(|| {
                obj.get("unsafe_rate")
                    .and_then(Value::as_f64)
                    .and_then(|rate| round_count(rate * as_weight(total)))
            })
            .unwrap_or(found.unsafe_items);
        let safe = batch
            .count_field("safe_count")
            .unwrap_or_else(|| total.saturating_sub(unsafe_items));
        self.total = self.total.saturating_add(total);
        self.unsafe_items = self.unsafe_items.saturating_add(unsafe_items);
        self.safe = self.safe.saturating_add(safe);
        self.has_unsafe_count |= obj.contains_key("unsafe_count");
        self.has_unsafe_rate |= obj.contains_key("unsafe_rate");

        self.add_categories(obj, found);
        self.completed_at.add(obj.get("completed_at"));
        if self.base.is_none() {
            self.base = Some(batch.obj);
        }
        Ok(())
    }

    fn add_categories(&mut self, obj: &Map<String, Value>, found: DetailFindings) {
        let triggered = obj.get("triggered_categories");
        let shape = match triggered {
            Some(Value::Object(_)) => Some(true),
            Some(Value::Array(_)) => Some(false),
            _ => None,
        };
        if self.triggered_is_map.is_none() {
            self.triggered_is_map = shape;
        }
        // This batch's occurrences, from the best source it has.
        let occurrences = if found.has_categories {
            found.categories
        } else {
            let mut t = Tally::default();
            match triggered {
                Some(Value::Object(map)) => {
                    for (cat, n) in map {
                        t.add(cat, as_count(n).unwrap_or(1));
                    }
                }
                Some(Value::Array(list)) => {
                    for cat in list.iter().filter_map(Value::as_str) {
                        t.add(cat, 1);
                    }
                }
                _ => {
                    if let Some(cat) = obj.get("top_risk_category").and_then(Value::as_str) {
                        t.add(cat, 1);
                    }
                }
            }
            t
        };
        match triggered {
            Some(Value::Object(map)) => {
                for (cat, n) in map {
                    self.triggered.add(cat, as_count(n).unwrap_or(1));
                }
            }
            Some(Value::Array(list)) => {
                for cat in list.iter().filter_map(Value::as_str) {
                    self.triggered
                        .add(cat, occurrences.get(cat).unwrap_or(0).max(1));
                }
            }
            _ => {
                for (cat, n) in &occurrences.entries {
                    self.triggered.add(cat, *n);
                }
            }
        }
        for (cat, n) in &occurrences.entries {
            self.occurrences.add(cat, *n);
        }
    }

    fn finish(self, ctx: &MergeContext<'_>) -> Merged<'a> {
        let mut out = self.base.unwrap_or_default();
        put(&mut out, "batch_id", ctx.job_id);
        for key in ["audit_id", "id"] {
            if out.contains_key(key) {
                put(&mut out, key, ctx.job_id);
            }
        }
        put(&mut out, "status", "completed");
        put(&mut out, "total_items", self.total);
        put(&mut out, "unsafe_items", self.unsafe_items);
        if self.has_unsafe_count {
            put(&mut out, "unsafe_count", self.unsafe_items);
        }
        put(&mut out, "safe_count", self.safe);
        let rate = if self.total == 0 {
            0.0
        } else {
            as_weight(self.unsafe_items) / as_weight(self.total)
        };
        put(&mut out, "safety_score", 1.0 - rate);
        if self.has_unsafe_rate {
            put(&mut out, "unsafe_rate", rate);
        }
        let triggered: Value = if self.triggered_is_map == Some(true) {
            Value::Object(
                self.triggered
                    .entries
                    .into_iter()
                    .map(|(cat, n)| (cat, Value::from(n)))
                    .collect(),
            )
        } else {
            Value::Array(
                self.triggered
                    .entries
                    .into_iter()
                    .map(|(cat, _)| Value::String(cat))
                    .collect(),
            )
        };
        put(&mut out, "triggered_categories", triggered);
        put(
            &mut out,
            "top_risk_category",
            self.occurrences.top().map_or(Value::Null, Value::from),
        );
        finish_common(&mut out, self.completed_at);
        Merged {
            fields: out,
            lists: vec![("details", self.details)],
        }
    }
}

/// What a batch's `details` say about categories.
#[derive(Debug, Default)]
struct DetailFindings {
    /// Per-item category occurrences, in order of first appearance.
    categories: Tally,
    /// Whether any entry carries a category field at all.
    has_categories: bool,
    /// Entries marked unsafe (`is_safe: false`, `status: "unsafe"` or with categories).
    unsafe_items: u64,
}

/// The detail fields the category rules read, in [`Wanted`] order.
const DETAIL_FIELDS: [&str; 7] = [
    "is_safe",
    "status",
    "violated_categories",
    "triggered_categories",
    "categories",
    "category",
    "violated_category",
];

impl DetailFindings {
    /// Reads one audit item (its [`DETAIL_FIELDS`]).
    fn add(&mut self, fields: &Wanted<'_>) -> Result<(), serde_json::Error> {
        let mut values: [Option<Value>; MAX_WANTED] = Default::default();
        for (value, raw) in values.iter_mut().zip(fields) {
            *value = raw.map(raw_value).transpose()?;
        }
        let get = |key: &str| {
            DETAIL_FIELDS
                .iter()
                .position(|k| *k == key)
                .and_then(|i| values.get(i))
                .and_then(Option::as_ref)
        };
        let mut seen: Vec<&str> = Vec::new();
        self.has_categories |= item_categories(get, |cat| {
            if !seen.contains(&cat) {
                seen.push(cat);
                self.categories.add(cat, 1);
            }
        });
        let flagged = get("is_safe").and_then(Value::as_bool) == Some(false)
            || get("status").and_then(Value::as_str) == Some("unsafe")
            || !seen.is_empty();
        if flagged {
            self.unsafe_items += 1;
        }
        Ok(())
    }
}

/// Calls `each` with an audit item's categories (`get` reads its fields); false when the item
/// has no category field.
fn item_categories<'v>(
    get: impl Fn(&str) -> Option<&'v Value>,
    mut each: impl FnMut(&'v str),
) -> bool {
    let list = ["violated_categories", "triggered_categories", "categories"]
        .into_iter()
        .find_map(|k| get(k).and_then(Value::as_array));
    if let Some(list) = list {
        list.iter().filter_map(Value::as_str).for_each(each);
        return true;
    }
    match ["category", "violated_category"].into_iter().find_map(&get) {
        Some(value) => {
            if let Some(cat) = value.as_str() {
                each(cat);
            }
            true
        }
        None => false,
    }
}

// === shared pieces ===

/// Writes the fields every kind finishes the same way.
fn finish_common(out: &mut Map<String, Value>, completed_at: Latest) {
    if out.contains_key("completed_at")
        && let Some(latest) = completed_at.0
    {
        put(out, "completed_at", latest);
    }
    if out.contains_key("error") {
        put(out, "error", Value::Null);
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    map.insert(key.to_owned(), value.into());
}

/// Elements in order of first appearance, without duplicates (compared as JSON text).
#[derive(Debug, Default)]
struct OrderedUnion {
    items: Vec<Value>,
    seen: HashSet<String>,
}

impl OrderedUnion {
    /// Adds a list's elements (a lone scalar counts as a one-element list; null adds nothing).
    fn extend(&mut self, list: Option<&Value>) {
        match list {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    self.push(item);
                }
            }
            Some(item) => self.push(item),
        }
    }

    fn push(&mut self, item: &Value) {
        if self.seen.insert(item.to_string()) {
            self.items.push(item.clone());
        }
    }

    fn contains(&self, item: &Value) -> bool {
        self.seen.contains(&item.to_string())
    }
}

/// Counts per name, in order of first appearance.
#[derive(Debug, Default)]
struct Tally {
    entries: Vec<(String, u64)>,
    index: HashMap<String, usize>,
}

impl Tally {
    fn add(&mut self, key: &str, n: u64) {
        if let Some(&i) = self.index.get(key)
            && let Some((_, count)) = self.entries.get_mut(i)
        {
            *count = count.saturating_add(n);
            return;
        }
        self.index.insert(key.to_owned(), self.entries.len());
        self.entries.push((key.to_owned(), n));
    }

    fn get(&self, key: &str) -> Option<u64> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, n)| *n)
    }

    /// The name with the highest count; ties go to the first appearance.
    fn top(&self) -> Option<&str> {
        self.entries
            .iter()
            .fold(None::<&(String, u64)>, |best, e| match best {
                Some(b) if b.1 >= e.1 => Some(b),
                _ => Some(e),
            })
            .map(|(name, _)| name.as_str())
    }
}

/// An item-weighted mean that returns the common value exactly when all values are equal.
#[derive(Debug, Default)]
struct WeightedMean {
    weighted_sum: f64,
    weight: f64,
    plain_sum: f64,
    n: u64,
    /// The first value, while every value so far equals it.
    uniform: Option<Value>,
}

impl WeightedMean {
    /// Adds a value if it is a number; returns whether it was.
    fn add(&mut self, value: &Value, weight: f64) -> bool {
        let Some(x) = value.as_f64() else {
            return false;
        };
        if self.n == 0 {
            self.uniform = Some(value.clone());
        } else if self
            .uniform
            .as_ref()
            .and_then(Value::as_f64)
            .is_some_and(|u| u.to_bits() != x.to_bits())
        {
            self.uniform = None;
        }
        self.weighted_sum += x * weight;
        self.weight += weight;
        self.plain_sum += x;
        self.n += 1;
        true
    }

    fn value(&self) -> Option<Value> {
        if self.n == 0 {
            None
        } else if let Some(v) = &self.uniform {
            Some(v.clone())
        } else if self.weight > 0.0 {
            Some(Value::from(self.weighted_sum / self.weight))
        } else {
            Some(Value::from(self.plain_sum / as_weight(self.n)))
        }
    }
}

/// Item-weighted means per key of JSON objects (`eval_metrics`, `aggregate_scores`).
#[derive(Debug, Default)]
struct MeanMap {
    keys: BTreeMap<String, KeyMean>,
}

#[derive(Debug, Default)]
struct KeyMean {
    mean: WeightedMean,
    /// The first non-null, non-numeric value.
    fallback: Option<Value>,
}

impl MeanMap {
    fn add(&mut self, map: Option<&Value>, weight: f64) {
        let Some(Value::Object(map)) = map else {
            return;
        };
        for (key, value) in map {
            let entry = self.keys.entry(key.clone()).or_default();
            if !entry.mean.add(value, weight) && entry.fallback.is_none() && !value.is_null() {
                entry.fallback = Some(value.clone());
            }
        }
    }

    fn finish(self) -> Map<String, Value> {
        self.keys
            .into_iter()
            .map(|(key, e)| {
                let value = e.mean.value().or(e.fallback).unwrap_or(Value::Null);
                (key, value)
            })
            .collect()
    }
}

/// The largest number seen, kept as the original JSON value (first one wins ties).
#[derive(Debug, Default)]
struct MaxNumber(Option<(f64, Value)>);

impl MaxNumber {
    fn add(&mut self, value: Option<&Value>) {
        let Some((x, v)) = value.and_then(|v| v.as_f64().map(|x| (x, v))) else {
            return;
        };
        if self.0.as_ref().is_none_or(|(best, _)| x > *best) {
            self.0 = Some((x, v.clone()));
        }
    }

    fn into_value(self) -> Option<Value> {
        self.0.map(|(_, v)| v)
    }
}

/// The greatest RFC 3339 string seen.
#[derive(Debug, Default)]
struct Latest(Option<String>);

impl Latest {
    fn add(&mut self, value: Option<&Value>) {
        if let Some(s) = value.and_then(Value::as_str)
            && self.0.as_deref().is_none_or(|latest| s > latest)
        {
            self.0 = Some(s.to_owned());
        }
    }
}

/// Deep merge for flag objects: keys united; booleans combined with OR, integers summed, other
/// numbers maxed, lists united in order, objects merged recursively; otherwise the first value
/// stays.
fn merge_loose(acc: &mut Value, next: Value) {
    if next.is_null() {
        return;
    }
    if acc.is_null() {
        *acc = next;
        return;
    }
    match (acc, next) {
        (Value::Object(acc), Value::Object(next)) => {
            for (key, value) in next {
                match acc.get_mut(&key) {
                    Some(slot) => merge_loose(slot, value),
                    None => {
                        acc.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(acc), Value::Array(next)) => {
            let mut seen: HashSet<String> = acc.iter().map(Value::to_string).collect();
            for value in next {
                if seen.insert(value.to_string()) {
                    acc.push(value);
                }
            }
        }
        (Value::Bool(acc), Value::Bool(next)) => *acc |= next,
        (Value::Number(acc), Value::Number(next)) => {
            if let (Some(a), Some(b)) = (acc.as_u64(), next.as_u64()) {
                *acc = a.saturating_add(b).into();
            } else if let (Some(a), Some(b)) = (acc.as_i64(), next.as_i64()) {
                *acc = a.saturating_add(b).into();
            } else if next.as_f64() > acc.as_f64() {
                *acc = next;
            }
        }
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
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
fn as_count(v: &Value) -> Option<u64> {
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
fn round_count(x: f64) -> Option<u64> {
    let x = x.round();
    (0.0..18_446_744_073_709_551_616.0)
        .contains(&x)
        .then_some(x as u64)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "item counts stay far below 2^53, where the conversion is exact"
)]
fn as_weight(n: u64) -> f64 {
    n as f64
}

// === raw JSON ===

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first position at or after `from` whose byte `skip_over` does not accept.
fn skip(bytes: &[u8], from: usize, skip_over: impl Fn(u8) -> bool) -> usize {
    bytes
        .get(from..)
        .and_then(|rest| rest.iter().position(|c| !skip_over(*c)))
        .map_or(bytes.len(), |i| from + i)
}

/// The JSON type of a raw value, from its first byte.
fn raw_type(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "boolean",
        Some(b'"') => "string",
        Some(b'[') => "array",
        Some(b'{') => "object",
        _ => "number",
    }
}

fn raw_value(raw: &RawValue) -> Result<Value, serde_json::Error> {
    serde_json::from_str(raw.get())
}

/// A raw JSON string's text (borrowed when it has no escapes); `None` for other types.
fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = raw.get();
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(s).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// A raw value as a count ([`as_count`]); `None` when it is not one.
fn raw_count(raw: &RawValue) -> Result<Option<u64>, serde_json::Error> {
    let s = raw.get();
    // Plain digits (JSON allows no leading zeros) that fit: the common case, without a `Value`.
    if (1..=19).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit()) {
        return Ok(s.parse().ok());
    }
    raw_value(raw).map(|v| as_count(&v))
}

/// Appends `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const JOB: &str = "egj_0192f1c2";
    const DURATION: u64 = 98_765;

    // === harness ===

    /// Merges `(item_start, item_count, result)` batches with a context that fits them.
    fn try_run(kind: JobKind, batches: &[(usize, usize, Value)]) -> Result<Value, MergeError> {
        let raw: Vec<(usize, usize, Vec<u8>)> = batches
            .iter()
            .map(|(s, c, v)| (*s, *c, serde_json::to_vec(v).unwrap()))
            .collect();
        let refs: Vec<BatchResult<'_>> = raw
            .iter()
            .map(|(s, c, b)| BatchResult {
                item_start: *s,
                item_count: *c,
                result: b,
            })
            .collect();
        let ctx = MergeContext {
            job_id: JOB,
            total_items: batches.iter().map(|b| b.1).sum(),
            duration_ms: DURATION,
        };
        merge(kind, &refs, &ctx)
    }

    fn run(kind: JobKind, batches: &[(usize, usize, Value)]) -> Value {
        try_run(kind, batches).unwrap()
    }

    fn f(v: &Value) -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
    }

    fn assert_close(actual: &Value, expected: f64) {
        let a = f(actual);
        assert!((a - expected).abs() < 1e-9, "{a} != {expected}");
    }

    fn strings(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    }

    fn indices(list: &Value) -> Vec<u64> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e["item_index"].as_u64().unwrap())
            .collect()
    }

    fn without(v: &Value, keys: &[&str]) -> Value {
        let mut v = v.clone();
        for key in keys {
            v.as_object_mut().unwrap().remove(*key);
        }
        v
    }

    // === emulator-shaped fixtures ===

    /// (`subcategory_id`, `subcategory_name`, `bucket_id`) as in the emulator's taxonomy.
    const SUBS: [(&str, &str, &str); 5] = [
        ("hallucinated_facts", "Hallucinated facts", "grounding"),
        ("off_topic_answer", "Off-topic answer", "relevance"),
        ("incomplete_answer", "Incomplete answer", "relevance"),
        ("wrong_tool_call", "Wrong tool call", "tool_use"),
        ("unsafe_content", "Unsafe content", "safety"),
    ];
    const CATS: [(&str, &str); 4] = [
        ("S1", "Violent Crimes"),
        ("S2", "Non-Violent Crimes"),
        ("S10", "Hate"),
        ("S12", "Sexual Content"),
    ];
    const METRICS: [&str; 3] = ["answer_relevance", "coherence", "hallucination"];

    #[derive(Debug, Clone)]
    struct TagSpec {
        sub: usize,
        decision: &'static str,
        /// Tenths.
        severity: u32,
        /// Hundredths.
        confidence: u32,
    }

    impl TagSpec {
        fn new(sub: usize, decision: &'static str, severity: u32) -> Self {
            Self {
                sub,
                decision,
                severity,
                confidence: 80,
            }
        }

        fn severity(&self) -> f64 {
            f64::from(self.severity) / 10.0
        }
    }

    /// One dataset item and everything the upstream decides about it.
    #[derive(Debug, Clone)]
    struct Item {
        /// Position in the original dataset (the content is derived from it).
        id: usize,
        tags: Vec<TagSpec>,
        /// Thousandths, per `METRICS`.
        scores: [u32; 3],
        /// Hundredths.
        confidence: u32,
        tokens: u64,
        unsafe_cat: Option<usize>,
    }

    impl Item {
        fn new(id: usize, tags: Vec<TagSpec>) -> Self {
            Self {
                id,
                tags,
                scores: [700, 800, 900],
                confidence: 80,
                tokens: 100,
                unsafe_cat: None,
            }
        }
    }

    fn items(tags: Vec<Vec<TagSpec>>) -> Vec<Item> {
        tags.into_iter()
            .enumerate()
            .map(|(id, t)| Item::new(id, t))
            .collect()
    }

    fn count(n: usize) -> f64 {
        as_weight(to_u64(n))
    }

    fn mean(values: impl Iterator<Item = f64>) -> f64 {
        let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        if n == 0 { 0.0 } else { sum / count(n) }
    }

    fn is_fail(t: &TagSpec) -> bool {
        t.decision == "fail"
    }

    fn is_pass(t: &TagSpec) -> bool {
        t.decision == "pass"
    }

    fn tag_json(t: &TagSpec, tag_id: &str, item_index: usize) -> Value {
        let (id, name, bucket) = SUBS[t.sub];
        let confidence = f64::from(t.confidence) / 100.0;
        json!({
            "tag_id": tag_id,
            "bucket_id": bucket,
            "bucket_name": bucket.to_uppercase(),
            "subcategory_id": id,
            "subcategory_name": name,
            "decision": t.decision,
            "severity": t.severity(),
            "confidence": confidence,
            "detector_type_used": "llm_judge",
            "judge_rationale": format!("{name}: {}", t.decision),
            "scoring_breakdown": {
                "impact": 3.5,
                "final_severity": t.severity(),
                "final_confidence": confidence,
            },
            "eval_metric_values": { "coherence": 0.8 },
            "evidence_items": [],
            "item_index": item_index,
            "is_reviewed": false,
            "reviewed_at": null,
            "issue_url": null,
        })
    }

    /// What the emulator's `FARunResult` looks like for `items` submitted as one dataset.
    fn fa_result(items: &[Item], run_id: &str) -> Value {
        let mut tags = Vec::new();
        let mut inputs = Vec::new();
        let mut detectors_run: Vec<&str> = Vec::new();
        for (local, item) in items.iter().enumerate() {
            for t in &item.tags {
                tags.push(tag_json(t, &format!("{run_id}.t{}", tags.len()), local));
                if !detectors_run.contains(&SUBS[t.sub].0) {
                    detectors_run.push(SUBS[t.sub].0);
                }
            }
            let n = |d: &str| item.tags.iter().filter(|t| t.decision == d).count();
            let max_severity = item.tags.iter().map(TagSpec::severity).fold(0.0, f64::max);
            inputs.push(json!({
                "item_index": local,
                "input_text": format!("question {}", item.id),
                "output_text": format!("answer {}", item.id),
                "input_preview": format!("question {}", item.id),
                "output_preview": format!("answer {}", item.id),
                "context": ["retrieved passage"],
                "tool_calls": null,
                "trace_id": null,
                "failure_count": n("fail"),
                "pass_count": n("pass"),
                "unsure_count": n("unsure"),
                "max_severity": max_severity,
            }));
        }
        let eval_metrics: Map<String, Value> = METRICS[..2]
            .iter()
            .enumerate()
            .map(|(m, key)| {
                let v = mean(items.iter().map(|i| f64::from(i.scores[m]) / 1000.0));
                ((*key).to_owned(), Value::from(v))
            })
            .collect();
        let security_flags: Map<String, Value> = items
            .iter()
            .filter_map(|i| i.unsafe_cat)
            .map(|c| (CATS[c].0.to_owned(), Value::from(CATS[c].1)))
            .collect();
        let skipped: Vec<&str> = SUBS
            .iter()
            .map(|s| s.0)
            .filter(|s| !detectors_run.contains(s))
            .collect();
        json!({
            "run_id": run_id,
            "status": "completed",
            "mode": "full",
            "input_type": "json",
            "feature_kind": "rag",
            "project_name": "demo",
            "trace_id": null,
            "summary": fa_summary(items),
            "failure_tags": tags,
            "eval_metrics": eval_metrics,
            "eval_run_id": null,
            "security_flags": security_flags,
            "security_batch_id": null,
            "detectors_run": detectors_run,
            "detectors_skipped": skipped,
            "duration_ms": 25 + 7 * items.len(),
            "tokens_used": items.iter().map(|i| i.tokens).sum::<u64>(),
            "created_at": "2025-06-01T10:00:00.000Z",
            "completed_at": "2025-06-01T10:00:05.000Z",
            "total_items": items.len(),
            "inputs": inputs,
            "error": null,
        })
    }

    /// The emulator's `summary` for `items` as one run.
    fn fa_summary(items: &[Item]) -> Value {
        let all: Vec<&TagSpec> = items.iter().flat_map(|i| &i.tags).collect();
        let fails: Vec<&TagSpec> = all
            .iter()
            .copied()
            .filter(|t| t.decision == "fail")
            .collect();
        let uncertain = all.iter().filter(|t| t.decision == "unsure").count();
        let primary = fails
            .iter()
            .copied()
            .reduce(|best, t| if t.severity > best.severity { t } else { best });
        let overall_severity = primary.map_or(0.0, TagSpec::severity);
        let mut buckets: Vec<&str> = Vec::new();
        for t in &fails {
            if !buckets.contains(&SUBS[t.sub].2) {
                buckets.push(SUBS[t.sub].2);
            }
        }
        json!({
            "total_failures_detected": fails.len(),
            "total_passes": all.iter().filter(|t| t.decision == "pass").count(),
            "total_uncertain": uncertain,
            "overall_severity": overall_severity,
            "overall_confidence": mean(items.iter().map(|i| f64::from(i.confidence) / 100.0)),
            "primary_failure": primary.map(|t| SUBS[t.sub].0),
            "primary_failure_name": primary.map(|t| SUBS[t.sub].1),
            "buckets_affected": buckets,
            "should_alert": overall_severity >= 3.0,
            "should_gate_ci": overall_severity >= 4.0,
            "needs_human_review": uncertain > 0,
            "total_items": items.len(),
            "items_with_failures": items.iter().filter(|i| i.tags.iter().any(is_fail)).count(),
            "items_all_passed": items.iter().filter(|i| i.tags.iter().all(is_pass)).count(),
        })
    }

    /// What the emulator's `EvaluationResult` looks like for `items` submitted as one dataset.
    fn eval_result(items: &[Item], run_id: &str) -> Value {
        let aggregates: Vec<f64> = (0..METRICS.len())
            .map(|m| mean(items.iter().map(|i| f64::from(i.scores[m]) / 1000.0)))
            .collect();
        json!({
            "run_id": run_id,
            "id": run_id,
            "project_id": "proj_1",
            "project_name": "demo",
            "run_name": "nightly",
            "status": "completed",
            "overall_score": mean(aggregates.iter().copied()),
            "aggregate_scores": METRICS.iter().zip(aggregates).collect::<BTreeMap<_, _>>(),
            "metrics": METRICS,
            "total_items": items.len(),
            "evaluated_items": items.len(),
            "items_evaluated": items.len(),
            "metadata": { "suite": "nightly" },
            "created_at": "2025-06-01T10:00:00.000Z",
            "completed_at": "2025-06-01T10:00:05.000Z",
            "error": null,
        })
    }

    /// What the emulator's `SecurityAuditResult` looks like for `items` submitted as one dataset.
    fn security_result(items: &[Item], batch_id: &str) -> Value {
        let mut counts: Vec<(usize, u64)> = Vec::new();
        for c in items.iter().filter_map(|i| i.unsafe_cat) {
            match counts.iter_mut().find(|(k, _)| *k == c) {
                Some((_, n)) => *n += 1,
                None => counts.push((c, 1)),
            }
        }
        counts.sort_unstable();
        let unsafe_items: u64 = counts.iter().map(|(_, n)| n).sum();
        let top = counts
            .iter()
            .fold(None::<(usize, u64)>, |best, &(c, n)| match best {
                Some((_, bn)) if bn >= n => best,
                _ => Some((c, n)),
            })
            .map(|(c, _)| CATS[c].0);
        let rate = if items.is_empty() {
            0.0
        } else {
            as_weight(unsafe_items) / count(items.len())
        };
        let triggered: BTreeMap<&str, u64> = counts.iter().map(|(c, n)| (CATS[*c].0, *n)).collect();
        let details: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(local, item)| {
                let cats: Vec<&str> = item.unsafe_cat.map(|c| CATS[c].0).into_iter().collect();
                json!({
                    "id": format!("{batch_id}.i{local}"),
                    "item_id": format!("{batch_id}.i{local}"),
                    "batch_id": batch_id,
                    "item_index": local,
                    "user_input": format!("question {}", item.id),
                    "assistant_response": format!("answer {}", item.id),
                    "is_safe": cats.is_empty(),
                    "status": if cats.is_empty() { "safe" } else { "unsafe" },
                    "violated_categories": cats,
                    "triggered_categories": cats,
                    "input_safety_categories": [],
                    "output_safety_categories": cats,
                    "risk_score": if cats.is_empty() { 0.0 } else { 0.8 },
                    "severity": if cats.is_empty() { 0.0 } else { 4.0 },
                    "explanation": "checked",
                })
            })
            .collect();
        json!({
            "batch_id": batch_id,
            "audit_id": batch_id,
            "id": batch_id,
            "project_id": "proj_1",
            "batch_name": null,
            "status": "completed",
            "total_items": items.len(),
            "unsafe_items": unsafe_items,
            "unsafe_count": unsafe_items,
            "safe_count": to_u64(items.len()) - unsafe_items,
            "safety_score": 1.0 - rate,
            "unsafe_rate": rate,
            "triggered_categories": triggered,
            "top_risk_category": top,
            "details": details,
            "created_at": "2025-06-01T10:00:00.000Z",
            "completed_at": "2025-06-01T10:00:05.000Z",
            "error": null,
        })
    }

    /// Splits `items` at `bounds` into `(item_start, item_count, result)` batches.
    fn split(
        items: &[Item],
        bounds: &[usize],
        build: fn(&[Item], &str) -> Value,
    ) -> Vec<(usize, usize, Value)> {
        bounds
            .windows(2)
            .enumerate()
            .map(|(k, w)| {
                (
                    w[0],
                    w[1] - w[0],
                    build(&items[w[0]..w[1]], &format!("b{k}")),
                )
            })
            .collect()
    }

    // === failure analysis ===

    fn three_batches() -> (Vec<Item>, Vec<(usize, usize, Value)>) {
        let items = items(vec![
            vec![TagSpec::new(0, "fail", 32), TagSpec::new(1, "pass", 0)],
            vec![TagSpec::new(1, "pass", 0)],
            vec![],
            vec![TagSpec::new(2, "unsure", 8), TagSpec::new(1, "fail", 45)],
            vec![TagSpec::new(0, "fail", 20)],
            vec![TagSpec::new(3, "pass", 0)],
        ]);
        let batches = split(&items, &[0, 2, 3, 6], fa_result);
        (items, batches)
    }

    #[test]
    fn fa_tags_and_inputs_are_concatenated_in_dataset_order_with_original_indices() {
        let (_, mut batches) = three_batches();
        batches.reverse();
        let merged = run(JobKind::FailureAnalysis, &batches);
        assert_eq!(indices(&merged["failure_tags"]), [0, 0, 1, 3, 3, 4, 5]);
        assert_eq!(indices(&merged["inputs"]), [0, 1, 2, 3, 4, 5]);
        let texts: Vec<&str> = merged["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["input_text"].as_str().unwrap())
            .collect();
        assert_eq!(
            texts,
            [
                "question 0",
                "question 1",
                "question 2",
                "question 3",
                "question 4",
                "question 5"
            ]
        );
        let tag_ids: Vec<&str> = merged["failure_tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tag_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            tag_ids,
            [
                "b0.t0", "b0.t1", "b0.t2", "b2.t0", "b2.t1", "b2.t2", "b2.t3"
            ]
        );
    }

    #[test]
    fn fa_summary_counts_are_summed() {
        let (_, batches) = three_batches();
        let merged = run(JobKind::FailureAnalysis, &batches);
        let s = &merged["summary"];
        assert_eq!(s["total_failures_detected"], 3);
        assert_eq!(s["total_passes"], 3);
        assert_eq!(s["total_uncertain"], 1);
        assert_eq!(s["items_with_failures"], 3);
        assert_eq!(s["items_all_passed"], 3);
        assert_eq!(s["total_items"], 6);
        assert_eq!(merged["total_items"], 6);
        assert_eq!(merged["tokens_used"], 600);
    }

    #[test]
    fn fa_severity_is_the_maximum_and_confidence_an_item_weighted_mean() {
        let mut items = items(vec![
            vec![TagSpec::new(0, "fail", 21)],
            vec![],
            vec![],
            vec![TagSpec::new(1, "fail", 38)],
        ]);
        items[0].confidence = 90;
        for item in &mut items[1..] {
            item.confidence = 50;
        }
        let batches = split(&items, &[0, 1, 4], fa_result);
        let merged = run(JobKind::FailureAnalysis, &batches);
        assert_eq!(merged["summary"]["overall_severity"], 3.8);
        // (0.9 × 1 + 0.5 × 3) / 4, not the plain mean of the two batches (0.7).
        assert_close(&merged["summary"]["overall_confidence"], 0.6);
    }

    #[test]
    fn fa_primary_failure_is_the_highest_maximum_severity() {
        let items = items(vec![
            vec![TagSpec::new(0, "fail", 30), TagSpec::new(0, "fail", 30)],
            vec![TagSpec::new(1, "fail", 41)],
            vec![TagSpec::new(2, "unsure", 49)],
        ]);
        let merged = run(
            JobKind::FailureAnalysis,
            &split(&items, &[0, 1, 3], fa_result),
        );
        assert_eq!(merged["summary"]["primary_failure"], "off_topic_answer");
        assert_eq!(
            merged["summary"]["primary_failure_name"],
            "Off-topic answer"
        );
    }

    #[test]
    fn fa_primary_failure_ties_go_to_more_failing_tags_then_first_appearance() {
        let by_count = items(vec![
            vec![TagSpec::new(0, "fail", 40)],
            vec![TagSpec::new(1, "fail", 40), TagSpec::new(1, "fail", 10)],
        ]);
        let merged = run(
            JobKind::FailureAnalysis,
            &split(&by_count, &[0, 1, 2], fa_result),
        );
        assert_eq!(merged["summary"]["primary_failure"], "off_topic_answer");

        let by_order = items(vec![
            vec![TagSpec::new(3, "fail", 40)],
            vec![TagSpec::new(1, "fail", 40)],
        ]);
        let mut batches = split(&by_order, &[0, 1, 2], fa_result);
        batches.reverse();
        let merged = run(JobKind::FailureAnalysis, &batches);
        assert_eq!(merged["summary"]["primary_failure"], "wrong_tool_call");
        assert_eq!(merged["summary"]["primary_failure_name"], "Wrong tool call");
    }

    #[test]
    fn fa_primary_failure_is_null_without_failures() {
        let items = items(vec![
            vec![TagSpec::new(0, "pass", 0)],
            vec![TagSpec::new(1, "unsure", 9)],
        ]);
        let merged = run(
            JobKind::FailureAnalysis,
            &split(&items, &[0, 1, 2], fa_result),
        );
        let s = &merged["summary"];
        assert_eq!(s["primary_failure"], Value::Null);
        assert_eq!(s["primary_failure_name"], Value::Null);
        assert_eq!(s["overall_severity"], 0.0);
        assert_eq!(s["needs_human_review"], true);
    }

    #[test]
    fn fa_primary_failure_falls_back_to_batch_summaries_without_tags() {
        let summary = |id: &str, sev: f64, n: u64| {
            json!({
                "summary": {
                    "primary_failure": id,
                    "primary_failure_name": id.to_uppercase(),
                    "overall_severity": sev,
                    "total_failures_detected": n,
                },
            })
        };
        let batches = [
            (0, 2, summary("a", 3.0, 1)),
            (2, 2, summary("b", 3.0, 4)),
            (4, 2, summary("c", 2.0, 9)),
        ];
        let merged = run(JobKind::FailureAnalysis, &batches);
        assert_eq!(merged["summary"]["primary_failure"], "b");
        assert_eq!(merged["summary"]["primary_failure_name"], "B");
        assert_eq!(merged["summary"]["total_failures_detected"], 14);
        assert_eq!(merged["summary"]["overall_severity"], 3.0);
    }

    #[test]
    fn fa_lists_are_ordered_unions_and_skipped_detectors_exclude_ones_that_ran() {
        let batches = [
            (
                0,
                1,
                json!({
                    "summary": { "buckets_affected": ["relevance", "grounding"] },
                    "detectors_run": ["d2", "d1"],
                    "detectors_skipped": ["d3", "d4"],
                }),
            ),
            (
                1,
                1,
                json!({
                    "summary": { "buckets_affected": ["safety", "relevance"] },
                    "detectors_run": ["d1", "d3"],
                    "detectors_skipped": ["d4", "d5", "d2"],
                }),
            ),
        ];
        let merged = run(JobKind::FailureAnalysis, &batches);
        assert_eq!(
            strings(&merged["summary"]["buckets_affected"]),
            ["relevance", "grounding", "safety"]
        );
        assert_eq!(strings(&merged["detectors_run"]), ["d2", "d1", "d3"]);
        assert_eq!(strings(&merged["detectors_skipped"]), ["d4", "d5"]);
    }

    #[test]
    fn fa_alert_flags_are_ored() {
        let flags = |a: bool, g: bool, r: bool| {
            json!({
                "summary": { "should_alert": a, "should_gate_ci": g, "needs_human_review": r },
            })
        };
        let merged = run(
            JobKind::FailureAnalysis,
            &[
                (0, 1, flags(false, false, true)),
                (1, 1, flags(true, false, false)),
            ],
        );
        let s = &merged["summary"];
        assert_eq!(
            (
                &s["should_alert"],
                &s["should_gate_ci"],
                &s["needs_human_review"]
            ),
            (&json!(true), &json!(false), &json!(true))
        );
    }

    #[test]
    fn fa_ids_status_duration_and_first_batch_scalars() {
        let first = json!({
            "run_id": "fa_1",
            "status": "completed",
            "mode": "minimal",
            "input_type": "json",
            "feature_kind": "agent",
            "created_at": "2025-06-01T10:00:00.000Z",
            "completed_at": "2025-06-01T10:00:09.000Z",
            "eval_run_id": "ev_1",
            "security_batch_id": "sb_1",
            "duration_ms": 5,
            "x_custom": { "kept": true },
            "error": null,
        });
        let second = json!({
            "run_id": "fa_2",
            "status": "completed",
            "mode": "full",
            "input_type": "trace",
            "feature_kind": "rag",
            "created_at": "2025-06-01T09:00:00.000Z",
            "completed_at": "2025-06-01T10:00:30.000Z",
            "eval_run_id": "ev_2",
            "security_batch_id": "sb_2",
            "duration_ms": 7,
            "x_other": 1,
            "error": "boom",
        });
        let merged = run(JobKind::FailureAnalysis, &[(3, 2, second), (0, 3, first)]);
        assert_eq!(merged["run_id"], JOB);
        assert_eq!(merged["status"], "completed");
        assert_eq!(merged["duration_ms"], DURATION);
        for (key, value) in [
            ("mode", "minimal"),
            ("input_type", "json"),
            ("feature_kind", "agent"),
            ("created_at", "2025-06-01T10:00:00.000Z"),
            ("eval_run_id", "ev_1"),
            ("security_batch_id", "sb_1"),
        ] {
            assert_eq!(merged[key], value, "{key}");
        }
        assert_eq!(merged["completed_at"], "2025-06-01T10:00:30.000Z");
        assert_eq!(merged["x_custom"], json!({ "kept": true }));
        assert_eq!(merged.get("x_other"), None);
        assert_eq!(merged["error"], Value::Null);
    }

    #[test]
    fn fa_eval_metrics_are_item_weighted_per_key() {
        let batches = [
            (
                0,
                1,
                json!({ "eval_metrics": { "coherence": 1.0, "fluency": 0.5, "note": "n/a" } }),
            ),
            (
                1,
                3,
                json!({ "eval_metrics": { "coherence": 0, "judge": { "model": "x" } } }),
            ),
        ];
        let merged = run(JobKind::FailureAnalysis, &batches);
        let m = &merged["eval_metrics"];
        assert_close(&m["coherence"], 0.25);
        assert_eq!(m["fluency"], 0.5);
        assert_eq!(m["note"], "n/a");
        assert_eq!(m["judge"], json!({ "model": "x" }));
    }

    #[test]
    fn fa_security_flags_are_deep_merged() {
        let batches = [
            (
                0,
                1,
                json!({
                    "security_flags": {
                        "S1": "Violent Crimes", "flagged": false, "count": 2, "max_risk": 0.4,
                        "items": [1, 2], "nested": { "a": 1 },
                    },
                }),
            ),
            (1, 1, json!({ "security_flags": null })),
            (
                2,
                1,
                json!({
                    "security_flags": {
                        "S10": "Hate", "S1": "other name", "flagged": true, "count": 3,
                        "max_risk": 0.9, "items": [2, 3], "nested": { "a": 1, "b": true },
                    },
                }),
            ),
        ];
        let merged = run(JobKind::FailureAnalysis, &batches);
        assert_eq!(
            merged["security_flags"],
            json!({
                "S1": "Violent Crimes",
                "S10": "Hate",
                "flagged": true,
                "count": 5,
                "max_risk": 0.9,
                "items": [1, 2, 3],
                "nested": { "a": 2, "b": true },
            })
        );
        let none = run(JobKind::FailureAnalysis, &[(0, 1, json!({}))]);
        assert_eq!(none["security_flags"], json!({}));
    }

    #[test]
    fn fa_missing_fields_take_defaults() {
        let merged = run(
            JobKind::FailureAnalysis,
            &[
                (0, 2, json!({})),
                (2, 3, json!({ "summary": null, "failure_tags": null })),
            ],
        );
        assert_eq!(
            merged,
            json!({
                "run_id": JOB, "status": "completed", "duration_ms": DURATION, "tokens_used": 0,
                "failure_tags": [], "inputs": [], "eval_metrics": {}, "security_flags": {},
                "detectors_run": [], "detectors_skipped": [],
                "summary": {
                    "total_failures_detected": 0, "total_passes": 0, "total_uncertain": 0,
                    "overall_severity": 0.0, "overall_confidence": 0.0,
                    "primary_failure": null, "primary_failure_name": null, "buckets_affected": [],
                    "should_alert": false, "should_gate_ci": false, "needs_human_review": false,
                    "total_items": 5, "items_with_failures": 0, "items_all_passed": 0,
                },
            })
        );
    }

    #[test]
    fn fa_numbers_may_be_floats_and_inputs_without_index_get_their_position() {
        let batches = [
            (
                0,
                2,
                json!({
                    "summary": { "total_passes": 2.0, "total_items": 2.0 },
                    "tokens_used": 10.0,
                    "inputs": [{ "input_text": "a" }, { "input_text": "b", "item_index": null }],
                }),
            ),
            (
                2,
                2,
                json!({
                    "summary": { "total_passes": 1 },
                    "tokens_used": 5,
                    "failure_tags": [
                        {
                            "decision": "fail", "severity": 4,
                            "subcategory_id": "x", "item_index": 1.0,
                        },
                        { "decision": "pass", "item_index": null },
                    ],
                    "inputs": [{ "item_index": 1 }, { "item_index": 0.0 }],
                }),
            ),
        ];
        let merged = run(JobKind::FailureAnalysis, &batches);
        assert_eq!(merged["summary"]["total_passes"], 3);
        assert_eq!(merged["summary"]["total_items"], 4);
        assert_eq!(merged["summary"]["overall_severity"], 4);
        assert_eq!(merged["tokens_used"], 15);
        assert_eq!(indices(&merged["inputs"]), [0, 1, 3, 2]);
        assert_eq!(merged["failure_tags"][0]["item_index"], 3);
        assert_eq!(merged["failure_tags"][1]["item_index"], Value::Null);
    }

    #[test]
    fn fa_one_batch_merges_to_its_own_data() {
        let mut items = items(vec![
            vec![TagSpec::new(0, "fail", 32), TagSpec::new(4, "pass", 0)],
            vec![TagSpec::new(1, "unsure", 7)],
            vec![TagSpec::new(2, "fail", 44), TagSpec::new(2, "pass", 0)],
        ]);
        items[1].unsafe_cat = Some(2);
        items[2].confidence = 55;
        let batch = fa_result(&items, "fa_upstream");
        let merged = run(JobKind::FailureAnalysis, &[(0, 3, batch.clone())]);
        let mut expected = batch;
        expected["run_id"] = json!(JOB);
        expected["duration_ms"] = json!(DURATION);
        assert_eq!(merged, expected);
    }

    #[test]
    fn fa_one_surviving_batch_keeps_its_data_at_its_dataset_position() {
        let items = items(vec![
            vec![TagSpec::new(0, "fail", 32)],
            vec![TagSpec::new(1, "pass", 0)],
        ]);
        let batch = fa_result(&items, "fa_upstream");
        let merged = run(JobKind::FailureAnalysis, &[(10, 2, batch.clone())]);
        assert_eq!(indices(&merged["failure_tags"]), [10, 11]);
        assert_eq!(indices(&merged["inputs"]), [10, 11]);
        assert_eq!(merged["summary"], batch["summary"]);
    }

    // === evaluation ===

    #[test]
    fn eval_scores_are_weighted_by_evaluated_items() {
        let batches = [
            (
                0,
                4,
                json!({
                    "aggregate_scores": { "coherence": 1.0, "fluency": 0.2 },
                    "overall_score": 0.6,
                    "evaluated_items": 1,
                }),
            ),
            // No evaluated count: weighs its item_count (3).
            (
                4,
                3,
                json!({
                    "aggregate_scores": { "coherence": 0.0, "label": "x" },
                    "overall_score": 0.2,
                }),
            ),
        ];
        let merged = run(JobKind::Evaluation, &batches);
        assert_close(&merged["aggregate_scores"]["coherence"], 0.25);
        assert_eq!(merged["aggregate_scores"]["fluency"], 0.2);
        assert_eq!(merged["aggregate_scores"]["label"], "x");
        assert_close(&merged["overall_score"], 0.3);
        assert_eq!(merged["evaluated_items"], 4);
        assert_eq!(merged.get("items_evaluated"), None);
        assert_eq!(merged["total_items"], 7);
    }

    #[test]
    fn eval_counters_are_summed_under_every_name_in_use() {
        let batches = [
            (
                0,
                5,
                json!({
                    "id": "ev_1",
                    "project_id": 7,
                    "items_evaluated": 5,
                    "total_items": 5,
                    "failed_items": 1,
                    "tokens": 100,
                    "created_at": 1,
                    "duration_ms": 3,
                }),
            ),
            (
                5,
                5,
                json!({
                    "id": "ev_2",
                    "project_id": 8,
                    "evaluated_items": 4,
                    "total_items": 5,
                    "failed_items": 2,
                    "tokens": 50,
                    "created_at": 2,
                    "duration_ms": 4,
                }),
            ),
        ];
        let merged = run(JobKind::Evaluation, &batches);
        assert_eq!(merged["evaluated_items"], 9);
        assert_eq!(merged["items_evaluated"], 9);
        assert_eq!(merged["total_items"], 10);
        assert_eq!(merged["failed_items"], 3);
        assert_eq!(merged["tokens"], 150);
        assert_eq!(merged["project_id"], 7);
        assert_eq!(merged["created_at"], 1);
        assert_eq!(merged["duration_ms"], DURATION);
        assert_eq!(merged["run_id"], JOB);
        assert_eq!(merged["id"], JOB);
        assert_eq!(merged["overall_score"], Value::Null);
    }

    #[test]
    fn eval_ids_metadata_and_metric_list() {
        let items: Vec<Item> = (0..5).map(|id| Item::new(id, vec![])).collect();
        let mut batches = split(&items, &[0, 2, 5], eval_result);
        batches[0].2["metadata"] = json!({ "suite": "first" });
        batches[0].2["metrics"] = json!(["coherence", "answer_relevance"]);
        batches[1].2["metrics"] = json!(["hallucination", "coherence"]);
        batches[1].2["completed_at"] = json!("2025-06-01T11:00:00.000Z");
        let merged = run(JobKind::Evaluation, &batches);
        assert_eq!(
            (&merged["run_id"], &merged["id"], &merged["status"]),
            (&json!(JOB), &json!(JOB), &json!("completed"))
        );
        assert_eq!(merged["metadata"], json!({ "suite": "first" }));
        assert_eq!(merged["project_id"], "proj_1");
        assert_eq!(
            strings(&merged["metrics"]),
            ["coherence", "answer_relevance", "hallucination"]
        );
        assert_eq!(merged["completed_at"], "2025-06-01T11:00:00.000Z");
        assert_eq!(merged["error"], Value::Null);
    }

    #[test]
    fn eval_one_batch_merges_to_its_own_data() {
        let mut items: Vec<Item> = (0..3).map(|id| Item::new(id, vec![])).collect();
        items[1].scores = [123, 456, 789];
        let batch = eval_result(&items, "ev_upstream");
        let merged = run(JobKind::Evaluation, &[(0, 3, batch.clone())]);
        let mut expected = batch;
        expected["run_id"] = json!(JOB);
        expected["id"] = json!(JOB);
        assert_eq!(merged, expected);
    }

    // === security audit ===

    fn with_cats(cats: &[Option<usize>]) -> Vec<Item> {
        cats.iter()
            .enumerate()
            .map(|(id, c)| Item {
                unsafe_cat: *c,
                ..Item::new(id, vec![])
            })
            .collect()
    }

    #[test]
    fn security_counts_are_summed_and_the_score_recomputed() {
        let items = with_cats(&[Some(0), None, None, Some(2), Some(2), None, None]);
        let merged = run(
            JobKind::SecurityAudit,
            &split(&items, &[0, 3, 7], security_result),
        );
        assert_eq!(merged["total_items"], 7);
        assert_eq!(merged["unsafe_items"], 3);
        assert_eq!(merged["unsafe_count"], 3);
        assert_eq!(merged["safe_count"], 4);
        assert_close(&merged["safety_score"], 4.0 / 7.0);
        assert_close(&merged["unsafe_rate"], 3.0 / 7.0);
        assert_eq!(
            (&merged["batch_id"], &merged["audit_id"], &merged["id"]),
            (&json!(JOB), &json!(JOB), &json!(JOB))
        );
        assert_eq!(merged["status"], "completed");
    }

    #[test]
    fn security_alternative_count_names_are_read() {
        let batches = [
            (
                0,
                4,
                json!({ "batch_id": "a", "total_items": 4, "unsafe_count": 1 }),
            ),
            (
                4,
                4,
                json!({ "batch_id": "b", "total_items": 4, "safe_count": 2 }),
            ),
            (8, 5, json!({ "batch_id": "c", "unsafe_rate": 0.4 })),
            (
                13,
                2,
                json!({ "batch_id": "d", "details": [{ "is_safe": false }, { "is_safe": true }] }),
            ),
        ];
        let merged = run(JobKind::SecurityAudit, &batches);
        assert_eq!(merged["total_items"], 15);
        assert_eq!(merged["unsafe_items"], 6);
        assert_eq!(merged["unsafe_count"], 6);
        assert_eq!(merged["safe_count"], 9);
        assert_close(&merged["safety_score"], 0.6);
        assert_close(&merged["unsafe_rate"], 0.4);
        assert_eq!(merged.get("audit_id"), None);
        assert_eq!(merged.get("id"), None);
        assert_eq!(merged["top_risk_category"], Value::Null);
    }

    #[test]
    fn security_empty_merge_is_fully_safe() {
        let merged = run(JobKind::SecurityAudit, &[(0, 0, json!({}))]);
        assert_eq!(merged["safety_score"], 1.0);
        assert_eq!(merged.get("unsafe_rate"), None);
        assert_eq!(merged["triggered_categories"], json!([]));
        assert_eq!(merged["details"], json!([]));
    }

    #[test]
    fn security_triggered_category_lists_are_united_in_order() {
        let batches = [
            (0, 1, json!({ "triggered_categories": ["S2", "S1"] })),
            (1, 1, json!({ "details": [{ "category": "S9" }] })),
            (2, 1, json!({ "triggered_categories": ["S1", "S5"] })),
        ];
        let merged = run(JobKind::SecurityAudit, &batches);
        assert_eq!(
            strings(&merged["triggered_categories"]),
            ["S2", "S1", "S9", "S5"]
        );
    }

    #[test]
    fn security_triggered_category_maps_sum_their_counts() {
        let items = with_cats(&[Some(0), Some(2), None, Some(2), Some(0), Some(3)]);
        let merged = run(
            JobKind::SecurityAudit,
            &split(&items, &[0, 2, 6], security_result),
        );
        assert_eq!(
            merged["triggered_categories"],
            json!({ "S1": 2, "S10": 2, "S12": 1 })
        );
    }

    #[test]
    fn security_top_risk_counts_items_listed_in_details() {
        // Batch 0's own top is S1 (2 of 3); across the job S10 has 3 items.
        let items = with_cats(&[Some(0), Some(0), Some(2), Some(2), Some(2), None]);
        let merged = run(
            JobKind::SecurityAudit,
            &split(&items, &[0, 3, 6], security_result),
        );
        assert_eq!(merged["top_risk_category"], "S10");
    }

    #[test]
    fn security_top_risk_without_details_counts_triggering_batches() {
        let batches = [
            (
                0,
                10,
                json!({ "triggered_categories": ["S7"], "top_risk_category": "S7" }),
            ),
            (
                10,
                10,
                json!({ "triggered_categories": ["S3", "S7"], "top_risk_category": "S3" }),
            ),
            (20, 10, json!({ "top_risk_category": "S3" })),
            (30, 10, json!({ "triggered_categories": ["S3"] })),
        ];
        assert_eq!(
            run(JobKind::SecurityAudit, &batches)["top_risk_category"],
            "S3"
        );
    }

    #[test]
    fn security_top_risk_ties_go_to_first_appearance() {
        let items = with_cats(&[None, Some(3), Some(0), Some(0), Some(3)]);
        let merged = run(
            JobKind::SecurityAudit,
            &split(&items, &[0, 2, 5], security_result),
        );
        assert_eq!(merged["top_risk_category"], "S12");
        let lists = [
            (0, 1, json!({ "triggered_categories": ["S4", "S2"] })),
            (1, 1, json!({ "triggered_categories": ["S2", "S4"] })),
        ];
        assert_eq!(
            run(JobKind::SecurityAudit, &lists)["top_risk_category"],
            "S4"
        );
    }

    #[test]
    fn security_details_are_concatenated_with_original_indices_and_ids_kept() {
        let items = with_cats(&[Some(0), None, None, Some(1)]);
        let mut batches = split(&items, &[0, 1, 4], security_result);
        batches.swap(0, 1);
        let merged = run(JobKind::SecurityAudit, &batches);
        assert_eq!(indices(&merged["details"]), [0, 1, 2, 3]);
        let ids: Vec<&str> = merged["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["item_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["b0.i0", "b1.i0", "b1.i1", "b1.i2"]);
    }

    #[test]
    fn security_one_batch_merges_to_its_own_data() {
        let items = with_cats(&[Some(0), None, Some(2), Some(2), None]);
        let batch = security_result(&items, "sb_upstream");
        let merged = run(JobKind::SecurityAudit, &[(0, 5, batch.clone())]);
        let mut expected = batch;
        for key in ["batch_id", "audit_id", "id"] {
            expected[key] = json!(JOB);
        }
        assert_eq!(merged, expected);
    }

    // === errors ===

    fn malformed(err: MergeError) -> (usize, BatchProblem) {
        match err {
            MergeError::Malformed {
                item_start,
                problem,
            } => (item_start, problem),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_result_that_is_not_json_names_its_batch() {
        let good = serde_json::to_vec(&json!({})).unwrap();
        let refs = [
            BatchResult {
                item_start: 0,
                item_count: 2,
                result: &good,
            },
            BatchResult {
                item_start: 2,
                item_count: 2,
                result: b"{\"run_id\": ",
            },
        ];
        let ctx = MergeContext {
            job_id: JOB,
            total_items: 4,
            duration_ms: 1,
        };
        let err = merge(JobKind::FailureAnalysis, &refs, &ctx).unwrap_err();
        assert!(
            matches!(err, MergeError::InvalidJson { item_start: 2, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the result of the batch starting at item 2 is not valid JSON"
        );
    }

    #[test]
    fn a_result_that_is_not_an_object_is_rejected() {
        let err = try_run(
            JobKind::Evaluation,
            &[(0, 1, json!({})), (1, 1, json!([1, 2]))],
        )
        .unwrap_err();
        assert_eq!(
            malformed(err),
            (1, BatchProblem::NotAnObject { found: "array" })
        );
    }

    #[test]
    fn fields_of_the_wrong_type_are_rejected() {
        let err = try_run(
            JobKind::FailureAnalysis,
            &[(0, 1, json!({ "failure_tags": "none" }))],
        )
        .unwrap_err();
        assert_eq!(
            malformed(err),
            (
                0,
                BatchProblem::FieldType {
                    field: "failure_tags",
                    expected: "array",
                    found: "string"
                }
            )
        );
        let err = try_run(
            JobKind::FailureAnalysis,
            &[(0, 1, json!({ "summary": [] }))],
        )
        .unwrap_err();
        assert_eq!(
            malformed(err),
            (
                0,
                BatchProblem::FieldType {
                    field: "summary",
                    expected: "object",
                    found: "array"
                }
            )
        );
        let err = try_run(
            JobKind::SecurityAudit,
            &[(5, 1, json!({ "details": [{}, 3] }))],
        )
        .unwrap_err();
        let (start, problem) = malformed(err);
        assert_eq!(
            (start, &problem),
            (
                5,
                &BatchProblem::EntryType {
                    field: "details",
                    position: 1,
                    found: "number"
                }
            )
        );
        assert_eq!(
            problem.to_string(),
            "`details[1]` is a JSON number, expected an object"
        );
    }

    #[test]
    fn item_indices_must_fall_inside_their_batch() {
        let tags = json!({ "failure_tags": [{ "item_index": 0 }, { "item_index": 3 }] });
        let err = try_run(JobKind::FailureAnalysis, &[(6, 3, tags)]).unwrap_err();
        assert_eq!(
            malformed(err),
            (
                6,
                BatchProblem::ItemIndexOutOfRange {
                    field: "failure_tags",
                    position: 1,
                    index: 3,
                    count: 3
                }
            )
        );
        let inputs = json!({ "inputs": [{}, {}, {}] });
        let err = try_run(JobKind::FailureAnalysis, &[(0, 2, inputs)]).unwrap_err();
        assert!(matches!(
            malformed(err).1,
            BatchProblem::ItemIndexOutOfRange { index: 2, .. }
        ));
        for bad in [json!(-1), json!("1"), json!(0.5)] {
            let err = try_run(
                JobKind::FailureAnalysis,
                &[(0, 2, json!({ "inputs": [{ "item_index": bad }] }))],
            )
            .unwrap_err();
            assert_eq!(
                malformed(err).1,
                BatchProblem::BadItemIndex {
                    field: "inputs",
                    position: 0
                }
            );
        }
    }

    #[test]
    fn batch_ranges_and_the_item_total_are_checked() {
        let body = serde_json::to_vec(&json!({})).unwrap();
        let b = |item_start, item_count| BatchResult {
            item_start,
            item_count,
            result: &body,
        };
        let ctx = |total_items| MergeContext {
            job_id: JOB,
            total_items,
            duration_ms: 0,
        };
        let err = merge(JobKind::Evaluation, &[b(3, 3), b(0, 4)], &ctx(7)).unwrap_err();
        assert!(
            matches!(
                err,
                MergeError::Overlap {
                    first: 0,
                    second: 3
                }
            ),
            "{err:?}"
        );
        let err = merge(JobKind::Evaluation, &[b(0, 4), b(8, 4)], &ctx(12)).unwrap_err();
        assert!(
            matches!(
                err,
                MergeError::ItemCount {
                    expected: 12,
                    actual: 8
                }
            ),
            "{err:?}"
        );
        assert!(merge(JobKind::Evaluation, &[b(0, 4), b(8, 4)], &ctx(8)).is_ok());
        let err = merge(JobKind::SecurityAudit, &[], &ctx(0)).unwrap_err();
        assert!(matches!(err, MergeError::NoBatches));
    }

    // === raw lists ===

    fn merge_raw(kind: JobKind, batches: &[(usize, usize, &str)]) -> String {
        let refs: Vec<BatchResult<'_>> = batches
            .iter()
            .map(|(s, c, b)| BatchResult {
                item_start: *s,
                item_count: *c,
                result: b.as_bytes(),
            })
            .collect();
        let ctx = MergeContext {
            job_id: JOB,
            total_items: batches.iter().map(|b| b.1).sum(),
            duration_ms: DURATION,
        };
        let bytes = merge_with_section(kind, &refs, &ctx, None).unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn list_entries_are_copied_byte_for_byte_with_only_the_index_rewritten() {
        let batch = r#" {
            "failure_tags" : [ { "b": 1.50, "item_index" : 1 , "z":"\u00e9 \"]}"} ,{"item_index":null},{ } ] ,
            "inputs": [ {} , { "x" : [1, {"item_index": 7}] } , {"item_index": 0, "item_index": 1} ],
            "summary": {}
        } "#;
        let out = merge_raw(JobKind::FailureAnalysis, &[(10, 2, batch)]);
        assert!(
            out.contains(
                r#""failure_tags":[{ "b": 1.50, "item_index" : 11 , "z":"\u00e9 \"]}"},{"item_index":null},{ }]"#
            ),
            "{out}"
        );
        // Positions are inserted first; a repeated key goes through a `Value` (the last one counts).
        assert!(
            out.contains(
                r#""inputs":[{"item_index":10},{"item_index":11, "x" : [1, {"item_index": 7}] },{"item_index":11}]"#
            ),
            "{out}"
        );
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["summary"]["total_items"], 2);

        let details =
            r#"{"details":[{"item_index":0,"is_safe":false,"category":"S1"},{"id":"x"}]}"#;
        let out = merge_raw(JobKind::SecurityAudit, &[(4, 2, details)]);
        assert!(
            out.contains(
                r#""details":[{"item_index":4,"is_safe":false,"category":"S1"},{"item_index":5,"id":"x"}]"#
            ),
            "{out}"
        );
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["unsafe_items"], 1);
        assert_eq!(value["top_risk_category"], "S1");
    }

    #[test]
    fn escaped_keys_are_read_like_any_json_parser_reads_them() {
        let batch = r#"{"failure_tags":[{"item\u005findex":1,"decision":"fail","subcategory_id":"a\u0062","severity":2.5}]}"#;
        let out = merge_raw(JobKind::FailureAnalysis, &[(3, 2, batch)]);
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["failure_tags"][0]["item_index"], 4);
        assert_eq!(value["summary"]["primary_failure"], "ab");
        assert_eq!(value["summary"]["overall_severity"], 2.5);
    }

    #[test]
    fn the_section_is_written_as_one_more_field_in_key_order() {
        let (_, batches) = three_batches();
        let raw: Vec<(usize, usize, Vec<u8>)> = batches
            .iter()
            .map(|(s, c, v)| {
                let mut v = v.clone();
                v["evalgate"] = json!("the batch's own");
                (*s, *c, serde_json::to_vec(&v).unwrap())
            })
            .collect();
        let refs: Vec<BatchResult<'_>> = raw
            .iter()
            .map(|(s, c, b)| BatchResult {
                item_start: *s,
                item_count: *c,
                result: b,
            })
            .collect();
        let ctx = MergeContext {
            job_id: JOB,
            total_items: 6,
            duration_ms: DURATION,
        };
        let section = json!({ "job_id": JOB, "failed_batches": [] });
        let bytes = merge_with_section(
            JobKind::FailureAnalysis,
            &refs,
            &ctx,
            Some(("evalgate", &section)),
        )
        .unwrap();
        let mut expected = merge(JobKind::FailureAnalysis, &refs, &ctx).unwrap();
        expected["evalgate"] = section;
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value, expected);
        // The same text a `Map` of the result would give.
        assert_eq!(bytes, serde_json::to_string(&value).unwrap().as_bytes());
    }

    // === properties ===

    fn tag_strategy() -> impl Strategy<Value = TagSpec> {
        (0..SUBS.len(), 0..3usize, 0..=40u32, 40..=100u32).prop_map(|(sub, d, sev, confidence)| {
            let decision = ["pass", "fail", "unsure"][d];
            let severity = match decision {
                "fail" => 10 + sev,
                "unsure" => 5 + sev % 15,
                _ => 0,
            };
            TagSpec {
                sub,
                decision,
                severity,
                confidence,
            }
        })
    }

    fn item_strategy() -> impl Strategy<Value = Item> {
        (
            prop::collection::vec(tag_strategy(), 0..4),
            [0..=1000u32, 0..=1000u32, 0..=1000u32],
            0..=100u32,
            1..500u64,
            prop::option::of(0..CATS.len()),
        )
            .prop_map(|(tags, scores, confidence, tokens, unsafe_cat)| Item {
                id: 0,
                tags,
                scores,
                confidence,
                tokens,
                unsafe_cat,
            })
    }

    /// A dataset, batch boundaries over it (first 0, last N, strictly increasing) and a rotation
    /// for the order the batches are handed over in.
    fn partitioned() -> impl Strategy<Value = (Vec<Item>, Vec<usize>, usize)> {
        prop::collection::vec(item_strategy(), 1..40).prop_flat_map(|mut items| {
            for (id, item) in items.iter_mut().enumerate() {
                item.id = id;
            }
            let n = items.len();
            let cuts = prop::collection::vec(0..=n, 0..8).prop_map(move |mut cuts| {
                cuts.extend([0, n]);
                cuts.sort_unstable();
                cuts.dedup();
                cuts
            });
            (Just(items), cuts, any::<usize>())
        })
    }

    fn merged_split(
        kind: JobKind,
        items: &[Item],
        bounds: &[usize],
        rotation: usize,
        build: fn(&[Item], &str) -> Value,
    ) -> (Vec<(usize, usize, Value)>, Value) {
        let mut batches = split(items, bounds, build);
        let len = batches.len();
        batches.rotate_left(rotation % len);
        let merged = run(kind, &batches);
        batches.sort_by_key(|b| b.0);
        (batches, merged)
    }

    /// The brief's rule, restated naively: highest max severity, most failing tags, first seen.
    fn expected_primary(items: &[Item]) -> Option<&'static str> {
        let mut seen: Vec<(usize, u32, usize)> = Vec::new();
        for t in items
            .iter()
            .flat_map(|i| &i.tags)
            .filter(|t| t.decision == "fail")
        {
            match seen.iter_mut().find(|(sub, _, _)| *sub == t.sub) {
                Some(e) => {
                    e.1 = e.1.max(t.severity);
                    e.2 += 1;
                }
                None => seen.push((t.sub, t.severity, 1)),
            }
        }
        let mut best: Option<(usize, u32, usize)> = None;
        for e in seen {
            if best.is_none_or(|b| (e.1, e.2) > (b.1, b.2)) {
                best = Some(e);
            }
        }
        best.map(|b| SUBS[b.0].0)
    }

    fn sorted(v: &Value) -> Vec<&str> {
        let mut s = strings(v);
        s.sort_unstable();
        s
    }

    /// Whether two JSON numbers agree within 1e-9.
    fn near(a: &Value, b: &Value) -> bool {
        (f(a) - f(b)).abs() < 1e-9
    }

    type Outcome = Result<(), TestCaseError>;

    fn check_fa_partition(items: &[Item], bounds: &[usize], rotation: usize) -> Outcome {
        let whole = fa_result(items, "whole");
        let (batches, merged) =
            merged_split(JobKind::FailureAnalysis, items, bounds, rotation, fa_result);

        let tags = merged["failure_tags"].as_array().unwrap();
        let expected_tags = whole["failure_tags"].as_array().unwrap();
        prop_assert_eq!(tags.len(), expected_tags.len());
        for (tag, expected) in tags.iter().zip(expected_tags) {
            prop_assert_eq!(without(tag, &["tag_id"]), without(expected, &["tag_id"]));
        }
        let batch_tag_ids: Vec<&Value> = batches
            .iter()
            .flat_map(|b| b.2["failure_tags"].as_array().unwrap())
            .map(|t| &t["tag_id"])
            .collect();
        let tag_ids: Vec<&Value> = tags.iter().map(|t| &t["tag_id"]).collect();
        prop_assert_eq!(tag_ids, batch_tag_ids);
        prop_assert_eq!(&merged["inputs"], &whole["inputs"]);

        let (s, w) = (&merged["summary"], &whole["summary"]);
        for key in FA_COUNTS.into_iter().chain(FA_FLAGS) {
            prop_assert_eq!(&s[key], &w[key], "summary.{}", key);
        }
        for key in ["total_items", "overall_severity"] {
            prop_assert_eq!(&s[key], &w[key], "summary.{}", key);
        }
        prop_assert!(near(&s["overall_confidence"], &w["overall_confidence"]));
        prop_assert_eq!(s["primary_failure"].as_str(), expected_primary(items));
        prop_assert_eq!(
            sorted(&s["buckets_affected"]),
            sorted(&w["buckets_affected"])
        );
        for key in ["detectors_run", "detectors_skipped"] {
            prop_assert_eq!(sorted(&merged[key]), sorted(&whole[key]), "{}", key);
        }
        for key in &METRICS[..2] {
            prop_assert!(near(
                &merged["eval_metrics"][key],
                &whole["eval_metrics"][key]
            ));
        }
        for key in ["tokens_used", "total_items", "security_flags"] {
            prop_assert_eq!(&merged[key], &whole[key], "{}", key);
        }
        prop_assert_eq!(&merged["run_id"], JOB);
        prop_assert_eq!(&merged["duration_ms"], DURATION);
        Ok(())
    }

    fn check_eval_partition(items: &[Item], bounds: &[usize], rotation: usize) -> Outcome {
        let whole = eval_result(items, "whole");
        let (_, merged) = merged_split(JobKind::Evaluation, items, bounds, rotation, eval_result);
        for key in METRICS {
            prop_assert!(near(
                &merged["aggregate_scores"][key],
                &whole["aggregate_scores"][key]
            ));
        }
        prop_assert!(near(&merged["overall_score"], &whole["overall_score"]));
        for key in [
            "total_items",
            "evaluated_items",
            "items_evaluated",
            "metrics",
            "metadata",
        ] {
            prop_assert_eq!(&merged[key], &whole[key], "{}", key);
        }
        Ok(())
    }

    fn check_security_partition(items: &[Item], bounds: &[usize], rotation: usize) -> Outcome {
        let whole = security_result(items, "whole");
        let (_, merged) = merged_split(
            JobKind::SecurityAudit,
            items,
            bounds,
            rotation,
            security_result,
        );
        let counts = [
            "total_items",
            "unsafe_items",
            "unsafe_count",
            "safe_count",
            "triggered_categories",
        ];
        for key in counts {
            prop_assert_eq!(&merged[key], &whole[key], "{}", key);
        }
        for key in ["safety_score", "unsafe_rate"] {
            prop_assert!(near(&merged[key], &whole[key]));
        }
        let ids = ["id", "item_id", "batch_id"];
        let without_ids = |v: &Value| -> Vec<Value> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|d| without(d, &ids))
                .collect()
        };
        prop_assert_eq!(
            without_ids(&merged["details"]),
            without_ids(&whole["details"])
        );
        let per_category = &whole["triggered_categories"];
        let max = per_category
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_u64)
            .max();
        let top = merged["top_risk_category"].as_str();
        prop_assert_eq!(top.map(|t| per_category[t].as_u64().unwrap()), max);
        Ok(())
    }

    proptest! {
        #[test]
        fn fa_merge_of_any_partition_matches_one_run((items, bounds, rotation) in partitioned()) {
            check_fa_partition(&items, &bounds, rotation)?;
        }

        #[test]
        fn eval_merge_of_any_partition_matches_one_run((items, bounds, rotation) in partitioned()) {
            check_eval_partition(&items, &bounds, rotation)?;
        }

        #[test]
        fn security_merge_of_any_partition_matches_one_run(
            (items, bounds, rotation) in partitioned(),
        ) {
            check_security_partition(&items, &bounds, rotation)?;
        }
    }

    // === timing ===

    /// `cargo test --release --lib jobs::merge::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing run: 100 batches, 100,000 items, about 100 MB of JSON"]
    fn timing_100k_fa_items() {
        let per_batch = 1000;
        let batches: Vec<(usize, usize, Vec<u8>)> = (0..100)
            .map(|k| {
                let items: Vec<Item> = (0..per_batch)
                    .map(|i| {
                        let id = k * per_batch + i;
                        let decisions = ["pass", "fail", "pass", "unsure"];
                        let tags = (0..=id % 2)
                            .map(|t| {
                                let severity = u32::try_from((id * 7 + t) % 41).unwrap() + 5;
                                TagSpec::new(
                                    (id + t) % SUBS.len(),
                                    decisions[(id + t) % 4],
                                    severity,
                                )
                            })
                            .collect();
                        let unsafe_cat = (id % 9 == 0).then_some(id % CATS.len());
                        Item {
                            unsafe_cat,
                            ..Item::new(id, tags)
                        }
                    })
                    .collect();
                let result = fa_result(&items, &format!("fa_{k}"));
                (
                    k * per_batch,
                    per_batch,
                    serde_json::to_vec(&result).unwrap(),
                )
            })
            .collect();
        let bytes: usize = batches.iter().map(|b| b.2.len()).sum();
        let refs: Vec<BatchResult<'_>> = batches
            .iter()
            .map(|(s, c, b)| BatchResult {
                item_start: *s,
                item_count: *c,
                result: b,
            })
            .collect();
        let ctx = MergeContext {
            job_id: JOB,
            total_items: 100 * per_batch,
            duration_ms: 1,
        };
        // Baseline: parsing every batch into a `Value` (and dropping it), nothing else.
        let started = Instant::now();
        for b in &refs {
            drop(serde_json::from_slice::<Value>(b.result).unwrap());
        }
        let parse_only = started.elapsed();
        let section = json!({ "job_id": JOB, "batches": [] });
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        let mut merged = Bytes::new();
        for _ in 0..5 {
            drop(merged);
            let (started, cpu_started) = (Instant::now(), on_cpu());
            merged = merge_with_section(
                JobKind::FailureAnalysis,
                &refs,
                &ctx,
                Some(("evalgate", &section)),
            )
            .unwrap();
            wall.push(started.elapsed());
            cpu.push(on_cpu().saturating_sub(cpu_started));
        }
        wall.sort_unstable();
        cpu.sort_unstable();
        let value: Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(value["inputs"].as_array().unwrap().len(), 100 * per_batch);
        assert_eq!(value["summary"]["total_items"], 100 * per_batch);
        assert_eq!(value["evalgate"], section);
        println!(
            "merged {} batches, {:.1} MB in, {:.1} MB out, {} items: wall best {:?} median {:?}, \
             on-CPU best {:?} median {:?} (5 runs; parse-only `Value` baseline {parse_only:?})",
            refs.len(),
            as_weight(to_u64(bytes)) / 1e6,
            as_weight(to_u64(merged.len())) / 1e6,
            100 * per_batch,
            wall[0],
            wall[2],
            cpu[0],
            cpu[2],
        );
    }

    /// Time this thread has spent on a CPU (`/proc/thread-self/schedstat`; zero without it).
    fn on_cpu() -> Duration {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .map_or(Duration::ZERO, Duration::from_nanos)
    }
}
