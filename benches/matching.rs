//! Keyword matching benchmark: the router's hot path (`normalize` + `KeywordIndex::longest`) over
//! an index of 100,000 keywords on 10,000 numbers, plus the index's memory.
//!
//! ```text
//! cargo bench --bench matching            # ~1 min on 2 cores; prints a markdown table
//! cargo bench --bench matching -- quick   # fewer samples, for a smoke run
//! ```
//!
//! Method:
//! - The index: 10,000 numbers (2,000 six-digit short codes, 8,000 ten-digit long codes), 10
//!   phrases each: 40% a common campaign word shared by many numbers ("JOIN", "WIN"), 30% a
//!   word unique to the campaign ("SUMMER4821"), 20% two words, 10% three words. Seeded, so
//!   every run builds the same index.
//! - Messages, per class: a single-word keyword with args in random casing and punctuation; a
//!   multi-word keyword; text that matches nothing on a served number; any text to a number with
//!   no keywords; Hindi and Russian keywords; a 160-character message whose first word matches.
//!   The mix interleaves all classes evenly. One "match" is `normalize(text)` then
//!   `index.longest(vmn, words)`, the Normalized value dropped (its allocations freed) each time.
//! - Latency: every call is timed alone with `Instant::now()` before and after, in a random order
//!   over the messages of its class (so caches see a realistic spread of numbers and words). The
//!   cost of the two `Instant::now()` calls (their median, measured back to back here, ~20-30 ns)
//!   is subtracted; percentiles are over these individual samples, so p99 and max include
//!   preemption and page faults, as the daemon would see them.
//! - Throughput: the same calls in batches of 1,000 timed as a whole (no per-call timer), divided
//!   by the batch size; reported as matches per second of one core, and the batch mean per match.
//! - Memory: VmRSS from /proc/self/status after the input keywords are generated and before the
//!   builder starts, and again after `build()` with the builder dropped; and the index's own
//!   estimate of its heap bytes (`KeywordIndex::heap_bytes`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use vmnd::routing::{KeywordIndex, KeywordIndexBuilder, RuleId, keyword_words, normalize};

const NUMBERS: usize = 10_000;
const PER_NUMBER: usize = 10;
const BATCH: usize = 1_000;

/// Words many campaigns use: shared by numbers, so they are interned once.
const COMMON: &[&str] = &[
    "JOIN",
    "WIN",
    "VOTE",
    "INFO",
    "DEAL",
    "SALE",
    "OFFER",
    "CLUB",
    "GOLD",
    "PIZZA",
    "COFFEE",
    "FREE",
    "GIFT",
    "SUBSCRIBE",
    "APPLY",
    "BOOK",
    "CALL",
    "QUOTE",
    "MENU",
    "ORDER",
    "TRACK",
    "RATE",
    "CARD",
    "LOAN",
    "JOBS",
    "NEWS",
    "ALERTS",
    "LUCKY",
    "PRIZE",
    "EVENT",
    "TICKET",
    "DEMO",
    "TRIAL",
    "PLAN",
    "STORE",
    "SHOP",
    "CASH",
    "BONUS",
    "MEMBER",
    "VIP",
];
const SUFFIXES: &[&str] = &["NOW", "TODAY", "MORE", "PLUS", "ONE", "GOLD", "CLUB"];

struct Number {
    vmn: String,
    /// Phrases as configured, e.g. "JOIN CLUB".
    keywords: Vec<String>,
}

fn vmn_of(i: usize) -> String {
    if i < 2_000 {
        format!("{}", 500_000 + i)
    } else {
        format!("98{:08}", i * 7_919 % 100_000_000)
    }
}

