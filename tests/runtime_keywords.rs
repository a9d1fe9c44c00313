//! Keywords managed at run time through the admin API, end to end: a keyword PUT on a number
//! routes the next message (reply through the simulator, webhook event with its keyword and
//! inbox), is listed next to the config's keywords, survives a restart of the daemon on the same
//! data dir, and once DELETEd lets messages fall to the default rule again. Bodies that
//! `vmnd check` would refuse are refused with every problem named (400), clashes with the
//! config or a reserved word with 409, and the config's own keywords cannot be changed here.

mod common;

use std::time::Duration;

use common::{Harness, eventually, parse_config, sink_bodies};
use serde_json::Value;
use vmnd::daemon::Daemon;
use vmnd::http_sink::SinkMode;
use vmnd::sim::{SmscConfig, mo};
use vmnd::smpp::text::decode_text;

const LONG: Duration = Duration::from_secs(30);
const VMN: &str = "9876543210";

/// A config keyword on 9876543210 (the harness's last number).
const CONFIG_KEYWORDS: &str = r#"
[[number.keyword]]
keyword = "JOIN"
aliases = ["SUBSCRIBE"]
tenant = "acme"
inbox = "summer"
reply = "Joined"
"#;

/// One request to the admin server over a fresh connection: (status, body).
async fn admin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn put(h: &Harness, keyword: &str, body: &str) -> (u16, String) {
    let path = format!("/api/numbers/{VMN}/keywords/{keyword}");
    admin(h.daemon().admin_addr, "PUT", &path, Some(body), None).await
}

async fn delete(h: &Harness, keyword: &str) -> (u16, String) {
    let path = format!("/api/numbers/{VMN}/keywords/{keyword}");
    admin(h.daemon().admin_addr, "DELETE", &path, None, None).await
}

/// `GET /api/numbers/{VMN}/keywords`, by keyword.
async fn listed(h: &Harness) -> Vec<Value> {
    let (status, body) = h.admin_get(&format!("/api/numbers/{VMN}/keywords")).await;
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("json");
    list["keywords"].as_array().cloned().unwrap_or_default()
}

/// (to, text) of every submit_sm the simulator took.
fn replies(h: &Harness) -> Vec<(String, String)> {
    h.smsc
        .submitted()
        .iter()
        .map(|sm| {
            let text = decode_text(sm.data_coding, &sm.short_message, false, 0).text;
            (sm.dest.addr.clone(), text)
        })
        .collect()
}

