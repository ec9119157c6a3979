//! `LearnedLimits`: dataset limits the upstream taught us with `dataset_too_large`, per kind.
//! Durable in the store, cached here so the submit path never waits on the database for them.
use std::{
    collections::HashMap,
    sync::{PoisonError, RwLock},
};

use crate::store::{JobStore, StoreError};
use crate::types::JobKind;

#[derive(Debug, Default)]
pub(crate) struct LearnedLimits(RwLock<HashMap<JobKind, usize>>);

impl LearnedLimits {
    /// Loads every kind's learned limit from the store (at startup).
    pub(crate) async fn load(store: &dyn JobStore) -> Result<Self, StoreError> {
        let mut limits = HashMap::new();
        for kind in [
            JobKind::FailureAnalysis,
            JobKind::Evaluation,
            JobKind::SecurityAudit,
        ] {
            if let Some(limit) = store.learned_limit(kind.as_str()).await? {
                limits.insert(kind, limit);
            }
        }
        Ok(Self(RwLock::new(limits)))
    }

    pub(crate) fn get(&self, kind: JobKind) -> Option<usize> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&kind)
            .copied()
    }

    /// Records a limit durably, then in memory. Limits only ever tighten.
    pub(crate) async fn learn(
        &self,
        store: &dyn JobStore,
        kind: JobKind,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let limit = self.get(kind).map_or(limit, |known| known.min(limit));
        store.set_learned_limit(kind.as_str(), limit).await?;
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind, limit);
        Ok(limit)
    }
}
