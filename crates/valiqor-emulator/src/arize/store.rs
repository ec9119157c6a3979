//! The Arize emulator's data: the seeded space, project, dataset and evaluator; tasks; and task runs whose status
//! is a pure function of wall time (a [`JobClock`]: `PENDING` for the first 10 % of the run duration, `RUNNING`,
//! then terminal), computed when a run is read.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::{
    ArizeTaskType,
    ids::{b64_decode, encoded_id, plain_id},
};
use crate::jobs::{CancelOutcome, JobClock, Phase, now_rfc3339, rfc3339};

pub(crate) const SPACE_NAME: &str = "demo-space";
pub(crate) const PROJECT_NAME: &str = "demo-project";
pub(crate) const DATASET_NAME: &str = "demo-dataset";
pub(crate) const EVALUATOR_NAME: &str = "demo-evaluator";
/// A task whose name contains this ends its runs `FAILED`.
pub(crate) const RUN_FAIL_MARKER: &str = "EMULATOR_RUN_FAIL";
/// A task whose name contains this ends its runs `CANCELLED` with nothing evaluated (unless the trigger asked for
/// `override_evaluations`).
pub(crate) const RUN_CANCEL_MARKER: &str = "EMULATOR_RUN_CANCEL";
/// Examples in the (virtual) seeded dataset.
pub(crate) const DATASET_EXAMPLES: usize = 10;

const FAILURE_REASON: &str = "emulated run failure: the evaluator errored on every remaining span";
const NOTHING_TO_EVALUATE: &str = "Nothing to evaluate: all matching data already has evaluation labels from a \
     previous run. Re-trigger the task with override_evaluations enabled to re-evaluate it.";
const CANCELLED_ON_REQUEST: &str = "Cancelled on request";

pub(crate) fn space_id() -> String {
    plain_id("Space", 1)
}

pub(crate) fn project_id() -> String {
    plain_id("Model", 1)
}

pub(crate) fn dataset_id() -> String {
    plain_id("Dataset", 1)
}

pub(crate) fn evaluator_id() -> String {
    plain_id("Evaluator", 1)
}

fn user_id() -> String {
    plain_id("User", 1)
}

/// The name shown for an evaluator id: the seeded one's name, else the id's decoded text (`Evaluator-2-emul`).
pub(crate) fn evaluator_name(id: &str) -> String {
    if id == evaluator_id() {
        return EVALUATOR_NAME.to_owned();
    }
    b64_decode(id)
        .and_then(|b| String::from_utf8(b).ok())
        .map_or_else(|| id.to_owned(), |text| text.replace(':', "-"))
}

/// A space, project or dataset (read-only, seeded).
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) name: String,
    /// The space it belongs to (`None` for a space).
    pub(crate) space_id: Option<String>,
    created_at: String,
}

impl Named {
    pub(crate) fn space_json(&self) -> Value {
        json!({
            "id": self.id,
            "organization_id": plain_id("Organization", 1),
            "name": self.name,
            "description": "Seeded by the Arize emulator",
            "created_at": self.created_at,
            "is_private": false,
        })
    }

    pub(crate) fn project_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "space_id": self.space_id,
            "created_at": self.created_at,
            "project_type": "APPLICATION",
        })
    }

    pub(crate) fn dataset_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "space_id": self.space_id,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "versions": [{
                "id": plain_id("DatasetVersion", self.seq),
                "name": "v1",
                "dataset_id": self.id,
                "created_at": self.created_at,
                "updated_at": self.created_at,
            }],
        })
    }
}

/// What create sets and update changes; validated (see `validate.rs`).
#[derive(Debug, Clone)]
pub(crate) struct TaskSpec {
    pub(crate) name: String,
    pub(crate) task_type: ArizeTaskType,
    pub(crate) project_id: Option<String>,
    pub(crate) dataset_id: Option<String>,
    pub(crate) sampling_rate: Option<f64>,
    pub(crate) is_continuous: Option<bool>,
    pub(crate) query_filter: Option<String>,
    /// `{filters, expression}` with the expression synthesized for a lone filter.
    pub(crate) query_filters: Option<Value>,
    /// `TaskEvaluator` objects.
    pub(crate) evaluators: Vec<Value>,
    /// `Some` for dataset-based evaluation tasks.
    pub(crate) experiment_ids: Option<Vec<String>>,
    pub(crate) run_configuration: Option<Value>,
}

