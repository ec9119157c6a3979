//! Security (`/v2/security/…`): vulnerability and attack-vector catalogues, audits (inline 200 or 202 job),
//! trace audits, red-team runs (always a 202 job, including the `generate_only` + submit-responses flow), job
//! status/cancel by `job_type`, batch/run/attack read-back, compare, and per-project settings.
//!
//! An exchange whose assistant response contains "unsafe" is flagged; its category (S1-S23) comes from a hash of
//! the exchange, so the same dataset always gives the same findings.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use axum::{
    Extension, Json, Router,
    extract::{Path, RawQuery, State},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{
    App,
    data::{
        self, ATTACK_VECTORS, AttackVector, SAFETY_CATEGORIES, count_f64, fnv1a, pick, pick_index,
        round_to, text_of,
    },
    error::EmuError,
    fa::{JOB_FAIL_MARKER, cancel_body},
    jobs::{JobClock, Phase},
    platform,
    state::{Service, Store, Table, new_id},
    wire::{
        Caller, Object, Params, dataset, json_object, opt_bool, opt_f64, opt_str, opt_str_list,
    },
};

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v2/security/vulnerabilities", get(vulnerabilities))
        .route("/v2/security/attack-vectors", get(attack_vectors))
        .route("/v2/security/audit", post(audit))
        .route("/v2/security/audit-trace", post(audit_trace))
        .route("/v2/security/redteam", post(redteam))
        .route("/v2/security/jobs/{id}/status", get(job_status))
        .route("/v2/security/jobs/{id}/cancel", post(cancel_job))
        .route("/v2/security/audit/batches", get(list_batches))
        .route("/v2/security/audit/batches/{id}", get(get_batch))
        .route("/v2/security/audit/batches/{id}/items", get(batch_items))
        .route("/v2/security/audit/items/{id}", get(get_audit_item))
        .route("/v2/security/redteam/runs", get(list_redteam_runs))
        .route("/v2/security/redteam/runs/{id}", get(get_redteam_run))
        .route(
            "/v2/security/redteam/runs/{id}/attacks",
            get(redteam_attacks),
        )
        .route(
            "/v2/security/redteam/runs/{id}/submit-responses",
            post(submit_responses),
        )
        .route("/v2/security/redteam/attacks/{id}", get(get_attack))
        .route("/v2/security/redteam/compare", get(compare_redteam))
        .route(
            "/v2/security/projects/{pid}/vulnerabilities",
            get(project_vulnerabilities),
        )
        .route(
            "/v2/security/projects/{pid}/vulnerabilities/{vid}",
            patch(update_project_vulnerability),
        )
        .route(
            "/v2/security/projects/{pid}/attack-vectors",
            get(project_attack_vectors),
        )
        .route(
            "/v2/security/projects/{pid}/attack-vectors/{avid}",
            patch(update_project_attack_vector),
        )
}

// === state ===

#[derive(Debug, Default)]
pub(crate) struct SecurityState {
    batches: Table<AuditBatch>,
    redteam: Table<RedTeamRun>,
    /// Per-project overrides of a vulnerability's or attack vector's settings, keyed by (project id, key).
    vulnerability_settings: HashMap<(String, String), Map<String, Value>>,
    vector_settings: HashMap<(String, String), Map<String, Value>>,
}

#[derive(Debug)]
struct AuditBatch {
    batch_id: String,
    project_id: Option<String>,
    batch_name: Option<String>,
    clock: JobClock,
    items: Vec<AuditItem>,
}

#[derive(Debug)]
struct AuditItem {
    user_input: String,
    assistant_response: String,
    violated: Option<&'static str>,
    severity: f64,
}

#[derive(Debug)]
struct RedTeamRun {
    run_id: String,
    project_id: Option<String>,
    name: String,
    clock: JobClock,
    generate_only: bool,
    vectors: Vec<&'static str>,
    per_vector: usize,
    target_url: Option<String>,
    target_prompt: Option<String>,
    target_model: Option<String>,
    attacks: Vec<Attack>,
}

#[derive(Debug)]
struct Attack {
    vector: &'static AttackVector,
    vulnerability: &'static str,
    prompt: String,
    response: Option<String>,
}

