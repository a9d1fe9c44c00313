//! Webhook delivery benchmark: how fast vmnd's HTTP client delivers events to a receiver on
//! loopback, and how a backlog of queued deliveries drains once an endpoint comes back.
//!
//! ```text
//! cargo build --release                  # the daemon under test: target/release/vmnd
//! cargo bench --bench webhooks           # full: client runs, then a 1,000,000-job backlog
//! cargo bench --bench webhooks -- quick  # 100,000-job backlog, fewer requests
//! cargo bench --bench webhooks -- quick client    # or: backlog
//! ```
//!
//! Scenarios:
//! - `client`: [`WebhookClient::send`] alone (the signed JSON request the dispatcher makes, a
//!   ~330-byte payload, keep-alive pool) against the recording HTTP receiver
//!   ([`HttpSink`], bodies not kept) in this same process, at 1, 8, 32 and 64 requests in flight.
//!   Requests per second from the first send to the last answer; CPU per request is this
//!   process's (client and receiver together, so it overstates the client's share). 3 runs
//!   (quick: 1), medians.
//! - `backlog`: N webhook jobs (1,000,000; quick 100,000) and their message records are written
//!   to a fresh store as the processor writes them, as if the endpoint had been down while
//!   they arrived. Then `vmnd run` starts as a child process with the endpoint up (webhook
//!   `concurrency` 32, the default) and the bench times the drain: from the daemon's start to
//!   the receiver's N-th 200, and from the first request to the last. The daemon's RSS is
//!   sampled every 200 ms (peak and at the end) and its CPU per delivery read from /proc.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    bench_dir, clk_tck, daemon_binary, free_port, load_average, machine, proc_cpu_ticks,
    proc_status_kib,
};
use vmnd::http_sink::{HttpSink, SinkMode};
use vmnd::outbound::webhook::{Outgoing, SendOptions, WebhookClient};
use vmnd::store::queue::Job;
use vmnd::store::{MessageRecord, Store};

const SECRET: &str = "whsec-test";

