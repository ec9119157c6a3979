//! Failure analysis (`/v2/failure-analysis/…`): analyze (inline 200 or 202 job), run follow-ups (status, result,
//! inputs, tags, cancel), run listing, taxonomy, insights, tag review and the playground.
//!
//! Verdicts depend only on an item's content, never on its position, so a dataset split into batches and merged
//! back gives the same tags (with `item_index` relative to each submitted dataset).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    extract::{Path, RawQuery, State},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    App,
    data::{
        self, Bucket, FEATURE_KINDS, ItemText, SAFETY_BUCKET, Subcategory, TAXONOMY, count_f64,
        fnv1a, milli_f64, pick, pick_index, preview, round_to,
    },
    error::EmuError,
    jobs::{CancelOutcome, JobClock, Phase, now_rfc3339},
    state::{Service, Store, Table, new_id},
    wire::{
        Caller, Object, Params, dataset, json_object, opt_bool, opt_str, opt_str_list,
        optional_object,
    },
};

const JOB_TYPE: &str = "failure_analysis";
const PLAYGROUND_LIMIT_PER_DAY: u32 = 10;
/// An item whose input or output contains this marker makes an async job end `failed` (a test hook).
pub(crate) const JOB_FAIL_MARKER: &str = "EMULATOR_JOB_FAIL";
const DEFAULT_EVAL_METRICS: &[&str] = &[
    "answer_relevance",
    "coherence",
    "factual_accuracy",
    "hallucination",
];

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v2/failure-analysis/analyze", post(analyze))
        .route("/v2/failure-analysis/runs", get(list_runs))
        .route("/v2/failure-analysis/runs/count", get(count_runs))
        .route("/v2/failure-analysis/runs/{id}", get(get_run))
        .route("/v2/failure-analysis/runs/{id}/status", get(run_status))
        .route("/v2/failure-analysis/runs/{id}/inputs", get(run_inputs))
        .route("/v2/failure-analysis/runs/{id}/tags", get(run_tags))
        .route("/v2/failure-analysis/runs/{id}/cancel", post(cancel_run))
        .route("/v2/failure-analysis/taxonomy", get(taxonomy))
        .route(
            "/v2/failure-analysis/taxonomy/subcategories",
            get(subcategories),
        )
        .route("/v2/failure-analysis/buckets/{bucket_id}", get(get_bucket))
        .route("/v2/failure-analysis/insights", get(insights))
        .route("/v2/failure-analysis/insights/trends", get(trends))
        .route(
            "/v2/failure-analysis/insights/security",
            get(security_insights),
        )
        .route("/v2/failure-analysis/projects", get(projects))
        .route("/v2/failure-analysis/tags/{tag_id}", patch(update_tag))
        .route("/v2/failure-analysis/playground", post(playground))
}

// === state ===

#[derive(Debug, Default)]
pub(crate) struct FaState {
    runs: Table<FaRun>,
    /// Playground runs per bearer key (the emulator's "day" is its lifetime).
    playground_runs: HashMap<String, u32>,
}

#[derive(Debug)]
struct FaRun {
    run_id: String,
    project_name: Option<String>,
    input_type: &'static str,
    minimal_mode: bool,
    feature_kind: String,
    trace_id: Option<String>,
    run_security: bool,
    clock: JobClock,
    total_items: usize,
    analysis: Analysis,
}

/// The options of one analyze request that shape the verdicts.
#[derive(Debug, Clone, Default)]
struct Options {
    run_eval: bool,
    run_security: bool,
    run_scan: bool,
    feature_kind: Option<String>,
    buckets: Option<Vec<String>>,
    subcategories: Option<Vec<String>>,
    eval_metrics: Option<Vec<String>>,
}

impl Options {
    fn minimal_mode(&self) -> bool {
        !self.run_eval && !self.run_security && !self.run_scan
    }
}

#[derive(Debug, Clone, Serialize)]
#[expect(
    clippy::struct_field_names,
    reason = "field names mirror the wire format"
)]
struct Tag {
    tag_id: String,
    bucket_id: &'static str,
    bucket_name: &'static str,
    subcategory_id: &'static str,
    subcategory_name: &'static str,
    decision: &'static str,
    severity: f64,
    confidence: f64,
    detector_type_used: &'static str,
    judge_rationale: String,
    scoring_breakdown: Value,
    eval_metric_values: Value,
    evidence_items: Vec<Value>,
    item_index: usize,
    is_reviewed: bool,
    reviewed_at: Option<String>,
    issue_url: Option<String>,
}

/// The full, deterministic outcome of analysing a dataset (revealed when the job completes).
#[derive(Debug, Clone, Default)]
struct Analysis {
    tags: Vec<Tag>,
    inputs: Vec<Value>,
    eval_metrics: Value,
    security_flags: Value,
    detectors_run: Vec<&'static str>,
    detectors_skipped: Vec<&'static str>,
    tokens_used: usize,
    unsafe_items: Vec<(usize, &'static str)>,
}

// === analysis (pure) ===

fn infer_kind(text: &ItemText) -> &'static str {
    match (text.has_context, text.has_tools) {
        (true, true) => "agentic_rag",
        (false, true) => "agent",
        (true, false) => "rag",
        (false, false) => "generic_llm",
    }
}

