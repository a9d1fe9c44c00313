//! Ingest benchmark: the release daemon as a child process, fed over TCP on loopback by the
//! carrier simulator, forwarding to an HTTP receiver — all three real, nothing mocked.
//!
//! ```text
//! cargo build --release            # the daemon under test: target/release/vmnd
//! cargo bench --bench ingest       # full run (~10 min on 2 cores, mostly the 1M-message run)
//! cargo bench --bench ingest -- quick            # fewer messages, ~1-2 min
//! cargo bench --bench ingest -- quick acks e2e   # only some scenarios: acks e2e latency rss disk
//! ```
//!
//! The simulator (`vmnd::sim::Smsc`) and the HTTP receiver (`vmnd::http_sink::HttpSink`) run in
//! this process; the daemon runs as `vmnd run --config FILE` (override the binary with
//! `VMND_BIN`, the data directory's parent with `VMND_BENCH_DIR`), so its CPU time
//! (utime + stime from `/proc/<pid>/stat`) and peak RSS (`VmHWM` from `/proc/<pid>/status`) are
//! the daemon's alone. Every run starts a fresh daemon with an empty store; durable group commit
//! (`fsync = true`, the default) is on throughout. `VMND_PERF="ARGS"` runs `perf ARGS -p <pid>`
//! on the daemon of the first end-to-end run (or latency run, without `e2e`) and stops it with SIGINT when the run ends, e.g.
//! `VMND_PERF="record -e cpu-clock -g -o /tmp/vmnd.perf"` or
//! `VMND_PERF="stat -e task-clock,context-switches,cpu-migrations,page-faults"`.
//! `VMND_DAEMON_EXTRA="fsync = false"` (lines separated by `\n`) adds keys to the daemon's
//! `[daemon]` section for what-if runs; the numbers in BENCHMARKS.md are with the defaults.
//! `VMND_WEBHOOK_EXTRA="concurrency = 64"` does the same for the webhook's section.
//! `VMND_FLOOR_DURING=500` also runs a bare group commit at that rate *during* each latency
//! run, in a directory of its own, to compare syncs made in the same seconds (a what-if: its
//! syncs share the disk with the daemon's).
//! The machine is shared: the load average is printed at the start and at the end of a run.
//!
//! Scenarios (each run 3 times in full mode, once in quick mode; medians are reported):
//! - `acks`: 1 and 4 binds x carrier window 1, 10, 100: acknowledged deliver_sm per second, from
//!   the first enqueue to the last `deliver_sm_resp` 0, and ack latency (the simulator's send of
//!   each deliver_sm to its response) under that saturating load.
//! - `e2e`: 1 and 4 binds at window 100: messages per second from the first enqueue until the
//!   HTTP receiver has answered 200 to every one; daemon CPU per message over the same interval.
//!   Once with the webhook's defaults, once with `pipeline = 16`.
//! - `latency`: 1 bind, window 100, input paced at 2,000 msg/s (the bench enqueues each message
//!   when it is due, and the simulator is also rate-limited to 2,000/s): ack latency from the
//!   simulator, and webhook latency from the enqueue (which is at most the wake-up of the
//!   simulator's session before its send) to the moment the receiver got the request head,
//!   using the enqueue time carried in the message text.
//!   After each latency run, the same rate for as long through a bare group commit in the data
//!   directory (`group_commit_floor`): the disk's floor under the ack latency, on a quiet machine.
//! - `rss`: 1,000,000 messages (200,000 in quick mode) at window 100 end to end; VmHWM and VmRSS
//!   of the daemon after the last webhook, and CPU per message over the whole run.
//! - `disk`: the cost of a 4 KiB write + fdatasync in the data directory, the floor under every
//!   group commit.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{
    bench_dir, clk_tck, daemon_binary, dir_size, free_port, http_get, load_average, machine,
    proc_cpu_ticks, proc_status_kib,
};
use vmnd::http_sink::{HttpSink, SinkMode};
use vmnd::sim::{Smsc, SmscConfig, mo};

/// The number every message goes to (configured with the webhook as its default action).
const VMN: &str = "567678";

/// A webhook setting the end-to-end scenario runs with.
#[derive(Clone, Copy)]
struct Webhook {
    /// How the tables name it.
    label: &'static str,
    /// Lines added to the webhook's section.
    lines: &'static str,
}

/// The defaults (one request at a time per connection, hyper's pool), and HTTP/1.1
/// pipelining 16 deep (`outbound::pipeline`; the receiver, hyper's server, answers in order).
const WEBHOOKS: [Webhook; 2] = [
    Webhook {
        label: "default",
        lines: "",
    },
    Webhook {
        label: "pipeline = 16",
        lines: "pipeline = 16",
    },
];

#[derive(Clone, Copy)]
struct Sizes {
    runs: usize,
    /// Messages per ack-throughput run, by window 1, 10, 100.
    acks: [u64; 3],
    e2e: u64,
    latency_secs: u64,
    rss: u64,
}

