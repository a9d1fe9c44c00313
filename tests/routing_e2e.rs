//! Several campaigns on one number, end to end through the simulator: keywords and aliases,
//! the longest match, a keyword before its start and after its expiry, a poll with re-votes
//! and an invalid answer, replies (immediate, delayed, windowed), forwards to a phone, the
//! outbound SMS engine's retries on ESME_RTHROTTLED and permanent refusals, receipts
//! correlated to replies, and the explanations of `vmnd route` and `POST /api/route`.

mod common;

use std::time::Duration;

use chrono::{TimeZone, Timelike, Utc};
use common::{Harness, eventually, sink_bodies};
use vmnd::http_sink::SinkMode;
use vmnd::sim::{SmscConfig, mo};
use vmnd::smpp::pdu::status;
use vmnd::smpp::receipt::Receipt;
use vmnd::smpp::text::decode_text;

const LONG: Duration = Duration::from_secs(30);
const VMN: &str = "9876543210";

/// Campaigns on 9876543210 (the harness's last number, so these tables belong to it).
fn campaigns(window: &str) -> String {
    format!(
        r#"
[[number.keyword]]
keyword = "JOIN"
aliases = ["SUBSCRIBE"]
tenant = "acme"
inbox = "summer"
reply = "Thanks {{from}}! You joined {{inbox}}. Details: https://acme.example/s"
webhook = "crm"
forward_to = ["919800000099"]

[[number.keyword]]
keyword = "JOIN CLUB"
tenant = "acme"
inbox = "club"
reply = "Welcome to the club, {{args}}"
reply_after = "1s"

[[number.keyword]]
keyword = "OFFER"
tenant = "globex"
expires = "2020-01-01T00:00:00+05:30"
expiry_reply = "Sorry, the offer has ended."
webhook = "crm"

[[number.keyword]]
keyword = "LATER"
starts = "2099-01-01T00:00:00Z"
reply = "too early"

[[number.keyword]]
keyword = "NIGHT"
reply = "windowed reply"
reply_window = "{window}"

[[number.keyword]]
keyword = "VOTE"
kind = "poll"
options = ["A", "B", "C"]
reply = "Thanks, you voted {{args}}"
invalid_reply = "Please answer one of {{options}}"
webhook = "crm"
"#
    )
}

/// A reply window that opens two hours from now (UTC) and lasts an hour: closed now.
fn closed_window() -> String {
    let h = (Utc::now().hour() + 2) % 24;
    format!("{h:02}:00-{:02}:00 UTC", (h + 1) % 24)
}

