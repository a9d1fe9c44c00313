//! HTTP/1.1 pipelining for webhooks that ask for it (`pipeline = N`, N > 1): up to N requests
//! written on one connection before their answers come back, in order.
//!
//! Why by hand: hyper's client sends one request per connection at a time and has no
//! pipelining. At webhook rates that is one `writev` and one `read` per event on each side;
//! in a profile of the ingest benchmark hyper's connection tasks and the system calls under
//! them were a quarter of the daemon's CPU. Here the requests that are ready when a
//! connection's writer wakes go out in one write, and the answers that have arrived are parsed
//! from one read (BENCHMARKS.md, seventh session). It is opt-in because pipelining needs a
//! receiver that keeps answering in order (hyper, nginx, node and Go servers do; some proxies
//! do not), and because one slow answer holds up the ones queued behind it on its connection.
//!
//! How it works:
//! - [`Pipeline`] keeps connections per origin (scheme, host, port), at most
//!   `ceil(concurrency / depth)` of them. A request goes to the least loaded one; a new one is
//!   opened while every connection has `depth` requests outstanding.
//! - Each connection is two tasks. The writer takes every request waiting in its channel,
//!   tells the reader what to expect (in order) and writes them in one go. The reader parses
//!   answers with `httparse` (status line and headers; bodies by `Content-Length`, chunked, or
//!   up to the close) and hands each to its caller.
//! - A broken connection fails every request on it that has no answer yet. One whose
//!   connection was reused and closed before any byte of its answer came (the server's idle
//!   timeout racing our write, or an earlier request timing out) is sent again once, on
//!   another connection; webhooks are at-least-once and carry `Vmnd-Event-Id` for this.
//! - A request whose answer does not arrive in its timeout fails; the connection is closed,
//!   since an answer cannot be skipped.
//!
//! Answers' bodies are read up to [`MAX_BODY_BYTES`]; a longer one is answered with its status
//! and the connection is closed rather than read to the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::{Method, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Largest answer head (status line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest answer body read to keep the connection; a longer one closes it.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Bytes of requests gathered into one write at most.
const MAX_WRITE_BYTES: usize = 256 * 1024;
/// How much of a failed answer's body is kept for the error shown to operators.
const SNIPPET_BYTES: usize = 200;

/// One answer, read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The start of the body, kept for answers that are not 2xx.
    pub snippet: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAnswer {
    /// Starts with `connect:`, `request:` or `timeout:`, like the pooled client's errors.
    pub error: String,
    /// Nothing of an answer came and the request may go again on a fresh connection.
    pub resend: bool,
}

/// Where connections go: TLS or not, host, port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

impl Origin {
    fn of(uri: &Uri) -> Result<Origin, String> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("invalid url: `{uri}` is not http or https")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("invalid url: `{uri}` has no host"))?;
        // An IPv6 literal comes bracketed ("[::1]"); connecting wants it bare.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Origin { tls, host, port })
    }
}

/// A request on its way to a connection's writer.
struct Queued {
    bytes: Bytes,
    /// A HEAD's answer has no body whatever its headers say.
    head: bool,
    deadline: Instant,
    reply: oneshot::Sender<Result<Answer, NoAnswer>>,
}

/// What the reader expects next, in the order the requests were written.
struct Expected {
    head: bool,
    deadline: Instant,
    reply: oneshot::Sender<Result<Answer, NoAnswer>>,
    /// Written on a connection that had already carried a request.
    reused: bool,
}

/// One connection as the pool sees it.
struct Connection {
    /// Which one, so a request resent does not go back to the connection it failed on.
    id: u64,
    queue: mpsc::UnboundedSender<Queued>,
    /// Requests sent to it and not answered yet.
    outstanding: Arc<AtomicUsize>,
}

