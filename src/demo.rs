//! `vmnd demo`: the whole path on loopback in one process. A simulated carrier, an HTTP sink
//! standing in for a tenant's endpoint, and the daemon with an embedded config (validated like
//! any operator's file) and a data dir under a temp folder. A scripted set of messages covers
//! plain GSM text, the GSM extension table, Unicode with an emoji, a three-part message
//! delivered out of order, a message_payload TLV, a message to a number we do not serve, a
//! delivery receipt, and two keywords (a campaign and a poll) answered by SMS. The campaign is
//! also forwarded by e-mail to an SMTP sink, and a reply to that e-mail, handed to the LMTP
//! listener as the operator's MTA would, goes back to the person by SMS. Each message's fate is
//! printed; the admin page stays up until Ctrl-C.

use std::time::Duration;

use crate::config;
use crate::daemon::Daemon;
use crate::http_sink::{HttpSink, SinkMode};
use crate::sim::{Smsc, SmscConfig, mo};
use crate::smpp::receipt::Receipt;
use crate::smtp_sink::SmtpSink;
use crate::store::MessageFilter;

/// The demo's config; `{...}` are filled in at start. Operators can copy it.
const DEMO_CONFIG: &str = r#"
[daemon]
data_dir = "{data_dir}"
admin_listen = "{admin_listen}"
reassembly_timeout = "30s"

[[carrier]]
name = "sim"
host = "127.0.0.1"
port = {carrier_port}
system_id = "vmnd"
password = "secret"
bind = "transceiver"
window = 32
enquire_link = "30s"

[[webhook]]
name = "crm"
url = "{webhook_url}"
secret = "whsec-demo"
retry_for = "1h"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "vmnd demo <sms@demo.example>"
reply_domain = "reply.demo.example"
lmtp_listen = "127.0.0.1:0"
subject = "[{inbox}] SMS from {from}"

[[number]]
vmn = "567678"
carrier = "sim"
default = { webhook = "crm" }
receipts = "crm"

[[number.keyword]]
keyword = "JOIN"
aliases = ["SUBSCRIBE"]
inbox = "summer"
reply = "Thanks {from}! You joined {inbox}. Details: https://acme.example/s"
webhook = "crm"
email = ["leads@acme.example"]

[[number.keyword]]
keyword = "VOTE"
kind = "poll"
options = ["A", "B"]
reply = "Thanks, your vote {args} is counted"
invalid_reply = "Please answer VOTE A or VOTE B"
webhook = "crm"

[[number]]
vmn = "9876543210"
carrier = "sim"
default = { webhook = "crm" }
"#;