/// Sends `text` from `from` and waits for its webhook event.
async fn send(h: &Harness, from: &str, text: &str) -> Value {
    let before = h.sink.count();
    h.smsc.enqueue(mo::gsm(from, VMN, text));
    assert!(
        h.sink.wait_for(before + 1, LONG).await,
        "{:?}",
        sink_bodies(&h.sink)
    );
    sink_bodies(&h.sink)
        .into_iter()
        .rfind(|b| b["from"] == from && b["text"] == text)
        .unwrap_or_else(|| panic!("the message's event: {:?}", sink_bodies(&h.sink)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyword_added_through_the_api_routes_survives_a_restart_and_goes_away() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, CONFIG_KEYWORDS).await;

    let body = r#"{"reply": "Thanks {from}", "expires": "2099-12-31T23:59:59+05:30",
                   "webhook": "crm", "aliases": ["GO"], "inbox": "promo", "tenant": "globex"}"#;
    let (status, answer) = put(&h, "GO%20NOW", body).await;
    assert_eq!(status, 201, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(answer["keyword"]["keyword"], "GO NOW");
    assert_eq!(answer["keyword"]["source"], "api");
    // "GO" (an alias) starts "GO NOW": the longer wins, and for its own rule that is no warning.
    assert_eq!(answer["warnings"], serde_json::json!([]));

    // The next message matches it: reply through the carrier, event with keyword and inbox.
    let event = send(&h, "919800000001", "go now please").await;
    assert_eq!(
        (
            event["keyword"].as_str(),
            event["inbox"].as_str(),
            event["args"].as_str()
        ),
        (Some("GO NOW"), Some("promo"), Some("please")),
        "{event}"
    );
    let event = send(&h, "919800000002", "Go!").await;
    assert_eq!(event["keyword"], "GO NOW", "the alias: {event}");
    assert!(
        eventually(LONG, || replies(&h).len() == 2).await,
        "{:?}",
        replies(&h)
    );
    assert!(replies(&h).contains(&("919800000001".into(), "Thanks 919800000001".into())));

    // Listed with the config's keyword, each with its source.
    let keywords = listed(&h).await;
    assert_eq!(keywords.len(), 2, "{keywords:?}");
    let join = &keywords[0];
    assert_eq!(
        (join["keyword"].as_str(), join["source"].as_str()),
        (Some("JOIN"), Some("config"))
    );
    let go = &keywords[1];
    assert_eq!(go["source"], "api", "{go}");
    assert_eq!(go["keyword"], "GO NOW");
    assert_eq!(go["tenant"], "globex");
    assert_eq!(go["inbox"], "promo");
    assert_eq!(go["aliases"], serde_json::json!(["GO"]));
    assert_eq!(go["starts"], Value::Null);
    assert_eq!(go["expires"], "2099-12-31T23:59:59+05:30");
    assert_eq!(go["actions"]["reply"], "Thanks {from}");
    assert_eq!(go["actions"]["webhook"], "crm");

    // Replacing it (any spelling of the same keyword) answers 200 and takes effect at once.
    let (status, answer) = put(
        &h,
        "go%20%20now",
        r#"{"reply": "Again {from}", "inbox": "promo2", "webhook": "crm"}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let event = send(&h, "919800000003", "GO NOW").await;
    assert_eq!(event["inbox"], "promo2", "{event}");
    assert_eq!(
        event["keyword"], "go  now",
        "the path's spelling is kept: {event}"
    );
    assert!(
        eventually(LONG, || replies(&h).len() == 3).await,
        "{:?}",
        replies(&h)
    );
    assert_eq!(
        replies(&h)[2],
        ("919800000003".into(), "Again 919800000003".into())
    );

    // A restart on the same data dir routes it again.
    h.stop_daemon().await;
    h.start_daemon(CONFIG_KEYWORDS).await;
    let event = send(&h, "919800000004", "go now").await;
    assert_eq!(event["inbox"], "promo2", "{event}");
    assert!(
        eventually(LONG, || replies(&h).len() == 4).await,
        "{:?}",
        replies(&h)
    );
    let keywords = listed(&h).await;
    assert_eq!(keywords.len(), 2, "{keywords:?}");
    assert_eq!(keywords[1]["source"], "api");

    // Deleted: the next message falls to the default rule (webhook, no keyword, no reply).
    let (status, body) = delete(&h, "GO%20NOW").await;
    assert_eq!((status, body.as_str()), (204, ""));
    let event = send(&h, "919800000005", "go now").await;
    assert_eq!(
        (event["keyword"].is_null(), event["inbox"].is_null()),
        (true, true),
        "{event}"
    );
    let (status, body) = delete(&h, "GO%20NOW").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(listed(&h).await.len(), 1);

    // And stays deleted after a restart.
    h.stop_daemon().await;
    h.start_daemon(CONFIG_KEYWORDS).await;
    let event = send(&h, "919800000006", "go now").await;
    assert!(event["keyword"].is_null(), "{event}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        replies(&h).len(),
        4,
        "no reply once deleted: {:?}",
        replies(&h)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keyword_tables_name_every_problem() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, CONFIG_KEYWORDS).await;
    let refused = |status: u16, body: &str, says: &[&str]| {
        let answer: Value = serde_json::from_str(body).expect("json");
        let problems = answer["problems"].to_string();
        for s in says {
            assert!(problems.contains(s), "{status}: {s:?} not in {body}");
        }
    };

    // Mistakes in the table: 400, each named.
    let (status, body) = put(&h, "HI", r#"{"colour": "red"}"#).await;
    assert_eq!(status, 400, "{body}");
    refused(
        status,
        &body,
        &["unknown key `colour` in [[number.keyword]]"],
    );
    let (status, body) = put(
        &h,
        "HI",
        r#"{"reply": "Hi {name}", "reply_window": "09:00-18:00 Mars/Olympus", "webhook": "nope"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    refused(
        status,
        &body,
        &[
            "`reply`: unknown placeholder {name}",
            "`reply_window`: \\\"09:00-18:00 Mars/Olympus\\\": unknown time zone",
            "`webhook` names unknown webhook \\\"nope\\\"",
        ],
    );
    let (status, body) = put(&h, "HI", r#"{"reply_after": "10m"}"#).await;
    assert_eq!(status, 400, "{body}");
    refused(
        status,
        &body,
        &["`reply_after` delays the reply, but there is no `reply`"],
    );
    let (status, body) = put(&h, "HI", r#"{"tenant": null}"#).await;
    assert_eq!(status, 400, "{body}");
    refused(status, &body, &["`tenant`: null is not a value here"]);
    let (status, body) = put(&h, "HI", "[1]").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(&h, "HI", "{").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(&h, "HI", r#"{"keyword": "HELLO"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not the keyword of the path"), "{body}");

    // Clashes: 409.
    let (status, body) = put(&h, "stop", r#"{"reply": "no"}"#).await;
    assert_eq!(status, 409, "{body}");
    refused(
        status,
        &body,
        &["keyword \\\"stop\\\" is reserved for opt-out"],
    );
    let (status, body) = put(&h, "HI", r#"{"aliases": ["subscribe"]}"#).await;
    assert_eq!(status, 409, "{body}");
    refused(
        status,
        &body,
        &[
            "is already used by alias \\\"SUBSCRIBE\\\" of keyword \\\"JOIN\\\" (tenant \\\"acme\\\") in the config file at line",
        ],
    );
    let (status, body) = put(&h, "HI", r#"{"inbox": "summer", "tenant": "globex"}"#).await;
    assert_eq!(status, 409, "{body}");
    refused(
        status,
        &body,
        &["is already the inbox of keyword \\\"JOIN\\\""],
    );

    // The config's keywords are the config's.
    let (status, body) = put(&h, "join", r#"{"reply": "hijacked"}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("defined in the config file at line"),
        "{body}"
    );
    let (status, body) = delete(&h, "JOIN").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("remove it there"), "{body}");

    // Unknown numbers and keywords.
    let addr = h.daemon().admin_addr;
    let (status, _) = admin(
        addr,
        "PUT",
        "/api/numbers/111111/keywords/HI",
        Some("{}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = h.admin_get("/api/numbers/111111/keywords").await;
    assert_eq!(status, 404);
    let (status, _) = delete(&h, "NEVER").await;
    assert_eq!(status, 404);
    let (status, _) = admin(
        addr,
        "POST",
        &format!("/api/numbers/{VMN}/keywords"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 405);

    // Nothing refused was kept or routed.
    let keywords = listed(&h).await;
    assert_eq!(keywords.len(), 1, "{keywords:?}");
    let event = send(&h, "919800000001", "hi").await;
    assert!(event["keyword"].is_null(), "{event}");
    // Nor stored: the store, read once the daemon is stopped (sled locks its directory).
    h.stop_daemon().await;
    let store = vmnd::store::Store::open(&h.dir.path().join("var"), 8, false).expect("open");
    assert_eq!(store.runtime_keywords().expect("list"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_changes_need_the_bearer_token_when_one_is_set() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    h.stop_daemon().await;
    let text = h.config_text("").replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nadmin_token = \"s3cret\"",
    );
    h.daemon = Some(
        Daemon::start(parse_config(&text))
            .await
            .expect("daemon starts"),
    );
    let addr = h.daemon().admin_addr;
    let path = format!("/api/numbers/{VMN}/keywords/HI");
    let (status, _) = admin(addr, "PUT", &path, Some("{}"), None).await;
    assert_eq!(status, 401);
    let (status, _) = admin(addr, "PUT", &path, Some("{}"), Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = admin(addr, "PUT", &path, Some("{}"), Some("s3cret")).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = admin(addr, "DELETE", &path, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = admin(addr, "DELETE", &path, None, Some("s3cret")).await;
    assert_eq!(status, 204);
}

/// A stored keyword that the config no longer allows is skipped at start (with a warning),
/// listed as inactive with its problem, and routed again once the config allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_keyword_the_config_no_longer_allows_is_skipped_not_fatal() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    let (status, body) = put(&h, "PROMO", r#"{"inbox": "promo", "webhook": "crm"}"#).await;
    assert_eq!(status, 201, "{body}");
    // The config now has its own PROMO: the stored one would clash.
    let clash =
        "\n[[number.keyword]]\nkeyword = \"PROMO\"\ninbox = \"config-promo\"\nwebhook = \"crm\"\n";
    h.stop_daemon().await;
    h.start_daemon(clash).await;
    let keywords = listed(&h).await;
    assert_eq!(keywords.len(), 2, "{keywords:?}");
    assert_eq!(keywords[0]["source"], "config");
    assert_eq!(keywords[1]["active"], false, "{keywords:?}");
    assert!(
        keywords[1]["problems"]
            .to_string()
            .contains("is already used by keyword"),
        "{keywords:?}"
    );
    let event = send(&h, "919800000001", "promo").await;
    assert_eq!(event["inbox"], "config-promo", "{event}");
    // Back to the old config: the stored keyword routes again.
    h.stop_daemon().await;
    h.start_daemon("").await;
    let event = send(&h, "919800000002", "promo").await;
    assert_eq!(event["inbox"], "promo", "{event}");
}

/// A poll added at run time counts votes and shows its results like a configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_added_through_the_api_is_tallied() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    let body = r#"{"kind": "poll", "options": ["A", "B"], "webhook": "crm", "vote": "last"}"#;
    let (status, answer) = put(&h, "VOTE", body).await;
    assert_eq!(status, 201, "{answer}");
    let event = send(&h, "919800000001", "vote b").await;
    assert_eq!(event["keyword"], "VOTE", "{event}");
    let (status, body) = h.admin_get(&format!("/api/numbers/{VMN}/polls/VOTE")).await;
    assert_eq!(status, 200, "{body}");
    let tally: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(tally["voters"], 1, "{tally}");
    assert_eq!(
        tally["options"],
        serde_json::json!([{"option": "A", "votes": 0}, {"option": "B", "votes": 1}])
    );
    let keywords = listed(&h).await;
    assert_eq!(keywords[0]["kind"], "poll", "{keywords:?}");
    assert_eq!(
        keywords[0]["poll"]["options"],
        serde_json::json!(["A", "B"])
    );
}

/// "kıd" (with a dotless i) and "KID" share a stored name (names are compared upper-cased)
/// but match different words: a PUT or DELETE of one must not replace or remove the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyword_with_the_same_name_but_other_words_is_not_replaced() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, CONFIG_KEYWORDS).await;
    let (status, body) = put(&h, "KID", r#"{"reply": "kids", "webhook": "crm"}"#).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    for (status, body) in [
        put(&h, "k%C4%B1d", r#"{"reply": "other"}"#).await,
        delete(&h, "k%C4%B1d").await,
    ] {
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("KID"), "{body}");
    }
    let kids = send(&h, "919800000031", "KID").await;
    assert_eq!(kids["keyword"], "KID", "{kids}");
    // Its own spelling, in other case, still changes it.
    let (status, body) = delete(&h, "kid").await;
    assert_eq!(status, 204, "{body}");
}