fn run_kind(items: &[Value], opts: &Options) -> String {
    if let Some(kind) = &opts.feature_kind {
        return kind.clone();
    }
    let texts: Vec<ItemText> = items.iter().map(ItemText::of).collect();
    let ctx = texts.iter().any(|t| t.has_context);
    let tools = texts.iter().any(|t| t.has_tools);
    infer_kind(&ItemText::shape(ctx, tools)).to_owned()
}

fn bucket_selected(bucket: &Bucket, opts: &Options) -> bool {
    if bucket.id == SAFETY_BUCKET && !opts.run_security {
        return false;
    }
    opts.buckets
        .as_ref()
        .is_none_or(|b| b.is_empty() || b.iter().any(|x| x == bucket.id))
}

fn subcategory_applies(sub: &Subcategory, kind: &str, text: &ItemText, opts: &Options) -> bool {
    sub.applies_to.contains(&kind)
        && (!sub.requires_retrieval || text.has_context)
        && (!sub.requires_tools || text.has_tools)
        && (!opts.minimal_mode() || sub.minimal_mode_compatible)
        && opts
            .subcategories
            .as_ref()
            .is_none_or(|s| s.is_empty() || s.iter().any(|x| x == sub.id))
}

fn tenths(base: u32, h: u64, span: u32) -> f64 {
    f64::from(base + pick(h, span)) / 10.0
}

fn hundredths(base: u32, h: u64, span: u32) -> f64 {
    f64::from(base + pick(h, span)) / 100.0
}

/// The tags of one item; `item_index` is its position in the submitted dataset.
fn analyse_item(item: &Value, item_index: usize, opts: &Options, run: &mut Analysis) -> Value {
    let text = ItemText::of(item);
    let kind = opts
        .feature_kind
        .as_deref()
        .unwrap_or_else(|| infer_kind(&text));
    let key = text.key().to_string();
    let applicable: Vec<(&'static Bucket, Vec<&'static Subcategory>)> = TAXONOMY
        .iter()
        .filter(|b| bucket_selected(b, opts))
        .map(|b| {
            let subs = b
                .subcategories
                .iter()
                .filter(|s| subcategory_applies(s, kind, &text, opts))
                .collect::<Vec<_>>();
            (b, subs)
        })
        .filter(|(_, subs)| !subs.is_empty())
        .collect();
    let non_safety: Vec<&str> = applicable
        .iter()
        .map(|(b, _)| b.id)
        .filter(|id| *id != SAFETY_BUCKET)
        .collect();
    let primary = (!non_safety.is_empty())
        .then(|| non_safety[pick_index(fnv1a(&[&key, "primary"]), non_safety.len())]);

    let (mut fails, mut passes, mut unsure, mut max_severity) = (0usize, 0usize, 0usize, 0.0f64);
    for (bucket, subs) in applicable {
        let sub = subs[pick_index(fnv1a(&[&key, bucket.id]), subs.len())];
        for s in subs {
            if !run.detectors_run.contains(&s.id) {
                run.detectors_run.push(s.id);
            }
        }
        let decision = if bucket.id == SAFETY_BUCKET {
            if text.is_unsafe() { "fail" } else { "pass" }
        } else if Some(bucket.id) == primary {
            if text.is_failing() {
                "fail"
            } else if text.is_unsure() {
                "unsure"
            } else {
                "pass"
            }
        } else {
            "pass"
        };
        let h_sev = fnv1a(&[&key, sub.id, "severity"]);
        let h_conf = fnv1a(&[&key, sub.id, "confidence"]);
        let (severity, confidence) = match decision {
            "fail" if bucket.id == SAFETY_BUCKET => {
                (tenths(30, h_sev, 21), hundredths(70, h_conf, 30))
            }
            "fail" => (tenths(10, h_sev, 41), hundredths(60, h_conf, 40)),
            "unsure" => (tenths(5, h_sev, 15), hundredths(40, h_conf, 20)),
            _ => (0.0, hundredths(60, h_conf, 40)),
        };
        if bucket.id == SAFETY_BUCKET && decision == "fail" {
            run.unsafe_items.push((
                item_index,
                data::unsafe_category(&text.input, &text.output, None),
            ));
        }
        match decision {
            "fail" => fails += 1,
            "unsure" => unsure += 1,
            _ => passes += 1,
        }
        max_severity = max_severity.max(severity);
        run.tags.push(make_tag(
            sub, bucket, decision, severity, confidence, &text, item_index, opts,
        ));
    }
    run.tokens_used += text.tokens();
    json!({
        "item_index": item_index,
        "input_text": text.input,
        "output_text": text.output,
        "input_preview": preview(&text.input, 100),
        "output_preview": preview(&text.output, 100),
        "context": context_list(item.get("context")),
        "tool_calls": item.get("tool_calls").cloned().unwrap_or(Value::Null),
        "trace_id": item.get("trace_id").cloned().unwrap_or(Value::Null),
        "failure_count": fails,
        "pass_count": passes,
        "unsure_count": unsure,
        "max_severity": max_severity,
    })
}

