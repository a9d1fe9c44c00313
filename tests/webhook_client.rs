//! The webhook client against a real HTTP server ([`HttpSink`]) on loopback: signing (checked
//! against a vector and a verifier we did not write), success and failure classification,
//! timeouts, connection errors, keep-alive reuse, and the retry backoff's bounds.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Uri;
use vmnd::http_sink::{HttpSink, SinkMode};
use vmnd::outbound::webhook::{
    Attempt, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, WebhookClient, backoff, backoff_ceiling,
    signature, verify_signature,
};

const SECRET: &str = "whsec-test";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A body shaped like the contract's `message` event.
fn event_body() -> Bytes {
    Bytes::from_static(
        br#"{"event":"message","id":"01J8ZQ","to":"56767","from":"919812345678","text":"JOIN summer \u00e9","keyword":"JOIN","inbox":"summer","args":"summer","carrier":"sim","received_at":"2026-11-28T14:00:00.123Z","parts":1,"encoding":"gsm7"}"#,
    )
}

fn uri(s: &str) -> Uri {
    s.parse().expect("test URL parses")
}

#[test]
fn signature_matches_known_vector() {
    // Computed independently of this crate, with:
    // python3 -c 'import hmac,hashlib;t=1700000000;body=b"{\"event\":\"message\",\"id\":\"01J0000000000000000000000\"}";print(hmac.new(b"whsec-test",str(t).encode()+b"."+body,hashlib.sha256).hexdigest())'
    const EXPECTED_V1: &str = "a042a06bee478bc6a1c87f1df4b12c07bbed872af1d915f9de63463fa38dfd79";
    let body = br#"{"event":"message","id":"01J0000000000000000000000"}"#;
    let header = signature(SECRET, 1_700_000_000, body);
    assert_eq!(header, format!("t=1700000000,v1={EXPECTED_V1}"));
    assert!(verify_signature(SECRET, &header, body, 1_700_000_000, 0));

    // An empty secret and body are valid inputs too:
    // python3 -c 'import hmac,hashlib;print(hmac.new(b"",b"0.",hashlib.sha256).hexdigest())'
    assert_eq!(
        signature("", 0, b""),
        "t=0,v1=b849d5a581847b281957065739df36df2463d1977ea8d6e1e4e6cf33fadc68c3"
    );
}

#[tokio::test]
async fn captured_request_verifies_with_python_and_tampering_fails() {
    let sink = HttpSink::start(SinkMode::Ok).await.unwrap();
    let client = WebhookClient::new();
    let body = event_body();
    let attempt = client
        .post(
            &uri(&sink.url("/sms")),
            "01J8ZQ",
            Some(SECRET),
            body.clone(),
            TIMEOUT,
        )
        .await;
    assert!(
        matches!(attempt, Attempt::Delivered { status: 200, .. }),
        "{attempt:?}"
    );

    let requests = sink.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/sms");
    assert_eq!(req.body, body);
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("Vmnd-Event-Id"), Some("01J8ZQ"));
    let agent = req.header("user-agent").unwrap();
    assert_eq!(agent, concat!("vmnd/", env!("CARGO_PKG_VERSION")));
    let header = req.header("vmnd-signature").expect("signed").to_owned();

    // What arrived on the wire verifies with Python's hmac, and with ours.
    assert!(common::python_verifies(SECRET, &header, &req.body));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(verify_signature(SECRET, &header, &req.body, now, 300));

    // One changed byte, or the wrong secret, does not.
    let mut tampered = req.body.to_vec();
    tampered[10] ^= 1;
    assert!(!common::python_verifies(SECRET, &header, &tampered));
    assert!(!verify_signature(SECRET, &header, &tampered, now, 300));
    assert!(!common::python_verifies("whsec-other", &header, &req.body));

    // Without a secret there is no signature header at all.
    client
        .post(&uri(&sink.url("/sms")), "e2", None, body, TIMEOUT)
        .await;
    assert_eq!(sink.requests()[1].header("vmnd-signature"), None);
    sink.shutdown();
}