impl TaskSpec {
    /// The task `seed_task` creates: an evaluation task over the seeded project with the seeded evaluator, or a
    /// `RUN_EXPERIMENT` task over the seeded dataset.
    pub(crate) fn seeded(name: &str, task_type: ArizeTaskType) -> Self {
        let evaluation = task_type != ArizeTaskType::RunExperiment;
        Self {
            name: name.to_owned(),
            task_type,
            project_id: evaluation.then(project_id),
            dataset_id: (!evaluation).then(dataset_id),
            sampling_rate: evaluation.then_some(1.0),
            is_continuous: evaluation.then_some(false),
            query_filter: None,
            query_filters: None,
            evaluators: if evaluation {
                vec![json!({
                    "evaluator_id": evaluator_id(),
                    "evaluator_name": EVALUATOR_NAME,
                    "evaluator_version_id": null,
                    "query_filter": null,
                    "column_mappings": {"input": "attributes.input.value", "output": "attributes.output.value"},
                    "query_mappings": null,
                })]
            } else {
                Vec::new()
            },
            experiment_ids: None,
            run_configuration: (!evaluation).then(|| {
                json!({
                    "experiment_type": "LLM_GENERATION",
                    "ai_integration_id": plain_id("AIIntegration", 1),
                    "model_name": "gpt-4o",
                    "messages": [{"role": "USER", "content": "{question}"}],
                    "input_variable_format": "F_STRING",
                })
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) space_id: String,
    pub(crate) spec: TaskSpec,
    pub(crate) last_run_at: Option<String>,
    created_at: String,
    pub(crate) updated_at: String,
}

impl Task {
    pub(crate) fn to_json(&self) -> Value {
        let s = &self.spec;
        json!({
            "id": self.id,
            "name": s.name,
            "type": s.task_type.as_str(),
            "project_id": s.project_id,
            "dataset_id": s.dataset_id,
            "sampling_rate": s.sampling_rate,
            "is_continuous": s.is_continuous,
            "query_filter": s.query_filter,
            "query_filters": s.query_filters,
            "evaluators": s.evaluators,
            "experiment_ids": s.experiment_ids,
            "run_configuration": s.run_configuration,
            "last_run_at": self.last_run_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "created_by_user_id": user_id(),
        })
    }
}

/// How a run ends if nobody cancels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Complete,
    Fail,
    NothingToEvaluate,
}

/// What a validated trigger asks for.
#[derive(Debug, Clone)]
pub(crate) struct RunPlan {
    /// The data window of a project-based evaluation run.
    pub(crate) window: Option<(SystemTime, SystemTime)>,
    /// Items the run will process.
    pub(crate) total: usize,
    pub(crate) override_evaluations: bool,
    /// `RUN_EXPERIMENT` runs.
    pub(crate) experiment_name: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) task_id: String,
    clock: JobClock,
    outcome: Outcome,
    total: usize,
    window: Option<(SystemTime, SystemTime)>,
    /// `RUN_EXPERIMENT` runs: the experiment, shown once the run is `RUNNING`.
    experiment: Option<(String, String)>,
    /// The dataset of a `RUN_EXPERIMENT` run (experiment names are unique per dataset).
    dataset_id: Option<String>,
}

impl Run {
    pub(crate) fn status(&self, now: Instant) -> &'static str {
        match self.clock.phase(now) {
            Phase::Queued => "PENDING",
            Phase::Running => "RUNNING",
            Phase::Completed => "COMPLETED",
            Phase::Failed if self.outcome == Outcome::NothingToEvaluate => "CANCELLED",
            Phase::Failed => "FAILED",
            Phase::Cancelled => "CANCELLED",
        }
    }