fn generate(rng: &mut fastrand::Rng) -> Vec<Number> {
    (0..NUMBERS)
        .map(|i| {
            let mut keywords: Vec<String> = Vec::with_capacity(PER_NUMBER);
            while keywords.len() < PER_NUMBER {
                let common = COMMON[rng.usize(..COMMON.len())];
                let unique = format!("{}{}", COMMON[rng.usize(..COMMON.len())], rng.u32(..10_000));
                let k = match rng.u32(..10) {
                    0..=3 => common.to_string(),
                    4..=6 => unique,
                    7..=8 => format!("{common} {}", SUFFIXES[rng.usize(..SUFFIXES.len())]),
                    _ => format!(
                        "{common} {unique} {}",
                        SUFFIXES[rng.usize(..SUFFIXES.len())]
                    ),
                };
                // Distinct on this number, like `vmnd check` requires.
                if !keywords.iter().any(|x| x.eq_ignore_ascii_case(&k)) {
                    keywords.push(k);
                }
            }
            // A few numbers also run non-Latin campaigns.
            if i % 100 == 0 {
                keywords[0] = "जुड़ें".to_string();
                keywords[1] = "ПОДПИСКА".to_string();
            }
            Number {
                vmn: vmn_of(i),
                keywords,
            }
        })
        .collect()
}

fn build(numbers: &[Number]) -> KeywordIndex {
    let mut b = KeywordIndexBuilder::new();
    let mut rule = 0;
    for n in numbers {
        for k in &n.keywords {
            let words = keyword_words(k).expect("valid keyword");
            b.insert(&n.vmn, &words, RuleId(rule)).expect("distinct");
            rule += 1;
        }
    }
    b.build()
}

