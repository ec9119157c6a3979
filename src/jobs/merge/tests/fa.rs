//! Failure analysis.
use super::*;

#[test]
fn fa_tags_and_inputs_are_concatenated_in_dataset_order_with_original_indices() {
    let (_, mut batches) = three_batches();
    batches.reverse();
    let merged = run(JobKind::FailureAnalysis, &batches);
    assert_eq!(indices(&merged["failure_tags"]), [0, 0, 1, 3, 3, 4, 5]);
    assert_eq!(indices(&merged["inputs"]), [0, 1, 2, 3, 4, 5]);
    let texts: Vec<&str> = merged["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["input_text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "question 0",
            "question 1",
            "question 2",
            "question 3",
            "question 4",
            "question 5"
        ]
    );
    let tag_ids: Vec<&str> = merged["failure_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        tag_ids,
        [
            "b0.t0", "b0.t1", "b0.t2", "b2.t0", "b2.t1", "b2.t2", "b2.t3"
        ]
    );
}

#[test]
fn fa_summary_counts_are_summed() {
    let (_, batches) = three_batches();
    let merged = run(JobKind::FailureAnalysis, &batches);
    let s = &merged["summary"];
    assert_eq!(s["total_failures_detected"], 3);
    assert_eq!(s["total_passes"], 3);
    assert_eq!(s["total_uncertain"], 1);
    assert_eq!(s["items_with_failures"], 3);
    assert_eq!(s["items_all_passed"], 3);
    assert_eq!(s["total_items"], 6);
    assert_eq!(merged["total_items"], 6);
    assert_eq!(merged["tokens_used"], 600);
}

#[test]
fn fa_severity_is_the_maximum_and_confidence_an_item_weighted_mean() {
    let mut items = items(vec![
        vec![TagSpec::new(0, "fail", 21)],
        vec![],
        vec![],
        vec![TagSpec::new(1, "fail", 38)],
    ]);
    items[0].confidence = 90;
    for item in &mut items[1..] {
        item.confidence = 50;
    }
    let batches = split(&items, &[0, 1, 4], fa_result);
    let merged = run(JobKind::FailureAnalysis, &batches);
    assert_eq!(merged["summary"]["overall_severity"], 3.8);
    // (0.9 × 1 + 0.5 × 3) / 4, not the plain mean of the two batches (0.7).
    assert_close(&merged["summary"]["overall_confidence"], 0.6);
}

#[test]
fn fa_primary_failure_is_the_highest_maximum_severity() {
    let items = items(vec![
        vec![TagSpec::new(0, "fail", 30), TagSpec::new(0, "fail", 30)],
        vec![TagSpec::new(1, "fail", 41)],
        vec![TagSpec::new(2, "unsure", 49)],
    ]);
    let merged = run(
        JobKind::FailureAnalysis,
        &split(&items, &[0, 1, 3], fa_result),
    );
    assert_eq!(merged["summary"]["primary_failure"], "off_topic_answer");
    assert_eq!(
        merged["summary"]["primary_failure_name"],
        "Off-topic answer"
    );
}

#[test]
fn fa_primary_failure_ties_go_to_more_failing_tags_then_first_appearance() {
    let by_count = items(vec![
        vec![TagSpec::new(0, "fail", 40)],
        vec![TagSpec::new(1, "fail", 40), TagSpec::new(1, "fail", 10)],
    ]);
    let merged = run(
        JobKind::FailureAnalysis,
        &split(&by_count, &[0, 1, 2], fa_result),
    );
    assert_eq!(merged["summary"]["primary_failure"], "off_topic_answer");

    let by_order = items(vec![
        vec![TagSpec::new(3, "fail", 40)],
        vec![TagSpec::new(1, "fail", 40)],
    ]);
    let mut batches = split(&by_order, &[0, 1, 2], fa_result);
    batches.reverse();
    let merged = run(JobKind::FailureAnalysis, &batches);
    assert_eq!(merged["summary"]["primary_failure"], "wrong_tool_call");
    assert_eq!(merged["summary"]["primary_failure_name"], "Wrong tool call");
}

#[test]
fn fa_primary_failure_is_null_without_failures() {
    let items = items(vec![
        vec![TagSpec::new(0, "pass", 0)],
        vec![TagSpec::new(1, "unsure", 9)],
    ]);
    let merged = run(
        JobKind::FailureAnalysis,
        &split(&items, &[0, 1, 2], fa_result),
    );
    let s = &merged["summary"];
    assert_eq!(s["primary_failure"], Value::Null);
    assert_eq!(s["primary_failure_name"], Value::Null);
    assert_eq!(s["overall_severity"], 0.0);
    assert_eq!(s["needs_human_review"], true);
}