/// `context` as the list of strings `FARunInput` reads (a string becomes a one-element list).
fn context_list(context: Option<&Value>) -> Value {
    match context {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| Value::from(data::text_of(Some(p))))
            .collect::<Vec<_>>()
            .into(),
        Some(other) => json!([data::text_of(Some(other))]),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "a plain constructor for one tag's fields"
)]
fn make_tag(
    sub: &'static Subcategory,
    bucket: &'static Bucket,
    decision: &'static str,
    severity: f64,
    confidence: f64,
    text: &ItemText,
    item_index: usize,
    opts: &Options,
) -> Tag {
    let lower = sub.name.to_lowercase();
    let judge_rationale = match decision {
        "fail" => format!(
            "{}: the response shows this failure mode (severity {severity:.1}).",
            sub.name
        ),
        "unsure" => format!(
            "{}: possible issue, the evidence is inconclusive.",
            sub.name
        ),
        _ => format!("No evidence of {lower} in the response."),
    };
    let (deterministic_weight, judge_weight) = match sub.detection_approach {
        "deterministic" => (1.0, 0.0),
        "llm_judge" => (0.0, 1.0),
        _ => (0.5, 0.5),
    };
    let security = bucket.id == SAFETY_BUCKET;
    let security_override = (security && decision == "fail")
        .then(|| data::unsafe_category(&text.input, &text.output, None));
    let eval_metric_values: serde_json::Map<String, Value> = if opts.run_eval {
        sub.related_eval_metrics
            .iter()
            .map(|m| {
                (
                    (*m).to_owned(),
                    Value::from(milli_f64(data::metric_milli(m, text))),
                )
            })
            .collect()
    } else {
        serde_json::Map::new()
    };
    let mut evidence_items = Vec::new();
    if decision != "pass" {
        evidence_items.push(json!({
            "item_id": format!("ev_{:012x}", fnv1a(&[&text.key().to_string(), sub.id, "output"]) & 0xffff_ffff_ffff),
            "evidence_type": "output_span",
            "description": judge_rationale,
            "source": "output",
            "confidence": confidence,
            "content_snippet": preview(&text.output, 160),
            "metadata": { "detector": sub.detection_approach },
        }));
        if text.has_context {
            evidence_items.push(json!({
                "item_id": format!("ev_{:012x}", fnv1a(&[&text.key().to_string(), sub.id, "context"]) & 0xffff_ffff_ffff),
                "evidence_type": "context_span",
                "description": "Retrieved context consulted by the detector.",
                "source": "context",
                "confidence": confidence,
                "content_snippet": preview(&text.context, 120),
                "metadata": {},
            }));
        }
    }
    Tag {
        tag_id: String::new(),
        bucket_id: bucket.id,
        bucket_name: bucket.name,
        subcategory_id: sub.id,
        subcategory_name: sub.name,
        decision,
        severity,
        confidence,
        detector_type_used: sub.detection_approach,
        judge_rationale,
        scoring_breakdown: json!({
            "impact": sub.impact_score,
            "risk": sub.risk(),
            "final_severity": severity,
            "final_confidence": confidence,
            "frequency_weight": 1.0,
            "security_override": security_override,
            "deterministic_weight": deterministic_weight,
            "judge_weight": judge_weight,
            "security_weight": if security { 1.0 } else { 0.0 },
            "metric_agreement_bonus": 0.0,
            "disagreement_penalty": 0.0,
        }),
        eval_metric_values: Value::Object(eval_metric_values),
        evidence_items,
        item_index,
        is_reviewed: false,
        reviewed_at: None,
        issue_url: None,
    }
}