/// Pipelined connections of one webhook (see the module header).
pub struct Pipeline {
    tls: Arc<rustls::ClientConfig>,
    depth: usize,
    max_connections: usize,
    idle_timeout: Duration,
    connections: Mutex<HashMap<Origin, Vec<Connection>>>,
    /// Connections opened so far: the next one's id.
    opened: AtomicU64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("depth", &self.depth)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Up to `depth` requests outstanding per connection, and enough connections for
    /// `concurrency` requests in flight. Idle connections close after `idle_timeout`.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        depth: usize,
        concurrency: usize,
        idle_timeout: Duration,
    ) -> Pipeline {
        let depth = depth.max(1);
        Pipeline {
            tls,
            depth,
            max_connections: concurrency.max(1).div_ceil(depth),
            idle_timeout,
            connections: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        }
    }

    /// Sends `bytes` (a whole HTTP/1.1 request to `uri`) and waits for its answer until
    /// `deadline`. Sent a second time, on another connection, when the first got no byte
    /// of an answer on a reused connection (see the module header).
    pub async fn exchange(
        &self,
        uri: &Uri,
        method: &Method,
        request: Bytes,
        deadline: Instant,
    ) -> Result<Answer, NoAnswer> {
        let origin = Origin::of(uri).map_err(|error| NoAnswer {
            error,
            resend: false,
        })?;
        let head = method == Method::HEAD;
        let mut failed_on = None;
        loop {
            let (reply, answer) = oneshot::channel();
            let (id, outstanding) = self.enqueue(
                &origin,
                Queued {
                    bytes: request.clone(),
                    head,
                    deadline,
                    reply,
                },
                failed_on,
            );
            let _outstanding = Outstanding(outstanding);
            let outcome = match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(NoAnswer {
                    error: "request: the connection ended without answering".into(),
                    resend: false,
                }),
                Err(_) => Err(NoAnswer {
                    error: "timeout: no answer in time".into(),
                    resend: false,
                }),
            };
            match outcome {
                Err(no) if no.resend && failed_on.is_none() && Instant::now() < deadline => {
                    tracing::debug!(error = %no.error, "resending on another connection");
                    failed_on = Some(id);
                }
                other => return other,
            }
        }
    }

    /// Hands `request` to a connection of `origin` (a new one when all are busy and there is
    /// room), never to connection `avoid` (the one it failed on), and returns the connection's
    /// id and count of outstanding requests.
    fn enqueue(
        &self,
        origin: &Origin,
        request: Queued,
        avoid: Option<u64>,
    ) -> (u64, Arc<AtomicUsize>) {
        let mut all = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A lookup first: `entry` would clone the origin (a String) for every request.
        match all.get_mut(origin) {
            Some(list) => self.enqueue_on(list, origin, request, avoid),
            None => {
                let list = all.entry(origin.clone()).or_default();
                self.enqueue_on(list, origin, request, avoid)
            }
        }
    }

    /// [`Pipeline::enqueue`] on the connections of `origin`.
    fn enqueue_on(
        &self,
        list: &mut Vec<Connection>,
        origin: &Origin,
        mut request: Queued,
        avoid: Option<u64>,
    ) -> (u64, Arc<AtomicUsize>) {
        list.retain(|c| !c.queue.is_closed() && Some(c.id) != avoid);
        loop {
            let least = list
                .iter()
                .map(|c| c.outstanding.load(Ordering::Relaxed))
                .enumerate()
                .min_by_key(|&(_, load)| load);
            let index = match least {
                Some((i, load)) if load < self.depth || list.len() >= self.max_connections => i,
                _ => {
                    list.push(self.open(origin.clone()));
                    list.len() - 1
                }
            };
            let connection = &list[index];
            connection.outstanding.fetch_add(1, Ordering::Relaxed);
            match connection.queue.send(request) {
                Ok(()) => return (connection.id, connection.outstanding.clone()),
                Err(mpsc::error::SendError(back)) => {
                    // Closed meanwhile (idle, or broken): drop it and pick again.
                    connection.outstanding.fetch_sub(1, Ordering::Relaxed);
                    request = back;
                    list.retain(|c| !c.queue.is_closed());
                }
            }
        }
    }

    /// Starts a connection's tasks; it connects when its first request arrives.
    fn open(&self, origin: Origin) -> Connection {
        let id = self.opened.fetch_add(1, Ordering::Relaxed);
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run_connection(
            origin,
            self.tls.clone(),
            requests,
            self.idle_timeout,
        ));
        Connection {
            id,
            queue,
            outstanding: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Counts a request out of its connection's outstanding ones when its caller is done.
struct Outstanding(Arc<AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn connect(
    origin: &Origin,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Stream>, String> {
    let tcp = tokio::net::TcpStream::connect((origin.host.as_str(), origin.port))
        .await
        .map_err(|e| format!("connect: {}:{}: {e}", origin.host, origin.port))?;
    // Small requests: do not let Nagle hold one back waiting for an ACK.
    let _ = tcp.set_nodelay(true);
    if !origin.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(origin.host.clone())
        .map_err(|e| format!("connect: {}: {e}", origin.host))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("connect: TLS with {}: {e}", origin.host))?;
    Ok(Box::new(stream))
}

/// A connection's writer: connects when the first request comes, then writes what is
/// queued, many requests per write, until the connection breaks or stays idle.
async fn run_connection(
    origin: Origin,
    tls: Arc<rustls::ClientConfig>,
    mut requests: mpsc::UnboundedReceiver<Queued>,
    idle_timeout: Duration,
) {
    let Some(first) = requests.recv().await else {
        return;
    };
    let connected = tokio::time::timeout_at(first.deadline, connect(&origin, tls)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return refuse_all(first, requests, &error),
        Err(_) => return refuse_all(first, requests, "timeout: connecting"),
    };
    let (reader, mut writer) = tokio::io::split(stream);
    let (expect, expected) = mpsc::unbounded_channel::<Expected>();
    // Written and not answered yet: none means the connection is idle.
    let unanswered = Arc::new(AtomicUsize::new(0));
    tokio::spawn(read_answers(reader, expected, unanswered.clone()));
    let mut next = Some(first);
    let mut written_before = false;
    let mut out = Vec::new();
    loop {
        let first = match next.take() {
            Some(q) => q,
            None => {
                let idle = unanswered.load(Ordering::Relaxed) == 0;
                let wait = if idle {
                    idle_timeout
                } else {
                    Duration::from_secs(3600)
                };
                tokio::select! {
                    q = requests.recv() => match q {
                        Some(q) => q,
                        None => break,
                    },
                    _ = tokio::time::sleep(wait) => {
                        if unanswered.load(Ordering::Relaxed) == 0 {
                            break;
                        }
                        continue;
                    }
                    // The reader gave up on the connection.
                    _ = expect.closed() => break,
                }
            }
        };
        out.clear();
        let mut gathered = first.bytes.len();
        let mut batch = vec![first];
        while gathered < MAX_WRITE_BYTES {
            match requests.try_recv() {
                Ok(q) => {
                    gathered += q.bytes.len();
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        let mut broken = false;
        // Past the last deadline in the batch nothing written now can be answered in time.
        let give_up_at = batch
            .iter()
            .map(|q| q.deadline)
            .max()
            .unwrap_or_else(Instant::now);
        for q in batch {
            out.extend_from_slice(&q.bytes);
            unanswered.fetch_add(1, Ordering::Relaxed);
            let expected = Expected {
                head: q.head,
                deadline: q.deadline,
                reply: q.reply,
                reused: written_before,
            };
            if let Err(mpsc::error::SendError(e)) = expect.send(expected) {
                let _ = e.reply.send(Err(NoAnswer {
                    error: "request: the connection closed".into(),
                    resend: true,
                }));
                broken = true;
            }
        }
        written_before = true;
        if broken {
            break;
        }
        // A server that stops reading (a hung application whose kernel still accepts the
        // connection) would hold this write forever, and with it `requests`: the connection
        // would look open, and every request sent to it would wait there for good. So the
        // write ends when the reader gives up (an answer timed out) or past the deadlines.
        let written = tokio::select! {
            // The write first: it usually completes at once, and then neither the timer (a
            // `Timeout` polls its future before its delay) nor `closed` is ever registered.
            biased;
            written = tokio::time::timeout_at(give_up_at, writer.write_all(&out)) => written,
            _ = expect.closed() => {
                tracing::debug!(host = %origin.host, "pipelined write abandoned: the reader gave up");
                break;
            }
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The reader sees the same break and fails what it expects.
                tracing::debug!(host = %origin.host, error = %e, "pipelined write failed");
                break;
            }
            Err(_) => {
                tracing::debug!(host = %origin.host, "pipelined write stalled past every deadline");
                break;
            }
        }
    }
    // No more writes: what is still queued goes to another connection.
    requests.close();
    while let Ok(q) = requests.try_recv() {
        let _ = q.reply.send(Err(NoAnswer {
            error: "request: the connection closed before it was sent".into(),
            resend: true,
        }));
    }
    // Bounded for the same reason: over TLS the shutdown writes a close_notify.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

/// Fails `first` and everything queued behind it (the connection never opened, so another
/// would not do better now: no resend).
fn refuse_all(first: Queued, mut requests: mpsc::UnboundedReceiver<Queued>, error: &str) {
    requests.close();
    let mut next = Some(first);
    while let Some(q) = next.take().or_else(|| requests.try_recv().ok()) {
        let _ = q.reply.send(Err(NoAnswer {
            error: error.to_string(),
            resend: false,
        }));
    }
}

/// A connection's reader: answers each expected request in order, until the connection
/// breaks, a request times out, or the server says it closes.
async fn read_answers(
    mut reader: tokio::io::ReadHalf<Box<dyn Stream>>,
    mut expected: mpsc::UnboundedReceiver<Expected>,
    unanswered: Arc<AtomicUsize>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let failure = loop {
        let next = tokio::select! {
            // In this order: the writer announces a request before writing it, so once its
            // answer can be read the announcement is here. Polled the other way round (or at
            // random, select!'s default) an answer could be taken for bytes nobody asked for.
            biased;
            next = expected.recv() => next,
            // Idle: bytes now are a protocol error, nothing is the server closing.
            read = reader.read_buf(&mut buf), if buf.is_empty() => {
                match read {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => break Some("request: bytes came with no request outstanding".to_string()),
                }
            }
        };
        let Some(next) = next else {
            break None;
        };
        let read =
            tokio::time::timeout_at(next.deadline, read_answer(&mut reader, &mut buf, next.head))
                .await;
        unanswered.fetch_sub(1, Ordering::Relaxed);
        match read {
            Ok(Ok((answer, keep))) => {
                // Bytes after this answer while no request is announced answer nothing: the
                // writer announces a request before writing it, so a real answer never comes
                // before its announcement. Left in the buffer, they would be read as the next
                // request's answer, and a stray 2xx would mark an undelivered event delivered.
                // Decided before this caller is woken, so its next request cannot race it.
                let stray = !buf.is_empty() && expected.is_empty();
                let _ = next.reply.send(Ok(answer));
                if stray {
                    break Some("request: bytes came with no request outstanding".to_string());
                }
                if !keep {
                    break None;
                }
            }
            Ok(Err(e)) => {
                let resend = next.reused && !e.answer_started;
                let _ = next.reply.send(Err(NoAnswer {
                    error: e.error.clone(),
                    resend,
                }));
                break Some(e.error);
            }
            Err(_) => {
                let _ = next.reply.send(Err(NoAnswer {
                    error: "timeout: no answer in time".into(),
                    resend: false,
                }));
                break Some("an earlier request on the connection timed out".to_string());
            }
        }
    };
    // Whatever else was written here gets no answer on this connection.
    expected.close();
    let why = failure.unwrap_or_else(|| "the connection closed".to_string());
    while let Ok(e) = expected.try_recv() {
        unanswered.fetch_sub(1, Ordering::Relaxed);
        let _ = e.reply.send(Err(NoAnswer {
            error: format!("request: no answer: {why}"),
            resend: true,
        }));
    }
}

/// A read that ended the connection.
#[derive(Debug)]
struct ReadError {
    error: String,
    /// Some of this request's answer had arrived.
    answer_started: bool,
}

impl ReadError {
    fn new(error: impl Into<String>, answer_started: bool) -> ReadError {
        ReadError {
            error: error.into(),
            answer_started,
        }
    }
}

/// Reads more into `buf`; an error when the connection ends.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    started: bool,
) -> Result<(), ReadError> {
    match reader.read_buf(buf).await {
        Ok(0) => Err(ReadError::new(
            if started {
                "request: the connection closed in the middle of an answer"
            } else {
                "request: the connection closed before an answer"
            },
            started,
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(ReadError::new(format!("request: {e}"), started)),
    }
}

/// How an answer's body is framed.
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads one whole answer from `reader` (after what `buf` already holds). Returns it and
/// whether the connection can carry the next one.
async fn read_answer<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<(Answer, bool), ReadError> {
    let (status, framing, mut keep) = loop {
        let parsed = parse_head(buf, head_request)?;
        match parsed {
            Some((used, head)) => {
                buf.advance(used);
                match head {
                    // 1xx (not 101): informational, the real answer follows.
                    None => continue,
                    Some(head) => break head,
                }
            }
            None => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(ReadError::new(
                        "request: answer head larger than 64 KiB",
                        true,
                    ));
                }
                let started = !buf.is_empty();
                fill(reader, buf, started).await?;
            }
        }
    };
    let mut body = Body::new(status);
    match framing {
        Framing::Length(n) => {
            if n > MAX_BODY_BYTES as u64 {
                keep = false;
            } else {
                let n = n as usize;
                while buf.len() < n {
                    fill(reader, buf, true).await?;
                }
                body.take(&buf.split_to(n));
            }
        }
        Framing::Chunked => loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) if buf.len() < 1024 => {
                        fill(reader, buf, true).await?
                    }
                    _ => return Err(ReadError::new("request: bad chunk in answer", true)),
                }
            };
            buf.advance(used);
            if size == 0 {
                // Trailers, if any, then the empty line.
                loop {
                    match buf.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            let line = buf.split_to(end + 1);
                            if line.as_ref() == b"\r\n" || line.as_ref() == b"\n" {
                                break;
                            }
                        }
                        None if buf.len() < MAX_HEAD_BYTES => fill(reader, buf, true).await?,
                        None => {
                            return Err(ReadError::new("request: answer trailers too large", true));
                        }
                    }
                }
                break;
            }
            if body.read.saturating_add(size) > MAX_BODY_BYTES as u64 {
                keep = false;
                break;
            }
            let size = size as usize;
            while buf.len() < size + 2 {
                fill(reader, buf, true).await?;
            }
            body.take(&buf.split_to(size));
            if &buf[..2] != b"\r\n" {
                return Err(ReadError::new("request: bad chunk in answer", true));
            }
            buf.advance(2);
        },
        Framing::UntilClose => {
            keep = false;
            loop {
                body.take(&buf.split());
                if body.read > MAX_BODY_BYTES as u64 {
                    break;
                }
                match reader.read_buf(buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
    Ok((
        Answer {
            status,
            snippet: body.snippet,
        },
        keep,
    ))
}

/// The answer's head: status, framing, and whether the connection stays open.
type Head = (u16, Framing, bool);

/// Parses the answer head at the start of `buf`: `None` when more bytes are needed,
/// `Some((bytes used, None))` for an informational 1xx to skip.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(usize, Option<Head>)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(ReadError::new(
                format!("request: malformed answer: {e}"),
                true,
            ));
        }
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Some((used, None)));
    }
    if status == 101 {
        return Err(ReadError::new(
            "request: the server switched protocols",
            true,
        ));
    }
    let mut keep = response.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<u64>().map_err(|_| {
                ReadError::new(format!("request: bad Content-Length {value:?}"), true)
            })?;
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::new("request: conflicting Content-Length", true));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep = true;
                }
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(Some((used, Some((status, framing, keep)))))
}