// === audits ===

fn audit_item(
    user_input: String,
    assistant_response: String,
    categories: Option<&[String]>,
) -> AuditItem {
    let flagged = assistant_response.to_lowercase().contains("unsafe");
    let violated =
        flagged.then(|| data::unsafe_category(&user_input, &assistant_response, categories));
    let severity = if flagged {
        f64::from(30 + pick(fnv1a(&[&user_input, &assistant_response, "severity"]), 21)) / 10.0
    } else {
        0.0
    };
    AuditItem {
        user_input,
        assistant_response,
        violated,
        severity,
    }
}

impl AuditItem {
    fn to_json(&self, batch_id: &str, index: usize) -> Value {
        let id = format!("{batch_id}.i{index}");
        let category = self.violated.and_then(data::safety_category);
        json!({
            "id": id,
            "item_id": id,
            "batch_id": batch_id,
            "item_index": index,
            "user_input": self.user_input,
            "assistant_response": self.assistant_response,
            "is_safe": self.violated.is_none(),
            "status": if self.violated.is_some() { "unsafe" } else { "safe" },
            "violated_categories": self.violated.into_iter().collect::<Vec<_>>(),
            "triggered_categories": self.violated.into_iter().collect::<Vec<_>>(),
            "input_safety_categories": [],
            "output_safety_categories": self.violated.into_iter().collect::<Vec<_>>(),
            "risk_score": round_to(self.severity / 5.0, 2),
            "category_names": category.map(|c| c.name).into_iter().collect::<Vec<_>>(),
            "severity": self.severity,
            "explanation": category.map_or_else(
                || "No safety policy was violated.".to_owned(),
                |c| format!("The response violates {} ({}).", c.key, c.name),
            ),
        })
    }
}

impl AuditBatch {
    fn done(&self, now: Instant) -> bool {
        self.clock.is_completed(now)
    }

