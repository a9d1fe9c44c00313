//! Webhook delivery end to end: the simulated carrier delivers over SMPP to an in-process daemon
//! configured from TOML, and a real HTTP server ([`HttpSink`]) plays the tenant's endpoint.
//! Proves that:
//! - a failing endpoint is retried with the same `Vmnd-Event-Id` until it answers 2xx, once,
//!   and the delivered request's signature verifies with an independent (Python) verifier;
//! - an endpoint that never answers has its job dead-lettered after `retry_for`, visible in the
//!   admin API, leaving the queue empty;
//! - the JSON body and headers follow the contract in DESIGN.md field by field;
//! - a dead endpoint never holds up acknowledgements (DESIGN.md promise 5);
//! - a message to a number vmnd does not serve is acknowledged, stored unrouted, listed by the
//!   API and never POSTed;
//! - `GET /api/messages` filters and pages correctly and refuses bad parameters;
//! - `/metrics` and `/healthz` report what operators rely on.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use common::{Harness, crm_with, eventually, parse_config, sink_bodies};
use vmnd::clock;
use vmnd::daemon::Daemon;
use vmnd::http_sink::{HttpSink, SinkMode, SinkRequest};
use vmnd::sim::{Smsc, SmscConfig, mo};
use vmnd::smpp::pdu::Address;
use vmnd::store::{self, MessageFilter};

/// Generous: a debug build on a slow, shared two-core machine. Tests poll; this is only the
/// point at which they give up.
const STEP: Duration = Duration::from_secs(30);
/// The config's secret for webhook "crm".
const SECRET: &str = "whsec-test";
/// Numbers the test config serves, and senders.
const SHORT_CODE: &str = "567678";
const LONG_CODE: &str = "9876543210";
const ALICE: &str = "919800000011";
const BOB: &str = "919800000022";

/// Sim + sink + a daemon whose config text is `common::config_text`'s, passed through `edit`
/// (for per-webhook keys the shared config does not set).
async fn start_with(mode: SinkMode, edit: impl FnOnce(String) -> String) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let smsc = Smsc::start(SmscConfig::default()).await.expect("sim");
    let sink = HttpSink::start(mode).await.expect("sink");
    let mut h = Harness {
        dir,
        smsc,
        sink,
        daemon: None,
    };
    let text = edit(h.config_text(""));
    h.daemon = Some(
        Daemon::start(parse_config(&text))
            .await
            .expect("daemon starts"),
    );
    h
}

/// Polls an admin path every 50 ms until `pred(status, body)` holds; returns the last answer.
async fn admin_until(h: &Harness, path: &str, pred: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, body) = h.admin_get(path).await;
        if pred(status, &body) || tokio::time::Instant::now() >= deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET an admin path that must answer 200 with JSON.
async fn admin_json(h: &Harness, path: &str) -> Value {
    let (status, body) = h.admin_get(path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// The independent Python verifier (tests/verify_signature.py) with the config's secret.
fn python_verifies(header: &str, signed: &[u8]) -> bool {
    common::python_verifies(SECRET, header, signed)
}

/// The body of a recorded request as JSON (every request vmnd sends is JSON).
fn body_json(r: &SinkRequest) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "webhook body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&r.body)
        )
    })
}

