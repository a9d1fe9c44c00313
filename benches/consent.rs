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
//!   per transaction. Of every 20 contacts: 12 opted in by "JOIN summer" (with keyword and
//!   attributes), 6 opted out by STOP, 1 pending a double opt-in, 1 only seen (`touch_contact`:
//!   a contact with no consent value). MSISDNs are `91` + 10 digits, a bijection of the contact
//!   index (multiplication by an odd constant modulo 10^10), so insertion order is random in key
//!   order, as real opt-outs are. Seeded: every run builds the same data.
//! - Lookups: for each sled cache size (`caches=`, MiB; the daemon's default `cache_mb` is 32)
//!   the store is reopened (an empty sled cache, the OS page cache as the fill left it) and
//!   100,000 random `consent_state` calls are timed one by one with `Instant::now()` (the two
//!   calls' own cost, ~20-40 ns, is subtracted): half hits (a random filled contact, any state),
//!   half misses (numbers never seen). Passes: `cold` (first 100,000 after the reopen), `warm`
//!   (the same kind of pass again), and `import` (a warm pass while another thread applies
//!   opt-outs in batches of 32, as `POST .../contacts/import` does). Each pass is repeated
//!   `runs=` times (default 3; quick 1) on fresh reopens and the median of each figure is shown.
//! - Memory: VmRSS and VmHWM from /proc/self/status; the peak is reset (`clear_refs` 5) before
//!   each reopen, so VmHWM there is that phase's own peak. The bench keeps nothing of the
//!   contacts in memory besides the store.
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

fn msisdn(i: u64) -> String {
    let n = (u128::from(i) * u128::from(SPREAD % TEN_DIGITS)) % u128::from(TEN_DIGITS);
    format!("91{n:010}")
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
}

fn args() -> Args {
    let mut a = Args {
        contacts: 10_000_000,
        dir: None,
        caches: vec![32, 256, 1024],
        runs: 3,
    };
    let mut runs = None;
    for arg in std::env::args().skip(1) {
        if arg == "quick" {
            a.contacts = 1_000_000;
            runs = runs.or(Some(1));
        } else if let Some(d) = arg.strip_prefix("dir=") {
            a.dir = Some(PathBuf::from(d));
        } else if let Some(c) = arg.strip_prefix("caches=") {
            a.caches = c.split(',').filter_map(|c| c.parse().ok()).collect();
        } else if let Some(r) = arg.strip_prefix("runs=") {
            runs = r.parse().ok();
        } else if let Some(n) = arg.strip_prefix("contacts=") {
            a.contacts = n.parse().unwrap_or(a.contacts);
        }
    }
    a.runs = runs.unwrap_or(3).max(1);
    a
}