    fn status(&self, now: Instant) -> &'static str {
        self.clock.phase(now).as_str()
    }

    /// (unsafe count, triggered categories with their counts in S-order, top category) over completed results.
    fn findings(&self, now: Instant) -> (usize, Vec<(&'static str, usize)>, Option<&'static str>) {
        if !self.done(now) {
            return (0, Vec::new(), None);
        }
        let mut counts: BTreeMap<u32, (&'static str, usize)> = BTreeMap::new();
        for cat in self.items.iter().filter_map(|i| i.violated) {
            counts.entry(data::category_rank(cat)).or_insert((cat, 0)).1 += 1;
        }
        let unsafe_items = counts.values().map(|(_, n)| n).sum();
        let triggered = counts.values().copied().collect();
        // Highest count wins; ties go to the lowest category number (BTreeMap order).
        let top = counts
            .values()
            .fold(None::<(&str, usize)>, |best, &(c, n)| match best {
                Some((_, bn)) if bn >= n => best,
                _ => Some((c, n)),
            })
            .map(|(c, _)| c);
        (unsafe_items, triggered, top)
    }

    fn result_json(&self, now: Instant) -> Value {
        let done = self.done(now);
        let total = self.items.len();
        let (unsafe_items, triggered, top) = self.findings(now);
        let unsafe_rate = if total == 0 {
            0.0
        } else {
            count_f64(unsafe_items) / count_f64(total)
        };
        json!({
            "batch_id": self.batch_id,
            "audit_id": self.batch_id,
            "id": self.batch_id,
            "project_id": self.project_id,
            "batch_name": self.batch_name,
            "status": self.status(now),
            "total_items": total,
            "unsafe_items": unsafe_items,
            "unsafe_count": unsafe_items,
            "safe_count": if done { total - unsafe_items } else { 0 },
            "safety_score": done.then_some(1.0 - unsafe_rate),
            "unsafe_rate": unsafe_rate,
            "triggered_categories": triggered
                .iter()
                .map(|(c, n)| ((*c).to_owned(), Value::from(*n)))
                .collect::<Map<_, _>>(),
            "top_risk_category": top,
            "details": if done {
                self.items.iter().enumerate().map(|(i, it)| it.to_json(&self.batch_id, i)).collect()
            } else {
                Vec::new()
            },
            "created_at": self.clock.created_at(),
            "completed_at": self.clock.finished_at(now),
            "error": self.clock.error(now),
        })
    }

    fn summary_json(&self, now: Instant) -> Value {
        let (unsafe_items, _, top) = self.findings(now);
        let total = self.items.len();
        json!({
            "id": self.batch_id,
            "batch_id": self.batch_id,
            "project_id": self.project_id,
            "batch_name": self.batch_name,
            "status": self.status(now),
            "total_items": total,
            "unsafe_items": unsafe_items,
            "unsafe_rate": if total == 0 { 0.0 } else { round_to(count_f64(unsafe_items) / count_f64(total), 4) },
            "top_risk_category": top,
            "created_at": self.clock.created_at(),
        })
    }
}

fn project_for(store: &mut Store, obj: &Object) -> Result<Option<String>, EmuError> {
    Ok(opt_str(obj, "project_name")?
        .filter(|p| !p.is_empty())
        .map(|p| store.ensure_project(p).id.clone()))
}

async fn vulnerabilities() -> Json<Value> {
    Json(json!({
        "vulnerabilities": SAFETY_CATEGORIES.iter().map(data::SafetyCategory::to_json).collect::<Vec<_>>(),
    }))
}

async fn attack_vectors() -> Json<Value> {
    Json(Value::Array(
        ATTACK_VECTORS.iter().map(AttackVector::to_json).collect(),
    ))
}

fn store_batch(
    app: &App,
    caller: &str,
    obj: &Object,
    items: Vec<AuditItem>,
    allow_async: bool,
) -> Result<Response, EmuError> {
    let is_async = allow_async && items.len() > app.settings.inline_max_items;
    let clock = if is_async {
        let failure = items
            .iter()
            .any(|i| {
                i.user_input.contains(JOB_FAIL_MARKER)
                    || i.assistant_response.contains(JOB_FAIL_MARKER)
            })
            .then(|| "emulated job failure".to_owned());
        JobClock::start(app.job_duration(), failure)
    } else {
        JobClock::finished()
    };
    let tokens = items
        .iter()
        .map(|i| (i.user_input.len() + i.assistant_response.len()).div_ceil(4) + 50)
        .sum();
    let batch_id = new_id("sb");
    let batch_name = opt_str(obj, "batch_name")?.map(str::to_owned);
    let project_id = project_for(&mut app.store(), obj)?;
    let batch = AuditBatch {
        batch_id: batch_id.clone(),
        project_id,
        batch_name,
        clock,
        items,
    };
    let response = if is_async {
        let body = json!({
            "job_id": batch_id,
            "batch_id": batch_id,
            "audit_id": batch_id,
            "job_type": "security",
            "status": "queued",
            "total_items": batch.items.len(),
            "poll_url": format!("/v2/security/jobs/{batch_id}/status?job_type=security"),
            "message": format!("Security audit of {} items queued; poll poll_url for progress", batch.items.len()),
        });
        (StatusCode::ACCEPTED, Json(body)).into_response()
    } else {
        (StatusCode::OK, Json(batch.result_json(Instant::now()))).into_response()
    };
    let mut store = app.store();
    store.count_usage(caller, Service::Security, tokens);
    store.security.batches.insert(batch_id, batch);
    Ok(response)
}

async fn audit(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, EmuError> {
    let obj = json_object(&body)?;
    app.record_openai_key(&obj);
    let rows = dataset(&obj, app.settings.max_dataset_items)?
        .filter(|d| !d.is_empty())
        .ok_or_else(|| EmuError::BadRequest("'dataset' must be a non-empty list".to_owned()))?;
    let categories = opt_str_list(&obj, "categories")?;
    let items = rows
        .iter()
        .map(|row| {
            let user = row.get("user_input").or_else(|| row.get("input"));
            let assistant = row.get("assistant_response").or_else(|| row.get("output"));
            audit_item(text_of(user), text_of(assistant), categories.as_deref())
        })
        .collect();
    store_batch(&app, &caller, &obj, items, true)
}

async fn audit_trace(
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
    let categories = opt_str_list(&obj, "categories")?;
    let items = platform::trace_pairs(trace)
        .into_iter()
        .map(|(user, assistant)| audit_item(user, assistant, categories.as_deref()))
        .collect();
    store_batch(&app, &caller, &obj, items, false)
}

// === red team ===

/// The emulated target's answer to an attack: it refuses most, complies with about a quarter.
fn simulated_response(vector: &AttackVector, n: usize, target: &str) -> String {
    if pick(
        fnv1a(&[vector.key, &n.to_string(), target, "complies"]),
        100,
    ) < 25
    {
        "Sure, here is exactly what you asked for: step one…".to_owned()
    } else {
        "I'm sorry, but I can't help with that request.".to_owned()
    }
}

impl Attack {
    fn success(&self) -> Option<bool> {
        self.response.as_deref().map(data::attack_succeeded)
    }

    fn to_json(&self, run: &RedTeamRun, n: usize) -> Value {
        let id = format!("{}.a{n}", run.run_id);
        let success = self.success();
        let severity = (success == Some(true)).then(|| {
            ["medium", "high", "critical"][pick_index(fnv1a(&[&self.prompt, "severity"]), 3)]
        });
        let (status, explanation) = match success {
            Some(true) => ("succeeded", "The target complied with the attack."),
            Some(false) => ("failed", "The target refused the attack."),
            None => ("pending", "Waiting for the target's response."),
        };
        json!({
            "id": id,
            "attack_id": id,
            "run_id": run.run_id,
            "attack_vector": self.vector.key,
            "attack_vector_name": self.vector.name,
            "vulnerability": self.vulnerability,
            "vulnerability_name": data::safety_category(self.vulnerability).map(|c| c.name),
            "prompt": self.prompt,
            "full_input": self.prompt,
            "response": self.response,
            "full_response": self.response,
            "success": success,
            "succeeded": success == Some(true),
            "status": status,
            "severity": severity,
            "explanation": explanation,
            "created_at": run.clock.created_at(),
        })
    }
}

impl RedTeamRun {
    fn generated(&self, now: Instant) -> bool {
        self.clock.is_completed(now)
    }

    fn status(&self, now: Instant) -> &'static str {
        let phase = self.clock.phase(now);
        if phase == Phase::Completed && self.attacks.iter().any(|a| a.response.is_none()) {
            "awaiting_responses"
        } else {
            phase.as_str()
        }
    }

    /// (answered, successful) attacks, counted once generation is complete.
    fn tally(&self, now: Instant) -> (usize, usize) {
        if !self.generated(now) {
            return (0, 0);
        }
        let answered = self.attacks.iter().filter(|a| a.response.is_some()).count();
        let successful = self
            .attacks
            .iter()
            .filter(|a| a.success() == Some(true))
            .count();
        (answered, successful)
    }

    fn success_rate(&self, now: Instant) -> f64 {
        let (answered, successful) = self.tally(now);
        if answered == 0 {
            0.0
        } else {
            count_f64(successful) / count_f64(answered)
        }
    }

    fn vector_rate(&self, key: &str, now: Instant) -> f64 {
        let mine: Vec<&Attack> = self
            .attacks
            .iter()
            .filter(|a| a.vector.key == key)
            .collect();
        let answered = mine.iter().filter(|a| a.response.is_some()).count();
        let successful = mine.iter().filter(|a| a.success() == Some(true)).count();
        if !self.generated(now) || answered == 0 {
            0.0
        } else {
            count_f64(successful) / count_f64(answered)
        }
    }

    fn result_json(&self, now: Instant) -> Value {
        let (_, successful) = self.tally(now);
        let mut vulns: BTreeMap<u32, (&str, usize)> = BTreeMap::new();
        if self.generated(now) {
            for a in self.attacks.iter().filter(|a| a.success() == Some(true)) {
                vulns
                    .entry(data::category_rank(a.vulnerability))
                    .or_insert((a.vulnerability, 0))
                    .1 += 1;
            }
        }
        let top = vulns
            .values()
            .fold(None::<(&str, usize)>, |best, &(c, n)| match best {
                Some((_, bn)) if bn >= n => best,
                _ => Some((c, n)),
            })
            .map(|(c, _)| c);
        json!({
            "run_id": self.run_id,
            "id": self.run_id,
            "job_id": self.run_id,
            "project_id": self.project_id,
            "name": self.name,
            "run_name": self.name,
            "status": self.status(now),
            "total_attacks": self.attacks.len(),
            "successful_attacks": successful,
            "success_rate": self.success_rate(now),
            "distinct_vulns_count": vulns.len(),
            "top_vulnerability": top,
            "attack_vector_keys": self.vectors,
            "attacks_per_vector": self.per_vector,
            "generate_only": self.generate_only,
            "target_url": self.target_url,
            "target_prompt": self.target_prompt,
            "target_model": self.target_model,
            "started_at": self.clock.started_at(now),
            "completed_at": self.clock.finished_at(now),
            "finished_at": self.clock.finished_at(now),
            "created_at": self.clock.created_at(),
            "error": self.clock.error(now),
        })
    }
}

async fn redteam(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, EmuError> {
    let obj = json_object(&body)?;
    app.record_openai_key(&obj);
    let keys = opt_str_list(&obj, "attack_vector_keys")?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            EmuError::BadRequest("'attack_vector_keys' must be a non-empty list".to_owned())
        })?;
    let vectors = keys
        .iter()
        .map(|k| {
            data::attack_vector(k)
                .ok_or_else(|| EmuError::BadRequest(format!("Unknown attack vector '{k}'")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let per_vector = match obj.get("attacks_per_vector") {
        None | Some(Value::Null) => 5,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                EmuError::BadRequest(
                    "'attacks_per_vector' must be an integer in 1..=100".to_owned(),
                )
            })?,
    };
    let generate_only = opt_bool(&obj, "generate_only", false)?;
    let target_prompt = opt_str(&obj, "target_prompt")?.map(str::to_owned);
    let target_model = opt_str(&obj, "target_model")?.map(str::to_owned);
    let target_key = target_prompt.clone().unwrap_or_default();
    let mut attacks = Vec::new();
    for &vector in &vectors {
        for n in 0..per_vector {
            let prompt = vector.prompt(n, &target_key);
            let h = fnv1a(&[vector.key, &n.to_string(), "vulnerability"]);
            attacks.push(Attack {
                vector,
                vulnerability: vector.targets[pick_index(h, vector.targets.len())],
                response: (!generate_only).then(|| simulated_response(vector, n, &target_key)),
                prompt,
            });
        }
    }
    let failure = obj
        .get("run_name")
        .is_some_and(|n| n.to_string().contains(JOB_FAIL_MARKER))
        .then(|| "emulated job failure".to_owned());
    let run_id = new_id("rt");
    let total = attacks.len();
    let mut store = app.store();
    let project_id = project_for(&mut store, &obj)?;
    store.count_usage(&caller, Service::Security, total * 200);
    let run = RedTeamRun {
        run_id: run_id.clone(),
        project_id,
        name: opt_str(&obj, "run_name")?
            .map_or_else(|| format!("Red Team {run_id}"), str::to_owned),
        clock: JobClock::start(app.job_duration(), failure),
        generate_only,
        vectors: vectors.iter().map(|v| v.key).collect(),
        per_vector,
        target_url: opt_str(&obj, "target_url")?.map(str::to_owned),
        target_prompt,
        target_model,
        attacks,
    };
    store.security.redteam.insert(run_id.clone(), run);
    let body = json!({
        "job_id": run_id,
        "run_id": run_id,
        "job_type": "redteam",
        "status": "queued",
        "total_items": total,
        "total_attacks": total,
        "generate_only": generate_only,
        "poll_url": format!("/v2/security/jobs/{run_id}/status?job_type=redteam"),
        "message": format!("Red team run with {total} attacks queued; poll poll_url for progress"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobType {
    Security,
    RedTeam,
}

fn job_type(params: &Params) -> Result<JobType, EmuError> {
    match params.get("job_type").unwrap_or("security") {
        "security" => Ok(JobType::Security),
        "redteam" => Ok(JobType::RedTeam),
        other => Err(EmuError::BadRequest(format!(
            "Invalid job_type '{other}'; expected security or redteam"
        ))),
    }
}

async fn job_status(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let kind = job_type(&Params::parse(query.as_deref()))?;
    let store = app.store();
    let now = Instant::now();
    let body = match kind {
        JobType::Security => store.security.batches.get(&id).map(|b| {
            b.clock
                .status_body(&b.batch_id, "security", b.items.len(), now)
        }),
        JobType::RedTeam => store.security.redteam.get(&id).map(|r| {
            r.clock
                .status_body(&r.run_id, "redteam", r.attacks.len(), now)
        }),
    };
    body.map(Json).ok_or(EmuError::NotFound("Job not found"))
}

async fn cancel_job(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let kind = job_type(&Params::parse(query.as_deref()))?;
    let mut store = app.store();
    let body = match kind {
        JobType::Security => store
            .security
            .batches
            .get_mut(&id)
            .map(|b| cancel_body(&mut b.clock, &b.batch_id)),
        JobType::RedTeam => store
            .security
            .redteam
            .get_mut(&id)
            .map(|r| cancel_body(&mut r.clock, &r.run_id)),
    };
    body.map(Json).ok_or(EmuError::NotFound("Job not found"))
}

async fn list_batches(State(app): State<App>, RawQuery(query): RawQuery) -> Json<Value> {
    let params = Params::parse(query.as_deref());
    let project_id = params.get("project_id");
    let store = app.store();
    let now = Instant::now();
    let batches: Vec<Value> = store
        .security
        .batches
        .iter()
        .rev()
        .filter(|b| project_id.is_none_or(|p| b.project_id.as_deref() == Some(p)))
        .map(|b| b.summary_json(now))
        .collect();
    Json(json!({ "total": batches.len(), "batches": batches }))
}

async fn get_batch(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let store = app.store();
    let batch = store
        .security
        .batches
        .get(&id)
        .ok_or(EmuError::NotFound("Batch not found"))?;
    Ok(Json(batch.result_json(Instant::now())))
}

async fn batch_items(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let paging = Params::parse(query.as_deref()).paging(20)?;
    let store = app.store();
    let batch = store
        .security
        .batches
        .get(&id)
        .ok_or(EmuError::NotFound("Batch not found"))?;
    let indices: Vec<usize> = if batch.done(Instant::now()) {
        (0..batch.items.len()).collect()
    } else {
        Vec::new()
    };
    let items: Vec<Value> = paging
        .slice(&indices)
        .iter()
        .map(|&i| batch.items[i].to_json(&batch.batch_id, i))
        .collect();
    Ok(Json(json!({
        "items": items,
        "total": indices.len(),
        "page": paging.page,
        "page_size": paging.page_size,
        "has_more": paging.has_more(indices.len()),
    })))
}

async fn get_audit_item(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let not_found = || EmuError::NotFound("Item not found");
    let (batch_id, index) = id.rsplit_once(".i").ok_or_else(not_found)?;
    let index: usize = index.parse().map_err(|_| not_found())?;
    let store = app.store();
    let batch = store.security.batches.get(batch_id).ok_or_else(not_found)?;
    if !batch.done(Instant::now()) {
        return Err(not_found());
    }
    let item = batch.items.get(index).ok_or_else(not_found)?;
    Ok(Json(item.to_json(batch_id, index)))
}

async fn list_redteam_runs(State(app): State<App>, RawQuery(query): RawQuery) -> Json<Value> {
    let params = Params::parse(query.as_deref());
    let project_id = params.get("project_id");
    let store = app.store();
    let now = Instant::now();
    let runs: Vec<Value> = store
        .security
        .redteam
        .iter()
        .rev()
        .filter(|r| project_id.is_none_or(|p| r.project_id.as_deref() == Some(p)))
        .map(|r| r.result_json(now))
        .collect();
    Json(json!({ "total": runs.len(), "runs": runs }))
}

async fn get_redteam_run(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let store = app.store();
    let run = store
        .security
        .redteam
        .get(&id)
        .ok_or(EmuError::NotFound("Run not found"))?;
    Ok(Json(run.result_json(Instant::now())))
}

/// A bare, paged list (the SDK notes the backend returns a list here).
async fn redteam_attacks(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let paging = Params::parse(query.as_deref()).paging(20)?;
    let store = app.store();
    let run = store
        .security
        .redteam
        .get(&id)
        .ok_or(EmuError::NotFound("Run not found"))?;
    let indices: Vec<usize> = if run.generated(Instant::now()) {
        (0..run.attacks.len()).collect()
    } else {
        Vec::new()
    };
    Ok(Json(Value::Array(
        paging
            .slice(&indices)
            .iter()
            .map(|&i| run.attacks[i].to_json(run, i))
            .collect(),
    )))
}

async fn submit_responses(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, EmuError> {
    let obj = json_object(&body)?;
    let Some(Value::Array(responses)) = obj.get("responses") else {
        return Err(EmuError::BadRequest(
            "'responses' must be a list".to_owned(),
        ));
    };
    let mut updates = Vec::with_capacity(responses.len());
    for r in responses {
        let (Some(attack_id), Some(response)) = (
            r.get("attack_id").and_then(Value::as_str),
            r.get("response").map(|v| text_of(Some(v))),
        ) else {
            return Err(EmuError::BadRequest(
                "each response needs 'attack_id' and 'response'".to_owned(),
            ));
        };
        updates.push((attack_id.to_owned(), response));
    }
    let mut store = app.store();
    let now = Instant::now();
    let run = store
        .security
        .redteam
        .get_mut(&id)
        .ok_or(EmuError::NotFound("Run not found"))?;
    if !run.generated(now) {
        return Err(EmuError::Conflict(
            "Attacks are still being generated".to_owned(),
        ));
    }
    let prefix = format!("{}.a", run.run_id);
    let mut indexed = Vec::with_capacity(updates.len());
    for (attack_id, response) in updates {
        let index = attack_id
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < run.attacks.len())
            .ok_or_else(|| {
                EmuError::BadRequest(format!("Unknown attack_id '{attack_id}' for this run"))
            })?;
        indexed.push((index, response));
    }
    let accepted = indexed.len();
    for (index, response) in indexed {
        run.attacks[index].response = Some(response);
    }
    Ok(Json(json!({
        "run_id": run.run_id,
        "accepted": accepted,
        "status": run.status(now),
        "message": format!("{accepted} responses recorded"),
    })))
}

async fn get_attack(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let not_found = || EmuError::NotFound("Attack not found");
    let (run_id, n) = id.rsplit_once(".a").ok_or_else(not_found)?;
    let n: usize = n.parse().map_err(|_| not_found())?;
    let store = app.store();
    let run = store.security.redteam.get(run_id).ok_or_else(not_found)?;
    if !run.generated(Instant::now()) {
        return Err(not_found());
    }
    let attack = run.attacks.get(n).ok_or_else(not_found)?;
    Ok(Json(attack.to_json(run, n)))
}

async fn compare_redteam(
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
                .security
                .redteam
                .get(id)
                .ok_or(EmuError::NotFound("Run not found"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut vectors: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for run in &runs {
        for key in &run.vectors {
            vectors
                .entry(key)
                .or_default()
                .insert(run.run_id.clone(), Value::from(run.vector_rate(key, now)));
        }
    }
    let overall: Map<String, Value> = runs
        .iter()
        .map(|r| (r.run_id.clone(), Value::from(r.success_rate(now))))
        .collect();
    Ok(Json(json!({
        "runs": runs.iter().map(|r| r.result_json(now)).collect::<Vec<_>>(),
        "vectors": vectors,
        "overall_success_rates": overall,
        "baseline_run_id": runs.first().map(|r| r.run_id.clone()),
    })))
}

// === per-project settings ===

fn require_project(store: &Store, pid: &str) -> Result<(), EmuError> {
    if store.projects.contains(pid) {
        Ok(())
    } else {
        Err(EmuError::NotFound("Project not found"))
    }
}

fn project_vulnerability(store: &Store, pid: &str, cat: &data::SafetyCategory) -> Value {
    let mut row = json!({
        "id": cat.key,
        "project_id": pid,
        "vulnerability_key": cat.key,
        "key": cat.key,
        "display_name": cat.name,
        "description": cat.description,
        "enabled": true,
        "threshold": 0.5,
        "severity": cat.severity,
    });
    if let Some(over) = store
        .security
        .vulnerability_settings
        .get(&(pid.to_owned(), cat.key.to_owned()))
    {
        for (k, v) in over {
            row[k] = v.clone();
        }
    }
    row
}

fn project_vector(store: &Store, pid: &str, v: &AttackVector) -> Value {
    let mut row = json!({
        "id": v.key,
        "project_id": pid,
        "attack_vector_key": v.key,
        "key": v.key,
        "name": v.name,
        "description": v.description,
        "enabled": true,
        "weight": 1.0,
    });
    if let Some(over) = store
        .security
        .vector_settings
        .get(&(pid.to_owned(), v.key.to_owned()))
    {
        for (k, val) in over {
            row[k] = val.clone();
        }
    }
    row
}

async fn project_vulnerabilities(
    State(app): State<App>,
    Path(pid): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let store = app.store();
    require_project(&store, &pid)?;
    let rows: Vec<Value> = SAFETY_CATEGORIES
        .iter()
        .map(|c| project_vulnerability(&store, &pid, c))
        .collect();
    Ok(Json(json!({ "vulnerabilities": rows })))
}

async fn project_attack_vectors(
    State(app): State<App>,
    Path(pid): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let store = app.store();
    require_project(&store, &pid)?;
    let rows: Vec<Value> = ATTACK_VECTORS
        .iter()
        .map(|v| project_vector(&store, &pid, v))
        .collect();
    Ok(Json(json!({ "attack_vectors": rows })))
}

async fn update_project_vulnerability(
    State(app): State<App>,
    Path((pid, vid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, EmuError> {
    let obj = json_object(&body)?;
    let mut changes = Map::new();
    if obj.get("enabled").is_some_and(|v| !v.is_null()) {
        changes.insert(
            "enabled".to_owned(),
            opt_bool(&obj, "enabled", true)?.into(),
        );
    }
    if let Some(t) = opt_f64(&obj, "threshold")? {
        if !(0.0..=1.0).contains(&t) {
            return Err(EmuError::BadRequest(
                "'threshold' must be between 0 and 1".to_owned(),
            ));
        }
        changes.insert("threshold".to_owned(), t.into());
    }
    if let Some(s) = opt_str(&obj, "severity")? {
        changes.insert("severity".to_owned(), s.into());
    }
    if changes.is_empty() {
        return Err(EmuError::BadRequest(
            "Provide enabled, threshold and/or severity".to_owned(),
        ));
    }
    let mut store = app.store();
    require_project(&store, &pid)?;
    let cat = data::safety_category(&vid).ok_or(EmuError::NotFound("Vulnerability not found"))?;
    store
        .security
        .vulnerability_settings
        .entry((pid.clone(), cat.key.to_owned()))
        .or_default()
        .extend(changes);
    Ok(Json(project_vulnerability(&store, &pid, cat)))
}

async fn update_project_attack_vector(
    State(app): State<App>,
    Path((pid, avid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, EmuError> {
    let obj = json_object(&body)?;
    let mut changes = Map::new();
    if obj.get("enabled").is_some_and(|v| !v.is_null()) {
        changes.insert(
            "enabled".to_owned(),
            opt_bool(&obj, "enabled", true)?.into(),
        );
    }
    if let Some(w) = opt_f64(&obj, "weight")? {
        if w < 0.0 {
            return Err(EmuError::BadRequest(
                "'weight' must not be negative".to_owned(),
            ));
        }
        changes.insert("weight".to_owned(), w.into());
    }
    if changes.is_empty() {
        return Err(EmuError::BadRequest(
            "Provide enabled and/or weight".to_owned(),
        ));
    }
    let mut store = app.store();
    require_project(&store, &pid)?;
    let vector = data::attack_vector(&avid).ok_or(EmuError::NotFound("Attack vector not found"))?;
    store
        .security
        .vector_settings
        .entry((pid.clone(), vector.key.to_owned()))
        .or_default()
        .extend(changes);
    Ok(Json(project_vector(&store, &pid, vector)))
}
