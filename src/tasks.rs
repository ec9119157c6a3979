//! `KeyedTasks`: a `JoinSet` whose every task carries the key of the work it does.
//!
//! A plain `JoinSet` reports a panic as a `JoinError` without saying which work panicked, so a
//! worker that marks keys busy cannot free them. Here the key is remembered by task id and handed
//! back however the task ended, so the key is free again whether the task returned, panicked or
//! was aborted.
use std::{
    any::Any,
    collections::{HashMap, HashSet},
    future::Future,
    hash::Hash,
};

use tokio::task::{self, JoinSet};

/// How a task ended when it did not return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The task panicked; the panic message when it was a string.
    Panicked(String),
    /// The task was aborted (only at shutdown).
    Aborted,
}

/// Tasks keyed by the work they do; a key is busy from `spawn` until its task is joined.
#[derive(Debug)]
pub(crate) struct KeyedTasks<K, T> {
    set: JoinSet<T>,
    keys: HashMap<task::Id, K>,
    busy: HashSet<K>,
}

// === impl KeyedTasks ===

impl<K, T> KeyedTasks<K, T>
where
    K: Clone + Eq + Hash,
    T: Send + 'static,
{
    pub(crate) fn new() -> Self {
        Self {
            set: JoinSet::new(),
            keys: HashMap::new(),
            busy: HashSet::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether a task for `key` is running (or finished and not joined yet).
    pub(crate) fn is_busy(&self, key: &K) -> bool {
        self.busy.contains(key)
    }

    /// The keys of every task not joined yet.
    pub(crate) fn busy(&self) -> impl Iterator<Item = &K> {
        self.busy.iter()
    }

    /// Runs `task` for `key`. The caller keeps one task per key (it checks `is_busy` first).
    pub(crate) fn spawn<F>(&mut self, key: K, task: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.busy.insert(key.clone());
        self.keys.insert(handle.id(), key);
    }

    /// The next task to end, with its key; `None` when no task is left. The key is free again
    /// when this returns, however the task ended.
    pub(crate) async fn join_next(&mut self) -> Option<(K, Result<T, Ended>)> {
        loop {
            let (id, result) = match self.set.join_next_with_id().await? {
                Ok((id, output)) => (id, Ok(output)),
                Err(error) => {
                    let id = error.id();
                    let ended = if error.is_panic() {
                        Ended::Panicked(panic_message(error.into_panic().as_ref()))
                    } else {
                        Ended::Aborted
                    };
                    (id, Err(ended))
                }
            };
            // Every task was spawned with a key; an unknown id cannot happen, and is skipped.
            if let Some(key) = self.keys.remove(&id) {
                self.busy.remove(&key);
                return Some((key, result));
            }
        }
    }

    /// Aborts every task and waits until they are gone; every key is free afterwards.
    pub(crate) async fn shutdown(&mut self) {
        self.set.shutdown().await;
        self.keys.clear();
        self.busy.clear();
    }
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_hands_back_its_key_and_frees_it() {
        let mut tasks: KeyedTasks<&'static str, u32> = KeyedTasks::new();
        tasks.spawn("fine", async { 7 });
        tasks.spawn("broken", async { panic!("bad batch") });
        assert!(tasks.is_busy(&"broken"));
        let mut ended = Vec::new();
        while let Some(done) = tasks.join_next().await {
            ended.push(done);
        }
        ended.sort_by_key(|(key, _)| *key);
        assert_eq!(
            ended,
            vec![
                ("broken", Err(Ended::Panicked("bad batch".to_owned()))),
                ("fine", Ok(7)),
            ]
        );
        assert!(!tasks.is_busy(&"broken"), "the panicked key is free again");
        assert_eq!(tasks.busy().count(), 0);
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn shutdown_aborts_what_runs_and_frees_every_key() {
        let mut tasks: KeyedTasks<u32, ()> = KeyedTasks::new();
        tasks.spawn(1, std::future::pending());
        tasks.spawn(2, std::future::pending());
        assert_eq!(tasks.len(), 2);
        tasks.shutdown().await;
        assert!(tasks.is_empty());
        assert!(!tasks.is_busy(&1) && !tasks.is_busy(&2));
    }
}