/// `messages[].text` of a `/api/messages` answer, in the order given.
fn texts(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages is an array")
        .iter()
        .map(|m| m["text"].as_str().expect("text is a string").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_retried_until_200_once_with_a_verifiable_signature() {
    let mut h = Harness::start(
        SmscConfig::default(),
        SinkMode::FailFirst { n: 3, status: 500 },
        "",
    )
    .await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "retry me"));

    // Three 500s, with backoff of about 1 s, 2 s, 4 s (jittered) between them: ~7 s at most.
    assert!(
        h.sink.wait_for(1, STEP).await,
        "never delivered; requests: {:#?}",
        h.sink.requests()
    );
    // Done means removed from the queue: no further attempt is coming.
    let store = h.daemon().store.clone();
    assert!(
        eventually(STEP, || store.queue_depth() == 0).await,
        "the job stayed queued after a 200"
    );

    let requests = h.sink.requests();
    let id = body_json(&requests[0])["id"]
        .as_str()
        .expect("id is a string")
        .to_owned();
    let attempts: Vec<&SinkRequest> = requests
        .iter()
        .filter(|r| body_json(r)["id"] == id.as_str())
        .collect();
    let statuses: Vec<Option<u16>> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(500), Some(500), Some(500), Some(200)],
        "three failures, then exactly one success"
    );
    for r in &attempts {
        // The same event id on every attempt: receivers de-duplicate on it.
        assert_eq!(r.header("vmnd-event-id"), Some(id.as_str()));
        // Each attempt is a whole, identical event (only the signature's time may differ).
        assert_eq!(r.body, attempts[0].body, "retries resend the same body");
    }
    // (No assertion on the gaps between attempts: the backoff has full jitter, so any one
    // gap may be close to zero. The backoff's bounds are tested in tests/webhook_client.rs.)

    let delivered = attempts[3];
    let signature = delivered
        .header("vmnd-signature")
        .expect("a configured secret signs every request");
    assert!(
        python_verifies(signature, &delivered.body),
        "the Python verifier rejects {signature:?} over {:?}",
        String::from_utf8_lossy(&delivered.body)
    );
    // The same signature over a body changed by one character must not verify.
    let tampered = String::from_utf8(delivered.body.to_vec())
        .expect("utf-8 body")
        .replace("retry me", "retry mE");
    assert_ne!(tampered.as_bytes(), &delivered.body[..]);
    assert!(
        !python_verifies(signature, tampered.as_bytes()),
        "a tampered body verified"
    );

    let stats = h.smsc.stats();
    assert_eq!((stats.acked_ok, stats.acked_error), (1, 0));
    assert_eq!(store.dead_letter_count(), 0);
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_that_never_answers_becomes_a_dead_letter_after_retry_for() {
    let mut h = start_with(SinkMode::NeverAnswer, |text| {
        let edited = text.replace(
            "retry_for = \"1h\"",
            "retry_for = \"3s\"\ntimeout = \"500ms\"",
        );
        assert_ne!(
            edited, text,
            "the shared config no longer says retry_for = \"1h\""
        );
        edited
    })
    .await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "nobody listens"));

    // Attempts time out after 500 ms each; after 3 s of trying the job is given up on.
    let (status, body) = admin_until(&h, "/api/deadletters", |status, body| {
        status == 200 && body.contains("\"reason\"")
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let letters: Value = serde_json::from_str(&body).expect("JSON");
    let letters = letters["deadletters"]
        .as_array()
        .expect("deadletters array");
    assert_eq!(letters.len(), 1, "one dead letter: {letters:#?}");
    let letter = &letters[0];
    let reason = letter["reason"].as_str().expect("reason is a string");
    assert!(
        reason.contains("timeout"),
        "the reason says why it failed: {reason:?}"
    );
    assert_eq!(letter["job"]["webhook"], "crm");
    assert!(
        letter["job"]["attempts"].as_u64().expect("attempts") >= 2,
        "retried before giving up: {letter}"
    );

    // The letter points at the stored message, which is kept.
    let store = h.daemon().store.clone();
    let message_id = letter["job"]["message_id"].as_u64().expect("message_id");
    let record = store
        .message(message_id)
        .expect("store reads")
        .expect("the message is kept");
    assert_eq!(record.text, "nobody listens");

    assert!(
        eventually(STEP, || store.queue_depth() == 0).await,
        "queue depth stayed at {}",
        store.queue_depth()
    );
    assert_eq!(store.dead_letter_count(), 1);
    assert!(
        h.sink.received() >= 2,
        "the endpoint was tried more than once"
    );
    assert_eq!(h.sink.count(), 0, "nothing was answered");
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_follows_the_contract() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    let before_ms = clock::now_ms();
    // A `+` in an international sender: the contract wants digits only.
    let mut sm = mo::gsm(ALICE, SHORT_CODE, "Hello contract");
    sm.source = Address {
        ton: 1,
        npi: 1,
        addr: format!("+{ALICE}"),
    };
    h.smsc.enqueue(sm);
    assert!(h.sink.wait_for(1, STEP).await, "not delivered");
    let after_ms = clock::now_ms();

    let requests = h.sink.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/sms");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("user-agent")
            .is_some_and(|ua| ua.starts_with("vmnd/")),
        "{:?}",
        r.headers
    );
    assert!(r.header("vmnd-signature").is_some(), "signed");

    let body = body_json(r);
    let keys: BTreeSet<&str> = body
        .as_object()
        .expect("body is an object")
        .keys()
        .map(String::as_str)
        .collect();
    let contract: BTreeSet<&str> = [
        "event",
        "id",
        "to",
        "from",
        "text",
        "keyword",
        "inbox",
        "args",
        "carrier",
        "received_at",
        "parts",
        "encoding",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, contract, "exactly the contract's fields: {body}");

    assert_eq!(body["event"], "message");
    let id = body["id"].as_str().expect("id is a string");
    assert!(!id.is_empty());
    assert_eq!(r.header("vmnd-event-id"), Some(id), "header and body agree");
    assert_eq!(body["to"], SHORT_CODE);
    assert_eq!(body["from"], ALICE, "digits only, no '+'");
    assert_eq!(body["text"], "Hello contract");
    // Nothing matched (no keyword rules): null, not absent, not "".
    assert_eq!(body["keyword"], Value::Null);
    assert_eq!(body["inbox"], Value::Null);
    assert_eq!(body["args"], Value::Null);
    assert_eq!(body["carrier"], "sim");
    assert_eq!(body["parts"], 1);
    assert_eq!(body["encoding"], "gsm7");

    // RFC 3339, UTC, milliseconds, `Z`: `2026-11-28T14:00:00.123Z`.
    let received_at = body["received_at"].as_str().expect("received_at string");
    let shape_ok = received_at.len() == 24
        && received_at.ends_with('Z')
        && received_at.as_bytes()[10] == b'T'
        && received_at.as_bytes()[19] == b'.'
        && received_at[20..23].bytes().all(|b| b.is_ascii_digit());
    assert!(
        shape_ok,
        "received_at {received_at:?} is not YYYY-MM-DDThh:mm:ss.mmmZ"
    );
    let at_ms = clock::parse_rfc3339_ms(received_at).expect("received_at parses");
    assert!(
        (before_ms..=after_ms).contains(&at_ms),
        "received_at {received_at} is not within the test's run"
    );

    // The body is the stored record: same id, same time.
    let (status, stored) = h.admin_get(&format!("/api/messages/{id}")).await;
    assert_eq!(status, 200, "{stored}");
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    assert_eq!(stored["received_at"], received_at);
    assert_eq!(stored["text"], "Hello contract");
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_never_slows_acknowledgements() {
    // Default timeout (10 s) and retry_for (1 h): every request hangs, none succeeds.
    let mut h = Harness::start(SmscConfig::default(), SinkMode::NeverAnswer, "").await;
    let n = 500;
    h.smsc
        .enqueue_many((0..n).map(|i| mo::gsm(ALICE, SHORT_CODE, &format!("message {i}"))));

    // Acks wait only on the store's group commit, never on the webhook (promise 5). With the
    // endpoint hanging, all 500 are acknowledged while no request has succeeded.
    let smsc = h.smsc.clone();
    assert!(
        smsc.wait_until(STEP, |s| s.acked_ok == n).await,
        "only {:?} acknowledged",
        smsc.stats()
    );
    assert_eq!(smsc.stats().acked_error, 0, "no temporary failures");
    assert_eq!(h.sink.count(), 0, "no webhook request succeeded");

    // And none is lost: each acknowledged message waits in the durable queue.
    let store = h.daemon().store.clone();
    assert!(
        eventually(STEP, || store.queue_depth() == n as usize).await,
        "queue depth {} != {n}",
        store.queue_depth()
    );
    assert_eq!(store.message_count().unwrap(), n as usize);
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_an_unserved_number_is_acked_stored_listed_and_never_posted() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    const UNSERVED: &str = "111111";
    h.smsc.enqueue(mo::gsm(ALICE, UNSERVED, "wrong number"));
    // A routed message after it: processing is in journal order, so once this one is POSTed
    // the unserved one has been decided on too.
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "right number"));
    assert!(
        h.sink.wait_for(1, STEP).await,
        "the routed message was not delivered"
    );
    let smsc = h.smsc.clone();
    assert!(
        smsc.wait_until(STEP, |s| s.acked_ok == 2).await,
        "both acknowledged: {:?}",
        smsc.stats()
    );

    let store = h.daemon().store.clone();
    let filter = MessageFilter {
        to: Some(UNSERVED.into()),
        limit: 10,
        ..Default::default()
    };
    assert!(
        eventually(STEP, || store
            .list_messages(&filter)
            .is_ok_and(|m| m.len() == 1))
        .await,
        "the unserved message was not stored"
    );
    let record = &store.list_messages(&filter).expect("list")[0];
    assert!(!record.routed, "stored as unrouted");
    assert!(record.webhooks.is_empty(), "queued for no webhook");
    assert_eq!(record.text, "wrong number");

    let page = admin_json(&h, &format!("/api/messages?to={UNSERVED}")).await;
    assert_eq!(texts(&page), ["wrong number"]);
    assert_eq!(page["messages"][0]["routed"], false);

    // Nothing queued for it, nothing sent for it.
    assert!(eventually(STEP, || store.queue_depth() == 0).await);
    let bodies = sink_bodies(&h.sink);
    assert_eq!(
        bodies.len(),
        1,
        "only the routed message was POSTed: {bodies:#?}"
    );
    assert_eq!(bodies[0]["text"], "right number");
    assert_eq!(store.dead_letter_count(), 0);
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_messages_filters_pages_and_refuses_bad_parameters() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    let store = h.daemon().store.clone();

    // Two batches separated by an instant `t`, so since/until have a clean boundary.
    for (from, to, text) in [
        (ALICE, SHORT_CODE, "one"),
        (ALICE, LONG_CODE, "two"),
        (BOB, SHORT_CODE, "three"),
    ] {
        h.smsc.enqueue(mo::gsm(from, to, text));
    }
    assert!(eventually(STEP, || store.message_count().unwrap() == 3).await);
    let t = clock::now_ms() + 1;
    assert!(eventually(STEP, || clock::now_ms() > t).await);
    for (from, to, text) in [(BOB, LONG_CODE, "four"), (ALICE, SHORT_CODE, "five")] {
        h.smsc.enqueue(mo::gsm(from, to, text));
    }
    assert!(eventually(STEP, || store.message_count().unwrap() == 5).await);
    let t_text = clock::rfc3339_ms(t);

    // Newest first, every filter combinable.
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("".into(), vec!["five", "four", "three", "two", "one"]),
        (format!("to={SHORT_CODE}"), vec!["five", "three", "one"]),
        (format!("to={LONG_CODE}"), vec!["four", "two"]),
        (format!("from={ALICE}"), vec!["five", "two", "one"]),
        (format!("to={LONG_CODE}&from={BOB}"), vec!["four"]),
        (format!("to={SHORT_CODE}&from=000"), vec![]),
        (format!("since={t_text}"), vec!["five", "four"]),
        (format!("until={t_text}"), vec!["three", "two", "one"]),
        (format!("since={t_text}&from={ALICE}"), vec!["five"]),
        // Unix seconds are accepted too.
        (
            "since=0".into(),
            vec!["five", "four", "three", "two", "one"],
        ),
        ("since=32503680000".into(), vec![]), // year 3000
        ("limit=1".into(), vec!["five"]),
    ];
    for (query, want) in cases {
        let page = admin_json(&h, &format!("/api/messages?{query}")).await;
        assert_eq!(texts(&page), want, "GET /api/messages?{query}");
    }

    // Paging: `next` is passed back as `before` until it is null; pages neither overlap nor
    // skip, with and without a filter.
    for (filter, want) in [
        ("", vec!["five", "four", "three", "two", "one"]),
        (&*format!("&to={SHORT_CODE}"), vec!["five", "three", "one"]),
    ] {
        let mut seen = Vec::new();
        let mut before: Option<String> = None;
        let mut pages = 0;
        loop {
            let cursor = before
                .as_deref()
                .map(|b| format!("&before={b}"))
                .unwrap_or_default();
            let page = admin_json(&h, &format!("/api/messages?limit=2{filter}{cursor}")).await;
            let got = texts(&page);
            assert!(got.len() <= 2, "a page holds at most `limit`: {got:?}");
            seen.extend(got);
            pages += 1;
            assert!(pages <= 5, "paging does not end: {seen:?}");
            match page["next"].as_str() {
                Some(next) => {
                    assert!(
                        store::parse_id(next).is_some(),
                        "next is a message id: {next}"
                    );
                    before = Some(next.to_owned());
                }
                None => {
                    assert_eq!(page["next"], Value::Null);
                    break;
                }
            }
        }
        assert_eq!(seen, want, "pages of 2{filter}");
    }

    // Bad parameters: 400 with a JSON error naming the parameter.
    for (query, names) in [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1000000", "limit"),
        ("since=yesterday", "since"),
        ("since=2026-13-01T00:00:00Z", "since"),
        ("until=tomorrow", "until"),
        // Seconds whose milliseconds overflow u64: refused, not wrapped (or a panic).
        ("since=18446744073709552", "since"),
        ("until=18446744073709551615", "until"),
        ("before=nonsense", "before"),
    ] {
        let (status, body) = h.admin_get(&format!("/api/messages?{query}")).await;
        assert_eq!(status, 400, "GET /api/messages?{query}: {body}");
        let error: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("?{query}: error is not JSON ({e}): {body}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(names),
            "?{query}: the error should name {names:?}: {body}"
        );
    }
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_report_what_operators_watch() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "metrics"));
    assert!(h.sink.wait_for(1, STEP).await, "not delivered");
    // The sink counts a request before vmnd has read its answer; the attempt's metric is
    // recorded before the job leaves the queue, and the ack's before the sim can see the ack.
    let store = h.daemon().store.clone();
    assert!(eventually(STEP, || store.queue_depth() == 0).await);
    let smsc = h.smsc.clone();
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 1).await);

    // Bound: healthy. (The message being acked already implies the bind; poll anyway so the
    // state's publication is not raced.)
    let (status, body) = admin_until(&h, "/healthz", |status, _| status == 200).await;
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("healthz is JSON");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["store"], "open", "{health}");
    assert_eq!(health["carriers"]["sim"]["bound"], true, "{health}");

    let (status, metrics) = h.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "vmnd_deliver_sm_received_total",
        "vmnd_deliver_sm_acked_total",
        "vmnd_ack_latency_seconds",
        "vmnd_store_flush_seconds",
        "vmnd_webhook_attempts_total",
        "vmnd_queue_depth",
        "vmnd_bind_up",
    ] {
        // A sample line, not only its `# HELP`/`# TYPE` description.
        let sampled = metrics
            .lines()
            .any(|l| !l.starts_with('#') && l.starts_with(name));
        assert!(sampled, "/metrics has no sample of {name}:\n{metrics}");
    }
    h.stop_daemon().await;
}