fn analyse(items: &[Value], opts: &Options, run_id: &str) -> Analysis {
    let mut run = Analysis::default();
    for (i, item) in items.iter().enumerate() {
        let input = analyse_item(item, i, opts, &mut run);
        run.inputs.push(input);
    }
    for (n, tag) in run.tags.iter_mut().enumerate() {
        tag.tag_id = format!("{run_id}.t{n}");
    }
    run.detectors_skipped = TAXONOMY
        .iter()
        .flat_map(|b| b.subcategories.iter().map(|s| s.id))
        .filter(|id| !run.detectors_run.contains(id))
        .collect();
    run.eval_metrics = if opts.run_eval {
        let metrics: Vec<String> = opts
            .eval_metrics
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                DEFAULT_EVAL_METRICS
                    .iter()
                    .map(|m| (*m).to_owned())
                    .collect()
            });
        let texts: Vec<ItemText> = items.iter().map(ItemText::of).collect();
        metrics
            .iter()
            .map(|m| {
                let sum: u64 = texts
                    .iter()
                    .map(|t| u64::from(data::metric_milli(m, t)))
                    .sum();
                let mean = if texts.is_empty() {
                    0.0
                } else {
                    #[expect(
                        clippy::cast_precision_loss,
                        reason = "sums of thousandths stay far below 2^52"
                    )]
                    let sum = sum as f64;
                    sum / 1000.0 / count_f64(texts.len())
                };
                (m.clone(), Value::from(mean))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    } else {
        json!({})
    };
    // `security_flags` is a string map in the SDK: flagged category → its name.
    run.security_flags = run
        .unsafe_items
        .iter()
        .map(|(_, c)| {
            let name = data::safety_category(c).map_or("", |cat| cat.name);
            ((*c).to_owned(), Value::from(name))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    run
}

fn summary(tags: &[Tag], total_items: usize) -> Value {
    let fails: Vec<&Tag> = tags.iter().filter(|t| t.decision == "fail").collect();
    let passes = tags.iter().filter(|t| t.decision == "pass").count();
    let uncertain = tags.iter().filter(|t| t.decision == "unsure").count();
    let primary = fails
        .iter()
        .copied()
        .reduce(|best, t| if t.severity > best.severity { t } else { best });
    let overall_severity = primary.map_or(0.0, |t| t.severity);
    let overall_confidence = if tags.is_empty() {
        0.0
    } else {
        round_to(
            tags.iter().map(|t| t.confidence).sum::<f64>() / count_f64(tags.len()),
            3,
        )
    };
    let buckets_affected: Vec<&str> = TAXONOMY
        .iter()
        .map(|b| b.id)
        .filter(|id| fails.iter().any(|t| t.bucket_id == *id))
        .collect();
    let mut failing_items: Vec<usize> = fails.iter().map(|t| t.item_index).collect();
    failing_items.sort_unstable();
    failing_items.dedup();
    let mut not_passed: Vec<usize> = tags
        .iter()
        .filter(|t| t.decision != "pass")
        .map(|t| t.item_index)
        .collect();
    not_passed.sort_unstable();
    not_passed.dedup();
    json!({
        "total_failures_detected": fails.len(),
        "total_passes": passes,
        "total_uncertain": uncertain,
        "overall_severity": overall_severity,
        "overall_confidence": overall_confidence,
        "primary_failure": primary.map(|t| t.subcategory_id),
        "primary_failure_name": primary.map(|t| t.subcategory_name),
        "buckets_affected": buckets_affected,
        "should_alert": overall_severity >= 3.0,
        "should_gate_ci": overall_severity >= 4.0,
        "needs_human_review": uncertain > 0,
        "total_items": total_items,
        "items_with_failures": failing_items.len(),
        "items_all_passed": total_items.saturating_sub(not_passed.len()),
    })
}

// === impl FaRun ===

impl FaRun {
    fn status(&self, now: Instant) -> Phase {
        self.clock.phase(now)
    }

    fn done(&self, now: Instant) -> bool {
        self.clock.is_completed(now)
    }

    fn tags(&self, now: Instant) -> &[Tag] {
        if self.done(now) {
            &self.analysis.tags
        } else {
            &[]
        }
    }

    fn result_json(&self, now: Instant) -> Value {
        let done = self.done(now);
        let a = &self.analysis;
        json!({
            "run_id": self.run_id,
            "status": self.status(now).as_str(),
            "mode": if self.minimal_mode { "minimal" } else { "full" },
            "input_type": self.input_type,
            "feature_kind": self.feature_kind,
            "project_name": self.project_name,
            "trace_id": self.trace_id,
            "summary": summary(self.tags(now), self.total_items),
            "failure_tags": self.tags(now),
            "eval_metrics": if done { a.eval_metrics.clone() } else { json!({}) },
            "eval_run_id": null,
            "security_flags": if done { a.security_flags.clone() } else { json!({}) },
            "security_batch_id": null,
            "detectors_run": if done { a.detectors_run.clone() } else { Vec::new() },
            "detectors_skipped": if done { a.detectors_skipped.clone() } else { Vec::new() },
            "duration_ms": if done { self.clock.duration_ms().max(fake_duration_ms(self.total_items)) } else { 0 },
            "tokens_used": if done { a.tokens_used } else { 0 },
            "created_at": self.clock.created_at(),
            "completed_at": self.clock.finished_at(now),
            "total_items": self.total_items,
            "inputs": if done { a.inputs.as_slice() } else { &[] },
            "error": self.clock.error(now),
        })
    }

    fn list_item_json(&self, now: Instant) -> Value {
        let done = self.done(now);
        let s = summary(self.tags(now), self.total_items);
        json!({
            "run_id": self.run_id,
            "status": self.status(now).as_str(),
            "input_type": self.input_type,
            "minimal_mode": self.minimal_mode,
            "dataset_item_count": self.total_items,
            "created_at": self.clock.created_at(),
            "feature_kind": self.feature_kind,
            "project_name": self.project_name,
            "trace_id": self.trace_id,
            "total_failures_detected": s["total_failures_detected"],
            "total_passes": s["total_passes"],
            "primary_failure": s["primary_failure"],
            "overall_severity": s["overall_severity"],
            "eval_run_id": null,
            "security_batch_id": null,
            "has_security_issues": done && !self.analysis.unsafe_items.is_empty(),
            "duration_ms": if done { self.clock.duration_ms().max(fake_duration_ms(self.total_items)) } else { 0 },
        })
    }
}

/// A plausible processing time for inline results.
fn fake_duration_ms(items: usize) -> u64 {
    25 + 7 * u64::try_from(items).unwrap_or(u64::MAX / 8)
}

// === handlers ===

fn parse_options(obj: &Object) -> Result<Options, EmuError> {
    let feature_kind = opt_str(obj, "feature_kind")?.map(str::to_owned);
    if let Some(kind) = &feature_kind
        && !FEATURE_KINDS.contains(&kind.as_str())
    {
        return Err(EmuError::BadRequest(format!(
            "Invalid feature_kind '{kind}'; expected one of {}",
            FEATURE_KINDS.join(", ")
        )));
    }
    let buckets = opt_str_list(obj, "buckets")?;
    if let Some(unknown) = buckets.iter().flatten().find(|b| data::bucket(b).is_none()) {
        return Err(EmuError::BadRequest(format!(
            "Unknown bucket_id '{unknown}'"
        )));
    }
    Ok(Options {
        run_eval: opt_bool(obj, "run_eval", true)?,
        run_security: opt_bool(obj, "run_security", true)?,
        run_scan: opt_bool(obj, "run_scan", true)?,
        feature_kind,
        buckets,
        subcategories: opt_str_list(obj, "subcategories")?,
        eval_metrics: opt_str_list(obj, "mandatory_eval_metrics")?,
    })
}

async fn analyze(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, EmuError> {
    let obj = json_object(&body)?;
    app.record_openai_key(&obj);
    let items = dataset(&obj, app.settings.max_dataset_items)?;
    let trace_id = opt_str(&obj, "trace_id")?.filter(|t| !t.is_empty());
    let project_name = opt_str(&obj, "project_name")?.filter(|p| !p.is_empty());
    let opts = parse_options(&obj)?;
    let job_duration = app.job_duration();
    let inline_max = app.settings.inline_max_items;

    let (items, input_type): (Vec<Value>, &'static str) = match (items, trace_id) {
        (Some(items), _) if !items.is_empty() => (items.to_vec(), "json"),
        (_, Some(trace_id)) => (vec![app.store().traces.item_for(trace_id)], "trace"),
        _ => {
            return Err(EmuError::BadRequest(
                "Either trace_id or dataset is required".to_owned(),
            ));
        }
    };
    let run_id = new_id("fa");
    let analysis = analyse(&items, &opts, &run_id);
    let total_items = items.len();
    let is_async = total_items > inline_max;
    let clock = if is_async {
        let failure = items
            .iter()
            .any(|i| i.to_string().contains(JOB_FAIL_MARKER))
            .then(|| "emulated job failure".to_owned());
        JobClock::start(job_duration, failure)
    } else {
        JobClock::finished()
    };
    let tokens_used = analysis.tokens_used;
    let run = FaRun {
        run_id: run_id.clone(),
        project_name: project_name.map(str::to_owned),
        input_type,
        minimal_mode: opts.minimal_mode(),
        feature_kind: run_kind(&items, &opts),
        trace_id: trace_id.map(str::to_owned),
        run_security: opts.run_security,
        clock,
        total_items,
        analysis,
    };
    let response = if is_async {
        let body = json!({
            "job_id": run_id,
            "run_id": run_id,
            "job_type": JOB_TYPE,
            "status": "queued",
            "total_items": total_items,
            "poll_url": format!("/v2/failure-analysis/runs/{run_id}/status"),
            "message": format!("Failure analysis of {total_items} items queued; poll poll_url for progress"),
        });
        (StatusCode::ACCEPTED, Json(body)).into_response()
    } else {
        (StatusCode::OK, Json(run.result_json(Instant::now()))).into_response()
    };
    let mut store = app.store();
    if let Some(name) = project_name {
        store.ensure_project(name);
    }
    store.count_usage(&caller, Service::FailureAnalysis, tokens_used);
    store.fa.runs.insert(run_id, run);
    Ok(response)
}

fn with_run<T>(app: &App, id: &str, f: impl FnOnce(&FaRun, Instant) -> T) -> Result<T, EmuError> {
    let store = app.store();
    let run = store
        .fa
        .runs
        .get(id)
        .ok_or(EmuError::NotFound("Run not found"))?;
    Ok(f(run, Instant::now()))
}

async fn get_run(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, EmuError> {
    with_run(&app, &id, |run, now| Json(run.result_json(now)))
}

async fn run_status(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_run(&app, &id, |run, now| {
        Json(
            run.clock
                .status_body(&run.run_id, JOB_TYPE, run.total_items, now),
        )
    })
}

async fn run_inputs(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_run(&app, &id, |run, now| {
        let inputs: &[Value] = if run.done(now) {
            &run.analysis.inputs
        } else {
            &[]
        };
        Json(json!({ "run_id": run.run_id, "inputs": inputs }))
    })
}

async fn run_tags(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let params = Params::parse(query.as_deref());
    let min_severity = params.float("min_severity")?;
    let decision = params.get("decision");
    let bucket_id = params.get("bucket_id");
    with_run(&app, &id, |run, now| {
        let tags: Vec<&Tag> = run
            .tags(now)
            .iter()
            .filter(|t| decision.is_none_or(|d| t.decision == d))
            .filter(|t| bucket_id.is_none_or(|b| t.bucket_id == b))
            .filter(|t| min_severity.is_none_or(|m| t.severity >= m))
            .collect();
        Json(json!({ "run_id": run.run_id, "tags": tags, "total": tags.len() }))
    })
}

async fn cancel_run(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let mut store = app.store();
    let run = store
        .fa
        .runs
        .get_mut(&id)
        .ok_or(EmuError::NotFound("Run not found"))?;
    Ok(Json(cancel_body(&mut run.clock, &run.run_id)))
}

/// The body of a cancel answer, shared by the FA, eval and security job endpoints.
pub(crate) fn cancel_body(clock: &mut JobClock, job_id: &str) -> Value {
    match clock.cancel(Instant::now()) {
        CancelOutcome::Cancelled => json!({
            "status": "cancelled",
            "message": "Job cancelled",
            "job_id": job_id,
            "run_id": job_id,
        }),
        CancelOutcome::AlreadyFinished(phase) => json!({
            "status": phase.as_str(),
            "message": format!("Job already {}", phase.as_str()),
            "job_id": job_id,
            "run_id": job_id,
        }),
    }
}

async fn list_runs(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let params = Params::parse(query.as_deref());
    let paging = params.paging(20)?;
    let project = params.get("project_name");
    let status = params.get("status");
    let store = app.store();
    let now = Instant::now();
    let matching: Vec<&FaRun> = store
        .fa
        .runs
        .iter()
        .rev()
        .filter(|r| project.is_none_or(|p| r.project_name.as_deref() == Some(p)))
        .filter(|r| status.is_none_or(|s| r.status(now).as_str() == s))
        .collect();
    let items: Vec<Value> = paging
        .slice(&matching)
        .iter()
        .map(|r| r.list_item_json(now))
        .collect();
    Ok(Json(json!({
        "items": items,
        "total": matching.len(),
        "page": paging.page,
        "page_size": paging.page_size,
        "has_more": paging.has_more(matching.len()),
    })))
}

async fn count_runs(State(app): State<App>, RawQuery(query): RawQuery) -> Json<Value> {
    let params = Params::parse(query.as_deref());
    let project = params.get("project_name");
    let status = params.get("status");
    let store = app.store();
    let now = Instant::now();
    let count = store
        .fa
        .runs
        .iter()
        .filter(|r| project.is_none_or(|p| r.project_name.as_deref() == Some(p)))
        .filter(|r| status.is_none_or(|s| r.status(now).as_str() == s))
        .count();
    Json(json!({ "count": count }))
}

async fn taxonomy(RawQuery(query): RawQuery) -> Json<Value> {
    let params = Params::parse(query.as_deref());
    Json(json!({
        "project_name": params.get("project_name"),
        "buckets": TAXONOMY.iter().map(Bucket::to_json).collect::<Vec<_>>(),
    }))
}

async fn subcategories(RawQuery(query): RawQuery) -> Json<Value> {
    let params = Params::parse(query.as_deref());
    let bucket_id = params.get("bucket_id");
    let approach = params.get("detection_approach");
    let applies_to = params.get("applies_to");
    let subs: Vec<Value> = TAXONOMY
        .iter()
        .filter(|b| bucket_id.is_none_or(|id| b.id == id))
        .flat_map(|b| {
            b.subcategories
                .iter()
                .filter(|s| approach.is_none_or(|a| s.detection_approach == a))
                .filter(|s| applies_to.is_none_or(|k| s.applies_to.contains(&k)))
                .map(move |s| {
                    let mut v = s.to_json();
                    v["bucket_id"] = json!(b.id);
                    v["bucket_name"] = json!(b.name);
                    v
                })
        })
        .collect();
    Json(json!({ "subcategories": subs }))
}

async fn get_bucket(Path(bucket_id): Path<String>) -> Result<Json<Value>, EmuError> {
    data::bucket(&bucket_id)
        .map(|b| Json(b.to_json()))
        .ok_or(EmuError::NotFound("Bucket not found"))
}

/// Completed runs in the insight window, filtered by project.
fn insight_runs<'a>(store: &'a Store, project: Option<&str>, now: Instant) -> Vec<&'a FaRun> {
    store
        .fa
        .runs
        .iter()
        .filter(|r| project.is_none_or(|p| r.project_name.as_deref() == Some(p)))
        .filter(|r| r.done(now))
        .collect()
}

fn period(days: usize) -> (String, String) {
    let now = std::time::SystemTime::now();
    let secs = u64::try_from(days).unwrap_or(365) * 86_400;
    let start = now
        .checked_sub(Duration::from_secs(secs))
        .unwrap_or(std::time::UNIX_EPOCH);
    (super::jobs::rfc3339(start), super::jobs::rfc3339(now))
}

async fn insights(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let params = Params::parse(query.as_deref());
    let days = params.int("days", 30, 1, 365)?;
    let project = params.get("project_name");
    let store = app.store();
    let now = Instant::now();
    let runs = insight_runs(&store, project, now);
    let total_items: usize = runs.iter().map(|r| r.total_items).sum();
    let fails: Vec<&Tag> = runs
        .iter()
        .flat_map(|r| r.analysis.tags.iter())
        .filter(|t| t.decision == "fail")
        .collect();
    let items_with_failures: usize = runs
        .iter()
        .map(|r| {
            summary(&r.analysis.tags, r.total_items)["items_with_failures"]
                .as_u64()
                .unwrap_or(0)
        })
        .map(|n| usize::try_from(n).unwrap_or(0))
        .sum();
    // subcategory → (occurrences, runs it occurred in, a sample tag)
    let mut by_sub: BTreeMap<&str, (usize, usize, &Tag)> = BTreeMap::new();
    let mut by_bucket: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for run in &runs {
        let mut seen_in_run: Vec<&str> = Vec::new();
        for t in run.analysis.tags.iter().filter(|t| t.decision == "fail") {
            let e = by_sub.entry(t.subcategory_id).or_insert((0, 0, t));
            e.0 += 1;
            if !seen_in_run.contains(&t.subcategory_id) {
                seen_in_run.push(t.subcategory_id);
                e.1 += 1;
            }
            by_bucket.entry(t.bucket_id).or_insert((0, t.bucket_name)).0 += 1;
        }
    }
    let mut recurring: Vec<(&str, (usize, usize, &Tag))> = by_sub.into_iter().collect();
    recurring.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    let average_severity = if fails.is_empty() {
        0.0
    } else {
        round_to(
            fails.iter().map(|t| t.severity).sum::<f64>() / count_f64(fails.len()),
            2,
        )
    };
    let top_recurring_failures: Vec<Value> = recurring
        .iter()
        .take(10)
        .map(|(id, (count, affected_runs, t))| {
            json!({
                "subcategory_id": id,
                "subcategory_name": t.subcategory_name,
                "bucket_id": t.bucket_id,
                "bucket_name": t.bucket_name,
                "occurrence_count": count,
                "affected_runs": affected_runs,
                "trend_percent": 0.0,
            })
        })
        .collect();
    let bucket_distribution: Vec<Value> = by_bucket
        .iter()
        .map(|(id, (count, name))| {
            json!({
                "bucket_id": id,
                "bucket_name": name,
                "failure_count": count,
                "percentage": round_to(ratio(*count, fails.len()) * 100.0, 1),
            })
        })
        .collect();
    let (start, end) = period(days);
    Ok(Json(json!({
        "total_runs": runs.len(),
        "total_items_analyzed": total_items,
        "overall_failure_rate": ratio(items_with_failures, total_items),
        "average_severity": average_severity,
        "period_days": days,
        "period_start": start,
        "period_end": end,
        "project_name": project,
        "top_recurring_failures": top_recurring_failures,
        "bucket_distribution": bucket_distribution,
    })))
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        round_to(count_f64(n) / count_f64(d), 4)
    }
}

