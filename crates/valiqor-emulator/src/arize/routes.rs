//! The Arize routes: tasks (list/create/get/update/delete), trigger, task runs (list/get/cancel), and the space,
//! project and dataset lists the SDK uses to resolve names.

use std::time::{Instant, SystemTime};

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State, rejection::PathRejection},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{
    App, ArizeTaskType,
    ids::{Order, Page, paginate},
    problem::ArizeError,
    store::{ArizeStore, Named, Run},
    validate,
};
use crate::wire::Params;

const RUN_STATUSES: [&str; 5] = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v2/tasks", get(list_tasks).post(create_task))
        .route(
            "/v2/tasks/{id}",
            get(get_task).patch(update_task).delete(delete_task),
        )
        .route("/v2/tasks/{id}/trigger", post(trigger_run))
        .route("/v2/tasks/{id}/runs", get(list_runs))
        .route("/v2/task-runs/{id}", get(get_run))
        .route("/v2/task-runs/{id}/cancel", post(cancel_run))
        .route("/v2/spaces", get(list_spaces))
        .route("/v2/projects", get(list_projects))
        .route("/v2/datasets", get(list_datasets))
}

type Answer = Result<Response, ArizeError>;

/// 200 with a JSON body.
fn ok(body: Value) -> Response {
    Json(body).into_response()
}

/// The (percent-decoded) id segment of the path.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ArizeError> {
    path.map(|Path(id)| id)
        .map_err(|e| ArizeError::bad_request(format!("invalid path parameter: {e}")))
}

fn task_not_found(id: &str) -> ArizeError {
    ArizeError::not_found(format!("task '{id}' not found"))
}

fn run_not_found(id: &str) -> ArizeError {
    ArizeError::not_found(format!("task run '{id}' not found"))
}

/// A case-insensitive substring filter (`name`, `space_name`), at most 255 characters; lower-cased.
fn substring(params: &Params, key: &str) -> Result<Option<String>, ArizeError> {
    match params.get(key) {
        Some(v) if v.chars().count() > 255 => Err(ArizeError::bad_request(format!(
            "'{key}' must be at most 255 characters"
        ))),
        v => Ok(v.map(str::to_lowercase)),
    }
}

fn matches(name: &str, filter: Option<&String>) -> bool {
    filter.is_none_or(|f| name.to_lowercase().contains(f.as_str()))
}

/// The ids of the spaces a list draws from: `space_id` (404 when unknown) and `space_name` (substring) narrow it.
fn space_scope(store: &ArizeStore, params: &Params) -> Result<Vec<String>, ArizeError> {
    if let Some(id) = params.get("space_id")
        && !store.spaces.iter().any(|s| s.id == id)
    {
        return Err(ArizeError::not_found(format!("space '{id}' not found")));
    }
    let name = substring(params, "space_name")?;
    Ok(store
        .spaces
        .iter()
        .filter(|s| params.get("space_id").is_none_or(|id| s.id == id))
        .filter(|s| matches(&s.name, name.as_ref()))
        .map(|s| s.id.clone())
        .collect())
}

/// One page of spaces, projects or datasets named like `name`, as `{<list>: [...], pagination}`.
fn named_list(
    rows: &[Named],
    params: &Params,
    scope: Option<&[String]>,
    list: &str,
    render: fn(&Named) -> Value,
) -> Answer {
    let page = Page::parse(params.get("limit"), params.get("cursor"), list)?;
    let name = substring(params, "name")?;
    let items = rows
        .iter()
        .filter(|row| matches(&row.name, name.as_ref()))
        .filter(|row| {
            scope.is_none_or(|ids| row.space_id.as_ref().is_some_and(|s| ids.contains(s)))
        })
        .map(|row| (row.seq, render(row)))
        .collect();
    let (items, pagination) = paginate(items, Order::Ascending, page, list);
    Ok(ok(json!({ list: items, "pagination": pagination })))
}