/// A journal entry left by a previous run is processed at startup and its job runs once:
/// recovery announces the job and the dispatcher's startup scan finds it too, and the
/// dispatcher must not run it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_journal_entry_is_posted_exactly_once() {
    use vmnd::store::Store;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("var");
    {
        let store = Store::open(&data_dir, 16, true).expect("store");
        common::journal_gsm(&store, "919800000030", "567678", "left behind").await;
    }
    let smsc = vmnd::sim::Smsc::start(vmnd::sim::SmscConfig::default())
        .await
        .expect("sim");
    let sink = HttpSink::start(SinkMode::Ok).await.expect("sink");
    let text = common::config_text(&data_dir, smsc.addr().port(), &sink.url("/sms"), "");
    let daemon = vmnd::daemon::Daemon::start(common::parse_config(&text))
        .await
        .expect("daemon");
    assert!(sink.wait_for(1, Duration::from_secs(20)).await);
    // Give a second copy every chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sink.requests().len(),
        1,
        "{:?}",
        sink.requests()
            .iter()
            .map(|r| r.header("vmnd-event-id"))
            .collect::<Vec<_>>()
    );
    assert_eq!(daemon.store.queue_depth(), 0);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_memory_waits_in_the_journal_and_nothing_is_lost() {
    // Eight entries in memory at most: a window of 100 spills at once, so most messages reach
    // the processor by id, read back from the journal.
    let mut h = start_with(SinkMode::Ok, |text| {
        text.replace(
            "reassembly_timeout = \"2s\"",
            "reassembly_timeout = \"2s\"\nbacklog_in_memory = 8",
        )
    })
    .await;
    let n = 3000u64;
    h.smsc
        .enqueue_many((0..n).map(|i| mo::gsm(ALICE, SHORT_CODE, &format!("burst {i}"))));
    let smsc = h.smsc.clone();
    assert!(
        smsc.wait_until(STEP, |s| s.acked_ok == n).await,
        "only {:?} acknowledged",
        smsc.stats()
    );
    let sink = h.sink.clone();
    assert!(
        eventually(STEP, || sink.count() as u64 >= n).await,
        "only {} of {n} delivered",
        sink.count()
    );
    let texts: std::collections::HashSet<String> = sink_bodies(&h.sink)
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts.len() as u64, n, "every message once at least");
    let store = h.daemon().store.clone();
    assert_eq!(store.message_count().unwrap() as u64, n);
    assert!(
        eventually(STEP, || store.journal_depth() == 0).await,
        "journal depth {}",
        store.journal_depth()
    );
    let (_, metrics) = h.admin_get("/metrics").await;
    let spilled: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vmnd_backlog_spilled_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(spilled > 0.0, "nothing spilled:\n{metrics}");
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_webhook_delivers_a_burst_over_one_connection() {
    // `pipeline = 32` with the default `concurrency` of 32: one connection carries it all.
    // Without pipelining a burst opens up to 32.
    let mut h = start_with(SinkMode::Ok, |text| crm_with(text, "pipeline = 32")).await;
    let n = 1000u64;
    h.smsc
        .enqueue_many((0..n).map(|i| mo::gsm(ALICE, SHORT_CODE, &format!("burst {i}"))));
    let sink = h.sink.clone();
    assert!(
        eventually(STEP, || sink.count() as u64 >= n).await,
        "only {} of {n} delivered",
        sink.count()
    );
    assert_eq!(h.sink.connections(), 1);
    let bodies = sink_bodies(&h.sink);
    let texts: BTreeSet<&str> = bodies
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts.len() as u64, n, "every message at least once");
    for r in h.sink.requests().iter().take(5) {
        let sig = r.header("vmnd-signature").expect("signed");
        assert!(python_verifies(sig, &r.body), "{sig}");
    }
    h.stop_daemon().await;
}

