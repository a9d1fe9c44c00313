//! A real HTTP/1.1 server that records the requests it receives: the tenant's endpoint in tests,
//! in `vmnd demo` and in benchmarks.
//!
//! It listens on `127.0.0.1:<ephemeral>`, keeps connections alive, and answers according to a
//! [`SinkMode`] that can be switched at any time (succeed, fail the first n, fail always, or
//! read the request and never answer). For benchmarks, [`HttpSink::set_record_bodies`]`(false)`
//! turns it into a counter: the handler then allocates nothing beyond what hyper itself does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct SinkRequest {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The request target's path, with its query if there was one.
    pub path: String,
    /// Header names in lower case (as hyper gives them), values as (lossy) text, in order.
    pub headers: Vec<(String, String)>,
    /// The raw body, byte for byte (signatures are computed over it).
    pub body: Bytes,
    /// When the request's head arrived.
    pub at: Instant,
    /// The status the sink answered, `None` in [`SinkMode::NeverAnswer`].
    pub status: Option<u16>,
}

impl SinkRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// `200 OK` to everything.
    Ok,
    /// Answer `status` for the first `n` requests (counted from when this mode was set), then 200.
    FailFirst {
        /// How many requests fail.
        n: usize,
        /// What they are answered.
        status: u16,
    },
    /// Accept the TCP connection, read the request, never answer (a hung endpoint).
    NeverAnswer,
    /// Answer this status to everything. Codes outside 200..=599 are answered as 500, because
    /// a 1xx as a final answer would break the connection rather than test anything.
    Status(u16),
    /// `200 OK` to everything, each after this long (a slow endpoint, or a request still in
    /// flight when the daemon stops).
    SlowOk(std::time::Duration),
}

/// What the mode mutex protects: the mode and how far into `FailFirst` we are.
#[derive(Debug)]
struct ModeState {
    mode: SinkMode,
    /// Requests already failed under the current `FailFirst`.
    failed: usize,
}

/// State shared by the accept loop, every connection task and every [`HttpSink`] clone.
struct Shared {
    mode: Mutex<ModeState>,
    /// When false, requests are counted but not kept (benchmarks with millions of requests).
    record: AtomicBool,
    requests: Mutex<Vec<SinkRequest>>,
    /// Requests answered 2xx.
    ok: AtomicUsize,
    /// Requests whose body was read, whatever the answer.
    received: AtomicUsize,
    /// TCP connections accepted: tells keep-alive from one-connection-per-request.
    connections: AtomicUsize,
    /// Tasks inside `wait_for`; the handler only pays for a notification when there are some.
    waiters: AtomicUsize,
    notify: Notify,
}

impl Shared {
    /// Decides the answer for the next request under the current mode, and how long to wait
    /// before giving it.
    fn decide(&self) -> (Option<u16>, Option<std::time::Duration>) {
        let mut state = lock(&self.mode);
        let delay = match state.mode {
            SinkMode::SlowOk(delay) => Some(delay),
            _ => None,
        };
        let code = match state.mode {
            SinkMode::Ok | SinkMode::SlowOk(_) => 200,
            SinkMode::Status(code) => code,
            SinkMode::NeverAnswer => return (None, None),
            SinkMode::FailFirst { n, status } => {
                if state.failed < n {
                    state.failed += 1;
                    status
                } else {
                    200
                }
            }
        };
        let code = if (200..=599).contains(&code) {
            code
        } else {
            500
        };
        (Some(code), delay)
    }
}

