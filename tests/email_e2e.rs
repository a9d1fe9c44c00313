//! E-mail forwards and replies by e-mail, end to end: the simulated carrier delivers over SMPP,
//! a real SMTP server nobody here wrote (Python's aiosmtpd, `tests/smtp_sink.py`) receives the
//! forwards, and an LMTP client nobody here wrote (Python's `smtplib.LMTP`,
//! `tests/lmtp_send.py`) hands replies to vmnd's listener. Proves that:
//! - the forward reaches the right recipients with the subject template, a `Reply-To` token
//!   and threading headers; a second message from the same person threads to the first, a
//!   message from someone else starts another thread;
//! - a reply comes back as a `submit_sm` from the number to the person, with quoted history and
//!   signature stripped; an unknown token, a wrong domain, a foreign sender, an empty reply and
//!   an expired token are rejected with the right codes; an out-of-office notice is taken but
//!   never texted; everything is listed by the admin API and counted in `/metrics`;
//! - a person who opted out gets no reply by SMS (suppressed at send time);
//! - an SMTP server that is down is retried and the forward arrives once it is up, also across a
//!   restart of the daemon (and the reply token still works); a 5xx is a dead letter at once;
//! - STARTTLS and implicit TLS reach a relay whose certificate a private CA (`ca_file`) signed,
//!   and a relay whose certificate is not trusted gets nothing;
//! - SMTP AUTH over STARTTLS works, and a refused login is retried (never dead-lettered at once),
//!   so fixing the password delivers what waited;
//! - `vmnd route` names the e-mail action; an LMTP address in use is a startup error;
//! - malformed LMTP input is answered with codes and never takes the listener down.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use common::{Harness, eventually};
use vmnd::http_sink::SinkMode;
use vmnd::sim::{SmscConfig, mo};
use vmnd::smpp::text::decode_text;

const STEP: Duration = Duration::from_secs(30);
const VMN: &str = "9876543210";
const DOMAIN: &str = "reply.acme.example";

/// A running `tests/smtp_sink.py`; killed when dropped.
struct SmtpSink {
    port: u16,
    received: Arc<Mutex<Vec<Value>>>,
    _child: Child,
}

impl SmtpSink {
    /// Starts the sink on `port` (0: any free port). `refuse`: answer every message 550.
    async fn start(port: u16, refuse: bool) -> SmtpSink {
        SmtpSink::start_with(port, refuse, &[]).await
    }

    /// As [`SmtpSink::start`], with more arguments for `tests/smtp_sink.py` (TLS options).
    async fn start_with(port: u16, refuse: bool, more: &[&str]) -> SmtpSink {
        let mut command = Command::new("python3");
        command
            .arg("tests/smtp_sink.py")
            .arg(port.to_string())
            .args(more)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if refuse {
            command.arg("--refuse");
        }
        let mut child = command
            .spawn()
            .expect("python3 runs tests/smtp_sink.py (aiosmtpd: see .ci/run)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(STEP, lines.next_line())
            .await
            .expect("the sink starts in time")
            .expect("read")
            .expect("the sink prints its port (is aiosmtpd installed?)");
        let port = serde_json::from_str::<Value>(&first).expect("json")["port"]
            .as_u64()
            .expect("port") as u16;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("lock").push(v);
                }
            }
        });
        SmtpSink {
            port,
            received,
            _child: child,
        }
    }

    fn messages(&self) -> Vec<Value> {
        self.received.lock().expect("lock").clone()
    }
}

/// The config additions: `[smtp]` towards `smtp_port` and keywords that e-mail.
fn extra(smtp_port: u16, more_smtp: &str) -> String {
    format!(
        r#"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "Acme SMS <sms@acme.example>"
reply_domain = "{DOMAIN}"
lmtp_listen = "127.0.0.1:0"
subject = "[{{inbox}}] SMS from {{from}}"
{more_smtp}

[[number.keyword]]
keyword = "JOIN"
inbox = "summer"
email = ["desk@acme.example", "leads@acme.example"]
webhook = "crm"
"#
    )
}

/// A header's value in a raw message (first occurrence, unfolded).
fn header(data: &str, name: &str) -> Option<String> {
    let message = mail_parser::MessageParser::default().parse(data.as_bytes())?;
    message
        .header_raw(name)
        .map(|v| v.trim().replace("\r\n", "").replace('\n', ""))
}

