//! The unified endpoints (`/v2/projects`, `/v2/auth/usage`, `/v2/auth/validate`) and trace read-back
//! (`/api/v1/traces…`, plus the tracer's upload), with the trace store and helpers that turn a trace into items.
//!
//! Three demo traces are seeded in project "demo": `trace_demo_001` (good answer), `trace_demo_002` (a failed tool
//! call, so failure analysis flags it) and `trace_demo_003`.

use std::time::{Duration, SystemTime};

use axum::{
    Extension, Json, Router,
    extract::{Path, RawQuery, State},
    routing::{get, post},
};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{
    App,
    data::{count_f64, fnv1a, preview, round_to, text_of},
    error::EmuError,
    jobs::{now_rfc3339, rfc3339},
    state::{Project, Table, new_id},
    wire::{Caller, Params, json_object, opt_str, req_str},
};

const API_QUOTA: u64 = 10_000;
const TOKEN_QUOTA: u64 = 50_000_000;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v2/projects", get(list_projects).post(create_project))
        .route("/v2/projects/{id}", get(get_project))
        .route("/v2/auth/usage", get(usage))
        .route("/v2/auth/validate", post(validate))
        .route("/api/v1/traces", get(list_traces))
        .route("/api/v1/traces/upload", post(upload_trace))
        .route("/api/v1/traces/{id}", get(get_trace))
        .route("/api/v1/traces/{id}/summary", get(trace_summary))
        .route("/api/v1/traces/{id}/messages", get(trace_messages))
        .route("/api/v1/traces/{id}/spans", get(trace_spans))
        .route("/api/v1/traces/{id}/full", get(trace_full))
        .route("/api/v1/traces/{id}/eval_steps", get(trace_eval_steps))
}

// === projects and auth ===

async fn list_projects(State(app): State<App>) -> Json<Value> {
    let store = app.store();
    Json(Value::Array(
        store.projects.iter().map(Project::to_json).collect(),
    ))
}

/// Parses `{name, key?, model_name?}` and creates the project (409 when the name is taken).
pub(crate) fn create_project_from(app: &App, body: &[u8]) -> Result<Value, EmuError> {
    let obj = json_object(body)?;
    let name = req_str(&obj, "name")?;
    let key = opt_str(&obj, "key")?.map(str::to_owned);
    let model_name = opt_str(&obj, "model_name")?.map(str::to_owned);
    let mut store = app.store();
    store
        .create_project(name, key, model_name)
        .map(Project::to_json)
        .ok_or_else(|| EmuError::Conflict(format!("Project '{name}' already exists")))
}

async fn create_project(State(app): State<App>, body: Bytes) -> Result<Json<Value>, EmuError> {
    create_project_from(&app, &body).map(Json)
}

async fn get_project(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    let store = app.store();
    store
        .projects
        .get(&id)
        .map(|p| Json(p.to_json()))
        .ok_or(EmuError::NotFound("Project not found"))
}

async fn usage(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
) -> Json<Value> {
    let u = app.store().usage.get(&caller).cloned().unwrap_or_default();
    let used = u.failure_analysis + u.evaluation + u.security;
    let reset = SystemTime::now() + Duration::from_hours(30 * 24);
    Json(json!({
        "total_api_usage": used,
        "api_quota_limit": API_QUOTA,
        "api_quota_remaining": API_QUOTA.saturating_sub(used),
        "evaluations_used": used,
        "evaluations_limit": API_QUOTA,
        "evaluations_remaining": API_QUOTA.saturating_sub(used),
        "plan": "pro",
        "tier": "pro",
        "reset_date": rfc3339(reset).chars().take(10).collect::<String>(),
        "services": {
            "failure_analysis": u.failure_analysis,
            "evaluation": u.evaluation,
            "security": u.security,
        },
        "token_usage": u.tokens,
        "token_quota_limit": TOKEN_QUOTA,
    }))
}

async fn validate(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
) -> Json<Value> {
    let u = app.store().usage.get(&caller).cloned().unwrap_or_default();
    let used = u.failure_analysis + u.evaluation + u.security;
    let h = fnv1a(&[&caller]);
    Json(json!({
        "valid": true,
        "user_id": format!("user_{:08x}", h & 0xffff_ffff),
        "org_id": "org_emulated",
        "org_name": "Emulated Org",
        "email": "developer@example.com",
        "plan": "pro",
        "tier": "pro",
        "evaluations_remaining": API_QUOTA.saturating_sub(used),
    }))
}

// === traces ===

#[derive(Debug, Default)]
pub(crate) struct TraceStore {
    traces: Table<Trace>,
}

#[derive(Debug, Clone)]
struct Trace {
    id: String,
    project_id: String,
    project_name: String,
    name: String,
    created: SystemTime,
    messages: Vec<(String, String)>,
    tool_calls: Vec<Value>,
    metadata: Value,
}