/// Locks `m`, carrying on if another thread panicked while holding it: the data is plain
/// counters and records, still fine to read, and a test sink should not cascade panics.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Owned by the [`HttpSink`] clones; stops the server when the last one is dropped.
struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A recording HTTP server on loopback. Clones share the same server.
#[derive(Clone)]
pub struct HttpSink {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("addr", &self.inner.addr)
            .field("mode", &lock(&self.inner.shared.mode).mode)
            .field("ok", &self.count())
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// Starts a keep-alive HTTP/1.1 server on `127.0.0.1:0`, answering according to `mode`.
    /// Must be called inside a tokio runtime; the server runs until [`HttpSink::shutdown`] or
    /// until the last clone is dropped.
    pub async fn start(mode: SinkMode) -> std::io::Result<HttpSink> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(ModeState { mode, failed: 0 }),
            record: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            ok: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            notify: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(HttpSink {
            inner: Arc::new(Handle { shared, addr, stop }),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:<port><path>`; a missing leading `/` is added.
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}{slash}{path}", self.inner.addr)
    }

    /// Switches how the sink answers from the next request on; restarts `FailFirst` counting.
    pub fn set_mode(&self, mode: SinkMode) {
        *lock(&self.inner.shared.mode) = ModeState { mode, failed: 0 };
    }

    /// Every recorded request, answered 2xx or not (and unanswered ones), in arrival order.
    /// Empty for the time recording was off.
    pub fn requests(&self) -> Vec<SinkRequest> {
        lock(&self.inner.shared.requests).clone()
    }

    /// Requests answered 2xx (counted whether or not recording is on).
    pub fn count(&self) -> usize {
        self.inner.shared.ok.load(Ordering::SeqCst)
    }

    /// Requests received, whatever they were answered.
    pub fn received(&self) -> usize {
        self.inner.shared.received.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.shared.connections.load(Ordering::SeqCst)
    }

    /// Whether to keep each request (head and body). Off, only the counters move: for
    /// benchmarks with millions of requests. On by default.
    pub fn set_record_bodies(&self, on: bool) {
        self.inner.shared.record.store(on, Ordering::SeqCst);
    }

    /// Waits until at least `n_ok` requests have been answered 2xx, or `timeout` passes.
    /// Returns whether the count was reached. Every such request is already in
    /// [`HttpSink::requests`] (when recording) by the time this returns true.
    pub async fn wait_for(&self, n_ok: usize, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        shared.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaiterGuard(shared);
        loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so an increment between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            if shared.ok.load(Ordering::SeqCst) >= n_ok {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return shared.ok.load(Ordering::SeqCst) >= n_ok;
            }
        }
    }

    /// Stops accepting and drops every open connection (a pending `NeverAnswer` request sees
    /// its connection close). Idempotent.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }
}

/// Decrements the waiter count even when `wait_for` is cancelled.
struct WaiterGuard<'a>(&'a Shared);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections until told to stop; each one is served on its own task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            // An error means every sender is gone: stop as well.
            changed = stop.changed() => if changed.is_err() { return },
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_connection(stream, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    // Typically EMFILE under a benchmark; pause instead of spinning on it.
                    tracing::debug!(error = %e, "http sink accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Serves one keep-alive connection until the client closes it or the sink stops.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // Answers are one small write; don't let Nagle delay them behind the client's ACK.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handle(shared.clone(), request));
    // No header-read timeout: it would arm a timer for every request (measurable at benchmark
    // rates) and close idle keep-alive connections a client expects to reuse; connections
    // end when the client closes them or the sink shuts down.
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        .keep_alive(true)
        // Answers to pipelined requests go out in one write, as a busy server's would.
        .pipeline_flush(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    // Clients hanging up mid-request are normal in tests; not worth more.
                    tracing::trace!(error = %e, "http sink connection ended");
                }
                return;
            }
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// Answers one request according to the mode, recording it first.
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let record = shared.record.load(Ordering::Relaxed);
    let (head, mut body) = request.into_parts();
    let bytes = if record {
        match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
        }
    } else {
        // Read and drop each chunk: counting mode keeps nothing.
        loop {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(_)) => return Ok(answer(StatusCode::BAD_REQUEST)),
                None => break,
            }
        }
        Bytes::new()
    };
    let (decided, delay) = shared.decide();
    shared.received.fetch_add(1, Ordering::SeqCst);
    if record {
        let entry = SinkRequest {
            method: head.method.as_str().to_owned(),
            path: head
                .uri
                .path_and_query()
                .map_or_else(|| head.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: head
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
            body: bytes,
            at,
            status: decided,
        };
        lock(&shared.requests).push(entry);
    }
    let Some(code) = decided else {
        // NeverAnswer: hold the request until the client gives up or the sink shuts down.
        return std::future::pending().await;
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    // `decide` keeps codes within 200..=599, which `from_u16` always accepts.
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_success() {
        // Recorded above before counting, so `wait_for` returning implies `requests()` has it.
        shared.ok.fetch_add(1, Ordering::SeqCst);
        if shared.waiters.load(Ordering::SeqCst) > 0 {
            shared.notify.notify_waiters();
        }
    }
    Ok(answer(status))
}

/// A response with a fixed short body: no allocation for the body itself.
fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let body: &'static [u8] = if status.is_success() {
        b"ok\n"
    } else {
        b"http sink: failing as configured\n"
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response
}
