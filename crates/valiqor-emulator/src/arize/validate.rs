//! Request-body validation (`arize-tasks-api.md` §5.4) for create, update and trigger: JSON types, required fields,
//! the documented limits, the two filter shapes, unknown fields, and fields that do not fit the task type. Every
//! failure is a 400, except a `RUN_EXPERIMENT` trigger without `experiment_name` (422).

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{
    ArizeTaskType,
    ids::is_resource_id,
    problem::ArizeError,
    store::{DATASET_EXAMPLES, RunPlan, Task, TaskSpec, evaluator_name},
};

pub(crate) type Object = Map<String, Value>;

const QUERY_IDS: [&str; 5] = ["A", "B", "C", "D", "E"];
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// The window of a first project run triggered without `data_start_time` (EMULATOR CHOICE; the API requires it).
const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MAX_SPANS: usize = 10_000;
/// Items an evaluation run over a project processes at most (the emulator has no spans).
const PROJECT_RUN_ITEMS: usize = 20;
const EVAL_FIELDS: [&str; 10] = [
    "name",
    "type",
    "project_id",
    "dataset_id",
    "experiment_ids",
    "sampling_rate",
    "is_continuous",
    "query_filter",
    "query_filters",
    "evaluators",
];
const RUN_EXPERIMENT_FIELDS: [&str; 4] = ["name", "type", "dataset_id", "run_configuration"];
const EVAL_UPDATE_FIELDS: [&str; 6] = [
    "name",
    "sampling_rate",
    "is_continuous",
    "query_filter",
    "query_filters",
    "evaluators",
];
const RUN_EXPERIMENT_UPDATE_FIELDS: [&str; 2] = ["name", "run_configuration"];
const EVAL_TRIGGER_FIELDS: [&str; 5] = [
    "data_start_time",
    "data_end_time",
    "max_spans",
    "override_evaluations",
    "experiment_ids",
];
const RUN_EXPERIMENT_TRIGGER_FIELDS: [&str; 7] = [
    "experiment_name",
    "dataset_version_id",
    "example_ids",
    "max_examples",
    "query_filter",
    "tracing_metadata",
    "evaluation_task_ids",
];

fn bad(detail: impl Into<String>) -> ArizeError {
    ArizeError::bad_request(detail)
}

/// The body as a JSON object; an empty body counts as `{}` when `empty_ok`.
pub(crate) fn object(body: &[u8], empty_ok: bool) -> Result<Object, ArizeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(Object::new())
        } else {
            Err(bad("the request body must be a JSON object"))
        };
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(bad("the request body must be a JSON object")),
        Err(e) => Err(bad(format!("the request body is not valid JSON: {e}"))),
    }
}

/// Rejects keys outside `allowed`; `misfit` lists keys that belong to the other task kind (a clearer message).
fn only(obj: &Object, allowed: &[&str], misfit: &[&str], what: &str) -> Result<(), ArizeError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) if misfit.contains(&k.as_str()) => {
            Err(bad(format!("field '{k}' is not valid for {what}")))
        }
        Some(k) => Err(bad(format!("unknown field '{k}' in {what}"))),
    }
}

/// A field that is absent or `null`.
fn absent(obj: &Object, key: &str) -> bool {
    obj.get(key).is_none_or(Value::is_null)
}

fn opt_string(obj: &Object, key: &str, max: usize) -> Result<Option<String>, ArizeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad(format!("'{key}' is longer than {max} characters"))),
        Some(_) => Err(bad(format!("'{key}' must be a string"))),
    }
}

fn req_string(obj: &Object, key: &str, max: usize) -> Result<String, ArizeError> {
    opt_string(obj, key, max)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            bad(format!(
                "'{key}' is required and must be a non-empty string"
            ))
        })
}

fn req_id(obj: &Object, key: &str) -> Result<String, ArizeError> {
    let id = req_string(obj, key, 1024)?;
    check_id(&id, key)?;
    Ok(id)
}

fn opt_id(obj: &Object, key: &str) -> Result<Option<String>, ArizeError> {
    let id = opt_string(obj, key, 1024)?;
    if let Some(id) = &id {
        check_id(id, key)?;
    }
    Ok(id)
}

