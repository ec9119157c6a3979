//! Malformed batches and inconsistent ranges are errors that name the batch.
use super::*;

fn malformed(err: MergeError) -> (usize, BatchProblem) {
    match err {
        MergeError::Malformed {
            item_start,
            problem,
        } => (item_start, problem),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn a_result_that_is_not_json_names_its_batch() {
    let good = serde_json::to_vec(&json!({})).unwrap();
    let refs = [
        BatchResult {
            item_start: 0,
            item_count: 2,
            result: &good,
        },
        BatchResult {
            item_start: 2,
            item_count: 2,
            result: b"{\"run_id\": ",
        },
    ];
    let ctx = MergeContext {
        job_id: JOB,
        total_items: 4,
        duration_ms: 1,
    };
    let err = merge(JobKind::FailureAnalysis, &refs, &ctx).unwrap_err();
    assert!(
        matches!(err, MergeError::InvalidJson { item_start: 2, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the result of the batch starting at item 2 is not valid JSON"
    );
}

#[test]
fn a_result_that_is_not_an_object_is_rejected() {
    let err = try_run(
        JobKind::Evaluation,
        &[(0, 1, json!({})), (1, 1, json!([1, 2]))],
    )
    .unwrap_err();
    assert_eq!(
        malformed(err),
        (1, BatchProblem::NotAnObject { found: "array" })
    );
}

#[test]
fn fields_of_the_wrong_type_are_rejected() {
    let err = try_run(
        JobKind::FailureAnalysis,
        &[(0, 1, json!({ "failure_tags": "none" }))],
    )
    .unwrap_err();
    assert_eq!(
        malformed(err),
        (
            0,
            BatchProblem::FieldType {
                field: "failure_tags",
                expected: "array",
                found: "string"
            }
        )
    );
    let err = try_run(
        JobKind::FailureAnalysis,
        &[(0, 1, json!({ "summary": [] }))],
    )
    .unwrap_err();
    assert_eq!(
        malformed(err),
        (
            0,
            BatchProblem::FieldType {
                field: "summary",
                expected: "object",
                found: "array"
            }
        )
    );
    let err = try_run(
        JobKind::SecurityAudit,
        &[(5, 1, json!({ "details": [{}, 3] }))],
    )
    .unwrap_err();
    let (start, problem) = malformed(err);
    assert_eq!(
        (start, &problem),
        (
            5,
            &BatchProblem::EntryType {
                field: "details",
                position: 1,
                found: "number"
            }
        )
    );
    assert_eq!(
        problem.to_string(),
        "`details[1]` is a JSON number, expected an object"
    );
}

#[test]
fn item_indices_must_fall_inside_their_batch() {
    let tags = json!({ "failure_tags": [{ "item_index": 0 }, { "item_index": 3 }] });
    let err = try_run(JobKind::FailureAnalysis, &[(6, 3, tags)]).unwrap_err();
    assert_eq!(
        malformed(err),
        (
            6,
            BatchProblem::ItemIndexOutOfRange {
                field: "failure_tags",
                position: 1,
                index: 3,
                count: 3
            }
        )
    );
    let inputs = json!({ "inputs": [{}, {}, {}] });
    let err = try_run(JobKind::FailureAnalysis, &[(0, 2, inputs)]).unwrap_err();
    assert!(matches!(
        malformed(err).1,
        BatchProblem::ItemIndexOutOfRange { index: 2, .. }
    ));
    for bad in [json!(-1), json!("1"), json!(0.5)] {
        let err = try_run(
            JobKind::FailureAnalysis,
            &[(0, 2, json!({ "inputs": [{ "item_index": bad }] }))],
        )
        .unwrap_err();
        assert_eq!(
            malformed(err).1,
            BatchProblem::BadItemIndex {
                field: "inputs",
                position: 0
            }
        );
    }
}

#[test]
fn batch_ranges_and_the_item_total_are_checked() {
    let body = serde_json::to_vec(&json!({})).unwrap();
    let b = |item_start, item_count| BatchResult {
        item_start,
        item_count,
        result: &body,
    };
    let ctx = |total_items| MergeContext {
        job_id: JOB,
        total_items,
        duration_ms: 0,
    };
    let err = merge(JobKind::Evaluation, &[b(3, 3), b(0, 4)], &ctx(7)).unwrap_err();
    assert!(
        matches!(
            err,
            MergeError::Overlap {
                first: 0,
                second: 3
            }
        ),
        "{err:?}"
    );
    let err = merge(JobKind::Evaluation, &[b(0, 4), b(8, 4)], &ctx(12)).unwrap_err();
    assert!(
        matches!(
            err,
            MergeError::ItemCount {
                expected: 12,
                actual: 8
            }
        ),
        "{err:?}"
    );
    assert!(merge(JobKind::Evaluation, &[b(0, 4), b(8, 4)], &ctx(8)).is_ok());
    let err = merge(JobKind::SecurityAudit, &[], &ctx(0)).unwrap_err();
    assert!(matches!(err, MergeError::NoBatches));
}
