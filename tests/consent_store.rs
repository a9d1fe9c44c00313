//! The consent store (issue 5) on a real sled database, and its admin API through a running
//! daemon: state changes and their ledger, double opt-in deadlines, first/last seen, paging and
//! filters, persistence across a reopen, and the opt-out list import and CSV export over HTTP.

mod common;

use std::time::Duration;

use common::Harness;
use vmnd::http_sink::SinkMode;
use vmnd::sim::SmscConfig;
use vmnd::store::Store;
use vmnd::store::consent::{ConsentChange, ConsentState};

const VMN: &str = "567678";
const T0: u64 = 1_780_000_000_000;

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, 8, false).expect("store opens")
}

/// A change by SMS with the usual evidence.
fn sms<'a>(
    msisdn: &'a str,
    to: ConsentState,
    at_ms: u64,
    text: &'a str,
    id: &'a str,
) -> ConsentChange<'a> {
    ConsentChange {
        vmn: VMN,
        msisdn,
        to,
        at_ms,
        text,
        matched: text,
        message_id: Some(id),
        source: "sms",
        keyword: None,
        attributes: &[],
        pending_until_ms: None,
    }
}

#[test]
fn stop_start_and_a_repeated_stop_leave_one_change_each_and_full_evidence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let who = "919812345678";
    assert_eq!(
        store.consent_state(VMN, who).expect("state"),
        ConsentState::Unknown
    );

    let first = store
        .apply_consent(&sms(who, ConsentState::OptedOut, T0, "STOP", "m1"))
        .expect("stop");
    assert_eq!(first, (ConsentState::Unknown, true));
    let again = store
        .apply_consent(&sms(who, ConsentState::OptedOut, T0 + 1000, "stop", "m2"))
        .expect("stop again");
    assert_eq!(
        again,
        (ConsentState::OptedOut, false),
        "no second confirmation"
    );
    assert_eq!(
        store.consent_state(VMN, who).expect("state"),
        ConsentState::OptedOut
    );
    // Written differently, the same person.
    assert_eq!(
        store
            .consent_state("56-76-78", "+91 98123-45678")
            .expect("state"),
        ConsentState::OptedOut
    );
    // Another number is another relationship.
    assert_eq!(
        store.consent_state("9876543210", who).expect("state"),
        ConsentState::Unknown
    );

    let start = store
        .apply_consent(&sms(who, ConsentState::OptedIn, T0 + 2000, "START", "m3"))
        .expect("start");
    assert_eq!(start, (ConsentState::OptedOut, true));
    assert_eq!(
        store.consent_state(VMN, who).expect("state"),
        ConsentState::OptedIn
    );

    // Reprocessing m2 after a crash answers as the first time and records nothing.
    let replay = store
        .apply_consent(&sms(who, ConsentState::OptedOut, T0 + 1000, "stop", "m2"))
        .expect("replay");
    assert_eq!(replay, (ConsentState::OptedOut, false));
    assert_eq!(
        store.consent_state(VMN, who).expect("state"),
        ConsentState::OptedIn
    );

    store
        .set_confirmation_sent(VMN, who, "m1")
        .expect("confirmation");
    store
        .set_confirmation_sent(VMN, who, "no-such-message")
        .expect("unknown id is a no-op");
    let ledger = store.ledger(VMN, Some(who), None, 100).expect("ledger");
    let summary: Vec<_> = ledger
        .iter()
        .map(|(_, e)| {
            (
                e.from,
                e.to,
                e.text.as_str(),
                e.message_id.as_deref(),
                e.confirmation_sent,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                ConsentState::Unknown,
                ConsentState::OptedOut,
                "STOP",
                Some("m1"),
                true
            ),
            (
                ConsentState::OptedOut,
                ConsentState::OptedOut,
                "stop",
                Some("m2"),
                false
            ),
            (
                ConsentState::OptedOut,
                ConsentState::OptedIn,
                "START",
                Some("m3"),
                false
            ),
        ]
    );
    assert!(
        ledger
            .iter()
            .all(|(_, e)| e.source == "sms" && e.vmn == VMN && e.msisdn == who)
    );
    // Cursor: oldest first after an id.
    let rest = store
        .ledger(VMN, None, Some(ledger[0].0), 100)
        .expect("page");
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].0, ledger[1].0);

    let contact = store.contact(VMN, who).expect("read").expect("contact");
    assert_eq!(contact.state, ConsentState::OptedIn);
    assert_eq!(
        (contact.first_seen_ms, contact.last_seen_ms),
        (T0, T0 + 2000)
    );
    assert_eq!(contact.updated_ms, T0 + 2000);
}