async fn trends(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let params = Params::parse(query.as_deref());
    let days = params.int("days", 30, 1, 365)?;
    let project = params.get("project_name");
    let store = app.store();
    let now = Instant::now();
    let mut by_day: BTreeMap<String, (usize, usize, usize, usize, usize)> = BTreeMap::new();
    for run in insight_runs(&store, project, now) {
        let day: String = run.clock.created_at().chars().take(10).collect();
        let s = summary(&run.analysis.tags, run.total_items);
        let e = by_day.entry(day).or_default();
        e.0 += usize::try_from(s["total_failures_detected"].as_u64().unwrap_or(0)).unwrap_or(0);
        e.1 += usize::try_from(s["total_passes"].as_u64().unwrap_or(0)).unwrap_or(0);
        e.2 += 1;
        e.3 += usize::try_from(s["items_with_failures"].as_u64().unwrap_or(0)).unwrap_or(0);
        e.4 += run.total_items;
    }
    let trend_data: Vec<Value> = by_day
        .into_iter()
        .map(|(date, (failures, passes, runs, failed_items, items))| {
            json!({
                "date": date,
                "failure_count": failures,
                "pass_count": passes,
                "total_runs": runs,
                "failure_rate": ratio(failed_items, items),
            })
        })
        .collect();
    Ok(Json(
        json!({ "period_days": days, "project_name": project, "trend_data": trend_data }),
    ))
}

