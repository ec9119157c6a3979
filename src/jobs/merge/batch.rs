//! The batches: their order and ranges, and each one's top level, read in one pass with the big
//! lists kept as raw JSON.
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value, value::RawValue};

use super::{
    BatchProblem, BatchResult, MergeContext, MergeError,
    json::{as_count, as_weight, is_ws, json_type, to_u64},
};

/// A parsed batch result: its big lists as raw JSON, every other field as a `Value`.
#[derive(Debug)]
pub(super) struct Batch<'a> {
    pub(super) start: usize,
    pub(super) count: usize,
    pub(super) obj: Map<String, Value>,
    pub(super) lists: Vec<(&'static str, &'a RawValue)>,
}

/// Sorts the batches by `item_start` and checks their ranges and the item total.
pub(super) fn plan<'a>(
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
pub(super) fn parse_batch<'a>(
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

impl Batch<'_> {
    pub(super) fn malformed(&self, problem: BatchProblem) -> MergeError {
        MergeError::Malformed {
            item_start: self.start,
            problem,
        }
    }

    pub(super) fn invalid(&self, source: serde_json::Error) -> MergeError {
        MergeError::InvalidJson {
            item_start: self.start,
            source,
        }
    }

    /// The batch's item count as a counter.
    pub(super) fn items(&self) -> u64 {
        to_u64(self.count)
    }

    /// The batch's item count as a mean weight.
    pub(super) fn weight(&self) -> f64 {
        as_weight(self.items())
    }

    pub(super) fn count_field(&self, key: &str) -> Option<u64> {
        self.obj.get(key).and_then(as_count)
    }

    /// Moves an object out of the result (absent or null → empty).
    pub(super) fn take_object(
        &mut self,
        field: &'static str,
    ) -> Result<Map<String, Value>, MergeError> {
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
}