#[test]
fn double_opt_in_waits_for_yes_and_lapses_back_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let (a, b) = ("919800000001", "919800000002");
    let deadline = T0 + 600_000;
    let attributes = [("args".to_string(), "summer".to_string())];
    for who in [a, b] {
        let ask = ConsentChange {
            keyword: Some("JOIN"),
            attributes: &attributes,
            pending_until_ms: Some(deadline),
            ..sms(who, ConsentState::Pending, T0, "JOIN summer", who)
        };
        assert_eq!(
            store.apply_consent(&ask).expect("ask"),
            (ConsentState::Unknown, true)
        );
    }
    assert_eq!(
        store.consent_state_at(VMN, a, T0 + 1).expect("state"),
        ConsentState::Pending
    );
    assert_eq!(
        store.consent_state_at(VMN, a, deadline).expect("state"),
        ConsentState::Unknown
    );

    // a confirms in time.
    let yes = store
        .apply_consent(&sms(a, ConsentState::OptedIn, T0 + 60_000, "YES", "y1"))
        .expect("yes");
    assert_eq!(yes, (ConsentState::Pending, true));
    let contact = store.contact(VMN, a).expect("read").expect("contact");
    assert_eq!(contact.state, ConsentState::OptedIn);
    assert_eq!(contact.source_keyword.as_deref(), Some("JOIN"));
    assert_eq!(
        contact.attributes.get("args").map(String::as_str),
        Some("summer")
    );
    assert_eq!(contact.pending_until_ms, None);

    // b's ask lapsed: b is unknown again, listed as such, and a late YES is judged from there.
    let now = deadline + 1;
    let unknown = store
        .contacts_at(VMN, Some(ConsentState::Unknown), None, 10, now)
        .expect("list");
    assert_eq!(
        unknown
            .iter()
            .map(|c| c.msisdn.as_str())
            .collect::<Vec<_>>(),
        [b]
    );
    assert_eq!(unknown[0].state, ConsentState::Unknown);
    assert!(
        store
            .contacts_at(VMN, Some(ConsentState::Pending), None, 10, now)
            .expect("list")
            .is_empty()
    );
    let late = store
        .apply_consent(&sms(b, ConsentState::OptedIn, now, "YES", "y2"))
        .expect("late yes");
    assert_eq!(late, (ConsentState::Unknown, true));

    // An opted-out person who asks again stays opted out if they never confirm.
    let c = "919800000003";
    store
        .apply_consent(&sms(c, ConsentState::OptedOut, T0, "STOP", "s3"))
        .expect("stop");
    let ask = ConsentChange {
        pending_until_ms: Some(deadline),
        ..sms(c, ConsentState::Pending, T0 + 1, "JOIN", "j3")
    };
    assert_eq!(
        store.apply_consent(&ask).expect("ask"),
        (ConsentState::OptedOut, true)
    );
    assert_eq!(
        store.consent_state_at(VMN, c, deadline).expect("state"),
        ConsentState::OptedOut
    );
    let opted_out = store
        .contacts_at(VMN, Some(ConsentState::OptedOut), None, 10, deadline)
        .expect("list");
    assert_eq!(
        opted_out
            .iter()
            .map(|c| c.msisdn.as_str())
            .collect::<Vec<_>>(),
        [c]
    );
    // A STOP after the lapse changes nothing (no second confirmation) and settles the record.
    let stop = store
        .apply_consent(&sms(c, ConsentState::OptedOut, deadline + 5, "STOP", "s4"))
        .expect("stop");
    assert_eq!(stop, (ConsentState::OptedOut, false));
    assert_eq!(
        store.consent_state_at(VMN, c, 0).expect("state"),
        ConsentState::OptedOut
    );
}