/// The one stored message's id, once the processor has written it.
async fn only_message_id(h: &Harness) -> u64 {
    let store = h.daemon().store.clone();
    assert!(
        eventually(STEP, || store.message_count().unwrap() == 1).await,
        "the message was never stored"
    );
    let page = store
        .list_messages(&MessageFilter {
            limit: 1,
            ..MessageFilter::default()
        })
        .expect("list");
    store::parse_id(&page[0].id).expect("a message id")
}

/// Polls `/metrics` until the unlabelled sample `name` reads `want` (0 when absent); false
/// if it never does within [`STEP`].
async fn metric_becomes(h: &Harness, name: &str, want: f64) -> bool {
    let started = std::time::Instant::now();
    loop {
        let (_, metrics) = h.admin_get("/metrics").await;
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if value == want {
            return true;
        }
        if started.elapsed() > STEP {
            eprintln!("{name} is {value}, not {want}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A webhook job due now is never written to the `jobs` tree while its first attempt runs:
/// the message's journal entry is its durable copy and stays until the attempt settles it.
/// A failed attempt writes the job (for its retry) and lets the journal entry go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_its_first_attempt_is_held_by_its_journal_entry_until_it_is_written() {
    let mut h = start_with(SinkMode::NeverAnswer, |text| {
        crm_with(text, "timeout = \"2s\"")
    })
    .await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "held"));
    let sink = h.sink.clone();
    assert!(eventually(STEP, || sink.received() >= 1).await);
    let message_id = only_message_id(&h).await;
    let job_id = message_id << 8;
    let store = h.daemon().store.clone();
    // The request hangs: the job is in flight and exists only in memory.
    assert_eq!(store.job(job_id).expect("read"), None, "written too early");
    assert_eq!(
        store.journal_depth(),
        1,
        "the journal entry must hold the job"
    );
    assert!(metric_becomes(&h, "vmnd_jobs_held_in_memory", 1.0).await);
    // The attempt times out: the job is written for its retry, the entry released.
    sink.set_mode(SinkMode::Ok);
    assert!(
        eventually(STEP, || store.journal_depth() == 0).await,
        "journal depth {} after the failed attempt",
        store.journal_depth()
    );
    assert!(
        eventually(STEP, || sink.count() == 1).await,
        "never delivered"
    );
    assert!(
        eventually(STEP, || store.queue_depth() == 0
            && store.job(job_id).ok() == Some(None))
        .await
    );
    let outcomes: Vec<String> = store
        .attempts(job_id)
        .expect("attempts")
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes, ["failed", "delivered"]);
    assert!(metric_becomes(&h, "vmnd_jobs_held_in_memory", 0.0).await);
    h.stop_daemon().await;
}

