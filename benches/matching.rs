//! Keyword matching benchmark: the router's hot path (`normalize` + `KeywordIndex::longest`) over
//! an index of 100,000 keywords on 10,000 numbers, plus the index's memory.
//!
//! ```text
//! cargo bench --bench matching            # ~25 s on 2 cores; prints a markdown table
//! cargo bench --bench matching -- quick   # fewer samples, for a smoke run
//! ```
//!
//! Method:
//! - The index: 10,000 numbers (2,000 six-digit short codes, 8,000 ten-digit long codes), 10
//!   phrases each: 40% a common campaign word shared by many numbers ("JOIN", "WIN"), 30% a
//!   word unique to the campaign ("SUMMER4821"), 20% two words, 10% three words; every 100th
//!   number also has a Hindi and a Russian keyword. Seeded, so every run builds the same index.
//! - Messages, 10,000 per class: a one-word keyword with args in random casing and punctuation;
//!   a multi-word keyword; text that matches nothing on a served number; a message to a number
//!   with no keywords; Hindi and Russian keywords with args; a 160-character message whose first
//!   word matches. The mix interleaves the six classes evenly.
//! - One match is what the router does per message: `normalize_prefix(text, MAX_KEYWORD_WORDS)`
//!   (only the words a keyword can span) then `index.longest(vmn, words)`, the `Normalized`
//!   dropped (its allocations freed) each time. One row times `normalize` of the whole text
//!   instead (what `vmnd route` does), for 160-character messages.
//! - Latency: every call timed alone with `Instant::now()` before and after, over messages of
//!   its class picked at random (so caches see a realistic spread of numbers and words); the
//!   message's bytes are read just before the timer starts, as the daemon has just decoded them.
//!   The median cost of two back-to-back `Instant::now()` calls (measured here, ~30 ns) is
//!   subtracted. Percentiles are over these individual samples, so p99.9 and max include
//!   interrupts and preemption, as the daemon would see them.
//! - Throughput: the same calls in batches of 1,000 timed as a whole (no per-call timer), the
//!   median batch divided by its size: matches per second on one core.
//! - "Same message repeated" rows match one message over and over, all in cache: the CPU cost
//!   alone. The gap to the random rows is memory latency (the tables are several MiB).
//! - Memory: VmRSS (/proc/self/status) after the input keywords are generated and before the
//!   builder starts, and again after `build()` with the builder dropped (this includes what the
//!   allocator kept of the builder's freed maps); and the index's own count of its heap bytes
//!   (`KeywordIndex::heap_bytes`).
//!
//! `VMND_BENCH_ONLY=TEXT` runs only the rows whose name contains TEXT (for profiling).

use std::hint::black_box;
use std::time::Instant;

use vmnd::routing::{
    KeywordIndex, KeywordIndexBuilder, MAX_KEYWORD_WORDS, RuleId, keyword_words, normalize,
    normalize_prefix,
};

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
    // Every (number, keyword) pair, and those of each kind: a message picks one uniformly.
    let all: Vec<(&str, &str)> = numbers
        .iter()
        .flat_map(|n| n.keywords.iter().map(|k| (n.vmn.as_str(), k.as_str())))
        .collect();
    let of_kind = |kind: fn(&str) -> bool| -> Vec<(&str, &str)> {
        all.iter().copied().filter(|&(_, k)| kind(k)).collect()
    };
    let one = of_kind(|k| k.is_ascii() && !k.contains(' '));
    let multi = of_kind(|k| k.contains(' '));
    let non_latin = of_kind(|k| !k.is_ascii());
    let pick = |list: &[(&str, &str)], rng: &mut fastrand::Rng| {
        let (vmn, k) = list[rng.usize(..list.len())];
        (vmn.to_string(), k.to_string())
    };
    let mut make = |name, f: &mut dyn FnMut(&mut fastrand::Rng) -> (String, String)| Class {
        name,
        messages: (0..PER_CLASS).map(|_| f(rng)).collect(),
    };
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
            let (vmn, _) = pick(&all, rng);
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

/// One match as the router does it: only the words a keyword can span are normalised.
fn hot_path(index: &KeywordIndex, vmn: &str, text: &str) -> Option<(RuleId, usize)> {
    let n = normalize_prefix(text, MAX_KEYWORD_WORDS);
    index.longest(vmn, n.words())
}

/// One match with the whole text normalised (what `vmnd route` does to explain a message).
fn full_text(index: &KeywordIndex, vmn: &str, text: &str) -> Option<(RuleId, usize)> {
    let n = normalize(text);
    index.longest(vmn, n.words())
}

type MatchFn = fn(&KeywordIndex, &str, &str) -> Option<(RuleId, usize)>;

/// One row to measure: its name, what one match does, the (number, text) messages, samples.
type Job<'a> = (&'a str, MatchFn, Vec<(String, String)>, usize);

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
    name: String,
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
    one: MatchFn,
    name: &str,
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
        // The daemon matches a text it has just decoded, so it is in cache: read it first, so
        // the sample does not count the bench's own cache miss on fetching it.
        black_box(vmn.bytes().chain(text.bytes()).fold(0u8, u8::wrapping_add));
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
        name: name.to_string(),
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
    let mut jobs: Vec<Job> = classes
        .iter()
        .map(|c| (c.name, hot_path as MatchFn, c.messages.clone(), samples / 4))
        .collect();
    let long = classes.last().expect("classes").messages.clone();
    jobs.push((
        "160-char message, all words normalised",
        full_text,
        long,
        samples / 4,
    ));
    // One message over and over: everything it touches stays in cache, so these rows are the
    // CPU cost alone; the difference to their class above is memory latency.
    for (class, name) in [
        (0, "same message repeated (ASCII)"),
        (4, "same message repeated (Hindi/Russian)"),
    ] {
        let hot = vec![classes[class].messages[0].clone()];
        jobs.push((name, hot_path, hot, samples / 4));
    }
    // The mix: all classes interleaved evenly.
    let mix: Vec<(String, String)> = (0..classes[0].messages.len())
        .flat_map(|i| classes.iter().map(move |c| c.messages[i].clone()))
        .collect();
    jobs.push(("mix (the six classes above)", hot_path, mix, samples));
    // `VMND_BENCH_ONLY=Hindi` runs only the rows whose name contains that text (for profiling).
    let only = std::env::var("VMND_BENCH_ONLY").ok();
    let rows: Vec<Row> = jobs
        .into_iter()
        .filter(|(name, ..)| only.as_deref().is_none_or(|o| name.contains(o)))
        .map(|(name, f, messages, n)| measure(&index, f, name, &messages, n, overhead, &mut rng))
        .collect();

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
}