fn check_id(id: &str, key: &str) -> Result<(), ArizeError> {
    if is_resource_id(id) {
        Ok(())
    } else {
        Err(bad(format!("'{key}' is not a valid identifier: '{id}'")))
    }
}

fn opt_bool(obj: &Object, key: &str) -> Result<Option<bool>, ArizeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("'{key}' must be a boolean"))),
    }
}

fn opt_rate(obj: &Object, key: &str) -> Result<Option<f64>, ArizeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .map(Some)
            .ok_or_else(|| bad(format!("'{key}' must be between 0 and 1"))),
        Some(_) => Err(bad(format!("'{key}' must be a number"))),
    }
}

fn opt_positive(obj: &Object, key: &str) -> Result<Option<u64>, ArizeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| bad(format!("'{key}' must be an integer of at least 1"))),
    }
}

fn opt_ids(obj: &Object, key: &str) -> Result<Option<Vec<String>>, ArizeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v.as_str() {
                Some(id) => check_id(id, key).map(|()| id.to_owned()),
                None => Err(bad(format!("'{key}' must be a list of identifiers"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad(format!("'{key}' must be a list of identifiers"))),
    }
}

fn string_map(v: &Value, key: &str) -> Result<(), ArizeError> {
    match v {
        Value::Null => Ok(()),
        Value::Object(map) if map.values().all(Value::is_string) => Ok(()),
        _ => Err(bad(format!("'{key}' must be an object of string values"))),
    }
}

// === create ===

/// A validated create body. The caller checks that the project or dataset exists and that the name is free.
pub(crate) fn create(obj: &Object) -> Result<TaskSpec, ArizeError> {
    let raw = req_string(obj, "type", 64)?;
    let task_type: ArizeTaskType = raw.parse().map_err(|_| {
        bad(format!(
            "'type' must be one of TEMPLATE_EVALUATION, CODE_EVALUATION, RUN_EXPERIMENT; got '{raw}'"
        ))
    })?;
    if task_type == ArizeTaskType::RunExperiment {
        only(
            obj,
            &RUN_EXPERIMENT_FIELDS,
            &EVAL_FIELDS,
            "RUN_EXPERIMENT tasks",
        )?;
        let run_configuration = match obj.get("run_configuration") {
            None | Some(Value::Null) => return Err(bad("'run_configuration' is required")),
            Some(v) => run_configuration(v)?,
        };
        return Ok(TaskSpec {
            name: req_string(obj, "name", 255)?,
            task_type,
            project_id: None,
            dataset_id: Some(req_id(obj, "dataset_id")?),
            sampling_rate: None,
            is_continuous: None,
            query_filter: None,
            query_filters: None,
            evaluators: Vec::new(),
            experiment_ids: None,
            run_configuration: Some(run_configuration),
        });
    }
    let what = format!("{} tasks", task_type.as_str());
    only(obj, &EVAL_FIELDS, &RUN_EXPERIMENT_FIELDS, &what)?;
    let name = req_string(obj, "name", 255)?;
    let project_id = opt_id(obj, "project_id")?;
    let dataset_id = opt_id(obj, "dataset_id")?;
    let experiment_ids = opt_ids(obj, "experiment_ids")?.unwrap_or_default();
    let sampling_rate = opt_rate(obj, "sampling_rate")?;
    let is_continuous = opt_bool(obj, "is_continuous")?;
    let (sampling_rate, is_continuous, experiment_ids) = match (&project_id, &dataset_id) {
        (Some(_), Some(_)) => {
            return Err(bad("'project_id' and 'dataset_id' are mutually exclusive"));
        }
        (None, None) => return Err(bad("one of 'project_id' or 'dataset_id' is required")),
        (Some(_), None) => {
            if !experiment_ids.is_empty() {
                return Err(bad(
                    "'experiment_ids' must be omitted for project-based tasks",
                ));
            }
            (
                Some(sampling_rate.unwrap_or(1.0)),
                Some(is_continuous.unwrap_or(false)),
                None,
            )
        }
        (None, Some(_)) => {
            if experiment_ids.is_empty() {
                return Err(bad(
                    "'experiment_ids' (at least one) is required with 'dataset_id'",
                ));
            }
            if sampling_rate.is_some() {
                return Err(bad(
                    "'sampling_rate' is only supported on project-based tasks",
                ));
            }
            if is_continuous == Some(true) {
                return Err(bad(
                    "'is_continuous' must be false or omitted for dataset-based tasks",
                ));
            }
            (None, Some(false), Some(experiment_ids))
        }
    };
    let spec = TaskSpec {
        name,
        task_type,
        project_id,
        dataset_id,
        sampling_rate,
        is_continuous,
        query_filter: opt_string(obj, "query_filter", 2000)?,
        query_filters: match obj.get("query_filters") {
            None | Some(Value::Null) => None,
            Some(v) => Some(query_filters(v)?),
        },
        evaluators: evaluators(obj.get("evaluators"))?,
        experiment_ids,
        run_configuration: None,
    };
    check_shape(&spec)?;
    Ok(spec)
}

/// `{filters: 1..5 × {id: A-E, filter ≤ 2000}, expression ≤ 512}`; a lone filter gets its id as the expression.
fn query_filters(v: &Value) -> Result<Value, ArizeError> {
    let Value::Object(obj) = v else {
        return Err(bad("'query_filters' must be an object"));
    };
    only(obj, &["filters", "expression"], &[], "query_filters")?;
    let Some(Value::Array(filters)) = obj.get("filters") else {
        return Err(bad(
            "'query_filters.filters' is required and must be a list",
        ));
    };
    if !(1..=5).contains(&filters.len()) {
        return Err(bad("'query_filters.filters' must have 1 to 5 entries"));
    }
    let mut seen = HashSet::new();
    for f in filters {
        let Value::Object(f) = f else {
            return Err(bad("each query filter must be an object"));
        };
        only(f, &["id", "filter"], &[], "a query filter")?;
        let id = req_string(f, "id", 1)?;
        if !QUERY_IDS.contains(&id.as_str()) {
            return Err(bad(format!(
                "query filter id must be one of A-E, got '{id}'"
            )));
        }
        if !seen.insert(id.clone()) {
            return Err(bad(format!("query filter id '{id}' is declared twice")));
        }
        if !f.get("filter").is_some_and(Value::is_string) {
            return Err(bad("each query filter needs a 'filter' string"));
        }
        opt_string(f, "filter", 2000)?;
    }
    let expression = match opt_string(obj, "expression", 512)? {
        Some(e) => e,
        None if filters.len() == 1 => filters[0]["id"].as_str().unwrap_or("A").to_owned(),
        None => {
            return Err(bad(
                "'query_filters.expression' is required when two or more filters are declared",
            ));
        }
    };
    Ok(json!({"filters": filters, "expression": expression}))
}

/// A non-empty list of evaluator inputs, normalized to `TaskEvaluator` objects.
fn evaluators(v: Option<&Value>) -> Result<Vec<Value>, ArizeError> {
    let Some(Value::Array(items)) = v else {
        return Err(bad("'evaluators' is required and must be a list"));
    };
    if items.is_empty() {
        return Err(bad("'evaluators' must have at least one entry"));
    }
    let mut seen = HashSet::new();
    items
        .iter()
        .map(|item| {
            let ev = evaluator(item)?;
            let id = ev["evaluator_id"].as_str().unwrap_or_default().to_owned();
            if seen.insert(id.clone()) {
                Ok(ev)
            } else {
                Err(bad(format!("evaluator '{id}' is attached twice")))
            }
        })
        .collect()
}

/// One `SpanEvaluatorInput` or `TraceOrSessionEvaluatorInput`.
fn evaluator(v: &Value) -> Result<Value, ArizeError> {
    let Value::Object(obj) = v else {
        return Err(bad("each evaluator must be an object"));
    };
    only(
        obj,
        &[
            "evaluator_id",
            "evaluator_version_id",
            "query_filter",
            "column_mappings",
            "query_mappings",
        ],
        &[],
        "an evaluator",
    )?;
    let evaluator_id = req_id(obj, "evaluator_id")?;
    let version = opt_id(obj, "evaluator_version_id")?;
    let query_mappings = match obj.get("query_mappings") {
        None | Some(Value::Null) => None,
        Some(v) => Some(query_mappings(v)?),
    };
    if query_mappings.is_some() && !(absent(obj, "query_filter") && absent(obj, "column_mappings"))
    {
        return Err(bad(
            "an evaluator mixes shapes: 'query_mappings' (trace/session) with 'query_filter'/'column_mappings' (span)",
        ));
    }
    let column_mappings = obj.get("column_mappings").cloned().unwrap_or(Value::Null);
    string_map(&column_mappings, "column_mappings")?;
    Ok(json!({
        "evaluator_id": evaluator_id,
        "evaluator_name": evaluator_name(&evaluator_id),
        "evaluator_version_id": version,
        "query_filter": opt_string(obj, "query_filter", 2000)?,
        "column_mappings": column_mappings,
        "query_mappings": query_mappings,
    }))
}

fn query_mappings(v: &Value) -> Result<Value, ArizeError> {
    let Value::Array(items) = v else {
        return Err(bad("'query_mappings' must be a list"));
    };
    if !(1..=50).contains(&items.len()) {
        return Err(bad("'query_mappings' must have 1 to 50 entries"));
    }
    for m in items {
        let Value::Object(m) = m else {
            return Err(bad("each query mapping must be an object"));
        };
        only(
            m,
            &["variable_name", "query_ids", "attribute_path"],
            &[],
            "a query mapping",
        )?;
        req_string(m, "variable_name", 256)?;
        req_string(m, "attribute_path", 1024)?;
        let Some(Value::Array(ids)) = m.get("query_ids") else {
            return Err(bad("each query mapping needs a 'query_ids' list"));
        };
        if ids.len() > 5
            || !ids
                .iter()
                .all(|id| id.as_str().is_some_and(|id| QUERY_IDS.contains(&id)))
        {
            return Err(bad("'query_ids' must list at most 5 ids from A-E"));
        }
    }
    Ok(v.clone())
}

/// The two filter shapes: span (`query_filter`, evaluators with `column_mappings`/`query_filter`) and
/// trace/session (`query_filters`, evaluators with `query_mappings` naming declared ids). Mixing them is a 400.
fn check_shape(spec: &TaskSpec) -> Result<(), ArizeError> {
    if spec.query_filter.is_some() && spec.query_filters.is_some() {
        return Err(bad(
            "'query_filter' and 'query_filters' are mutually exclusive",
        ));
    }
    let traces = spec
        .evaluators
        .iter()
        .filter(|e| !e["query_mappings"].is_null())
        .count();
    if traces == 0 {
        if spec.query_filters.is_some() {
            return Err(bad(
                "'query_filters' (trace/session shape) needs evaluators with 'query_mappings'",
            ));
        }
        return Ok(());
    }
    if traces != spec.evaluators.len() {
        return Err(bad(
            "all evaluators of a task must use the same shape (span or trace/session)",
        ));
    }
    if spec.query_filter.is_some() {
        return Err(bad(
            "'query_filter' is span-shaped; trace/session evaluators use 'query_filters'",
        ));
    }
    let declared: Vec<&str> = spec
        .query_filters
        .as_ref()
        .and_then(|q| q["filters"].as_array())
        .map(|fs| fs.iter().filter_map(|f| f["id"].as_str()).collect())
        .unwrap_or_default();
    let undeclared = spec
        .evaluators
        .iter()
        .flat_map(|e| e["query_mappings"].as_array().into_iter().flatten())
        .flat_map(|m| m["query_ids"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .find(|id| !declared.contains(id));
    match undeclared {
        Some(id) => Err(bad(format!(
            "query id '{id}' is not declared in 'query_filters.filters'"
        ))),
        None => Ok(()),
    }
}

/// A `RunConfigurationRequest`, by `experiment_type`; `AGENT_CALL` placeholders are echoed as `{{column}}`.
fn run_configuration(v: &Value) -> Result<Value, ArizeError> {
    let Value::Object(obj) = v else {
        return Err(bad("'run_configuration' must be an object"));
    };
    let kind = req_string(obj, "experiment_type", 64)?;
    match kind.as_str() {
        "LLM_GENERATION" => {
            only(
                obj,
                &[
                    "experiment_type",
                    "ai_integration_id",
                    "model_name",
                    "messages",
                    "input_variable_format",
                    "invocation_parameters",
                    "provider_parameters",
                    "tool_config",
                    "prompt_version_id",
                ],
                &[],
                "an LLM_GENERATION run configuration",
            )?;
            req_id(obj, "ai_integration_id")?;
            opt_string(obj, "model_name", 255)?;
            messages(obj.get("messages"))?;
            let format = req_string(obj, "input_variable_format", 16)?;
            if !["F_STRING", "MUSTACHE", "NONE"].contains(&format.as_str()) {
                return Err(bad(
                    "'input_variable_format' must be F_STRING, MUSTACHE or NONE",
                ));
            }
            Ok(v.clone())
        }
        "TEMPLATE_EVALUATION" => {
            only(
                obj,
                &[
                    "experiment_type",
                    "ai_integration_id",
                    "model_name",
                    "template",
                    "provide_explanation",
                    "classification_choices",
                    "column_mapping",
                    "evaluator_version_id",
                    "invocation_parameters",
                    "provider_parameters",
                ],
                &[],
                "a TEMPLATE_EVALUATION run configuration",
            )?;
            req_id(obj, "ai_integration_id")?;
            req_string(obj, "template", usize::MAX)?;
            if opt_bool(obj, "provide_explanation")?.is_none() {
                return Err(bad("'provide_explanation' is required"));
            }
            Ok(v.clone())
        }
        "AGENT_CALL" => {
            only(
                obj,
                &["experiment_type", "integration_id", "input_template"],
                &[],
                "an AGENT_CALL run configuration",
            )?;
            req_id(obj, "integration_id")?;
            if !obj.get("input_template").is_some_and(Value::is_object) {
                return Err(bad("'input_template' is required and must be an object"));
            }
            let mut normalized = v.clone();
            strip_dataset_prefix(&mut normalized["input_template"]);
            Ok(normalized)
        }
        other => Err(bad(format!(
            "'experiment_type' must be LLM_GENERATION, TEMPLATE_EVALUATION or AGENT_CALL; got '{other}'"
        ))),
    }
}

fn messages(v: Option<&Value>) -> Result<(), ArizeError> {
    let Some(Value::Array(items)) = v else {
        return Err(bad("'messages' is required and must be a list"));
    };
    if items.is_empty() {
        return Err(bad("'messages' must have at least one entry"));
    }
    for m in items {
        let Value::Object(m) = m else {
            return Err(bad("each message must be an object"));
        };
        only(
            m,
            &["role", "content", "tool_call_id", "tool_calls"],
            &[],
            "a message",
        )?;
        let role = req_string(m, "role", 16)?;
        if !["USER", "ASSISTANT", "SYSTEM", "TOOL"].contains(&role.as_str()) {
            return Err(bad(format!(
                "message 'role' must be USER, ASSISTANT, SYSTEM or TOOL; got '{role}'"
            )));
        }
    }
    Ok(())
}

/// `{{dataset.column}}` → `{{column}}` in every string of an agent input template.
fn strip_dataset_prefix(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("{{dataset.") => *s = s.replace("{{dataset.", "{{"),
        Value::Array(items) => items.iter_mut().for_each(strip_dataset_prefix),
        Value::Object(map) => map.values_mut().for_each(strip_dataset_prefix),
        _ => {}
    }
}

// === update ===

/// Applies a PATCH body to a copy of `spec` and validates the result. The caller checks the new name is free.
pub(crate) fn update(spec: &TaskSpec, obj: &Object) -> Result<TaskSpec, ArizeError> {
    if obj.is_empty() {
        return Err(bad("at least one field must be provided"));
    }
    let mut next = spec.clone();
    if let Some(v) = obj.get("name") {
        v.as_str()
            .filter(|s| !s.is_empty() && s.chars().count() <= 255)
            .ok_or_else(|| bad("'name' must be a non-empty string"))?
            .clone_into(&mut next.name);
    }
    if spec.task_type == ArizeTaskType::RunExperiment {
        only(
            obj,
            &RUN_EXPERIMENT_UPDATE_FIELDS,
            &EVAL_UPDATE_FIELDS,
            "RUN_EXPERIMENT tasks",
        )?;
        if let Some(v) = obj.get("run_configuration") {
            if v.is_null() {
                return Err(bad("'run_configuration' cannot be null"));
            }
            next.run_configuration = Some(run_configuration(v)?);
        }
        return Ok(next);
    }
    let what = format!("{} tasks", spec.task_type.as_str());
    only(
        obj,
        &EVAL_UPDATE_FIELDS,
        &RUN_EXPERIMENT_UPDATE_FIELDS,
        &what,
    )?;
    let project_based = spec.project_id.is_some();
    for key in ["sampling_rate", "is_continuous", "evaluators"] {
        if obj.get(key).is_some_and(Value::is_null) {
            return Err(bad(format!("'{key}' cannot be null")));
        }
    }
    if let Some(rate) = opt_rate(obj, "sampling_rate")? {
        if !project_based {
            return Err(bad(
                "'sampling_rate' is only supported on project-based tasks",
            ));
        }
        next.sampling_rate = Some(rate);
    }
    if let Some(continuous) = opt_bool(obj, "is_continuous")? {
        if !project_based && continuous {
            return Err(bad("'is_continuous' must be false for dataset-based tasks"));
        }
        next.is_continuous = Some(continuous);
    }
    if obj.contains_key("query_filter") {
        next.query_filter = opt_string(obj, "query_filter", 2000)?;
    }
    if let Some(v) = obj.get("query_filters") {
        next.query_filters = if v.is_null() {
            None
        } else {
            Some(query_filters(v)?)
        };
    }
    if obj.contains_key("evaluators") {
        next.evaluators = evaluators(obj.get("evaluators"))?;
    }
    check_shape(&next)?;
    Ok(next)
}

// === trigger ===

/// A validated trigger body for `task`. `last_end` is the end of the task's latest data window (the default start);
/// the caller checks that a `RUN_EXPERIMENT` experiment name is unused.
pub(crate) fn trigger(
    task: &Task,
    last_end: Option<SystemTime>,
    obj: &Object,
    now: SystemTime,
) -> Result<RunPlan, ArizeError> {
    let spec = &task.spec;
    if spec.task_type == ArizeTaskType::RunExperiment {
        return trigger_run_experiment(obj);
    }
    let what = format!("{} tasks", spec.task_type.as_str());
    only(
        obj,
        &EVAL_TRIGGER_FIELDS,
        &RUN_EXPERIMENT_TRIGGER_FIELDS,
        &what,
    )?;
    let max_spans = opt_positive(obj, "max_spans")?.map_or(DEFAULT_MAX_SPANS, |n| {
        usize::try_from(n).unwrap_or(usize::MAX)
    });
    let override_evaluations = opt_bool(obj, "override_evaluations")?.unwrap_or(false);
    let start = opt_time(obj, "data_start_time")?;
    let end = opt_time(obj, "data_end_time")?;
    let experiment_ids = opt_ids(obj, "experiment_ids")?;
    let (window, items) = if spec.dataset_id.is_some() {
        if start.is_some() || end.is_some() {
            return Err(bad(
                "'data_start_time' and 'data_end_time' are not applicable to dataset-based tasks",
            ));
        }
        let experiments = experiment_ids
            .filter(|ids| !ids.is_empty())
            .or_else(|| spec.experiment_ids.clone())
            .map_or(1, |ids| ids.len());
        (None, experiments * DATASET_EXAMPLES)
    } else {
        if experiment_ids.is_some() {
            return Err(bad("'experiment_ids' only applies to dataset-based tasks"));
        }
        let end = end.unwrap_or(now);
        // The previous window's end, unless it is not before this end (then as on a first run).
        let start = start
            .or(last_end.filter(|last| *last < end))
            .unwrap_or_else(|| end.checked_sub(DEFAULT_WINDOW).unwrap_or(end));
        let span = end
            .duration_since(start)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| bad("'data_start_time' must be before 'data_end_time'"))?;
        if span > MAX_WINDOW {
            return Err(bad("the data window must not exceed 30 days"));
        }
        (Some((start, end)), PROJECT_RUN_ITEMS)
    };
    Ok(RunPlan {
        window,
        total: items.min(max_spans),
        override_evaluations,
        experiment_name: None,
    })
}

fn trigger_run_experiment(obj: &Object) -> Result<RunPlan, ArizeError> {
    only(
        obj,
        &RUN_EXPERIMENT_TRIGGER_FIELDS,
        &EVAL_TRIGGER_FIELDS,
        "RUN_EXPERIMENT tasks",
    )?;
    let name = opt_string(obj, "experiment_name", usize::MAX)?.ok_or_else(|| {
        ArizeError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "EXPERIMENT_NAME_REQUIRED",
            "'experiment_name' is required to trigger a RUN_EXPERIMENT task",
        )
    })?;
    if name.is_empty() || name.chars().count() > 255 || name.contains(['"', '\\']) {
        return Err(bad(
            "'experiment_name' must be 1-255 characters without double quotes or backslashes",
        ));
    }
    opt_id(obj, "dataset_version_id")?;
    let example_ids = opt_ids(obj, "example_ids")?;
    let max_examples = opt_positive(obj, "max_examples")?;
    if example_ids.is_some() && max_examples.is_some() {
        return Err(bad(
            "'example_ids' and 'max_examples' are mutually exclusive",
        ));
    }
    opt_string(obj, "query_filter", 2000)?;
    if let Some(v) = obj.get("tracing_metadata") {
        string_map(v, "tracing_metadata")?;
    }
    opt_ids(obj, "evaluation_task_ids")?;
    let total = match (example_ids, max_examples) {
        (Some(ids), _) if !ids.is_empty() => ids.len(),
        (_, Some(max)) => usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(DATASET_EXAMPLES),
        _ => DATASET_EXAMPLES,
    };
    Ok(RunPlan {
        window: None,
        total,
        override_evaluations: false,
        experiment_name: Some(name),
    })
}

