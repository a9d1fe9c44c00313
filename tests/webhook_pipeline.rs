//! Pipelined webhook connections (`pipeline = N`, `outbound::pipeline`) on loopback (a closed
//! port is in `webhook_client.rs`, with the pooled client's): against
//! the HTTP sink (hyper's server), and against hand-written servers that answer in one write,
//! close between or in the middle of answers, or answer garbage. What must hold: every
//! request gets its own answer, in order; a request that got no byte of an answer on a reused
//! connection goes again on a fresh one; nothing panics.

mod common;

use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vmnd::http_sink::{HttpSink, SinkMode};
use vmnd::outbound::webhook::{Attempt, WebhookClient, verify_signature};

const SECRET: &str = "whsec-test";
const TIMEOUT: Duration = Duration::from_secs(5);

fn uri(s: &str) -> Uri {
    s.parse().expect("test URL parses")
}

fn body(i: usize) -> Bytes {
    Bytes::from(format!(r#"{{"event":"message","id":"ev-{i}"}}"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_at_once_share_few_connections_and_each_is_signed() {
    many_requests(8, 4).await;
}

/// One connection carrying everything: a connection that took an answer for stray bytes
/// would be dropped and more opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deep_connection_keeps_every_answer_in_order() {
    many_requests(32, 1).await;
}

/// 400 signed requests, 32 at a time, pipelined `depth` deep: each is delivered once, on at
/// most `connections` connections.
async fn many_requests(depth: usize, connections: usize) {
    let sink = HttpSink::start(SinkMode::Ok).await.unwrap();
    let client = WebhookClient::new().pipelined(depth, 32);
    let url = uri(&sink.url("/sms"));
    let mut tasks = Vec::new();
    for i in 0..400 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post(&url, &format!("ev-{i}"), Some(SECRET), body(i), TIMEOUT)
                .await
        }));
        if i % 32 == 31 {
            // Waves of 32, as the dispatcher's concurrency would let them go.
            for t in tasks.drain(..) {
                let attempt = t.await.unwrap();
                assert!(attempt.is_delivered(), "{attempt:?}");
            }
        }
    }
    for t in tasks {
        assert!(t.await.unwrap().is_delivered());
    }
    assert_eq!(sink.count(), 400);
    assert!(
        sink.connections() <= connections,
        "{} connections",
        sink.connections()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut ids: Vec<String> = Vec::new();
    for r in sink.requests() {
        let id = r.header("vmnd-event-id").unwrap().to_string();
        // Each request carries its own body: the id in the header is the id in the body.
        assert_eq!(r.body, body(id[3..].parse().unwrap()), "{id}");
        let sig = r.header("vmnd-signature").unwrap();
        assert!(verify_signature(SECRET, sig, &r.body, now, 300), "{id}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/sms");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400);
    sink.shutdown();
}

#[tokio::test]
async fn failures_read_as_the_pooled_clients_do() {
    let sink = HttpSink::start(SinkMode::Status(503)).await.unwrap();
    let client = WebhookClient::new().pipelined(4, 4);
    let attempt = client
        .post(&uri(&sink.url("/")), "ev", None, body(1), TIMEOUT)
        .await;
    let Attempt::Failed { status, error, .. } = attempt else {
        panic!("{attempt:?}")
    };
    assert_eq!(status, Some(503));
    assert_eq!(
        error,
        "http 503 Service Unavailable: http sink: failing as configured"
    );
    // The connection is still good for the next request.
    sink.set_mode(SinkMode::Ok);
    let attempt = client
        .post(&uri(&sink.url("/")), "ev", None, body(2), TIMEOUT)
        .await;
    assert!(attempt.is_delivered(), "{attempt:?}");
    assert_eq!(sink.connections(), 1);

    // No answer: a timeout.
    sink.set_mode(SinkMode::NeverAnswer);
    let attempt = client
        .post(
            &uri(&sink.url("/")),
            "ev",
            None,
            body(3),
            Duration::from_millis(300),
        )
        .await;
    let Attempt::Failed { status, error, .. } = attempt else {
        panic!("{attempt:?}")
    };
    assert_eq!(status, None);
    assert!(error.starts_with("timeout"), "{error}");

    // Bad input never reaches the wire.
    for url in ["/no/scheme/or/host", "ftp://example.net/sms"] {
        let attempt = client.post(&uri(url), "ev", None, body(4), TIMEOUT).await;
        let Attempt::Failed { error, .. } = attempt else {
            panic!("{attempt:?}")
        };
        assert!(error.starts_with("invalid url:"), "{error}");
    }
    let attempt = client
        .post(&uri(&sink.url("/")), "bad\r\nid", None, body(5), TIMEOUT)
        .await;
    let Attempt::Failed { error, .. } = attempt else {
        panic!("{attempt:?}")
    };
    assert!(error.starts_with("invalid request:"), "{error}");
    sink.shutdown();
}

