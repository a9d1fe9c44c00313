//! Consent end to end through the simulator: an opt-out cancels replies already queued or
//! scheduled (they are never sent, and recorded as suppressed), a repeated STOP changes the
//! ledger once, START after STOP lets replies through again, and the ledger and contacts are
//! visible through the admin API.

mod common;

use std::time::Duration;

use common::{Harness, eventually};
use vmnd::http_sink::SinkMode;
use vmnd::sim::{SmscConfig, mo};
use vmnd::smpp::text::decode_text;

const LONG: Duration = Duration::from_secs(30);
const VMN: &str = "9876543210";

/// A keyword whose reply waits two seconds, and one answered at once.
const KEYWORDS: &str = r#"
[[number.keyword]]
keyword = "LATER"
reply = "Your delayed answer"
reply_after = "2s"
webhook = "crm"

[[number.keyword]]
keyword = "NOW"
reply = "Your answer now"
webhook = "crm"
"#;

fn texts_to(h: &Harness, to: &str) -> Vec<String> {
    h.smsc
        .submitted()
        .iter()
        .filter(|sm| sm.dest.addr == to)
        .map(|sm| decode_text(sm.data_coding, &sm.short_message, false, 0).text)
        .collect()
}

async fn send_and_wait(h: &Harness, from: &str, text: &str) {
    let n = h.smsc.stats().enqueued + 1;
    h.smsc.enqueue(mo::gsm(from, VMN, text));
    assert!(h.smsc.wait_until(LONG, |s| s.acked_ok == n).await);
    // Processed: its record is stored, and the consent change and jobs were written before it.
    // (Not "the webhook got n requests": consent events add requests of their own, so that
    // count can run ahead of the messages processed.)
    let store = h.daemon().store.clone();
    assert!(eventually(LONG, || store.message_count().unwrap() as u64 >= n).await);
    assert!(eventually(LONG, || h.sink.count() as u64 >= n).await);
}

async fn json(h: &Harness, path: &str) -> serde_json::Value {
    let (status, body) = h.admin_get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_cancels_a_scheduled_reply() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, KEYWORDS).await;
    let person = "919811110001";
    send_and_wait(&h, person, "later").await;
    send_and_wait(&h, person, "STOP").await;
    // The reply was due two seconds after LATER: wait well past it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        eventually(LONG, || h.daemon().store.queue_depth() == 0).await,
        "the suppressed job leaves the queue"
    );
    assert!(
        texts_to(&h, person).is_empty(),
        "{:?}",
        texts_to(&h, person)
    );
    let outbound = json(&h, "/api/outbound").await;
    let record = &outbound["outbound"][0];
    assert_eq!(record["state"], "suppressed", "{outbound}");
    assert_eq!(record["to"], person);
    // A new message from the person still reaches the webhook, but its reply is suppressed.
    send_and_wait(&h, person, "now").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(eventually(LONG, || h.daemon().store.queue_depth() == 0).await);
    assert!(texts_to(&h, person).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_stop_changes_once_and_start_lets_replies_through() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, KEYWORDS).await;
    let person = "919811110002";
    send_and_wait(&h, person, "NOW").await;
    assert!(eventually(LONG, || texts_to(&h, person).len() == 1).await);
    send_and_wait(&h, person, "stop").await;
    send_and_wait(&h, person, "STOP!").await;
    let ledger = json(&h, &format!("/api/numbers/{VMN}/ledger?msisdn={person}")).await;
    let entries = ledger["entries"].as_array().expect("entries").clone();
    let changes: Vec<_> = entries.iter().filter(|e| e["from"] != e["to"]).collect();
    assert_eq!(changes.len(), 1, "one change for two STOPs: {ledger}");
    assert_eq!(changes[0]["to"], "opted_out");
    assert_eq!(changes[0]["matched"], "STOP");
    let contacts = json(&h, &format!("/api/numbers/{VMN}/contacts?state=opted_out")).await;
    assert_eq!(contacts["contacts"][0]["msisdn"], person, "{contacts}");
    // START: opted in again, replies flow.
    send_and_wait(&h, person, "start").await;
    send_and_wait(&h, person, "now").await;
    assert!(
        eventually(LONG, || texts_to(&h, person).len() == 2).await,
        "{:?}",
        texts_to(&h, person)
    );
    let contact = json(&h, &format!("/api/numbers/{VMN}/contacts?state=opted_in")).await;
    assert_eq!(contact["contacts"][0]["msisdn"], person, "{contact}");
}

/// Keywords and consent settings with confirmations, help and events.
const WITH_REPLIES: &str = r#"
[[number.keyword]]
keyword = "NOW"
reply = "Your answer now"
webhook = "crm"

[[number.keyword]]
keyword = "JOIN"
subscribe = "double"
confirm_reply = "Reply YES within 1 hour to confirm"
confirm_within = "1h"
webhook = "crm"

[[number.keyword]]
keyword = "CLUB"
subscribe = true
reply = "Welcome to the club"
webhook = "crm"

[optout]
stop_reply = "You are unsubscribed from {to}. Reply START to join again."
start_reply = "Welcome back to {to}. Reply STOP to unsubscribe."
help_reply = "{to}: reply STOP to unsubscribe."
webhook = "crm"
intent_phrases = true
"#;