    /// `(successes, errors, skipped)`: one item in ten errors and one in twenty is skipped.
    fn counts(&self, now: Instant) -> (usize, usize, usize) {
        let processed = match self.clock.phase(now) {
            Phase::Queued => 0,
            Phase::Running | Phase::Cancelled => self.clock.current_item(now, self.total),
            Phase::Completed => self.total,
            Phase::Failed => match self.outcome {
                Outcome::NothingToEvaluate => 0,
                Outcome::Fail | Outcome::Complete => self.total / 2,
            },
        };
        let errors = processed / 10;
        let skipped = processed / 20;
        (processed - errors - skipped, errors, skipped)
    }

    fn failure_reason(&self, now: Instant) -> Option<&'static str> {
        match self.clock.phase(now) {
            Phase::Failed => Some(match self.outcome {
                Outcome::NothingToEvaluate => NOTHING_TO_EVALUATE,
                Outcome::Fail | Outcome::Complete => FAILURE_REASON,
            }),
            Phase::Cancelled => Some(CANCELLED_ON_REQUEST),
            Phase::Queued | Phase::Running | Phase::Completed => None,
        }
    }

    pub(crate) fn to_json(&self, now: Instant) -> Value {
        let started = self.clock.started_at(now);
        let experiment_id = self
            .experiment
            .as_ref()
            .filter(|_| started.is_some())
            .map(|(id, _)| id.clone());
        let (successes, errors, skipped) = self.counts(now);
        json!({
            "id": self.id,
            "task_id": self.task_id,
            "experiment_id": experiment_id,
            "status": self.status(now),
            "run_started_at": started,
            "run_finished_at": self.clock.finished_at(now),
            "data_start_time": self.window.map(|(start, _)| rfc3339(start)),
            "data_end_time": self.window.map(|(_, end)| rfc3339(end)),
            "num_successes": successes,
            "num_errors": errors,
            "num_skipped": skipped,
            "created_at": self.clock.created_at(),
            "created_by_user_id": user_id(),
            "failure_reason": self.failure_reason(now),
        })
    }

    /// The end of the data window, for the next trigger's default start.
    pub(crate) fn window_end(&self) -> Option<SystemTime> {
        self.window.map(|(_, end)| end)
    }
}

/// Everything the Arize emulator stores.
#[derive(Debug)]
pub(crate) struct ArizeStore {
    /// Duration of runs triggered from now on.
    pub(crate) run_duration: Duration,
    pub(crate) spaces: Vec<Named>,
    pub(crate) projects: Vec<Named>,
    pub(crate) datasets: Vec<Named>,
    pub(crate) tasks: Vec<Task>,
    /// Every run, oldest first; runs of deleted tasks stay.
    pub(crate) runs: Vec<Run>,
    next_task: u64,
    next_run: u64,
    next_experiment: u64,
}

impl ArizeStore {
    pub(crate) fn seeded(run_duration: Duration) -> Self {
        let created_at = now_rfc3339();
        let named = |id: String, name: &str, space_id: Option<String>| Named {
            seq: 1,
            id,
            name: name.to_owned(),
            space_id,
            created_at: created_at.clone(),
        };
        Self {
            run_duration,
            spaces: vec![named(space_id(), SPACE_NAME, None)],
            projects: vec![named(project_id(), PROJECT_NAME, Some(space_id()))],
            datasets: vec![named(dataset_id(), DATASET_NAME, Some(space_id()))],
            tasks: Vec::new(),
            runs: Vec::new(),
            next_task: 1,
            next_run: 1,
            next_experiment: 1,
        }
    }