/// A listener on a free loopback port and the webhook URL that points at it.
async fn hook_listener() -> (TcpListener, Uri) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = uri(&format!("http://{}/hook", listener.local_addr().unwrap()));
    (listener, url)
}

/// Keeps `stream` open until the client sends more or closes, so that it reads what was
/// written before the connection goes.
async fn hold_until_read(stream: &mut TcpStream) {
    let mut rest = [0u8; 16];
    let _ = stream.read(&mut rest).await;
}

/// Reads from `stream` until `n` whole requests (head and `content-length` body) arrived.
async fn read_requests(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    while requests.len() < n {
        let mut chunk = [0u8; 4096];
        let got = stream.read(&mut chunk).await.unwrap();
        if got == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..got]);
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            let Some(end) = text.find("\r\n\r\n") else {
                break;
            };
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + length {
                break;
            }
            requests.push(text[..end + 4 + length].to_string());
            buf.drain(..end + 4 + length);
        }
    }
    requests
}

/// Event ids of `requests`, in order.
fn ids(requests: &[String]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("vmnd-event-id: "))
                .unwrap()
                .to_string()
        })
        .collect()
}

fn ok_answer(id: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{id}",
        id.len()
    )
}

/// Answers `requests` 200, in one write, each with its event id as the body.
async fn answer_ok(stream: &mut TcpStream, requests: &[String]) {
    let reply: String = ids(requests).iter().map(|id| ok_answer(id)).collect();
    stream.write_all(reply.as_bytes()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_off_by_a_close_go_again_on_a_fresh_connection() {
    let (listener, url) = hook_listener().await;
    // First connection: answers one request, then takes three pipelined ones, answers the
    // first of them and closes. Second connection: answers whatever comes, in one write.
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        let one = read_requests(&mut first, 1).await;
        answer_ok(&mut first, &one).await;
        let three = read_requests(&mut first, 3).await;
        answer_ok(&mut first, &three[..1]).await;
        drop(first);
        let (mut second, _) = listener.accept().await.unwrap();
        let again = read_requests(&mut second, 2).await;
        answer_ok(&mut second, &again).await;
        (ids(&one), ids(&three), ids(&again))
    });
    let client = WebhookClient::new().pipelined(8, 8);
    assert!(
        client
            .post(&url, "ev-0", None, body(0), TIMEOUT)
            .await
            .is_delivered()
    );
    let sends: Vec<_> = (1..=3)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .post(&url, &format!("ev-{i}"), None, body(i), TIMEOUT)
                    .await
            })
        })
        .collect();
    for s in sends {
        let attempt = s.await.unwrap();
        assert!(attempt.is_delivered(), "{attempt:?}");
    }
    let (one, three, again) = server.await.unwrap();
    assert_eq!(one, ["ev-0"]);
    assert_eq!(three.len(), 3);
    let mut resent = again.clone();
    resent.sort();
    let mut unanswered = three[1..].to_vec();
    unanswered.sort();
    assert_eq!(
        resent, unanswered,
        "the two cut off went again, the answered one did not"
    );
}

