//! Security audit (`SecurityAuditResult`): counts summed, the score recomputed, categories tallied
//! from the best source each batch has.
use serde_json::{Map, Value};

use super::{
    MergeContext, MergeError,
    aggregate::{Latest, Tally, finish_common, put},
    batch::Batch,
    json::{as_count, as_weight, raw_value, round_count},
    scan::{MAX_WANTED, Wanted},
    write::{Entry, Merged},
};

/// Running state of a security-audit merge.
#[derive(Debug, Default)]
pub(super) struct SecurityMerge<'a> {
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
    pub(super) fn add(&mut self, batch: Batch<'a>) -> Result<(), MergeError> {
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

    pub(super) fn finish(self, ctx: &MergeContext<'_>) -> Merged<'a> {
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