/// A held job that cannot start (its webhook's circuit is open, no fallback) is written to the
/// `jobs` tree after a short wait, so its journal entry does not stay for the whole outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_job_that_waits_is_written_and_releases_its_journal_entry() {
    let mut h = start_with(SinkMode::Status(503), |text| {
        crm_with(text, "breaker_failures = 1\nbreaker_probe = \"1h\"")
    })
    .await;
    h.smsc
        .enqueue(mo::gsm(ALICE, SHORT_CODE, "opens the circuit"));
    let sink = h.sink.clone();
    assert!(eventually(STEP, || sink.received() >= 1).await);
    let store = h.daemon().store.clone();
    assert!(eventually(STEP, || store.journal_depth() == 0).await);
    h.smsc
        .enqueue_many((0..3).map(|i| mo::gsm(BOB, SHORT_CODE, &format!("waits {i}"))));
    assert!(eventually(STEP, || store.message_count().unwrap() == 4).await);
    // Untried (the circuit is open for an hour), yet written and released within seconds.
    assert!(
        eventually(STEP, || store.journal_depth() == 0).await,
        "journal depth {}: waiting jobs still hold their entries",
        store.journal_depth()
    );
    let stored = store
        .list_messages(&MessageFilter {
            limit: 10,
            ..MessageFilter::default()
        })
        .expect("list")
        .into_iter()
        .filter(|m| m.text.starts_with("waits"))
        .filter(|m| {
            let id = store::parse_id(&m.id).expect("id");
            store
                .job(id << 8)
                .ok()
                .flatten()
                .is_some_and(|j| j.attempts == 0)
        })
        .count();
    assert_eq!(stored, 3, "each waiting job is in the jobs tree, untried");
    assert_eq!(sink.received(), 1, "the open circuit let nothing through");
    assert!(metric_becomes(&h, "vmnd_jobs_held_in_memory", 0.0).await);
    h.stop_daemon().await;
}

