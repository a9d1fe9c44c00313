//! E-mail forwards over SMTP (lettre, rustls; no OpenSSL): one attempt at a time, called by the
//! dispatcher's `email:smtp` queue, which owns retries, backoff and dead letters.
//!
//! Each forward goes to the rule's `email` addresses with `[smtp]`'s subject and body templates
//! filled from the message record, and carries:
//! - `Reply-To: reply+<token>@<reply_domain>`: a random 128-bit token, recorded in the store
//!   (`mail_tokens`) and made durable before the e-mail leaves, so that the reply a member of
//!   staff sends comes back over LMTP (`inbound_mail`) as an SMS to the original sender;
//! - a `Message-ID` derived from the job id, the same on every retry, so that a retry after a
//!   lost answer does not start a second thread in the recipients' mail clients;
//! - `In-Reply-To` and `References` naming a per-conversation root id derived from the number
//!   and the sender, so that every message from one person to one number is one thread.

use std::sync::Arc;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::{Digest, Sha256};

use crate::clock;
use crate::config::{self, Smtp, SmtpTls};
use crate::store::mail::ReplyToken;
use crate::store::queue::Job;
use crate::store::{self, MessageRecord, Store};

/// How one attempt went.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Done,
    /// The relay could not be reached, or answered 4xx: try again later.
    Retry(String),
    /// The relay refused for good (5xx), or the job cannot be sent: dead-letter now.
    GiveUp(String),
}

/// A whole SMTP exchange (connect, greeting, TLS, login, the message) may take this many
/// times `[smtp] timeout`.
const SEND_TIMEOUTS: u32 = 3;

/// The SMTP side of `[smtp]`: a transport built once, cloned into each attempt.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    smtp: Smtp,
}