fn opt_time(obj: &Object, key: &str) -> Result<Option<SystemTime>, ArizeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_datetime(s)
            .map(Some)
            .ok_or_else(|| bad(format!("'{key}' is not an ISO 8601 date-time: '{s}'"))),
        Some(_) => Err(bad(format!("'{key}' must be an ISO 8601 date-time string"))),
    }
}

/// ISO 8601 as Python's `isoformat()` writes it: `2025-01-01T00:00:00[.ffffff][Z|±HH:MM]`; no offset means UTC.
pub(crate) fn parse_datetime(s: &str) -> Option<SystemTime> {
    const BASE: usize = "2025-01-01T00:00:00".len();
    let (base, offset_secs) = match s.get(BASE..).and_then(|tail| tail.rfind(['+', '-'])) {
        Some(i) => {
            let at = BASE + i;
            let offset = s.get(at + 1..)?;
            let (h, m) = offset.split_once(':')?;
            let (h, m) = (h.parse::<u64>().ok()?, m.parse::<u64>().ok()?);
            if h > 23 || m > 59 || offset.len() != 5 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            (
                s.get(..at)?,
                if s.as_bytes()[at] == b'+' {
                    -i128::from(secs)
                } else {
                    i128::from(secs)
                },
            )
        }
        None => (s.trim_end_matches(['Z', 'z']), 0),
    };
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    let shift = Duration::from_secs(u64::try_from(offset_secs.unsigned_abs()).ok()?);
    if offset_secs < 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn secs(s: &str) -> u64 {
        parse_datetime(s)
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn datetimes_in_python_isoformat_parse_with_offsets() {
        let utc = secs("2025-01-01T00:00:00+00:00");
        assert_eq!(utc, 1_735_689_600);
        assert_eq!(secs("2025-01-01T00:00:00Z"), utc);
        assert_eq!(secs("2025-01-01T00:00:00"), utc);
        assert_eq!(secs("2025-01-01T00:00:00.678901"), utc);
        assert_eq!(secs("2025-01-01T02:00:00+02:00"), utc);
        assert_eq!(secs("2024-12-31T19:00:00-05:00"), utc);
        for bad in [
            "2025-01-01",
            "yesterday",
            "2025-01-01T00:00:00+2",
            "2025-13-01T00:00:00",
        ] {
            assert!(parse_datetime(bad).is_none(), "{bad}");
        }
    }
}