#[test]
fn fa_primary_failure_falls_back_to_batch_summaries_without_tags() {
    let summary = |id: &str, sev: f64, n: u64| {
        json!({
            "summary": {
                "primary_failure": id,
                "primary_failure_name": id.to_uppercase(),
                "overall_severity": sev,
                "total_failures_detected": n,
            },
        })
    };
    let batches = [
        (0, 2, summary("a", 3.0, 1)),
        (2, 2, summary("b", 3.0, 4)),
        (4, 2, summary("c", 2.0, 9)),
    ];
    let merged = run(JobKind::FailureAnalysis, &batches);
    assert_eq!(merged["summary"]["primary_failure"], "b");
    assert_eq!(merged["summary"]["primary_failure_name"], "B");
    assert_eq!(merged["summary"]["total_failures_detected"], 14);
    assert_eq!(merged["summary"]["overall_severity"], 3.0);
}

#[test]
fn fa_lists_are_ordered_unions_and_skipped_detectors_exclude_ones_that_ran() {
    let batches = [
        (
            0,
            1,
            json!({
                "summary": { "buckets_affected": ["relevance", "grounding"] },
                "detectors_run": ["d2", "d1"],
                "detectors_skipped": ["d3", "d4"],
            }),
        ),
        (
            1,
            1,
            json!({
                "summary": { "buckets_affected": ["safety", "relevance"] },
                "detectors_run": ["d1", "d3"],
                "detectors_skipped": ["d4", "d5", "d2"],
            }),
        ),
    ];
    let merged = run(JobKind::FailureAnalysis, &batches);
    assert_eq!(
        strings(&merged["summary"]["buckets_affected"]),
        ["relevance", "grounding", "safety"]
    );
    assert_eq!(strings(&merged["detectors_run"]), ["d2", "d1", "d3"]);
    assert_eq!(strings(&merged["detectors_skipped"]), ["d4", "d5"]);
}

#[test]
fn fa_alert_flags_are_ored() {
    let flags = |a: bool, g: bool, r: bool| {
        json!({
            "summary": { "should_alert": a, "should_gate_ci": g, "needs_human_review": r },
        })
    };
    let merged = run(
        JobKind::FailureAnalysis,
        &[
            (0, 1, flags(false, false, true)),
            (1, 1, flags(true, false, false)),
        ],
    );
    let s = &merged["summary"];
    assert_eq!(
        (
            &s["should_alert"],
            &s["should_gate_ci"],
            &s["needs_human_review"]
        ),
        (&json!(true), &json!(false), &json!(true))
    );
}

#[test]
fn fa_ids_status_duration_and_first_batch_scalars() {
    let first = json!({
        "run_id": "fa_1",
        "status": "completed",
        "mode": "minimal",
        "input_type": "json",
        "feature_kind": "agent",
        "created_at": "2025-06-01T10:00:00.000Z",
        "completed_at": "2025-06-01T10:00:09.000Z",
        "eval_run_id": "ev_1",
        "security_batch_id": "sb_1",
        "duration_ms": 5,
        "x_custom": { "kept": true },
        "error": null,
    });
    let second = json!({
        "run_id": "fa_2",
        "status": "completed",
        "mode": "full",
        "input_type": "trace",
        "feature_kind": "rag",
        "created_at": "2025-06-01T09:00:00.000Z",
        "completed_at": "2025-06-01T10:00:30.000Z",
        "eval_run_id": "ev_2",
        "security_batch_id": "sb_2",
        "duration_ms": 7,
        "x_other": 1,
        "error": "boom",
    });
    let merged = run(JobKind::FailureAnalysis, &[(3, 2, second), (0, 3, first)]);
    assert_eq!(merged["run_id"], JOB);
    assert_eq!(merged["status"], "completed");
    assert_eq!(merged["duration_ms"], DURATION);
    for (key, value) in [
        ("mode", "minimal"),
        ("input_type", "json"),
        ("feature_kind", "agent"),
        ("created_at", "2025-06-01T10:00:00.000Z"),
        ("eval_run_id", "ev_1"),
        ("security_batch_id", "sb_1"),
    ] {
        assert_eq!(merged[key], value, "{key}");
    }
    assert_eq!(merged["completed_at"], "2025-06-01T10:00:30.000Z");
    assert_eq!(merged["x_custom"], json!({ "kept": true }));
    assert_eq!(merged.get("x_other"), None);
    assert_eq!(merged["error"], Value::Null);
}

#[test]
fn fa_eval_metrics_are_item_weighted_per_key() {
    let batches = [
        (
            0,
            1,
            json!({ "eval_metrics": { "coherence": 1.0, "fluency": 0.5, "note": "n/a" } }),
        ),
        (
            1,
            3,
            json!({ "eval_metrics": { "coherence": 0, "judge": { "model": "x" } } }),
        ),
    ];
    let merged = run(JobKind::FailureAnalysis, &batches);
    let m = &merged["eval_metrics"];
    assert_close(&m["coherence"], 0.25);
    assert_eq!(m["fluency"], 0.5);
    assert_eq!(m["note"], "n/a");
    assert_eq!(m["judge"], json!({ "model": "x" }));
}