#[test]
fn touch_keeps_first_and_last_seen_without_touching_consent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let who = "919812345678";
    assert!(store.contact(VMN, who).expect("read").is_none());
    store.touch_contact(VMN, who, T0 + 500).expect("touch");
    store.touch_contact(VMN, who, T0 + 100).expect("touch");
    store.touch_contact(VMN, who, T0 + 900).expect("touch");
    let c = store.contact(VMN, who).expect("read").expect("contact");
    assert_eq!(
        (c.state, c.first_seen_ms, c.last_seen_ms),
        (ConsentState::Unknown, T0 + 100, T0 + 900)
    );

    store
        .apply_consent(&sms(who, ConsentState::OptedOut, T0 + 1000, "STOP", "m1"))
        .expect("stop");
    store.touch_contact(VMN, who, T0 + 2000).expect("touch");
    let c = store.contact(VMN, who).expect("read").expect("contact");
    assert_eq!(
        (c.state, c.first_seen_ms, c.last_seen_ms),
        (ConsentState::OptedOut, T0 + 100, T0 + 2000)
    );
    assert_eq!(
        store.consent_state(VMN, who).expect("state"),
        ConsentState::OptedOut
    );
    // Listed once, under its state.
    assert_eq!(store.contacts(VMN, None, None, 10).expect("all").len(), 1);
    assert!(
        store
            .contacts(VMN, Some(ConsentState::Unknown), None, 10)
            .expect("unknown")
            .is_empty()
    );
}

#[test]
fn contacts_page_in_msisdn_order_with_a_state_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let numbers: Vec<String> = (0..25)
        .map(|i| format!("9198000000{:02}", 24 - i))
        .collect();
    let ids: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    let changes: Vec<ConsentChange> = numbers
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (n, id))| {
            let to = if i % 3 == 0 {
                ConsentState::OptedOut
            } else {
                ConsentState::OptedIn
            };
            sms(n, to, T0 + i as u64, "x", id)
        })
        .collect();
    store.apply_consents(&changes).expect("bulk");
    store
        .touch_contact("9876543210", "919800000000", T0)
        .expect("other number");

    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .contacts(VMN, None, after.as_deref(), 10)
            .expect("page");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|c| c.msisdn.clone());
        all.extend(page);
    }
    let mut sorted = numbers.clone();
    sorted.sort();
    assert_eq!(
        all.iter().map(|c| c.msisdn.clone()).collect::<Vec<_>>(),
        sorted
    );

    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .contacts(VMN, Some(ConsentState::OptedOut), after.as_deref(), 3)
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|c| c.state == ConsentState::OptedOut));
        after = page.last().map(|c| c.msisdn.clone());
        out.extend(page.into_iter().map(|c| c.msisdn));
    }
    let mut want: Vec<String> = numbers.iter().step_by(3).cloned().collect();
    want.sort();
    assert_eq!(out, want);
    assert_eq!(
        store
            .contacts("9876543210", None, None, 10)
            .expect("other")
            .len(),
        1
    );
}