async fn list_spaces(State(app): State<App>, RawQuery(query): RawQuery) -> Answer {
    let params = Params::parse(query.as_deref());
    let store = app.store();
    if let Some(org) = params.get("org_id")
        && org != super::ids::plain_id("Organization", 1)
    {
        return Err(ArizeError::not_found(format!(
            "organization '{org}' not found"
        )));
    }
    named_list(&store.spaces, &params, None, "spaces", Named::space_json)
}

async fn list_projects(State(app): State<App>, RawQuery(query): RawQuery) -> Answer {
    let params = Params::parse(query.as_deref());
    let store = app.store();
    let scope = space_scope(&store, &params)?;
    if let Some(kind) = params.get("project_type")
        && !["APPLICATION", "HARNESS", "EXPERIMENT"].contains(&kind)
    {
        return Err(ArizeError::bad_request(format!(
            "'project_type' must be APPLICATION, HARNESS or EXPERIMENT; got '{kind}'"
        )));
    }
    let rows: Vec<Named> = if params
        .get("project_type")
        .is_some_and(|k| k != "APPLICATION")
    {
        Vec::new()
    } else {
        store.projects.clone()
    };
    named_list(
        &rows,
        &params,
        Some(&scope),
        "projects",
        Named::project_json,
    )
}

async fn list_datasets(State(app): State<App>, RawQuery(query): RawQuery) -> Answer {
    let params = Params::parse(query.as_deref());
    let store = app.store();
    let scope = space_scope(&store, &params)?;
    named_list(
        &store.datasets,
        &params,
        Some(&scope),
        "datasets",
        Named::dataset_json,
    )
}

// === tasks ===

async fn list_tasks(State(app): State<App>, RawQuery(query): RawQuery) -> Answer {
    let params = Params::parse(query.as_deref());
    let store = app.store();
    let page = Page::parse(params.get("limit"), params.get("cursor"), "tasks")?;
    let scope = space_scope(&store, &params)?;
    let name = substring(&params, "name")?;
    let task_type = params
        .get("type")
        .map(|raw| {
            raw.parse::<ArizeTaskType>().map_err(|_| {
                ArizeError::bad_request(format!(
                    "'type' must be TEMPLATE_EVALUATION, CODE_EVALUATION or RUN_EXPERIMENT; got '{raw}'"
                ))
            })
        })
        .transpose()?;
    let project_id = params.get("project_id");
    if let Some(id) = project_id
        && !store.projects.iter().any(|p| p.id == id)
    {
        return Err(ArizeError::not_found(format!("project '{id}' not found")));
    }
    let dataset_id = params.get("dataset_id");
    if let Some(id) = dataset_id
        && !store.datasets.iter().any(|d| d.id == id)
    {
        return Err(ArizeError::not_found(format!("dataset '{id}' not found")));
    }
    let items = store
        .tasks
        .iter()
        .filter(|t| scope.contains(&t.space_id))
        .filter(|t| matches(&t.spec.name, name.as_ref()))
        .filter(|t| task_type.is_none_or(|ty| t.spec.task_type == ty))
        .filter(|t| project_id.is_none_or(|id| t.spec.project_id.as_deref() == Some(id)))
        .filter(|t| dataset_id.is_none_or(|id| t.spec.dataset_id.as_deref() == Some(id)))
        .map(|t| (t.seq, t.to_json()))
        .collect();
    let (tasks, pagination) = paginate(items, Order::Ascending, page, "tasks");
    Ok(ok(json!({"tasks": tasks, "pagination": pagination})))
}

async fn create_task(State(app): State<App>, body: Bytes) -> Answer {
    let obj = validate::object(&body, false)?;
    let spec = validate::create(&obj)?;
    let mut store = app.store();
    let space_id = store
        .container_space(&spec)
        .ok_or_else(|| match &spec.project_id {
            Some(id) => ArizeError::not_found(format!("project '{id}' not found")),
            None => ArizeError::not_found(format!(
                "dataset '{}' not found",
                spec.dataset_id.as_deref().unwrap_or_default()
            )),
        })?;
    if store.name_taken(&space_id, &spec.name, None) {
        return Err(duplicate_name(&spec.name));
    }
    let task = store.insert_task(space_id, spec).to_json();
    Ok((StatusCode::CREATED, Json(task)).into_response())
}