fn events(h: &Harness, from: &str) -> Vec<String> {
    common::sink_bodies(&h.sink)
        .iter()
        .filter(|b| b["from"] == from)
        .map(|b| b["event"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_confirmation_per_change_help_and_events() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, WITH_REPLIES).await;
    let person = "919811110003";
    send_and_wait(&h, person, "STOP").await;
    send_and_wait(&h, person, "stop").await;
    send_and_wait(&h, person, "HELP").await;
    send_and_wait(&h, person, "now").await;
    // STOP twice: one confirmation; HELP and NOW to an opted-out person: suppressed.
    assert!(eventually(LONG, || h.daemon().store.queue_depth() == 0).await);
    let stop_confirmation = "You are unsubscribed from 9876543210. Reply START to join again.";
    assert_eq!(texts_to(&h, person), vec![stop_confirmation.to_string()]);
    send_and_wait(&h, person, "START").await;
    send_and_wait(&h, person, "HELP").await;
    assert!(
        eventually(LONG, || texts_to(&h, person).len() == 3).await,
        "{:?}",
        texts_to(&h, person)
    );
    assert_eq!(
        texts_to(&h, person)[1..],
        [
            "Welcome back to 9876543210. Reply STOP to unsubscribe.".to_string(),
            "9876543210: reply STOP to unsubscribe.".to_string()
        ]
    );
    // The consent webhook got one optout and one optin event, with what changed.
    assert!(
        eventually(LONG, || events(&h, person)
            .iter()
            .filter(|e| *e != "message")
            .count()
            == 2)
        .await,
        "{:?}",
        events(&h, person)
    );
    let bodies = common::sink_bodies(&h.sink);
    let optout = bodies
        .iter()
        .find(|b| b["event"] == "optout" && b["from"] == person)
        .expect("optout event");
    assert_eq!(optout["consent"]["state"], "opted_out");
    assert_eq!(optout["consent"]["matched"], "STOP");
    let ledger = json(&h, &format!("/api/numbers/{VMN}/ledger?msisdn={person}")).await;
    let first = &ledger["entries"][0];
    assert_eq!(
        (first["to"].as_str(), first["confirmation_sent"].as_bool()),
        (Some("opted_out"), Some(true)),
        "{ledger}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_opt_in_and_opt_out_in_words() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, WITH_REPLIES).await;
    let person = "919811110004";
    send_and_wait(&h, person, "JOIN").await;
    assert!(eventually(LONG, || texts_to(&h, person).len() == 1).await);
    assert_eq!(
        texts_to(&h, person)[0],
        "Reply YES within 1 hour to confirm"
    );
    let pending = json(&h, &format!("/api/numbers/{VMN}/contacts?state=pending")).await;
    assert_eq!(pending["contacts"][0]["msisdn"], person, "{pending}");
    send_and_wait(&h, person, "yes").await;
    let opted_in = json(&h, &format!("/api/numbers/{VMN}/contacts?state=opted_in")).await;
    assert_eq!(opted_in["contacts"][0]["msisdn"], person, "{opted_in}");
    // "don't stop" is not an opt-out; "please stop texting me" is.
    send_and_wait(&h, person, "don't stop the music").await;
    let still = json(&h, &format!("/api/numbers/{VMN}/contacts?state=opted_in")).await;
    assert_eq!(still["contacts"][0]["msisdn"], person, "{still}");
    send_and_wait(&h, person, "Please stop texting me!").await;
    let ledger = json(&h, &format!("/api/numbers/{VMN}/ledger?msisdn={person}")).await;
    let last = ledger["entries"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (last["to"].as_str(), last["matched"].as_str()),
        (Some("opted_out"), Some("stop texting me")),
        "{ledger}"
    );
    // A subscribe keyword opts in at once.
    let other = "919811110005";
    send_and_wait(&h, other, "club").await;
    let opted_in = json(&h, &format!("/api/numbers/{VMN}/contacts?state=opted_in")).await;
    let contacts = opted_in["contacts"].as_array().cloned().unwrap_or_default();
    assert!(
        contacts
            .iter()
            .any(|c| c["msisdn"] == other && c["source_keyword"] == "CLUB"),
        "{opted_in}"
    );
}

/// With a de-duplication window, a carrier's redelivery (the same message again, right after
/// it) is folded into the first; a repeat after another message from the same person is a
/// message of its own: STOP, START, STOP leaves them opted out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_folds_redeliveries_not_changes_of_mind() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, KEYWORDS).await;
    h.stop_daemon().await;
    let text = h.config_text(KEYWORDS).replace(
        "reassembly_timeout = \"2s\"",
        "reassembly_timeout = \"2s\"\ndedup_window = \"5m\"",
    );
    h.daemon = Some(
        vmnd::daemon::Daemon::start(common::parse_config(&text))
            .await
            .expect("daemon"),
    );
    let person = "919811110009";
    h.smsc
        .enqueue_many([mo::gsm(person, VMN, "NOW"), mo::gsm(person, VMN, "NOW")]);
    assert!(h.smsc.wait_until(LONG, |s| s.acked_ok == 2).await);
    assert!(eventually(LONG, || texts_to(&h, person).len() == 1).await);
    h.smsc.enqueue_many([
        mo::gsm(person, VMN, "STOP"),
        mo::gsm(person, VMN, "START"),
        mo::gsm(person, VMN, "STOP"),
    ]);
    assert!(h.smsc.wait_until(LONG, |s| s.acked_ok == 5).await);
    let mut changes = Vec::new();
    for _ in 0..200 {
        let ledger = json(&h, &format!("/api/numbers/{VMN}/ledger?msisdn={person}")).await;
        changes = ledger["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["from"] != e["to"])
            .map(|e| e["to"].as_str().unwrap_or("").to_string())
            .collect();
        if changes.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(changes.len(), 3, "{changes:?}");
    let contacts = json(&h, &format!("/api/numbers/{VMN}/contacts?state=opted_out")).await;
    assert_eq!(contacts["contacts"][0]["msisdn"], person, "{contacts}");
    // The redelivered NOW was stored and answered once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts_to(&h, person).len(), 1);
}