impl TraceStore {
    pub(crate) fn seed(&mut self, project_id: &str, project_name: &str) {
        let demo = [
            (
                "trace_demo_001",
                "support-bot",
                "What is the refund window for annual plans?",
                "Annual plans can be refunded within 30 days of purchase.",
                Vec::new(),
            ),
            (
                "trace_demo_002",
                "booking-agent",
                "Book a table for two at 7pm tonight.",
                "The booking tool failed, so I could not book the table.",
                vec![
                    json!({"name": "book_table", "arguments": {"party_size": 2, "time": "19:00"}, "error": "timeout"}),
                ],
            ),
            (
                "trace_demo_003",
                "contract-summary",
                "Summarise the attached contract in two sentences.",
                "The contract renews every year. Either party can cancel with 60 days notice.",
                Vec::new(),
            ),
        ];
        let base = SystemTime::UNIX_EPOCH + Duration::from_hours(490_896); // 2026-01-01T00:00:00Z
        for (n, (id, name, user, assistant, tools)) in demo.into_iter().enumerate() {
            let offset = Duration::from_secs(3600 * u64::try_from(n).unwrap_or(0));
            self.traces.insert(
                id.to_owned(),
                Trace {
                    id: id.to_owned(),
                    project_id: project_id.to_owned(),
                    project_name: project_name.to_owned(),
                    name: name.to_owned(),
                    created: base + offset,
                    messages: vec![
                        ("user".to_owned(), user.to_owned()),
                        ("assistant".to_owned(), assistant.to_owned()),
                    ],
                    tool_calls: tools,
                    metadata: json!({ "seeded": true }),
                },
            );
        }
    }

    /// The failure-analysis item for `trace_id`: from the stored trace, or synthesised from the id when unknown
    /// (an id containing "fail" gives a failing answer).
    pub(crate) fn item_for(&self, trace_id: &str) -> Value {
        if let Some(trace) = self.traces.get(trace_id) {
            let mut item = json!({
                "input": trace.first("user"),
                "output": trace.last("assistant"),
                "trace_id": trace.id,
            });
            if !trace.tool_calls.is_empty() {
                item["tool_calls"] = Value::Array(trace.tool_calls.clone());
            }
            return item;
        }
        let output = if trace_id.to_lowercase().contains("fail") {
            "The tool call failed and no answer was produced.".to_owned()
        } else {
            format!("Answer recorded in trace {trace_id}.")
        };
        json!({
            "input": format!("Request captured in trace {trace_id}"),
            "output": output,
            "trace_id": trace_id,
        })
    }
}