fn duplicate_name(name: &str) -> ArizeError {
    ArizeError::bad_request_code(
        "DUPLICATE_NAME",
        format!("a task named '{name}' already exists in this space"),
    )
}

async fn get_task(State(app): State<App>, path: Result<Path<String>, PathRejection>) -> Answer {
    let id = path_id(path)?;
    let store = app.store();
    let task = store.task(&id).ok_or_else(|| task_not_found(&id))?;
    Ok(ok(task.to_json()))
}

async fn update_task(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Answer {
    let id = path_id(path)?;
    let obj = validate::object(&body, false)?;
    let mut store = app.store();
    let task = store.task(&id).ok_or_else(|| task_not_found(&id))?;
    let spec = validate::update(&task.spec, &obj)?;
    if store.name_taken(&task.space_id, &spec.name, Some(&id)) {
        return Err(duplicate_name(&spec.name));
    }
    let task = store.task_mut(&id).ok_or_else(|| task_not_found(&id))?;
    task.spec = spec;
    task.updated_at = crate::jobs::now_rfc3339();
    Ok(ok(task.to_json()))
}

async fn delete_task(State(app): State<App>, path: Result<Path<String>, PathRejection>) -> Answer {
    let id = path_id(path)?;
    if app.store().delete_task(&id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(task_not_found(&id))
    }
}

// === runs ===

async fn trigger_run(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Answer {
    let id = path_id(path)?;
    let obj = validate::object(&body, true)?;
    let mut store = app.store();
    let task = store.task(&id).ok_or_else(|| task_not_found(&id))?;
    let last_end = store.runs_of(&id).find_map(Run::window_end);
    let plan = validate::trigger(task, last_end, &obj, SystemTime::now())?;
    if let (Some(name), Some(dataset)) = (&plan.experiment_name, &task.spec.dataset_id)
        && store.experiment_name_taken(dataset, name)
    {
        return Err(ArizeError::new(
            StatusCode::CONFLICT,
            "EXPERIMENT_NAME_TAKEN",
            format!("an experiment named '{name}' already exists in this dataset"),
        ));
    }
    let run = store
        .trigger(&id, plan)
        .ok_or_else(|| task_not_found(&id))?;
    Ok((StatusCode::CREATED, Json(run.to_json(Instant::now()))).into_response())
}

async fn list_runs(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Answer {
    let id = path_id(path)?;
    let params = Params::parse(query.as_deref());
    let page = Page::parse(params.get("limit"), params.get("cursor"), "runs")?;
    let status = params.get("status");
    if let Some(s) = status
        && !RUN_STATUSES.contains(&s)
    {
        return Err(ArizeError::bad_request(format!(
            "'status' must be one of {}; got '{s}'",
            RUN_STATUSES.join(", ")
        )));
    }
    let store = app.store();
    if store.task(&id).is_none() {
        return Err(task_not_found(&id));
    }
    let now = Instant::now();
    let items = store
        .runs_of(&id)
        .filter(|r| status.is_none_or(|s| r.status(now) == s))
        .map(|r| (r.seq, r.to_json(now)))
        .collect();
    let (runs, pagination) = paginate(items, Order::Descending, page, "runs");
    Ok(ok(json!({"task_runs": runs, "pagination": pagination})))
}

async fn get_run(State(app): State<App>, path: Result<Path<String>, PathRejection>) -> Answer {
    let id = path_id(path)?;
    let store = app.store();
    let run = store.run(&id).ok_or_else(|| run_not_found(&id))?;
    Ok(ok(run.to_json(Instant::now())))
}

async fn cancel_run(State(app): State<App>, path: Result<Path<String>, PathRejection>) -> Answer {
    let id = path_id(path)?;
    let now = Instant::now();
    let mut store = app.store();
    match store.cancel(&id, now) {
        None => Err(run_not_found(&id)),
        Some(Ok(run)) => Ok(ok(run.to_json(now))),
        Some(Err(status)) => Err(ArizeError::bad_request_code(
            "RUN_NOT_CANCELLABLE",
            format!(
                "task run '{id}' is already {status}; only PENDING or RUNNING runs can be cancelled"
            ),
        )),
    }
}