    pub(crate) fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    pub(crate) fn task_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.tasks.iter_mut().find(|t| t.id == id)
    }

    /// The space a project or dataset belongs to, if it exists.
    pub(crate) fn container_space(&self, spec: &TaskSpec) -> Option<String> {
        let (rows, id) = match (&spec.project_id, &spec.dataset_id) {
            (Some(id), _) => (&self.projects, id),
            (None, Some(id)) => (&self.datasets, id),
            (None, None) => return None,
        };
        rows.iter()
            .find(|row| row.id == *id)
            .and_then(|row| row.space_id.clone())
    }

    /// Whether another task (not `except`) in `space_id` is named `name`.
    pub(crate) fn name_taken(&self, space_id: &str, name: &str, except: Option<&str>) -> bool {
        self.tasks
            .iter()
            .any(|t| t.space_id == space_id && t.spec.name == name && Some(t.id.as_str()) != except)
    }

    pub(crate) fn insert_task(&mut self, space_id: String, spec: TaskSpec) -> &Task {
        let seq = self.next_task;
        self.next_task += 1;
        let now = now_rfc3339();
        self.tasks.push(Task {
            seq,
            id: encoded_id("OnlineTask", seq),
            space_id,
            spec,
            last_run_at: None,
            created_at: now.clone(),
            updated_at: now,
        });
        &self.tasks[self.tasks.len() - 1]
    }

    /// Removes a task (its runs stay readable); whether it existed.
    pub(crate) fn delete_task(&mut self, id: &str) -> bool {
        let before = self.tasks.len();
        self.tasks.retain(|t| t.id != id);
        self.tasks.len() != before
    }

    pub(crate) fn run(&self, id: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.id == id)
    }

    /// The runs of a task, newest first.
    pub(crate) fn runs_of<'a>(&'a self, task_id: &'a str) -> impl Iterator<Item = &'a Run> + 'a {
        self.runs.iter().rev().filter(move |r| r.task_id == task_id)
    }

    /// Whether a `RUN_EXPERIMENT` run on `dataset_id` already used `name`.
    pub(crate) fn experiment_name_taken(&self, dataset_id: &str, name: &str) -> bool {
        self.runs.iter().any(|r| {
            r.dataset_id.as_deref() == Some(dataset_id)
                && r.experiment.as_ref().is_some_and(|(_, n)| n == name)
        })
    }

    /// Starts a run of `task_id` (which must exist) as planned; it is `PENDING` now.
    pub(crate) fn trigger(&mut self, task_id: &str, plan: RunPlan) -> Option<&Run> {
        let task = self.tasks.iter_mut().find(|t| t.id == task_id)?;
        let name = &task.spec.name;
        let outcome = if name.contains(RUN_FAIL_MARKER) {
            Outcome::Fail
        } else if name.contains(RUN_CANCEL_MARKER) && !plan.override_evaluations {
            Outcome::NothingToEvaluate
        } else {
            Outcome::Complete
        };
        let experiment = plan.experiment_name.map(|experiment_name| {
            let n = self.next_experiment;
            self.next_experiment += 1;
            (encoded_id("Experiment", n), experiment_name)
        });
        let dataset_id = experiment.as_ref().and(task.spec.dataset_id.clone());
        let seq = self.next_run;
        self.next_run += 1;
        let failure = (outcome != Outcome::Complete).then(|| FAILURE_REASON.to_owned());
        let run = Run {
            seq,
            id: encoded_id("TaskRun", seq),
            task_id: task_id.to_owned(),
            clock: JobClock::start(self.run_duration, failure),
            outcome,
            total: plan.total,
            window: plan.window,
            experiment,
            dataset_id,
        };
        task.last_run_at = Some(run.clock.created_at());
        self.runs.push(run);
        self.runs.last()
    }

    /// Cancels a `PENDING`/`RUNNING` run; `Err(status)` when it is already terminal, `None` when unknown.
    pub(crate) fn cancel(
        &mut self,
        run_id: &str,
        now: Instant,
    ) -> Option<Result<&Run, &'static str>> {
        let run = self.runs.iter_mut().find(|r| r.id == run_id)?;
        Some(match run.clock.cancel(now) {
            CancelOutcome::Cancelled => Ok(&*run),
            CancelOutcome::AlreadyFinished(_) => Err(run.status(now)),
        })
    }
}