impl Trace {
    fn first(&self, role: &str) -> String {
        self.messages
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    fn last(&self, role: &str) -> String {
        self.messages
            .iter()
            .rev()
            .find(|(r, _)| r == role)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    fn has_errors(&self) -> bool {
        self.tool_calls.iter().any(|t| t.get("error").is_some())
    }

    fn tokens(&self) -> usize {
        self.messages
            .iter()
            .map(|(_, c)| c.len())
            .sum::<usize>()
            .div_ceil(4)
            + 40
    }

    fn duration_ms(&self) -> u64 {
        400 + fnv1a(&[&self.id, "duration"]) % 1600
    }

    fn at(&self, ms: u64) -> String {
        rfc3339(self.created + Duration::from_millis(ms))
    }

    fn status(&self) -> &'static str {
        if self.has_errors() {
            "error"
        } else {
            "completed"
        }
    }

    fn cost(&self) -> f64 {
        round_to(0.000_002 * count_f64(self.tokens()), 6)
    }

    /// A `TraceRecord` (list item) that is also a `TraceOverview` (`GET /traces/{id}`).
    fn to_json(&self) -> Value {
        let duration = self.duration_ms();
        json!({
            "trace_id": self.id,
            "id": self.id,
            "project_id": self.project_id,
            "project_name": self.project_name,
            "app_name": self.name,
            "session_id": null,
            "status": self.status(),
            "started_at": self.at(0),
            "ended_at": self.at(duration),
            "duration_ms": duration,
            "total_cost": self.cost(),
            "total_tokens": self.tokens(),
            "llm_calls": 1,
            "tool_calls": self.tool_calls.len(),
            "input_preview": preview(&self.first("user"), 100),
            "output_preview": preview(&self.last("assistant"), 100),
            "eval_available": true,
            "message_count": self.messages.len(),
            "span_count": self.spans().len(),
            "metadata": self.metadata,
            "created_at": self.at(0),
        })
    }

    /// A `TraceSummary`.
    fn summary_json(&self) -> Value {
        let duration = self.duration_ms();
        let tokens = self.tokens();
        json!({
            "trace_id": self.id,
            "project_id": self.project_id,
            "project_name": self.project_name,
            "app_name": self.name,
            "app_version": "1.0.0",
            "environment": "emulated",
            "session_id": null,
            "status": self.status(),
            "created_at": self.at(0),
            "started_at": self.at(0),
            "ended_at": self.at(duration),
            "duration_ms": duration,
            "total_cost": self.cost(),
            "total_tokens": tokens,
            "input_tokens": tokens * 2 / 3,
            "output_tokens": tokens - tokens * 2 / 3,
            "llm_calls": 1,
            "tool_calls": self.tool_calls.len(),
            "retrieval_calls": 0,
            "tags": [],
            "custom_fields": {},
            "summary": {
                "input_preview": preview(&self.first("user"), 100),
                "output_preview": preview(&self.last("assistant"), 100),
            },
            "diagnostics": { "has_errors": self.has_errors() },
            "message_count": self.messages.len(),
            "span_count": self.spans().len(),
        })
    }

    /// A `TraceFullResult`: spans grouped by kind.
    fn full_json(&self) -> Value {
        let mut groups = serde_json::Map::new();
        for span in self.spans() {
            let kind = span["kind"].as_str().unwrap_or("other").to_owned();
            if let Value::Array(list) = groups.entry(kind).or_insert_with(|| json!([])) {
                list.push(span);
            }
        }
        json!({
            "trace_id": self.id,
            "metadata": self.metadata,
            "summary": self.summary_json(),
            "messages": self.messages_json(),
            "spans": groups,
            "retrievals": [],
            "diagnostics": { "has_errors": self.has_errors() },
            "execution_tree": null,
        })
    }

    fn messages_json(&self) -> Vec<Value> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, (role, content))| json!({ "index": i, "role": role, "content": content }))
            .collect()
    }

    fn spans(&self) -> Vec<Value> {
        let duration = self.duration_ms();
        let root = format!("{}-s0", self.id);
        let mut spans = vec![json!({
            "span_id": root,
            "trace_id": self.id,
            "parent_span_id": null,
            "name": self.name,
            "kind": "agent",
            "start_time": self.at(0),
            "end_time": self.at(duration),
            "duration_ms": duration,
            "status": if self.has_errors() { "error" } else { "ok" },
            "attributes": {},
        })];
        for (i, tool) in self.tool_calls.iter().enumerate() {
            spans.push(json!({
                "span_id": format!("{}-t{i}", self.id),
                "trace_id": self.id,
                "parent_span_id": root,
                "name": tool.get("name").and_then(Value::as_str).unwrap_or("tool"),
                "kind": "tool",
                "start_time": self.at(20),
                "end_time": self.at(duration / 3),
                "duration_ms": duration / 3 - 20,
                "status": if tool.get("error").is_some() { "error" } else { "ok" },
                "attributes": { "arguments": tool.get("arguments").cloned().unwrap_or(Value::Null) },
            }));
        }
        spans.push(json!({
            "span_id": format!("{}-llm", self.id),
            "trace_id": self.id,
            "parent_span_id": root,
            "name": "llm.chat",
            "kind": "llm",
            "start_time": self.at(duration / 3),
            "end_time": self.at(duration - 10),
            "duration_ms": duration - 10 - duration / 3,
            "status": "ok",
            "attributes": { "model": "gpt-4o-mini", "total_tokens": self.tokens() },
        }));
        spans
    }

    fn eval_steps(&self) -> Vec<Value> {
        let score = if self.last("assistant").to_lowercase().contains("fail") {
            0.2
        } else {
            0.9
        };
        vec![json!({
            "step_id": format!("{}-e0", self.id),
            "trace_id": self.id,
            "metric": "answer_relevance",
            "score": score,
            "explanation": if score < 0.5 {
                "The final answer does not resolve the request."
            } else {
                "The final answer addresses the request."
            },
            "status": "completed",
            "input_text": self.first("user"),
            "output_text": self.last("assistant"),
            "context": null,
            "expected": null,
        })]
    }
}

fn with_trace<T>(app: &App, id: &str, f: impl FnOnce(&Trace) -> T) -> Result<Json<T>, EmuError> {
    let store = app.store();
    let trace = store
        .traces
        .traces
        .get(id)
        .ok_or(EmuError::NotFound("Trace not found"))?;
    Ok(Json(f(trace)))
}