impl Mailer {
    /// Builds the transport for `[smtp]` (no connection is made until the first send).
    pub fn new(smtp: &Smtp) -> Result<Mailer, String> {
        let tls = |host: &str| {
            let mut builder = TlsParameters::builder(host.to_string());
            if let Some(pem) = &smtp.ca_pem {
                let ca = Certificate::from_pem(pem).map_err(|e| format!("[smtp] ca_file: {e}"))?;
                builder = builder.add_root_certificate(ca);
            }
            builder
                .build_rustls()
                .map_err(|e| format!("TLS settings for {host:?}: {e}"))
        };
        // `builder_dangerous` only means "no TLS unless asked for": `tls` below decides.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .timeout(Some(smtp.timeout))
            // The EHLO name: the host's name is not worth a syscall and a crate feature; the
            // reply domain is ours to name.
            .hello_name(ClientId::Domain(smtp.reply_domain.clone()));
        builder = match smtp.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::StartTls => builder.tls(Tls::Required(tls(&smtp.host)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls(&smtp.host)?)),
        };
        if let Some((user, password)) = &smtp.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            smtp: smtp.clone(),
        })
    }

    /// Sends `job` once. Draws and records its reply token first if it has none yet; the
    /// caller writes the job back (attempts, due time) as with any other job. `record` is the
    /// message when the dispatcher still has it in memory; otherwise it is read from the store.
    pub async fn attempt(
        &self,
        store: &Store,
        job: &mut Job,
        record: Option<Arc<MessageRecord>>,
    ) -> store::Result<Sent> {
        let Some(email) = job.email.clone() else {
            return Ok(Sent::GiveUp("not an e-mail job".into()));
        };
        let record = match record {
            Some(record) => record,
            None => match store.message(job.message_id)? {
                Some(record) => Arc::new(record),
                None => return Ok(Sent::GiveUp("message record missing".into())),
            },
        };
        let token = match &email.token {
            Some(token) => token.clone(),
            None => {
                let Some(token) = new_reply_token() else {
                    return Ok(Sent::Retry(
                        "the system's random number generator failed".into(),
                    ));
                };
                let now = clock::now_ms();
                store.put_reply_token(
                    &token,
                    &ReplyToken {
                        vmn: email.vmn.clone(),
                        msisdn: email.msisdn.clone(),
                        message_id: store::format_id(job.message_id),
                        job_id: store::format_id(job.id),
                        allowed: email.to.clone(),
                        created_ms: now,
                        expires_ms: now.saturating_add(
                            u64::try_from(self.smtp.reply_token_ttl.as_millis())
                                .unwrap_or(u64::MAX),
                        ),
                    },
                )?;
                if let Some(e) = job.email.as_mut() {
                    e.token = Some(token.clone());
                }
                store.job_update(job)?;
                // Durable before the e-mail leaves: a reply must never find its token gone.
                store.commit().await?;
                token
            }
        };
        let message = match self.build(job, &record, &email.to, &token) {
            Ok(m) => m,
            Err(e) => return Ok(Sent::GiveUp(e)),
        };
        let started = std::time::Instant::now();
        // lettre's `timeout` bounds the TCP connect only: a relay that accepts and then says
        // nothing (no greeting, a stalled TLS handshake or DATA) would hold this attempt, and
        // after `concurrency` of them every e-mail, for good.
        let limit = self.smtp.timeout.saturating_mul(SEND_TIMEOUTS);
        let result = match tokio::time::timeout(limit, self.transport.send(message)).await {
            Ok(result) => result,
            Err(_) => {
                metrics::counter!("vmnd_email_attempts_total", "outcome" => "failed").increment(1);
                return Ok(Sent::Retry(format!(
                    "SMTP: the relay did not finish the exchange within {limit:?}"
                )));
            }
        };
        metrics::histogram!("vmnd_email_latency_seconds").record(started.elapsed().as_secs_f64());
        Ok(match result {
            Ok(_) => {
                metrics::counter!("vmnd_email_attempts_total", "outcome" => "sent").increment(1);
                Sent::Done
            }
            // A refused login is our configuration, not this e-mail: keep it for when the
            // password is fixed, like a relay that is down.
            Err(e) if is_auth_refusal(&e) => {
                metrics::counter!("vmnd_email_attempts_total", "outcome" => "failed").increment(1);
                Sent::Retry(format!(
                    "SMTP relay refused the login (check [smtp] username and password): {e}"
                ))
            }
            Err(e) if e.is_permanent() => {
                metrics::counter!("vmnd_email_attempts_total", "outcome" => "refused").increment(1);
                Sent::GiveUp(format!("SMTP relay refused the e-mail: {e}"))
            }
            Err(e) => {
                metrics::counter!("vmnd_email_attempts_total", "outcome" => "failed").increment(1);
                Sent::Retry(format!("SMTP: {e}"))
            }
        })
    }

    /// The e-mail for `job`, as every attempt sends it.
    fn build(
        &self,
        job: &Job,
        record: &MessageRecord,
        to: &[String],
        token: &str,
    ) -> Result<Message, String> {
        let smtp = &self.smtp;
        let vars = |name: &str| template_var(record, name);
        // A header is one line: the sender's text may have line breaks.
        let subject: String = config::render_template(&smtp.subject, &vars)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let body = config::render_template(&smtp.body, &vars);
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|e| format!("[smtp] from {:?}: {e}", smtp.from))?;
        let reply_to: Mailbox = reply_address(token, &smtp.reply_domain)
            .parse()
            .map_err(|e| format!("reply address: {e}"))?;
        let root = thread_root_id(&record.to, &record.from, &smtp.reply_domain);
        let mut builder = Message::builder()
            .from(from)
            .reply_to(reply_to)
            .subject(subject)
            .message_id(Some(message_id(job.id, &smtp.reply_domain)))
            .in_reply_to(root.clone())
            .references(root)
            .header(ContentType::TEXT_PLAIN);
        for address in to {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| format!("recipient {address:?}: {e}"))?;
            builder = builder.to(mailbox);
        }
        builder
            .body(body)
            .map_err(|e| format!("cannot build the e-mail: {e}"))
    }
}