const FULL: Sizes = Sizes {
    runs: 3,
    acks: [3_000, 20_000, 60_000],
    e2e: 40_000,
    latency_secs: 10,
    rss: 1_000_000,
};

const QUICK: Sizes = Sizes {
    runs: 1,
    acks: [1_000, 10_000, 40_000],
    e2e: 20_000,
    latency_secs: 3,
    rss: 200_000,
};

fn main() {
    // `cargo bench` passes `--bench`; flags are ignored, words select mode and scenarios.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let quick = words.iter().any(|w| w == "quick");
    let all = ["disk", "acks", "e2e", "latency", "rss"];
    let mut only: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| words.iter().any(|w| w == s))
        .collect();
    if only.is_empty() {
        only = all.to_vec();
    }
    let sizes = if quick { QUICK } else { FULL };
    // A private copy, so a rebuild of target/release during the run does not change what is
    // measured half-way.
    let original = daemon_binary();
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let bin = bin_dir.path().join("vmnd");
    std::fs::copy(&original, &bin).expect("copy the daemon binary");
    let built = std::fs::metadata(&original)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "# vmnd ingest benchmark ({})\n",
        if quick { "quick" } else { "full" }
    );
    println!("{}", machine());
    println!(
        "daemon: {} (built {built}), run from a private copy\n",
        original.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(bin, sizes, &only));
}