/// Recovery runs before the dispatcher: a webhook job of a recovered entry is written to the
/// `jobs` tree (the dispatcher's startup scan finds it) and not handed over in memory, so a
/// large backlog at startup cannot pile up records in the scheduler's channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_writes_its_webhook_jobs_instead_of_holding_them() {
    use std::sync::Arc;
    use vmnd::outbound::dispatcher::Scheduler;
    use vmnd::processor::Processor;
    use vmnd::routing::router::Router;
    use vmnd::store::Store;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("var");
    let config = Arc::new(parse_config(&common::config_text(
        &data_dir,
        2775,
        "http://127.0.0.1:9/sms",
        "",
    )));
    let store = Store::open(&data_dir, 16, true).expect("store");
    let journal_id = common::journal_gsm(&store, ALICE, SHORT_CODE, "left behind").await;
    let (scheduler, mut announced) = Scheduler::channel();
    let router = Arc::new(arc_swap::ArcSwap::from_pointee(Router::new(&config)));
    let mut processor = Processor::new(store.clone(), &config, router, scheduler);
    assert_eq!(processor.recover().expect("recover"), 1);
    let job = store
        .job(journal_id << 8)
        .expect("read")
        .expect("the job is written");
    assert_eq!(job.webhook, "crm");
    assert!(
        announced.try_recv().is_err(),
        "nothing is handed over in memory during recovery"
    );
    assert_eq!(processor.holds().open(), 0);
    assert_eq!(
        store.journal_depth(),
        0,
        "released once written and flushed"
    );
}

