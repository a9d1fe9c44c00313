//! A recording SMTP server standing in for the operator's mail relay in `vmnd demo`: it speaks
//! enough SMTP for lettre (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no auth) on
//! `127.0.0.1:<ephemeral>` and keeps every message it accepts. Tests use a server nobody here
//! wrote (aiosmtpd); this one keeps the demo in one process with nothing to install.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smtp_proto::Request;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::inbound_mail::lmtp::{Line, read_line};

/// Longest line taken, and largest message.
const MAX_LINE: usize = 64 * 1024;
const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// One message as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, lines ending in CRLF.
    pub data: Vec<u8>,
}

impl SinkMail {
    /// The first header called `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let message = mail_parser::MessageParser::default().parse(&self.data)?;
        message
            .header_raw(name)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// The running sink; stops when [`SmtpSink::shutdown`] is called or it is dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<SinkMail>>>,
    arrived: Arc<Notify>,
    shutdown: watch::Sender<bool>,
}

impl SmtpSink {
    pub async fn start() -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (shutdown, mut stop) = watch::channel(false);
        let (store, notify) = (received.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (store, notify) = (store.clone(), notify.clone());
                        tokio::spawn(async move {
                            if let Err(e) = session(stream, &store, &notify).await {
                                tracing::debug!(error = %e, "SMTP sink connection ended");
                            }
                        });
                    }
                    _ = stop.changed() => return,
                }
            }
        });
        Ok(SmtpSink {
            addr,
            received,
            arrived,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, in order.
    pub fn received(&self) -> Vec<SinkMail> {
        lock(&self.received).clone()
    }

    /// Waits until at least `n` messages arrived or `timeout` passed; true if they did.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if lock(&self.received).len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(&self.received).len() >= n;
            }
        }
    }

    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The list survives a panicking holder: it is only ever pushed to.
fn lock(m: &Mutex<Vec<SinkMail>>) -> MutexGuard<'_, Vec<SinkMail>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn say<W: AsyncWrite + Unpin>(w: &mut W, text: &str) -> std::io::Result<()> {
    w.write_all(text.as_bytes()).await
}

/// One SMTP connection.
async fn session(
    stream: TcpStream,
    store: &Mutex<Vec<SinkMail>>,
    arrived: &Notify,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let (mut from, mut rcpts): (Option<String>, Vec<String>) = (None, Vec::new());
    say(&mut write, "220 vmnd-smtp-sink ESMTP\r\n").await?;
    loop {
        match read_line(&mut reader, &mut line, MAX_LINE).await? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                say(&mut write, "500 5.5.2 line too long\r\n").await?;
                continue;
            }
            Line::Full => {}
        }
        if !line.ends_with(b"\n") {
            line.extend_from_slice(b"\r\n");
        }
        let answer = match Request::parse(&mut line.iter()) {
            Ok(Request::Ehlo { .. }) => {
                "250-vmnd-smtp-sink\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
            }
            Ok(Request::Helo { .. }) => "250 vmnd-smtp-sink\r\n",
            Ok(Request::Mail { from: f }) => {
                from = Some(f.address.to_string());
                rcpts.clear();
                "250 2.1.0 ok\r\n"
            }
            Ok(Request::Rcpt { to }) if from.is_some() => {
                rcpts.push(to.address.to_string());
                "250 2.1.5 ok\r\n"
            }
            Ok(Request::Rcpt { .. }) => "503 5.5.1 need MAIL first\r\n",
            Ok(Request::Data) if from.is_some() && !rcpts.is_empty() => {
                say(&mut write, "354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    match read_line(&mut reader, &mut line, MAX_LINE).await? {
                        Line::Eof => return Ok(()),
                        Line::TooLong => continue,
                        Line::Full => {}
                    }
                    let content = line
                        .strip_suffix(b"\r\n")
                        .or_else(|| line.strip_suffix(b"\n"))
                        .unwrap_or(&line);
                    if content == b"." {
                        break;
                    }
                    let content = content.strip_prefix(b".").unwrap_or(content);
                    if data.len() + content.len() < MAX_MESSAGE {
                        data.extend_from_slice(content);
                        data.extend_from_slice(b"\r\n");
                    }
                }
                lock(store).push(SinkMail {
                    mail_from: from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    data,
                });
                arrived.notify_waiters();
                "250 2.0.0 queued\r\n"
            }
            Ok(Request::Data) => "503 5.5.1 need MAIL and RCPT first\r\n",
            Ok(Request::Rset) => {
                from = None;
                rcpts.clear();
                "250 2.0.0 ok\r\n"
            }
            Ok(Request::Noop { .. }) => "250 2.0.0 ok\r\n",
            Ok(Request::Quit) => {
                say(&mut write, "221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            Ok(_) => "502 5.5.1 not implemented\r\n",
            Err(_) => "500 5.5.2 command not understood\r\n",
        };
        say(&mut write, answer).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    #[tokio::test]
    async fn lettre_delivers_to_the_sink() {
        let sink = SmtpSink::start().await.expect("sink");
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(sink.addr().port())
            .build();
        let message = Message::builder()
            .from("a@example.net".parse().expect("from"))
            .to("b@example.net".parse().expect("to"))
            .subject("Hello")
            .body(".leading dot\nsecond line".to_string())
            .expect("message");
        transport.send(message).await.expect("sent");
        assert!(sink.wait_for(1, Duration::from_secs(5)).await);
        let mail = &sink.received()[0];
        assert_eq!(mail.mail_from, "a@example.net");
        assert_eq!(mail.rcpt_to, ["b@example.net"]);
        assert_eq!(mail.header("Subject").as_deref(), Some("Hello"));
        let text = String::from_utf8_lossy(&mail.data);
        assert!(text.contains("\r\n.leading dot\r\nsecond line"), "{text}");
    }
}
