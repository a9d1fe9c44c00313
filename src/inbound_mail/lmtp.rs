//! One LMTP connection (RFC 2033): `LHLO`, `MAIL FROM`, `RCPT TO`, `DATA` answered with one
//! reply per accepted recipient, `RSET`, `NOOP`, `QUIT`. Commands are parsed by smtp-proto
//! (the parser of a well-known Rust mail server); lines are read here with a length limit, the
//! message with a size limit and dot-unstuffing. Bad input gets a reply code, never a panic,
//! and an idle connection is closed.

use std::time::Duration;

use smtp_proto::Request;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::{MailContext, Recipient, Reply, reply};

/// The longest command line taken (RFC 5321 says 512; some clients add long parameters).
pub const MAX_COMMAND_LINE: usize = 4096;

/// The longest line inside a message (RFC 5322 says 998 plus CRLF; generous for broken MUAs).
pub const MAX_DATA_LINE: usize = 64 * 1024;

/// The largest message taken, dot-unstuffed; announced as `SIZE` in the LHLO answer.
pub const MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// Recipients per transaction.
const MAX_RECIPIENTS: usize = 100;

/// A connection with nothing said for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What reading one line gave.
pub(crate) enum Line {
    /// The line, with its line ending.
    Full,
    /// Longer than the limit: what came was dropped up to and including its line ending.
    TooLong,
    Eof,
}

/// Reads one line into `buf` (cleared first), at most `max` bytes.
pub(crate) async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                // A last line without its ending: taken as it is.
                Line::Full
            });
        }
        let (chunk, done) = match memchr_lf(available) {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let used = chunk.len();
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Full });
        }
    }
}

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Tells a connection over the limit to come back later.
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S) {
    let _ = send(
        &mut stream,
        b"421 4.3.2 too many connections, try again later\r\n",
    )
    .await;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
}

/// How long one reply may take to be written. A client that sends commands and never reads
/// the replies would otherwise hold its session (one of the few allowed) for good.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes one reply, within [`WRITE_TIMEOUT`].
async fn send<W: AsyncWrite + Unpin + ?Sized>(write: &mut W, reply: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(reply)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client does not read its replies",
        )),
    }
}

/// The transaction in progress.
#[derive(Default)]
struct Transaction {
    /// `MAIL FROM` given (the reverse path; empty for `<>`).
    from: Option<String>,
    recipients: Vec<Recipient>,
}

/// Serves one connection until `QUIT`, end of stream, the idle timeout or shutdown.
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ctx: &MailContext,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let name = ctx
        .config
        .smtp
        .as_ref()
        .map_or("vmnd", |s| s.reply_domain.as_str())
        .to_string();
    send(
        &mut write,
        format!("220 {name} LMTP vmnd ready\r\n").as_bytes(),
    )
    .await?;
    let mut greeted = false;
    let mut tx = Transaction::default();
    let mut line = Vec::with_capacity(256);
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader, &mut line, MAX_COMMAND_LINE)) => r,
            _ = shutdown.changed() => {
                send(&mut write, b"421 4.3.0 shutting down\r\n").await?;
                return Ok(());
            }
        };
        let read = match read {
            Ok(r) => r?,
            Err(_) => {
                send(&mut write, b"421 4.4.2 idle too long, closing\r\n").await?;
                return Ok(());
            }
        };
        let answer = match read {
            Line::Eof => return Ok(()),
            Line::TooLong => Reply::new(500, "5.5.2", "line too long"),
            Line::Full => {
                // smtp-proto wants the line ending; a bare last line gets one.
                if !line.ends_with(b"\n") {
                    line.extend_from_slice(b"\r\n");
                }
                match Request::parse(&mut line.iter()) {
                    Err(e) => parse_error(&e),
                    Ok(Request::Lhlo { .. }) => {
                        greeted = true;
                        tx = Transaction::default();
                        let capabilities = format!(
                            "250-{name}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {MAX_MESSAGE_SIZE}\r\n"
                        );
                        send(&mut write, capabilities.as_bytes()).await?;
                        continue;
                    }
                    Ok(Request::Ehlo { .. } | Request::Helo { .. }) => {
                        Reply::new(500, "5.5.1", "this is LMTP: say LHLO")
                    }
                    Ok(Request::Mail { from }) => {
                        if !greeted {
                            Reply::new(503, "5.5.1", "say LHLO first")
                        } else if tx.from.is_some() {
                            Reply::new(503, "5.5.1", "nested MAIL command")
                        } else if from.size > MAX_MESSAGE_SIZE {
                            Reply::new(552, "5.3.4", "message too big")
                        } else {
                            tx.from = Some(from.address.to_string());
                            Reply::new(250, "2.1.0", "sender ok")
                        }
                    }
                    Ok(Request::Rcpt { to }) => match &tx.from {
                        None => Reply::new(503, "5.5.1", "need MAIL before RCPT"),
                        Some(_) if tx.recipients.len() >= MAX_RECIPIENTS => {
                            Reply::new(452, "4.5.3", "too many recipients")
                        }
                        Some(from) => match ctx.check_recipient(from, &to.address) {
                            Ok(recipient) => {
                                tx.recipients.push(recipient);
                                Reply::new(250, "2.1.5", "recipient ok")
                            }
                            Err(reply) => reply,
                        },
                    },
                    Ok(Request::Data) => {
                        if tx.from.is_none() {
                            Reply::new(503, "5.5.1", "need MAIL before DATA")
                        } else if tx.recipients.is_empty() {
                            Reply::new(503, "5.5.1", "no valid recipients")
                        } else {
                            send(
                                &mut write,
                                b"354 start mail input; end with <CRLF>.<CRLF>\r\n",
                            )
                            .await?;
                            let transaction = std::mem::take(&mut tx);
                            if !data(&mut reader, &mut write, ctx, transaction).await? {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                    Ok(Request::Rset) => {
                        tx = Transaction::default();
                        Reply::new(250, "2.0.0", "reset")
                    }
                    Ok(Request::Noop { .. }) => Reply::new(250, "2.0.0", "ok"),
                    Ok(Request::Quit) => {
                        send(&mut write, b"221 2.0.0 bye\r\n").await?;
                        return Ok(());
                    }
                    Ok(Request::Vrfy { .. }) => {
                        Reply::new(252, "2.5.0", "cannot verify, but will try delivery")
                    }
                    Ok(other) => Reply::new(
                        502,
                        "5.5.1",
                        format!("{} is not implemented here", other.name()),
                    ),
                }
            }
        };
        send(&mut write, answer.line().as_bytes()).await?;
    }
}

/// The reply to a line smtp-proto could not parse.
fn parse_error(e: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => Reply::new(500, "5.5.2", "unknown command"),
        Error::InvalidSenderAddress => Reply::new(501, "5.1.7", "bad sender address"),
        Error::InvalidRecipientAddress => Reply::new(501, "5.1.3", "bad recipient address"),
        Error::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("syntax: {syntax}")),
        Error::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("invalid parameter {param}"))
        }
        Error::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("unsupported parameter {param}"))
        }
        _ => Reply::new(500, "5.5.2", "command not understood"),
    }
}

