//! Shared test harness: a simulated carrier, an HTTP sink and an in-process daemon configured
//! through real TOML (so every test also exercises the config path).
#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use vmnd::config;
use vmnd::daemon::Daemon;
use vmnd::http_sink::{HttpSink, SinkMode};
use vmnd::sim::{Smsc, SmscConfig};

/// A config for one carrier (the sim) and one webhook (the sink), numbers 567678 and
/// 9876543210 forwarding to it, replies leaving through the sim. `extra` is appended: more
/// carriers, options, or `[[number.keyword]]` tables (which then belong to 9876543210, the
/// last number).
pub fn config_text(data_dir: &Path, smsc_port: u16, webhook_url: &str, extra: &str) -> String {
    format!(
        r#"
[daemon]
data_dir = "{data_dir}"
admin_listen = "127.0.0.1:0"
reassembly_timeout = "2s"

[[carrier]]
name = "sim"
host = "127.0.0.1"
port = {smsc_port}
system_id = "vmnd"
password = "secret"
enquire_link = "30s"
reconnect_min = "100ms"
reconnect_max = "500ms"

[[webhook]]
name = "crm"
url = "{webhook_url}"
secret = "whsec-test"
retry_for = "1h"

[[number]]
vmn = "567678"
carrier = "sim"
default = {{ webhook = "crm" }}
receipts = "crm"

[[number]]
vmn = "9876543210"
carrier = "sim"
default = {{ webhook = "crm" }}
{extra}
"#,
        data_dir = data_dir.display()
    )
}

/// Adds `lines` to the shared config's webhook "crm" (see [`config_text`]).
pub fn crm_with(text: String, lines: &str) -> String {
    text.replacen(
        "retry_for = \"1h\"\n",
        &format!("retry_for = \"1h\"\n{lines}\n"),
        1,
    )
}

/// Journals one GSM deliver_sm from carrier "sim" straight into `store`, as a previous run
/// would have left it, and commits; returns its journal id.
pub async fn journal_gsm(store: &vmnd::store::Store, from: &str, to: &str, text: &str) -> u64 {
    use vmnd::smpp::pdu::{self, Body, Pdu};
    let frame = pdu::encode_to_bytes(&Pdu {
        command_status: 0,
        sequence_number: 7,
        body: Body::DeliverSm(Box::new(vmnd::sim::mo::gsm(from, to, text))),
    });
    let ids = store
        .journal(&[vmnd::store::JournalEntry {
            carrier: "sim".into(),
            received_at_ms: vmnd::clock::now_ms(),
            pdu: frame,
        }])
        .expect("journal");
    store.commit().await.expect("commit");
    ids[0]
}

/// Parses config text the way `vmnd run` does, panicking with the diagnostics if it is bad.
pub fn parse_config(text: &str) -> config::Config {
    match config::parse(text, "test.toml", &|_| None) {
        Ok((c, _)) => c,
        Err(problems) => panic!(
            "test config refused:\n{}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Sim + sink + daemon.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub smsc: Smsc,
    pub sink: HttpSink,
    pub daemon: Option<Daemon>,
}

impl Harness {
    pub async fn start(smsc_config: SmscConfig, sink_mode: SinkMode, extra: &str) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let smsc = Smsc::start(smsc_config).await.expect("sim");
        let sink = HttpSink::start(sink_mode).await.expect("sink");
        let mut h = Harness {
            dir,
            smsc,
            sink,
            daemon: None,
        };
        h.start_daemon(extra).await;
        h
    }

    pub fn config_text(&self, extra: &str) -> String {
        config_text(
            &self.dir.path().join("var"),
            self.smsc.addr().port(),
            &self.sink.url("/sms"),
            extra,
        )
    }

    pub async fn start_daemon(&mut self, extra: &str) {
        let config = parse_config(&self.config_text(extra));
        self.daemon = Some(Daemon::start(config).await.expect("daemon starts"));
    }

    pub async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// GET on the admin server; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(
            &format!("http://{}{}", self.daemon().admin_addr, path),
            None,
        )
        .await
    }

    /// POST on the admin server; returns (status, body).
    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        http_post(
            &format!("http://{}{}", self.daemon().admin_addr, path),
            body,
        )
        .await
    }
}

/// A minimal HTTP/1.1 GET over a fresh TCP connection (no client library in the way).
pub async fn http_get(url: &str, bearer: Option<&str>) -> (u16, String) {
    http_request("GET", url, bearer, "").await
}

/// A minimal HTTP/1.1 POST of `body` over a fresh TCP connection.
pub async fn http_post(url: &str, body: &str) -> (u16, String) {
    http_request("POST", url, None, body).await
}

async fn http_request(method: &str, url: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let length = if method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{length}Connection: close\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = match text.find("\r\n\r\n") {
        Some(i) => text[i + 4..].to_string(),
        None => String::new(),
    };
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(i) = rest.find("\r\n") {
        let Ok(len) = usize::from_str_radix(rest[..i].trim(), 16) else {
            break;
        };
        if len == 0 {
            break;
        }
        let start = i + 2;
        out.push_str(&rest[start..(start + len).min(rest.len())]);
        rest = &rest[(start + len + 2).min(rest.len())..];
    }
    out
}

/// Polls `f` every 20 ms until it is true or `timeout` passes; returns its last value.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The JSON bodies the sink received with a 2xx answer... and every other, in order.
pub fn sink_bodies(sink: &HttpSink) -> Vec<serde_json::Value> {
    sink.requests()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

/// Runs the independent Python verifier; true when it exits 0, panics if it cannot run.
pub fn python_verifies(secret: &str, header: &str, body: &[u8]) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_signature.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(secret)
        .arg(header)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(body)
        .expect("body written to python");
    let out = child.wait_with_output().expect("python3 finishes");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!(
            "verify_signature.py failed to run ({other:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
