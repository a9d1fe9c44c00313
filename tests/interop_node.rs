//! Interop with an SMPP implementation nobody here wrote: an SMSC built on the npm package `smpp`
//! (node.js, `tests/interop/smsc.js`, installed by `.ci/run` with `npm ci`) binds vmnd and
//! delivers a plain GSM message, a UCS2 message with an emoji, a two-part UDH-concatenated
//! message (parts out of order) and a delivery receipt. Proves that each deliver_sm is answered
//! with status 0, and that vmnd forwards each message to the webhook with the right text,
//! encoding and part count, and routes and stores the receipt with its parsed fields.
//!
//! Our own simulator shares vmnd's SMPP layer, so a bug in that layer could hide on both sides
//! of the connection at once; this test is the one where the other side is independent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use common::{config_text, parse_config, sink_bodies};
use vmnd::daemon::Daemon;
use vmnd::http_sink::{HttpSink, SinkMode};
use vmnd::store::MessageFilter;

/// The number the node SMSC addresses every message to (served by `config_text`'s config).
const VMN: &str = "567678";
/// Generous: a debug build on a slow shared machine, plus node's own start-up.
const STEP: Duration = Duration::from_secs(30);

/// The interop directory, with the npm package `smpp` installed: `.ci/run` runs `npm ci`; a
/// newcomer's first `cargo nextest run` does it here (the lock file pins the version).
fn interop_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !dir.join("node_modules/smpp").is_dir() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "the npm package `smpp` is not installed in {} and `npm ci` there failed ({status:?}): \
             node.js and npm are needed for this test",
            dir.display()
        );
    }
    dir
}

/// The node SMSC: the child (killed on drop, so a failing test leaves no process behind) and its
/// stdout as JSON lines.
struct NodeSmsc {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeSmsc {
    fn spawn() -> NodeSmsc {
        let dir = interop_dir();
        let mut child = Command::new("node")
            .arg(dir.join("smsc.js"))
            .arg(VMN)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            // The script exits when its stdin closes: that is how the test ends it.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (node.js is needed for interop): {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        NodeSmsc {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next JSON line that has `key`, skipping others; panics on EOF or after `STEP`.
    async fn next_with(&mut self, key: &str) -> Value {
        let read = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .expect("read node's stdout")
                    .unwrap_or_else(|| panic!("node SMSC exited before printing {key:?}"));
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("node SMSC printed a non-JSON line {line:?}: {e}"));
                if let Some(v) = value.get(key) {
                    return v.clone();
                }
            }
        };
        tokio::time::timeout(STEP, read)
            .await
            .unwrap_or_else(|_| panic!("node SMSC printed no {key:?} within {STEP:?}"))
    }

    /// Closes its stdin (it exits on that) and waits for it.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait for node");
                assert!(status.success(), "node SMSC exited with {status}");
            }
            // kill_on_drop ends it when `self` goes.
            Err(_) => panic!("node SMSC did not exit after its stdin closed"),
        }
    }
}

