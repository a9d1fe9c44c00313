//! Webhooks beyond the contract's JSON POST, end to end through the simulated carrier, an
//! in-process daemon and real HTTP(S) servers:
//! - GET with query parameters, form-encoded POST and a JSON `fields` template carry the named
//!   fields, with basic/bearer auth and extra headers, signed over the query or the body (the
//!   signature checked by the independent Python verifier);
//! - an endpoint down for a while, then up: nothing lost, nothing texted to the customer, and
//!   its circuit breaker opens (probes spaced by `breaker_probe`, one at a time) and closes;
//! - `fallback_url` takes what the `url` cannot, and both attempts are recorded;
//! - a 4xx is dead-lettered at once (default), listed, and delivered by a replay (one, and all
//!   of a webhook); `on_4xx = "retry"` keeps retrying instead; bad replay requests are refused;
//! - https through rustls to a server whose certificate a private CA (`ca_file`) signed, and
//!   the same server refused without the CA.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use common::{Harness, crm_with, eventually, parse_config};
use vmnd::daemon::Daemon;
use vmnd::http_sink::{HttpSink, SinkMode, SinkRequest};
use vmnd::sim::{Smsc, SmscConfig, mo};

const STEP: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec-test";
const SHORT_CODE: &str = "567678";
const LONG_CODE: &str = "9876543210";
const ALICE: &str = "919800000011";

/// Sim + sink + a daemon whose config is the shared one passed through `edit`.
async fn start_with(mode: SinkMode, edit: impl FnOnce(String, &HttpSink) -> String) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let smsc = Smsc::start(SmscConfig::default()).await.expect("sim");
    let sink = HttpSink::start(mode).await.expect("sink");
    let mut h = Harness {
        dir,
        smsc,
        sink,
        daemon: None,
    };
    let text = edit(h.config_text(""), &h.sink);
    h.daemon = Some(
        Daemon::start(parse_config(&text))
            .await
            .expect("daemon starts"),
    );
    h
}