#[test]
fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let who = "919812345678";
    {
        let store = open(dir.path());
        store
            .apply_consent(&sms(
                who,
                ConsentState::OptedOut,
                T0,
                "please stop texting me",
                "m1",
            ))
            .expect("stop");
        store.set_confirmation_sent(VMN, who, "m1").expect("sent");
        store.touch_contact(VMN, "919800000009", T0).expect("touch");
        // Dropping the store flushes sled.
    }
    let store = open(dir.path());
    assert_eq!(
        store.consent_state(VMN, who).expect("state"),
        ConsentState::OptedOut
    );
    let ledger = store.ledger(VMN, None, None, 10).expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].1.text, "please stop texting me");
    assert!(ledger[0].1.confirmation_sent);
    assert_eq!(
        store.contacts(VMN, None, None, 10).expect("contacts").len(),
        2
    );
    // Ids keep growing after a reopen, so the ledger stays in record order.
    store
        .apply_consent(&sms(who, ConsentState::OptedIn, T0 + 1, "START", "m2"))
        .expect("start");
    let ledger = store.ledger(VMN, Some(who), None, 10).expect("ledger");
    assert_eq!(
        ledger.iter().map(|(_, e)| e.to).collect::<Vec<_>>(),
        [ConsentState::OptedOut, ConsentState::OptedIn]
    );
}

#[test]
fn the_opt_out_check_agrees_with_the_store_before_during_and_after_its_index_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let now = vmnd::clock::now_ms();
    let (out, in_, lapsed, asking) = (
        "919800000001",
        "919800000002",
        "919800000003",
        "919800000004",
    );
    store
        .apply_consent(&sms(out, ConsentState::OptedOut, now, "STOP", "1"))
        .expect("stop");
    store
        .apply_consent(&sms(in_, ConsentState::OptedIn, now, "START", "2"))
        .expect("start");
    // Opted out, then asked to join again: opted out once the ask lapses, not before.
    for (who, until) in [(lapsed, now - 1), (asking, now + 3_600_000)] {
        let id = format!("s{who}");
        store
            .apply_consent(&sms(who, ConsentState::OptedOut, now - 10_000, "STOP", &id))
            .expect("stop");
        let id = format!("j{who}");
        let ask = ConsentChange {
            pending_until_ms: Some(until),
            ..sms(who, ConsentState::Pending, now - 5_000, "JOIN", &id)
        };
        store.apply_consent(&ask).expect("ask");
    }
    let expect = |store: &Store| {
        for (who, want) in [
            (out, true),
            (in_, false),
            (lapsed, true),
            (asking, false),
            ("919800000009", false),
        ] {
            assert_eq!(store.is_opted_out(VMN, who).expect("check"), want, "{who}");
            assert!(
                !store.is_opted_out("9876543210", who).expect("check"),
                "{who}"
            );
        }
        assert!(store.is_opted_out(VMN, "+91 98000-00001").expect("check"));
    };
    expect(&store);
    assert_eq!(
        store.build_opt_out_index().expect("build"),
        3,
        "out, lapsed and asking"
    );
    expect(&store);
    // Changes after the build reach the index.
    store
        .apply_consent(&sms(out, ConsentState::OptedIn, now, "START", "3"))
        .expect("start");
    store
        .apply_consent(&sms(in_, ConsentState::OptedOut, now, "STOP", "4"))
        .expect("stop");
    assert!(!store.is_opted_out(VMN, out).expect("check"));
    assert!(store.is_opted_out(VMN, in_).expect("check"));
}

