//! Evaluation (`EvaluationResult`): scores as means weighted by evaluated items, counters summed.
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    MergeContext,
    aggregate::{Latest, MeanMap, OrderedUnion, WeightedMean, finish_common, put},
    batch::Batch,
    json::as_weight,
    write::Merged,
};

/// Running state of an evaluation merge.
#[derive(Debug, Default)]
pub(super) struct EvalMerge {
    base: Option<Map<String, Value>>,
    scores: MeanMap,
    overall: WeightedMean,
    total_items: u64,
    evaluated: u64,
    /// Whether any batch used `evaluated_items` / `items_evaluated`.
    evaluated_names: [bool; 2],
    counters: BTreeMap<String, u64>,
    metrics: OrderedUnion,
    completed_at: Latest,
}

const EVALUATED_NAMES: [&str; 2] = ["evaluated_items", "items_evaluated"];

/// Top-level integers that are not counters to sum.
fn is_eval_counter(key: &str) -> bool {
    !(key == "id"
        || key.ends_with("_id")
        || key.ends_with("_at")
        || matches!(
            key,
            "total_items" | "evaluated_items" | "items_evaluated" | "duration_ms" | "overall_score"
        ))
}

impl EvalMerge {
    pub(super) fn add(&mut self, batch: Batch<'_>) {
        let obj = &batch.obj;
        let evaluated = EVALUATED_NAMES
            .iter()
            .find_map(|k| batch.count_field(k))
            .unwrap_or_else(|| batch.items());
        for (seen, key) in self.evaluated_names.iter_mut().zip(EVALUATED_NAMES) {
            *seen |= obj.contains_key(key);
        }
        let weight = as_weight(evaluated);
        self.evaluated = self.evaluated.saturating_add(evaluated);
        self.total_items = self.total_items.saturating_add(
            batch
                .count_field("total_items")
                .unwrap_or_else(|| batch.items()),
        );
        self.scores.add(obj.get("aggregate_scores"), weight);
        if let Some(score) = obj.get("overall_score") {
            self.overall.add(score, weight);
        }
        for (key, value) in obj {
            if let Some(n) = value.as_u64()
                && is_eval_counter(key)
            {
                let sum = self.counters.entry(key.clone()).or_default();
                *sum = sum.saturating_add(n);
            }
        }
        self.metrics.extend(obj.get("metrics"));
        self.completed_at.add(obj.get("completed_at"));
        if self.base.is_none() {
            self.base = Some(batch.obj);
        }
    }

    pub(super) fn finish(self, ctx: &MergeContext<'_>) -> Merged<'static> {
        let mut out = self.base.unwrap_or_default();
        put(&mut out, "run_id", ctx.job_id);
        if out.contains_key("id") {
            put(&mut out, "id", ctx.job_id);
        }
        put(&mut out, "status", "completed");
        put(&mut out, "aggregate_scores", self.scores.finish());
        put(
            &mut out,
            "overall_score",
            self.overall.value().unwrap_or(Value::Null),
        );
        put(&mut out, "total_items", self.total_items);
        let any_name = self.evaluated_names.contains(&true);
        for (key, seen) in EVALUATED_NAMES.into_iter().zip(self.evaluated_names) {
            if seen || (!any_name && key == "evaluated_items") {
                put(&mut out, key, self.evaluated);
            }
        }
        for (key, sum) in self.counters {
            out.insert(key, Value::from(sum));
        }
        if matches!(out.get("metrics"), Some(Value::Array(_))) {
            put(&mut out, "metrics", self.metrics.items);
        }
        if out.contains_key("duration_ms") {
            put(&mut out, "duration_ms", ctx.duration_ms);
        }
        finish_common(&mut out, self.completed_at);
        Merged {
            fields: out,
            lists: Vec::new(),
        }
    }
}
