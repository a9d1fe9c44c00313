//! The daemon's SMPP side over real TCP against the carrier simulator: binds refused then
//! accepted, enquire_link both ways, unbind from the SMSC, the SMSC dropping TCP mid-stream
//! (redeliveries acknowledged, nothing lost), malformed PDUs answered without dropping the
//! session, several carriers at once, and concatenation (UDH and SAR, out of order, duplicate
//! parts, reassembly timeout) through the whole pipeline.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Harness, eventually, sink_bodies};
use vmnd::http_sink::SinkMode;
use vmnd::sim::{SmscConfig, mo};
use vmnd::smpp::pdu::{Body, command_id, status};

const LONG: Duration = Duration::from_secs(30);

fn texts_posted(h: &Harness) -> HashSet<String> {
    sink_bodies(&h.sink)
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bind_is_retried_until_accepted() {
    let cfg = SmscConfig {
        refuse_binds: 2,
        ..Default::default()
    };
    let h = Harness::start(cfg, SinkMode::Ok, "").await;
    assert!(
        h.smsc.wait_until(LONG, |s| s.binds_ok == 1).await,
        "never bound: {:?}",
        h.smsc.stats()
    );
    assert_eq!(h.smsc.stats().binds_refused, 2);
    // The refusal is visible to operators with the status's name.
    let (_, health) = h.admin_get("/healthz").await;
    assert!(health.contains("ESME_RINVPASWD"), "{health}");
    h.smsc
        .enqueue(mo::gsm("919812345678", "567678", "after refusal"));
    assert!(h.sink.wait_for(1, LONG).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquire_link_both_ways() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    assert!(h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await);
    // The SMSC asks: the daemon answers.
    assert_eq!(h.smsc.enquire_link_all().await, 1);
    assert_eq!(h.smsc.stats().enquire_link_resps_received, 1);
    // The daemon asks when idle: restart it with a short enquire_link.
    h.stop_daemon().await;
    let text = h
        .config_text("")
        .replace("enquire_link = \"30s\"", "enquire_link = \"200ms\"");
    let config = common::parse_config(&text);
    h.daemon = Some(vmnd::daemon::Daemon::start(config).await.expect("daemon"));
    assert!(
        h.smsc
            .wait_until(LONG, |s| s.enquire_links_received >= 2)
            .await,
        "{:?}",
        h.smsc.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_from_the_smsc_is_answered_and_the_daemon_rebinds() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    assert!(h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await);
    assert_eq!(h.smsc.unbind_all().await, 1, "unbind_resp expected");
    assert!(
        h.smsc
            .wait_until(LONG, |s| s.binds_ok == 2 && s.sessions_bound == 1)
            .await
    );
    h.smsc
        .enqueue(mo::gsm("919812345678", "567678", "after unbind"));
    assert!(h.sink.wait_for(1, LONG).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_mid_stream_loses_nothing() {
    let h = Harness::start(
        SmscConfig {
            window: 20,
            ..Default::default()
        },
        SinkMode::Ok,
        "",
    )
    .await;
    let total = 1500u64;
    let texts: Vec<String> = (0..total).map(|i| format!("stream {i:05}")).collect();
    h.smsc.enqueue_many(
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| mo::gsm(&format!("9198{:08}", i % 97), "567678", t)),
    );
    assert!(h.smsc.wait_until(LONG, |s| s.acked_ok >= 300).await);
    h.smsc.drop_connections();
    assert!(
        h.smsc
            .wait_until(Duration::from_secs(60), |s| s.acked_ok == total)
            .await,
        "{:?}",
        h.smsc.stats()
    );
    assert!(h.smsc.stats().connections >= 2, "the daemon reconnected");
    assert!(
        eventually(Duration::from_secs(60), || texts_posted(&h).len()
            == total as usize)
        .await,
        "posted {} of {total}",
        texts_posted(&h).len()
    );
    let posted = texts_posted(&h);
    for t in &texts {
        assert!(posted.contains(t), "{t} missing");
    }
}

/// Builds a PDU from a header and raw body bytes, with a chosen command_length.
fn raw_pdu(command_length: u32, command_id: u32, seq: u32, body: &[u8]) -> bytes::Bytes {
    let mut v = Vec::new();
    v.extend_from_slice(&command_length.to_be_bytes());
    v.extend_from_slice(&command_id.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(body);
    bytes::Bytes::from(v)
}

fn pdu(command_id: u32, seq: u32, body: &[u8]) -> bytes::Bytes {
    raw_pdu(16 + body.len() as u32, command_id, seq, body)
}

/// deliver_sm body up to and including sm_length, then `sm` and `tail`.
fn deliver_body(sm_length: u8, sm: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(0); // service_type ""
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(b"919812345678\0");
    b.extend_from_slice(&[0, 1]);
    b.extend_from_slice(b"567678\0");
    b.extend_from_slice(&[0, 0, 0]); // esm_class, protocol_id, priority
    b.extend_from_slice(&[0, 0]); // schedule, validity ""
    b.extend_from_slice(&[0, 0, 0, 0]); // registered_delivery, replace, data_coding, default id
    b.push(sm_length);
    b.extend_from_slice(sm);
    b.extend_from_slice(tail);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_are_answered_and_the_session_stays_bound() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    assert!(h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await);
    let deliver = command_id::DELIVER_SM;
    // sm_length past the data.
    h.smsc
        .enqueue_raw(pdu(deliver, 101, &deliver_body(50, b"short", &[])));
    // Truncated body: ends inside the destination address.
    h.smsc
        .enqueue_raw(pdu(deliver, 102, &deliver_body(5, b"hello", &[])[..10]));
    // Unterminated C-string: no NUL anywhere after service_type.
    h.smsc
        .enqueue_raw(pdu(deliver, 103, b"\0\x01\x01919812345678567678"));
    // Unknown command id.
    h.smsc.enqueue_raw(pdu(0x0000_0777, 104, b""));
    // Bad command_length (shorter than a header).
    h.smsc
        .enqueue_raw(raw_pdu(8, command_id::ENQUIRE_LINK, 105, b""));
    // A TLV whose length runs past the end.
    h.smsc.enqueue_raw(pdu(
        deliver,
        106,
        &deliver_body(2, b"hi", &[0x14, 0x01, 0x00, 0x09, 1]),
    ));
    // A valid deliver_sm with an unknown TLV: accepted and forwarded.
    h.smsc.enqueue_raw(pdu(
        deliver,
        107,
        &deliver_body(8, b"tlv test", &[0x14, 0x01, 0x00, 0x01, 7]),
    ));
    // A UDH longer than the message: acknowledged and kept (forwarded as binary).
    let mut udh_body = deliver_body(3, &[0x09, 0x00, 0x03], &[]);
    udh_body[25] = 0x40; // esm_class: UDHI
    h.smsc.enqueue_raw(pdu(deliver, 108, &udh_body));
    h.smsc
        .enqueue(mo::gsm("919812345678", "567678", "still bound"));

    assert!(
        h.smsc.wait_until(LONG, |s| s.acked_ok == 1).await,
        "the good message after the bad ones was not acked: {:?}",
        h.smsc.stats()
    );
    assert!(
        eventually(LONG, || h.smsc.raw_responses().len() == 8).await,
        "{:?}",
        h.smsc.raw_responses()
    );
    let responses = h.smsc.raw_responses();
    let by_seq = |seq: u32| {
        responses
            .iter()
            .find(|p| p.sequence_number == seq)
            .unwrap_or_else(|| panic!("no answer to sequence {seq}: {responses:?}"))
    };
    for seq in [101, 102, 103, 106] {
        let r = by_seq(seq);
        assert!(matches!(r.body, Body::DeliverSmResp { .. }), "{r:?}");
        assert_ne!(r.command_status, status::ESME_ROK, "{r:?}");
    }
    let unknown = by_seq(104);
    assert_eq!(
        (&unknown.body, unknown.command_status),
        (&Body::GenericNack, status::ESME_RINVCMDID)
    );
    let bad_len = by_seq(105);
    assert_eq!(
        (&bad_len.body, bad_len.command_status),
        (&Body::GenericNack, status::ESME_RINVCMDLEN)
    );
    for seq in [107, 108] {
        assert_eq!(
            by_seq(seq).command_status,
            status::ESME_ROK,
            "{:?}",
            by_seq(seq)
        );
    }
    // Never dropped: one bind, one connection.
    let stats = h.smsc.stats();
    assert_eq!((stats.binds_ok, stats.connections), (1, 1), "{stats:?}");
    assert!(
        eventually(LONG, || h.sink.count() == 3).await,
        "posted {}",
        h.sink.count()
    );
    let bodies = sink_bodies(&h.sink);
    assert!(bodies.iter().any(|b| b["text"] == "tlv test"));
    assert!(bodies.iter().any(|b| b["text"] == "still bound"));
    assert!(
        bodies
            .iter()
            .any(|b| b["encoding"] == "binary" && b["text"] == "090003"),
        "{bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_carriers_at_once() {
    let other = vmnd::sim::Smsc::start(SmscConfig::default())
        .await
        .expect("second sim");
    let extra = format!(
        "\n[[carrier]]\nname = \"second\"\nhost = \"127.0.0.1\"\nport = {}\nsystem_id = \"vmnd\"\npassword = \"secret\"\nbind = \"receiver\"\n",
        other.addr().port()
    );
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, &extra).await;
    h.smsc
        .enqueue(mo::gsm("919800000001", "567678", "via the first"));
    other.enqueue(mo::gsm("919800000002", "9876543210", "via the second"));
    assert!(h.sink.wait_for(2, LONG).await);
    let bodies = sink_bodies(&h.sink);
    let carrier_of = |text: &str| {
        bodies
            .iter()
            .find(|b| b["text"] == text)
            .map(|b| b["carrier"].clone())
    };
    assert_eq!(carrier_of("via the first"), Some(serde_json::json!("sim")));
    assert_eq!(
        carrier_of("via the second"),
        Some(serde_json::json!("second"))
    );
    let (status, health) = h.admin_get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    other.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concatenation_by_udh_and_sar_out_of_order_with_duplicates() {
    let h = Harness::start(
        SmscConfig {
            window: 1,
            ..Default::default()
        },
        SinkMode::Ok,
        "",
    )
    .await;
    let udh_text = "Sixteen-bit reference parts, delivered backwards. ".repeat(5);
    let mut udh_parts = mo::concat_udh("919800000010", "567678", &udh_text, 0x1234, true);
    assert_eq!(udh_parts.len(), 2);
    udh_parts.reverse();
    let dup = udh_parts[0].clone();
    udh_parts.push(dup); // a carrier redelivery of a part: absorbed
    h.smsc.enqueue_many(udh_parts);
    let sar_text = "Сообщение из нескольких частей через SAR TLV, 😀 включительно. ".repeat(3);
    let mut sar_parts = mo::concat_sar("919800000011", "567678", &sar_text, 77);
    assert!(sar_parts.len() >= 3);
    sar_parts.swap(0, 2);
    h.smsc.enqueue_many(sar_parts);
    assert!(h.sink.wait_for(2, LONG).await);
    let bodies = sink_bodies(&h.sink);
    let udh = bodies
        .iter()
        .find(|b| b["from"] == "919800000010")
        .expect("udh message");
    assert_eq!(udh["text"], udh_text.as_str());
    assert_eq!(udh["parts"], 2);
    let sar = bodies
        .iter()
        .find(|b| b["from"] == "919800000011")
        .expect("sar message");
    assert_eq!(sar["text"], sar_text.as_str());
    assert_eq!(sar["encoding"], "ucs2");
    // Exactly two messages: the duplicate part did not make a third.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.sink.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_message_is_delivered_after_the_reassembly_timeout() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    let text = "Three parts, of which the middle one never arrives. ".repeat(8);
    let parts = mo::concat_udh("919800000012", "567678", &text, 9, false);
    assert_eq!(parts.len(), 3);
    h.smsc.enqueue(parts[0].clone());
    h.smsc.enqueue(parts[2].clone());
    // reassembly_timeout is 2s in the harness config.
    assert!(h.sink.wait_for(1, LONG).await);
    let body = &sink_bodies(&h.sink)[0];
    assert_eq!(body["complete"], false);
    assert_eq!(body["missing_parts"], serde_json::json!([2]));
    assert_eq!(body["parts"], 3);
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Three parts"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_rx_t_appn_and_the_carrier_retry_succeeds() {
    let cfg = SmscConfig {
        retry_after: Duration::from_millis(300),
        ..Default::default()
    };
    let h = Harness::start(cfg, SinkMode::Ok, "").await;
    assert!(h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await);
    h.daemon().store.inject_commit_failure(true);
    h.smsc
        .enqueue(mo::gsm("919800000020", "567678", "retry me"));
    assert!(h.smsc.wait_until(LONG, |s| s.acked_error >= 1).await);
    assert_eq!(
        h.smsc.stats().acked_ok,
        0,
        "nothing acknowledged while the store fails"
    );
    h.daemon().store.inject_commit_failure(false);
    assert!(
        h.smsc.wait_until(LONG, |s| s.acked_ok == 1).await,
        "{:?}",
        h.smsc.stats()
    );
    assert!(h.sink.wait_for(1, LONG).await);
    assert_eq!(sink_bodies(&h.sink)[0]["text"], "retry me");
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics.contains("vmnd_store_commit_failures_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_gsm_is_decoded_for_a_carrier_that_packs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smsc = vmnd::sim::Smsc::start(SmscConfig::default())
        .await
        .expect("sim");
    let sink = vmnd::http_sink::HttpSink::start(SinkMode::Ok)
        .await
        .expect("sink");
    let text = common::config_text(
        &dir.path().join("var"),
        smsc.addr().port(),
        &sink.url("/sms"),
        "",
    )
    .replace(
        "reconnect_max = \"500ms\"",
        "reconnect_max = \"500ms\"\ngsm_packed = true",
    );
    let daemon = vmnd::daemon::Daemon::start(common::parse_config(&text))
        .await
        .expect("daemon");
    smsc.enqueue(mo::gsm_packed(
        "919800000021",
        "567678",
        "Packed: 10€ [ok] @home",
    ));
    let text = "Packed across parts with extension chars {} ".repeat(5);
    smsc.enqueue_many(mo::concat_udh_packed(
        "919800000022",
        "567678",
        &text,
        5,
        false,
    ));
    assert!(sink.wait_for(2, LONG).await);
    let bodies = sink_bodies(&sink);
    assert!(
        bodies.iter().any(|b| b["text"] == "Packed: 10€ [ok] @home"),
        "{bodies:?}"
    );
    assert!(
        bodies.iter().any(|b| b["text"] == text.as_str()),
        "{bodies:?}"
    );
    daemon.shutdown().await;
}

/// A sloppy SMSC: bind responses and submit_sm_resp without the id's NUL, enquire_link_resp
/// with a stray octet. Each fails a strict decode, and each still settles its request: the
/// bind is made and holds past `response_timeout`, enquire_links keep being answered, and the
/// accepted submit_sm is sent once, with the carrier's id kept for its receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_responses_settle_their_requests_and_the_bind_holds() {
    let sloppy = SmscConfig {
        sloppy_responses: true,
        ..SmscConfig::default()
    };
    let keyword = "[[number.keyword]]\nkeyword = \"JOIN\"\nreply = \"Thanks\"\n";
    let mut h = Harness::start(sloppy, SinkMode::Ok, keyword).await;
    assert!(
        h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await,
        "a bind_transceiver_resp without its NUL was not taken: {:?}",
        h.smsc.stats()
    );
    // Again with the daemon asking every 200 ms and waiting at most 1 s for any answer.
    h.stop_daemon().await;
    let text = h.config_text(keyword).replace(
        "enquire_link = \"30s\"",
        "enquire_link = \"200ms\"\nresponse_timeout = \"1s\"",
    );
    h.daemon = Some(
        vmnd::daemon::Daemon::start(common::parse_config(&text))
            .await
            .expect("daemon"),
    );
    assert!(h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await);
    let bound = h.smsc.stats();
    h.smsc
        .enqueue(mo::gsm("919812345678", "9876543210", "JOIN"));
    assert!(
        eventually(LONG, || h.smsc.submitted().len() == 1).await,
        "{:?}",
        h.smsc.stats()
    );
    let asked = h.smsc.stats().enquire_links_received;
    assert!(
        h.smsc
            .wait_until(LONG, |s| s.enquire_links_received >= asked + 8)
            .await,
        "the daemon stopped asking: {:?}",
        h.smsc.stats()
    );
    // Past response_timeout: an unsettled request would have ended the session by now.
    let after = h.smsc.stats();
    assert_eq!(
        (after.binds_ok, after.connections),
        (bound.binds_ok, bound.connections),
        "the bind was dropped: {after:?}"
    );
    assert_eq!(
        h.smsc.submitted().len(),
        1,
        "the accepted submit_sm was sent again"
    );
    let (status, body) = h.admin_get("/api/outbound").await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("json");
    let record = &page["outbound"][0];
    assert_eq!(record["state"], "sent", "{page}");
    assert!(
        record["segments"][0]["carrier_message_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("sim-")),
        "{page}"
    );
}

/// An SMSC that sends enquire_link and, in the same segment, the first octets of its next PDU
/// may wait for the answer before it sends the rest: the answer goes out at once, not when
/// something else flushes the session's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_out_while_a_pdu_is_half_read() {
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    assert!(h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await);
    let deliver = pdu(
        command_id::DELIVER_SM,
        0x4000_0002,
        &deliver_body(4, b"half", &[]),
    );
    let mut first = pdu(command_id::ENQUIRE_LINK, 0x4000_0001, b"").to_vec();
    first.extend_from_slice(&deliver[..10]);
    h.smsc.enqueue_raw(first.into());
    // The daemon's own enquire_link (every 30 s) would flush it too: wait far less.
    assert!(
        eventually(Duration::from_secs(5), || !h
            .smsc
            .raw_responses()
            .is_empty())
        .await,
        "enquire_link unanswered while a PDU was half read"
    );
    let answer = &h.smsc.raw_responses()[0];
    assert_eq!(
        (&answer.body, answer.sequence_number, answer.command_status),
        (&Body::EnquireLinkResp, 0x4000_0001, status::ESME_ROK)
    );
    // The rest of the PDU completes it: acknowledged, and the session never dropped.
    h.smsc.enqueue_raw(deliver.slice(10..));
    assert!(
        eventually(LONG, || h.smsc.raw_responses().len() == 2).await,
        "{:?}",
        h.smsc.raw_responses()
    );
    let ack = &h.smsc.raw_responses()[1];
    assert!(matches!(ack.body, Body::DeliverSmResp { .. }), "{ack:?}");
    assert_eq!(
        (ack.sequence_number, ack.command_status),
        (0x4000_0002, status::ESME_ROK)
    );
    assert!(h.sink.wait_for(1, LONG).await);
    let stats = h.smsc.stats();
    assert_eq!((stats.binds_ok, stats.connections), (1, 1), "{stats:?}");
}

/// A response settles only the request it answers: a submit_sm_resp carrying an
/// enquire_link's sequence number leaves the enquire_link unanswered, so the session ends
/// after `response_timeout` and binds again, and the mix-up is counted for operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_to_another_command_settles_nothing() {
    let mixed_up = SmscConfig {
        mismatched_enquire_link_resps: true,
        ..SmscConfig::default()
    };
    let mut h = Harness::start(mixed_up, SinkMode::Ok, "").await;
    assert!(h.smsc.wait_until(LONG, |s| s.sessions_bound == 1).await);
    // Again with the daemon asking every 200 ms and waiting at most 1 s for the answer.
    h.stop_daemon().await;
    let text = h.config_text("").replace(
        "enquire_link = \"30s\"",
        "enquire_link = \"200ms\"\nresponse_timeout = \"1s\"",
    );
    let bound_before = h.smsc.stats().binds_ok;
    h.daemon = Some(
        vmnd::daemon::Daemon::start(common::parse_config(&text))
            .await
            .expect("daemon"),
    );
    assert!(
        h.smsc
            .wait_until(LONG, |s| s.binds_ok >= bound_before + 2)
            .await,
        "the unanswered enquire_link did not end the session: {:?}",
        h.smsc.stats()
    );
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vmnd_pdu_errors_total")
                && l.contains("kind=\"mismatched_response\"")),
        "{metrics}"
    );
}

/// An SMSC that keeps the connection open but stops reading (wedged, or cut off with no
/// RST): once the socket's buffers are full the daemon's writes stall, and within
/// `response_timeout` the session ends and the daemon connects again, rather than hanging
/// in a write with nothing else running and the bind looking up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smsc_that_stops_reading_is_left_and_reconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use vmnd::smpp::pdu::{self, Pdu};
    // A small receive buffer, so that the daemon's acks fill the connection soon.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let listener = socket.listen(8).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = vmnd::http_sink::HttpSink::start(SinkMode::Ok)
        .await
        .expect("sink");
    let text = common::config_text(&dir.path().join("var"), port, &sink.url("/sms"), "").replace(
        "enquire_link = \"30s\"",
        "enquire_link = \"30s\"\nresponse_timeout = \"1s\"",
    );
    let daemon = vmnd::daemon::Daemon::start(common::parse_config(&text))
        .await
        .expect("daemon");

    let (mut conn, _) = tokio::time::timeout(LONG, listener.accept())
        .await
        .expect("the daemon connects")
        .expect("accept");
    // Answer the bind, then send deliver_sm and never read again.
    let mut header = [0u8; 16];
    conn.read_exact(&mut header).await.expect("bind");
    let length = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; length - 16];
    conn.read_exact(&mut body).await.expect("bind body");
    let bind_seq = u32::from_be_bytes(header[12..16].try_into().unwrap());
    let bind_resp = pdu::encode_to_bytes(&Pdu {
        command_status: status::ESME_ROK,
        sequence_number: bind_seq,
        body: Body::BindTransceiverResp {
            system_id: "wedged".into(),
        },
    });
    conn.write_all(&bind_resp).await.expect("bind_resp");
    let (_read_half, mut write_half) = conn.into_split();
    let flood = tokio::spawn(async move {
        for seq in 1..=200_000u32 {
            let deliver = pdu::encode_to_bytes(&Pdu {
                command_status: 0,
                sequence_number: seq,
                body: Body::DeliverSm(Box::new(mo::gsm("919812345678", "567678", "flood"))),
            });
            if write_half.write_all(&deliver).await.is_err() {
                return;
            }
        }
    });
    let again = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await;
    assert!(
        matches!(again, Ok(Ok(_))),
        "the daemon stayed in a session whose SMSC does not read"
    );
    flood.abort();
    daemon.shutdown().await;
}

/// A clean stop while the carrier streams: everything journaled is acknowledged before the
/// unbind (the simulator closes once it answers the unbind), and what arrives meanwhile is
/// refused for later. Nothing stored goes unacknowledged, so nothing comes back as a
/// duplicate with a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_acknowledges_everything_it_stored() {
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, "").await;
    h.smsc.enqueue_many(
        (0..20_000).map(|n| mo::gsm("919812345678", "567678", &format!("stream {n:05}"))),
    );
    assert!(h.smsc.wait_until(LONG, |s| s.acked_ok >= 500).await);
    h.stop_daemon().await;
    let acked: HashSet<String> = h
        .smsc
        .acked()
        .iter()
        .map(|a| {
            vmnd::smpp::text::decode_text(a.sm.data_coding, &a.sm.short_message, false, 0).text
        })
        .collect();
    let store = vmnd::store::Store::open(&h.dir.path().join("var"), 8, false).expect("open");
    let mut stored: Vec<String> = store
        .list_messages(&vmnd::store::MessageFilter {
            to: None,
            from: None,
            keyword: None,
            inbox: None,
            since_ms: None,
            until_ms: None,
            before: None,
            limit: 100_000,
        })
        .expect("messages")
        .into_iter()
        .map(|m| m.text)
        .collect();
    for id in store.pending_journal_ids().expect("journal") {
        let entry = store.journal_entry(id).expect("entry").expect("live");
        if let Ok(vmnd::smpp::pdu::Pdu {
            body: Body::DeliverSm(sm),
            ..
        }) = vmnd::smpp::pdu::decode(&entry.pdu)
        {
            stored.push(
                vmnd::smpp::text::decode_text(sm.data_coding, &sm.short_message, false, 0).text,
            );
        }
    }
    assert!(stored.len() >= 500, "{}", stored.len());
    let unacked: Vec<&String> = stored.iter().filter(|t| !acked.contains(*t)).collect();
    assert!(
        unacked.is_empty(),
        "{} stored but never acknowledged, e.g. {:?}",
        unacked.len(),
        &unacked[..unacked.len().min(5)]
    );
}
