//! `Submission::parse` + `split` over a synthetic 100,000-item (~100 MB) failure-analysis body.
//!
//! Before the criterion run, one pass reports (on stderr) the wall time of parse + split, the time
//! to build every batch body one at a time (as the forwarder does), and the peak RSS of that pass
//! (`VmHWM` from `/proc/self/status`, reset through `/proc/self/clear_refs` when the kernel
//! allows) against the input size. Targets: parse + split ≤ 150 ms, peak RSS ≤ 1.5× the input.
//!
//! `cargo bench --bench split`
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evalgate::batching::{BatchLimits, Submission, split};

const ITEMS: usize = 100_000;
const LIMITS: BatchLimits = BatchLimits {
    max_items: 1_000,
    max_bytes: 4 << 20,
};

/// Deterministic filler text as the Python SDK sends it (`json.dumps`, `ensure_ascii=True`):
/// ASCII words, JSON escapes, non-ASCII as `\uXXXX` (surrogate pairs beyond the BMP).
struct Filler(u64);

impl Filler {
    /// Mostly plain words; one word in four carries an escape (denser than typical prose).
    const WORDS: [&'static str; 24] = [
        "the ",
        "model ",
        "answered ",
        "that ",
        "refund ",
        "policy ",
        "allows ",
        "returns ",
        "within ",
        "thirty ",
        "days, ",
        "according to ",
        "retrieved ",
        "context ",
        "documents ",
        "and the ",
        "user's ",
        "question. ",
        "caf\\u00e9 ",
        "\\\"quoted\\\" ",
        "line\\nbreak ",
        "na\\u00efve \\u2014 ",
        "\\ud83d\\ude00 ",
        "[brackets], {braces} ",
    ];

    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(self.0 >> 33).unwrap_or(0)
    }

    fn text(&mut self, out: &mut Vec<u8>, bytes: usize) {
        let end = out.len() + bytes;
        while out.len() < end {
            let word = Self::WORDS[self.next() % Self::WORDS.len()];
            out.extend_from_slice(word.as_bytes());
        }
    }
}

/// `{"run_eval": …, "dataset": [ITEMS × ~1 KB], "project_name": …}`, built in one buffer.
fn body() -> Bytes {
    let mut out = Vec::with_capacity(ITEMS * 1_100 + 256);
    out.extend_from_slice(
        br#"{"run_eval": true, "run_security": true, "run_scan": true, "feature_kind": "rag", "dataset": ["#,
    );
    let mut filler = Filler(42);
    for i in 0..ITEMS {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(br#"{"input": ""#);
        filler.text(&mut out, 250);
        out.extend_from_slice(br#"", "output": ""#);
        filler.text(&mut out, 400);
        out.extend_from_slice(br#"", "context": [""#);
        filler.text(&mut out, 120);
        out.extend_from_slice(br#"", ""#);
        filler.text(&mut out, 120);
        out.extend_from_slice(
            br#""], "tool_calls": [{"name": "search", "arguments": {"q": "refund", "k": 5}}], "item": "#,
        );
        out.extend_from_slice(i.to_string().as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(br#"], "project_name": "bench", "subcategories": ["a", "b"]}"#);
    Bytes::from(out)
}

/// `VmHWM` and `VmRSS` in bytes, if `/proc` is there.
fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Time this thread has spent on a CPU, from `/proc/thread-self/schedstat` (immune to the wall-clock
/// noise of a loaded machine).
fn on_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "ratios and megabytes for a human-readable report"
)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Instrumented passes, reported on stderr: peak memory of parse + split + building every batch
/// body one at a time (as the forwarder does), then the wall and on-CPU time of parse + split
/// (best and median of [`TIMED_RUNS`]; on a loaded machine the on-CPU time is the meaningful one).
#[expect(clippy::print_stderr, reason = "the bench's report")]
fn report(body: &Bytes) {
    // Peak-RSS reset (Linux ≥ 4.0); without it VmHWM also covers building the body.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = memory();
    let submission = match Submission::parse(body.clone()) {
        Ok(submission) => submission,
        Err(error) => {
            eprintln!("split bench: the synthetic body does not parse: {error}");
            return;
        }
    };
    let batches = split(&submission.items, LIMITS);
    let started = Instant::now();
    let mut sent = 0_usize;
    for batch in &batches {
        sent += black_box(submission.batch(batch.clone())).len();
    }
    let build = started.elapsed();
    let after = memory();
    let input = body.len() as u64;
    eprintln!(
        "split bench: {:.1} MiB body, {} items ({:.1} MiB of items), {} batches ({:.1} MiB of batch \
         bodies, built one at a time in {:.1} ms)",
        mib(input),
        submission.len(),
        mib(submission.item_bytes() as u64),
        batches.len(),
        mib(sent as u64),
        ms(build),
    );
    if let (Some((_, rss_before)), Some((peak, _))) = (before, after) {
        eprintln!(
            "split bench: peak RSS {:.1} MiB = {:.2}× the input (target ≤ 1.5×); +{:.1} MiB over the \
             {:.1} MiB before parsing{}",
            mib(peak),
            mib(peak) / mib(input),
            mib(peak.saturating_sub(rss_before)),
            mib(rss_before),
            if reset {
                ""
            } else {
                " (VmHWM could not be reset: the peak includes building the body)"
            },
        );
    }
    drop(submission);

    let mut wall = Vec::with_capacity(TIMED_RUNS);
    let mut cpu = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let (started, cpu_started) = (Instant::now(), on_cpu());
        let batches = Submission::parse(black_box(body.clone()))
            .map(|submission| split(&submission.items, LIMITS).len());
        black_box(batches).ok();
        wall.push(started.elapsed());
        if let Some((end, start)) = on_cpu().zip(cpu_started) {
            cpu.push(end.saturating_sub(start));
        }
    }
    eprintln!(
        "split bench: parse + split (target ≤ 150 ms), {TIMED_RUNS} runs: wall {}; on CPU {}",
        best_median(&mut wall),
        best_median(&mut cpu),
    );
}

const TIMED_RUNS: usize = 10;

fn best_median(times: &mut [Duration]) -> String {
    times.sort_unstable();
    match (times.first(), times.get(times.len() / 2)) {
        (Some(best), Some(median)) => {
            format!("best {:.1} ms, median {:.1} ms", ms(*best), ms(*median))
        }
        _ => "n/a".to_owned(),
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn bench(c: &mut Criterion) {
    let body = body();
    report(&body);
    let mut group = c.benchmark_group("split");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse+split 100k FA items", |b| {
        b.iter(|| {
            Submission::parse(black_box(body.clone()))
                .map(|submission| split(&submission.items, LIMITS).len())
        });
    });
    group.finish();
    // No throughput here: `split` reads the item ranges, never the body.
    let mut group = c.benchmark_group("split-only");
    if let Ok(submission) = Submission::parse(body.clone()) {
        group.bench_function("split 100k item ranges", |b| {
            b.iter(|| split(black_box(&submission.items), LIMITS).len());
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
