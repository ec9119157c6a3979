//! Merge rules: batch results combined into one result in the upstream's own shape.
//!
//! evalgate splits an oversize dataset into batches, submits each batch upstream and merges the
//! completed batches' results back into **one** result, in the shape the upstream itself returns
//! for that kind (`FARunResult`, `EvaluationResult`, `SecurityAuditResult`; `valiqor-api.md`
//! §4.2-4.4), in the original dataset order. [`merge_with_section`] is pure and CPU-bound (bytes
//! in, the merged JSON bytes out); call it from a blocking context for large jobs.
//!
//! # How
//!
//! The big per-item lists (`failure_tags`, `inputs`, `details`) never become `serde_json::Value`
//! trees: each entry is scanned once, borrowing its field values as raw JSON text, for its
//! `item_index` and the few fields the summary needs, and is then copied into the output byte for
//! byte with only its `item_index` rewritten. Every other field of a batch (summaries, metrics,
//! flags, scalars) is small and is read into a `Value`. The output is written top-level keys in
//! sorted order (the order of a `serde_json::Map`); unions and tallies use hash indexes (linear
//! time).
//!
//! Each batch is parsed and folded into a per-kind accumulator before the next one is parsed:
//! - `batch`: the checks over the batch ranges, and a batch's top level;
//! - `scan`: the one-pass scan of a big list, borrowing each entry's raw JSON;
//! - `fa`, `eval`, `security`: the per-kind rules below;
//! - `aggregate`: the accumulators they share (ordered unions, tallies, weighted means, ...);
//! - `write`: the output bytes, with the caller's section;
//! - `json`: raw-JSON and number helpers.
//!
//! # Rules
//!
//! **Every kind.**
//! - The batches are put in dataset order (`item_start`); their ranges must not overlap, and
//!   their item counts must add up to [`MergeContext::total_items`]. Every result must be a JSON
//!   object; an error names the batch by its first item.
//! - The job id replaces the result's id, `status` is `completed`. A field no rule names is the
//!   first batch's (in dataset order; absent there, absent in the result). `completed_at`, when
//!   the first batch has one, is the latest of all batches (RFC 3339 strings compared as text);
//!   `error`, when present, is `null`.
//! - Counts are non-negative integers, or floats with no fraction; a count that is missing or is
//!   not one counts as 0 (or as the batch's item count, where a rule says so).
//! - The big lists (absent or `null`: empty; otherwise an array of objects) are concatenated in
//!   dataset order, each entry copied as it is except its `item_index` (which must be a count
//!   below the batch's item count), rewritten to `item_start + item_index`. An entry without one
//!   (or with `null`) keeps it as it is in `failure_tags`; in `inputs` and `details` it gets its
//!   position in the batch's list (inserted as the entry's first key when absent). A repeated
//!   `item_index` key counts by its last value (that entry is re-written through a `Value`).
//! - Ordered unions keep the order of first appearance and compare elements as JSON text; a lone
//!   scalar counts as a one-element list. Item-weighted means return the common value exactly
//!   when all batches agree; a per-key mean of objects (`eval_metrics`, `aggregate_scores`) keeps
//!   the first non-null value for a key that is never a number.
//!
//! **Failure analysis** (`FARunResult`; `run_id` is the job id, `duration_ms` the job's wall
//! time).
//! - `failure_tags` and `inputs`: concatenated as above.
//! - `summary`: `total_failures_detected`, `total_passes`, `total_uncertain`,
//!   `items_with_failures`, `items_all_passed` summed; `total_items` summed (a batch without it
//!   counts its item count); `overall_severity` the largest of the batches' and of the failing
//!   tags' `severity` (the first of equals, 0.0 without one); `overall_confidence` the mean
//!   weighted by item count (0.0 without one); `buckets_affected` an ordered union;
//!   `should_alert`, `should_gate_ci`, `needs_human_review` OR-ed.
//! - `summary.primary_failure` (and `primary_failure_name`, the first non-null
//!   `subcategory_name`): among the failing tags (`decision` `fail`, any case) that have a
//!   `subcategory_id`, the subcategory with the highest maximum `severity`, then the most failing
//!   tags, then the first to appear. A batch with no failing tag takes part with its own summary's
//!   `primary_failure` (its `overall_severity`, and `total_failures_detected` tags, at least one).
//!   `null` when there is none.
//! - `detectors_run`: an ordered union; `detectors_skipped`: an ordered union without the
//!   detectors that ran in any batch.
//! - `tokens_used`: summed; `total_items` (when the first batch has it): summed, a batch without
//!   it counting its item count.
//! - `eval_metrics`: per key, the mean weighted by item count.
//! - `security_flags`: deep-merged (`{}` when no batch has any): keys united, booleans OR-ed,
//!   integers summed, other numbers the largest, lists united in order, objects merged the same
//!   way; otherwise the first value stays.
//!
//! **Evaluation** (`EvaluationResult`; `run_id`, and `id` when present, are the job id;
//! `duration_ms`, when present, the job's wall time).
//! - A batch weighs its `evaluated_items` (or `items_evaluated`), else its item count.
//! - `aggregate_scores`: per key, the weighted mean; `overall_score`: the weighted mean, `null`
//!   without one.
//! - `total_items`: summed (a batch without it counts its item count); the evaluated count is
//!   summed and written under each of the two names that any batch used (`evaluated_items` when
//!   none did).
//! - Every other top-level non-negative integer is summed over the batches where it is one
//!   (and written even when the first batch lacks it), except `id`, `*_id`, `*_at`,
//!   `duration_ms` and `overall_score`.
//! - `metrics`: an ordered union, when the first batch's is a list.
//!
//! **Security audit** (`SecurityAuditResult`; `batch_id`, and `audit_id` / `id` when present,
//! are the job id).
//! - A batch's total is its `total_items`, else its item count. Its unsafe count is the first of:
//!   `unsafe_items`, `unsafe_count`, total − `safe_count`, `unsafe_rate` × total (rounded), the
//!   `details` entries marked unsafe (`is_safe: false`, `status: "unsafe"`, or with a category).
//!   Its safe count is `safe_count`, else total − unsafe.
//! - `total_items`, `unsafe_items`, `safe_count` summed; `unsafe_count` too when any batch has
//!   it; `safety_score` = 1 − unsafe / total (1.0 for no items); `unsafe_rate` = unsafe / total
//!   when any batch has it.
//! - Category occurrences per batch come from the best source it has: its `details` (an entry's
//!   `violated_categories`, `triggered_categories` or `categories` list, else its `category` or
//!   `violated_category`; each category once per entry); else its `triggered_categories` (a
//!   category → count map, or a list counting one each); else its `top_risk_category` (one).
//! - `triggered_categories`: the ordered union of the batches' (a batch without one adds its
//!   occurrences), written as a category → count map when the first batch that has one has a
//!   map (counts summed; a list entry counts the batch's occurrences of it, at least one), as a
//!   list otherwise.
//! - `top_risk_category`: the category with the most occurrences over all batches, ties to the
//!   first to appear; `null` when there is none.
//! - `details`: concatenated as above.
//!
//! **Output.** One JSON object, its top-level keys in sorted order (as a `serde_json::Map` of the
//! result would write it). The caller's section, when given, is one more top-level field and
//! replaces a batch field of that name.
mod aggregate;
mod batch;
mod eval;
mod fa;
mod json;
mod scan;
mod security;
#[cfg(test)]
mod tests;
mod write;

use bytes::Bytes;
use serde_json::Value;

use self::{
    batch::{parse_batch, plan},
    eval::EvalMerge,
    fa::FaMerge,
    security::SecurityMerge,
};
use crate::types::JobKind;

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
    /// than the dataset size when some batches failed. [`merge_with_section`] checks it.
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
    /// The merged result could not be written as JSON; also the error for reading the merged
    /// bytes back into a `Value`, which fails when a copied entry holds a number `serde_json`
    /// cannot represent (such as `1e400`).
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
        JobKind::Evaluation | JobKind::ArizeTaskRun => &[],
        JobKind::SecurityAudit => &["details"],
    };
    // One task run: its final answer, exactly as Arize returned it, is the result.
    if kind == JobKind::ArizeTaskRun {
        return match order.as_slice() {
            [only] => Ok(Bytes::copy_from_slice(only.result)),
            _ => Err(MergeError::NoBatches),
        };
    }
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
        JobKind::ArizeTaskRun => return Err(MergeError::NoBatches),
    };
    merged.write(section).map(Bytes::from)
}