async fn admin_json(h: &Harness, path: &str) -> Value {
    let (status, body) = h.admin_get(path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

async fn admin_until(h: &Harness, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let value = admin_json(h, path).await;
        if pred(&value) || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The independent Python verifier (tests/verify_signature.py) with the config's secret.
fn python_verifies(header: &str, signed: &[u8]) -> bool {
    common::python_verifies(SECRET, header, signed)
}

fn ok_requests(sink: &HttpSink, path_prefix: &str) -> Vec<SinkRequest> {
    sink.requests()
        .into_iter()
        .filter(|r| r.status == Some(200) && r.path.starts_with(path_prefix))
        .collect()
}

fn pairs(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_form_and_json_templates_carry_the_named_fields_signed() {
    let h = start_with(SinkMode::Ok, |text, sink| {
        let text = crm_with(
            text,
            r#"method = "GET"
fields = { mobile = "{from}", message = "{text}", code = "{to}", ref = "vmnd-{id}", kw = "{keyword}" }
username = "vmnd"
password = "pw"
headers = { "X-Api-Key" = "k-123" }"#,
        )
        .replace("/sms\"", "/get?key=fixed\"");
        format!(
            r#"{text}
[[number.keyword]]
keyword = "FORM"
webhook = "forms"

[[number.keyword]]
keyword = "TPL"
webhook = "tpl"

[[webhook]]
name = "forms"
url = "{forms}"
secret = "{SECRET}"
format = "form"
bearer = "tok-abc"

[[webhook]]
name = "tpl"
url = "{tpl}"
secret = "{SECRET}"
fields = {{ who = "{{from}}", said = "{{args}}", at = "{{received_at}}" }}
"#,
            forms = sink.url("/form"),
            tpl = sink.url("/tpl"),
        )
    })
    .await;
    h.smsc
        .enqueue(mo::gsm(ALICE, SHORT_CODE, "hello & welcome=1"));
    h.smsc.enqueue(mo::gsm(ALICE, LONG_CODE, "FORM kind words"));
    h.smsc.enqueue(mo::gsm(ALICE, LONG_CODE, "TPL summer"));
    assert!(
        eventually(STEP, || h.sink.received() >= 3).await,
        "3 deliveries"
    );

    // GET: the fields as query parameters after the URL's own, signed over the query.
    let get = &ok_requests(&h.sink, "/get")[0];
    assert_eq!(get.method, "GET");
    assert!(get.body.is_empty());
    let query = get.path.split_once('?').expect("a query").1;
    let params = pairs(query);
    assert_eq!(params[0], ("key".into(), "fixed".into()));
    let value = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(value("mobile").as_deref(), Some(ALICE));
    assert_eq!(value("message").as_deref(), Some("hello & welcome=1"));
    assert_eq!(value("code").as_deref(), Some(SHORT_CODE));
    let id = get.header("vmnd-event-id").expect("event id");
    assert_eq!(value("ref"), Some(format!("vmnd-{id}")));
    assert_eq!(value("kw").as_deref(), Some(""), "no keyword: empty");
    assert_eq!(params.len(), 6, "only the named fields: {params:?}");
    // "vmnd:pw" in base64, computed independently.
    assert_eq!(get.header("authorization"), Some("Basic dm1uZDpwdw=="));
    assert_eq!(get.header("x-api-key"), Some("k-123"));
    let signature = get.header("vmnd-signature").expect("signed");
    assert!(
        python_verifies(signature, query.as_bytes()),
        "GET signature"
    );
    assert!(
        !python_verifies(signature, b"key=fixed"),
        "a different query fails"
    );

    // Form POST: every non-null field of the payload under its contract name.
    let form = &ok_requests(&h.sink, "/form")[0];
    assert_eq!(form.method, "POST");
    assert_eq!(
        form.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(form.header("authorization"), Some("Bearer tok-abc"));
    let fields = pairs(std::str::from_utf8(&form.body).expect("utf-8 form"));
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("keyword"), Some("FORM"));
    assert_eq!(field("args"), Some("kind words"));
    assert_eq!(field("text"), Some("FORM kind words"));
    assert_eq!(field("to"), Some(LONG_CODE));
    assert_eq!(field("consent"), None, "absent fields are left out");
    assert_eq!(field("receipt_stat"), None, "absent fields are left out");
    assert_eq!(
        field("complete"),
        None,
        "`complete` only when false, as in the JSON"
    );
    assert!(python_verifies(
        form.header("vmnd-signature").expect("signed"),
        &form.body
    ));

    // JSON with fields: exactly the named ones.
    let tpl = &ok_requests(&h.sink, "/tpl")[0];
    assert_eq!(tpl.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&tpl.body).expect("json");
    let object = body.as_object().expect("object");
    assert_eq!(object.len(), 3, "{body}");
    assert_eq!(body["who"], ALICE);
    assert_eq!(body["said"], "summer");
    assert!(body["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(python_verifies(
        tpl.header("vmnd-signature").expect("signed"),
        &tpl.body
    ));
    // A first-try success is recorded too.
    let message_id =
        u64::from_str_radix(get.header("vmnd-event-id").expect("id"), 16).expect("hex");
    let attempts = admin_json(&h, &format!("/api/jobs/{:016x}/attempts", message_id << 8)).await;
    assert_eq!(
        attempts["attempts"][0]["outcome"], "delivered",
        "{attempts}"
    );
    assert_eq!(attempts["attempts"][0]["status"], 200, "{attempts}");
    assert!(attempts["attempts"][0]["latency_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_then_up_loses_nothing_and_its_circuit_opens_and_closes() {
    let mut h = start_with(SinkMode::Status(503), |text, _| {
        crm_with(text, "breaker_failures = 3\nbreaker_probe = \"400ms\"")
    })
    .await;
    let n = 8;
    for i in 0..n {
        h.smsc
            .enqueue(mo::gsm(ALICE, SHORT_CODE, &format!("while down {i}")));
    }
    let open = |metrics: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with("vmnd_webhook_circuit_open{webhook=\"crm\"} 1"))
    };
    let deadline = Instant::now() + STEP;
    loop {
        let (_, metrics) = h.admin_get("/metrics").await;
        if open(&metrics) {
            break;
        }
        assert!(Instant::now() < deadline, "the circuit never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened_at = Instant::now();
    // While open: probes only, one at a time, at least `breaker_probe` apart.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during: Vec<Instant> = h
        .sink
        .requests()
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > opened_at)
        .collect();
    assert!(!during.is_empty(), "the open circuit is probed");
    for pair in during.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(350),
            "probes {:?} apart: hammering",
            pair[1] - pair[0]
        );
    }
    h.sink.set_mode(SinkMode::Ok);
    assert!(
        eventually(STEP, || {
            let ids: std::collections::BTreeSet<String> = ok_requests(&h.sink, "/sms")
                .iter()
                .filter_map(|r| r.header("vmnd-event-id").map(str::to_string))
                .collect();
            ids.len() == n
        })
        .await,
        "every message delivered once the endpoint is back"
    );
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vmnd_webhook_circuit_open{webhook=\"crm\"} 0")),
        "closed again"
    );
    let dead = admin_json(&h, "/api/deadletters").await;
    assert_eq!(dead["deadletters"].as_array().map(Vec::len), Some(0));
    assert!(
        h.smsc.submitted().is_empty(),
        "nothing texted to the customer"
    );
    h.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_url_takes_what_the_url_cannot_and_both_attempts_are_recorded() {
    let fallback = HttpSink::start(SinkMode::Ok).await.expect("fallback sink");
    let fallback_url = fallback.url("/backup");
    let h = start_with(SinkMode::Status(502), |text, _| {
        crm_with(text, &format!("fallback_url = \"{fallback_url}\""))
    })
    .await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "to the backup"));
    assert!(eventually(STEP, || fallback.received() == 1).await);
    let delivered = &fallback.requests()[0];
    let body: Value = serde_json::from_slice(&delivered.body).expect("json");
    assert_eq!(body["text"], "to the backup");
    assert!(python_verifies(
        delivered.header("vmnd-signature").expect("signed"),
        &delivered.body
    ));
    // The job id is the message id << 8 | action index; the message's id is in the payload.
    let message_id = u64::from_str_radix(body["id"].as_str().expect("id"), 16).expect("hex id");
    let job = format!("{:016x}", message_id << 8);
    let attempts = admin_until(&h, &format!("/api/jobs/{job}/attempts"), |v| {
        v["attempts"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let attempts = attempts["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["status"], 502);
    assert!(attempts[0]["url"].as_str().unwrap_or("").ends_with("/sms"));
    assert_eq!(attempts[1]["outcome"], "delivered");
    assert!(
        attempts[1]["url"]
            .as_str()
            .unwrap_or("")
            .ends_with("/backup")
    );
    let (status, _) = h.admin_get("/api/jobs/nothex/attempts").await;
    assert_eq!(status, 400);
    // The prefix and the suffix overlap here: no id, no such path (this once panicked).
    let (status, body) = h.admin_get("/api/jobs/attempts").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = h.admin_get("/api/jobs//attempts").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_dead_lettered_at_once_and_replays_deliver() {
    let h = start_with(SinkMode::Status(404), |text, _| text).await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "first"));
    let dead = admin_until(&h, "/api/deadletters?webhook=crm", |v| {
        v["deadletters"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let letter = &dead["deadletters"][0];
    assert_eq!(letter["last_status"], 404, "{letter}");
    assert_eq!(letter["attempts"], 1, "dead at once: {letter}");
    assert_eq!(h.sink.received(), 1, "one request, no retries");
    let id = letter["id"].as_str().expect("id").to_string();
    let one = admin_json(&h, &format!("/api/deadletters/{id}")).await;
    assert_eq!(one["attempts"][0]["status"], 404, "{one}");
    // Filters.
    for (query, n) in [
        ("webhook=other", 0),
        ("since=4000000000", 0),
        ("until=4000000000", 1),
    ] {
        let v = admin_json(&h, &format!("/api/deadletters?{query}")).await;
        assert_eq!(
            v["deadletters"].as_array().map(Vec::len),
            Some(n),
            "{query}"
        );
    }
    // Bad requests.
    for (path, status) in [
        ("/api/deadletters/zz/replay", 400),
        ("/api/deadletters/00000000000000ff/replay", 404),
        ("/api/deadletters/replay", 400),
        ("/api/deadletters/replay?webhook=crm&since=yesterday", 400),
    ] {
        assert_eq!(h.admin_post(path, "").await.0, status, "{path}");
    }
    let (status, _) = h.admin_get("/api/deadletters?before=xyz").await;
    assert_eq!(status, 400);

    let gauge = |metrics: &str, want: &str| metrics.lines().any(|l| l == want);
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(gauge(&metrics, "vmnd_dead_letters 1"), "counted: {metrics}");
    // Replay one: delivered once the endpoint is fixed.
    h.sink.set_mode(SinkMode::Ok);
    let (status, body) = h
        .admin_post(&format!("/api/deadletters/{id}/replay"), "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 1).await);
    let body: Value = serde_json::from_slice(&ok_requests(&h.sink, "/sms")[0].body).expect("json");
    assert_eq!(body["text"], "first");
    let dead = admin_json(&h, "/api/deadletters").await;
    assert_eq!(dead["deadletters"].as_array().map(Vec::len), Some(0));
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        gauge(&metrics, "vmnd_dead_letters 0"),
        "replayed: {metrics}"
    );

    // Replay all of one webhook.
    h.sink.set_mode(SinkMode::Status(410));
    for text in ["second", "third"] {
        h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, text));
    }
    admin_until(&h, "/api/deadletters", |v| {
        v["deadletters"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    h.sink.set_mode(SinkMode::Ok);
    let (status, body) = h
        .admin_post("/api/deadletters/replay?webhook=crm", "")
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["replayed_count"], 2);
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_4xx_retry_keeps_the_job_queued() {
    let h = start_with(SinkMode::Status(404), |text, _| {
        crm_with(text, "on_4xx = \"retry\"")
    })
    .await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "keep trying"));
    assert!(
        eventually(STEP, || h.sink.received() >= 2).await,
        "retried after a 404"
    );
    let dead = admin_json(&h, "/api/deadletters").await;
    assert_eq!(dead["deadletters"].as_array().map(Vec::len), Some(0));
    h.sink.set_mode(SinkMode::Ok);
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 1).await);
}

/// A one-route HTTPS server (rustls) that answers 200 and keeps the bodies it got.
struct TlsSink {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

/// A CA and a server certificate for localhost/127.0.0.1 signed by it; returns the CA's PEM
/// and the server's rustls config.
fn private_ca() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vmnd test private CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca cert");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        server_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![server.der().clone()], key)
    .expect("server config");
    (ca.pem(), config)
}

impl TlsSink {
    async fn start(config: rustls::ServerConfig) -> TlsSink {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let kept = kept.clone();
                tokio::spawn(async move {
                    // A client that refuses our certificate ends the handshake: nothing to serve.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            kept.lock().expect("lock").push(body);
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                                "ok",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsSink { addr, bodies }
    }
}

/// An https server whose certificate a private CA signed, and that CA's certificate in a file
/// (in a directory that lasts as long as the returned guard).
async fn tls_server_and_ca_file() -> (TlsSink, tempfile::TempDir, std::path::PathBuf) {
    let (ca_pem, server_config) = private_ca();
    let tls = TlsSink::start(server_config).await;
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("write ca");
    (tls, ca_dir, ca_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_https_to_a_server_a_private_ca_signed() {
    use vmnd::outbound::webhook::WebhookClient;
    let (tls, _ca_dir, ca_file) = tls_server_and_ca_file().await;
    let url: hyper::Uri = format!("https://localhost:{}/sms", tls.addr.port())
        .parse()
        .expect("url");
    let client = WebhookClient::with_ca_file(&ca_file)
        .expect("ca file")
        .pipelined(8, 8);
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let body = Bytes::from(format!("{{\"n\":{i}}}"));
                client
                    .post(&url, &format!("ev-{i}"), Some("s"), body, STEP)
                    .await
            })
        })
        .collect();
    for send in sends {
        let attempt = send.await.expect("task");
        assert!(attempt.is_delivered(), "{attempt:?}");
    }
    let mut got: Vec<Bytes> = tls.bodies.lock().expect("lock").clone();
    got.sort();
    let mut want: Vec<Bytes> = (0..40)
        .map(|i| Bytes::from(format!("{{\"n\":{i}}}")))
        .collect();
    want.sort();
    assert_eq!(got, want, "each request once, each with its own body");

    // Without the CA the certificate is refused, and the attempt says so.
    let attempt = WebhookClient::new()
        .pipelined(8, 8)
        .post(&url, "ev-x", None, Bytes::from_static(b"{}"), STEP)
        .await;
    let vmnd::outbound::webhook::Attempt::Failed { status, error, .. } = attempt else {
        panic!("{attempt:?}")
    };
    assert_eq!(status, None);
    assert!(error.starts_with("connect: TLS"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_server_a_private_ca_signed() {
    let (tls, _ca_dir, ca_file) = tls_server_and_ca_file().await;
    let url = format!("https://localhost:{}/sms", tls.addr.port());
    let h = start_with(SinkMode::Ok, |text, sink| {
        let text = crm_with(text, &format!("ca_file = \"{}\"", ca_file.display())).replacen(
            &sink.url("/sms"),
            &url,
            1,
        );
        format!(
            r#"{text}
[[number.keyword]]
keyword = "NOCA"
webhook = "noca"

[[webhook]]
name = "noca"
url = "{url}"
on_4xx = "retry"
"#
        )
    })
    .await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "over tls"));
    assert!(
        eventually(STEP, || tls.bodies.lock().expect("lock").len() == 1).await,
        "delivered over https"
    );
    let body: Value =
        serde_json::from_slice(&tls.bodies.lock().expect("lock")[0]).expect("json body");
    assert_eq!(body["text"], "over tls");

    // Without the CA the same server is refused, and the attempt says why.
    h.smsc.enqueue(mo::gsm(ALICE, LONG_CODE, "NOCA please"));
    let deadline = Instant::now() + STEP;
    let error = loop {
        let messages = admin_json(&h, "/api/messages?to=9876543210").await;
        let id = messages["messages"][0]["id"].as_str().map(str::to_string);
        if let Some(id) = id {
            let message_id = u64::from_str_radix(&id, 16).expect("hex");
            let job = format!("{:016x}", message_id << 8);
            let v = admin_json(&h, &format!("/api/jobs/{job}/attempts")).await;
            if let Some(error) = v["attempts"][0]["error"].as_str() {
                break error.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        error.to_ascii_lowercase().contains("certificate"),
        "the error names the certificate: {error}"
    );
    assert_eq!(
        tls.bodies.lock().expect("lock").len(),
        1,
        "nothing sent without trust"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_circuit_is_open_jobs_go_straight_to_the_fallback() {
    let fallback = HttpSink::start(SinkMode::Ok).await.expect("fallback sink");
    let fallback_url = fallback.url("/backup");
    let h = start_with(SinkMode::Status(503), |text, _| {
        crm_with(
            text,
            &format!(
                "fallback_url = \"{fallback_url}\"\nbreaker_failures = 2\nbreaker_probe = \"1h\""
            ),
        )
    })
    .await;
    for i in 0..2 {
        h.smsc
            .enqueue(mo::gsm(ALICE, SHORT_CODE, &format!("before {i}")));
    }
    assert!(eventually(STEP, || fallback.count() == 2).await);
    assert_eq!(h.sink.received(), 2, "two failures open the circuit");
    for i in 0..3 {
        h.smsc
            .enqueue(mo::gsm(ALICE, SHORT_CODE, &format!("after {i}")));
    }
    assert!(eventually(STEP, || fallback.count() == 5).await);
    assert_eq!(
        h.sink.received(),
        2,
        "the open circuit's url is not tried (next probe in an hour)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_past_retry_for_is_dead_lettered_and_a_replay_delivers() {
    let h = start_with(SinkMode::Status(503), |text, _| {
        text.replacen(
            "retry_for = \"1h\"\n",
            "retry_for = \"1500ms\"\nbreaker_failures = 0\n",
            1,
        )
    })
    .await;
    h.smsc
        .enqueue(mo::gsm(ALICE, SHORT_CODE, "kept for the operator"));
    let dead = admin_until(&h, "/api/deadletters?webhook=crm", |v| {
        v["deadletters"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let letter = &dead["deadletters"][0];
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("gave up after")),
        "{letter}"
    );
    assert!(
        letter["attempts"].as_u64().is_some_and(|n| n >= 2),
        "{letter}"
    );
    assert_eq!(letter["last_status"], 503);
    assert_eq!(ok_requests(&h.sink, "/sms").len(), 0);
    // Every failed attempt was recorded.
    let id = letter["id"].as_str().expect("id").to_string();
    let one = admin_json(&h, &format!("/api/deadletters/{id}")).await;
    assert_eq!(
        one["attempts"].as_array().map(Vec::len),
        letter["attempts"].as_u64().map(|n| n as usize),
        "{one}"
    );
    h.sink.set_mode(SinkMode::Ok);
    let (status, body) = h
        .admin_post("/api/deadletters/replay?webhook=crm", "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 1).await);
    let body: Value = serde_json::from_slice(&ok_requests(&h.sink, "/sms")[0].body).expect("json");
    assert_eq!(body["text"], "kept for the operator");
    assert!(
        h.smsc.submitted().is_empty(),
        "nothing texted to the customer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_or_408_is_retried_even_with_the_default_4xx_policy() {
    let h = start_with(SinkMode::FailFirst { n: 1, status: 429 }, |text, _| text).await;
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "slow down"));
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 1).await);
    h.sink.set_mode(SinkMode::FailFirst { n: 1, status: 408 });
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "timed out"));
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 2).await);
    assert_eq!(h.sink.received(), 4, "each failed once, then delivered");
    let dead = admin_json(&h, "/api/deadletters").await;
    assert_eq!(dead["deadletters"].as_array().map(Vec::len), Some(0));
}

/// The fallback is tried only when the endpoint has an outage. Its 4xx (another service,
/// perhaps other credentials) is no refusal by the endpoint: the job is retried, not
/// dead-lettered under the default `on_4xx`, and goes to the endpoint once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_from_the_fallback_during_an_outage_is_retried() {
    let fallback = HttpSink::start(SinkMode::Status(401))
        .await
        .expect("fallback sink");
    let fallback_url = fallback.url("/backup");
    let h = start_with(SinkMode::Status(503), |text, _| {
        crm_with(text, &format!("fallback_url = \"{fallback_url}\""))
    })
    .await;
    h.smsc
        .enqueue(mo::gsm(ALICE, SHORT_CODE, "wait for the endpoint"));
    assert!(
        eventually(STEP, || fallback.received() >= 2).await,
        "retried: {} requests to the fallback",
        fallback.received()
    );
    let dead = admin_json(&h, "/api/deadletters").await;
    assert_eq!(
        dead["deadletters"].as_array().map(Vec::len),
        Some(0),
        "{dead}"
    );
    h.sink.set_mode(SinkMode::Ok);
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 1).await);
}

/// A request that cannot be built (a GET whose query passes http's 64 KiB limit: a long
/// message in Devanagari percent-encodes to nine bytes a character) fails the same way at
/// every attempt. It is dead-lettered at once, not retried for `retry_for` as an outage, and
/// it does not open the endpoint's circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_built_is_dead_lettered_at_once() {
    let h = start_with(SinkMode::Ok, |text, _| {
        crm_with(text, "method = \"GET\"\nbreaker_failures = 1")
    })
    .await;
    let long = "अ".repeat(8000);
    h.smsc
        .enqueue_many(mo::concat_udh(ALICE, SHORT_CODE, &long, 77, false));
    let dead = admin_until(&h, "/api/deadletters?webhook=crm", |v| {
        v["deadletters"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let letter = &dead["deadletters"][0];
    assert_eq!(letter["attempts"], 1, "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot build the request")),
        "{letter}"
    );
    // The circuit stayed closed: the next message goes to the endpoint.
    h.smsc.enqueue(mo::gsm(ALICE, SHORT_CODE, "short"));
    assert!(eventually(STEP, || ok_requests(&h.sink, "/sms").len() == 1).await);
}
