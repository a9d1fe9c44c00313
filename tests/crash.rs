//! Crash safety of the real `vmnd` binary (DESIGN.md promises 1 and 2): the daemon runs as a
//! child process against the carrier simulator and the recording HTTP sink, is killed with
//! SIGKILL at moments when work is in flight, and restarted on the same data directory.
//!
//! What these tests prove:
//! - `sigkill_mid_stream_loses_no_acknowledged_message`: with deliver_sm streaming through a
//!   window, two SIGKILLs lose nothing the simulator saw acknowledged with status 0; every such
//!   message reaches the webhook (duplicates allowed and counted, none missing).
//! - `sigkill_between_parts_keeps_concatenated_parts`: parts 1 and 2 of a 3-part message,
//!   acknowledged before a SIGKILL, are still there after the restart, and part 3 completes
//!   the message (once with the parts already moved out of the journal into the reassembly
//!   tree, once with the kill right after the acks).
//! - `sigkill_while_webhook_down_resumes_deliveries`: jobs that failed against a broken endpoint
//!   before the SIGKILL are retried after the restart and delivered once the endpoint answers.
//!
//! A process kill (not a task abort) is the point: nothing in the daemon gets to run cleanup
//! code, so only what it had handed to the kernel survives. (The kernel's page cache outlives
//! the process, so these tests catch an ack sent before the write, not a missing fsync: that
//! would take a power cut.)

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vmnd::http_sink::{HttpSink, SinkMode};
use vmnd::sim::{Smsc, SmscConfig, mo};
use vmnd::smpp::pdu::ShortMessage;

/// Generous: the build is debug and the machine is small and shared.
const LONG: Duration = Duration::from_secs(120);

/// The `vmnd` binary as a child process, with its config, data and logs in one temp dir.
/// Dropping it SIGKILLs and reaps a running child, so a failing test leaves no process behind,
/// and prints every run's log and keeps the data directory when the test is panicking.
struct Vmnd {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// Runs started so far; run `n` logs to `vmnd-<n>.stdout` / `vmnd-<n>.stderr`.
    runs: usize,
}

impl Vmnd {
    /// Writes the config (the harness's, with `edit` applied to its text) for `smsc` and `sink`.
    fn new(smsc: &Smsc, sink: &HttpSink, edit: impl FnOnce(String) -> String) -> Vmnd {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = common::config_text(
            &dir.path().join("var"),
            smsc.addr().port(),
            &sink.url("/sms"),
            "",
        );
        let config = dir.path().join("vmnd.toml");
        std::fs::write(&config, edit(text)).expect("write config");
        Vmnd {
            dir,
            config,
            child: None,
            runs: 0,
        }
    }

    fn log_path(&self, run: usize, stream: &str) -> PathBuf {
        self.dir.path().join(format!("vmnd-{run}.{stream}"))
    }