/// Random casing, as people type.
fn recase(rng: &mut fastrand::Rng, s: &str) -> String {
    match rng.u32(..3) {
        0 => s.to_lowercase(),
        1 => s.to_string(),
        _ => s
            .chars()
            .map(|c| {
                if rng.bool() {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect(),
    }
}

const ARGS: &[&str] = &[
    "",
    " summer",
    "! Rahul Sharma",
    ", 2 tickets please",
    "  for my shop in Pune",
    " A",
];

struct Class {
    name: &'static str,
    /// (vmn, text) pairs.
    messages: Vec<(String, String)>,
}

fn classes(rng: &mut fastrand::Rng, numbers: &[Number]) -> Vec<Class> {
    const PER_CLASS: usize = 10_000;
    let pick = |filter: &dyn Fn(&str) -> bool, rng: &mut fastrand::Rng| loop {
        let n = &numbers[rng.usize(..numbers.len())];
        let candidates: Vec<&String> = n.keywords.iter().filter(|k| filter(k)).collect();
        if !candidates.is_empty() {
            return (
                n.vmn.clone(),
                candidates[rng.usize(..candidates.len())].clone(),
            );
        }
    };
    let mut make = |name, f: &mut dyn FnMut(&mut fastrand::Rng) -> (String, String)| Class {
        name,
        messages: (0..PER_CLASS).map(|_| f(rng)).collect(),
    };
    let ascii = |k: &str| k.is_ascii();
    let one = |k: &str| k.is_ascii() && !k.contains(' ');
    let multi = |k: &str| k.contains(' ');
    let non_latin = |k: &str| !k.is_ascii();
    let filler = "Hi, I saw your ad in the paper today and I would like to know more about the \
                  offer, the price and whether you deliver to Koramangala on weekends. Thanks!";
    vec![
        make("1-word keyword + args", &mut |rng| {
            let (vmn, k) = pick(&one, rng);
            let text = format!("{}{}", recase(rng, &k), ARGS[rng.usize(..ARGS.len())]);
            (vmn, text)
        }),
        make("multi-word keyword + args", &mut |rng| {
            let (vmn, k) = pick(&multi, rng);
            let text = format!("{}{}", recase(rng, &k), ARGS[rng.usize(..ARGS.len())]);
            (vmn, text)
        }),
        make("no match (served number)", &mut |rng| {
            let (vmn, _) = pick(&ascii, rng);
            let text = [
                "hello is this the shop",
                "STOPP",
                "Joinn now",
                "what time do you open",
            ][rng.usize(..4)]
            .to_string();
            (vmn, text)
        }),
        make("unknown number", &mut |rng| {
            (
                format!("77{:08}", rng.u32(..100_000_000)),
                "JOIN summer".to_string(),
            )
        }),
        make("Hindi / Russian keyword", &mut |rng| {
            let (vmn, k) = pick(&non_latin, rng);
            let args = if k.starts_with('П') {
                " Москва"
            } else {
                " राहुल शर्मा"
            };
            (vmn, format!("{}{args}", recase(rng, &k)))
        }),
        make("160-char message", &mut |rng| {
            let (vmn, k) = pick(&one, rng);
            let mut text = format!("{} {filler}", recase(rng, &k));
            text.truncate(160);
            (vmn, text)
        }),
    ]
}

/// One match: what the router does per message.
#[inline(always)]
fn one(index: &KeywordIndex, vmn: &str, text: &str) -> Option<(RuleId, usize)> {
    let n = normalize(text);
    index.longest(vmn, n.words())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Median cost of two back-to-back `Instant::now()` calls, in nanoseconds.
fn timer_overhead() -> u64 {
    let mut v: Vec<u64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    matched: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    batch_mean_ns: f64,
    per_sec: f64,
}

fn measure(
    index: &KeywordIndex,
    name: &'static str,
    messages: &[(String, String)],
    samples: usize,
    overhead: u64,
    rng: &mut fastrand::Rng,
) -> Row {
    // Warm-up: fault in pages and train branch predictors.
    let mut matched = 0usize;
    for (vmn, text) in messages {
        matched += one(index, vmn, text).is_some() as usize;
    }
    let order: Vec<usize> = (0..samples).map(|_| rng.usize(..messages.len())).collect();
    let mut lat = Vec::with_capacity(samples);
    for &i in &order {
        let (vmn, text) = &messages[i];
        let t = Instant::now();
        black_box(one(index, black_box(vmn), black_box(text)));
        lat.push((t.elapsed().as_nanos() as u64).saturating_sub(overhead));
    }
    lat.sort_unstable();
    let mut batch_means = Vec::new();
    for chunk in order.chunks_exact(BATCH) {
        let t = Instant::now();
        for &i in chunk {
            let (vmn, text) = &messages[i];
            black_box(one(index, black_box(vmn), black_box(text)));
        }
        batch_means.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    batch_means.sort_unstable_by(f64::total_cmp);
    let batch_mean_ns = batch_means[batch_means.len() / 2];
    Row {
        name,
        matched: matched as f64 / messages.len() as f64,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        p999: percentile(&lat, 0.999),
        max: *lat.last().unwrap(),
        batch_mean_ns,
        per_sec: 1e9 / batch_mean_ns,
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let samples = if quick { 100_000 } else { 1_000_000 };
    let mut rng = fastrand::Rng::with_seed(2026);

    let numbers = generate(&mut rng);
    let rss_before = rss_kib();
    let t = Instant::now();
    let index = build(&numbers);
    let build_time = t.elapsed();
    let rss_after = rss_kib();
    let heap = index.heap_bytes();

    let classes = classes(&mut rng, &numbers);
    let overhead = timer_overhead();
    let mut rows: Vec<Row> = classes
        .iter()
        .map(|c| measure(&index, c.name, &c.messages, samples / 4, overhead, &mut rng))
        .collect();
    // One message over and over: everything it touches stays in cache, so this row is the CPU
    // cost alone; the difference to its class above is memory latency.
    let hot = vec![classes[0].messages[0].clone()];
    rows.push(measure(
        &index,
        "same message repeated",
        &hot,
        samples / 4,
        overhead,
        &mut rng,
    ));
    // The mix: all classes interleaved evenly.
    let mix: Vec<(String, String)> = (0..classes[0].messages.len())
        .flat_map(|i| classes.iter().map(move |c| c.messages[i].clone()))
        .collect();
    rows.push(measure(
        &index,
        "mix (all above)",
        &mix,
        samples,
        overhead,
        &mut rng,
    ));

    println!(
        "Index: {} phrases on {} numbers, built in {:.0} ms; index heap estimate {:.1} MiB; \
         VmRSS {:.1} MiB before build, {:.1} MiB after (+{:.1} MiB). Timer overhead subtracted: {} ns.\n",
        index.len(),
        index.numbers().count(),
        build_time.as_secs_f64() * 1e3,
        heap as f64 / (1 << 20) as f64,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after as f64 - rss_before as f64) / 1024.0,
        overhead,
    );
    println!(
        "| messages | matched | p50 ns | p99 ns | p99.9 ns | max ns | batch mean ns | matches/s (1 core) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0}% | {} | {} | {} | {} | {:.0} | {:.2} M |",
            r.name,
            r.matched * 100.0,
            r.p50,
            r.p99,
            r.p999,
            r.max,
            r.batch_mean_ns,
            r.per_sec / 1e6,
        );
    }
    let _ = Duration::ZERO;
}
