//! A timing run over 100,000 items (ignored by default).
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

/// `cargo test --release --lib jobs::merge::tests::timing -- --ignored --nocapture`
#[test]
#[ignore = "timing run: 100 batches, 100,000 items, about 100 MB of JSON"]
fn timing_100k_fa_items() {
    let per_batch = 1000;
    let batches: Vec<(usize, usize, Vec<u8>)> = (0..100)
        .map(|k| {
            let items: Vec<Item> = (0..per_batch)
                .map(|i| {
                    let id = k * per_batch + i;
                    let decisions = ["pass", "fail", "pass", "unsure"];
                    let tags = (0..=id % 2)
                        .map(|t| {
                            let severity = u32::try_from((id * 7 + t) % 41).unwrap() + 5;
                            TagSpec::new((id + t) % SUBS.len(), decisions[(id + t) % 4], severity)
                        })
                        .collect();
                    let unsafe_cat = (id % 9 == 0).then_some(id % CATS.len());
                    Item {
                        unsafe_cat,
                        ..Item::new(id, tags)
                    }
                })
                .collect();
            let result = fa_result(&items, &format!("fa_{k}"));
            (
                k * per_batch,
                per_batch,
                serde_json::to_vec(&result).unwrap(),
            )
        })
        .collect();
    let bytes: usize = batches.iter().map(|b| b.2.len()).sum();
    let refs: Vec<BatchResult<'_>> = batches
        .iter()
        .map(|(s, c, b)| BatchResult {
            item_start: *s,
            item_count: *c,
            result: b,
        })
        .collect();
    let ctx = MergeContext {
        job_id: JOB,
        total_items: 100 * per_batch,
        duration_ms: 1,
    };
    // Baseline: parsing every batch into a `Value` (and dropping it), nothing else.
    let started = Instant::now();
    for b in &refs {
        drop(serde_json::from_slice::<Value>(b.result).unwrap());
    }
    let parse_only = started.elapsed();
    let section = json!({ "job_id": JOB, "batches": [] });
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    let mut merged = Bytes::new();
    for _ in 0..5 {
        drop(merged);
        let (started, cpu_started) = (Instant::now(), on_cpu());
        merged = merge_with_section(
            JobKind::FailureAnalysis,
            &refs,
            &ctx,
            Some(("evalgate", &section)),
        )
        .unwrap();
        wall.push(started.elapsed());
        cpu.push(on_cpu().saturating_sub(cpu_started));
    }
    wall.sort_unstable();
    cpu.sort_unstable();
    let value: Value = serde_json::from_slice(&merged).unwrap();
    assert_eq!(value["inputs"].as_array().unwrap().len(), 100 * per_batch);
    assert_eq!(value["summary"]["total_items"], 100 * per_batch);
    assert_eq!(value["evalgate"], section);
    println!(
        "merged {} batches, {:.1} MB in, {:.1} MB out, {} items: wall best {:?} median {:?}, \
         on-CPU best {:?} median {:?} (5 runs; parse-only `Value` baseline {parse_only:?})",
        refs.len(),
        as_weight(to_u64(bytes)) / 1e6,
        as_weight(to_u64(merged.len())) / 1e6,
        100 * per_batch,
        wall[0],
        wall[2],
        cpu[0],
        cpu[2],
    );
}

/// Time this thread has spent on a CPU (`/proc/thread-self/schedstat`; zero without it).
fn on_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}