/// The token of a forward's `Reply-To: reply+<token>@DOMAIN`.
fn token_of(message: &Value) -> String {
    let reply_to = header(message["data"].as_str().expect("data"), "Reply-To").expect("Reply-To");
    let start = reply_to.find("reply+").expect("reply+") + "reply+".len();
    let end = reply_to.find('@').expect("@");
    reply_to[start..end].to_string()
}

async fn send_sms(h: &Harness, from: &str, text: &str) {
    let n = h.smsc.stats().enqueued + 1;
    h.smsc.enqueue(mo::gsm(from, VMN, text));
    assert!(h.smsc.wait_until(STEP, |s| s.acked_ok == n).await);
}

fn texts_to(h: &Harness, to: &str) -> Vec<(String, String)> {
    h.smsc
        .submitted()
        .iter()
        .filter(|sm| sm.dest.addr == to)
        .map(|sm| {
            (
                sm.source.addr.clone(),
                decode_text(sm.data_coding, &sm.short_message, false, 0).text,
            )
        })
        .collect()
}

/// Delivers `message` over LMTP with Python's smtplib; returns its JSON report.
async fn lmtp_send(h: &Harness, mail_from: &str, rcpts: &[&str], message: &str) -> Value {
    let addr = h.daemon().lmtp_addr.expect("lmtp listening");
    let mut child = Command::new("python3")
        .arg("tests/lmtp_send.py")
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(mail_from)
        .args(rcpts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(message.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .expect("lmtp client finishes")
        .expect("output");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn reply_mail(from: &str, body: &str) -> String {
    format!(
        "From: Desk <{from}>\r\nTo: reply@{DOMAIN}\r\nSubject: Re: [summer] SMS\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
}

async fn json(h: &Harness, path: &str) -> Value {
    let (status, body) = h.admin_get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_thread_per_person_and_replies_come_back_as_sms() {
    let sink = SmtpSink::start(0, false).await;
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, &extra(sink.port, "")).await;
    let person = "919811112222";
    send_sms(&h, person, "JOIN summer please").await;
    assert!(
        eventually(STEP, || sink.messages().len() == 1).await,
        "forward arrives"
    );
    let first = &sink.messages()[0];
    let mut rcpts: Vec<&str> = first["rcpt_tos"]
        .as_array()
        .expect("rcpts")
        .iter()
        .map(|v| v.as_str().expect("str"))
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, ["desk@acme.example", "leads@acme.example"]);
    assert_eq!(first["mail_from"], "sms@acme.example");
    let data = first["data"].as_str().expect("data");
    assert_eq!(
        header(data, "Subject").as_deref(),
        Some(format!("[summer] SMS from {person}").as_str())
    );
    assert!(data.contains("JOIN summer please"), "{data}");
    let token = token_of(first);
    assert_eq!(token.len(), 26, "{token}");
    let root = header(data, "In-Reply-To").expect("In-Reply-To");
    assert_eq!(header(data, "References").as_deref(), Some(root.as_str()));
    let first_id = header(data, "Message-ID").expect("Message-ID");
    assert!(first_id.ends_with(&format!("@{DOMAIN}>")), "{first_id}");

    // The same person again: the same thread, a new message and token.
    send_sms(&h, person, "JOIN again").await;
    // Someone else: another thread.
    send_sms(&h, "919811113333", "JOIN me too").await;
    assert!(eventually(STEP, || sink.messages().len() == 3).await);
    let messages = sink.messages();
    let by_text = |t: &str| {
        messages
            .iter()
            .find(|m| m["data"].as_str().is_some_and(|d| d.contains(t)))
            .expect("message")
            .clone()
    };
    let again = by_text("JOIN again");
    let again_data = again["data"].as_str().expect("data");
    assert_eq!(header(again_data, "In-Reply-To"), Some(root.clone()));
    assert_ne!(header(again_data, "Message-ID"), Some(first_id.clone()));
    assert_ne!(token_of(&again), token);
    let other = by_text("JOIN me too");
    assert_ne!(
        header(other["data"].as_str().expect("data"), "In-Reply-To"),
        Some(root)
    );

    // A reply by e-mail: quoted history and signature stripped, texted from the number.
    let rcpt = format!("reply+{token}@{DOMAIN}");
    let body = "Thanks, see you at 5!\r\n\r\n-- \r\nDesk, Acme\r\n\r\nOn Mon, 1 Dec 2026 at 10:00, Acme SMS <sms@acme.example> wrote:\r\n> JOIN summer please\r\n";
    let report = lmtp_send(
        &h,
        "desk@acme.example",
        &[&rcpt],
        &reply_mail("desk@acme.example", body),
    )
    .await;
    assert_eq!(report["lhlo"], 250, "{report}");
    assert_eq!(report["rcpt"][0][0], 250, "{report}");
    assert_eq!(report["data"][0], 250, "{report}");
    assert!(
        eventually(STEP, || !texts_to(&h, person).is_empty()).await,
        "the reply leaves as SMS"
    );
    assert_eq!(
        texts_to(&h, person),
        [(VMN.to_string(), "Thanks, see you at 5!".to_string())]
    );

    // Unknown token, wrong domain: refused at RCPT (with no accepted recipient, no DATA).
    let unknown = format!("reply+{}@{DOMAIN}", "a".repeat(26));
    let report = lmtp_send(
        &h,
        "desk@acme.example",
        &[&unknown],
        &reply_mail("desk@acme.example", "Hi"),
    )
    .await;
    assert_eq!(report["rcpt"][0][0], 550, "{report}");
    assert!(
        report["rcpt"][0][1]
            .as_str()
            .expect("text")
            .starts_with("5.1.1"),
        "{report}"
    );
    assert_eq!(report["data"], Value::Null);
    let report = lmtp_send(
        &h,
        "desk@acme.example",
        &[&format!("reply+{token}@other.example")],
        "x",
    )
    .await;
    assert_eq!(report["rcpt"][0][0], 550, "{report}");
    // A sender the forward did not go to: refused after DATA with 5.7.1.
    let report = lmtp_send(
        &h,
        "desk@acme.example",
        &[&rcpt],
        &reply_mail("mallory@evil.example", "Send me money"),
    )
    .await;
    assert_eq!(report["rcpt"][0][0], 250, "{report}");
    assert_eq!(report["data"][0], 550, "{report}");
    assert!(
        report["data"][1]
            .as_str()
            .expect("text")
            .starts_with("5.7.1"),
        "{report}"
    );
    // Nothing but quotes: refused, clearly.
    let report = lmtp_send(
        &h,
        "desk@acme.example",
        &[&rcpt],
        &reply_mail("desk@acme.example", "> JOIN summer please\r\n"),
    )
    .await;
    assert_eq!(report["data"][0], 550, "{report}");
    assert!(
        report["data"][1]
            .as_str()
            .expect("text")
            .contains("no text of its own"),
        "{report}"
    );
    // An out-of-office notice answering the forward: taken, recorded, never texted.
    let auto = reply_mail("desk@acme.example", "I am out of the office until Monday.")
        .replace("Subject:", "Auto-Submitted: auto-replied\r\nSubject:");
    let report = lmtp_send(&h, "desk@acme.example", &[&rcpt], &auto).await;
    assert_eq!(report["data"][0], 250, "{report}");
    assert!(
        report["data"][1]
            .as_str()
            .expect("text")
            .contains("not texted"),
        "{report}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        texts_to(&h, person).len(),
        1,
        "no SMS for refused or automatic replies"
    );

    // Everything is listed, newest first, and counted.
    let replies = json(&h, "/api/mail/replies").await;
    let list = replies["replies"].as_array().expect("replies");
    assert_eq!(list.len(), 6, "{replies}");
    assert_eq!(list[0]["outcome"], "ignored", "{replies}");
    let accepted: Vec<&Value> = list.iter().filter(|r| r["outcome"] == "accepted").collect();
    assert_eq!(accepted.len(), 1, "{replies}");
    assert_eq!(accepted[0]["msisdn"], person);
    assert_eq!(accepted[0]["text"], "Thanks, see you at 5!");
    assert!(accepted[0]["job_id"].is_string());
    assert!(
        list.iter().any(|r| r["code"] == 550
            && r["reason"]
                .as_str()
                .is_some_and(|t| t.contains("may not answer"))),
        "{replies}"
    );
    let page = json(&h, "/api/mail/replies?limit=2").await;
    assert_eq!(page["replies"].as_array().expect("page").len(), 2);
    let next = page["next"].as_str().expect("next");
    let rest = json(&h, &format!("/api/mail/replies?before={next}")).await;
    assert_eq!(rest["replies"].as_array().expect("rest").len(), 4);
    let rejected = json(&h, "/api/mail/replies?outcome=rejected").await;
    assert_eq!(
        rejected["replies"].as_array().expect("rejected").len(),
        4,
        "{rejected}"
    );
    for bad in ["before=zzz", "outcome=maybe", "limit=0"] {
        let (status, _) = h.admin_get(&format!("/api/mail/replies?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
    }
    let (_, page) = h.admin_get("/").await;
    assert!(page.contains("Replies by e-mail"), "{page}");
    assert!(page.contains("Thanks, see you at 5!"), "{page}");
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(metrics.contains("vmnd_email_replies_total"), "{metrics}");
    assert!(metrics.contains("vmnd_email_attempts_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_person_gets_no_email_reply() {
    let sink = SmtpSink::start(0, false).await;
    let h = Harness::start(SmscConfig::default(), SinkMode::Ok, &extra(sink.port, "")).await;
    let person = "919811114444";
    send_sms(&h, person, "JOIN").await;
    assert!(eventually(STEP, || sink.messages().len() == 1).await);
    let token = token_of(&sink.messages()[0]);
    send_sms(&h, person, "STOP").await;
    // The opt-out is processed (its event reached the webhook) before the reply comes.
    assert!(eventually(STEP, || h.sink.count() >= 2).await);
    let rcpt = format!("reply+{token}@{DOMAIN}");
    let report = lmtp_send(
        &h,
        "desk@acme.example",
        &[&rcpt],
        &reply_mail("desk@acme.example", "Still there?"),
    )
    .await;
    assert_eq!(report["data"][0], 250, "{report}");
    assert!(eventually(STEP, || h.daemon().store.queue_depth() == 0).await);
    let outbound = json(&h, "/api/outbound").await;
    let record = outbound["outbound"]
        .as_array()
        .expect("outbound")
        .iter()
        .find(|r| r["purpose"] == "email_reply")
        .cloned()
        .expect("the reply's record");
    assert_eq!(record["state"], "suppressed", "{outbound}");
    assert!(
        texts_to(&h, person).is_empty(),
        "{:?}",
        texts_to(&h, person)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_smtp_server_is_retried_and_a_refusal_is_a_dead_letter() {
    // A free port with nothing listening: the relay is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, &extra(port, "")).await;
    send_sms(&h, "919811115555", "JOIN while down").await;
    // At least two attempts fail (the first at once, the next about a second later).
    assert!(
        eventually(STEP, || {
            let store = &h.daemon().store;
            store
                .job_schedule()
                .ok()
                .into_iter()
                .flatten()
                .any(|(_, id, _)| {
                    store
                        .job(id)
                        .ok()
                        .flatten()
                        .is_some_and(|j| j.attempts >= 2 && j.last_error.is_some())
                })
        })
        .await,
        "retried while the relay is down"
    );
    let sink = SmtpSink::start(port, false).await;
    assert!(
        eventually(Duration::from_secs(60), || sink.messages().len() == 1).await,
        "delivered once the relay is up"
    );
    assert!(
        sink.messages()[0]["data"]
            .as_str()
            .expect("data")
            .contains("JOIN while down")
    );
    assert!(eventually(STEP, || h.daemon().store.queue_depth() == 0).await);
    assert_eq!(h.daemon().store.dead_letter_count(), 0);
    drop(sink);

    // A relay that refuses for good: a dead letter after one attempt.
    h.stop_daemon().await;
    let refusing = SmtpSink::start(0, true).await;
    h.start_daemon(&extra(refusing.port, "")).await;
    send_sms(&h, "919811115555", "JOIN refused").await;
    assert!(eventually(STEP, || h.daemon().store.dead_letter_count() == 1).await);
    let letters = json(&h, "/api/deadletters").await;
    let letter = &letters["deadletters"][0];
    assert_eq!(letter["job"]["attempts"], 1, "{letters}");
    assert!(
        letter["reason"].as_str().expect("reason").contains("550"),
        "{letters}"
    );
}

/// Talks raw LMTP: sends `input`, closes the sending side, reads until the server closes.
async fn raw_lmtp(addr: std::net::SocketAddr, input: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(input).await.expect("write");
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lmtp_is_answered_and_never_stops_the_listener() {
    let sink = SmtpSink::start(0, false).await;
    let h = Harness::start(
        SmscConfig::default(),
        SinkMode::Ok,
        &extra(sink.port, "reply_token_ttl = \"5s\""),
    )
    .await;
    let addr = h.daemon().lmtp_addr.expect("lmtp");
    let person = "919811116666";
    send_sms(&h, person, "JOIN").await;
    assert!(eventually(STEP, || sink.messages().len() == 1).await);
    let token = token_of(&sink.messages()[0]);
    let rcpt = format!("reply+{token}@{DOMAIN}");

    // Commands out of order, unknown ones, SMTP greetings, garbage and an overlong line.
    let long = "A".repeat(10_000);
    let out = raw_lmtp(
        addr,
        format!(
            "MAIL FROM:<desk@acme.example>\r\nEHLO x\r\nLHLO x\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nMAIL FROM:<desk@acme.example>\r\nMAIL FROM:<desk@acme.example>\r\nRCPT TO:<broken\r\nFROB\r\n\x00\x01\x02\x7f\u{fffd}\r\n{long}\r\nSTARTTLS\r\nDATA\r\nRSET\r\nNOOP\r\nQUIT\r\n"
        )
        .as_bytes(),
    )
    .await;
    let codes: Vec<&str> = out.lines().map(|l| &l[..3.min(l.len())]).collect();
    assert_eq!(
        codes,
        [
            "220", "503", "500", "250", "250", "250", "250", "250", "503", "503", "250", "503",
            "501", "500", "500", "500", "502", "503", "250", "250", "221"
        ],
        "{out}"
    );

    // Two recipients, one DATA: one reply each, in order; dot-unstuffing.
    let out = raw_lmtp(
        addr,
        format!(
            "LHLO x\r\nMAIL FROM:<desk@acme.example>\r\nRCPT TO:<{rcpt}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nFrom: desk@acme.example\r\n\r\n..dots first\r\n.\r\nQUIT\r\n"
        )
        .as_bytes(),
    )
    .await;
    let replies: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("250 2.1.5 reply queued"))
        .collect();
    assert_eq!(replies.len(), 2, "{out}");
    assert!(eventually(STEP, || texts_to(&h, person).len() == 2).await);
    assert_eq!(texts_to(&h, person)[0].1, ".dots first");

    // A line too long inside DATA: refused per recipient, the connection goes on.
    let out = raw_lmtp(
        addr,
        format!(
            "LHLO x\r\nMAIL FROM:<desk@acme.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nFrom: desk@acme.example\r\n\r\n{}\r\n.\r\nNOOP\r\nQUIT\r\n",
            "x".repeat(70_000)
        )
        .as_bytes(),
    )
    .await;
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(out.contains("250 2.0.0 ok"), "{out}");
    // A connection dropped in the middle of DATA delivers nothing.
    let _ = raw_lmtp(
        addr,
        format!("LHLO x\r\nMAIL FROM:<desk@acme.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nFrom: desk@acme.example\r\n\r\nhalf").as_bytes(),
    )
    .await;

    // Once the token has expired, RCPT is refused and says so.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let out = raw_lmtp(
        addr,
        format!("LHLO x\r\nMAIL FROM:<desk@acme.example>\r\nRCPT TO:<{rcpt}>\r\nQUIT\r\n")
            .as_bytes(),
    )
    .await;
    assert!(out.contains("550 5.1.1"), "{out}");
    assert!(out.contains("expired"), "{out}");

    // The listener still serves, and nothing else was texted.
    let out = raw_lmtp(addr, b"LHLO x\r\nQUIT\r\n").await;
    assert!(out.contains("250 SIZE"), "{out}");
    assert_eq!(texts_to(&h, person).len(), 2);
}

/// A private CA and a certificate for 127.0.0.1 signed by it (rcgen), written as PEM files in
/// `dir`; returns the paths of the CA certificate, the server's certificate and its key.
fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vmnd test relay CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca cert");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let path = |name: &str| dir.join(name).display().to_string();
    let (ca_path, cert_path, key_path) = (path("ca.pem"), path("server.pem"), path("server.key"));
    std::fs::write(&ca_path, ca.pem()).expect("write");
    std::fs::write(&cert_path, server.pem()).expect("write");
    std::fs::write(&key_path, server_key.serialize_pem()).expect("write");
    (ca_path, cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_implicit_tls_verify_the_relay_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = private_ca(certs.path());
    let mut h: Option<Harness> = None;
    for (mode, flag) in [("starttls", "--starttls"), ("tls", "--tls")] {
        let sink = SmtpSink::start_with(0, false, &[flag, &cert, &key]).await;
        let settings = format!("tls = \"{mode}\"\nca_file = \"{ca}\"");
        let harness = match h.as_mut() {
            None => h.insert(
                Harness::start(
                    SmscConfig::default(),
                    SinkMode::Ok,
                    &extra(sink.port, &settings),
                )
                .await,
            ),
            Some(harness) => {
                harness.stop_daemon().await;
                harness.start_daemon(&extra(sink.port, &settings)).await;
                harness
            }
        };
        send_sms(harness, "919811117777", &format!("JOIN over {mode}")).await;
        assert!(
            eventually(STEP, || sink.messages().len() == 1).await,
            "{mode}: delivered over TLS"
        );
        assert!(
            sink.messages()[0]["data"]
                .as_str()
                .expect("data")
                .contains(&format!("JOIN over {mode}"))
        );
    }
    // Without the private CA the relay's certificate is not trusted: nothing is sent, and the
    // job waits for a retry with the reason.
    let harness = h.as_mut().expect("harness");
    let sink = SmtpSink::start_with(0, false, &["--tls", &cert, &key]).await;
    harness.stop_daemon().await;
    harness
        .start_daemon(&extra(sink.port, "tls = \"tls\""))
        .await;
    send_sms(harness, "919811117777", "JOIN untrusted").await;
    assert!(
        eventually(STEP, || {
            let store = &harness.daemon().store;
            store
                .job_schedule()
                .ok()
                .into_iter()
                .flatten()
                .any(|(_, id, _)| {
                    store.job(id).ok().flatten().is_some_and(|j| {
                        j.email.is_some()
                            && j.last_error
                                .is_some_and(|e| e.to_lowercase().contains("certificate"))
                    })
                })
        })
        .await,
        "the untrusted relay fails the attempt"
    );
    assert!(sink.messages().is_empty());
}

#[test]
fn route_explains_the_email_forward_and_plans_one_job_per_action() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = common::config_text(
        &dir.path().join("var"),
        2775,
        "http://127.0.0.1:9/sms",
        &extra(25, ""),
    );
    let config = common::parse_config(&text);
    let router = vmnd::routing::router::Router::new(&config);
    let explained = vmnd::actions::explain(
        &router,
        VMN,
        "919800000000",
        "JOIN now",
        chrono::Utc::now(),
        None,
    );
    assert!(
        explained
            .actions
            .contains(&"E-mail to desk@acme.example, leads@acme.example".to_string()),
        "{explained}"
    );
    // The record names the webhooks only (an e-mail job has no webhook of its own).
    assert!(
        explained
            .actions
            .iter()
            .filter(|a| a.starts_with("POST"))
            .count()
            == 1,
        "{explained}"
    );
    // A message that matches no keyword is not e-mailed: the default has no `email`.
    let other = vmnd::actions::explain(
        &router,
        VMN,
        "919800000000",
        "hello",
        chrono::Utc::now(),
        None,
    );
    assert!(
        !other.actions.iter().any(|a| a.starts_with("E-mail")),
        "{other}"
    );
}

#[test]
fn the_lmtp_command_parser_takes_a_null_sender_and_parameters() {
    use smtp_proto::Request;
    let parse = |line: &[u8]| Request::parse(&mut line.iter()).map(|r| r.into_owned());
    match parse(b"MAIL FROM:<>\r\n") {
        Ok(Request::Mail { from }) => assert_eq!(from.address, ""),
        other => panic!("{other:?}"),
    }
    match parse(b"mail from:<desk@acme.example> BODY=8BITMIME SIZE=1000\r\n") {
        Ok(Request::Mail { from }) => {
            assert_eq!(from.address, "desk@acme.example");
            assert_eq!(from.size, 1000);
        }
        other => panic!("{other:?}"),
    }
    assert!(parse(b"RCPT TO:<reply+x@r.example\r\n").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmtp_address_in_use_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = common::config_text(
        &dir.path().join("var"),
        2775,
        "http://127.0.0.1:9/sms",
        &extra(25, "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    let config = common::parse_config(&text);
    match vmnd::daemon::Daemon::start(config).await {
        Ok(_) => panic!("started although lmtp_listen is taken"),
        Err(e) => assert!(e.contains("(lmtp_listen)"), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_forward_and_its_token_survive_a_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut h = Harness::start(SmscConfig::default(), SinkMode::Ok, &extra(port, "")).await;
    let person = "919811118888";
    send_sms(&h, person, "JOIN before the restart").await;
    // One failed attempt: the token is drawn and stored, the job waits for a retry.
    assert!(
        eventually(STEP, || {
            let store = &h.daemon().store;
            store
                .job_schedule()
                .ok()
                .into_iter()
                .flatten()
                .any(|(_, id, _)| {
                    store
                        .job(id)
                        .ok()
                        .flatten()
                        .is_some_and(|j| j.email.as_ref().is_some_and(|e| e.token.is_some()))
                })
        })
        .await
    );
    h.stop_daemon().await;
    let sink = SmtpSink::start(port, false).await;
    h.start_daemon(&extra(port, "")).await;
    assert!(
        eventually(Duration::from_secs(60), || sink.messages().len() == 1).await,
        "the pending forward is sent after the restart"
    );
    // The token it carries was stored before the first attempt: a reply finds it.
    let token = token_of(&sink.messages()[0]);
    let rcpt = format!("reply+{token}@{DOMAIN}");
    let report = lmtp_send(
        &h,
        "desk@acme.example",
        &[&rcpt],
        &reply_mail("desk@acme.example", "Welcome back"),
    )
    .await;
    assert_eq!(report["data"][0], 250, "{report}");
    assert!(eventually(STEP, || texts_to(&h, person).len() == 1).await);
    assert_eq!(texts_to(&h, person)[0].1, "Welcome back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_over_starttls_and_a_wrong_password_is_retried_not_dead() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = private_ca(certs.path());
    let sink = SmtpSink::start_with(
        0,
        false,
        &["--starttls", &cert, &key, "--auth", "vmnd", "s3cret"],
    )
    .await;
    let settings = |password: &str| {
        format!(
            "tls = \"starttls\"\nca_file = \"{ca}\"\nusername = \"vmnd\"\npassword = \"{password}\""
        )
    };
    let mut h = Harness::start(
        SmscConfig::default(),
        SinkMode::Ok,
        &extra(sink.port, &settings("wrong")),
    )
    .await;
    send_sms(&h, "919811119999", "JOIN with auth").await;
    // Refused logins are retried with the reason, never dead-lettered at once.
    assert!(
        eventually(STEP, || {
            let store = &h.daemon().store;
            store
                .job_schedule()
                .ok()
                .into_iter()
                .flatten()
                .any(|(_, id, _)| {
                    store.job(id).ok().flatten().is_some_and(|j| {
                        j.attempts >= 1
                            && j.last_error
                                .is_some_and(|e| e.contains("refused the login"))
                    })
                })
        })
        .await,
        "a wrong password is retried: {:?} {:?}",
        h.daemon()
            .store
            .job_schedule()
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|(_, id, _)| h.daemon().store.job(id).ok().flatten())
            .map(|j| (j.attempts, j.last_error))
            .collect::<Vec<_>>(),
        h.daemon().store.dead_letters(5).ok()
    );
    assert_eq!(h.daemon().store.dead_letter_count(), 0);
    assert!(sink.messages().is_empty());
    // The operator fixes the password: the pending forward goes out.
    h.stop_daemon().await;
    h.start_daemon(&extra(sink.port, &settings("s3cret"))).await;
    assert!(
        eventually(Duration::from_secs(60), || sink.messages().len() == 1).await,
        "delivered with the right password"
    );
}