#[tokio::test]
async fn a_garbled_answer_fails_its_request_and_the_next_gets_a_new_connection() {
    let (listener, url) = hook_listener().await;
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_requests(&mut first, 1).await;
        first.write_all(b"HTTP/1.1 2x0 What\r\n\r\n").await.unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        let next = read_requests(&mut second, 1).await;
        answer_ok(&mut second, &next).await;
        hold_until_read(&mut second).await;
    });
    let client = WebhookClient::new().pipelined(8, 8);
    let attempt = client.post(&url, "ev-1", None, body(1), TIMEOUT).await;
    let Attempt::Failed { status, error, .. } = attempt else {
        panic!("{attempt:?}")
    };
    assert_eq!(status, None);
    assert!(error.contains("malformed answer"), "{error}");
    let attempt = client.post(&url, "ev-2", None, body(2), TIMEOUT).await;
    assert!(attempt.is_delivered(), "{attempt:?}");
    drop(client);
    server.abort();
}

/// An answer nobody asked for (a second 200 written with the first's) must not be taken for
/// the next request's: the connection is dropped, and the next request gets its own answer
/// (here a 500) on a new one.
#[tokio::test]
async fn bytes_after_the_last_answer_are_not_taken_for_the_next_request() {
    let (listener, url) = hook_listener().await;
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        let one = read_requests(&mut first, 1).await;
        let stray = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let reply = format!("{}{stray}", ok_answer(&ids(&one)[0]));
        first.write_all(reply.as_bytes()).await.unwrap();
        let refuse = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
        // Wherever the next request comes (on this connection if it was kept), it gets 500.
        let kept = tokio::select! {
            next = read_requests(&mut first, 1) => !next.is_empty(),
            // The client dropped the first connection without closing it yet.
            _ = tokio::time::sleep(Duration::from_millis(500)) => false,
        };
        if kept {
            first.write_all(refuse.as_bytes()).await.unwrap();
            return "kept";
        }
        let (mut second, _) = listener.accept().await.unwrap();
        read_requests(&mut second, 1).await;
        second.write_all(refuse.as_bytes()).await.unwrap();
        hold_until_read(&mut second).await;
        "new"
    });
    let client = WebhookClient::new().pipelined(8, 8);
    let first = client.post(&url, "ev-1", None, body(1), TIMEOUT).await;
    assert!(first.is_delivered(), "{first:?}");
    let second = client.post(&url, "ev-2", None, body(2), TIMEOUT).await;
    assert!(
        matches!(
            second,
            Attempt::Failed {
                status: Some(500),
                ..
            }
        ),
        "a stray 200 was taken for ev-2's answer: {second:?}"
    );
    drop(client);
    if let Ok(Ok(path)) = tokio::time::timeout(Duration::from_secs(1), server).await {
        assert_eq!(path, "new");
    }
}

/// A server that accepts but never reads (a hung application): the write that fills its
/// buffers is given up with the request, and the next request goes out on a new connection
/// instead of waiting behind that write for good.
#[tokio::test]
async fn a_server_that_stops_reading_does_not_hold_later_requests() {
    let (listener, url) = hook_listener().await;
    let server = tokio::spawn(async move {
        let (stuck, _) = listener.accept().await.unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        let next = read_requests(&mut second, 1).await;
        answer_ok(&mut second, &next).await;
        hold_until_read(&mut second).await;
        drop(stuck);
    });
    let client = WebhookClient::new().pipelined(8, 8);
    // Far more than loopback's socket buffers hold: the write cannot finish.
    let huge = Bytes::from(vec![b'x'; 64 * 1024 * 1024]);
    let short = Duration::from_millis(300);
    let attempt = client.post(&url, "ev-big", None, huge, short).await;
    assert!(!attempt.is_delivered(), "{attempt:?}");
    let attempt = client.post(&url, "ev-next", None, body(2), TIMEOUT).await;
    assert!(attempt.is_delivered(), "{attempt:?}");
    drop(client);
    server.abort();
}