async fn run(bin: PathBuf, sizes: Sizes, only: &[&str]) {
    let started = Instant::now();
    let mut summary = Summary::default();

    // Attached to the first end-to-end run, or to the first latency run without one.
    let mut perf = std::env::var("VMND_PERF").ok();
    if only.contains(&"disk") {
        let (p50, p99) = disk_sync_cost();
        println!(
            "disk: 4 KiB write + fdatasync in the data dir: p50 {p50:.0} µs, p99 {p99:.0} µs\n"
        );
        summary.disk = Some((p50, p99));
    }

    if only.contains(&"acks") {
        println!("## acknowledged deliver_sm/s (fresh daemon per run)\n");
        println!(
            "| binds | window | messages | run | acks/s | ack p50 µs | ack p99 µs | commits | mean batch | mean commit µs |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for binds in [1usize, 4] {
            for (wi, window) in [1usize, 10, 100].into_iter().enumerate() {
                let n = sizes.acks[wi];
                let mut rates = Vec::new();
                let mut p50s = Vec::new();
                let mut p99s = Vec::new();
                for r in 0..sizes.runs {
                    let res = ack_run(&bin, binds, window, n).await;
                    println!(
                        "| {binds} | {window} | {n} | {} | {:.0} | {} | {} | {} | {:.1} | {:.0} |",
                        r + 1,
                        res.rate,
                        res.p50_us,
                        res.p99_us,
                        res.commits.count,
                        res.commits.mean_batch(),
                        res.commits.mean_flush_us()
                    );
                    rates.push(res.rate);
                    p50s.push(f64::from(res.p50_us));
                    p99s.push(f64::from(res.p99_us));
                }
                summary.acks.push((
                    binds,
                    window,
                    median(&mut rates),
                    median(&mut p50s),
                    median(&mut p99s),
                ));
            }
        }
        println!("load average: {}\n", load_average());
    }

    if only.contains(&"e2e") {
        println!("## end to end: deliver_sm -> ack -> webhook 200 (window 100)\n");
        println!(
            "| webhook | binds | messages | run | delivered/s | acks done after s | all delivered after s | daemon CPU µs/msg | bench CPU µs/msg | daemon VmHWM MiB |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for webhook in WEBHOOKS {
            for binds in [1usize, 4] {
                let mut rates = Vec::new();
                let mut cpus = Vec::new();
                for r in 0..sizes.runs {
                    let res =
                        e2e_run(&bin, binds, 100, sizes.e2e, webhook, perf.take(), false).await;
                    println!(
                        "| {} | {binds} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |",
                        webhook.label,
                        sizes.e2e,
                        r + 1,
                        res.rate,
                        res.acks_done.as_secs_f64(),
                        res.all_done.as_secs_f64(),
                        res.cpu_us_per_msg,
                        res.bench_cpu_us_per_msg,
                        res.hwm_kib as f64 / 1024.0
                    );
                    rates.push(res.rate);
                    cpus.push(res.cpu_us_per_msg);
                }
                summary
                    .e2e
                    .push((webhook.label, binds, median(&mut rates), median(&mut cpus)));
            }
        }
        println!("load average: {}\n", load_average());
    }

    if only.contains(&"latency") {
        println!(
            "## latency at 2,000 msg/s (1 bind, window 100, {} s per run)\n",
            sizes.latency_secs
        );
        println!(
            "| run | messages | ack p50 µs | ack p99 µs | ack max µs | webhook p50 µs | webhook p99 µs | daemon CPU µs/msg | daemon context switches/msg | daemon's acks within 1 / 2 ms | commits | commits over 1 ms | disk alone p50 / p99 µs | disk alone: commits over 1 ms |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut v: [Vec<f64>; 7] = Default::default();
        // Printed under the table, so the table stays one row per run.
        let mut switch_lines = Vec::new();
        let mut floor_during_lines = Vec::new();
        for r in 0..sizes.runs {
            // VMND_FLOOR_DURING=RATE: a bare group commit at RATE/s in a directory of its own
            // *during* the daemon's run (for a what-if: it adds its own syncs to the disk).
            let floor_during = floor_during_rate().map(|rate| {
                let secs = sizes.latency_secs + 1;
                tokio::task::spawn_blocking(move || group_commit_floor(rate, secs))
            });
            let res = latency_run(&bin, 2_000, sizes.latency_secs, perf.take()).await;
            if let Some(floor) = floor_during {
                let (p50, p99, slow) = floor.await.expect("group commit floor during the run");
                floor_during_lines.push(format!(
                    "run {}: a bare group commit during the run: p50 {p50:.0} µs, p99 {p99:.0} µs, commits over 1 ms {slow:.2}%",
                    r + 1
                ));
            }
            // Right after the daemon's run, the same rate for as long through a bare group
            // commit: what the disk allows with nothing else running.
            let secs = sizes.latency_secs;
            let (floor_p50, floor_p99, floor_slow) =
                tokio::task::spawn_blocking(move || group_commit_floor(2_000, secs))
                    .await
                    .expect("group commit floor");
            let d = &res.daemon_side;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.2}% / {:.2}% | {} | {:.2}% | {floor_p50:.0} / {floor_p99:.0} | {floor_slow:.2}% |",
                r + 1,
                res.n,
                res.ack_p50,
                res.ack_p99,
                res.ack_max,
                res.hook_p50,
                res.hook_p99,
                res.cpu_us_per_msg,
                res.switches_per_msg,
                d.share(d.acks_within_1ms, d.acks),
                d.share(d.acks_within_2ms, d.acks),
                d.commits,
                100.0 - d.share(d.commits_within_1ms, d.commits),
            );
            let by_thread: Vec<String> = res
                .switches_by_thread
                .iter()
                .map(|(name, per_msg)| format!("{name} {per_msg:.2}"))
                .collect();
            switch_lines.push(format!(
                "run {}: context switches per message by thread: {}",
                r + 1,
                by_thread.join(", ")
            ));
            for (i, x) in [res.ack_p50, res.ack_p99, res.hook_p50, res.hook_p99]
                .into_iter()
                .enumerate()
            {
                v[i].push(f64::from(x));
            }
            v[4].push(res.cpu_us_per_msg);
            v[5].push(floor_p50);
            v[6].push(floor_p99);
        }
        summary.latency = Some(v.each_mut().map(|runs| median(runs)));
        println!();
        for line in switch_lines.iter().chain(&floor_during_lines) {
            println!("{line}");
        }
        println!("load average: {}\n", load_average());
    }

    if only.contains(&"rss") {
        println!(
            "## memory: {} messages end to end (1 bind, window 100, one run)\n",
            sizes.rss
        );
        let res = e2e_run(&bin, 1, 100, sizes.rss, WEBHOOKS[0], None, true).await;
        println!(
            "| messages | delivered/s | acks done after s | all delivered after s | daemon CPU µs/msg | VmHWM MiB | VmRSS after MiB | data dir MiB |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            sizes.rss,
            res.rate,
            res.acks_done.as_secs_f64(),
            res.all_done.as_secs_f64(),
            res.cpu_us_per_msg,
            res.hwm_kib as f64 / 1024.0,
            res.rss_kib as f64 / 1024.0,
            res.disk_bytes as f64 / (1024.0 * 1024.0)
        );
        println!("load average: {}\n", load_average());
        summary.rss = Some((
            sizes.rss,
            res.hwm_kib,
            res.rss_kib,
            res.cpu_us_per_msg,
            res.rate,
        ));
    }

    summary.print();
    println!(
        "\ntotal bench time: {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

/// Medians of every scenario, against the issue's targets and Kannel 1.4.5.
#[derive(Default)]
struct Summary {
    disk: Option<(f64, f64)>,
    /// (binds, window, acks/s, p50, p99)
    acks: Vec<(usize, usize, f64, f64, f64)>,
    /// (webhook, binds, delivered/s, daemon CPU µs/msg)
    e2e: Vec<(&'static str, usize, f64, f64)>,
    /// ack p50, p99, webhook p50, p99, CPU µs/msg, and the bare group commit's p50, p99
    latency: Option<[f64; 7]>,
    /// (messages, VmHWM KiB, VmRSS KiB, CPU µs/msg, delivered/s)
    rss: Option<(u64, u64, u64, f64, f64)>,
}

impl Summary {
    fn print(&self) {
        println!("## summary (medians)\n");
        println!("| measure | 1 bind | 4 binds | target | Kannel 1.4.5 |");
        println!("|---|---:|---:|---|---|");
        for window in [1usize, 10, 100] {
            let get = |b: usize| {
                self.acks
                    .iter()
                    .find(|a| a.0 == b && a.1 == window)
                    .map_or("-".to_string(), |a| format!("{:.0}", a.2))
            };
            let target = if window == 100 { ">= 50,000" } else { "-" };
            let kannel = if window == 100 { "6,600-8,600" } else { "-" };
            println!(
                "| acked msg/s, window {window} | {} | {} | {target} | {kannel} |",
                get(1),
                get(4)
            );
        }
        for window in [1usize, 10, 100] {
            let get = |b: usize| {
                self.acks
                    .iter()
                    .find(|a| a.0 == b && a.1 == window)
                    .map_or("-".to_string(), |a| format!("{:.0} / {:.0}", a.3, a.4))
            };
            println!(
                "| ack latency p50 / p99 µs under full load, window {window} | {} | {} | - | - |",
                get(1),
                get(4)
            );
        }
        for webhook in WEBHOOKS {
            let label = webhook.label;
            let e2e = |b: usize, f: fn(&(&str, usize, f64, f64)) -> String| {
                self.e2e
                    .iter()
                    .find(|e| e.0 == label && e.1 == b)
                    .map_or("-".to_string(), f)
            };
            println!(
                "| delivered to HTTP msg/s, window 100, webhook {label} | {} | {} | >= 25,000 | 6,100-7,400 |",
                e2e(1, |e| format!("{:.0}", e.2)),
                e2e(4, |e| format!("{:.0}", e.2))
            );
            println!(
                "| daemon CPU µs/msg end to end, webhook {label} | {} | {} | <= 40 | ~250 |",
                e2e(1, |e| format!("{:.1}", e.3)),
                e2e(4, |e| format!("{:.1}", e.3))
            );
            println!(
                "| daemon CPU s per 10,000 msgs, webhook {label} | {} | {} | <= 0.40 | ~2.5 |",
                e2e(1, |e| format!("{:.3}", e.3 / 100.0)),
                e2e(4, |e| format!("{:.3}", e.3 / 100.0))
            );
        }
        if let Some(l) = self.latency {
            println!(
                "| ack latency p50 / p99 µs at 2,000 msg/s | {:.0} / {:.0} | | p99 <= 2,000 | - |",
                l[0], l[1]
            );
            println!(
                "| webhook latency p50 / p99 µs at 2,000 msg/s | {:.0} / {:.0} | | - | - |",
                l[2], l[3]
            );
            println!(
                "| daemon CPU µs/msg at 2,000 msg/s | {:.1} | | - | - |",
                l[4]
            );
            println!(
                "| the disk alone at 2,000 msg/s: group commit p50 / p99 µs | {:.0} / {:.0} | | - | - |",
                l[5], l[6]
            );
        }
        if let Some((n, hwm, rss, cpu, rate)) = self.rss {
            println!(
                "| peak RSS (VmHWM) after {n} msgs | {:.1} MiB | | <= 100 MiB | - |",
                hwm as f64 / 1024.0
            );
            println!(
                "| RSS (VmRSS) after {n} msgs | {:.1} MiB | | - | - |",
                rss as f64 / 1024.0
            );
            println!("| daemon CPU µs/msg over {n} msgs | {cpu:.1} | | <= 40 | ~250 |");
            println!(
                "| delivered to HTTP msg/s over {n} msgs | {rate:.0} | | >= 25,000 | 6,100-7,400 |"
            );
        }
        if let Some((p50, p99)) = self.disk {
            println!(
                "| disk: 4 KiB write + fdatasync p50 / p99 µs | {p50:.0} / {p99:.0} | | - | - |"
            );
        }
    }
}

/// p50 and p99 of a 4 KiB write + fdatasync, 200 times, in the bench's data directory.
fn disk_sync_cost() -> (f64, f64) {
    let dir = bench_dir();
    let path = dir.path().join("sync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = vec![0x5au8; 4096];
    let mut us = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    (pct_f(&us, 50.0), pct_f(&us, 99.0))
}

/// `VMND_FLOOR_DURING`: the rate of a bare group commit to run beside each latency run.
fn floor_during_rate() -> Option<u32> {
    let raw = std::env::var("VMND_FLOOR_DURING").ok()?;
    match raw.parse() {
        Ok(rate) if rate > 0 => Some(rate),
        _ => panic!("VMND_FLOOR_DURING={raw:?}: a rate in commits per second, above 0"),
    }
}

/// The disk's floor under the ack latency at `rate` messages per second: a group commit that
/// does nothing but what the journal does on the ack path, for `secs` seconds in the bench's
/// data directory. One thread brings a message due every `1 / rate` s; a writer takes all that
/// have come, writes 256 bytes each into a file zero-filled beforehand (the journal's
/// `fill_ahead`) and calls `fdatasync`; a message's latency runs from its arrival to the end of
/// its sync. No decoding, no network, no other thread: p50 / p99 in µs of what no ESME writing
/// before it acks could beat on this disk with the machine otherwise quiet, and the share of its commits (write
/// and sync) over 1 ms, to set beside the daemon's.
fn group_commit_floor(rate: u32, secs: u64) -> (f64, f64, f64) {
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Condvar, Mutex};
    const RECORD: usize = 256;
    let n = u64::from(rate) * secs;
    let dir = bench_dir();
    let path = dir.path().join("group-commit-floor");
    let file = std::fs::File::create(&path).expect("floor file");
    let zeros = vec![0u8; 1 << 20];
    let mut filled = 0;
    while filled < n as usize * RECORD {
        file.write_all_at(&zeros, filled as u64).expect("zero-fill");
        filled += zeros.len();
    }
    file.sync_all().expect("fsync");
    std::fs::File::open(dir.path())
        .and_then(|d| d.sync_all())
        .expect("sync dir");

    // Arrival times not yet taken by the writer, and whether the last has come.
    let arrivals = Arc::new((Mutex::new((Vec::<Instant>::new(), false)), Condvar::new()));
    let bringer = {
        let arrivals = Arc::clone(&arrivals);
        std::thread::spawn(move || {
            let epoch = Instant::now();
            for i in 0..n {
                let due = epoch + Duration::from_secs_f64(i as f64 / f64::from(rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (lock, ready) = &*arrivals;
                lock.lock().expect("arrivals").0.push(Instant::now());
                ready.notify_one();
            }
            let (lock, ready) = &*arrivals;
            lock.lock().expect("arrivals").1 = true;
            ready.notify_one();
        })
    };
    let record = vec![0x5au8; RECORD];
    let mut batch_bytes = Vec::new();
    let mut offset = 0u64;
    let mut us = Vec::with_capacity(n as usize);
    let (mut commits, mut slow_commits) = (0u32, 0u32);
    loop {
        let (taken, last) = {
            let (lock, ready) = &*arrivals;
            let mut state = lock.lock().expect("arrivals");
            while state.0.is_empty() && !state.1 {
                state = ready.wait(state).expect("arrivals");
            }
            (std::mem::take(&mut state.0), state.1)
        };
        if !taken.is_empty() {
            let start = Instant::now();
            batch_bytes.clear();
            for _ in &taken {
                batch_bytes.extend_from_slice(&record);
            }
            file.write_all_at(&batch_bytes, offset).expect("write");
            file.sync_data().expect("fdatasync");
            offset += batch_bytes.len() as u64;
            let done = Instant::now();
            commits += 1;
            slow_commits += u32::from(done - start > Duration::from_millis(1));
            us.extend(taken.iter().map(|t| (done - *t).as_secs_f64() * 1e6));
        }
        if last {
            break;
        }
    }
    bringer.join().expect("arrival thread");
    us.sort_by(f64::total_cmp);
    let slow_share = 100.0 * f64::from(slow_commits) / f64::from(commits.max(1));
    (pct_f(&us, 50.0), pct_f(&us, 99.0), slow_share)
}

// ---------------------------------------------------------------------------------------------
// The daemon as a child process.

struct Daemon {
    child: std::process::Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    clk_tck: f64,
}

impl Daemon {
    /// A daemon delivering to `webhook_url` with `webhook_lines` added to its webhook.
    async fn start(
        bin: &Path,
        smsc: &Smsc,
        binds: usize,
        webhook_url: &str,
        webhook_lines: &str,
    ) -> Daemon {
        let dir = bench_dir();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // VMND_DAEMON_EXTRA: lines for [daemon], for what-if runs ("fsync = false",
        // "cache_mb = 8"); the reported numbers are with the defaults.
        let extra = std::env::var("VMND_DAEMON_EXTRA").unwrap_or_default();
        let mut text = format!(
            "[daemon]\ndata_dir = \"{}\"\nadmin_listen = \"{admin}\"\n{}\n\n",
            dir.path().join("var").display(),
            extra.replace("\\n", "\n")
        );
        for i in 1..=binds {
            text.push_str(&format!(
                "[[carrier]]\nname = \"sim{i}\"\nhost = \"127.0.0.1\"\nport = {}\nsystem_id = \"vmnd\"\npassword = \"secret\"\nenquire_link = \"30s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n\n",
                smsc.addr().port()
            ));
        }
        // VMND_WEBHOOK_EXTRA: more lines for the webhook, for what-if runs ("concurrency = 64").
        let webhook_extra = format!(
            "{webhook_lines}\n{}",
            std::env::var("VMND_WEBHOOK_EXTRA")
                .unwrap_or_default()
                .replace("\\n", "\n")
        );
        text.push_str(&format!(
            "[[webhook]]\nname = \"crm\"\nurl = \"{webhook_url}\"\nsecret = \"whsec-test\"\nretry_for = \"1h\"\n{webhook_extra}\n\n[[number]]\nvmn = \"{VMN}\"\ncarrier = \"sim1\"\ndefault = {{ webhook = \"crm\" }}\n"
        ));
        let config = dir.path().join("vmnd.toml");
        std::fs::write(&config, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("vmnd.log")).expect("log file");
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("VMND_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        let mut d = Daemon {
            child,
            dir,
            admin,
            clk_tck: clk_tck(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while smsc.stats().sessions_bound < binds as u64 {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daemon exited ({status}) before binding:\n{}", d.log());
            }
            if Instant::now() > deadline {
                panic!("daemon did not bind {binds} sessions in 20 s:\n{}", d.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        d
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmnd.log")).unwrap_or_default()
    }

    /// utime + stime in seconds.
    fn cpu_secs(&self) -> f64 {
        proc_cpu_ticks(&format!("/proc/{}/stat", self.pid())) as f64 / self.clk_tck
    }

    /// Context switches (voluntary and not) of the daemon's threads alive now, summed by
    /// thread name from /proc/<pid>/task/*/status. Each voluntary one is a thread going to
    /// sleep, so their count per message says how many wake-ups a message costs, and where.
    /// Threads that ended before the reading are not counted (the daemon's are long-lived;
    /// tokio's blocking pool keeps its threads for 10 s).
    fn context_switches(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by_name = std::collections::BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return by_name;
        };
        for task in tasks.flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let status = task.path().join("status");
            let path = status.to_string_lossy();
            *by_name.entry(name.trim().to_string()).or_insert(0) +=
                proc_status_kib(&path, "voluntary_ctxt_switches:")
                    + proc_status_kib(&path, "nonvoluntary_ctxt_switches:");
        }
        by_name
    }

    /// A `Vm*:` line of /proc/<pid>/status, in KiB.
    fn status_kib(&self, key: &str) -> u64 {
        proc_status_kib(&format!("/proc/{}/status", self.pid()), key)
    }

    async fn metrics(&self) -> Commits {
        Commits::parse(&http_get(self.admin, "/metrics").await)
    }

    fn disk_bytes(&self) -> u64 {
        dir_size(&self.dir.path().join("var"))
    }

    /// SIGTERM (the daemon unbinds and flushes), then SIGKILL if it takes over 10 s.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let log = self.log();
        let problems: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .take(5)
            .collect();
        if !problems.is_empty() {
            eprintln!("daemon log has errors:\n{}", problems.join("\n"));
        }
    }
}

/// What /metrics says about group commits.
#[derive(Debug, Default, Clone, Copy)]
struct Commits {
    count: u64,
    flush_sum: f64,
    batch_sum: f64,
}

impl Commits {
    fn parse(text: &str) -> Commits {
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Commits {
            count: value("vmnd_store_flush_seconds_count") as u64,
            flush_sum: value("vmnd_store_flush_seconds_sum"),
            batch_sum: value("vmnd_store_batch_size_sum"),
        }
    }

    fn mean_batch(&self) -> f64 {
        self.batch_sum / self.count.max(1) as f64
    }

    fn mean_flush_us(&self) -> f64 {
        self.flush_sum * 1e6 / self.count.max(1) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Messages and percentiles.

/// Message `i`: GSM text to the VMN from one of 100,000 senders.
fn message(i: u64, text: &str) -> vmnd::smpp::pdu::ShortMessage {
    let from = format!("9198{:08}", i % 100_000);
    mo::gsm(&from, VMN, text)
}

fn messages(range: std::ops::Range<u64>) -> Vec<vmnd::smpp::pdu::ShortMessage> {
    range
        .map(|i| message(i, &format!("JOIN summer offer please {i}")))
        .collect()
}

/// Keeps the simulator's queue at least `ahead` messages deep until `n` were enqueued, so the
/// daemon never waits on the bench; messages are encoded in chunks rather than all up front.
struct Feeder {
    next: u64,
    n: u64,
}

impl Feeder {
    const CHUNK: u64 = 10_000;

    fn new(smsc: &Smsc, n: u64) -> Feeder {
        let mut f = Feeder { next: 0, n };
        f.top_up(smsc, 2 * Feeder::CHUNK);
        f
    }

    fn top_up(&mut self, smsc: &Smsc, ahead: u64) {
        while self.next < self.n && self.next.saturating_sub(smsc.stats().sent) < ahead {
            let end = (self.next + Feeder::CHUNK).min(self.n);
            smsc.enqueue_many(messages(self.next..end));
            self.next = end;
        }
    }
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn pct_f(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// The simulator's own runtime: one thread that only the simulator uses, as a carrier's SMSC
/// would be a process (and a machine) of its own. On the bench's runtime its reads of
/// `deliver_sm_resp` waited behind the HTTP receiver's work, and that wait was counted as the
/// daemon's ack latency.
fn simulator_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-smsc")
            .enable_all()
            .build()
            .expect("simulator runtime")
    })
}

async fn start_parts(window: usize, rate: Option<u32>, record_bodies: bool) -> (Smsc, HttpSink) {
    let config = SmscConfig {
        window,
        rate_per_sec: rate,
        record_acks: false,
        ..SmscConfig::default()
    };
    // Started on its runtime, so that the tasks it spawns (listener, sessions) run there.
    let smsc = simulator_runtime()
        .spawn(Smsc::start(config))
        .await
        .expect("simulator task")
        .expect("simulator");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("http sink");
    sink.set_record_bodies(record_bodies);
    (smsc, sink)
}

struct AckResult {
    rate: f64,
    p50_us: u32,
    p99_us: u32,
    commits: Commits,
}

async fn ack_run(bin: &Path, binds: usize, window: usize, n: u64) -> AckResult {
    let (smsc, sink) = start_parts(window, None, false).await;
    let daemon = Daemon::start(bin, &smsc, binds, &sink.url("/sms"), "").await;
    let before = daemon.metrics().await;
    let t0 = Instant::now();
    let mut feeder = Feeder::new(&smsc, n);
    let deadline = t0 + Duration::from_secs(300);
    while smsc.stats().acked_ok < n {
        assert!(
            Instant::now() < deadline,
            "ack run stalled: {:?}",
            smsc.stats()
        );
        feeder.top_up(&smsc, 2 * Feeder::CHUNK);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t0.elapsed();
    let after = daemon.metrics().await;
    let mut lat = smsc.ack_latencies_us();
    lat.sort_unstable();
    daemon.stop().await;
    smsc.shutdown();
    sink.shutdown();
    AckResult {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50_us: pct(&lat, 50.0),
        p99_us: pct(&lat, 99.0),
        commits: Commits {
            count: after.count - before.count,
            flush_sum: after.flush_sum - before.flush_sum,
            batch_sum: after.batch_sum - before.batch_sum,
        },
    }
}

struct E2eResult {
    rate: f64,
    acks_done: Duration,
    all_done: Duration,
    cpu_us_per_msg: f64,
    bench_cpu_us_per_msg: f64,
    hwm_kib: u64,
    rss_kib: u64,
    disk_bytes: u64,
}

async fn e2e_run(
    bin: &Path,
    binds: usize,
    window: usize,
    n: u64,
    webhook: Webhook,
    perf: Option<String>,
    progress: bool,
) -> E2eResult {
    let (smsc, sink) = start_parts(window, None, false).await;
    let daemon = Daemon::start(bin, &smsc, binds, &sink.url("/sms"), webhook.lines).await;
    let perf_child = PerfAttach::start(perf, &daemon).await;
    let cpu0 = daemon.cpu_secs();
    let bench0 = proc_cpu_ticks("/proc/self/stat") as f64 / daemon.clk_tck;
    let t0 = Instant::now();
    let mut feeder = Feeder::new(&smsc, n);
    let deadline = t0 + Duration::from_secs(1800);
    let mut acks_done = None;
    let mut last_report = t0;
    loop {
        feeder.top_up(&smsc, 2 * Feeder::CHUNK);
        if acks_done.is_none() && smsc.stats().acked_ok >= n {
            acks_done = Some(t0.elapsed());
        }
        if sink.count() as u64 >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "e2e run stalled: {:?}, webhooks {}",
            smsc.stats(),
            sink.count()
        );
        if progress && last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "  {:.0} s: acked {} delivered {} VmRSS {} MiB",
                t0.elapsed().as_secs_f64(),
                smsc.stats().acked_ok,
                sink.count(),
                daemon.status_kib("VmRSS:") / 1024
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all_done = t0.elapsed();
    let cpu = daemon.cpu_secs() - cpu0;
    let bench_cpu = proc_cpu_ticks("/proc/self/stat") as f64 / daemon.clk_tck - bench0;
    perf_child.stop();
    let res = E2eResult {
        rate: n as f64 / all_done.as_secs_f64(),
        acks_done: acks_done.unwrap_or(all_done),
        all_done,
        cpu_us_per_msg: cpu * 1e6 / n as f64,
        bench_cpu_us_per_msg: bench_cpu * 1e6 / n as f64,
        hwm_kib: daemon.status_kib("VmHWM:"),
        rss_kib: daemon.status_kib("VmRSS:"),
        disk_bytes: daemon.disk_bytes(),
    };
    daemon.stop().await;
    smsc.shutdown();
    sink.shutdown();
    res
}

/// `perf ARGS -p <daemon pid>` for the length of one run (`VMND_PERF`).
struct PerfAttach(Option<std::process::Child>);

impl PerfAttach {
    async fn start(perf: Option<String>, daemon: &Daemon) -> PerfAttach {
        let child = perf.and_then(|args| {
            eprintln!("perf {args} -p {}", daemon.pid());
            Command::new("perf")
                .args(args.split_whitespace())
                .args(["-p", &daemon.pid().to_string()])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| eprintln!("cannot start perf: {e}"))
                .ok()
        });
        if child.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        PerfAttach(child)
    }

    /// SIGINT, so perf writes its data, then wait for it.
    fn stop(mut self) {
        if let Some(p) = self.0.as_mut() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(p.id().to_string())
                .status();
            let _ = p.wait();
        }
    }
}

struct LatencyResult {
    n: usize,
    ack_p50: u32,
    ack_p99: u32,
    ack_max: u32,
    hook_p50: u32,
    hook_p99: u32,
    cpu_us_per_msg: f64,
    /// The daemon's context switches per message over the run (see `Daemon::context_switches`).
    switches_per_msg: f64,
    /// ... by thread name (the runtime's workers summed), those at 0.01 or more.
    switches_by_thread: Vec<(String, f64)>,
    daemon_side: DaemonSide,
}

/// Enqueue each message when due at `rate`/s, its enqueue time (ns since `epoch`) in its text.
async fn latency_run(bin: &Path, rate: u32, secs: u64, perf: Option<String>) -> LatencyResult {
    let (smsc, sink) = start_parts(100, Some(rate), true).await;
    let daemon = Daemon::start(bin, &smsc, 1, &sink.url("/sms"), "").await;
    let perf_child = PerfAttach::start(perf, &daemon).await;
    let n = u64::from(rate) * secs;
    let cpu0 = daemon.cpu_secs();
    let switches0 = daemon.context_switches();
    let epoch = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let due = ((epoch.elapsed().as_secs_f64() * f64::from(rate)) as u64).min(n);
        if due > sent {
            let batch: Vec<_> = (sent..due)
                .map(|i| {
                    let t = epoch.elapsed().as_nanos();
                    message(i, &format!("JOIN {t} summer offer"))
                })
                .collect();
            smsc.enqueue_many(batch);
            sent = due;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let ok = sink.wait_for(n as usize, Duration::from_secs(120)).await;
    assert!(ok, "latency run: only {} of {n} webhooks", sink.count());
    let cpu = daemon.cpu_secs() - cpu0;
    let switches_by_thread: Vec<(String, f64)> = daemon
        .context_switches()
        .into_iter()
        .map(|(name, count)| {
            let before = switches0.get(&name).copied().unwrap_or(0);
            (name, count.saturating_sub(before) as f64 / n as f64)
        })
        .filter(|(_, per_msg)| *per_msg >= 0.01)
        .collect();
    perf_child.stop();
    let daemon_side = DaemonSide::parse(&http_get(daemon.admin, "/metrics").await);
    let mut acks = smsc.ack_latencies_us();
    acks.sort_unstable();
    let mut hooks: Vec<u32> = sink
        .requests()
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let t: u64 = v["text"].as_str()?.split(' ').nth(1)?.parse().ok()?;
            let sent_at = epoch + Duration::from_nanos(t);
            Some(r.at.saturating_duration_since(sent_at).as_micros() as u32)
        })
        .collect();
    hooks.sort_unstable();
    daemon.stop().await;
    smsc.shutdown();
    sink.shutdown();
    LatencyResult {
        n: acks.len(),
        ack_p50: pct(&acks, 50.0),
        ack_p99: pct(&acks, 99.0),
        ack_max: acks.last().copied().unwrap_or(0),
        hook_p50: pct(&hooks, 50.0),
        hook_p99: pct(&hooks, 99.0),
        cpu_us_per_msg: cpu * 1e6 / n as f64,
        switches_per_msg: switches_by_thread.iter().map(|(_, x)| x).sum(),
        switches_by_thread,
        daemon_side,
    }
}

/// The daemon's own view of the acknowledgement path, from its /metrics histograms: the ack
/// latency from reading a `deliver_sm` to writing its response (`vmnd_ack_latency_seconds`),
/// and the group commits' write and `fdatasync` (`vmnd_store_flush_seconds`). Beside the
/// simulator's figures, these tell the daemon's share of a latency tail from the load
/// generator's, and the disk's share of the daemon's.
#[derive(Debug, Default)]
struct DaemonSide {
    acks: u64,
    acks_within_1ms: u64,
    acks_within_2ms: u64,
    commits: u64,
    commits_within_1ms: u64,
}

impl DaemonSide {
    fn parse(text: &str) -> DaemonSide {
        // A histogram's cumulative bucket, e.g. `vmnd_ack_latency_seconds_bucket{le="0.001"} 5591`.
        let bucket = |metric: &str, le: &str| {
            let head = format!("{metric}_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(head.as_str()))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        DaemonSide {
            acks: bucket("vmnd_ack_latency_seconds", "+Inf"),
            acks_within_1ms: bucket("vmnd_ack_latency_seconds", "0.001"),
            acks_within_2ms: bucket("vmnd_ack_latency_seconds", "0.002"),
            commits: bucket("vmnd_store_flush_seconds", "+Inf"),
            commits_within_1ms: bucket("vmnd_store_flush_seconds", "0.001"),
        }
    }

    /// `part` as a percentage of `whole`.
    fn share(&self, part: u64, whole: u64) -> f64 {
        part as f64 * 100.0 / whole.max(1) as f64
    }
}