#[tokio::test]
async fn fail_first_three_then_delivered() {
    let sink = HttpSink::start(SinkMode::FailFirst { n: 3, status: 500 })
        .await
        .unwrap();
    let client = WebhookClient::new();
    let url = uri(&sink.url("/hook"));
    for i in 1..=3 {
        let attempt = client
            .post(&url, "ev", Some(SECRET), event_body(), TIMEOUT)
            .await;
        match attempt {
            Attempt::Failed {
                status: Some(500),
                ref error,
                ..
            } => assert!(error.starts_with("http 500"), "{error}"),
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    let fourth = client
        .post(&url, "ev", Some(SECRET), event_body(), TIMEOUT)
        .await;
    assert!(
        matches!(fourth, Attempt::Delivered { status: 200, .. }),
        "{fourth:?}"
    );
    let statuses: Vec<_> = sink.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(500), Some(200)]);
    assert_eq!(sink.count(), 1);
    assert_eq!(sink.received(), 4);
}

#[tokio::test]
async fn failed_status_error_is_readable() {
    let sink = HttpSink::start(SinkMode::Status(503)).await.unwrap();
    let attempt = WebhookClient::new()
        .post(&uri(&sink.url("/")), "ev", None, event_body(), TIMEOUT)
        .await;
    let Attempt::Failed { status, error, .. } = attempt else {
        panic!("{attempt:?}")
    };
    assert_eq!(status, Some(503));
    assert_eq!(
        error,
        "http 503 Service Unavailable: http sink: failing as configured"
    );

    // A 3xx is not followed and not a success.
    sink.set_mode(SinkMode::Status(302));
    let attempt = WebhookClient::new()
        .post(&uri(&sink.url("/")), "ev", None, event_body(), TIMEOUT)
        .await;
    assert_eq!(attempt.status(), Some(302));
    assert!(!attempt.is_delivered());
}

