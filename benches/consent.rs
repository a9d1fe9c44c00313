//! Consent at scale (issue 5): the opt-out check every outbound SMS makes
//! (`Store::consent_state`), with 10,000,000 contacts on one number kept in sled, and what they
//! cost in memory and on disk.
//!
//! ```text
//! cargo bench --bench consent                     # 10M contacts: fill ~1 h on 2 cores, then lookups
//! cargo bench --bench consent -- quick            # 1M contacts
//! cargo bench --bench consent -- dir=/big/disk/c  # keep the filled store there; a later run
//!                                                 # with the same dir (and size) skips the fill
//! cargo bench --bench consent -- caches=32,256,1024 runs=3
//! ```
//!
//! Method:
//! - Fill: contacts go in through `Store::apply_consents` (the same transaction as the daemon's:
//!   hot `consent` value, contact JSON, state index, ledger entry and its indexes), 1,000 changes
//!   per transaction, sled cache 1 GiB (only to fill faster). Of every 20 contacts: 12 opted in
//!   by "JOIN summer" (with keyword and attributes), 6 opted out by STOP, 1 pending a double
//!   opt-in, 1 only seen (`touch_contact`: a contact with no consent value). MSISDNs are `91` + 10
//!   digits, a bijection of the contact index (multiplication by an odd constant modulo 10^10),
//!   so insertion order is random in key order, as real opt-outs are. Every run builds the same
//!   data. The directory defaults to a temporary one under `VMND_BENCH_DIR` (or the system's);
//!   with `dir=` it is kept, marked as filled, and reused by later runs.
//! - Lookups: for each sled cache size (`caches=`, MiB; the daemon's default `cache_mb` is 16; the figures in BENCHMARKS.md were taken at 32),
//!   `runs=` times (default 3, quick 1), a fresh process (so RSS is the store's, not the fill's
//!   leftovers) opens the store (an empty sled cache; the OS page cache as earlier runs left it)
//!   and times 100,000 random `consent_state` calls one by one with `Instant::now()` (the timer's
//!   own cost, ~20-40 ns, subtracted): half hits (a random filled contact, any state), half misses
//!   (numbers never seen). Passes: `cold` (the first 100,000 after opening), `warm` (another
//!   100,000), `import` (lookups while another thread opts out 20,000 new contacts of another
//!   number in transactions of 32, as `POST .../contacts/import` does, until it is done).
//!   Then the same process builds the in-memory opt-out index (`Store::build_opt_out_index`,
//!   timed, with the RSS it adds) and measures `Store::is_opted_out` the same way, warm and
//!   during an import. Figures are medians over the runs.
//! - Memory: VmRSS after each pass and VmHWM at the end, from /proc/self/status of that process.
//! - Preempted: the measuring thread's `nonvoluntary_ctxt_switches` during the pass; on a busy
//!   machine the tail latencies are then partly the scheduler's.
//! - Disk: bytes allocated under the store's directory after the fill is flushed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmnd::store::Store;
use vmnd::store::consent::{ConsentChange, ConsentState};

const VMN: &str = "567678";
const LOOKUPS: usize = 100_000;
const FILL_BATCH: usize = 1_000;
/// Odd and not a multiple of 5: multiplication modulo 10^10 is then a bijection.
const SPREAD: u64 = 6_364_136_223_846_793;
const TEN_DIGITS: u64 = 10_000_000_000;
const T0: u64 = 1_780_000_000_000;
const FILL_CACHE_MB: u64 = 1024;
/// Rows per transaction of the import pass: the admin import's batch.
const IMPORT_BATCH: u64 = 32;

/// The ten digits after `91` of contact `i`.
fn msisdn_number(i: u64) -> u64 {
    ((u128::from(i) * u128::from(SPREAD % TEN_DIGITS)) % u128::from(TEN_DIGITS)) as u64
}

fn msisdn(i: u64) -> String {
    format!("91{:010}", msisdn_number(i))
}