/// A concatenated message leaves `assembled` records of its parts (so a replay after a crash
/// is absorbed); once the parts' journal entries are released, the processor drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_assembled_parts_go_once_their_journal_entries_are_released() {
    let mut h = start_with(SinkMode::Ok, |text| text).await;
    let text = "A long message in three parts. ".repeat(14);
    h.smsc
        .enqueue_many(mo::concat_udh(ALICE, SHORT_CODE, &text, 42, false));
    let sink = h.sink.clone();
    assert!(
        eventually(STEP, || sink.count() == 1).await,
        "never delivered"
    );
    let bodies = sink_bodies(&h.sink);
    assert_eq!(bodies[0]["parts"], 3);
    let store = h.daemon().store.clone();
    assert!(
        eventually(STEP, || store.journal_depth() == 0
            && store.assembled_records() == 0)
        .await,
        "journal depth {}, assembled records {}",
        store.journal_depth(),
        store.assembled_records()
    );
    h.stop_daemon().await;
}

/// A UDH-concatenated part built by hand: `user_data` after a UDH with an 8-bit reference.
fn udh_part(
    data_coding: u8,
    reference: u16,
    total: u8,
    seq: u8,
    user_data: &[u8],
) -> vmnd::smpp::pdu::ShortMessage {
    let mut sm = mo::binary(ALICE, SHORT_CODE, &[]);
    sm.data_coding = data_coding;
    sm.esm_class = vmnd::smpp::pdu::esm_class::UDHI;
    let mut data = vmnd::smpp::udh::concat_udh(reference, total, seq, false);
    data.extend_from_slice(user_data);
    sm.short_message = data.into();
    sm
}

/// A phone reuses a concatenation reference (it has 256) for a new message while the old one
/// still misses a part: the old one is delivered as it is, incomplete, and the new one whole;
/// neither's text is mixed into the other's or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_reference_keeps_both_messages_apart() {
    let mut h = start_with(SinkMode::Ok, |text| text).await;
    let septets = |text: &str| mo::gsm_septets(text);
    // Old: parts 1 and 2 of 3 (part 3 never comes). New: all three, same reference.
    h.smsc.enqueue_many([
        udh_part(0, 5, 3, 1, &septets("old one ")),
        udh_part(0, 5, 3, 2, &septets("old two ")),
        udh_part(0, 5, 3, 1, &septets("new one ")),
        udh_part(0, 5, 3, 2, &septets("new two ")),
        udh_part(0, 5, 3, 3, &septets("new three")),
    ]);
    let sink = h.sink.clone();
    assert!(
        eventually(STEP, || sink.count() == 2).await,
        "{} deliveries",
        sink.count()
    );
    let mut bodies = sink_bodies(&h.sink);
    bodies.sort_by_key(|b| b["text"].as_str().unwrap_or_default().to_string());
    assert_eq!(bodies[0]["text"], "new one new two new three");
    assert_eq!(bodies[0]["parts"], 3);
    assert!(bodies[0].get("complete").is_none(), "{}", bodies[0]);
    assert_eq!(bodies[1]["text"], "old one old two ");
    assert_eq!(bodies[1]["complete"], false);
    assert_eq!(bodies[1]["missing_parts"], serde_json::json!([3]));
    // Nothing more comes after the reassembly timeout (2 s): no group was left open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.count(), 2);
    h.stop_daemon().await;
}