fn submitted_texts(h: &Harness) -> Vec<(String, String, String)> {
    h.smsc
        .submitted()
        .iter()
        .map(|sm| {
            let text = decode_text(sm.data_coding, &sm.short_message, false, 0).text;
            (sm.source.addr.clone(), sm.dest.addr.clone(), text)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_campaigns_run_on_one_number() {
    let h = Harness::start(
        SmscConfig::default(),
        SinkMode::Ok,
        &campaigns(&closed_window()),
    )
    .await;
    h.smsc.enqueue(mo::gsm("919812345678", VMN, "join Summer"));
    h.smsc.enqueue(mo::gsm("919812345679", VMN, "SUBSCRIBE!"));
    h.smsc
        .enqueue(mo::gsm("919812345680", VMN, "Join  Club   Alice"));
    h.smsc.enqueue(mo::gsm("919812345681", VMN, "offer please"));
    h.smsc.enqueue(mo::gsm("919812345682", VMN, "later maybe"));
    h.smsc.enqueue(mo::gsm("919812345683", VMN, "night owl"));

    // Webhook: JOIN twice (keyword and alias), OFFER expired, LATER to the default.
    assert!(h.sink.wait_for(4, LONG).await, "{:?}", sink_bodies(&h.sink));
    let bodies = sink_bodies(&h.sink);
    let by_from = |from: &str| {
        bodies
            .iter()
            .find(|b| b["from"] == from)
            .cloned()
            .unwrap_or_default()
    };
    let join = by_from("919812345678");
    assert_eq!(
        (
            join["event"].as_str(),
            join["keyword"].as_str(),
            join["inbox"].as_str(),
            join["args"].as_str()
        ),
        (
            Some("message"),
            Some("JOIN"),
            Some("summer"),
            Some("Summer")
        )
    );
    assert_eq!(by_from("919812345679")["keyword"], "JOIN");
    let offer = by_from("919812345681");
    assert_eq!(
        (offer["event"].as_str(), offer["keyword"].as_str()),
        (Some("expired"), Some("OFFER"))
    );
    let later = by_from("919812345682");
    assert_eq!(
        (later["event"].as_str(), later["keyword"].is_null()),
        (Some("message"), true),
        "{later}"
    );

    // SMS: two JOIN replies, one forward per JOIN, the expiry reply, the delayed club reply.
    assert!(
        eventually(LONG, || h.smsc.submitted().len() >= 6).await,
        "{:?}",
        submitted_texts(&h)
    );
    let sent = submitted_texts(&h);
    let has = |to: &str, text: &str| {
        sent.iter()
            .any(|(from, t_to, t)| from == VMN && t_to == to && t == text)
    };
    assert!(
        has(
            "919812345678",
            "Thanks 919812345678! You joined summer. Details: https://acme.example/s"
        ),
        "{sent:?}"
    );
    assert!(
        has(
            "919812345679",
            "Thanks 919812345679! You joined summer. Details: https://acme.example/s"
        ),
        "{sent:?}"
    );
    assert!(has("919800000099", "919812345678: join Summer"), "{sent:?}");
    assert!(
        has("919812345681", "Sorry, the offer has ended."),
        "{sent:?}"
    );
    assert!(
        has("919812345680", "Welcome to the club, Alice"),
        "{sent:?}"
    );
    // Nothing for LATER (not started: default has no reply) nor NIGHT (window closed).
    assert!(
        !sent
            .iter()
            .any(|(_, to, _)| to == "919812345682" || to == "919812345683"),
        "{sent:?}"
    );
    // The source address of a 10-digit long code: national (TON 2), ISDN (NPI 1).
    let sm = &h.smsc.submitted()[0];
    assert_eq!((sm.source.ton, sm.source.npi, sm.esm_class), (2, 1, 0));
    // The windowed reply waits in the durable queue for the window to open (the other SMS
    // jobs leave the queue once their submit_sm_resp is recorded).
    let sms_jobs = || {
        h.daemon()
            .store
            .job_schedule()
            .expect("queue")
            .into_iter()
            .filter(|(_, _, q)| q.starts_with("sms:"))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(LONG, || sms_jobs().len() == 1).await,
        "{:?}",
        sms_jobs()
    );
    assert!(
        sms_jobs()[0].0 > vmnd::clock::now_ms() + 3_600_000,
        "due at the next opening, over an hour away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_tallies_revotes_invalid_answers_and_csv() {
    let h = Harness::start(
        SmscConfig::default(),
        SinkMode::Ok,
        &campaigns(&closed_window()),
    )
    .await;
    for (from, text) in [
        ("919800000001", "VOTE A"),
        ("919800000002", "vote b"),
        ("919800000001", "Vote B"),
        ("919800000003", "VOTE Z"),
    ] {
        h.smsc.enqueue(mo::gsm(from, VMN, text));
        // One at a time: a re-vote must come after the first vote.
        let n = h.smsc.stats().enqueued;
        assert!(h.smsc.wait_until(LONG, |s| s.acked_ok == n).await);
        assert!(eventually(LONG, || h.sink.count() as u64 == n).await);
    }
    let (status, body) = h.admin_get(&format!("/api/numbers/{VMN}/polls/VOTE")).await;
    assert_eq!(status, 200, "{body}");
    let tally: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(tally["voters"], 2);
    assert_eq!(
        tally["options"],
        serde_json::json!([{"option":"A","votes":0},{"option":"B","votes":2},{"option":"C","votes":0}])
    );
    let (status, csv) = h
        .admin_get(&format!("/api/numbers/{VMN}/polls/vote?format=csv"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(csv, "option,votes\r\nA,0\r\nB,2\r\nC,0\r\n");
    assert!(eventually(LONG, || h.smsc.submitted().len() == 4).await);
    let sent = submitted_texts(&h);
    assert!(
        sent.iter()
            .any(|(_, to, t)| to == "919800000003" && t == "Please answer one of A, B, C"),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(_, to, t)| to == "919800000002" && t == "Thanks, you voted b"),
        "{sent:?}"
    );
    let (status, _) = h.admin_get(&format!("/api/numbers/{VMN}/polls/JOIN")).await;
    assert_eq!(status, 404, "JOIN is not a poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_submit_is_retried_and_its_receipt_is_correlated() {
    let cfg = SmscConfig {
        submit_statuses: vec![status::ESME_RTHROTTLED, status::ESME_RMSGQFUL],
        ..Default::default()
    };
    let extra = "\n[[number.keyword]]\nkeyword = \"HI\"\nreply = \"Hello {from}\"\n";
    let h = Harness::start(cfg, SinkMode::Ok, extra).await;
    h.smsc.enqueue(mo::gsm("919812340000", VMN, "hi"));
    assert!(
        eventually(LONG, || h.smsc.submitted().len() == 1).await,
        "{:?}",
        h.smsc.stats()
    );
    assert_eq!(
        h.smsc.stats().submits_received,
        3,
        "two refusals, then accepted"
    );
    let outbound = || async {
        let (_, body) = h.admin_get("/api/outbound").await;
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["outbound"][0].clone()
    };
    let mut record = outbound().await;
    for _ in 0..100 {
        if record["state"] == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        record = outbound().await;
    }
    assert_eq!(record["state"], "sent", "{record}");
    assert_eq!(record["segments"][0]["carrier_message_id"], "sim-1");
    // The handset's receipt for sim-1 comes back as a deliver_sm.
    h.smsc.enqueue(mo::receipt(
        "919812340000",
        VMN,
        &Receipt {
            id: "sim-1".into(),
            stat: "DELIVRD".into(),
            ..Default::default()
        },
    ));
    let mut delivered = false;
    for _ in 0..200 {
        if outbound().await["state"] == "delivered" {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "{}", outbound().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_submit_refusal_is_dead_lettered_and_long_replies_are_segmented() {
    let cfg = SmscConfig {
        submit_statuses: vec![status::ESME_RINVDSTADR],
        ..Default::default()
    };
    let long = "This reply is long enough to need two segments. ".repeat(4);
    let extra = format!(
        "\n[[number.keyword]]\nkeyword = \"HI\"\nreply = \"{}\"\n",
        long.trim_end()
    );
    let h = Harness::start(cfg, SinkMode::Ok, &extra).await;
    h.smsc.enqueue(mo::gsm("919812340001", VMN, "hi"));
    let dead = || async { h.admin_get("/api/deadletters").await.1 };
    let mut body = String::new();
    for _ in 0..300 {
        body = dead().await;
        if body.contains("ESME_RINVDSTADR") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains("ESME_RINVDSTADR"), "{body}");
    let (_, outbound) = h.admin_get("/api/outbound").await;
    assert!(outbound.contains("\"state\":\"failed\""), "{outbound}");
    // The second message's reply goes out in two concatenated segments.
    h.smsc.enqueue(mo::gsm("919812340002", VMN, "hi"));
    assert!(
        eventually(LONG, || h.smsc.submitted().len() == 2).await,
        "{:?}",
        h.smsc.stats()
    );
    let segments = h.smsc.submitted();
    assert!(
        segments
            .iter()
            .all(|s| s.esm_class == 0x40 && s.dest.addr == "919812340002")
    );
    let text: String = segments
        .iter()
        .map(|s| {
            let (udh, rest) = vmnd::smpp::udh::parse_udh(&s.short_message).expect("udh");
            decode_text(s.data_coding, rest, false, udh.len).text
        })
        .collect();
    assert_eq!(text, long.trim_end());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_through_the_admin_api() {
    let h = Harness::start(
        SmscConfig::default(),
        SinkMode::Ok,
        &campaigns(&closed_window()),
    )
    .await;
    let post = |body: String| {
        let addr = h.daemon().admin_addr;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!(
                "POST /api/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        }
    };
    let answer = post(r#"{"to":"9876543210","from":"+919812345678","text":"offer now","at":"2026-11-28T10:00:00Z"}"#.into()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""decision":"expired""#), "{answer}");
    assert!(answer.contains("expiry_reply"), "{answer}");
    let answer = post(r#"{"to":"9876543210","from":"1","text":"hello"}"#.into()).await;
    assert!(
        answer.contains(r#""decision":"default""#) && answer.contains("not matched"),
        "{answer}"
    );
    let answer = post(r#"{"to":"9876543210"}"#.into()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// Keyword lifetimes are exact to the second, in the keyword's own offset.
#[test]
fn start_and_expiry_at_the_boundary_second_in_two_time_zones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = r#"
[[number.keyword]]
keyword = "DIWALI"
starts = "2026-11-01T00:00:00+05:30"
expires = "2026-11-10T23:59:59+05:30"
expiry_reply = "Diwali is over"

[[number.keyword]]
keyword = "BLACKFRIDAY"
starts = "2026-11-27T00:00:00-05:00"
expires = "2026-11-28T00:00:00-05:00"
"#;
    let text = common::config_text(
        &dir.path().join("var"),
        2775,
        "http://127.0.0.1:9/sms",
        extra,
    );
    let config = common::parse_config(&text);
    let router = vmnd::routing::router::Router::new(&config);
    let decide = |text: &str, at: chrono::DateTime<Utc>| {
        vmnd::actions::explain(&router, VMN, "919800000000", text, at, None).decision
    };
    let ist = chrono::FixedOffset::east_opt(5 * 3600 + 1800).expect("offset");
    let est = chrono::FixedOffset::west_opt(5 * 3600).expect("offset");
    let at = |tz: chrono::FixedOffset, y, mo, d, h, mi, s| {
        tz.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("time")
            .with_timezone(&Utc)
    };
    assert_eq!(
        decide("diwali", at(ist, 2026, 10, 31, 23, 59, 59)),
        "default"
    );
    assert_eq!(decide("diwali", at(ist, 2026, 11, 1, 0, 0, 0)), "keyword");
    assert_eq!(
        decide("diwali", at(ist, 2026, 11, 10, 23, 59, 58)),
        "keyword"
    );
    assert_eq!(
        decide("diwali", at(ist, 2026, 11, 10, 23, 59, 59)),
        "expired"
    );
    assert_eq!(
        decide("blackfriday", at(est, 2026, 11, 26, 23, 59, 59)),
        "default"
    );
    assert_eq!(
        decide("blackfriday", at(est, 2026, 11, 27, 0, 0, 0)),
        "keyword"
    );
    assert_eq!(
        decide("blackfriday", at(est, 2026, 11, 27, 23, 59, 59)),
        "keyword"
    );
    assert_eq!(
        decide("blackfriday", at(est, 2026, 11, 28, 0, 0, 0)),
        "expired"
    );
    // The same instant seen from UTC: 2026-11-28T05:00:00Z is midnight in New York.
    assert_eq!(
        decide(
            "blackfriday",
            Utc.with_ymd_and_hms(2026, 11, 28, 4, 59, 59)
                .single()
                .expect("t")
        ),
        "keyword"
    );
    assert_eq!(
        decide(
            "blackfriday",
            Utc.with_ymd_and_hms(2026, 11, 28, 5, 0, 0)
                .single()
                .expect("t")
        ),
        "expired"
    );
}

/// `vmnd route` explains a message that matches nothing and one that matches an expired keyword.
#[test]
fn vmnd_route_explains_no_match_and_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vmnd.toml");
    let text = common::config_text(
        &dir.path().join("var"),
        2775,
        "http://127.0.0.1:9/sms",
        &campaigns("09:00-18:00 Asia/Kolkata"),
    );
    std::fs::write(&path, text).expect("write config");
    let route = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmnd"))
            .arg("route")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .expect("run vmnd");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let none = route(&["--to", VMN, "--from", "+919812345678", "hello", "there"]);
    assert!(none.contains("number 9876543210: default"), "{none}");
    assert!(
        none.contains("\"JOIN\"")
            && none.contains("not matched: the message starts with \"hello\""),
        "{none}"
    );
    let expired = route(&[
        "--to",
        VMN,
        "--from",
        "919812345678",
        "--at",
        "2026-11-28T10:00:00Z",
        "OFFER",
        "code",
    ]);
    assert!(
        expired.contains("number 9876543210: expired \"OFFER\""),
        "{expired}"
    );
    assert!(
        expired.contains("expired: expires 2020-01-01T00:00:00+05:30"),
        "{expired}"
    );
    assert!(
        expired.contains("SMS expiry_reply from 9876543210"),
        "{expired}"
    );
    let longest = route(&["--to", VMN, "--from", "919812345678", "join", "club", "now"]);
    assert!(longest.contains("keyword \"JOIN CLUB\""), "{longest}");
    assert!(
        longest.contains("shorter than the longer match \"JOIN CLUB\""),
        "{longest}"
    );
    // On a shared short code, a tenant sees which candidates are another tenant's.
    let shared = route(&[
        "--to",
        VMN,
        "--from",
        "919812345678",
        "--tenant",
        "globex",
        "join",
        "club",
    ]);
    assert!(
        shared.contains("(tenant acme): other tenant (acme); matched"),
        "{shared}"
    );
    let unrouted = route(&["--to", "111111", "--from", "919812345678", "hi"]);
    assert!(unrouted.contains("unrouted"), "{unrouted}");
}

/// A receipt for the first segment of a long reply can come back while the next segment still
/// waits for its turn (one submit_sm a second here): it is kept, not overwritten by the
/// sender's older copy of the record, and the reply is delivered once both are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_that_comes_back_mid_reply_is_kept() {
    let long = "This reply is long enough to need two segments. ".repeat(4);
    let extra = format!(
        "\n[[number.keyword]]\nkeyword = \"HI\"\nreply = \"{}\"\n",
        long.trim_end()
    );
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, &extra).await;
    h.stop_daemon().await;
    let text = h.config_text(&extra).replace(
        "enquire_link = \"30s\"",
        "enquire_link = \"30s\"\nsubmit_per_second = 1",
    );
    h.daemon = Some(
        vmnd::daemon::Daemon::start(common::parse_config(&text))
            .await
            .expect("daemon"),
    );
    let receipt = |id: &str| {
        mo::receipt(
            "919812340002",
            VMN,
            &Receipt {
                id: id.into(),
                stat: "DELIVRD".into(),
                ..Default::default()
            },
        )
    };
    h.smsc.enqueue(mo::gsm("919812340002", VMN, "hi"));
    assert!(eventually(LONG, || h.smsc.submitted().len() == 1).await);
    h.smsc.enqueue(receipt("sim-1"));
    let outbound = || async {
        let (_, body) = h.admin_get("/api/outbound").await;
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["outbound"][0].clone()
    };
    let mut record = outbound().await;
    for _ in 0..200 {
        if record["state"] == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        record = outbound().await;
    }
    assert_eq!(h.smsc.submitted().len(), 2, "{record}");
    assert_eq!(record["state"], "sent", "{record}");
    assert_eq!(
        record["segments"][0]["carrier_message_id"], "sim-1",
        "{record}"
    );
    assert_eq!(record["segments"][0]["receipt"], "DELIVRD", "{record}");
    assert!(record["segments"][1].get("receipt").is_none(), "{record}");
    h.smsc.enqueue(receipt("sim-2"));
    let mut delivered = false;
    for _ in 0..200 {
        if outbound().await["state"] == "delivered" {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "{}", outbound().await);
}

/// An SMS job queued while its carrier was a transceiver, found after a restart with the
/// carrier now a `receiver` bind, cannot leave: it becomes a dead letter (and its record
/// says failed) instead of waiting for good on a queue no session takes from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_job_for_a_receiver_bind_is_dead_lettered() {
    use vmnd::store::queue::{Job, SmsJob};
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    h.stop_daemon().await;
    let job_id = 77 << 8;
    {
        let store = vmnd::store::Store::open(&h.dir.path().join("var"), 8, false).expect("open");
        store
            .job_update(&Job {
                id: job_id,
                message_id: 77,
                webhook: String::new(),
                event: "message".into(),
                attempts: 0,
                created_ms: 1,
                due_ms: 1,
                first_attempt_ms: None,
                last_error: None,
                last_status: None,
                sms: Some(SmsJob {
                    carrier: "sim".into(),
                    from: VMN.into(),
                    to: "919812340003".into(),
                    text: "queued before the change".into(),
                    purpose: "reply".into(),
                    reference: 3,
                    sent: Vec::new(),
                    to_ton_npi: None,
                }),
                email: None,
            })
            .expect("write job");
        store.commit().await.expect("commit");
    }
    let text = h.config_text("").replace(
        "password = \"secret\"",
        "password = \"secret\"\nbind = \"receiver\"",
    );
    h.daemon = Some(
        vmnd::daemon::Daemon::start(common::parse_config(&text))
            .await
            .expect("daemon"),
    );
    let mut body = String::new();
    for _ in 0..200 {
        body = h.admin_get("/api/deadletters").await.1;
        if body.contains("no longer configured") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains("no longer configured"), "{body}");
    let (_, outbound) = h.admin_get("/api/outbound").await;
    let page: serde_json::Value = serde_json::from_str(&outbound).expect("json");
    assert_eq!(page["outbound"][0]["state"], "failed", "{page}");
    assert!(h.smsc.submitted().is_empty());
}

/// A sender who wrote from a national (or unknown-type) address gets the reply at that same
/// kind of address: national digits sent as international would reach another subscriber.
/// Forwards to configured numbers stay international.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_goes_back_to_the_kind_of_address_it_came_from() {
    let extra = "\n[[number.keyword]]\nkeyword = \"HI\"\nreply = \"Hello\"\nforward_to = [\"919800000099\"]\n";
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, extra).await;
    for (ton, npi, from) in [
        (2, 1, "9812340004"),
        (0, 0, "09812340005"),
        (1, 1, "919812340006"),
    ] {
        let mut sm = mo::gsm(from, VMN, "hi");
        sm.source.ton = ton;
        sm.source.npi = npi;
        h.smsc.enqueue(sm);
    }
    // A concatenated message keeps its sender's address type through reassembly.
    let long = format!("hi {}", "and a long tail ".repeat(20));
    h.smsc.enqueue_many(
        mo::concat_udh("9812340007", VMN, &long, 9, false)
            .into_iter()
            .map(|mut part| {
                part.source.ton = 2;
                part
            }),
    );
    assert!(
        eventually(LONG, || h.smsc.submitted().len() == 8).await,
        "{:?}",
        h.smsc.submitted().len()
    );
    let submitted = h.smsc.submitted();
    let dest = |addr: &str| {
        let sm = submitted
            .iter()
            .find(|s| s.dest.addr == addr)
            .unwrap_or_else(|| panic!("nothing sent to {addr}"));
        (sm.dest.ton, sm.dest.npi)
    };
    assert_eq!(dest("9812340004"), (2, 1), "national");
    assert_eq!(dest("09812340005"), (0, 0), "unknown type");
    assert_eq!(dest("919812340006"), (1, 1), "international");
    assert_eq!(dest("9812340007"), (2, 1), "national, in parts");
    assert!(
        submitted
            .iter()
            .filter(|s| s.dest.addr == "919800000099")
            .all(|s| (s.dest.ton, s.dest.npi) == (1, 1)),
        "forwards are international"
    );
}
