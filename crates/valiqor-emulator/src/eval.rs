//! Evaluation (`/v2/evaluate/…` and `/v2/admin/…`): evaluate (inline 200 or 202 job) and evaluate-trace, job
//! status/cancel, run results, metrics and items, project stats, trends, compare, admin projects and metrics.
//!
//! Per-item metric scores are deterministic thousandths of the item's content, so `aggregate_scores` and
//! `overall_score` are exact item-weighted means that a merge of batches can reproduce.

use std::{collections::BTreeMap, collections::HashMap, time::Instant};

use axum::{
    Extension, Json, Router,
    extract::{Path, RawQuery, State},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{
    App,
    data::{self, ItemText, count_f64, milli_f64},
    error::EmuError,
    fa::{JOB_FAIL_MARKER, cancel_body},
    jobs::JobClock,
    platform,
    state::{Service, Store, Table, new_id},
    wire::{
        Caller, Object, Params, dataset, json_object, opt_bool, opt_f64, opt_str, opt_str_list,
        req_str,
    },
};

const JOB_TYPE: &str = "evaluation";
const DEFAULT_PROJECT_METRICS: &[&str] = &[
    "answer_relevance",
    "coherence",
    "factual_accuracy",
    "hallucination",
];

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v2/evaluate/", post(evaluate))
        .route("/v2/evaluate/trace", post(evaluate_trace))
        .route("/v2/evaluate/jobs/{id}/status", get(job_status))
        .route("/v2/evaluate/jobs/{id}/cancel", post(cancel_job))
        .route("/v2/evaluate/runs/{id}", get(get_run))
        .route("/v2/evaluate/runs/{id}/metrics", get(run_metrics))
        .route("/v2/evaluate/runs/{id}/items", get(run_items))
        .route("/v2/evaluate/items/{id}", get(get_item))
        .route("/v2/evaluate/projects/{pid}/stats", get(project_stats))
        .route("/v2/evaluate/trends", get(trends))
        .route("/v2/evaluate/compare", get(compare))
        .route(
            "/v2/admin/projects",
            get(list_projects).post(create_project),
        )
        .route("/v2/admin/metric-templates", get(metric_templates))
        .route(
            "/v2/admin/projects/{pid}/metrics",
            get(project_metrics).post(add_project_metric),
        )
}

// === state ===

#[derive(Debug, Default)]
pub(crate) struct EvalState {
    runs: Table<EvalRun>,
    /// Metrics configured per project id (created with the defaults on first read).
    project_metrics: HashMap<String, Vec<Value>>,
}

#[derive(Debug)]
struct EvalRun {
    run_id: String,
    project_id: String,
    project_name: String,
    run_name: Option<String>,
    metadata: Value,
    metrics: Vec<String>,
    clock: JobClock,
    items: Vec<EvalItem>,
}

#[derive(Debug)]
struct EvalItem {
    item: Value,
    /// Score per metric (same order as `EvalRun::metrics`), in thousandths.
    scores: Vec<u32>,
}

// === impl EvalRun ===

impl EvalRun {
    fn done(&self, now: Instant) -> bool {
        self.clock.is_completed(now)
    }

    /// Item-weighted mean per metric.
    fn aggregates(&self) -> Vec<(String, f64)> {
        self.metrics
            .iter()
            .enumerate()
            .map(|(m, name)| {
                let sum: u64 = self.items.iter().map(|i| u64::from(i.scores[m])).sum();
                (name.clone(), mean_milli(sum, self.items.len()))
            })
            .collect()
    }

    fn overall(&self) -> f64 {
        let aggs = self.aggregates();
        if aggs.is_empty() {
            0.0
        } else {
            aggs.iter().map(|(_, v)| v).sum::<f64>() / count_f64(aggs.len())
        }
    }

    fn result_json(&self, now: Instant) -> Value {
        let done = self.done(now);
        let evaluated = self.clock.current_item(now, self.items.len());
        let aggregate_scores: Map<String, Value> = if done {
            self.aggregates()
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect()
        } else {
            Map::new()
        };
        json!({
            "run_id": self.run_id,
            "id": self.run_id,
            "project_id": self.project_id,
            "project_name": self.project_name,
            "run_name": self.run_name,
            "status": self.clock.phase(now).as_str(),
            "overall_score": done.then(|| self.overall()),
            "aggregate_scores": aggregate_scores,
            "metrics": self.metrics,
            "total_items": self.items.len(),
            "evaluated_items": evaluated,
            "items_evaluated": evaluated,
            "metadata": self.metadata,
            "created_at": self.clock.created_at(),
            "completed_at": self.clock.finished_at(now),
            "error": self.clock.error(now),
        })
    }

