//! `jobs::merge` over a synthetic 100,000-item (~100 MB) failure-analysis job: 100 batch results
//! of 1,000 items each, shaped like the emulator's `FARunResult` (~1.5 tags per item).
//!
//! Before the criterion run, one pass reports (on stderr) the wall and on-CPU time of the merge
//! (best and median of [`TIMED_RUNS`]; on a loaded machine the on-CPU time is the meaningful one).
//! Target: ≤ 250 ms.
//!
//! `cargo bench --bench merge`
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evalgate::{
    jobs::merge::{BatchResult, MergeContext, merge_with_section},
    types::JobKind,
};
use serde_json::{Value, json};

const BATCHES: usize = 100;
const PER_BATCH: usize = 1_000;
const TIMED_RUNS: usize = 10;

/// (`subcategory_id`, `subcategory_name`, `bucket_id`).
const SUBS: [(&str, &str, &str); 5] = [
    ("hallucinated_facts", "Hallucinated facts", "grounding"),
    ("off_topic_answer", "Off-topic answer", "relevance"),
    ("incomplete_answer", "Incomplete answer", "relevance"),
    ("wrong_tool_call", "Wrong tool call", "tool_use"),
    ("unsafe_content", "Unsafe content", "safety"),
];
const DECISIONS: [&str; 4] = ["pass", "fail", "pass", "unsure"];

fn tag(id: usize, t: usize, local: usize, tag_id: &str) -> Value {
    let (sub, name, bucket) = SUBS[(id + t) % SUBS.len()];
    let decision = DECISIONS[(id + t) % DECISIONS.len()];
    let severity = f64::from(u32::try_from((id * 7 + t) % 41).unwrap_or(0) + 5) / 10.0;
    json!({
        "tag_id": tag_id,
        "bucket_id": bucket,
        "bucket_name": bucket.to_uppercase(),
        "subcategory_id": sub,
        "subcategory_name": name,
        "decision": decision,
        "severity": severity,
        "confidence": 0.8,
        "detector_type_used": "llm_judge",
        "judge_rationale": format!("{name}: {decision}"),
        "scoring_breakdown": { "impact": 3.5, "final_severity": severity, "final_confidence": 0.8 },
        "eval_metric_values": { "coherence": 0.8 },
        "evidence_items": [],
        "item_index": local,
        "is_reviewed": false,
        "reviewed_at": null,
        "issue_url": null,
    })
}

/// One batch result (`FARunResult`) for items `k * PER_BATCH ..`.
fn batch(k: usize) -> Vec<u8> {
    let mut tags = Vec::new();
    let mut inputs = Vec::new();
    for local in 0..PER_BATCH {
        let id = k * PER_BATCH + local;
        for t in 0..=id % 2 {
            let tag_id = format!("fa_{k}.t{}", tags.len());
            tags.push(tag(id, t, local, &tag_id));
        }
        inputs.push(json!({
            "item_index": local,
            "input_text": format!("question {id}"),
            "output_text": format!("answer {id}"),
            "input_preview": format!("question {id}"),
            "output_preview": format!("answer {id}"),
            "context": ["retrieved passage"],
            "tool_calls": null,
            "trace_id": null,
            "failure_count": 1,
            "pass_count": 1,
            "unsure_count": 0,
            "max_severity": 2.5,
        }));
    }
    let result = json!({
        "run_id": format!("fa_{k}"),
        "status": "completed",
        "mode": "full",
        "input_type": "json",
        "feature_kind": "rag",
        "project_name": "demo",
        "trace_id": null,
        "summary": {
            "total_failures_detected": 400, "total_passes": 800, "total_uncertain": 300,
            "overall_severity": 4.5, "overall_confidence": 0.8,
            "primary_failure": "off_topic_answer", "primary_failure_name": "Off-topic answer",
            "buckets_affected": ["relevance", "grounding"], "should_alert": true,
            "should_gate_ci": true, "needs_human_review": true, "total_items": PER_BATCH,
            "items_with_failures": 500, "items_all_passed": 250,
        },
        "failure_tags": tags,
        "eval_metrics": { "answer_relevance": 0.7, "coherence": 0.8 },
        "eval_run_id": null,
        "security_flags": { "S1": "Violent Crimes" },
        "security_batch_id": null,
        "detectors_run": SUBS.iter().map(|s| s.0).collect::<Vec<_>>(),
        "detectors_skipped": [],
        "duration_ms": 7025,
        "tokens_used": 100 * PER_BATCH,
        "created_at": "2025-06-01T10:00:00.000Z",
        "completed_at": format!("2025-06-01T10:00:{:02}.000Z", k % 60),
        "total_items": PER_BATCH,
        "inputs": inputs,
        "error": null,
    });
    serde_json::to_vec(&result).unwrap_or_default()
}

/// Time this thread has spent on a CPU, from `/proc/thread-self/schedstat`.
fn on_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

fn best_median(times: &mut [Duration]) -> String {
    times.sort_unstable();
    match (times.first(), times.get(times.len() / 2)) {
        (Some(best), Some(median)) => format!(
            "best {:.1} ms, median {:.1} ms",
            best.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3
        ),
        _ => "n/a".to_owned(),
    }
}

fn run(refs: &[BatchResult<'_>], ctx: &MergeContext<'_>, section: &Value) -> usize {
    merge_with_section(
        JobKind::FailureAnalysis,
        black_box(refs),
        ctx,
        Some(("evalgate", section)),
    )
    .map_or(0, |bytes| bytes.len())
}

#[expect(
    clippy::cast_precision_loss,
    reason = "megabytes for a human-readable report"
)]
fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

#[expect(clippy::print_stderr, reason = "the bench's report")]
fn bench(c: &mut Criterion) {
    let bodies: Vec<Vec<u8>> = (0..BATCHES).map(batch).collect();
    let refs: Vec<BatchResult<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(k, body)| BatchResult {
            item_start: k * PER_BATCH,
            item_count: PER_BATCH,
            result: body,
        })
        .collect();
    let ctx = MergeContext {
        job_id: "egj_bench",
        total_items: BATCHES * PER_BATCH,
        duration_ms: 1,
    };
    let section = json!({ "job_id": "egj_bench", "batches": [], "failed_batches": [] });
    let input: usize = bodies.iter().map(Vec::len).sum();

    let mut wall = Vec::with_capacity(TIMED_RUNS);
    let mut cpu = Vec::with_capacity(TIMED_RUNS);
    let mut output = 0;
    for _ in 0..TIMED_RUNS {
        let (started, cpu_started) = (Instant::now(), on_cpu());
        output = black_box(run(&refs, &ctx, &section));
        wall.push(started.elapsed());
        if let Some((end, start)) = on_cpu().zip(cpu_started) {
            cpu.push(end.saturating_sub(start));
        }
    }
    eprintln!(
        "merge bench: {BATCHES} batches, {} items, {:.1} MB in, {:.1} MB out; \
         wall {}; on-CPU {}",
        BATCHES * PER_BATCH,
        mb(input),
        mb(output),
        best_median(&mut wall),
        best_median(&mut cpu),
    );

    let mut group = c.benchmark_group("merge");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(input as u64));
    group.bench_function("merge 100k FA items", |b| {
        b.iter(|| run(&refs, &ctx, &section));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