async fn security_insights(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let params = Params::parse(query.as_deref());
    let days = params.int("days", 30, 1, 365)?;
    let project = params.get("project_name");
    let store = app.store();
    let now = Instant::now();
    let runs: Vec<&FaRun> = insight_runs(&store, project, now)
        .into_iter()
        .filter(|r| r.run_security)
        .collect();
    let mut by_category: BTreeMap<u32, (&str, usize)> = BTreeMap::new();
    for (_, cat) in runs.iter().flat_map(|r| r.analysis.unsafe_items.iter()) {
        by_category
            .entry(data::category_rank(cat))
            .or_insert((cat, 0))
            .1 += 1;
    }
    let mut top: Vec<(&str, usize)> = by_category.values().copied().collect();
    top.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(data::category_rank(a.0).cmp(&data::category_rank(b.0)))
    });
    let (start, end) = period(days);
    Ok(Json(json!({
        "total_runs_with_security": runs.len(),
        "runs_with_issues": runs.iter().filter(|r| !r.analysis.unsafe_items.is_empty()).count(),
        "total_issues_found": runs.iter().map(|r| r.analysis.unsafe_items.len()).sum::<usize>(),
        "issues_by_category": by_category.values().map(|(cat, count)| category_issue(cat, *count)).collect::<Vec<_>>(),
        "top_categories": top.iter().take(5).map(|(cat, count)| category_issue(cat, *count)).collect::<Vec<_>>(),
        "period_days": days,
        "period_start": start,
        "period_end": end,
        "project_name": project,
    })))
}