/// Reads the message after `354` and answers once per recipient. False when the connection
/// ended in the middle of the message (then nothing is delivered).
async fn data<R, W>(
    reader: &mut R,
    write: &mut W,
    ctx: &MailContext,
    tx: Transaction,
) -> std::io::Result<bool>
where
    R: AsyncBufReadExt + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut message: Vec<u8> = Vec::new();
    let mut too_big = false;
    let mut line = Vec::with_capacity(1024);
    loop {
        let read = tokio::time::timeout(IDLE_TIMEOUT, read_line(reader, &mut line, MAX_DATA_LINE))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle in DATA"))??;
        match read {
            Line::Eof => return Ok(false),
            Line::TooLong => too_big = true,
            Line::Full => {
                let content = line
                    .strip_suffix(b"\r\n")
                    .or_else(|| line.strip_suffix(b"\n"))
                    .unwrap_or(&line);
                if content == b"." {
                    break;
                }
                // Dot-unstuffing (RFC 5321 4.5.2).
                let unstuffed = content.strip_prefix(b".").unwrap_or(content);
                if message.len() + unstuffed.len() + 2 > MAX_MESSAGE_SIZE {
                    too_big = true;
                }
                if !too_big {
                    message.extend_from_slice(unstuffed);
                    message.extend_from_slice(b"\r\n");
                }
            }
        }
    }
    let from = tx.from.unwrap_or_default();
    if too_big {
        let reply = Reply::new(
            552,
            "5.3.4",
            format!(
                "message too big or a line too long (limits {MAX_MESSAGE_SIZE} bytes, {MAX_DATA_LINE} per line)"
            ),
        );
        for recipient in &tx.recipients {
            ctx.reject_message(&from, recipient, &reply, "too_big");
            send(&mut *write, reply.line().as_bytes()).await?;
        }
        return Ok(true);
    }
    let parsed = reply::parse(&message);
    for recipient in &tx.recipients {
        let answer = ctx.deliver(&from, recipient, parsed.as_ref()).await;
        send(&mut *write, answer.line().as_bytes()).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that never reads its replies: once its buffer is full, a reply is given up
    /// after WRITE_TIMEOUT (the clock is paused and jumps ahead), instead of holding the
    /// session for good. Every reply the session writes goes through `send`.
    #[tokio::test(start_paused = true)]
    async fn a_reply_to_a_client_that_never_reads_is_given_up() {
        let (mut server_end, _client_end) = tokio::io::duplex(64);
        let reply = vec![b'2'; 4096];
        let started = tokio::time::Instant::now();
        let err = send(&mut server_end, &reply)
            .await
            .expect_err("a write nobody reads cannot finish");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= WRITE_TIMEOUT);
        // And `refuse` returns too.
        let (server_end, _client_end) = tokio::io::duplex(8);
        refuse(server_end).await;
    }

    #[tokio::test]
    async fn a_reply_to_a_reading_client_is_written_whole() {
        let (mut server_end, mut client_end) = tokio::io::duplex(64);
        let reply = b"250 2.0.0 ok\r\n".repeat(100);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client_end, &mut got)
                .await
                .map(|_| got)
        });
        send(&mut server_end, &reply).await.expect("written");
        drop(server_end);
        assert_eq!(reader.await.expect("joined").expect("read"), reply);
    }
}