#[test]
fn changes_made_while_the_index_builds_are_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let n = 4000u64;
    let numbers: Vec<String> = (0..n).map(|i| format!("9198{i:08}")).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
    let changes: Vec<ConsentChange> = numbers
        .iter()
        .zip(&ids)
        .map(|(who, id)| sms(who, ConsentState::OptedOut, T0, "STOP", id))
        .collect();
    store.apply_consents(&changes).expect("fill");
    // Every other contact opts back in while the index is being built.
    let writer = {
        let store = store.clone();
        let numbers = numbers.clone();
        std::thread::spawn(move || {
            for (i, who) in numbers.iter().enumerate().step_by(2) {
                let id = format!("b{i}");
                store
                    .apply_consent(&sms(who, ConsentState::OptedIn, T0 + 1, "START", &id))
                    .expect("start");
            }
        })
    };
    store.build_opt_out_index().expect("build");
    writer.join().expect("writer");
    for (i, who) in numbers.iter().enumerate() {
        assert_eq!(
            store.is_opted_out(VMN, who).expect("check"),
            i % 2 == 1,
            "{who}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Through the admin API of a running daemon
// ------------------------------------------------------------------------------------------

/// A raw HTTP/1.1 POST; returns (status, body).
async fn post(h: &Harness, path: &str, body: &[u8]) -> (u16, String) {
    post_after(h, path, body, Duration::ZERO).await
}

/// [`post`], with `pause` between writing the head and writing the body.
async fn post_after(h: &Harness, path: &str, body: &[u8], pause: Duration) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(h.daemon().admin_addr)
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    // The server may answer (413) before reading everything: a failed write is not a failure.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .find("\r\n\r\n")
        .map(|i| text[i + 4..].to_string())
        .unwrap_or_default();
    (status, body)
}

async fn start() -> Harness {
    Harness::start(SmscConfig::default(), SinkMode::Ok, "").await
}

/// An import whose body arrives well after its head is still answered. The admin server runs
/// requests that can block off the runtime's workers (`block_in_place`), but only once their
/// body has arrived: the body is read by the connection's own task, and a request run that
/// way before its body came waited for it forever (the CI run of 2026-11-29 hung here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_body_comes_late_is_answered() {
    let h = start().await;
    let csv = "msisdn\n919800000007\n";
    let exchange = post_after(
        &h,
        "/api/numbers/567678/contacts/import",
        csv.as_bytes(),
        Duration::from_millis(300),
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the import was never answered");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["imported"], 1, "{body}");
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reports_bad_rows_by_line_and_applies_the_good_ones() {
    let h = start().await;
    let csv = "msisdn,opted_out_at,note\n\
               # from the old CRM\n\
               +91 98123-45678,2026-01-02T03:04:05Z,called support\n\
               \n\
               12345\n\
               919800000001,last tuesday\n\
               919800000002\n\
               91 9800000002\n";
    let (status, body) = post(&h, "/api/numbers/567678/contacts/import", csv.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["imported"], 2, "{body}");
    assert_eq!(v["unchanged"], 1, "the same person twice: {body}");
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["line"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(lines, [5, 6], "{body}");
    assert!(
        v["errors"][0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("digits"),
        "{body}"
    );

    let store = &h.daemon().store;
    for who in ["919812345678", "919800000002"] {
        assert_eq!(
            store.consent_state("567678", who).expect("state"),
            ConsentState::OptedOut
        );
    }
    assert_eq!(
        store
            .consent_state("9876543210", "919812345678")
            .expect("state"),
        ConsentState::Unknown
    );

    let (status, body) = h
        .admin_get("/api/numbers/567678/ledger?msisdn=%2B919812345678")
        .await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let entries = v["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{body}");
    assert_eq!(entries[0]["source"], "import");
    assert_eq!(
        entries[0]["text"],
        "import: +91 98123-45678,2026-01-02T03:04:05Z,called support"
    );
    assert_eq!(entries[0]["at"], "2026-01-02T03:04:05.000Z");
    assert_eq!(entries[0]["to"], "opted_out");

    // Paging the whole ledger of the number.
    let (_, body) = h.admin_get("/api/numbers/567678/ledger?limit=2").await;
    let v = json(&body);
    let next = v["next"].as_str().expect("a next page").to_string();
    let (_, body) = h
        .admin_get(&format!("/api/numbers/567678/ledger?limit=2&after={next}"))
        .await;
    assert_eq!(
        json(&body)["entries"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_as_json_and_csv_and_a_csv_round_trip_between_numbers() {
    let h = start().await;
    let store = &h.daemon().store;
    let attributes = [("args".to_string(), "summer, \"beach\"".to_string())];
    for (i, who) in [
        "919800000003",
        "919800000001",
        "919800000002",
        "919800000004",
    ]
    .iter()
    .enumerate()
    {
        let to = if i % 2 == 0 {
            ConsentState::OptedOut
        } else {
            ConsentState::OptedIn
        };
        let id = format!("m{i}");
        store
            .apply_consent(&ConsentChange {
                keyword: Some("JOIN"),
                attributes: &attributes,
                ..sms(who, to, T0 + i as u64, "x", &id)
            })
            .expect("apply");
    }
    // The STOP keeps what the contact joined with.
    store
        .apply_consent(&ConsentChange {
            keyword: Some("JOIN"),
            attributes: &attributes,
            ..sms("919800000004", ConsentState::OptedIn, T0, "JOIN", "j4")
        })
        .expect("join");
    store
        .apply_consent(&sms(
            "919800000004",
            ConsentState::OptedOut,
            T0 + 9,
            "STOP",
            "s4",
        ))
        .expect("stop");

    let (status, body) = h
        .admin_get("/api/numbers/567678/contacts?state=opted_out&limit=2")
        .await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let got: Vec<&str> = v["contacts"]
        .as_array()
        .expect("contacts")
        .iter()
        .filter_map(|c| c["msisdn"].as_str())
        .collect();
    assert_eq!(got, ["919800000002", "919800000003"], "{body}");
    assert_eq!(v["next"], "919800000003");
    let (_, body) = h
        .admin_get("/api/numbers/567678/contacts?state=opted_out&limit=2&after=919800000003")
        .await;
    let v = json(&body);
    assert_eq!(v["contacts"][0]["msisdn"], "919800000004", "{body}");
    assert_eq!(v["contacts"][0]["source_keyword"], "JOIN", "{body}");
    assert_eq!(
        v["next"],
        serde_json::Value::Null,
        "a short page is the last"
    );

    let (status, csv) = h
        .admin_get("/api/numbers/567678/contacts?state=opted_out&format=csv")
        .await;
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "msisdn,state,first_seen,last_seen,source_keyword,attributes"
    );
    assert_eq!(lines.len(), 4, "{csv}");
    assert_eq!(
        lines[3],
        "919800000004,opted_out,2026-05-28T20:26:40.000Z,2026-05-28T20:26:40.009Z,JOIN,\"{\"\"args\"\":\"\"summer, \\\"\"beach\\\"\"\"\"}\""
    );

    // Into the other number: the same set, and again: nothing new.
    let (status, body) = post(
        &h,
        "/api/numbers/9876543210/contacts/import",
        csv.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(
        (v["imported"].as_u64(), v["unchanged"].as_u64()),
        (Some(3), Some(0)),
        "{body}"
    );
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{body}");
    let (_, body) = post(
        &h,
        "/api/numbers/9876543210/contacts/import",
        csv.as_bytes(),
    )
    .await;
    assert_eq!(json(&body)["unchanged"], 3, "{body}");
    let (_, back) = h
        .admin_get("/api/numbers/9876543210/contacts?state=opted_out&format=csv")
        .await;
    let msisdns = |csv: &str| {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(msisdns(&back), msisdns(&csv));
    assert!(
        back.lines().skip(1).all(|l| l.contains(",opted_out,")),
        "{back}"
    );

    // Everything, any state, and bad parameters.
    let (_, body) = h.admin_get("/api/numbers/567678/contacts").await;
    assert_eq!(json(&body)["contacts"].as_array().map(Vec::len), Some(4));
    for bad in ["state=gone", "limit=0", "limit=x", "format=xml"] {
        let (status, body) = h
            .admin_get(&format!("/api/numbers/567678/contacts?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = h
        .admin_get("/api/numbers/567678/ledger?after=nonsense")
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_numbers_are_404_and_oversized_imports_413() {
    let h = start().await;
    for path in ["/api/numbers/111111/contacts", "/api/numbers/111111/ledger"] {
        let (status, body) = h.admin_get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, body) = post(&h, "/api/numbers/111111/contacts/import", b"919812345678\n").await;
    assert_eq!(status, 404, "{body}");

    let big = vec![b'9'; 16 * 1024 * 1024 + 1];
    let (status, body) = post(&h, "/api/numbers/567678/contacts/import", &big).await;
    assert_eq!(status, 413, "{body}");
    // The daemon is still answering.
    let (status, _) = h.admin_get("/healthz").await;
    assert!(status == 200 || status == 503);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
