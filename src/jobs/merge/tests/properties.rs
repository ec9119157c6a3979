//! Properties: a merge of any partition of a dataset matches one run over the whole of it.
use proptest::prelude::*;

use super::*;
use crate::jobs::merge::fa::{FA_COUNTS, FA_FLAGS};

fn tag_strategy() -> impl Strategy<Value = TagSpec> {
    (0..SUBS.len(), 0..3usize, 0..=40u32, 40..=100u32).prop_map(|(sub, d, sev, confidence)| {
        let decision = ["pass", "fail", "unsure"][d];
        let severity = match decision {
            "fail" => 10 + sev,
            "unsure" => 5 + sev % 15,
            _ => 0,
        };
        TagSpec {
            sub,
            decision,
            severity,
            confidence,
        }
    })
}

fn item_strategy() -> impl Strategy<Value = Item> {
    (
        prop::collection::vec(tag_strategy(), 0..4),
        [0..=1000u32, 0..=1000u32, 0..=1000u32],
        0..=100u32,
        1..500u64,
        prop::option::of(0..CATS.len()),
    )
        .prop_map(|(tags, scores, confidence, tokens, unsafe_cat)| Item {
            id: 0,
            tags,
            scores,
            confidence,
            tokens,
            unsafe_cat,
        })
}

/// A dataset, batch boundaries over it (first 0, last N, strictly increasing) and a rotation
/// for the order the batches are handed over in.
fn partitioned() -> impl Strategy<Value = (Vec<Item>, Vec<usize>, usize)> {
    prop::collection::vec(item_strategy(), 1..40).prop_flat_map(|mut items| {
        for (id, item) in items.iter_mut().enumerate() {
            item.id = id;
        }
        let n = items.len();
        let cuts = prop::collection::vec(0..=n, 0..8).prop_map(move |mut cuts| {
            cuts.extend([0, n]);
            cuts.sort_unstable();
            cuts.dedup();
            cuts
        });
        (Just(items), cuts, any::<usize>())
    })
}

fn merged_split(
    kind: JobKind,
    items: &[Item],
    bounds: &[usize],
    rotation: usize,
    build: fn(&[Item], &str) -> Value,
) -> (Vec<(usize, usize, Value)>, Value) {
    let mut batches = split(items, bounds, build);
    let len = batches.len();
    batches.rotate_left(rotation % len);
    let merged = run(kind, &batches);
    batches.sort_by_key(|b| b.0);
    (batches, merged)
}

/// The brief's rule, restated naively: highest max severity, most failing tags, first seen.
fn expected_primary(items: &[Item]) -> Option<&'static str> {
    let mut seen: Vec<(usize, u32, usize)> = Vec::new();
    for t in items
        .iter()
        .flat_map(|i| &i.tags)
        .filter(|t| t.decision == "fail")
    {
        match seen.iter_mut().find(|(sub, _, _)| *sub == t.sub) {
            Some(e) => {
                e.1 = e.1.max(t.severity);
                e.2 += 1;
            }
            None => seen.push((t.sub, t.severity, 1)),
        }
    }
    let mut best: Option<(usize, u32, usize)> = None;
    for e in seen {
        if best.is_none_or(|b| (e.1, e.2) > (b.1, b.2)) {
            best = Some(e);
        }
    }
    best.map(|b| SUBS[b.0].0)
}

fn sorted(v: &Value) -> Vec<&str> {
    let mut s = strings(v);
    s.sort_unstable();
    s
}

/// Whether two JSON numbers agree within 1e-9.
fn near(a: &Value, b: &Value) -> bool {
    (f(a) - f(b)).abs() < 1e-9
}

type Outcome = Result<(), TestCaseError>;