/// `VmRSS` and `VmHWM` in MiB.
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

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5), so a phase's peak is its own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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
    let mut i = 0u64;
    while i < contacts {
        let end = (i + FILL_BATCH as u64).min(contacts);
        let rows: Vec<(u64, String, String)> = (i..end)
            .map(|j| (j, msisdn(j), format!("{:016x}", j + 1)))
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

fn lookups(store: &Store, contacts: u64, rng: &mut fastrand::Rng, overhead: u64) -> Pass {
    let mut pass = Pass {
        all: Vec::with_capacity(LOOKUPS),
        hits: Vec::with_capacity(LOOKUPS / 2),
        misses: Vec::with_capacity(LOOKUPS / 2),
    };
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
        let t = Instant::now();
        let state = store.consent_state(VMN, who);
        let ns = (t.elapsed().as_nanos() as u64).saturating_sub(overhead);
        let state = state.expect("lookup");
        let want = if *hit {
            state_of(*i).unwrap_or(ConsentState::Unknown)
        } else {
            ConsentState::Unknown
        };
        assert_eq!(state, want, "contact {i}");
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Opt-outs of new contacts in import-sized transactions until `stop`.
fn importer(store: Store, contacts: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut n = 0u64;
    let mut i = 2 * contacts + 1_000_000_000;
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<(String, String)> = (i..i + IMPORT_BATCH)
            .map(|j| (msisdn(j), format!("import: {}", msisdn(j))))
            .collect();
        let changes: Vec<ConsentChange> = rows
            .iter()
            .map(|(who, text)| ConsentChange {
                vmn: VMN,
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
        n += IMPORT_BATCH;
        i += IMPORT_BATCH;
    }
    n
}

fn main() {
    let a = args();
    let temp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("vmnd-consent-bench")
                .tempdir_in(std::env::var_os("VMND_BENCH_DIR").unwrap_or_else(|| "/tmp".into()))
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

    let load_start = machine().0;
    let overhead = timer_cost();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut results: Vec<(u64, Vec<PassFigures>)> = Vec::new();
    for &cache in &a.caches {
        let mut by_pass: Vec<PassFigures> = ["cold", "warm", "import"]
            .into_iter()
            .map(PassFigures::new)
            .collect();
        for run in 0..a.runs {
            reset_peak();
            let open_start = Instant::now();
            let store = open(&dir, cache);
            let open_ms = open_start.elapsed().as_secs_f64() * 1000.0;
            for figures in by_pass.iter_mut() {
                let name = figures.name;
                let preempted_before = preemptions();
                let mut pass = if name == "import" {
                    let stop = Arc::new(AtomicBool::new(false));
                    let writer = {
                        let (store, stop) = (store.clone(), stop.clone());
                        std::thread::spawn(move || importer(store, a.contacts, stop))
                    };
                    // Let it get going.
                    std::thread::sleep(Duration::from_millis(200));
                    let started = Instant::now();
                    let pass = lookups(&store, a.contacts, &mut rng, overhead);
                    stop.store(true, Ordering::Relaxed);
                    let written = writer.join().unwrap_or(0);
                    eprintln!(
                        "    (importer wrote {written} opt-outs, {:.0}/s during the pass)",
                        written as f64 / started.elapsed().as_secs_f64().max(0.2)
                    );
                    pass
                } else {
                    lookups(&store, a.contacts, &mut rng, overhead)
                };
                let preempted = (preemptions() - preempted_before) as f64;
                let all = percentiles(&mut pass.all);
                let hits = percentiles(&mut pass.hits);
                let misses = percentiles(&mut pass.misses);
                let (rss, hwm) = memory();
                eprintln!(
                    "  cache {cache:>5} MiB run {run} {name:<6}: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.0} us (hits p50/p99 {:.2}/{:.2}, misses {:.2}/{:.2}); RSS {rss:.0} MiB, peak {hwm:.0} MiB; open {open_ms:.0} ms; preempted {preempted}; load {}",
                    machine().0,
                    all[0],
                    all[1],
                    all[2],
                    all[3],
                    hits[0],
                    hits[1],
                    misses[0],
                    misses[1],
                );
                figures.runs.push(RunFigures {
                    all,
                    hits,
                    misses,
                    rss,
                    hwm,
                    preempted,
                });
            }
            drop(store);
        }
        results.push((cache, by_pass));
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
        "`consent_state` latency in microseconds, median of {} runs (100,000 lookups each, half hits, half misses):\n",
        a.runs
    );
    println!(
        "| cache_mb | pass | p50 | p99 | p99.9 | max | hits p50 / p99 | misses p50 / p99 | VmRSS MiB | VmHWM MiB | preempted |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (cache, passes) in &results {
        for p in passes {
            let m = |f: &dyn Fn(&RunFigures) -> f64| {
                let mut xs: Vec<f64> = p.runs.iter().map(f).collect();
                median(&mut xs)
            };
            println!(
                "| {cache} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} | {:.0} |",
                p.name,
                m(&|r| r.all[0]),
                m(&|r| r.all[1]),
                m(&|r| r.all[2]),
                m(&|r| r.all[3]),
                m(&|r| r.hits[0]),
                m(&|r| r.hits[1]),
                m(&|r| r.misses[0]),
                m(&|r| r.misses[1]),
                m(&|r| r.rss),
                m(&|r| r.hwm),
                m(&|r| r.preempted),
            );
        }
    }
}

/// One pass's figures in one run: percentiles (p50, p99, p99.9, max) in microseconds, MiB.
struct RunFigures {
    all: [f64; 4],
    hits: [f64; 4],
    misses: [f64; 4],
    rss: f64,
    hwm: f64,
    /// Times the measuring thread was preempted during the pass.
    preempted: f64,
}

/// One pass (`cold`, `warm`, `import`) over every run at one cache size.
struct PassFigures {
    name: &'static str,
    runs: Vec<RunFigures>,
}

impl PassFigures {
    fn new(name: &'static str) -> PassFigures {
        PassFigures {
            name,
            runs: Vec::new(),
        }
    }
}
