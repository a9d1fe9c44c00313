//! The auto-action guard end to end (simulated carrier, in-process daemon, HTTP sink):
//! - the sixth auto-reply to one sender within the window is held, and the message still
//!   reaches the webhook and says what was held;
//! - two bots answering each other stop: the sender repeating itself is recognised as an
//!   autoresponder after `loop_repeats` identical messages;
//! - `[guard]` and a number's `guard` are read and checked.

mod common;

use std::time::Duration;

use common::{Harness, eventually, sink_bodies};
use vmnd::http_sink::SinkMode;
use vmnd::sim::{SmscConfig, mo};
use vmnd::smpp::text::decode_text;

const STEP: Duration = Duration::from_secs(30);
const LONG_CODE: &str = "9876543210";
const SHORT_CODE: &str = "567678";
const ALICE: &str = "919800000011";
const BOT: &str = "919800000077";

fn submitted_to(h: &Harness, to: &str) -> Vec<String> {
    h.smsc
        .submitted()
        .iter()
        .filter(|sm| sm.dest.addr == to)
        .map(|sm| decode_text(sm.data_coding, &sm.short_message, false, 0).text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_auto_reply_in_the_window_is_held_but_the_message_is_forwarded() {
    let h = Harness::start(
        SmscConfig::default(),
        SinkMode::Ok,
        r#"
[[number.keyword]]
keyword = "PRICE"
reply = "Prices: https://acme.example/p"
webhook = "crm"
"#,
    )
    .await;
    for i in 1..=6 {
        h.smsc
            .enqueue(mo::gsm(ALICE, LONG_CODE, &format!("PRICE item {i}")));
    }
    assert!(
        eventually(STEP, || h.sink.count() >= 6).await,
        "six webhooks"
    );
    // Give a held reply every chance to show up, then count.
    assert!(eventually(STEP, || submitted_to(&h, ALICE).len() >= 5).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        submitted_to(&h, ALICE).len(),
        5,
        "five replies, the sixth held"
    );
    let messages: serde_json::Value = serde_json::from_str(
        &h.admin_get("/api/messages?from=919800000011&limit=10")
            .await
            .1,
    )
    .expect("json");
    let guarded: Vec<&serde_json::Value> = messages["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m.get("guarded").is_some())
        .collect();
    assert_eq!(guarded.len(), 1, "{messages}");
    assert_eq!(guarded[0]["text"], "PRICE item 6");
    assert_eq!(guarded[0]["guarded"][0], format!("rate: reply to {ALICE}"));
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vmnd_auto_actions_held_total{reason=\"rate\"} 1")),
        "counted"
    );
    // The webhook got all six, the sixth included.
    let texts: Vec<String> = sink_bodies(&h.sink)
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_string))
        .collect();
    assert!(texts.contains(&"PRICE item 6".to_string()), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_answering_each_other_stop() {
    // The number answers everything; the "bot" answers every SMS it gets with the same text.
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    h.stop_daemon().await;
    let text = h
        .config_text("")
        .replacen(
            &format!("vmn = \"{SHORT_CODE}\"\ncarrier = \"sim\"\ndefault = {{ webhook = \"crm\" }}"),
            &format!(
                "vmn = \"{SHORT_CODE}\"\ncarrier = \"sim\"\ndefault = {{ webhook = \"crm\", reply = \"Thanks, we will get back to you\" }}"
            ),
            1,
        );
    assert!(text.contains("we will get back"), "config edited");
    h.daemon = Some(
        vmnd::daemon::Daemon::start(common::parse_config(&text))
            .await
            .expect("daemon"),
    );
    const AWAY: &str = "I am away, I will answer when I am back";
    h.smsc.enqueue(mo::gsm(BOT, SHORT_CODE, AWAY));
    // Play the other bot: answer each of our replies.
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let replies = submitted_to(&h, BOT).len();
        while answered < replies {
            h.smsc.enqueue(mo::gsm(BOT, SHORT_CODE, AWAY));
            answered += 1;
        }
        // Settled: every bot message reached the webhook and no reply is pending.
        let bot_messages = answered + 1;
        if h.sink.count() >= bot_messages && submitted_to(&h, BOT).len() == replies {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if submitted_to(&h, BOT).len() == replies && h.sink.count() == bot_messages {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loop never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        submitted_to(&h, BOT).len(),
        2,
        "two replies, then the third identical message marks an autoresponder"
    );
    assert_eq!(h.sink.count(), 3, "every message still reached the webhook");
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vmnd_auto_actions_held_total{reason=\"loop\"} 1")),
        "counted as a loop"
    );
}

#[test]
fn guard_settings_are_read_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::config_text(dir.path(), 2775, "http://127.0.0.1:9/sms", "");
    let text = format!("{base}\n[guard]\nmax_auto_actions = 20\nwindow = \"1h\"\n").replacen(
        "vmn = \"9876543210\"\n",
        "vmn = \"9876543210\"\nguard = { loop_repeats = 0 }\n",
        1,
    );
    let config = common::parse_config(&text);
    let short = &config.numbers[0].guard;
    assert_eq!(
        (short.max_auto_actions, short.window, short.loop_repeats),
        (20, Duration::from_secs(3600), 3)
    );
    let long = &config.numbers[1].guard;
    assert_eq!(
        (long.max_auto_actions, long.window, long.loop_repeats),
        (20, Duration::from_secs(3600), 0),
        "the number's key over [guard]"
    );
    let bad = format!("{base}\n[guard]\nloop_repeats = 1\nwindow = \"0s\"\ncap = 3\n");
    let problems = vmnd::config::parse(&bad, "t.toml", &|_| None).expect_err("refused");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("unknown key `cap` in [guard]")),
        "{text:?}"
    );
    let bad = format!("{base}\n[guard]\nloop_repeats = 1\nwindow = \"0s\"\n");
    let problems = vmnd::config::parse(&bad, "t.toml", &|_| None).expect_err("refused");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("`window` must be longer than zero")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("`loop_repeats` = 1 would silence")),
        "{text:?}"
    );
}