fn check_fa_partition(items: &[Item], bounds: &[usize], rotation: usize) -> Outcome {
    let whole = fa_result(items, "whole");
    let (batches, merged) =
        merged_split(JobKind::FailureAnalysis, items, bounds, rotation, fa_result);

    let tags = merged["failure_tags"].as_array().unwrap();
    let expected_tags = whole["failure_tags"].as_array().unwrap();
    prop_assert_eq!(tags.len(), expected_tags.len());
    for (tag, expected) in tags.iter().zip(expected_tags) {
        prop_assert_eq!(without(tag, &["tag_id"]), without(expected, &["tag_id"]));
    }
    let batch_tag_ids: Vec<&Value> = batches
        .iter()
        .flat_map(|b| b.2["failure_tags"].as_array().unwrap())
        .map(|t| &t["tag_id"])
        .collect();
    let tag_ids: Vec<&Value> = tags.iter().map(|t| &t["tag_id"]).collect();
    prop_assert_eq!(tag_ids, batch_tag_ids);
    prop_assert_eq!(&merged["inputs"], &whole["inputs"]);

    let (s, w) = (&merged["summary"], &whole["summary"]);
    for key in FA_COUNTS.into_iter().chain(FA_FLAGS) {
        prop_assert_eq!(&s[key], &w[key], "summary.{}", key);
    }
    for key in ["total_items", "overall_severity"] {
        prop_assert_eq!(&s[key], &w[key], "summary.{}", key);
    }
    prop_assert!(near(&s["overall_confidence"], &w["overall_confidence"]));
    prop_assert_eq!(s["primary_failure"].as_str(), expected_primary(items));
    prop_assert_eq!(
        sorted(&s["buckets_affected"]),
        sorted(&w["buckets_affected"])
    );
    for key in ["detectors_run", "detectors_skipped"] {
        prop_assert_eq!(sorted(&merged[key]), sorted(&whole[key]), "{}", key);
    }
    for key in &METRICS[..2] {
        prop_assert!(near(
            &merged["eval_metrics"][key],
            &whole["eval_metrics"][key]
        ));
    }
    for key in ["tokens_used", "total_items", "security_flags"] {
        prop_assert_eq!(&merged[key], &whole[key], "{}", key);
    }
    prop_assert_eq!(&merged["run_id"], JOB);
    prop_assert_eq!(&merged["duration_ms"], DURATION);
    Ok(())
}

fn check_eval_partition(items: &[Item], bounds: &[usize], rotation: usize) -> Outcome {
    let whole = eval_result(items, "whole");
    let (_, merged) = merged_split(JobKind::Evaluation, items, bounds, rotation, eval_result);
    for key in METRICS {
        prop_assert!(near(
            &merged["aggregate_scores"][key],
            &whole["aggregate_scores"][key]
        ));
    }
    prop_assert!(near(&merged["overall_score"], &whole["overall_score"]));
    for key in [
        "total_items",
        "evaluated_items",
        "items_evaluated",
        "metrics",
        "metadata",
    ] {
        prop_assert_eq!(&merged[key], &whole[key], "{}", key);
    }
    Ok(())
}

fn check_security_partition(items: &[Item], bounds: &[usize], rotation: usize) -> Outcome {
    let whole = security_result(items, "whole");
    let (_, merged) = merged_split(
        JobKind::SecurityAudit,
        items,
        bounds,
        rotation,
        security_result,
    );
    let counts = [
        "total_items",
        "unsafe_items",
        "unsafe_count",
        "safe_count",
        "triggered_categories",
    ];
    for key in counts {
        prop_assert_eq!(&merged[key], &whole[key], "{}", key);
    }
    for key in ["safety_score", "unsafe_rate"] {
        prop_assert!(near(&merged[key], &whole[key]));
    }
    let ids = ["id", "item_id", "batch_id"];
    let without_ids = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| without(d, &ids))
            .collect()
    };
    prop_assert_eq!(
        without_ids(&merged["details"]),
        without_ids(&whole["details"])
    );
    let per_category = &whole["triggered_categories"];
    let max = per_category
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .max();
    let top = merged["top_risk_category"].as_str();
    prop_assert_eq!(top.map(|t| per_category[t].as_u64().unwrap()), max);
    Ok(())
}

proptest! {
    #[test]
    fn fa_merge_of_any_partition_matches_one_run((items, bounds, rotation) in partitioned()) {
        check_fa_partition(&items, &bounds, rotation)?;
    }

    #[test]
    fn eval_merge_of_any_partition_matches_one_run((items, bounds, rotation) in partitioned()) {
        check_eval_partition(&items, &bounds, rotation)?;
    }

    #[test]
    fn security_merge_of_any_partition_matches_one_run(
        (items, bounds, rotation) in partitioned(),
    ) {
        check_security_partition(&items, &bounds, rotation)?;
    }
}