pub async fn run(once: bool) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("vmnd-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let sink = HttpSink::start(SinkMode::Ok)
        .await
        .map_err(|e| format!("cannot start the HTTP sink: {e}"))?;
    let smtp = SmtpSink::start()
        .await
        .map_err(|e| format!("cannot start the SMTP sink: {e}"))?;
    let smsc = Smsc::start(SmscConfig::default())
        .await
        .map_err(|e| format!("cannot start the simulated carrier: {e}"))?;
    // The contract's admin port if it is free, else any.
    let admin_listen = match std::net::TcpListener::bind("127.0.0.1:8640") {
        Ok(l) => {
            drop(l);
            "127.0.0.1:8640"
        }
        Err(_) => "127.0.0.1:0",
    };
    let text = DEMO_CONFIG
        .replace("{data_dir}", &dir.path().join("var").display().to_string())
        .replace("{admin_listen}", admin_listen)
        .replace("{carrier_port}", &smsc.addr().port().to_string())
        .replace("{webhook_url}", &sink.url("/sms"))
        .replace("{smtp_port}", &smtp.addr().port().to_string());
    let (config, _warnings) = config::parse(&text, "<demo>", &|_| None).map_err(|problems| {
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let daemon = Daemon::start(config).await?;
    crate::out!("vmnd demo");
    crate::out!("  carrier simulator  {}", smsc.addr());
    crate::out!("  webhook sink       {}", sink.url("/sms"));
    crate::out!("  SMTP sink          {}", smtp.addr());
    if let Some(lmtp) = daemon.lmtp_addr {
        crate::out!("  LMTP (replies)     {lmtp}");
    }
    crate::out!("  admin page         http://{}/", daemon.admin_addr);
    crate::out!("  data dir           {}", dir.path().display());
    crate::out!();

    let mut script = vec![
        mo::gsm("919812345678", "567678", "JOIN summer"),
        mo::gsm("919812345679", "567678", "Price: 10€ {promo} [x] ~ \\ ^ |"),
        mo::gsm("919812345684", "567678", "vote a"),
        mo::ucs2("919812345680", "9876543210", "नमस्ते, order #42 😀"),
        mo::payload_tlv("919812345681", "567678", "HELP via message_payload"),
        mo::latin1("33612345678", "567678", "Café crème, s'il vous plaît"),
        mo::gsm("919812345682", "11111", "to a number nobody serves"),
    ];
    let long = "This message is long enough to need three parts. ".repeat(8);
    let mut parts = mo::concat_udh("919812345683", "567678", long.trim_end(), 0x42, false);
    parts.reverse(); // delivered out of order: 3, 2, 1
    script.extend(parts);
    script.push(mo::receipt(
        "919812345678",
        "567678",
        &Receipt {
            id: "sim-0001".into(),
            sub: Some("001".into()),
            dlvrd: Some("001".into()),
            submit_date: Some("2611281400".into()),
            done_date: Some("2611281401".into()),
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            text: Some("Thanks".into()),
        },
    ));
    let sent = script.len() as u64;
    smsc.enqueue_many(script);

    let all_acked = smsc
        .wait_until(Duration::from_secs(20), |s| s.acked_ok >= sent)
        .await;
    // Routed messages: 6 + 1 concatenated + 1 receipt, each posted once.
    let expected_posts = 8;
    let all_posted = sink.wait_for(expected_posts, Duration::from_secs(20)).await;
    let stats = smsc.stats();
    crate::out!(
        "carrier: {} deliver_sm sent, {} acknowledged with status 0 (after durable commit)",
        stats.sent,
        stats.acked_ok
    );
    crate::out!("webhook: {} requests answered 2xx\n", sink.count());

    let posted: Vec<String> = sink
        .requests()
        .iter()
        .filter_map(|r| r.header("vmnd-event-id").map(str::to_string))
        .collect();
    let mut messages = daemon
        .store
        .list_messages(&MessageFilter {
            limit: 100,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    messages.reverse();
    for m in &messages {
        let fate = if !m.routed {
            "stored as unrouted (number not served), not forwarded".to_string()
        } else if posted.contains(&m.id) {
            format!("forwarded to {} (signed POST, 200)", m.webhooks.join(", "))
        } else if m.webhooks.is_empty() {
            "stored".to_string()
        } else {
            format!("queued for {}", m.webhooks.join(", "))
        };
        let what = if m.event == "receipt" {
            let r = m.receipt.as_ref();
            format!(
                "receipt for {} stat {}",
                r.map(|r| r.id.as_str()).unwrap_or("?"),
                r.map(|r| r.stat.as_str()).unwrap_or("?")
            )
        } else {
            let matched = match (&m.keyword, &m.inbox) {
                (Some(k), Some(i)) => format!("  (keyword {k}, inbox {i})"),
                (Some(k), None) => format!("  (keyword {k})"),
                _ => String::new(),
            };
            format!("\"{}\"{matched}", m.text.replace('\n', "\\n"))
        };
        crate::out!(
            "{}  {} -> {}  [{}{}]  {}\n      {}",
            m.id,
            m.from,
            m.to,
            m.encoding,
            if m.parts > 1 {
                format!(", {} parts", m.parts)
            } else {
                String::new()
            },
            what,
            fate
        );
    }
    // Replies (JOIN, VOTE) leave as submit_sm through the simulated carrier.
    let replies_sent = smsc
        .wait_until(Duration::from_secs(20), |s| s.submits_received >= 2)
        .await;
    crate::out!();
    for sm in smsc.submitted() {
        let text = crate::smpp::text::decode_text(sm.data_coding, &sm.short_message, false, 0).text;
        crate::out!(
            "reply  {} -> {}  submit_sm: \"{}\"",
            sm.source.addr,
            sm.dest.addr,
            text
        );
    }
    let emailed = email_round_trip(&daemon, &smtp, &smsc).await;
    let ok = all_acked && all_posted && replies_sent && emailed;
    if !ok {
        crate::out!(
            "\nnot everything arrived in time: acked={all_acked} posted={all_posted} replies={replies_sent} e-mail={emailed}"
        );
    }
    if !once {
        crate::out!(
            "\nadmin page: http://{}/  (metrics at /metrics). Ctrl-C to stop.",
            daemon.admin_addr
        );
        crate::daemon::wait_for_signal().await;
    }
    daemon.shutdown().await;
    smsc.shutdown();
    sink.shutdown();
    smtp.shutdown();
    if ok {
        Ok(())
    } else {
        Err("the demo's messages did not all flow".into())
    }
}

/// The JOIN forward as the SMTP sink got it, then a reply to it handed over LMTP (as the
/// operator's MTA would) and the SMS it becomes. True when all of it happened.
async fn email_round_trip(daemon: &Daemon, smtp: &SmtpSink, smsc: &Smsc) -> bool {
    if !smtp.wait_for(1, Duration::from_secs(20)).await {
        return false;
    }
    let mail = &smtp.received()[0];
    let header = |name: &str| mail.header(name).unwrap_or_default();
    crate::out!();
    crate::out!(
        "e-mail to {}  Subject: {:?}\n      Reply-To: {}\n      Message-ID: {}  In-Reply-To: {}",
        mail.rcpt_to.join(", "),
        header("Subject"),
        header("Reply-To"),
        header("Message-ID"),
        header("In-Reply-To")
    );
    let reply_to = header("Reply-To");
    let Some(rcpt) = reply_to
        .split(['<', '>', ' '])
        .find(|part| part.starts_with("reply+"))
    else {
        return false;
    };
    let Some(lmtp) = daemon.lmtp_addr else {
        return false;
    };
    let text = "See you at the summer launch!";
    let message = format!(
        "From: leads@acme.example\r\nSubject: Re: {}\r\n\r\n{text}\r\n\r\nOn Sat, Acme SMS wrote:\r\n> JOIN summer\r\n",
        header("Subject")
    );
    let transcript = match lmtp_deliver(lmtp, "leads@acme.example", rcpt, &message).await {
        Ok(t) => t,
        Err(e) => {
            crate::out!("LMTP delivery failed: {e}");
            return false;
        }
    };
    crate::out!(
        "reply by e-mail from leads@acme.example to {rcpt} over LMTP: {}",
        transcript.trim_end()
    );
    let is_reply = |sm: &crate::smpp::pdu::ShortMessage| {
        crate::smpp::text::decode_text(sm.data_coding, &sm.short_message, false, 0).text == text
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(sm) = smsc.submitted().iter().find(|sm| is_reply(sm)) {
            crate::out!(
                "reply  {} -> {}  submit_sm: \"{text}\" (the e-mail's own text, quote stripped)",
                sm.source.addr,
                sm.dest.addr
            );
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal LMTP client for the demo: one message to one recipient; returns the final reply.
async fn lmtp_deliver(
    addr: std::net::SocketAddr,
    from: &str,
    rcpt: &str,
    message: &str,
) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut last = String::new();
    // Each step's reply ends with a line whose code is followed by a space.
    async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(
        lines: &mut tokio::io::Lines<R>,
    ) -> std::io::Result<String> {
        loop {
            let Some(line) = lines.next_line().await? else {
                return Err(std::io::Error::other("connection closed"));
            };
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    }
    read_reply(&mut lines).await?;
    let body = message.replace("\r\n.", "\r\n..");
    for command in [
        "LHLO demo.example\r\n".to_string(),
        format!("MAIL FROM:<{from}>\r\n"),
        format!("RCPT TO:<{rcpt}>\r\n"),
        "DATA\r\n".to_string(),
        format!("{body}.\r\n"),
        "QUIT\r\n".to_string(),
    ] {
        write.write_all(command.as_bytes()).await?;
        let reply = read_reply(&mut lines).await?;
        if command.starts_with("QUIT") {
            break;
        }
        last = reply;
    }
    Ok(last)
}
