//! The emulator's in-memory state: the fault/recording controls and the domain store (projects, runs, batches,
//! traces, usage), each behind a std `Mutex` that is never held across an `.await`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    EmulatorConfig, Faults, RecordedRequest, data::fnv1a, eval::EvalState, fa::FaState,
    jobs::now_rfc3339, platform::TraceStore, security::SecurityState,
};

/// Recorded requests kept at most (oldest dropped first), so long benchmark runs stay bounded.
const MAX_RECORDED: usize = 100_000;
/// Recorded body bytes kept at most (oldest requests dropped first; the newest is always kept).
const MAX_RECORDED_BODY_BYTES: usize = 512 * 1024 * 1024;

/// Everything the router and the connection layer share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    control: Mutex<Control>,
    store: Mutex<Store>,
}

/// Fixed at construction.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) api_key: Option<String>,
    pub(crate) inline_max_items: usize,
    pub(crate) max_dataset_items: usize,
}

/// Scriptable knobs and the request log.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) faults: Faults,
    /// Scripted failures, served front to back: (remaining count, status).
    pub(crate) fail_next: VecDeque<(usize, StatusCode)>,
    /// Successful answers still to be cut short (see `EmulatorHandle::garble_next`).
    pub(crate) garble_next: usize,
    /// Requests still to be answered with a validation error echoing their body.
    pub(crate) echo_next: usize,
    pub(crate) job_duration: Duration,
    pub(crate) requests: VecDeque<RecordedRequest>,
    /// Sum of the recorded bodies' lengths.
    pub(crate) recorded_bytes: usize,
    pub(crate) bearer_keys: Vec<String>,
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
            control: Mutex::new(Control {
                faults: config.faults,
                fail_next: VecDeque::new(),
                garble_next: 0,
                echo_next: 0,
                job_duration: config.job_duration,
                requests: VecDeque::new(),
                recorded_bytes: 0,
                bearer_keys: Vec::new(),
                openai_keys: Vec::new(),
            }),
            store: Mutex::new(Store::seeded()),
        }
    }

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn job_duration(&self) -> Duration {
        self.control().job_duration
    }

    /// Appends to the request log and remembers a new bearer key.
    pub(crate) fn record(&self, req: RecordedRequest, bearer: Option<&str>) {
        let mut c = self.control();
        if let Some(key) = bearer
            && !c.bearer_keys.iter().any(|k| k == key)
        {
            c.bearer_keys.push(key.to_owned());
        }
        c.recorded_bytes += req.body.len();
        c.requests.push_back(req);
        while c.requests.len() > 1
            && (c.requests.len() > MAX_RECORDED || c.recorded_bytes > MAX_RECORDED_BODY_BYTES)
        {
            if let Some(old) = c.requests.pop_front() {
                c.recorded_bytes -= old.body.len();
            }
        }
    }

    /// Remembers a BYOK `openai_api_key` seen in a submit body.
    pub(crate) fn record_openai_key(&self, body: &serde_json::Map<String, Value>) {
        let Some(Value::String(key)) = body.get("openai_api_key") else {
            return;
        };
        let mut c = self.control();
        if !c.openai_keys.iter().any(|k| k == key) {
            c.openai_keys.push(key.clone());
        }
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