/// An answer's body as it is read: how much, and the start of it for a failure's error.
struct Body {
    keep_snippet: bool,
    snippet: Vec<u8>,
    read: u64,
}

impl Body {
    fn new(status: u16) -> Body {
        Body {
            keep_snippet: !(200..300).contains(&status),
            snippet: Vec::new(),
            read: 0,
        }
    }

    fn take(&mut self, data: &[u8]) {
        self.read += data.len() as u64;
        if self.keep_snippet && self.snippet.len() < SNIPPET_BYTES {
            let n = data.len().min(SNIPPET_BYTES - self.snippet.len());
            self.snippet.extend_from_slice(&data[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `raw` as answers to `n` requests, fed in pieces of `step` bytes.
    async fn answers(raw: &[u8], n: usize, step: usize) -> Vec<Result<(Answer, bool), String>> {
        let (mut server, mut client) = tokio::io::duplex(64);
        let raw = raw.to_vec();
        tokio::spawn(async move {
            for piece in raw.chunks(step) {
                if server.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for _ in 0..n {
            let r = read_answer(&mut client, &mut buf, false).await;
            let stop = r.is_err();
            out.push(r.map_err(|e| e.error));
            if stop {
                break;
            }
        }
        out
    }

    fn ok(status: u16, keep: bool) -> Result<(Answer, bool), String> {
        Ok((
            Answer {
                status,
                snippet: Vec::new(),
            },
            keep,
        ))
    }

    #[tokio::test]
    async fn answers_in_a_row_with_every_framing_and_any_split() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10;x=y\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n\
HTTP/1.1 204 \r\n\r\n\
HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n!";
        for step in [1, 2, 7, 64, raw.len()] {
            let got = answers(raw, 5, step).await;
            assert_eq!(
                got,
                vec![
                    ok(200, true),
                    ok(200, true),
                    ok(200, true),
                    ok(204, true),
                    ok(200, false)
                ],
                "split every {step} bytes"
            );
        }
    }

    #[tokio::test]
    async fn a_failure_keeps_the_start_of_its_body_and_a_body_until_close_ends_the_connection() {
        let raw = b"HTTP/1.1 503 Busy\r\nContent-Length: 5\r\n\r\nlater\
HTTP/1.0 500 Oops\r\n\r\nsomething broke";
        let got = answers(raw, 2, 5).await;
        assert_eq!(
            got[0],
            Ok((
                Answer {
                    status: 503,
                    snippet: b"later".to_vec()
                },
                true
            ))
        );
        assert_eq!(
            got[1],
            Ok((
                Answer {
                    status: 500,
                    snippet: b"something broke".to_vec()
                },
                false
            ))
        );
    }

    #[tokio::test]
    async fn bad_answers_are_errors_not_panics() {
        let cases: [(&[u8], &str); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
                "bad chunk",
            ),
            (b"SMTP/1.1 200 OK\r\n\r\n", "malformed answer"),
            (b"HTTP/1.1 101 Switching\r\n\r\n", "switched protocols"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                "closed in the middle",
            ),
        ];
        for (raw, want) in cases {
            let got = answers(raw, 1, 3).await;
            let err = got[0].clone().unwrap_err();
            assert!(err.contains(want), "{raw:?}: {err}");
        }
        let got = answers(b"", 1, 1).await;
        assert!(
            got[0]
                .clone()
                .unwrap_err()
                .contains("closed before an answer")
        );
        let huge_head = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 70_000]].concat();
        let got = answers(&huge_head, 1, 4096).await;
        assert!(got[0].clone().unwrap_err().contains("larger than 64 KiB"));
    }

    #[tokio::test]
    async fn an_answer_that_is_there_with_its_announcement_is_taken_as_the_answer() {
        // Both of the reader's waits are ready at its first look; a coin flip between them
        // took the answer for stray bytes half of the time.
        for _ in 0..64 {
            let (mut server, client) = tokio::io::duplex(1024);
            let stream: Box<dyn Stream> = Box::new(client);
            let (reader, _writer) = tokio::io::split(stream);
            let (expect, expected) = mpsc::unbounded_channel();
            let (reply, answer) = oneshot::channel();
            expect
                .send(Expected {
                    head: false,
                    deadline: Instant::now() + Duration::from_secs(5),
                    reply,
                    reused: false,
                })
                .unwrap();
            server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            tokio::spawn(read_answers(
                reader,
                expected,
                Arc::new(AtomicUsize::new(1)),
            ));
            assert_eq!(answer.await.unwrap(), Ok(ok_answer()));
            drop(expect);
        }
    }

    fn ok_answer() -> Answer {
        Answer {
            status: 200,
            snippet: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_read_and_closes_the_connection() {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let got = answers(raw.as_bytes(), 1, 64).await;
        assert_eq!(got, vec![ok(200, false)]);
    }
}
