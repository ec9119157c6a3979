//! The one-pass scan of a big list (`failure_tags`, `inputs`, `details`): each entry is read
//! once, borrowing its `item_index` and the fields the summary needs as raw JSON, and is kept as
//! its own text plus the splice that rewrites its `item_index`.
use std::{borrow::Cow, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, value::RawValue};

use super::{
    BatchProblem, MergeError,
    batch::Batch,
    json::{is_ws, raw_count, raw_type, skip, to_u64},
    write::{Entry, Patch},
};

impl<'a> Batch<'a> {
    /// Scans the list `field` (absent or null → empty): checks every entry, works out how its
    /// batch-local `item_index` becomes the original dataset's index, and calls `each` with the
    /// entry's `wanted` fields (in `wanted`'s order).
    ///
    /// With `positional`, an entry without one gets its position in the list (remapped).
    pub(super) fn scan(
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
pub(super) const MAX_WANTED: usize = 7;

/// The values of the fields a scan wants from one entry (raw JSON, borrowed from the batch).
pub(super) type Wanted<'a> = [Option<&'a RawValue>; MAX_WANTED];

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
