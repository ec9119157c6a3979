//! Security audit.
use super::*;

fn with_cats(cats: &[Option<usize>]) -> Vec<Item> {
    cats.iter()
        .enumerate()
        .map(|(id, c)| Item {
            unsafe_cat: *c,
            ..Item::new(id, vec![])
        })
        .collect()
}

#[test]
fn security_counts_are_summed_and_the_score_recomputed() {
    let items = with_cats(&[Some(0), None, None, Some(2), Some(2), None, None]);
    let merged = run(
        JobKind::SecurityAudit,
        &split(&items, &[0, 3, 7], security_result),
    );
    assert_eq!(merged["total_items"], 7);
    assert_eq!(merged["unsafe_items"], 3);
    assert_eq!(merged["unsafe_count"], 3);
    assert_eq!(merged["safe_count"], 4);
    assert_close(&merged["safety_score"], 4.0 / 7.0);
    assert_close(&merged["unsafe_rate"], 3.0 / 7.0);
    assert_eq!(
        (&merged["batch_id"], &merged["audit_id"], &merged["id"]),
        (&json!(JOB), &json!(JOB), &json!(JOB))
    );
    assert_eq!(merged["status"], "completed");
}

#[test]
fn security_alternative_count_names_are_read() {
    let batches = [
        (
            0,
            4,
            json!({ "batch_id": "a", "total_items": 4, "unsafe_count": 1 }),
        ),
        (
            4,
            4,
            json!({ "batch_id": "b", "total_items": 4, "safe_count": 2 }),
        ),
        (8, 5, json!({ "batch_id": "c", "unsafe_rate": 0.4 })),
        (
            13,
            2,
            json!({ "batch_id": "d", "details": [{ "is_safe": false }, { "is_safe": true }] }),
        ),
    ];
    let merged = run(JobKind::SecurityAudit, &batches);
    assert_eq!(merged["total_items"], 15);
    assert_eq!(merged["unsafe_items"], 6);
    assert_eq!(merged["unsafe_count"], 6);
    assert_eq!(merged["safe_count"], 9);
    assert_close(&merged["safety_score"], 0.6);
    assert_close(&merged["unsafe_rate"], 0.4);
    assert_eq!(merged.get("audit_id"), None);
    assert_eq!(merged.get("id"), None);
    assert_eq!(merged["top_risk_category"], Value::Null);
}

#[test]
fn security_empty_merge_is_fully_safe() {
    let merged = run(JobKind::SecurityAudit, &[(0, 0, json!({}))]);
    assert_eq!(merged["safety_score"], 1.0);
    assert_eq!(merged.get("unsafe_rate"), None);
    assert_eq!(merged["triggered_categories"], json!([]));
    assert_eq!(merged["details"], json!([]));
}

#[test]
fn security_triggered_category_lists_are_united_in_order() {
    let batches = [
        (0, 1, json!({ "triggered_categories": ["S2", "S1"] })),
        (1, 1, json!({ "details": [{ "category": "S9" }] })),
        (2, 1, json!({ "triggered_categories": ["S1", "S5"] })),
    ];
    let merged = run(JobKind::SecurityAudit, &batches);
    assert_eq!(
        strings(&merged["triggered_categories"]),
        ["S2", "S1", "S9", "S5"]
    );
}

#[test]
fn security_triggered_category_maps_sum_their_counts() {
    let items = with_cats(&[Some(0), Some(2), None, Some(2), Some(0), Some(3)]);
    let merged = run(
        JobKind::SecurityAudit,
        &split(&items, &[0, 2, 6], security_result),
    );
    assert_eq!(
        merged["triggered_categories"],
        json!({ "S1": 2, "S10": 2, "S12": 1 })
    );
}

#[test]
fn security_top_risk_counts_items_listed_in_details() {
    // Batch 0's own top is S1 (2 of 3); across the job S10 has 3 items.
    let items = with_cats(&[Some(0), Some(0), Some(2), Some(2), Some(2), None]);
    let merged = run(
        JobKind::SecurityAudit,
        &split(&items, &[0, 3, 6], security_result),
    );
    assert_eq!(merged["top_risk_category"], "S10");
}

#[test]
fn security_top_risk_without_details_counts_triggering_batches() {
    let batches = [
        (
            0,
            10,
            json!({ "triggered_categories": ["S7"], "top_risk_category": "S7" }),
        ),
        (
            10,
            10,
            json!({ "triggered_categories": ["S3", "S7"], "top_risk_category": "S3" }),
        ),
        (20, 10, json!({ "top_risk_category": "S3" })),
        (30, 10, json!({ "triggered_categories": ["S3"] })),
    ];
    assert_eq!(
        run(JobKind::SecurityAudit, &batches)["top_risk_category"],
        "S3"
    );
}

#[test]
fn security_top_risk_ties_go_to_first_appearance() {
    let items = with_cats(&[None, Some(3), Some(0), Some(0), Some(3)]);
    let merged = run(
        JobKind::SecurityAudit,
        &split(&items, &[0, 2, 5], security_result),
    );
    assert_eq!(merged["top_risk_category"], "S12");
    let lists = [
        (0, 1, json!({ "triggered_categories": ["S4", "S2"] })),
        (1, 1, json!({ "triggered_categories": ["S2", "S4"] })),
    ];
    assert_eq!(
        run(JobKind::SecurityAudit, &lists)["top_risk_category"],
        "S4"
    );
}

#[test]
fn security_details_are_concatenated_with_original_indices_and_ids_kept() {
    let items = with_cats(&[Some(0), None, None, Some(1)]);
    let mut batches = split(&items, &[0, 1, 4], security_result);
    batches.swap(0, 1);
    let merged = run(JobKind::SecurityAudit, &batches);
    assert_eq!(indices(&merged["details"]), [0, 1, 2, 3]);
    let ids: Vec<&str> = merged["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b0.i0", "b1.i0", "b1.i1", "b1.i2"]);
}

#[test]
fn security_one_batch_merges_to_its_own_data() {
    let items = with_cats(&[Some(0), None, Some(2), Some(2), None]);
    let batch = security_result(&items, "sb_upstream");
    let merged = run(JobKind::SecurityAudit, &[(0, 5, batch.clone())]);
    let mut expected = batch;
    for key in ["batch_id", "audit_id", "id"] {
        expected[key] = json!(JOB);
    }
    assert_eq!(merged, expected);
}