#[tokio::test]
async fn never_answer_times_out() {
    let sink = HttpSink::start(SinkMode::NeverAnswer).await.unwrap();
    let started = Instant::now();
    let attempt = WebhookClient::new()
        .post(
            &uri(&sink.url("/slow")),
            "ev",
            Some(SECRET),
            event_body(),
            Duration::from_millis(300),
        )
        .await;
    let elapsed = started.elapsed();
    let Attempt::Failed {
        status,
        error,
        latency,
    } = attempt
    else {
        panic!("{attempt:?}")
    };
    assert_eq!(status, None);
    assert!(error.starts_with("timeout"), "{error}");
    assert!(latency >= Duration::from_millis(300), "{latency:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    // The sink did read the request: the endpoint hung after receiving it.
    assert_eq!(sink.received(), 1);
    assert_eq!(sink.requests()[0].status, None);
    sink.shutdown();
}

#[tokio::test]
async fn closed_port_is_a_connection_error() {
    // A socket bound but never listening: connecting to it is refused, and holding it for the
    // whole test keeps a parallel test's server from being given the same port.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    // The pooled client, and the pipelined one (`outbound::pipeline`) with its own connect.
    for client in [WebhookClient::new(), WebhookClient::new().pipelined(8, 8)] {
        let attempt = client
            .post(
                &uri(&format!("http://127.0.0.1:{port}/sms")),
                "ev",
                Some(SECRET),
                event_body(),
                TIMEOUT,
            )
            .await;
        let Attempt::Failed { status, error, .. } = attempt else {
            panic!("{attempt:?}")
        };
        assert_eq!(status, None);
        assert!(error.starts_with("connect:"), "{error}");
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }
    drop(socket);
}

#[tokio::test]
async fn malformed_input_is_failed_not_panic() {
    let sink = HttpSink::start(SinkMode::Ok).await.unwrap();
    let client = WebhookClient::new();
    for url in ["/no/scheme/or/host", "ftp://example.net/sms"] {
        let attempt = client
            .post(&uri(url), "ev", Some(SECRET), event_body(), TIMEOUT)
            .await;
        let Attempt::Failed { status, error, .. } = attempt else {
            panic!("{url}: {attempt:?}")
        };
        assert_eq!(status, None);
        assert!(error.starts_with("invalid url:"), "{error}");
    }
    // An event id that cannot be a header value.
    let attempt = client
        .post(
            &uri(&sink.url("/sms")),
            "bad\r\nid",
            Some(SECRET),
            event_body(),
            TIMEOUT,
        )
        .await;
    let Attempt::Failed { error, .. } = attempt else {
        panic!("{attempt:?}")
    };
    assert!(error.starts_with("invalid request:"), "{error}");
    assert_eq!(sink.received(), 0);
}

#[tokio::test]
async fn keep_alive_reuses_connections() {
    let sink = HttpSink::start(SinkMode::Ok).await.unwrap();
    let client = WebhookClient::new();
    let url = uri(&sink.url("/sms"));
    for i in 0..100 {
        let attempt = client
            .post(
                &url,
                &format!("ev-{i}"),
                Some(SECRET),
                event_body(),
                TIMEOUT,
            )
            .await;
        assert!(attempt.is_delivered(), "{i}: {attempt:?}");
    }
    assert_eq!(sink.count(), 100);
    // Sequential posts should all ride one pooled connection; allow one spare in case the
    // pool races a just-returned connection.
    assert!(
        sink.connections() <= 2,
        "{} connections",
        sink.connections()
    );

    // Clones share the pool.
    let clone = client.clone();
    assert!(
        clone
            .post(&url, "ev-clone", None, event_body(), TIMEOUT)
            .await
            .is_delivered()
    );
    assert!(
        sink.connections() <= 2,
        "{} connections",
        sink.connections()
    );
}

#[tokio::test]
async fn sink_counts_without_recording_and_waits() {
    let sink = HttpSink::start(SinkMode::Ok).await.unwrap();
    sink.set_record_bodies(false);
    let client = WebhookClient::new();
    let url = uri(&sink.url("bench"));
    let waiter = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.wait_for(10, TIMEOUT).await })
    };
    for _ in 0..10 {
        assert!(
            client
                .post(&url, "ev", None, event_body(), TIMEOUT)
                .await
                .is_delivered()
        );
    }
    assert!(waiter.await.unwrap());
    assert_eq!(sink.count(), 10);
    assert!(sink.requests().is_empty());
    assert!(!sink.wait_for(11, Duration::from_millis(100)).await);
}

#[test]
fn backoff_bounds() {
    let (base, max) = (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX);
    // Ceilings: 1 s, doubling, capped at 10 min (2^9 = 512 s < 600 s < 2^10 = 1024 s).
    let secs = |attempt| backoff_ceiling(attempt, base, max).as_secs();
    assert_eq!(secs(0), 1);
    assert_eq!(secs(1), 1);
    assert_eq!(secs(2), 2);
    assert_eq!(secs(3), 4);
    assert_eq!(secs(10), 512);
    assert_eq!(secs(11), 600);
    assert_eq!(secs(1000), 600);
    assert_eq!(secs(u32::MAX), 600);

    for attempt in [1, 2, 5, 11, 64, u32::MAX] {
        let ceiling = backoff_ceiling(attempt, base, max);
        let samples: Vec<Duration> = (0..1000).map(|_| backoff(attempt, base, max)).collect();
        assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
        // Full jitter: draws spread over the whole range (failing this by chance has
        // probability 2^-1000 per side).
        assert!(
            samples.iter().any(|d| *d < ceiling / 2),
            "attempt {attempt}"
        );
        assert!(
            samples.iter().any(|d| *d > ceiling / 2),
            "attempt {attempt}"
        );
    }

    // Custom base and cap, and a zero base.
    let ms = Duration::from_millis;
    assert_eq!(backoff_ceiling(4, ms(100), ms(500)), ms(500));
    assert_eq!(backoff_ceiling(3, ms(100), ms(500)), ms(400));
    assert_eq!(backoff(7, Duration::ZERO, max), Duration::ZERO);
}