    fn item_json(&self, index: usize) -> Option<Value> {
        let it = self.items.get(index)?;
        let scores: Map<String, Value> = self
            .metrics
            .iter()
            .zip(&it.scores)
            .map(|(m, s)| (m.clone(), Value::from(milli_f64(*s))))
            .collect();
        let explanations: Map<String, Value> = self
            .metrics
            .iter()
            .zip(&it.scores)
            .map(|(m, s)| (m.clone(), Value::from(data::metric_explanation(m, *s))))
            .collect();
        let total: u64 = it.scores.iter().map(|s| u64::from(*s)).sum();
        let field = |k: &str| it.item.get(k).cloned().unwrap_or(Value::Null);
        let expected = it
            .item
            .get("expected")
            .or_else(|| it.item.get("expected_output"))
            .cloned()
            .unwrap_or(Value::Null);
        let id = format!("{}.i{index}", self.run_id);
        Some(json!({
            "id": id,
            "item_id": id,
            "run_id": self.run_id,
            "item_index": index,
            "input": field("input"),
            "output": field("output"),
            "context": field("context"),
            "expected": expected,
            "overall_score": mean_milli(total, it.scores.len()),
            "metric_scores": scores,
            "scores": scores,
            "explanations": explanations,
            "metadata": it.item.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }))
    }
}

fn mean_milli(sum: u64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "sums of thousandths stay far below 2^52"
    )]
    let sum = sum as f64;
    sum / 1000.0 / count_f64(n)
}

fn score_items(items: &[Value], metrics: &[String]) -> Vec<EvalItem> {
    items
        .iter()
        .map(|item| {
            let text = ItemText::of(item);
            EvalItem {
                item: item.clone(),
                scores: metrics
                    .iter()
                    .map(|m| data::metric_milli(m, &text))
                    .collect(),
            }
        })
        .collect()
}

// === handlers ===

struct Submission<'a> {
    project_name: &'a str,
    run_name: Option<String>,
    metadata: Value,
    metrics: Vec<String>,
}

fn parse_submission(obj: &Object) -> Result<Submission<'_>, EmuError> {
    let project_name = req_str(obj, "project_name")?;
    let metrics = opt_str_list(obj, "metrics")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| EmuError::BadRequest("'metrics' must be a non-empty list".to_owned()))?;
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(EmuError::BadRequest(
                "'metadata' must be an object".to_owned(),
            ));
        }
    };
    Ok(Submission {
        project_name,
        run_name: opt_str(obj, "run_name")?.map(str::to_owned),
        metadata,
        metrics,
    })
}

/// Stores a run and answers inline (200) or with a 202 job body.
fn submit(
    app: &App,
    caller: &str,
    sub: Submission<'_>,
    items: &[Value],
    allow_async: bool,
) -> Response {
    let is_async = allow_async && items.len() > app.settings.inline_max_items;
    let clock = if is_async {
        let failure = items
            .iter()
            .any(|i| i.to_string().contains(JOB_FAIL_MARKER))
            .then(|| "emulated job failure".to_owned());
        JobClock::start(app.job_duration(), failure)
    } else {
        JobClock::finished()
    };
    let tokens: usize = items
        .iter()
        .map(|i| ItemText::of(i).tokens())
        .sum::<usize>()
        * sub.metrics.len();
    let run_id = new_id("ev");
    let scored = score_items(items, &sub.metrics);
    let project_id = app.store().ensure_project(sub.project_name).id.clone();
    let run = EvalRun {
        run_id: run_id.clone(),
        project_id,
        project_name: sub.project_name.to_owned(),
        run_name: sub.run_name,
        metadata: sub.metadata,
        items: scored,
        metrics: sub.metrics,
        clock,
    };
    let response = if is_async {
        let mut body = run.result_json(Instant::now());
        body["job_id"] = json!(run_id);
        body["job_type"] = json!(JOB_TYPE);
        body["status"] = json!("queued");
        body["poll_url"] = json!(format!("/v2/evaluate/jobs/{run_id}/status"));
        body["message"] = json!(format!(
            "Evaluation of {} items queued; poll poll_url for progress",
            items.len()
        ));
        (StatusCode::ACCEPTED, Json(body)).into_response()
    } else {
        (StatusCode::OK, Json(run.result_json(Instant::now()))).into_response()
    };
    let mut store = app.store();
    store.count_usage(caller, Service::Evaluation, tokens);
    store.eval.runs.insert(run_id, run);
    response
}