async fn list_traces(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, EmuError> {
    let params = Params::parse(query.as_deref());
    let paging = params.paging(20)?;
    let project_id = params.get("project_id");
    let store = app.store();
    let matching: Vec<&Trace> = store
        .traces
        .traces
        .iter()
        .rev()
        .filter(|t| project_id.is_none_or(|p| t.project_id == p))
        .collect();
    let page: Vec<Value> = paging
        .slice(&matching)
        .iter()
        .map(|t| t.to_json())
        .collect();
    Ok(Json(json!({
        "traces": page,
        "items": page,
        "total": matching.len(),
        "page": paging.page,
        "page_size": paging.page_size,
        "has_more": paging.has_more(matching.len()),
    })))
}

async fn upload_trace(State(app): State<App>, body: Bytes) -> Result<Json<Value>, EmuError> {
    let obj = json_object(&body)?;
    let trace = obj
        .get("trace")
        .filter(|t| t.is_object())
        .ok_or_else(|| EmuError::BadRequest("'trace' must be an object".to_owned()))?;
    let project_name = opt_str(&obj, "project_name")?.unwrap_or("default");
    let trace_id = trace
        .get("trace_id")
        .or_else(|| trace.get("id"))
        .and_then(Value::as_str)
        .map_or_else(|| new_id("tr"), str::to_owned);
    let item = trace_item(trace);
    let mut messages = message_list(trace);
    if messages.is_empty() {
        messages = vec![
            ("user".to_owned(), text_of(item.get("input"))),
            ("assistant".to_owned(), text_of(item.get("output"))),
        ];
    }
    let mut store = app.store();
    let pid = store.ensure_project(project_name).id.clone();
    store.traces.traces.insert(
        trace_id.clone(),
        Trace {
            id: trace_id.clone(),
            project_id: pid.clone(),
            project_name: project_name.to_owned(),
            name: trace
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("uploaded-trace")
                .to_owned(),
            created: SystemTime::now(),
            messages,
            tool_calls: trace
                .get("tool_calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            metadata: trace.get("metadata").cloned().unwrap_or_else(|| json!({})),
        },
    );
    Ok(Json(json!({
        "trace_id": trace_id,
        "project_id": pid,
        "status": "uploaded",
        "uploaded_at": now_rfc3339(),
    })))
}

async fn get_trace(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_trace(&app, &id, Trace::to_json)
}

async fn trace_summary(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_trace(&app, &id, Trace::summary_json)
}

async fn trace_messages(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_trace(&app, &id, |t| json!({ "messages": t.messages_json() }))
}

async fn trace_spans(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_trace(&app, &id, |t| json!({ "spans": t.spans() }))
}

async fn trace_eval_steps(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_trace(&app, &id, |t| json!({ "eval_steps": t.eval_steps() }))
}

async fn trace_full(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, EmuError> {
    with_trace(&app, &id, Trace::full_json)
}

// === trace → items ===

/// Whether a JSON value carries anything (non-empty object, list or string).
pub(crate) fn is_non_empty(v: &Value) -> bool {
    match v {
        Value::Object(o) => !o.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.trim().is_empty(),
        Value::Null => false,
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// `(role, content)` pairs from a trace's `messages` list (or a bare list of messages).
fn message_list(trace: &Value) -> Vec<(String, String)> {
    let list = match trace {
        Value::Array(a) => Some(a),
        other => other.get("messages").and_then(Value::as_array),
    };
    list.map(|msgs| {
        msgs.iter()
            .filter_map(|m| {
                let role = m.get("role").and_then(Value::as_str)?;
                Some((role.to_owned(), text_of(m.get("content"))))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// One eval/FA item from a trace: explicit `input`/`output` win, else the first user and last assistant message.
pub(crate) fn trace_item(trace: &Value) -> Value {
    let messages = message_list(trace);
    let pick = |field: &str, role: &str, last: bool| -> String {
        if let Some(v) = trace.get(field).filter(|v| !v.is_null()) {
            return text_of(Some(v));
        }
        let mut it = messages.iter().filter(|(r, _)| r == role);
        let found = if last { it.next_back() } else { it.next() };
        found.map(|(_, c)| c.clone()).unwrap_or_default()
    };
    let mut item = json!({
        "input": pick("input", "user", false),
        "output": pick("output", "assistant", true),
    });
    for key in ["context", "tool_calls", "trace_id"] {
        if let Some(v) = trace.get(key).filter(|v| !v.is_null()) {
            item[key] = v.clone();
        }
    }
    item
}

/// `(user_input, assistant_response)` exchanges of a trace: each user message with the next assistant message;
/// a trace without such pairs gives its single `trace_item` exchange.
pub(crate) fn trace_pairs(trace: &Value) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut pending: Option<String> = None;
    for (role, content) in message_list(trace) {
        match role.as_str() {
            "user" => pending = Some(content),
            "assistant" => {
                if let Some(user) = pending.take() {
                    pairs.push((user, content));
                }
            }
            _ => {}
        }
    }
    if pairs.is_empty() {
        let item = trace_item(trace);
        pairs.push((text_of(item.get("input")), text_of(item.get("output"))));
    }
    pairs
}