/// Whether the relay refused our credentials (RFC 4954: 534, 535, 538; 530 asks for auth).
fn is_auth_refusal(e: &lettre::transport::smtp::Error) -> bool {
    e.status()
        .is_some_and(|code| matches!(code.to_string().as_str(), "530" | "534" | "535" | "538"))
}

/// Values of the subject and body placeholders: the same names as SMS templates, from the
/// stored message.
fn template_var(record: &MessageRecord, name: &str) -> Option<String> {
    Some(match name {
        "from" => record.from.clone(),
        "to" => record.to.clone(),
        "keyword" => record.keyword.clone().unwrap_or_default(),
        "args" => record.args.clone().unwrap_or_default(),
        "text" => record.text.clone(),
        "inbox" => record.inbox.clone().unwrap_or_default(),
        "date" => record.received_at.get(..10).unwrap_or_default().to_string(),
        _ => return None,
    })
}

/// A new reply token: 128 bits from the operating system's CSPRNG, in lower-case base32 (26
/// characters; case-insensitive, as the local part of an address may be treated by MTAs).
/// `None` only when the system cannot give random bytes.
pub fn new_reply_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(
        data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase(),
    )
}

/// Whether `text` has the shape of a token [`new_reply_token`] makes (checked before any store
/// lookup, so odd recipients never reach sled as keys).
pub fn is_reply_token(text: &str) -> bool {
    text.len() == 26
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// `reply+<token>@<reply_domain>`.
pub fn reply_address(token: &str, reply_domain: &str) -> String {
    format!("reply+{token}@{reply_domain}")
}

/// The `Message-ID` of the forward of job `job_id`: the same on every retry.
pub fn message_id(job_id: u64, reply_domain: &str) -> String {
    format!("<{}.vmnd@{reply_domain}>", store::format_id(job_id))
}

/// The root of the thread of every message from `msisdn` to `vmn`: forwards name it in
/// `In-Reply-To` and `References`, so mail clients show one conversation per person and number.
/// Hashed, so that the header does not spell out the phone number once more.
pub fn thread_root_id(vmn: &str, msisdn: &str, reply_domain: &str) -> String {
    let digest = Sha256::digest(format!("{vmn}\0{msisdn}").as_bytes());
    format!(
        "<thread.{}.vmnd@{reply_domain}>",
        hex::encode(&digest[..12])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_are_random_base32_of_128_bits() {
        let a = new_reply_token().expect("random");
        let b = new_reply_token().expect("random");
        assert_ne!(a, b);
        assert!(is_reply_token(&a), "{a}");
        assert_eq!(
            data_encoding::BASE32_NOPAD
                .decode(a.to_ascii_uppercase().as_bytes())
                .expect("base32")
                .len(),
            16
        );
        for bad in [
            "",
            "abc",
            &a.to_ascii_uppercase(),
            &format!("{a}a"),
            "0000000000000000000000000a",
        ] {
            assert!(!is_reply_token(bad), "{bad}");
        }
    }

    #[test]
    fn thread_ids_are_per_person_and_number_and_message_ids_per_job() {
        let a = thread_root_id("567678", "919812345678", "r.example");
        assert_eq!(a, thread_root_id("567678", "919812345678", "r.example"));
        assert_ne!(a, thread_root_id("567678", "919812345679", "r.example"));
        assert_ne!(a, thread_root_id("567679", "919812345678", "r.example"));
        assert!(!a.contains("919812345678"));
        assert!(a.starts_with("<thread.") && a.ends_with("@r.example>"));
        assert_eq!(
            message_id(0x1_0001, "r.example"),
            "<0000000000010001.vmnd@r.example>"
        );
    }

    fn smtp(tls: SmtpTls) -> Smtp {
        Smtp {
            host: "mail.example.net".into(),
            port: 587,
            tls,
            ca_pem: None,
            credentials: Some(("u".into(), "p".into())),
            from: "vmnd <vmnd@example.net>".into(),
            reply_domain: "reply.example.net".into(),
            lmtp_listen: "127.0.0.1:2424".parse().expect("addr"),
            timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(86_400),
            reply_token_ttl: Duration::from_secs(3600),
            subject: "SMS from {from}: {text}".into(),
            body: config::DEFAULT_EMAIL_BODY.into(),
            concurrency: 1,
        }
    }

    /// A relay that accepts the connection and then says nothing: the attempt ends (to be
    /// retried) within the bound, instead of holding its slot for good.
    #[tokio::test]
    async fn a_relay_that_never_speaks_does_not_hold_the_attempt() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                kept.push(stream);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let config = Smtp {
            host: "127.0.0.1".into(),
            port,
            credentials: None,
            timeout: Duration::from_millis(300),
            ..smtp(SmtpTls::None)
        };
        let mailer = Mailer::new(&config).expect("mailer");
        let mut record = crate::store::tests::sample_message(0x100);
        record.to = "567678".into();
        let mut job = Job {
            id: 0x1_0001,
            message_id: 0x100,
            webhook: String::new(),
            event: "message".into(),
            attempts: 0,
            created_ms: 0,
            due_ms: 0,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            sms: None,
            email: Some(crate::store::queue::EmailJob {
                to: vec!["a@acme.example".into()],
                vmn: "567678".into(),
                msisdn: "919812345678".into(),
                token: None,
            }),
        };
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            mailer.attempt(&store, &mut job, Some(Arc::new(record))),
        )
        .await
        .expect("the attempt ended")
        .expect("no store error");
        assert!(
            matches!(&attempt, Sent::Retry(e) if e.contains("did not finish")),
            "{attempt:?}"
        );
        held.abort();
    }

    #[test]
    fn every_tls_mode_builds_a_transport_and_the_message_has_its_headers() {
        for tls in [SmtpTls::None, SmtpTls::StartTls, SmtpTls::Tls] {
            assert!(Mailer::new(&smtp(tls)).is_ok(), "{tls:?}");
        }
        let mailer = Mailer::new(&smtp(SmtpTls::None)).expect("mailer");
        let record = MessageRecord {
            id: store::format_id(0x100),
            event: "message".into(),
            to: "567678".into(),
            from: "919812345678".into(),
            from_ton_npi: None,
            text: "JOIN now\nplease".into(),
            encoding: "gsm7".into(),
            keyword: Some("JOIN".into()),
            inbox: Some("summer".into()),
            args: Some("now".into()),
            carrier: "sim".into(),
            received_at: "2026-11-28T14:00:00.000Z".into(),
            received_at_ms: 0,
            parts: 1,
            complete: true,
            missing_parts: Vec::new(),
            routed: true,
            receipt: None,
            webhooks: Vec::new(),
            consent: None,
            guarded: Vec::new(),
        };
        let job = Job {
            id: 0x1_0001,
            message_id: 0x100,
            webhook: String::new(),
            event: "message".into(),
            attempts: 0,
            created_ms: 0,
            due_ms: 0,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            sms: None,
            email: None,
        };
        let to = vec!["a@acme.example".to_string(), "b@acme.example".to_string()];
        let message = mailer
            .build(&job, &record, &to, "abcdefghijklmnopqrstuvwxyz")
            .expect("message");
        let text = String::from_utf8(message.formatted()).expect("utf-8");
        assert!(
            text.contains("Subject: SMS from 919812345678: JOIN now please\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Reply-To: reply+abcdefghijklmnopqrstuvwxyz@reply.example.net\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Message-ID: <0000000000010001.vmnd@reply.example.net>\r\n"),
            "{text}"
        );
        assert!(text.contains("In-Reply-To: <thread."), "{text}");
        assert!(text.contains("References: <thread."), "{text}");
        assert!(
            text.contains("To: a@acme.example, b@acme.example\r\n"),
            "{text}"
        );
        assert!(text.contains("JOIN now\r\nplease"), "{text}");
        // A recipient that does not parse is a permanent problem, not a panic.
        assert!(
            mailer
                .build(&job, &record, &["nope".to_string()], "t")
                .is_err()
        );
    }
}