/// The webhook body for which `pred` holds, or a panic listing what was received.
fn find<'a>(bodies: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    bodies
        .iter()
        .find(|b| pred(b))
        .unwrap_or_else(|| panic!("no webhook request with {what}; received: {bodies:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_smpp_smsc_delivers_plain_ucs2_concatenated_and_receipt() {
    let mut node = NodeSmsc::spawn();
    let port = node.next_with("port").await;
    let port = u16::try_from(port.as_u64().expect("port is a number")).expect("port fits u16");

    let dir = tempfile::tempdir().expect("tempdir");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    let text = config_text(&dir.path().join("var"), port, &sink.url("/sms"), "");
    let daemon = Daemon::start(parse_config(&text))
        .await
        .expect("daemon starts");

    // node binds us and runs its script on its own; it reports every deliver_sm_resp status.
    let bound = node.next_with("bound").await;
    assert_eq!(
        bound, "transceiver",
        "vmnd binds as a transceiver by default"
    );
    let results = node.next_with("results").await;
    let results = results.as_array().expect("results is an array");
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        ["plain", "ucs2", "udh-part-2", "udh-part-1", "receipt"],
        "node ran its whole script"
    );
    for r in results {
        assert_eq!(
            r["status"], 0,
            "deliver_sm {} answered with a non-zero status: {results:?}",
            r["name"]
        );
    }

    // Plain, UCS2, the reassembled pair, and the receipt (the number's `receipts = "crm"`).
    assert!(
        sink.wait_for(4, STEP).await,
        "expected 4 webhook requests, got {:#?}",
        sink_bodies(&sink)
    );
    let bodies = sink_bodies(&sink);

    let plain = find(&bodies, "the plain text", |b| {
        b["text"] == "Hello from node 42"
    });
    assert_eq!(plain["event"], "message");
    assert_eq!(plain["encoding"], "gsm7");
    assert_eq!(plain["parts"], 1);
    assert_eq!(plain["from"], "919800000001");
    assert_eq!(plain["to"], VMN);
    assert_eq!(plain["carrier"], "sim");

    let ucs2 = find(&bodies, "the UCS2 text", |b| b["text"] == "Привет 😀");
    assert_eq!(ucs2["event"], "message");
    assert_eq!(ucs2["encoding"], "ucs2");
    assert_eq!(ucs2["parts"], 1);
    assert_eq!(ucs2["from"], "919800000002");
    assert_eq!(ucs2["to"], VMN);

    // Sent part 2 first: reassembly orders by sequence number, not by arrival.
    let concat = find(&bodies, "the concatenated text", |b| {
        b["text"] == "first half, second half"
    });
    assert_eq!(concat["event"], "message");
    assert_eq!(concat["parts"], 2);
    assert_eq!(concat["encoding"], "gsm7");
    assert_eq!(concat["from"], "919800000003");
    assert_eq!(concat["to"], VMN);
    assert!(
        concat.get("complete").is_none() && concat.get("missing_parts").is_none(),
        "a complete message carries no incompleteness fields: {concat}"
    );

    let receipt = find(&bodies, "the receipt event", |b| b["event"] == "receipt");
    assert_eq!(receipt["receipt"]["id"], "abc123");
    assert_eq!(receipt["receipt"]["stat"], "DELIVRD");
    assert_eq!(receipt["from"], "919800000001");
    assert_eq!(receipt["to"], VMN);

    // Every forwarded event is one distinct message: no part was forwarded on its own.
    let messages = bodies.iter().filter(|b| b["event"] == "message").count();
    assert_eq!(
        messages, 3,
        "plain, UCS2 and one reassembled message: {bodies:#?}"
    );

    // The receipt is also kept in the store, where operators (and DLR matching) find it.
    let stored = daemon
        .store
        .list_messages(&MessageFilter {
            limit: 100,
            ..Default::default()
        })
        .expect("list messages");
    let record = stored
        .iter()
        .find(|m| m.event == "receipt")
        .unwrap_or_else(|| panic!("no receipt stored: {stored:#?}"));
    let parsed = record.receipt.as_ref().expect("receipt fields stored");
    assert_eq!(parsed.id, "abc123");
    assert_eq!(parsed.stat, "DELIVRD");
    assert!(record.routed, "the receipt went to a served number");
    assert_eq!(record.webhooks, ["crm"]);
    assert_eq!(
        record.id, receipt["id"],
        "stored and forwarded under one id"
    );
    assert_eq!(
        daemon.store.receipt_for("sim", "abc123").expect("index"),
        vmnd::store::parse_id(&record.id),
        "the receipt is indexed by the carrier's message id"
    );
    assert_eq!(
        stored.len(),
        4,
        "four records, one per message: {stored:#?}"
    );

    daemon.shutdown().await;
    node.stop().await;
}