fn main() {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let quick = words.iter().any(|w| w == "quick");
    let want = |s: &str| {
        let named = ["client", "backlog"]
            .iter()
            .any(|n| words.iter().any(|w| w == n));
        !named || words.iter().any(|w| w == s)
    };
    let runs = if quick { 1 } else { 3 };
    println!(
        "# vmnd webhook benchmark ({})\n\n{}\n",
        if quick { "quick" } else { "full" },
        machine()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if want("client") {
        let n = if quick { 20_000 } else { 100_000 };
        rt.block_on(client(n, runs));
    }
    if want("backlog") {
        let n = if quick { 100_000 } else { 1_000_000 };
        rt.block_on(backlog(n));
    }
    println!("\nload average at the end: {}", load_average());
}

fn record(i: u64) -> MessageRecord {
    MessageRecord {
        id: vmnd::store::format_id(i),
        event: "message".into(),
        to: "567678".into(),
        from: format!("9198{:08}", i % 100_000_000),
        from_ton_npi: None,
        text: format!("JOIN summer offer number {i}"),
        encoding: "gsm7".into(),
        keyword: Some("JOIN".into()),
        inbox: Some("summer".into()),
        args: Some("summer".into()),
        carrier: "sim".into(),
        received_at: "2026-11-28T14:00:00.123Z".into(),
        received_at_ms: 1_795_000_000_000,
        parts: 1,
        complete: true,
        missing_parts: Vec::new(),
        routed: true,
        receipt: None,
        webhooks: vec!["crm".into()],
        consent: None,
        guarded: Vec::new(),
    }
}

fn cpu_secs_self(clk: f64) -> f64 {
    proc_cpu_ticks("/proc/self/stat") as f64 / clk
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn client(n: u64, runs: usize) {
    println!("## client: signed JSON POSTs, keep-alive, receiver in this process\n");
    println!(
        "| in flight | requests | req/s (median of {runs}) | CPU µs/request (client + receiver) | connections |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let body = Bytes::from(vmnd::outbound::dispatcher::payload(&record(42), "message"));
    let clk = clk_tck();
    for in_flight in [1u64, 8, 32, 64] {
        let mut rates = Vec::new();
        let mut cpus = Vec::new();
        let mut connections = 0;
        for _ in 0..runs {
            let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
            sink.set_record_bodies(false);
            let uri: hyper::Uri = sink.url("/sms").parse().expect("uri");
            let client = WebhookClient::new();
            let request = Arc::new(Outgoing::json(uri, body.clone()));
            let cpu0 = cpu_secs_self(clk);
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..in_flight {
                let (client, request) = (client.clone(), request.clone());
                let share = n / in_flight + u64::from(w < n % in_flight);
                tasks.spawn(async move {
                    let options = SendOptions {
                        event_id: "0000000000000042",
                        secret: Some(SECRET),
                        auth: None,
                        headers: &[],
                        timeout: Duration::from_secs(10),
                    };
                    let mut failed = 0u64;
                    for _ in 0..share {
                        if !client.send(&request, &options).await.is_delivered() {
                            failed += 1;
                        }
                    }
                    failed
                });
            }
            let mut failed = 0;
            while let Some(r) = tasks.join_next().await {
                failed += r.unwrap_or(0);
            }
            let secs = started.elapsed().as_secs_f64();
            let cpu = cpu_secs_self(clk) - cpu0;
            assert_eq!(failed, 0, "every request answered 200");
            assert_eq!(sink.count() as u64, n);
            rates.push(n as f64 / secs);
            cpus.push(cpu / n as f64 * 1e6);
            connections = sink.connections();
            sink.shutdown();
        }
        println!(
            "| {in_flight} | {n} | {:.0} | {:.1} | {connections} |",
            median(rates),
            median(cpus)
        );
    }
    println!();
}

/// Writes `n` messages and their webhook jobs as the processor does, 1,000 per batch.
fn fill_backlog(dir: &Path, n: u64) -> Duration {
    let started = Instant::now();
    let store = Store::open(dir, 64, false).expect("store");
    let now = vmnd::clock::now_ms();
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        let batch: Vec<(u64, Arc<MessageRecord>, Vec<Job>)> = (i..end)
            .map(|id| {
                let job = Job {
                    id: Job::id_for(id, 0),
                    message_id: id,
                    webhook: "crm".into(),
                    event: "message".into(),
                    attempts: 0,
                    created_ms: now,
                    due_ms: now,
                    first_attempt_ms: None,
                    last_error: None,
                    last_status: None,
                    sms: None,
                    email: None,
                };
                (id, Arc::new(record(id)), vec![job])
            })
            .collect();
        store.finish_messages(&batch).expect("write batch");
        i = end;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(store.commit()).expect("flush");
    drop(store);
    started.elapsed()
}

async fn backlog(n: u64) {
    println!("## backlog: {n} queued webhook deliveries drain once the endpoint is back\n");
    let bin = daemon_binary();
    let dir = bench_dir();
    let data = dir.path().join("var");
    let fill = tokio::task::spawn_blocking({
        let data = data.clone();
        move || fill_backlog(&data, n)
    })
    .await
    .expect("fill");
    println!("backlog written in {:.1} s", fill.as_secs_f64());
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    sink.set_record_bodies(false);
    let admin = free_port();
    let config = dir.path().join("vmnd.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ndata_dir = \"{}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\n[[webhook]]\nname = \"crm\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry_for = \"24h\"\n\n[[number]]\nvmn = \"567678\"\ndefault = {{ webhook = \"crm\" }}\n",
            data.display(),
            sink.url("/sms")
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("vmnd.log")).expect("log");
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon");
    let pid = child.id();
    let status = format!("/proc/{pid}/status");
    let clk = clk_tck();
    let mut peak_rss = 0u64;
    let mut first_request: Option<Instant> = None;
    let mut samples = Vec::new();
    let deadline = started + Duration::from_secs(3600);
    while (sink.count() as u64) < n {
        if let Ok(Some(exit)) = child.try_wait() {
            panic!(
                "daemon exited ({exit}):\n{}",
                std::fs::read_to_string(dir.path().join("vmnd.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain in an hour"
        );
        let rss = proc_status_kib(&status, "VmRSS:");
        peak_rss = peak_rss.max(rss);
        if first_request.is_none() && sink.received() > 0 {
            first_request = Some(Instant::now());
        }
        let done = sink.count() as u64;
        if samples.len() < 1000 {
            samples.push((started.elapsed().as_secs_f64(), done, rss));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = started.elapsed().as_secs_f64();
    let draining = first_request.map_or(total, |t| t.elapsed().as_secs_f64());
    let cpu = proc_cpu_ticks(&format!("/proc/{pid}/stat")) as f64 / clk;
    let rss_end = proc_status_kib(&status, "VmRSS:");
    let hwm = proc_status_kib(&status, "VmHWM:");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    println!(
        "| jobs | start to last delivery s | first to last request s | deliveries/s (drain) | daemon CPU µs/delivery | RSS peak (sampled) MiB | VmHWM MiB | RSS at the end MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {total:.1} | {draining:.1} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
        n as f64 / draining,
        cpu / n as f64 * 1e6,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("\nprogress (s since start, delivered, RSS MiB), every ~10%:");
    let step = (samples.len() / 10).max(1);
    for (t, done, rss) in samples.iter().step_by(step) {
        println!(
            "- {t:.1} s: {done} delivered, RSS {:.0} MiB",
            *rss as f64 / 1024.0
        );
    }
    println!(
        "\nreceiver: {} requests over {} connections",
        sink.received(),
        sink.connections()
    );
}
