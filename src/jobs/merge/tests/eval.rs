//! Evaluation.
use super::*;

#[test]
fn eval_scores_are_weighted_by_evaluated_items() {
    let batches = [
        (
            0,
            4,
            json!({
                "aggregate_scores": { "coherence": 1.0, "fluency": 0.2 },
                "overall_score": 0.6,
                "evaluated_items": 1,
            }),
        ),
        // No evaluated count: weighs its item_count (3).
        (
            4,
            3,
            json!({
                "aggregate_scores": { "coherence": 0.0, "label": "x" },
                "overall_score": 0.2,
            }),
        ),
    ];
    let merged = run(JobKind::Evaluation, &batches);
    assert_close(&merged["aggregate_scores"]["coherence"], 0.25);
    assert_eq!(merged["aggregate_scores"]["fluency"], 0.2);
    assert_eq!(merged["aggregate_scores"]["label"], "x");
    assert_close(&merged["overall_score"], 0.3);
    assert_eq!(merged["evaluated_items"], 4);
    assert_eq!(merged.get("items_evaluated"), None);
    assert_eq!(merged["total_items"], 7);
}

#[test]
fn eval_counters_are_summed_under_every_name_in_use() {
    let batches = [
        (
            0,
            5,
            json!({
                "id": "ev_1",
                "project_id": 7,
                "items_evaluated": 5,
                "total_items": 5,
                "failed_items": 1,
                "tokens": 100,
                "created_at": 1,
                "duration_ms": 3,
            }),
        ),
        (
            5,
            5,
            json!({
                "id": "ev_2",
                "project_id": 8,
                "evaluated_items": 4,
                "total_items": 5,
                "failed_items": 2,
                "tokens": 50,
                "created_at": 2,
                "duration_ms": 4,
            }),
        ),
    ];
    let merged = run(JobKind::Evaluation, &batches);
    assert_eq!(merged["evaluated_items"], 9);
    assert_eq!(merged["items_evaluated"], 9);
    assert_eq!(merged["total_items"], 10);
    assert_eq!(merged["failed_items"], 3);
    assert_eq!(merged["tokens"], 150);
    assert_eq!(merged["project_id"], 7);
    assert_eq!(merged["created_at"], 1);
    assert_eq!(merged["duration_ms"], DURATION);
    assert_eq!(merged["run_id"], JOB);
    assert_eq!(merged["id"], JOB);
    assert_eq!(merged["overall_score"], Value::Null);
}

#[test]
fn eval_ids_metadata_and_metric_list() {
    let items: Vec<Item> = (0..5).map(|id| Item::new(id, vec![])).collect();
    let mut batches = split(&items, &[0, 2, 5], eval_result);
    batches[0].2["metadata"] = json!({ "suite": "first" });
    batches[0].2["metrics"] = json!(["coherence", "answer_relevance"]);
    batches[1].2["metrics"] = json!(["hallucination", "coherence"]);
    batches[1].2["completed_at"] = json!("2025-06-01T11:00:00.000Z");
    let merged = run(JobKind::Evaluation, &batches);
    assert_eq!(
        (&merged["run_id"], &merged["id"], &merged["status"]),
        (&json!(JOB), &json!(JOB), &json!("completed"))
    );
    assert_eq!(merged["metadata"], json!({ "suite": "first" }));
    assert_eq!(merged["project_id"], "proj_1");
    assert_eq!(
        strings(&merged["metrics"]),
        ["coherence", "answer_relevance", "hallucination"]
    );
    assert_eq!(merged["completed_at"], "2025-06-01T11:00:00.000Z");
    assert_eq!(merged["error"], Value::Null);
}

#[test]
fn eval_one_batch_merges_to_its_own_data() {
    let mut items: Vec<Item> = (0..3).map(|id| Item::new(id, vec![])).collect();
    items[1].scores = [123, 456, 789];
    let batch = eval_result(&items, "ev_upstream");
    let merged = run(JobKind::Evaluation, &[(0, 3, batch.clone())]);
    let mut expected = batch;
    expected["run_id"] = json!(JOB);
    expected["id"] = json!(JOB);
    assert_eq!(merged, expected);
}
