//! Failure analysis (`FARunResult`): tags and inputs concatenated, the summary recomputed, the
//! primary failure chosen over every failing tag.
use std::{cmp::Ordering, collections::HashMap};

use serde_json::{Map, Value};

use super::{
    MergeContext, MergeError,
    aggregate::{
        Latest, MaxNumber, MeanMap, OrderedUnion, WeightedMean, finish_common, merge_loose, put,
    },
    batch::Batch,
    json::{as_count, raw_str, raw_value},
    scan::Wanted,
    write::{Entry, Merged},
};

/// The summary counts that are summed.
pub(super) const FA_COUNTS: [&str; 5] = [
    "total_failures_detected",
    "total_passes",
    "total_uncertain",
    "items_with_failures",
    "items_all_passed",
];
/// The summary flags that are OR-ed.
pub(super) const FA_FLAGS: [&str; 3] = ["should_alert", "should_gate_ci", "needs_human_review"];

/// The tag fields the summary reads, in [`Wanted`] order.
const TAG_FIELDS: [&str; 4] = ["decision", "severity", "subcategory_id", "subcategory_name"];

/// Running state of a failure-analysis merge.
#[derive(Debug, Default)]
pub(super) struct FaMerge<'a> {
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
    pub(super) fn add(&mut self, mut batch: Batch<'a>) -> Result<(), MergeError> {
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

    pub(super) fn finish(self, ctx: &MergeContext<'_>) -> Merged<'a> {
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