    /// `vmnd run --config FILE`, as systemd starts it.
    fn start(&mut self) {
        assert!(self.child.is_none(), "vmnd is already running");
        self.runs += 1;
        let stdout = File::create(self.log_path(self.runs, "stdout")).expect("stdout log");
        let stderr = File::create(self.log_path(self.runs, "stderr")).expect("stderr log");
        let child = Command::new(env!("CARGO_BIN_EXE_vmnd"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            // Warnings and errors only, plus the daemon's own start line: it names the admin
            // address (configured as port 0) and how many journal entries were recovered.
            // `CRASH_TEST_LOG` replaces the filter when a failure needs more.
            .env(
                "RUST_LOG",
                std::env::var("CRASH_TEST_LOG").unwrap_or("warn,vmnd::daemon=info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn vmnd");
        self.child = Some(child);
    }

    /// SIGKILL (what `Child::kill` sends on unix) and reap.
    fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("vmnd is running");
        child.kill().expect("SIGKILL vmnd");
        child.wait().expect("reap vmnd")
    }

    /// Panics (with the logs printed by `Drop`) if the daemon exited on its own.
    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("vmnd run {} exited by itself: {status}", self.runs);
            }
        }
    }

    /// Every run's stdout and stderr.
    fn logs(&self) -> String {
        let mut out = String::new();
        for run in 1..=self.runs {
            for stream in ["stdout", "stderr"] {
                let text = std::fs::read_to_string(self.log_path(run, stream)).unwrap_or_default();
                out.push_str(&format!("----- vmnd run {run} {stream} -----\n{text}"));
            }
        }
        out
    }

    /// Journal entries run `run` found left by the previous one ("recovered" in its log).
    fn recovered(&self, run: usize) -> u64 {
        let text = std::fs::read_to_string(self.log_path(run, "stderr")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("journal entries left by the previous run"))
            .find_map(|l| field(&strip_ansi(l), "recovered"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The admin address of the current run, read from its start line.
    async fn admin_addr(&mut self) -> String {
        let path = self.log_path(self.runs, "stderr");
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .filter(|l| l.contains("vmnd started"))
                .find_map(|l| field(&strip_ansi(l), "admin"))
            {
                return addr;
            }
            self.assert_running();
            assert!(started.elapsed() < LONG, "vmnd never logged its start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `(journal_depth, queue_depth)` from `/healthz` of the current run.
    async fn depths(&mut self) -> (u64, u64) {
        let addr = self.admin_addr().await;
        let (_, body) = common::http_get(&format!("http://{addr}/healthz"), None).await;
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/healthz is not JSON ({e}): {body}"));
        let n = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("/healthz lacks {k}: {v}"))
        };
        (n("journal_depth"), n("queue_depth"))
    }

    /// Polls `/healthz` until `pred(journal_depth, queue_depth)` holds.
    async fn wait_depths(&mut self, what: &str, pred: impl Fn(u64, u64) -> bool) {
        let started = Instant::now();
        loop {
            let (journal, queue) = self.depths().await;
            if pred(journal, queue) {
                return;
            }
            self.assert_running();
            assert!(
                started.elapsed() < LONG,
                "timed out waiting for {what}: journal_depth {journal}, queue_depth {queue}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Vmnd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // The data directory is the evidence: keep it for `Store::open` to look into.
            if let Ok(empty) = tempfile::tempdir() {
                let kept = std::mem::replace(&mut self.dir, empty).keep();
                eprintln!("data directory kept at {}", kept.display());
            }
        }
    }
}

/// Tracing's fmt output may colour field names; the address is read from plain text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=value` in a log line.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let value: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!value.is_empty()).then_some(value)
}

/// Polls `done` until it holds, failing early if the daemon died and late after `LONG`.
/// `state` describes the situation for the failure message.
async fn wait_for(
    vmnd: &mut Vmnd,
    what: &str,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let started = Instant::now();
    while !done() {
        vmnd.assert_running();
        assert!(
            started.elapsed() < LONG,
            "timed out after {LONG:?} waiting for {what}; {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the simulator has seen the killed daemon's connection go: only then is its list
/// of acknowledgements complete for that run.
async fn wait_unbound(smsc: &Smsc) {
    assert!(
        smsc.wait_until(LONG, |s| s.sessions_bound == 0).await,
        "the simulator still has a bound session after the kill: {:?}",
        smsc.stats()
    );
}

/// Sim ids -> texts of messages the simulator saw acknowledged with status 0 (so far).
fn acked_texts(smsc: &Smsc, texts: &HashMap<u64, String>) -> BTreeSet<String> {
    smsc.acked()
        .iter()
        .inspect(|a| assert_eq!(a.status, 0, "only ok acks are recorded"))
        .filter_map(|a| texts.get(&a.id).cloned())
        .collect()
}

/// The webhook bodies the sink answered 2xx, parsed.
fn delivered_bodies(sink: &HttpSink) -> Vec<serde_json::Value> {
    sink.requests()
        .iter()
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|r| {
            serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                panic!(
                    "webhook body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&r.body)
                )
            })
        })
        .collect()
}

/// Text -> the ids of every 2xx delivery carrying it (one entry per request).
fn delivered(sink: &HttpSink) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for body in delivered_bodies(sink) {
        let text = body["text"].as_str().unwrap_or_default().to_string();
        let id = body["id"].as_str().unwrap_or_default().to_string();
        out.entry(text).or_default().push(id);
    }
    out
}

/// Texts in `want` the sink has not answered 2xx.
fn missing(want: &BTreeSet<String>, got: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    want.iter()
        .filter(|t| !got.contains_key(*t))
        .cloned()
        .collect()
}

/// Queues `n` distinct messages to 567678 and returns sim id -> text.
fn enqueue_numbered(smsc: &Smsc, n: usize) -> HashMap<u64, String> {
    let texts: Vec<String> = (0..n).map(|i| format!("msg {i:06}")).collect();
    let sms: Vec<ShortMessage> = texts
        .iter()
        .enumerate()
        // Many senders, so nothing in the daemon can lean on one sender's ordering.
        .map(|(i, text)| mo::gsm(&format!("9198{:08}", 12_345_000 + i % 997), "567678", text))
        .collect();
    let ids: Range<u64> = smsc.enqueue_many(sms);
    ids.zip(texts).collect()
}

/// Waits until every enqueued message is acknowledged and every text reached the sink.
async fn wait_all_delivered(vmnd: &mut Vmnd, smsc: &Smsc, sink: &HttpSink, all: &BTreeSet<String>) {
    let total = all.len() as u64;
    let mut seen_count = usize::MAX;
    let mut complete = false;
    wait_for(
        vmnd,
        "every message acknowledged and forwarded",
        || {
            // Recomputing the delivered set is not free: only when the sink moved.
            if smsc.stats().acked_ok >= total && sink.count() != seen_count {
                seen_count = sink.count();
                complete = missing(all, &delivered(sink)).is_empty();
            }
            complete
        },
        || {
            let got = delivered(sink);
            let gone = missing(all, &got);
            format!(
                "sim {:?}; sink ok {} received {}; {} texts missing, e.g. {:?}",
                smsc.stats(),
                sink.count(),
                sink.received(),
                gone.len(),
                &gone[..gone.len().min(5)]
            )
        },
    )
    .await;
}

/// Kills the daemon once the simulator counts `at_least` acks; see [`kill_now`].
async fn kill_after_acks(
    vmnd: &mut Vmnd,
    smsc: &Smsc,
    texts: &HashMap<u64, String>,
    at_least: u64,
) -> BTreeSet<String> {
    wait_for(
        vmnd,
        &format!("{at_least} acks"),
        || smsc.stats().acked_ok >= at_least,
        || format!("sim {:?}", smsc.stats()),
    )
    .await;
    kill_now(vmnd, smsc, texts).await
}

/// SIGKILLs the daemon mid-stream and returns the texts the simulator saw acked, read after
/// it saw the connection drop, so the set holds every ack the killed process got out.
async fn kill_now(vmnd: &mut Vmnd, smsc: &Smsc, texts: &HashMap<u64, String>) -> BTreeSet<String> {
    let at_signal = smsc.stats();
    let status = vmnd.kill();
    wait_unbound(smsc).await;
    let acked = acked_texts(smsc, texts);
    println!(
        "SIGKILL ({status}) after run {}: {} acked when signalled, {} once the connection \
         dropped, {} deliver_sm sent (redeliveries included), {} enqueued",
        vmnd.runs,
        at_signal.acked_ok,
        acked.len(),
        smsc.stats().sent,
        texts.len()
    );
    // Mid-stream, or the kill proves less than it claims to.
    assert!(
        acked.len() < texts.len(),
        "every message was acked before the kill: the stream was too short to cut"
    );
    acked
}

/// How the duplicates split. A text under more than one id is a carrier redelivery of a
/// message whose ack died with the process (stored, not acknowledged: a new deliver_sm); an
/// id delivered twice is a job that ran again.
fn duplicates(got: &BTreeMap<String, Vec<String>>) -> String {
    let requests: usize = got.values().map(Vec::len).sum();
    let distinct = |ids: &Vec<String>| ids.iter().collect::<BTreeSet<_>>().len();
    let redelivered = got.values().filter(|ids| distinct(ids) > 1).count();
    let rerun = got.values().filter(|ids| distinct(ids) < ids.len()).count();
    format!(
        "{requests} deliveries of {} texts: {} duplicates ({redelivered} texts under more than \
         one id, {rerun} texts with an id delivered more than once)",
        got.len(),
        requests - got.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_message() {
    const N: usize = 3000;
    let started = Instant::now();
    let smsc = Smsc::start(SmscConfig {
        window: 10,
        ..SmscConfig::default()
    })
    .await
    .expect("sim");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    let mut vmnd = Vmnd::new(&smsc, &sink, |t| t);
    let texts = enqueue_numbered(&smsc, N);
    let all: BTreeSet<String> = texts.values().cloned().collect();

    vmnd.start();
    let acked_before_first = kill_after_acks(&mut vmnd, &smsc, &texts, 600).await;
    vmnd.start();
    let acked_before_second = kill_after_acks(&mut vmnd, &smsc, &texts, 1800).await;
    // The second run must have acknowledged something of its own, or it proved nothing.
    assert!(acked_before_second.len() > acked_before_first.len());
    vmnd.start();
    wait_all_delivered(&mut vmnd, &smsc, &sink, &all).await;

    let got = delivered(&sink);
    for (run, acked) in [(1, &acked_before_first), (2, &acked_before_second)] {
        let gone = missing(acked, &got);
        assert!(
            gone.is_empty(),
            "{} messages acked before SIGKILL {run} never reached the webhook, e.g. {:?}",
            gone.len(),
            &gone[..gone.len().min(10)]
        );
    }
    let gone = missing(&all, &got);
    assert!(gone.is_empty(), "never forwarded: {gone:?}");
    assert!(
        got.keys().all(|t| all.contains(t)),
        "the webhook got texts nobody sent"
    );
    println!(
        "{N} messages, 2 SIGKILLs ({} + {} journal entries recovered at restart): {}; sim {:?}; \
         {:.1?}",
        vmnd.recovered(2),
        vmnd.recovered(3),
        duplicates(&got),
        smsc.stats(),
        started.elapsed()
    );
}

/// Parts of a 3-part message, checked to be 3.
fn three_parts(from: &str, text: &str, reference: u16) -> Vec<ShortMessage> {
    let parts = mo::concat_udh(from, "567678", text, reference, false);
    assert_eq!(parts.len(), 3, "the test text must make exactly 3 parts");
    parts
}

/// A GSM text long enough for 3 parts (153 septets each), unique per `tag`.
fn long_text(tag: &str) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 400 {
        text.push_str(&format!("{tag} sentence {i:02} of a long message. "));
        i += 1;
    }
    text.truncate(400);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_parts_keeps_concatenated_parts() {
    let started = Instant::now();
    let smsc = Smsc::start(SmscConfig::default()).await.expect("sim");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    // The harness's 2 s reassembly timeout would deliver the parts incomplete while the daemon
    // is down and restarting; this test is about parts surviving, so make the timeout long.
    let mut vmnd = Vmnd::new(&smsc, &sink, |t| {
        let long = t.replace(
            "reassembly_timeout = \"2s\"",
            "reassembly_timeout = \"10m\"",
        );
        assert_ne!(long, t, "the harness config changed: update this test");
        long
    });
    vmnd.start();

    // Group A: parts 1 and 2 acknowledged, moved from the journal into the reassembly tree,
    // and made durable by a later group commit (a marker message's) before the kill.
    let text_a = long_text("Alpha");
    let mut parts_a = three_parts("919800000001", &text_a, 0x41);
    let a3 = parts_a.pop().expect("part 3");
    smsc.enqueue_many(parts_a);
    assert!(
        smsc.wait_until(LONG, |s| s.acked_ok == 2).await,
        "parts A1, A2 not acked: {:?}",
        smsc.stats()
    );
    vmnd.wait_depths("A1, A2 processed", |journal, _| journal == 0)
        .await;
    // Every commit flushes the whole database, the parts tree included.
    smsc.enqueue(mo::gsm("919800000009", "567678", "flush marker"));
    assert!(
        smsc.wait_until(LONG, |s| s.acked_ok == 3).await,
        "marker not acked: {:?}",
        smsc.stats()
    );
    assert!(sink.wait_for(1, LONG).await, "marker never forwarded");

    // Group B: parts 1 and 2 acknowledged, killed right away: they may still be journal
    // entries only, which the restart must turn into reassembly state.
    let text_b = long_text("Bravo");
    let mut parts_b = three_parts("919800000002", &text_b, 0x42);
    let b3 = parts_b.pop().expect("part 3");
    smsc.enqueue_many(parts_b);
    assert!(
        smsc.wait_until(LONG, |s| s.acked_ok == 5).await,
        "parts B1, B2 not acked: {:?}",
        smsc.stats()
    );
    let status = vmnd.kill();
    wait_unbound(&smsc).await;
    println!("SIGKILL ({status}) with parts A1, A2, B1, B2 acked");

    vmnd.start();
    assert!(
        smsc.wait_until(LONG, |s| s.sessions_bound == 1).await,
        "vmnd did not bind again: {:?}",
        smsc.stats()
    );
    // Nothing the kill could have provoked: no part was lost and nothing is delivered early.
    vmnd.wait_depths("recovery", |journal, queue| journal == 0 && queue == 0)
        .await;
    // (The marker may come twice: its job's removal may have died unflushed with the process.)
    let early: BTreeSet<String> = delivered(&sink).into_keys().collect();
    assert_eq!(
        early,
        BTreeSet::from(["flush marker".to_string()]),
        "delivered before the last parts came"
    );
    // The carrier sent parts 1 and 2 once, before the kill: from here on the daemon can only
    // have them from its own disk.
    assert_eq!(
        smsc.stats().sent,
        5,
        "the sim redelivered: {:?}",
        smsc.stats()
    );

    smsc.enqueue_many([a3, b3]);
    for (name, text) in [("A", &text_a), ("B", &text_b)] {
        wait_for(
            &mut vmnd,
            &format!("message {name} assembled"),
            || delivered(&sink).contains_key(text.as_str()),
            || {
                format!(
                    "sim {:?}; sink got {:?}",
                    smsc.stats(),
                    delivered(&sink).keys()
                )
            },
        )
        .await;
    }
    let bodies = delivered_bodies(&sink);
    for (name, text, from) in [
        ("A", &text_a, "919800000001"),
        ("B", &text_b, "919800000002"),
    ] {
        let mine: Vec<&serde_json::Value> = bodies.iter().filter(|b| b["from"] == from).collect();
        assert!(!mine.is_empty(), "message {name} never forwarded");
        for b in &mine {
            assert_eq!(b["text"], text.as_str(), "message {name}: {b}");
            assert_eq!(b["parts"], 3, "message {name}: {b}");
            // `complete` and `missing_parts` appear only for an incomplete message.
            assert!(
                b.get("complete").is_none_or(|c| c == true),
                "message {name} delivered incomplete: {b}"
            );
            assert!(b.get("missing_parts").is_none(), "message {name}: {b}");
            assert_eq!(b["id"], mine[0]["id"], "message {name} under two ids");
        }
        println!("message {name}: delivered {} time(s), complete", mine.len());
    }
    println!("{:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_webhook_down_resumes_deliveries() {
    const N: usize = 1000;
    let started = Instant::now();
    // Paced, so the stream outlasts the 200 failed attempts the kill waits for: unpaced, the
    // journal acknowledges all 1,000 before that, and the kill would cut nothing. At 1,000/s a
    // loaded machine still let the whole stream through first, once; 2.5 s leaves room.
    let smsc = Smsc::start(SmscConfig {
        window: 10,
        rate_per_sec: Some(400),
        ..SmscConfig::default()
    })
    .await
    .expect("sim");
    let sink = HttpSink::start(SinkMode::Status(500)).await.expect("sink");
    // No circuit breaker: every job keeps its own attempts and backoff, which is what the kill
    // must interrupt (with the breaker, an open circuit would hold most jobs untried).
    let mut vmnd = Vmnd::new(&smsc, &sink, |t| {
        common::crm_with(t, "breaker_failures = 0")
    });
    let texts = enqueue_numbered(&smsc, N);
    let all: BTreeSet<String> = texts.values().cloned().collect();

    vmnd.start();
    // Kill once a few hundred attempts have failed, so the jobs tree holds jobs with attempts
    // and backoff behind them, while acks are still streaming in.
    wait_for(
        &mut vmnd,
        "failed webhook attempts",
        || sink.received() >= 200,
        || format!("sim {:?}; sink received {}", smsc.stats(), sink.received()),
    )
    .await;
    let acked = kill_now(&mut vmnd, &smsc, &texts).await;
    let failed_before_kill: BTreeSet<String> = sink
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .map(|b| b["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        sink.count(),
        0,
        "the endpoint was down: nothing can have succeeded"
    );
    println!(
        "{} texts attempted and failed before the kill",
        failed_before_kill.len()
    );

    sink.set_mode(SinkMode::Ok);
    vmnd.start();
    wait_all_delivered(&mut vmnd, &smsc, &sink, &all).await;

    let got = delivered(&sink);
    let gone = missing(&acked, &got);
    assert!(
        gone.is_empty(),
        "{} messages acked before the kill never reached the webhook, e.g. {:?}",
        gone.len(),
        &gone[..gone.len().min(10)]
    );
    let gone = missing(&failed_before_kill, &got);
    assert!(gone.is_empty(), "failed jobs not resumed: {gone:?}");
    println!(
        "{N} messages, {} acked before the kill, {} journal entries recovered at restart: {}; \
         {} failed attempts in all; {:.1?}",
        acked.len(),
        vmnd.recovered(2),
        duplicates(&got),
        sink.received() - sink.count(),
        started.elapsed()
    );
}

/// Webhook jobs in their first attempt exist only in memory, their journal entries being
/// their durable copies (see `store::hold`). A SIGKILL while every request hangs must find
/// them again at the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_first_attempts_hang_loses_none_of_them() {
    const N: usize = 1000;
    const IN_FLIGHT: usize = 64;
    let started = Instant::now();
    let smsc = Smsc::start(SmscConfig {
        window: 10,
        rate_per_sec: Some(1000),
        ..SmscConfig::default()
    })
    .await
    .expect("sim");
    let sink = HttpSink::start(SinkMode::NeverAnswer).await.expect("sink");
    let mut vmnd = Vmnd::new(&smsc, &sink, |t| {
        common::crm_with(t, &format!("timeout = \"60s\"\nconcurrency = {IN_FLIGHT}"))
    });
    let texts = enqueue_numbered(&smsc, N);
    let all: BTreeSet<String> = texts.values().cloned().collect();

    vmnd.start();
    wait_for(
        &mut vmnd,
        "hanging first attempts",
        || sink.received() >= IN_FLIGHT,
        || format!("sim {:?}; sink received {}", smsc.stats(), sink.received()),
    )
    .await;
    let hanging: BTreeSet<String> = sink
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .map(|b| b["text"].as_str().unwrap_or_default().to_string())
        .collect();
    let acked = kill_now(&mut vmnd, &smsc, &texts).await;
    assert_eq!(sink.count(), 0, "nothing was answered before the kill");

    sink.set_mode(SinkMode::Ok);
    vmnd.start();
    wait_all_delivered(&mut vmnd, &smsc, &sink, &all).await;
    let got = delivered(&sink);
    let gone = missing(&hanging, &got);
    assert!(
        gone.is_empty(),
        "jobs whose first attempt hung at the kill were lost: {gone:?}"
    );
    let gone = missing(&acked, &got);
    assert!(
        gone.is_empty(),
        "acked before the kill, never delivered: {gone:?}"
    );
    println!(
        "{N} messages, {} acked and {} hanging at the kill, {} journal entries recovered: {}; {:.1?}",
        acked.len(),
        hanging.len(),
        vmnd.recovered(2),
        duplicates(&got),
        started.elapsed()
    );
}

/// A reply scheduled with `reply_after` lives in the durable queue: a SIGKILL before it is due
/// does not lose it, and after the restart it is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_reply_survives_sigkill_and_is_sent_once() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("sim");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    let mut vmnd = Vmnd::new(&smsc, &sink, |text| {
        text + "\n[[number.keyword]]\nkeyword = \"LATER\"\nreply = \"Your delayed answer, {from}\"\nreply_after = \"3s\"\n"
    });
    vmnd.start();
    smsc.enqueue(vmnd::sim::mo::gsm(
        "919812349999",
        "9876543210",
        "later please",
    ));
    wait_for(
        &mut vmnd,
        "the LATER message acked",
        || smsc.stats().acked_ok == 1,
        || format!("{:?}", smsc.stats()),
    )
    .await;
    // The reply is due in 3 s: kill now, well before.
    vmnd.kill();
    wait_unbound(&smsc).await;
    assert_eq!(
        smsc.stats().submits_received,
        0,
        "nothing was sent before the kill"
    );
    vmnd.start();
    wait_for(
        &mut vmnd,
        "the delayed reply",
        || smsc.submitted().len() == 1,
        || format!("{:?}", smsc.stats()),
    )
    .await;
    // Give a second copy every chance to appear.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let submitted = smsc.submitted();
    assert_eq!(submitted.len(), 1, "sent once: {submitted:?}");
    let text = vmnd::smpp::text::decode_text(
        submitted[0].data_coding,
        &submitted[0].short_message,
        false,
        0,
    )
    .text;
    assert_eq!(text, "Your delayed answer, 919812349999");
    assert_eq!(submitted[0].dest.addr, "919812349999");
}

/// An opt-out that arrives while a delayed reply waits cancels it, across a SIGKILL: the
/// consent ledger and the queued reply both survive, and the reply is suppressed, not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_before_a_scheduled_reply_holds_across_sigkill() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("sim");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    let mut vmnd = Vmnd::new(&smsc, &sink, |text| {
        text + "\n[[number.keyword]]\nkeyword = \"LATER\"\nreply = \"Your delayed answer\"\nreply_after = \"3s\"\nwebhook = \"crm\"\n"
    });
    vmnd.start();
    let person = "919812348888";
    smsc.enqueue(mo::gsm(person, "9876543210", "later"));
    smsc.enqueue(mo::gsm(person, "9876543210", "STOP"));
    wait_for(
        &mut vmnd,
        "LATER and STOP processed",
        || sink.count() == 2,
        || format!("{:?} {}", smsc.stats(), sink.count()),
    )
    .await;
    vmnd.kill();
    wait_unbound(&smsc).await;
    vmnd.start();
    // Well past the reply's due time, with the daemon running.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        vmnd.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        smsc.stats().submits_received,
        0,
        "the reply to an opted-out person was sent"
    );
}

/// SIGHUP does not end the daemon (its default action would, with no unbind): it is logged
/// and ignored, and SIGTERM still stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_ignored_and_sigterm_still_stops_cleanly() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("sim");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    let mut vmnd = Vmnd::new(&smsc, &sink, |t| t);
    vmnd.start();
    vmnd.admin_addr().await;
    let pid = vmnd.child.as_ref().expect("running").id() as libc::pid_t;
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let started = Instant::now();
    let log = vmnd.log_path(1, "stderr");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("SIGHUP ignored")
    {
        vmnd.assert_running();
        assert!(started.elapsed() < LONG, "SIGHUP was not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vmnd.assert_running();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut child = vmnd.child.take().expect("running");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("reaped");
    assert!(status.success(), "{status:?}");
}
