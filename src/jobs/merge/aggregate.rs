//! The accumulators the per-kind merges share: ordered unions, tallies, weighted means, maxima,
//! the latest timestamp, the deep merge of flag objects, and the fields every kind finishes alike.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::json::as_weight;

/// Writes the fields every kind finishes the same way.
pub(super) fn finish_common(out: &mut Map<String, Value>, completed_at: Latest) {
    if out.contains_key("completed_at")
        && let Some(latest) = completed_at.0
    {
        put(out, "completed_at", latest);
    }
    if out.contains_key("error") {
        put(out, "error", Value::Null);
    }
}

pub(super) fn put(map: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    map.insert(key.to_owned(), value.into());
}

/// Elements in order of first appearance, without duplicates (compared as JSON text).
#[derive(Debug, Default)]
pub(super) struct OrderedUnion {
    pub(super) items: Vec<Value>,
    seen: HashSet<String>,
}

impl OrderedUnion {
    /// Adds a list's elements (a lone scalar counts as a one-element list; null adds nothing).
    pub(super) fn extend(&mut self, list: Option<&Value>) {
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

    pub(super) fn contains(&self, item: &Value) -> bool {
        self.seen.contains(&item.to_string())
    }
}

/// Counts per name, in order of first appearance.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) entries: Vec<(String, u64)>,
    index: HashMap<String, usize>,
}

impl Tally {
    pub(super) fn add(&mut self, key: &str, n: u64) {
        if let Some(&i) = self.index.get(key)
            && let Some((_, count)) = self.entries.get_mut(i)
        {
            *count = count.saturating_add(n);
            return;
        }
        self.index.insert(key.to_owned(), self.entries.len());
        self.entries.push((key.to_owned(), n));
    }

    pub(super) fn get(&self, key: &str) -> Option<u64> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, n)| *n)
    }

    /// The name with the highest count; ties go to the first appearance.
    pub(super) fn top(&self) -> Option<&str> {
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
pub(super) struct WeightedMean {
    weighted_sum: f64,
    weight: f64,
    plain_sum: f64,
    n: u64,
    /// The first value, while every value so far equals it.
    uniform: Option<Value>,
}

impl WeightedMean {
    /// Adds a value if it is a number; returns whether it was.
    pub(super) fn add(&mut self, value: &Value, weight: f64) -> bool {
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

    pub(super) fn value(&self) -> Option<Value> {
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
pub(super) struct MeanMap {
    keys: BTreeMap<String, KeyMean>,
}

#[derive(Debug, Default)]
struct KeyMean {
    mean: WeightedMean,
    /// The first non-null, non-numeric value.
    fallback: Option<Value>,
}

impl MeanMap {
    pub(super) fn add(&mut self, map: Option<&Value>, weight: f64) {
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

    pub(super) fn finish(self) -> Map<String, Value> {
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
pub(super) struct MaxNumber(Option<(f64, Value)>);

impl MaxNumber {
    pub(super) fn add(&mut self, value: Option<&Value>) {
        let Some((x, v)) = value.and_then(|v| v.as_f64().map(|x| (x, v))) else {
            return;
        };
        if self.0.as_ref().is_none_or(|(best, _)| x > *best) {
            self.0 = Some((x, v.clone()));
        }
    }

    pub(super) fn into_value(self) -> Option<Value> {
        self.0.map(|(_, v)| v)
    }
}

/// The greatest RFC 3339 string seen.
#[derive(Debug, Default)]
pub(super) struct Latest(Option<String>);

impl Latest {
    pub(super) fn add(&mut self, value: Option<&Value>) {
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
pub(super) fn merge_loose(acc: &mut Value, next: Value) {
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