/// What contact `i` is, by the fill's mix.
fn state_of(i: u64) -> Option<ConsentState> {
    match i % 20 {
        0..=11 => Some(ConsentState::OptedIn),
        12..=17 => Some(ConsentState::OptedOut),
        18 => Some(ConsentState::Pending),
        _ => None,
    }
}

struct Args {
    contacts: u64,
    dir: Option<PathBuf>,
    caches: Vec<u64>,
    runs: usize,
    /// Internal: this is the child process that measures one cache size.
    measure: bool,
    seed: u64,
}

fn args() -> Args {
    let mut a = Args {
        contacts: 10_000_000,
        dir: None,
        caches: vec![32, 256, 1024],
        runs: 3,
        measure: false,
        seed: 42,
    };
    let mut runs = None;
    for arg in std::env::args().skip(1) {
        if arg == "quick" {
            a.contacts = 1_000_000;
            runs = runs.or(Some(1));
        } else if arg == "measure" {
            a.measure = true;
        } else if let Some(d) = arg.strip_prefix("dir=") {
            a.dir = Some(PathBuf::from(d));
        } else if let Some(c) = arg.strip_prefix("caches=") {
            a.caches = c.split(',').filter_map(|c| c.parse().ok()).collect();
        } else if let Some(r) = arg.strip_prefix("runs=") {
            runs = r.parse().ok();
        } else if let Some(n) = arg.strip_prefix("contacts=") {
            a.contacts = n.parse().unwrap_or(a.contacts);
        } else if let Some(n) = arg.strip_prefix("seed=") {
            a.seed = n.parse().unwrap_or(a.seed);
        }
    }
    a.runs = runs.unwrap_or(3).max(1);
    a
}

fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Times the measuring thread was preempted so far (`nonvoluntary_ctxt_switches`): a pass
/// on a busy machine shows it, and its tail latencies are then the scheduler's.
fn preemptions() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The 1-minute load average and the CPU, for the report.
fn machine() -> (String, String) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    (load, format!("{model}, {cpus} CPUs"))
}

/// Bytes allocated on disk under `dir` (what `du` counts).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

fn open(dir: &Path, cache_mb: u64) -> Store {
    Store::open(dir, cache_mb, false).expect("store opens")
}