/// An `FASecurityCategoryIssue`.
fn category_issue(category: &str, count: usize) -> Value {
    let cat = data::safety_category(category);
    json!({
        "category_id": category,
        "category_name": cat.map_or("", |c| c.name),
        "issue_count": count,
        "severity": cat.map_or("medium", |c| c.severity),
    })
}

async fn projects(State(app): State<App>) -> Json<Value> {
    let store = app.store();
    let names: Vec<&str> = store.projects.iter().map(|p| p.name.as_str()).collect();
    Json(json!({ "projects": names }))
}

async fn update_tag(
    State(app): State<App>,
    Path(tag_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, EmuError> {
    let obj = json_object(&body)?;
    let is_reviewed = match obj.get("is_reviewed") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(EmuError::BadRequest(
                "'is_reviewed' must be a boolean".to_owned(),
            ));
        }
    };
    let issue_url = opt_str(&obj, "issue_url")?;
    if is_reviewed.is_none() && issue_url.is_none() {
        return Err(EmuError::BadRequest(
            "Provide is_reviewed and/or issue_url".to_owned(),
        ));
    }
    let not_found = || EmuError::NotFound("Tag not found");
    let (run_id, n) = tag_id.rsplit_once(".t").ok_or_else(not_found)?;
    let n: usize = n.parse().map_err(|_| not_found())?;
    let mut store = app.store();
    let now = Instant::now();
    let run = store.fa.runs.get_mut(run_id).ok_or_else(not_found)?;
    if !run.done(now) {
        return Err(not_found());
    }
    let tag = run
        .analysis
        .tags
        .get_mut(n)
        .filter(|t| t.tag_id == tag_id)
        .ok_or_else(not_found)?;
    if let Some(reviewed) = is_reviewed {
        tag.is_reviewed = reviewed;
        tag.reviewed_at = reviewed.then(now_rfc3339);
    }
    if let Some(url) = issue_url {
        tag.issue_url = (!url.is_empty()).then(|| url.to_owned());
    }
    Ok(Json(json!({
        "tag_id": tag.tag_id,
        "is_reviewed": tag.is_reviewed,
        "reviewed_at": tag.reviewed_at,
        "issue_url": tag.issue_url,
    })))
}

