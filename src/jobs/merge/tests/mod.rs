//! The merge's tests: a harness and emulator-shaped fixtures here, the cases by concern in the
//! submodules (including the property tests: a random split merged equals one run).
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    BatchProblem, BatchResult, MergeContext, MergeError,
    json::{as_weight, to_u64},
    merge_with_section,
};
use crate::types::JobKind;

mod errors;
mod eval;
mod fa;
mod properties;
mod raw;
mod security;
mod timing;

const JOB: &str = "egj_0192f1c2";
const DURATION: u64 = 98_765;

// === harness ===

/// Merges completed batches and reads the result back as a `Value`.
fn merge(
    kind: JobKind,
    batches: &[BatchResult<'_>],
    ctx: &MergeContext<'_>,
) -> Result<Value, MergeError> {
    let bytes = merge_with_section(kind, batches, ctx, None)?;
    serde_json::from_slice(&bytes).map_err(|source| MergeError::Output { source })
}

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

/// Six items over three batches, with failing, passing and unsure tags.
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