async fn evaluate(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, EmuError> {
    let obj = json_object(&body)?;
    app.record_openai_key(&obj);
    let items = dataset(&obj, app.settings.max_dataset_items)?
        .filter(|d| !d.is_empty())
        .ok_or_else(|| EmuError::BadRequest("'dataset' must be a non-empty list".to_owned()))?;
    let sub = parse_submission(&obj)?;
    Ok(submit(&app, &caller, sub, items, true))
}

async fn evaluate_trace(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, EmuError> {
    let obj = json_object(&body)?;
    app.record_openai_key(&obj);
    let trace = obj
        .get("trace")
        .filter(|t| platform::is_non_empty(t))
        .ok_or_else(|| EmuError::BadRequest("'trace' is required".to_owned()))?;
    let item = platform::trace_item(trace);
    let sub = parse_submission(&obj)?;
    Ok(submit(&app, &caller, sub, &[item], false))
}

fn with_run<T>(app: &App, id: &str, f: impl FnOnce(&EvalRun, Instant) -> T) -> Result<T, EmuError> {
    let store = app.store();
    let run = store
        .eval
        .runs
        .get(id)
        .ok_or(EmuError::NotFound("Run not found"))?;
    Ok(f(run, Instant::now()))
}

async fn job_status(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let store = app.store();
    let run = store
        .eval
        .runs
        .get(&id)
        .ok_or(EmuError::NotFound("Job not found"))?;
    Ok(Json(run.clock.status_body(
        &run.run_id,
        JOB_TYPE,
        run.items.len(),
        Instant::now(),
    )))
}

async fn cancel_job(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let mut store = app.store();
    let run = store
        .eval
        .runs
        .get_mut(&id)
        .ok_or(EmuError::NotFound("Job not found"))?;
    Ok(Json(cancel_body(&mut run.clock, &run.run_id)))
}

async fn get_run(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, EmuError> {
    with_run(&app, &id, |run, now| Json(run.result_json(now)))
}

async fn run_metrics(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_run(&app, &id, |run, now| {
        if !run.done(now) {
            return Json(json!([]));
        }
        let metrics: Vec<Value> = run
            .aggregates()
            .into_iter()
            .map(|(key, mean)| {
                let name = data::metric_display_name(&key);
                json!({
                    "metric_key": key,
                    "key": key,
                    "metric_name": name,
                    "display_name": name,
                    "mean_value": mean,
                    "score": mean,
                    "value_type": "numeric",
                })
            })
            .collect();
        Json(Value::Array(metrics))
    })
}

async fn run_items(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let paging = Params::parse(query.as_deref()).paging(20)?;
    with_run(&app, &id, |run, now| {
        let indices: Vec<usize> = if run.done(now) {
            (0..run.items.len()).collect()
        } else {
            Vec::new()
        };
        let items: Vec<Value> = paging
            .slice(&indices)
            .iter()
            .filter_map(|&i| run.item_json(i))
            .collect();
        Json(json!({
            "items": items,
            "total": indices.len(),
            "page": paging.page,
            "page_size": paging.page_size,
            "has_more": paging.has_more(indices.len()),
        }))
    })
}

async fn get_item(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, EmuError> {
    let not_found = || EmuError::NotFound("Item not found");
    let (run_id, index) = id.rsplit_once(".i").ok_or_else(not_found)?;
    let index: usize = index.parse().map_err(|_| not_found())?;
    let store = app.store();
    let run = store.eval.runs.get(run_id).ok_or_else(not_found)?;
    if !run.done(Instant::now()) {
        return Err(not_found());
    }
    run.item_json(index).map(Json).ok_or_else(not_found)
}

fn completed_runs<'a>(
    store: &'a Store,
    project_id: Option<&'a str>,
    now: Instant,
) -> impl Iterator<Item = &'a EvalRun> {
    store
        .eval
        .runs
        .iter()
        .filter(move |r| project_id.is_none_or(|p| r.project_id == p))
        .filter(move |r| r.done(now))
}

async fn project_stats(
    State(app): State<App>,
    Path(pid): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let store = app.store();
    let project = store
        .projects
        .get(&pid)
        .ok_or(EmuError::NotFound("Project not found"))?;
    let now = Instant::now();
    let all: Vec<&EvalRun> = store
        .eval
        .runs
        .iter()
        .filter(|r| r.project_id == pid)
        .collect();
    let done: Vec<&EvalRun> = completed_runs(&store, Some(&pid), now).collect();
    let items: usize = done.iter().map(|r| r.items.len()).sum();
    let weighted: f64 = done
        .iter()
        .map(|r| r.overall() * count_f64(r.items.len()))
        .sum();
    let mut per_metric: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for run in &done {
        for (m, name) in run.metrics.iter().enumerate() {
            let sum: u64 = run.items.iter().map(|i| u64::from(i.scores[m])).sum();
            let e = per_metric.entry(name.as_str()).or_default();
            e.0 += mean_milli(sum, 1);
            e.1 += run.items.len();
        }
    }
    Ok(Json(json!({
        "project_id": project.id,
        "project_name": project.name,
        "total_runs": all.len(),
        "completed_runs": done.len(),
        "total_items_evaluated": items,
        "average_overall_score": if items == 0 { None } else { Some(weighted / count_f64(items)) },
        "last_run_at": all.last().map(|r| r.clock.created_at()),
        "metrics": per_metric
            .into_iter()
            .map(|(k, (sum, n))| (k.to_owned(), Value::from(if n == 0 { 0.0 } else { sum / count_f64(n) })))
            .collect::<Map<_, _>>(),
    })))
}

async fn trends(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let params = Params::parse(query.as_deref());
    let period = params.get("period").unwrap_or("last_7_days");
    let valid_period = period
        .strip_prefix("last_")
        .and_then(|p| p.strip_suffix("_days"))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| (1..=365).contains(&n));
    if !valid_period {
        return Err(EmuError::BadRequest(format!(
            "Invalid period '{period}'; expected last_N_days"
        )));
    }
    let wanted = params.list("metrics");
    let project_id = params.get("project_id");
    let store = app.store();
    // (date, metric) → (sum of thousandths, item count, runs)
    let mut points: BTreeMap<(String, String), (u64, usize, usize)> = BTreeMap::new();
    for run in completed_runs(&store, project_id, Instant::now()) {
        let date: String = run.clock.created_at().chars().take(10).collect();
        for (m, name) in run.metrics.iter().enumerate() {
            if !wanted.is_empty() && !wanted.contains(name) {
                continue;
            }
            let e = points.entry((date.clone(), name.clone())).or_default();
            e.0 += run
                .items
                .iter()
                .map(|i| u64::from(i.scores[m]))
                .sum::<u64>();
            e.1 += run.items.len();
            e.2 += 1;
        }
    }
    let list: Vec<Value> = points
        .into_iter()
        .map(|((date, metric), (sum, n, runs))| {
            json!({ "date": date, "metric": metric, "score": mean_milli(sum, n), "run_count": runs })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn compare(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let ids = Params::parse(query.as_deref()).list("run_ids");
    if !(2..=5).contains(&ids.len()) {
        return Err(EmuError::BadRequest(
            "Provide between 2 and 5 run_ids".to_owned(),
        ));
    }
    let store = app.store();
    let now = Instant::now();
    let runs = ids
        .iter()
        .map(|id| {
            store
                .eval
                .runs
                .get(id)
                .ok_or(EmuError::NotFound("Run not found"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `EvalRunComparison` reads lists: one entry per metric, and the overall scores in run order.
    let mut names: Vec<String> = Vec::new();
    for run in &runs {
        for m in &run.metrics {
            if !names.contains(m) {
                names.push(m.clone());
            }
        }
    }
    let aggregates: Vec<Option<Vec<(String, f64)>>> = runs
        .iter()
        .map(|r| r.done(now).then(|| r.aggregates()))
        .collect();
    let metrics: Vec<Value> = names
        .iter()
        .map(|name| {
            let scores: Vec<Option<f64>> = aggregates
                .iter()
                .map(|aggs| {
                    aggs.as_ref()
                        .and_then(|a| a.iter().find(|(m, _)| m == name).map(|(_, v)| *v))
                })
                .collect();
            let by_run: Map<String, Value> = runs
                .iter()
                .zip(&scores)
                .map(|(r, s)| (r.run_id.clone(), (*s).into()))
                .collect();
            json!({
                "metric": name,
                "metric_key": name,
                "display_name": data::metric_display_name(name),
                "scores": scores,
                "by_run": by_run,
            })
        })
        .collect();
    let overall: Vec<Option<f64>> = runs
        .iter()
        .map(|r| r.done(now).then(|| r.overall()))
        .collect();
    Ok(Json(json!({
        "runs": runs.iter().map(|r| r.result_json(now)).collect::<Vec<_>>(),
        "metrics": metrics,
        "overall_scores": overall,
    })))
}

async fn list_projects(State(app): State<App>) -> Json<Value> {
    let store = app.store();
    Json(Value::Array(
        store
            .projects
            .iter()
            .map(super::state::Project::to_json)
            .collect(),
    ))
}

async fn create_project(State(app): State<App>, body: Bytes) -> Result<Json<Value>, EmuError> {
    platform::create_project_from(&app, &body).map(Json)
}

async fn metric_templates() -> Json<Value> {
    Json(Value::Array(
        data::METRIC_TEMPLATES
            .iter()
            .map(data::MetricTemplate::to_json)
            .collect(),
    ))
}

fn default_metrics() -> Vec<Value> {
    DEFAULT_PROJECT_METRICS
        .iter()
        .filter_map(|k| data::metric_template(k))
        .map(|t| {
            let mut v = t.to_json();
            v["template_id"] = v["id"].clone();
            v["id"] = json!(format!("pm_{}", t.key));
            v["default_enabled"] = json!(true);
            v["default_visible"] = json!(true);
            v["default_weight"] = json!(1.0);
            v
        })
        .collect()
}

fn metrics_of<'a>(store: &'a mut Store, pid: &str) -> Result<&'a mut Vec<Value>, EmuError> {
    if !store.projects.contains(pid) {
        return Err(EmuError::NotFound("Project not found"));
    }
    Ok(store
        .eval
        .project_metrics
        .entry(pid.to_owned())
        .or_insert_with(default_metrics))
}

async fn project_metrics(
    State(app): State<App>,
    Path(pid): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let mut store = app.store();
    Ok(Json(Value::Array(metrics_of(&mut store, &pid)?.clone())))
}

async fn add_project_metric(
    State(app): State<App>,
    Path(pid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, EmuError> {
    let obj = json_object(&body)?;
    let key = req_str(&obj, "key")?.to_owned();
    let display_name = opt_str(&obj, "display_name")?
        .map_or_else(|| data::metric_display_name(&key), str::to_owned);
    let template_id = opt_str(&obj, "template_id")?.map(str::to_owned);
    let value_type = opt_str(&obj, "value_type")?.unwrap_or("numeric").to_owned();
    let metric = json!({
        "id": format!("pm_{key}"),
        "key": key,
        "display_name": display_name,
        "definition": data::metric_template(&key).map_or("Custom project metric.", |t| t.definition),
        "value_type": value_type,
        "category": data::metric_template(&key).map_or("custom", |t| t.category),
        "template_id": template_id,
        "default_enabled": opt_bool(&obj, "default_enabled", true)?,
        "default_visible": opt_bool(&obj, "default_visible", true)?,
        "default_weight": opt_f64(&obj, "default_weight")?.unwrap_or(1.0),
    });
    let mut store = app.store();
    let metrics = metrics_of(&mut store, &pid)?;
    if metrics.iter().any(|m| m["key"] == metric["key"]) {
        return Err(EmuError::Conflict(format!(
            "Metric '{key}' already exists in this project"
        )));
    }
    metrics.push(metric.clone());
    Ok(Json(metric))
}