/// Senders cut where the part is full, even inside a GSM escape pair or a UTF-16 surrogate
/// pair: the parts are joined before they are decoded, so the character survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn characters_split_between_parts_are_joined() {
    let mut h = start_with(SinkMode::Ok, |text| text).await;
    // "Pay 5€ now": ESC ends part 1, the euro's code (0x65) starts part 2.
    let mut gsm_one = mo::gsm_septets("Pay 5");
    gsm_one.push(0x1B);
    let mut gsm_two = vec![0x65];
    gsm_two.extend(mo::gsm_septets(" now"));
    // "Hi 😀!": the high surrogate ends part 1, the low one starts part 2.
    let ucs2 = vmnd::smpp::text::encode_ucs2("Hi 😀!");
    let (ucs2_one, ucs2_two) = ucs2.split_at(8);
    h.smsc.enqueue_many([
        udh_part(0x00, 21, 2, 1, &gsm_one),
        udh_part(0x00, 21, 2, 2, &gsm_two),
        udh_part(0x08, 22, 2, 2, ucs2_two),
        udh_part(0x08, 22, 2, 1, ucs2_one),
    ]);
    let sink = h.sink.clone();
    assert!(eventually(STEP, || sink.count() == 2).await);
    let texts: BTreeSet<String> = sink_bodies(&h.sink)
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        texts,
        BTreeSet::from(["Pay 5€ now".to_string(), "Hi 😀!".to_string()])
    );
    h.stop_daemon().await;
}

/// A clean stop lets the request in flight finish and writes down the jobs still held in
/// memory, so their journal entries go: the next start sends each message once more only if
/// it was never answered, and runs the written jobs as they were planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_settles_the_request_in_flight_and_writes_down_held_jobs() {
    let one_at_a_time = |text| crm_with(text, "concurrency = 1");
    let mut h = start_with(SinkMode::SlowOk(Duration::from_millis(800)), one_at_a_time).await;
    h.smsc
        .enqueue_many((0..3).map(|i| mo::gsm(ALICE, SHORT_CODE, &format!("stop {i}"))));
    let store = h.daemon().store.clone();
    let sink = h.sink.clone();
    assert!(
        eventually(STEP, || sink.received() >= 1
            && store.message_count().unwrap() == 3)
        .await
    );
    drop(store);
    h.stop_daemon().await;
    assert_eq!(sink.count(), 1, "the request in flight was answered");
    {
        let store = vmnd::store::Store::open(&h.dir.path().join("var"), 8, false).expect("open");
        assert_eq!(store.journal_depth(), 0, "every journal entry released");
        assert_eq!(store.queue_depth(), 2, "the two untried jobs written down");
    }
    h.sink.set_mode(SinkMode::Ok);
    h.daemon = Some(
        Daemon::start(parse_config(&one_at_a_time(h.config_text(""))))
            .await
            .expect("daemon restarts"),
    );
    assert!(eventually(STEP, || sink.count() >= 3).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: BTreeSet<String> = sink
        .requests()
        .iter()
        .map(|r| body_json(r)["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(sink.count(), 3, "nothing sent twice");
    assert_eq!(ids.len(), 3);
    h.stop_daemon().await;
}

/// The admin server's limits on clients that hold connections: one that sends nothing, and a
/// keep-alive one idle after its request, are closed after `HEADER_TIMEOUT`; past `MAX_CONNECTIONS` open at once a new connection is
/// closed at once, and once some go, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_that_hold_on_are_closed_or_capped() {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    let addr = h.daemon().admin_addr;
    let closed_within = |mut s: TcpStream, limit: Duration| async move {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(limit, s.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    let silent = TcpStream::connect(addr).await.expect("connect");
    // A keep-alive connection that made one request and went quiet: closed as well.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: vmnd\r\n\r\n")
            .await
            .expect("write");
        // 200, or 503 while the carrier is not bound yet: either way, a response.
        let mut head = [0u8; 9];
        idle.read_exact(&mut head).await.expect("response");
        assert_eq!(&head, b"HTTP/1.1 ");
    }
    let limit = vmnd::admin::HEADER_TIMEOUT + Duration::from_secs(10);
    let (silent_closed, idle_closed) = tokio::join!(closed_within(silent, limit), async {
        // Read past the response's rest first: only the close counts.
        let mut idle = idle;
        let mut rest = [0u8; 4096];
        loop {
            match tokio::time::timeout(limit, idle.read(&mut rest)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        }
    });
    assert!(
        silent_closed,
        "a connection that sent nothing was kept open"
    );
    assert!(
        idle_closed,
        "a keep-alive connection idle after its request was kept open"
    );

    let mut held = Vec::new();
    for _ in 0..vmnd::admin::MAX_CONNECTIONS {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // The server takes them in order; the last one must have been accepted before the next.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(extra, Duration::from_secs(5)).await,
        "a connection past the cap was kept"
    );
    // The server sees these close when it next reads them; then a request gets through.
    held.truncate(10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut served = false;
    for _ in 0..50 {
        if h.admin_get("/healthz").await.0 == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "no admin request served after connections were freed"
    );
    drop(held);
}
