//! The bytes: list entries copied as they are, escaped keys, the section.
use super::*;

fn merge_raw(kind: JobKind, batches: &[(usize, usize, &str)]) -> String {
    let refs: Vec<BatchResult<'_>> = batches
        .iter()
        .map(|(s, c, b)| BatchResult {
            item_start: *s,
            item_count: *c,
            result: b.as_bytes(),
        })
        .collect();
    let ctx = MergeContext {
        job_id: JOB,
        total_items: batches.iter().map(|b| b.1).sum(),
        duration_ms: DURATION,
    };
    let bytes = merge_with_section(kind, &refs, &ctx, None).unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn list_entries_are_copied_byte_for_byte_with_only_the_index_rewritten() {
    let batch = r#" {
        "failure_tags" : [ { "b": 1.50, "item_index" : 1 , "z":"\u00e9 \"]}"} ,{"item_index":null},{ } ] ,
        "inputs": [ {} , { "x" : [1, {"item_index": 7}] } , {"item_index": 0, "item_index": 1} ],
        "summary": {}
    } "#;
    let out = merge_raw(JobKind::FailureAnalysis, &[(10, 2, batch)]);
    assert!(
        out.contains(
            r#""failure_tags":[{ "b": 1.50, "item_index" : 11 , "z":"\u00e9 \"]}"},{"item_index":null},{ }]"#
        ),
        "{out}"
    );
    // Positions are inserted first; a repeated key goes through a `Value` (the last one counts).
    assert!(
        out.contains(
            r#""inputs":[{"item_index":10},{"item_index":11, "x" : [1, {"item_index": 7}] },{"item_index":11}]"#
        ),
        "{out}"
    );
    let value: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["summary"]["total_items"], 2);

    let details = r#"{"details":[{"item_index":0,"is_safe":false,"category":"S1"},{"id":"x"}]}"#;
    let out = merge_raw(JobKind::SecurityAudit, &[(4, 2, details)]);
    assert!(
        out.contains(
            r#""details":[{"item_index":4,"is_safe":false,"category":"S1"},{"item_index":5,"id":"x"}]"#
        ),
        "{out}"
    );
    let value: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["unsafe_items"], 1);
    assert_eq!(value["top_risk_category"], "S1");
}

#[test]
fn escaped_keys_are_read_like_any_json_parser_reads_them() {
    let batch = r#"{"failure_tags":[{"item\u005findex":1,"decision":"fail","subcategory_id":"a\u0062","severity":2.5}]}"#;
    let out = merge_raw(JobKind::FailureAnalysis, &[(3, 2, batch)]);
    let value: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["failure_tags"][0]["item_index"], 4);
    assert_eq!(value["summary"]["primary_failure"], "ab");
    assert_eq!(value["summary"]["overall_severity"], 2.5);
}

#[test]
fn the_section_is_written_as_one_more_field_in_key_order() {
    let (_, batches) = three_batches();
    let raw: Vec<(usize, usize, Vec<u8>)> = batches
        .iter()
        .map(|(s, c, v)| {
            let mut v = v.clone();
            v["evalgate"] = json!("the batch's own");
            (*s, *c, serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let refs: Vec<BatchResult<'_>> = raw
        .iter()
        .map(|(s, c, b)| BatchResult {
            item_start: *s,
            item_count: *c,
            result: b,
        })
        .collect();
    let ctx = MergeContext {
        job_id: JOB,
        total_items: 6,
        duration_ms: DURATION,
    };
    let section = json!({ "job_id": JOB, "failed_batches": [] });
    let bytes = merge_with_section(
        JobKind::FailureAnalysis,
        &refs,
        &ctx,
        Some(("evalgate", &section)),
    )
    .unwrap();
    let mut expected = merge(JobKind::FailureAnalysis, &refs, &ctx).unwrap();
    expected["evalgate"] = section;
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value, expected);
    // The same text a `Map` of the result would give.
    assert_eq!(bytes, serde_json::to_string(&value).unwrap().as_bytes());
}