fn fill(dir: &Path, contacts: u64) -> Duration {
    // A big cache only to fill faster: the lookups reopen with the cache under test.
    let store = open(dir, FILL_CACHE_MB);
    let start = Instant::now();
    let attributes = [("args".to_string(), "summer".to_string())];
    // Filled in key order: sled then appends pages instead of rewriting random ones, which at
    // ten million contacts is the difference between minutes and hours. The lookups are random.
    let mut order: Vec<(u64, u64)> = (0..contacts).map(|j| (msisdn_number(j), j)).collect();
    order.sort_unstable();
    let mut i = 0u64;
    while i < contacts {
        let end = (i + FILL_BATCH as u64).min(contacts);
        let rows: Vec<(u64, String, String)> = order[i as usize..end as usize]
            .iter()
            .map(|&(_, j)| (j, msisdn(j), format!("{:016x}", j + 1)))
            .collect();
        let mut changes = Vec::with_capacity(rows.len());
        for (j, who, id) in &rows {
            let at = T0 + j;
            let base = ConsentChange {
                vmn: VMN,
                msisdn: who,
                to: ConsentState::OptedIn,
                at_ms: at,
                text: "JOIN summer",
                matched: "JOIN",
                message_id: Some(id),
                source: "sms",
                keyword: Some("JOIN"),
                attributes: &attributes,
                pending_until_ms: None,
            };
            match state_of(*j) {
                Some(ConsentState::OptedOut) => changes.push(ConsentChange {
                    to: ConsentState::OptedOut,
                    text: "STOP",
                    matched: "STOP",
                    keyword: None,
                    attributes: &[],
                    ..base
                }),
                Some(ConsentState::Pending) => changes.push(ConsentChange {
                    to: ConsentState::Pending,
                    // Far in the future: still pending when the lookups run.
                    pending_until_ms: Some(u64::MAX / 2),
                    ..base
                }),
                Some(_) => changes.push(base),
                None => store.touch_contact(VMN, who, at).expect("touch"),
            }
        }
        store.apply_consents(&changes).expect("apply");
        i = end;
        if i % 500_000 == 0 || i == contacts {
            let secs = start.elapsed().as_secs_f64();
            let (rss, hwm) = memory();
            eprintln!(
                "  filled {i:>10} contacts in {secs:>7.0} s ({:>6.0}/s), RSS {rss:.0} MiB, peak {hwm:.0} MiB, disk {:.2} GiB",
                i as f64 / secs,
                disk_bytes(dir) as f64 / (1u64 << 30) as f64
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(store.commit()).expect("flush");
    drop(store);
    start.elapsed()
}

/// Latencies of one pass, in nanoseconds: all, hits, misses.
#[derive(Default)]
struct Pass {
    all: Vec<u64>,
    hits: Vec<u64>,
    misses: Vec<u64>,
}

fn timer_cost() -> u64 {
    let mut samples: Vec<u64> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Up to `LOOKUPS` timed `consent_state` calls; stops early once `until` turns true.
fn lookups(
    store: &Store,
    contacts: u64,
    rng: &mut fastrand::Rng,
    overhead: u64,
    until: Option<&AtomicBool>,
    opt_out_check: bool,
) -> Pass {
    let mut pass = Pass::default();
    // Addresses prepared outside the timed region: the daemon has its SMS job's `to` in hand.
    let picks: Vec<(bool, u64, String)> = (0..LOOKUPS)
        .map(|_| {
            let hit = rng.bool();
            let i = if hit {
                rng.u64(0..contacts)
            } else {
                rng.u64(contacts..2 * contacts)
            };
            (hit, i, msisdn(i))
        })
        .collect();
    for (hit, i, who) in &picks {
        if until.is_some_and(|u| u.load(Ordering::Relaxed)) {
            break;
        }
        let want = if *hit {
            state_of(*i).unwrap_or(ConsentState::Unknown)
        } else {
            ConsentState::Unknown
        };
        let ns = if opt_out_check {
            let t = Instant::now();
            let opted_out = store.is_opted_out(VMN, who);
            let ns = (t.elapsed().as_nanos() as u64).saturating_sub(overhead);
            let want = want == ConsentState::OptedOut;
            assert_eq!(opted_out.expect("check"), want, "contact {i}");
            ns
        } else {
            let t = Instant::now();
            let state = store.consent_state(VMN, who);
            let ns = (t.elapsed().as_nanos() as u64).saturating_sub(overhead);
            assert_eq!(state.expect("lookup"), want, "contact {i}");
            ns
        };
        pass.all.push(ns);
        if *hit {
            pass.hits.push(ns);
        } else {
            pass.misses.push(ns);
        }
    }
    pass
}

/// (p50, p99, p99.9, max) in microseconds.
fn percentiles(samples: &mut [u64]) -> [f64; 4] {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1));
        samples.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    [at(0.5), at(0.99), at(0.999), at(1.0)]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The passes of one measuring process, in order: `consent_state` after opening (cold), again
/// (warm), during an import; then the opt-out index is built and `is_opted_out` measured the
/// same way.
const PASSES: [&str; 5] = [
    "consent_state cold",
    "consent_state warm",
    "consent_state import",
    "is_opted_out",
    "is_opted_out import",
];

/// Contacts opted out by each import pass.
const IMPORT_ROWS: u64 = 20_000;
/// The import goes to another number, so the measured number's data stays the same across runs.
const IMPORT_VMN: &str = "9876543210";

/// Opts out `IMPORT_ROWS` contacts of `IMPORT_VMN` in import-sized transactions, then sets
/// `done`. Returns rows per second.
fn importer(store: Store, first: u64, done: Arc<AtomicBool>) -> f64 {
    let start = Instant::now();
    let mut i = first;
    while i < first + IMPORT_ROWS {
        let rows: Vec<(String, String)> = (i..i + IMPORT_BATCH)
            .map(|j| (msisdn(j), format!("import: {}", msisdn(j))))
            .collect();
        let changes: Vec<ConsentChange> = rows
            .iter()
            .map(|(who, text)| ConsentChange {
                vmn: IMPORT_VMN,
                msisdn: who,
                to: ConsentState::OptedOut,
                at_ms: T0,
                text,
                matched: "import",
                message_id: None,
                source: "import",
                keyword: None,
                attributes: &[],
                pending_until_ms: None,
            })
            .collect();
        store.apply_consents(&changes).expect("import");
        i += IMPORT_BATCH;
    }
    done.store(true, Ordering::Relaxed);
    IMPORT_ROWS as f64 / start.elapsed().as_secs_f64()
}

/// The child process: opens the store with `cache` MiB, runs the passes, prints one
/// `RESULT <json>` line per pass.
fn measure(dir: &Path, contacts: u64, cache: u64, seed: u64) {
    let overhead = timer_cost();
    let mut rng = fastrand::Rng::with_seed(seed);
    let open_start = Instant::now();
    let store = open(dir, cache);
    let open_ms = open_start.elapsed().as_secs_f64() * 1000.0;
    let mut index = serde_json::Value::Null;
    for name in PASSES {
        let opt_out_check = name.starts_with("is_opted_out");
        if opt_out_check && index.is_null() {
            let rss_before = memory().0;
            let start = Instant::now();
            let len = store.build_opt_out_index().expect("index");
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let grew = memory().0 - rss_before;
            eprintln!(
                "  cache {cache:>5} MiB: opt-out index of {len} contacts built in {ms:.0} ms, RSS +{grew:.0} MiB"
            );
            index = serde_json::json!({ "len": len, "ms": ms, "rss_mib": grew });
        }
        let preempted_before = preemptions();
        let (mut pass, import_rate) = if name.ends_with("import") {
            let done = Arc::new(AtomicBool::new(false));
            let first = 3 * TEN_DIGITS / 10 + rng.u64(0..1_000_000_000);
            let writer = {
                let (store, done) = (store.clone(), done.clone());
                std::thread::spawn(move || importer(store, first, done))
            };
            let pass = lookups(
                &store,
                contacts,
                &mut rng,
                overhead,
                Some(&done),
                opt_out_check,
            );
            (pass, writer.join().unwrap_or(f64::NAN))
        } else {
            (
                lookups(&store, contacts, &mut rng, overhead, None, opt_out_check),
                f64::NAN,
            )
        };
        let preempted = preemptions() - preempted_before;
        let n = pass.all.len();
        let all = percentiles(&mut pass.all);
        let hits = percentiles(&mut pass.hits);
        let misses = percentiles(&mut pass.misses);
        let (rss, hwm) = memory();
        let load = machine().0;
        eprintln!(
            "  cache {cache:>5} MiB {name:<20}: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.0} us over {n} lookups; RSS {rss:.0} MiB, peak {hwm:.0} MiB; opened in {open_ms:.0} ms; preempted {preempted}; load {load}",
            all[0], all[1], all[2], all[3]
        );
        let line = serde_json::json!({
            "pass": name, "all": all, "hits": hits, "misses": misses, "rss": rss, "hwm": hwm,
            "preempted": preempted, "lookups": n, "import_rate": import_rate, "open_ms": open_ms,
            "index": index,
        });
        println!("RESULT {line}");
    }
}

fn main() {
    let a = args();
    if a.measure {
        let dir = a.dir.as_deref().expect("measure needs dir=");
        for &cache in &a.caches {
            measure(dir, a.contacts, cache, a.seed);
        }
        return;
    }
    let temp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("vmnd-consent-bench")
                .tempdir_in(
                    std::env::var_os("VMND_BENCH_DIR")
                        .map_or_else(std::env::temp_dir, PathBuf::from),
                )
                .expect("tempdir");
            temp.path().to_path_buf()
        }
    };
    let marker = dir.join(format!("filled-{}", a.contacts));
    eprintln!(
        "consent bench: {} contacts on {VMN} in {}",
        a.contacts,
        dir.display()
    );
    let load_start = machine().0;
    let fill_time = if marker.exists() {
        eprintln!("  reusing the filled store ({} exists)", marker.display());
        None
    } else {
        // Never delete what we did not make: a directory without our marker must be empty.
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            eprintln!(
                "{} is not empty and has no {}: remove it or pick another dir=",
                dir.display(),
                marker.display()
            );
            std::process::exit(2);
        }
        let t = fill(&dir, a.contacts);
        let _ = std::fs::write(&marker, b"");
        Some(t)
    };
    let disk = disk_bytes(&dir);
    let (rss_after_fill, hwm_fill) = memory();

    let exe = std::env::current_exe().expect("own path");
    // (cache, pass) -> one JSON object per run
    let mut results: Vec<(u64, &str, Vec<serde_json::Value>)> = Vec::new();
    for &cache in &a.caches {
        for pass in PASSES {
            results.push((cache, pass, Vec::new()));
        }
        for run in 0..a.runs {
            let out = std::process::Command::new(&exe)
                .arg("measure")
                .arg(format!("dir={}", dir.display()))
                .arg(format!("contacts={}", a.contacts))
                .arg(format!("caches={cache}"))
                .arg(format!("seed={}", 42 + run))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("measuring process");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(json) = line.strip_prefix("RESULT ") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                    continue;
                };
                if let Some(slot) = results
                    .iter_mut()
                    .find(|(c, p, _)| *c == cache && v["pass"] == *p)
                {
                    slot.2.push(v);
                }
            }
        }
    }

    let (load_end, cpu) = machine();
    println!("\n### Consent at scale: {} contacts\n", a.contacts);
    println!(
        "Machine: {cpu}; load average (1 min) {load_start} at the start, {load_end} at the end."
    );
    if let Some(t) = fill_time {
        println!(
            "Fill: {:.0} s ({:.0} contacts/s), peak RSS during the fill {hwm_fill:.0} MiB (cache_mb {FILL_CACHE_MB}), RSS after {rss_after_fill:.0} MiB.",
            t.as_secs_f64(),
            a.contacts as f64 / t.as_secs_f64()
        );
    }
    println!(
        "Disk: {:.2} GiB ({:.0} bytes per contact, everything: contacts, ledger, indexes).\n",
        disk as f64 / (1u64 << 30) as f64,
        disk as f64 / a.contacts as f64
    );
    println!(
        "Latency of one call in microseconds, median of {} runs (fresh process each):\n",
        a.runs
    );
    println!(
        "| cache_mb | pass | lookups | p50 | p99 | p99.9 | max | hits p50 / p99 | misses p50 / p99 | VmRSS MiB | VmHWM MiB | preempted | import rows/s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (cache, pass, runs) in &results {
        let m = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| {
            median(runs.iter().filter_map(f).collect())
        };
        let q = |key: &'static str, i: usize| m(&move |v| v[key][i].as_f64());
        let f = |key: &'static str| m(&move |v| v[key].as_f64());
        let rate = f("import_rate");
        println!(
            "| {cache} | {pass} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} | {:.0} | {} |",
            f("lookups"),
            q("all", 0),
            q("all", 1),
            q("all", 2),
            q("all", 3),
            q("hits", 0),
            q("hits", 1),
            q("misses", 0),
            q("misses", 1),
            f("rss"),
            f("hwm"),
            f("preempted"),
            if rate.is_nan() {
                "".to_string()
            } else {
                format!("{rate:.0}")
            },
        );
    }
    println!();
    for (cache, pass, runs) in &results {
        if *pass != "is_opted_out" {
            continue;
        }
        let f = |key: &'static str| {
            median(
                runs.iter()
                    .filter_map(|v| v["index"][key].as_f64())
                    .collect(),
            )
        };
        println!(
            "Opt-out index (cache_mb {cache}): {:.0} contacts, built in {:.0} ms, RSS +{:.0} MiB.",
            f("len"),
            f("ms"),
            f("rss_mib")
        );
    }
}
