//! The emulator's in-memory state: the fault/recording controls and the domain store (projects, runs, batches,
//! traces, usage), each behind a std `Mutex` that is never held across an `.await`.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    EmulatorConfig,
    data::fnv1a,
    error::{EmuError, detail_response},
    eval::EvalState,
    fa::FaState,
    jobs::now_rfc3339,
    platform::TraceStore,
    security::SecurityState,
    server::{Backend, Control, fault_detail},
};

/// Everything the router and the connection layer share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    control: Mutex<Control>,
    knobs: Mutex<Knobs>,
    store: Mutex<Store>,
}

/// Fixed at construction.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) api_key: Option<String>,
    pub(crate) inline_max_items: usize,
    pub(crate) max_dataset_items: usize,
}

/// Valiqor-specific knobs (the connection-level ones are in [`Control`]).
#[derive(Debug)]
pub(crate) struct Knobs {
    pub(crate) job_duration: Duration,
    pub(crate) openai_keys: Vec<String>,
}

/// The emulated backend's data.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) projects: Table<Project>,
    pub(crate) fa: FaState,
    pub(crate) eval: EvalState,
    pub(crate) security: SecurityState,
    pub(crate) traces: TraceStore,
    /// Submissions per bearer key and service, for `/v2/auth/usage`.
    pub(crate) usage: HashMap<String, Usage>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Usage {
    pub(crate) failure_analysis: u64,
    pub(crate) evaluation: u64,
    pub(crate) security: u64,
    pub(crate) tokens: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Service {
    FailureAnalysis,
    Evaluation,
    Security,
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(config: EmulatorConfig) -> Self {
        Self {
            settings: Settings {
                api_key: config.api_key,
                inline_max_items: config.inline_max_items,
                max_dataset_items: config.max_dataset_items,
            },
            control: Control::new(config.faults),
            knobs: Mutex::new(Knobs {
                job_duration: config.job_duration,
                openai_keys: Vec::new(),
            }),
            store: Mutex::new(Store::seeded()),
        }
    }

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        Control::lock(&self.control)
    }

    pub(crate) fn knobs(&self) -> MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn job_duration(&self) -> Duration {
        self.knobs().job_duration
    }

    /// Remembers a BYOK `openai_api_key` seen in a submit body.
    pub(crate) fn record_openai_key(&self, body: &serde_json::Map<String, Value>) {
        let Some(Value::String(key)) = body.get("openai_api_key") else {
            return;
        };
        let mut k = self.knobs();
        if !k.openai_keys.iter().any(|seen| seen == key) {
            k.openai_keys.push(key.clone());
        }
    }
}

impl Backend for Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        Shared::control(self)
    }

    /// `{"detail": …}`, as the Valiqor service answers.
    fn fault_response(&self, status: StatusCode, _path: &str) -> Response {
        detail_response(status, &fault_detail(status))
    }

    fn too_large(&self, _path: &str) -> Response {
        axum::response::IntoResponse::into_response(EmuError::PayloadTooLarge)
    }
}

// === impl Store ===

impl Store {
    fn seeded() -> Self {
        let mut store = Self::default();
        let demo = store.ensure_project("demo").id.clone();
        store.traces.seed(&demo, "demo");
        store
    }

    /// The project named `name`, created on first use (as the real backend does for submissions).
    pub(crate) fn ensure_project(&mut self, name: &str) -> &Project {
        let id = project_id(name);
        self.projects
            .get_or_insert_with(id.clone(), || Project::new(id, name, None, None))
    }

    /// Creates a project; `None` when the name is taken.
    pub(crate) fn create_project(
        &mut self,
        name: &str,
        key: Option<String>,
        model_name: Option<String>,
    ) -> Option<&Project> {
        let id = project_id(name);
        if self.projects.contains(&id) {
            return None;
        }
        Some(
            self.projects
                .get_or_insert_with(id.clone(), || Project::new(id, name, key, model_name)),
        )
    }

    pub(crate) fn count_usage(&mut self, caller: &str, service: Service, tokens: usize) {
        let u = self.usage.entry(caller.to_owned()).or_default();
        match service {
            Service::FailureAnalysis => u.failure_analysis += 1,
            Service::Evaluation => u.evaluation += 1,
            Service::Security => u.security += 1,
        }
        u.tokens += u64::try_from(tokens).unwrap_or(u64::MAX);
    }
}

/// Project ids are derived from the name, so they are stable across emulator restarts.
pub(crate) fn project_id(name: &str) -> String {
    format!("proj_{:012x}", fnv1a(&[name]) & 0xffff_ffff_ffff)
}

/// A fresh opaque id with a readable prefix (`fa_…`, `ev_…`).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::now_v7().simple())
}

#[derive(Debug, Clone)]
pub(crate) struct Project {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) model_name: Option<String>,
    pub(crate) created_at: String,
}

impl Project {
    fn new(id: String, name: &str, key: Option<String>, model_name: Option<String>) -> Self {
        let key = key.unwrap_or_else(|| {
            name.to_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect()
        });
        Self {
            id,
            name: name.to_owned(),
            key,
            model_name,
            created_at: now_rfc3339(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "project_id": self.id,
            "name": self.name,
            "key": self.key,
            "model_name": self.model_name,
            "created_at": self.created_at,
        })
    }
}

/// An insertion-ordered map from id to row.
#[derive(Debug)]
pub(crate) struct Table<T> {
    rows: Vec<T>,
    index: HashMap<String, usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> Table<T> {
    pub(crate) fn insert(&mut self, id: String, row: T) {
        if let Some(&i) = self.index.get(&id) {
            self.rows[i] = row;
        } else {
            self.index.insert(id, self.rows.len());
            self.rows.push(row);
        }
    }

    /// The row for `id`, inserting `make()` first when there is none.
    pub(crate) fn get_or_insert_with(&mut self, id: String, make: impl FnOnce() -> T) -> &mut T {
        let i = if let Some(&i) = self.index.get(&id) {
            i
        } else {
            let i = self.rows.len();
            self.rows.push(make());
            self.index.insert(id, i);
            i
        };
        &mut self.rows[i]
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&T> {
        self.index.get(id).and_then(|&i| self.rows.get(i))
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.index.get(id).and_then(|&i| self.rows.get_mut(i))
    }

    /// Rows in insertion order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.rows.iter()
    }
}