#[test]
fn fa_security_flags_are_deep_merged() {
    let batches = [
        (
            0,
            1,
            json!({
                "security_flags": {
                    "S1": "Violent Crimes", "flagged": false, "count": 2, "max_risk": 0.4,
                    "items": [1, 2], "nested": { "a": 1 },
                },
            }),
        ),
        (1, 1, json!({ "security_flags": null })),
        (
            2,
            1,
            json!({
                "security_flags": {
                    "S10": "Hate", "S1": "other name", "flagged": true, "count": 3,
                    "max_risk": 0.9, "items": [2, 3], "nested": { "a": 1, "b": true },
                },
            }),
        ),
    ];
    let merged = run(JobKind::FailureAnalysis, &batches);
    assert_eq!(
        merged["security_flags"],
        json!({
            "S1": "Violent Crimes",
            "S10": "Hate",
            "flagged": true,
            "count": 5,
            "max_risk": 0.9,
            "items": [1, 2, 3],
            "nested": { "a": 2, "b": true },
        })
    );
    let none = run(JobKind::FailureAnalysis, &[(0, 1, json!({}))]);
    assert_eq!(none["security_flags"], json!({}));
}

#[test]
fn fa_missing_fields_take_defaults() {
    let merged = run(
        JobKind::FailureAnalysis,
        &[
            (0, 2, json!({})),
            (2, 3, json!({ "summary": null, "failure_tags": null })),
        ],
    );
    assert_eq!(
        merged,
        json!({
            "run_id": JOB, "status": "completed", "duration_ms": DURATION, "tokens_used": 0,
            "failure_tags": [], "inputs": [], "eval_metrics": {}, "security_flags": {},
            "detectors_run": [], "detectors_skipped": [],
            "summary": {
                "total_failures_detected": 0, "total_passes": 0, "total_uncertain": 0,
                "overall_severity": 0.0, "overall_confidence": 0.0,
                "primary_failure": null, "primary_failure_name": null, "buckets_affected": [],
                "should_alert": false, "should_gate_ci": false, "needs_human_review": false,
                "total_items": 5, "items_with_failures": 0, "items_all_passed": 0,
            },
        })
    );
}

#[test]
fn fa_numbers_may_be_floats_and_inputs_without_index_get_their_position() {
    let batches = [
        (
            0,
            2,
            json!({
                "summary": { "total_passes": 2.0, "total_items": 2.0 },
                "tokens_used": 10.0,
                "inputs": [{ "input_text": "a" }, { "input_text": "b", "item_index": null }],
            }),
        ),
        (
            2,
            2,
            json!({
                "summary": { "total_passes": 1 },
                "tokens_used": 5,
                "failure_tags": [
                    {
                        "decision": "fail", "severity": 4,
                        "subcategory_id": "x", "item_index": 1.0,
                    },
                    { "decision": "pass", "item_index": null },
                ],
                "inputs": [{ "item_index": 1 }, { "item_index": 0.0 }],
            }),
        ),
    ];
    let merged = run(JobKind::FailureAnalysis, &batches);
    assert_eq!(merged["summary"]["total_passes"], 3);
    assert_eq!(merged["summary"]["total_items"], 4);
    assert_eq!(merged["summary"]["overall_severity"], 4);
    assert_eq!(merged["tokens_used"], 15);
    assert_eq!(indices(&merged["inputs"]), [0, 1, 3, 2]);
    assert_eq!(merged["failure_tags"][0]["item_index"], 3);
    assert_eq!(merged["failure_tags"][1]["item_index"], Value::Null);
}

#[test]
fn fa_one_batch_merges_to_its_own_data() {
    let mut items = items(vec![
        vec![TagSpec::new(0, "fail", 32), TagSpec::new(4, "pass", 0)],
        vec![TagSpec::new(1, "unsure", 7)],
        vec![TagSpec::new(2, "fail", 44), TagSpec::new(2, "pass", 0)],
    ]);
    items[1].unsafe_cat = Some(2);
    items[2].confidence = 55;
    let batch = fa_result(&items, "fa_upstream");
    let merged = run(JobKind::FailureAnalysis, &[(0, 3, batch.clone())]);
    let mut expected = batch;
    expected["run_id"] = json!(JOB);
    expected["duration_ms"] = json!(DURATION);
    assert_eq!(merged, expected);
}

#[test]
fn fa_one_surviving_batch_keeps_its_data_at_its_dataset_position() {
    let items = items(vec![
        vec![TagSpec::new(0, "fail", 32)],
        vec![TagSpec::new(1, "pass", 0)],
    ]);
    let batch = fa_result(&items, "fa_upstream");
    let merged = run(JobKind::FailureAnalysis, &[(10, 2, batch.clone())]);
    assert_eq!(indices(&merged["failure_tags"]), [10, 11]);
    assert_eq!(indices(&merged["inputs"]), [10, 11]);
    assert_eq!(merged["summary"], batch["summary"]);
}