async fn playground(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, EmuError> {
    let obj = optional_object(&body)?;
    let input = opt_str(&obj, "input")?;
    let output = opt_str(&obj, "output")?;
    let (Some(input), Some(output)) = (input, output) else {
        return Err(EmuError::BadRequest(
            "'input' and 'output' are required".to_owned(),
        ));
    };
    let mut item = json!({ "input": input, "output": output });
    if let Some(ctx) = obj.get("context").filter(|c| !c.is_null()) {
        item["context"] = ctx.clone();
    }
    if let Some(tools) = obj.get("tool_calls").filter(|c| !c.is_null()) {
        item["tool_calls"] = tools.clone();
    }
    let runs_today = {
        let mut store = app.store();
        let used = store.fa.playground_runs.entry(caller).or_default();
        if *used >= PLAYGROUND_LIMIT_PER_DAY {
            return Err(EmuError::PlaygroundQuota {
                used: *used,
                limit: PLAYGROUND_LIMIT_PER_DAY,
            });
        }
        *used += 1;
        *used
    };
    let run_id = new_id("pg");
    let opts = Options {
        run_eval: true,
        run_security: true,
        run_scan: true,
        ..Options::default()
    };
    let items = [item];
    let analysis = analyse(&items, &opts, &run_id);
    Ok(Json(json!({
        "run_id": run_id,
        "summary": summary(&analysis.tags, 1),
        "failure_tags": analysis.tags,
        "checks_passed": analysis.tags.iter().filter(|t| t.decision == "pass").count(),
        "security_flags": analysis.security_flags,
        "duration_ms": fake_duration_ms(1),
        "playground_runs_today": runs_today,
        "playground_limit_per_day": PLAYGROUND_LIMIT_PER_DAY,
    })))
}
