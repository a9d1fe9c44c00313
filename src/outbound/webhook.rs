//! The HTTP side of webhook delivery: signing, one POST attempt, and the backoff between attempts.
//!
//! The contract (see `DESIGN.md`, "Webhook request"): a JSON body POSTed with
//! `Vmnd-Event-Id: <id>` and `Vmnd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<raw body>")>`. Any 2xx is success; any other status, or no answer, is retried. Each
//! attempt is signed afresh, so the timestamp lets a tenant refuse replays.
//!
//! This module makes exactly one attempt per [`WebhookClient::send`] call and reports what
//! happened as an [`Attempt`]; deciding when to try again ([`backoff`]) and when to give up
//! (`retry_for`) is the durable queue's job. What the request looks like for a webhook's
//! `method`, `format` and `fields` is [`super::webhook_format`]'s.
//!
//! https goes through rustls (ring) with the public web roots, plus the PEM certificates of a
//! webhook's `ca_file` when it names a private CA.

use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::{Method, Request, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::Sha256;

use super::pipeline::Pipeline;
use crate::config::WebhookAuth;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the message's stable id, so receivers can de-duplicate retries.
pub const EVENT_ID_HEADER: &str = "vmnd-event-id";
/// Header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "vmnd-signature";
/// `User-Agent` of every request, so tenants can tell vmnd apart in their logs.
pub const USER_AGENT: &str = concat!("vmnd/", env!("CARGO_PKG_VERSION"));
/// A reasonable clock-skew allowance for [`verify_signature`] (what we document for tenants).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// First retry delay ceiling for [`backoff`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay ceiling for [`backoff`]: a long-dead endpoint is still tried every 10 min.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// How much of a response body we read before giving up on reusing the connection.
/// Receivers should answer with a short body; reading a bounded amount keeps a misbehaving one
/// from costing us memory or time, while the common small answer leaves the connection pooled.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
/// How much of a failed answer's body goes into the error text shown to operators.
const ERROR_SNIPPET_BYTES: usize = 200;
/// Idle pooled connections are closed after this. Many servers close idle keep-alive
/// connections on their side after 5-75 s; staying under the common values limits the race
/// where we write a request onto a connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pipelined connections close sooner: node's servers close theirs after 5 s, and a
/// request written as the server closes is sent again (see [`super::pipeline`]), which the
/// pooled client's own retry would otherwise spare.
const PIPELINE_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A MAC keyed with `secret` that has absorbed `"<t>.<body>"`, `t` in decimal.
fn signed_payload_mac(secret: &str, t: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = keyed_mac(secret);
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// A MAC keyed with `secret`, before any message. Keying hashes the key's inner and outer pads
/// (two SHA-256 blocks); a thread keeps the last one it made and clones it while the secret is
/// the same, which it is for every request to one webhook.
fn keyed_mac(secret: &str) -> HmacSha256 {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(String, HmacSha256)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((kept, mac)) = last.as_ref() {
            if kept == secret {
                return mac.clone();
            }
        }
        // HMAC accepts keys of any length (long ones are hashed), so this cannot fail.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        *last = Some((secret.to_string(), mac.clone()));
        mac
    })
}

/// Signature header value for `body` signed at unix time `t`: `t=<t>,v1=<lowercase hex>`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    // The timestamp's digits, once for the MAC and the header both.
    let t = t.to_string();
    let tag = signed_payload_mac(secret, &t, body).finalize().into_bytes();
    // Written into one buffer: `format!` with `hex::encode` (a String built char by char)
    // was half of the signature's cost, once per request.
    let mut hex = [0u8; 64];
    let mut out = String::with_capacity(4 + 20 + 4 + hex.len());
    out.push_str("t=");
    out.push_str(&t);
    out.push_str(",v1=");
    match hex::encode_to_slice(tag, &mut hex) {
        // Hex digits are ASCII.
        Ok(()) => out.extend(hex.iter().map(|&b| char::from(b))),
        Err(_) => out.push_str(&hex::encode(tag)),
    }
    out
}

/// Verifies a `Vmnd-Signature` header value against the raw `body`.
///
/// Valid when the header has exactly one `t=`, that time is within `tolerance_secs` of `now`
/// (either side, for clock skew), and at least one `v1=` tag matches. Several `v1=` values are
/// accepted so a secret can be rotated by signing with both for a while; unknown keys are
/// ignored so a future `v2=` does not break old verifiers. The tag comparison is constant-time.
/// Any malformed input is simply `false`.
///
/// Tenants: verify the raw bytes you received, before parsing the JSON.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> bool {
    let mut t = None;
    for part in header.split(',') {
        if let Some(("t", value)) = part.trim().split_once('=') {
            if t.is_some() {
                // Two timestamps: ambiguous which one was signed, so refuse.
                return false;
            }
            match value.trim().parse::<u64>() {
                Ok(v) => t = Some(v),
                Err(_) => return false,
            }
        }
    }
    let Some(t) = t else { return false };
    if now.abs_diff(t) > tolerance_secs {
        return false;
    }
    // Its canonical digits, as the signer wrote them (a header's "t=007" was signed as "7").
    let mac = signed_payload_mac(secret, &t.to_string(), body);
    let mut valid = false;
    for part in header.split(',') {
        if let Some(("v1", value)) = part.trim().split_once('=') {
            let mut tag = [0u8; 32];
            if hex::decode_to_slice(value.trim(), &mut tag).is_ok() {
                // `verify_slice` compares in constant time; keep checking the remaining tags
                // anyway so timing does not say which one matched.
                valid |= mac.clone().verify_slice(&tag).is_ok();
            }
        }
    }
    valid
}

/// The current unix time in seconds (0 if the clock is before 1970, which only a broken host has).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The endpoint answered 2xx.
    Delivered {
        /// The 2xx status it answered.
        status: u16,
        /// From the start of the attempt until the answer's status arrived and its body was read.
        latency: Duration,
    },
    /// Anything else: the queue retries it later.
    Failed {
        /// The status the endpoint answered, or `None` when there was no answer at all
        /// (bad URL, connection refused, reset, timeout).
        status: Option<u16>,
        /// Time spent on the attempt.
        latency: Duration,
        /// A readable reason for operators, starting with a stable word: `invalid url:`,
        /// `invalid request:`, `connect:`, `request:`, `timeout:` or `http <status>`.
        error: String,
    },
}

impl Attempt {
    /// Whether the endpoint accepted the event.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Attempt::Delivered { .. })
    }

    /// The HTTP status answered, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Attempt::Delivered { status, .. } => Some(*status),
            Attempt::Failed { status, .. } => *status,
        }
    }

    /// How long the attempt took.
    pub fn latency(&self) -> Duration {
        match self {
            Attempt::Delivered { latency, .. } | Attempt::Failed { latency, .. } => *latency,
        }
    }
}

/// A failed attempt before its latency is known: (status if any, readable error).
type Failure = (Option<u16>, String);

/// One request for one event, before its signature and time are added.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    /// `Content-Type` of a POST's body; `None` for a GET.
    pub content_type: Option<&'static str>,
    pub body: Bytes,
    /// What `Vmnd-Signature` covers: the raw body of a POST, the query string of a GET (the
    /// part after `?`, exactly as sent).
    pub signed: Bytes,
}

impl Outgoing {
    /// The contract's request: `body` POSTed as `application/json`.
    pub fn json(uri: Uri, body: Bytes) -> Outgoing {
        Outgoing {
            method: Method::POST,
            uri,
            content_type: Some("application/json"),
            signed: body.clone(),
            body,
        }
    }
}

/// What a webhook adds to every request besides the event itself.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions<'a> {
    /// `Vmnd-Event-Id`: the message's stable id, for de-duplication.
    pub event_id: &'a str,
    /// Signs the request when present.
    pub secret: Option<&'a str>,
    pub auth: Option<&'a WebhookAuth>,
    /// Extra headers (checked when the config was read).
    pub headers: &'a [(String, String)],
    /// Everything up to the answer's status must happen within this.
    pub timeout: Duration,
}

/// A keep-alive pooled HTTP/1.1 client (http and https).
///
/// Cloning is cheap and clones share one connection pool: consecutive events to the same
/// endpoint reuse a warm connection instead of paying a TCP (and TLS) handshake each. A
/// client made by [`WebhookClient::pipelined`] sends through its own pipelined connections
/// instead (see [`super::pipeline`]).
#[derive(Clone)]
pub struct WebhookClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    tls: std::sync::Arc<rustls::ClientConfig>,
    pipeline: Option<std::sync::Arc<Pipeline>>,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

impl Default for WebhookClient {
    fn default() -> Self {
        Self::new()
    }
}

impl WebhookClient {
    /// A client trusting the public web roots. Does not need a runtime until the first request.
    pub fn new() -> Self {
        // rustls refuses its defaults only for a crypto provider without cipher suites; ring's
        // default provider has them, so this cannot fail.
        Self::with_extra_roots(&[]).expect("rustls accepts ring's default provider")
    }

    /// A client trusting the public web roots and the PEM certificates in `ca_file` (a
    /// webhook's private CA). Errors say why the file cannot be used.
    pub fn with_ca_file(ca_file: &std::path::Path) -> Result<Self, String> {
        let certs = crate::config::read_pem_certificates(ca_file)?;
        Self::with_extra_roots(&certs)
    }

    fn with_extra_roots(
        extra: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra {
            roots
                .add(cert.clone())
                .map_err(|e| format!("certificate refused: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(Self::tcp());
        Ok(Self::pooled(connector, std::sync::Arc::new(tls)))
    }

    /// A client with the same trust that pipelines up to `depth` requests per connection,
    /// on as many connections as `concurrency` requests in flight need (a webhook's
    /// `pipeline`). `depth` 1 is this client unchanged.
    pub fn pipelined(&self, depth: usize, concurrency: usize) -> WebhookClient {
        if depth <= 1 {
            return self.clone();
        }
        WebhookClient {
            pipeline: Some(std::sync::Arc::new(Pipeline::new(
                self.tls.clone(),
                depth,
                concurrency,
                PIPELINE_IDLE_TIMEOUT,
            ))),
            ..self.clone()
        }
    }

    fn tcp() -> HttpConnector {
        let mut connector = HttpConnector::new();
        // Small requests: do not let Nagle hold the body back waiting for an ACK.
        connector.set_nodelay(true);
        // The https connector does the scheme check.
        connector.enforce_http(false);
        connector
    }

    fn pooled(
        connector: HttpsConnector<HttpConnector>,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Self {
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        WebhookClient {
            http,
            tls,
            pipeline: None,
        }
    }

    /// Makes one POST of `body` (`application/json`) to `url`: the contract's request with
    /// nothing configured beyond a secret. See [`WebhookClient::send`].
    pub async fn post(
        &self,
        url: &Uri,
        event_id: &str,
        secret: Option<&str>,
        body: Bytes,
        timeout: Duration,
    ) -> Attempt {
        let request = Outgoing::json(url.clone(), body);
        let options = SendOptions {
            event_id,
            secret,
            auth: None,
            headers: &[],
            timeout,
        };
        self.send(&request, &options).await
    }

    /// Makes one request.
    ///
    /// Sends `Vmnd-Event-Id`, `Vmnd-Signature` signed now when there is a secret,
    /// `Authorization` when there is auth, the extra headers, and `User-Agent:
    /// vmnd/<version>`. Everything up to the answer's status must happen within the timeout;
    /// the response body is then read (up to 64 KiB) within what is left of it, so the
    /// connection can go back to the pool. Redirects are not followed: a 3xx is a failure the
    /// tenant should fix in the config.
    ///
    /// Never panics on bad input: a URL without scheme or host, or an event id that is not a
    /// valid header value, come back as [`Attempt::Failed`].
    pub async fn send(&self, request: &Outgoing, options: &SendOptions<'_>) -> Attempt {
        let started = Instant::now();
        let outcome = match &self.pipeline {
            None => match build_request(request, options) {
                Ok(built) => self.exchange(built, started, options.timeout).await,
                Err(error) => Err((None, error)),
            },
            Some(pipeline) => match request_bytes(request, options) {
                Ok(bytes) => {
                    let deadline = tokio::time::Instant::from_std(started) + options.timeout;
                    match pipeline
                        .exchange(&request.uri, &request.method, bytes, deadline)
                        .await
                    {
                        Ok(answer) => judge(answer.status, readable_line(&answer.snippet)),
                        Err(no) => Err((None, no.error)),
                    }
                }
                Err(error) => Err((None, error)),
            },
        };
        let latency = started.elapsed();
        match outcome {
            Ok(status) => Attempt::Delivered { status, latency },
            Err((status, error)) => {
                tracing::debug!(event_id = options.event_id, ?status, %error, "webhook attempt failed");
                Attempt::Failed {
                    status,
                    latency,
                    error,
                }
            }
        }
    }

    /// Sends `request` and reads the answer, all before `started + timeout`.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        started: Instant,
        timeout: Duration,
    ) -> Result<u16, Failure> {
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        let response = match tokio::time::timeout_at(deadline, self.http.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err((None, describe_client_error(&e))),
            Err(_) => {
                return Err((None, format!("timeout: no answer within {timeout:?}")));
            }
        };
        let status = response.status();
        // Once a 2xx status has arrived the event is delivered, whatever happens to the body:
        // failing it now would only make the tenant see a duplicate.
        let snippet = drain(response.into_body(), deadline, !status.is_success()).await;
        judge(status.as_u16(), snippet)
    }
}

/// A 2xx is delivered; anything else is `http <status> <reason>: <start of the body>`.
fn judge(status: u16, snippet: String) -> Result<u16, Failure> {
    if (200..300).contains(&status) {
        return Ok(status);
    }
    let mut error = format!("http {status}");
    if let Some(reason) = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        error.push(' ');
        error.push_str(reason);
    }
    if !snippet.is_empty() {
        error.push_str(": ");
        error.push_str(&snippet);
    }
    Err((Some(status), error))
}

/// Checks that `url` can be requested: http or https, with a host.
fn check_url(url: &Uri) -> Result<(), String> {
    match url.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(format!(
                "invalid url: `{url}`: scheme `{other}` is not http or https"
            ));
        }
        None => {
            return Err(format!(
                "invalid url: `{url}` has no scheme (expected http[s]://host[:port]/path)"
            ));
        }
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(format!("invalid url: `{url}` has no host"));
    }
    Ok(())
}

/// Every header of the request but `Host` and `Content-Length`, in the order they are sent,
/// each handed to `put` as name and value once it is checked as valid HTTP. The one list both
/// senders use: [`build_request`] for hyper's pool, [`request_bytes`] for a pipelined
/// connection. Names and values are passed as text, so the pipelined path copies each once,
/// into the request (building a `HeaderName` and `HeaderValue` for each was about 1.5% of
/// the daemon's CPU with pipelining).
fn each_header(
    request: &Outgoing,
    options: &SendOptions<'_>,
    mut put: impl FnMut(&str, &str),
) -> Result<(), String> {
    // Our own names, the User-Agent and the signature need no check; every value that can
    // come from a caller (the event id, the content type, credentials, extra headers) is
    // checked.
    put(header::USER_AGENT.as_str(), USER_AGENT);
    put(
        EVENT_ID_HEADER,
        checked_value(EVENT_ID_HEADER, options.event_id)?,
    );
    if let Some(content_type) = request.content_type {
        put(
            header::CONTENT_TYPE.as_str(),
            checked_value("content type", content_type)?,
        );
    }
    if let Some(secret) = options.secret {
        // Signed at send time, not enqueue time: each retry carries a fresh timestamp so the
        // tenant's replay window does not reject our own late retries.
        put(
            SIGNATURE_HEADER,
            &signature(secret, unix_now(), &request.signed),
        );
    }
    let authorization = header::AUTHORIZATION.as_str();
    match options.auth {
        None => {}
        Some(WebhookAuth::Bearer(token)) => {
            let value = format!("Bearer {token}");
            put(authorization, checked_value(authorization, &value)?);
        }
        Some(WebhookAuth::Basic { username, password }) => {
            use base64::Engine as _;
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            let value = format!("Basic {pair}");
            put(authorization, checked_value(authorization, &value)?);
        }
    }
    for (name, value) in options.headers {
        // Lower-cased, as hyper sends it.
        let checked = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("invalid request: header name {name:?}: {e}"))?;
        put(checked.as_str(), checked_value(name, value)?);
    }
    Ok(())
}

/// `value` when it may be a header value (what `HeaderValue::from_str` accepts: visible
/// ASCII, spaces, tabs and bytes past ASCII; no other control byte), else why not.
fn checked_value<'v>(what: &str, value: &'v str) -> Result<&'v str, String> {
    let allowed = |b: u8| (b >= 0x20 && b != 0x7f) || b == b'\t';
    if value.bytes().all(allowed) {
        Ok(value)
    } else {
        Err(format!(
            "invalid request: header {what}: a control character in the value"
        ))
    }
}

/// The whole HTTP/1.1 request as it goes on the wire, for a pipelined connection. The same
/// headers as [`build_request`]'s, plus `Host` and, when there is a body, `Content-Length`
/// (what hyper adds).
fn request_bytes(request: &Outgoing, options: &SendOptions<'_>) -> Result<Bytes, String> {
    let url = &request.uri;
    check_url(url)?;
    let mut out = Vec::with_capacity(320 + request.body.len());
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(url.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(url.host().unwrap_or_default().as_bytes());
    if let Some(port) = url.port() {
        out.push(b':');
        out.extend_from_slice(port.as_str().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    each_header(request, options, |name, value| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    })?;
    if !request.body.is_empty() || request.method != Method::GET {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(request.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&request.body);
    Ok(Bytes::from(out))
}

/// Builds the signed request, or says in words why it cannot be sent.
fn build_request(
    request: &Outgoing,
    options: &SendOptions<'_>,
) -> Result<Request<Full<Bytes>>, String> {
    check_url(&request.uri)?;
    let mut builder = Request::builder()
        .method(request.method.clone())
        .uri(request.uri.clone());
    each_header(request, options, |name, value| {
        builder = std::mem::take(&mut builder).header(name, value);
    })?;
    builder
        .body(Full::new(request.body.clone()))
        .map_err(|e| format!("invalid request: {e}"))
}

/// Reads and discards up to [`MAX_DRAIN_BYTES`] of `body` before `deadline`, so a fully read
/// response leaves its connection reusable. Returns the start of the body as cleaned-up text
/// when `keep_snippet` (for error messages), else an empty string.
async fn drain(mut body: Incoming, deadline: tokio::time::Instant, keep_snippet: bool) -> String {
    let mut read = 0usize;
    let mut head = Vec::new();
    while read <= MAX_DRAIN_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read += data.len();
                    if keep_snippet && head.len() < ERROR_SNIPPET_BYTES {
                        let take = data.len().min(ERROR_SNIPPET_BYTES - head.len());
                        head.extend_from_slice(&data[..take]);
                    }
                }
            }
            // End of body, a broken body, or out of time: the pool will not reuse a
            // connection whose body was not read to the end, which is what we want then.
            Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    readable_line(&head)
}

/// The start of an answer's body as one readable line ("" for none). Endpoints answer anything
/// (HTML error pages, binary).
fn readable_line(head: &[u8]) -> String {
    if head.is_empty() {
        return String::new();
    }
    let text = String::from_utf8_lossy(head);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Turns a hyper-util client error into one readable line, e.g.
/// `connect: tcp connect error: Connection refused (os error 111)`.
fn describe_client_error(err: &hyper_util::client::legacy::Error) -> String {
    let prefix = if err.is_connect() {
        "connect"
    } else {
        "request"
    };
    // The top-level Display is only "client error (Kind)"; the useful words are in the sources.
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    if parts.is_empty() {
        parts.push(err.to_string());
    }
    format!("{prefix}: {}", parts.join(": "))
}

/// The upper bound of [`backoff`] for `attempt`: `base * 2^(attempt-1)`, capped at `max`.
///
/// Attempt numbers start at 1 (the first retry); 0 is treated as 1. Saturates instead of
/// overflowing, so any attempt number is safe.
pub fn backoff_ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.max(1) - 1);
    base.saturating_mul(factor).min(max)
}

/// Delay before retry number `attempt`: exponential backoff with full jitter, uniformly
/// random in `[0, backoff_ceiling(attempt, base, max)]`.
///
/// With the defaults ([`DEFAULT_BACKOFF_BASE`], [`DEFAULT_BACKOFF_MAX`]) the ceiling is ~1 s
/// for attempt 1, doubling to 10 min from attempt 11 on. Full jitter spreads the retries of
/// many queued events after an endpoint outage, so they do not all arrive at once when it
/// comes back.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = backoff_ceiling(attempt, base, max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec-test";
    const BODY: &[u8] = br#"{"event":"message","id":"m1"}"#;

    /// The pipelined path writes the headers as text; hyper's builds them. Both must send the
    /// same ones: every kind of header, with the extra names in mixed case.
    #[test]
    fn both_senders_send_the_same_headers() {
        let uri: Uri = "http://127.0.0.1:8080/hook?x=1".parse().unwrap();
        let extra = vec![
            ("X-Tenant".to_string(), "acme".to_string()),
            ("x-trace".to_string(), "a\tb é".to_string()),
        ];
        for auth in [
            None,
            Some(WebhookAuth::Bearer("tok".into())),
            Some(WebhookAuth::Basic {
                username: "u".into(),
                password: "p:w".into(),
            }),
        ] {
            let options = SendOptions {
                event_id: "ev-1",
                secret: Some(SECRET),
                auth: auth.as_ref(),
                headers: &extra,
                timeout: Duration::from_secs(1),
            };
            let request = Outgoing::json(uri.clone(), Bytes::from_static(BODY));
            let built = build_request(&request, &options).unwrap();
            let wire = request_bytes(&request, &options).unwrap();
            let text = std::str::from_utf8(&wire).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert_eq!(body.as_bytes(), BODY);
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some("POST /hook?x=1 HTTP/1.1"));
            assert_eq!(lines.next(), Some("host: 127.0.0.1:8080"));
            // A signature carries the second it was made in: each is checked on its own.
            let mut signatures = Vec::new();
            let mut on_wire: Vec<(String, String)> = lines
                .map(|line| line.split_once(": ").unwrap())
                .filter(|(name, value)| {
                    let signature = *name == SIGNATURE_HEADER;
                    if signature {
                        signatures.push(value.to_string());
                    }
                    !signature
                })
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let mut by_hyper: Vec<(String, String)> = built
                .headers()
                .iter()
                .filter(|(name, value)| {
                    let signature = name.as_str() == SIGNATURE_HEADER;
                    if signature {
                        signatures.push(value.to_str().unwrap().to_string());
                    }
                    !signature
                })
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8(v.as_bytes().to_vec()).unwrap(),
                    )
                })
                .collect();
            by_hyper.push(("content-length".into(), BODY.len().to_string()));
            on_wire.sort();
            by_hyper.sort();
            assert_eq!(on_wire, by_hyper, "{auth:?}");
            assert!(on_wire.iter().any(|(n, v)| n == "x-tenant" && v == "acme"));
            assert_eq!(signatures.len(), 2);
            for header in &signatures {
                assert!(verify_signature(SECRET, header, BODY, unix_now(), 5));
            }
        }
    }

    /// The check the pipelined path makes on a value is `HeaderValue::from_str`'s, byte for
    /// byte, and a bad value or name is an error on both paths.
    #[test]
    fn header_values_are_checked_as_http_does() {
        for b in 0u8..=255 {
            let Ok(text) = std::str::from_utf8(std::slice::from_ref(&b)) else {
                continue; // past ASCII: checked below inside a UTF-8 character
            };
            let ours = checked_value("x", text).is_ok();
            let http = hyper::header::HeaderValue::from_str(text).is_ok();
            assert_eq!(ours, http, "byte {b:#04x}");
        }
        assert!(checked_value("x", "é ü\t").is_ok());
        let uri: Uri = "http://127.0.0.1/x".parse().unwrap();
        let bad_value = [("x-ok".to_string(), "a\rb".to_string())];
        let bad_name = [("bad name".to_string(), "v".to_string())];
        for headers in [&bad_value[..], &bad_name[..]] {
            let options = SendOptions {
                event_id: "id",
                secret: None,
                auth: None,
                headers,
                timeout: Duration::from_secs(1),
            };
            let request = Outgoing::json(uri.clone(), Bytes::new());
            let hyper = build_request(&request, &options).unwrap_err();
            let wire = request_bytes(&request, &options).unwrap_err();
            assert!(hyper.starts_with("invalid request:"), "{hyper}");
            assert_eq!(hyper, wire);
        }
        let token = WebhookAuth::Bearer("a\nb".into());
        let options = SendOptions {
            event_id: "id",
            secret: None,
            auth: Some(&token),
            headers: &[],
            timeout: Duration::from_secs(1),
        };
        let request = Outgoing::json(uri, Bytes::new());
        assert!(request_bytes(&request, &options).is_err());
        assert!(build_request(&request, &options).is_err());
    }

    #[test]
    fn signature_round_trips() {
        let header = signature(SECRET, 1_700_000_000, BODY);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert!(verify_signature(SECRET, &header, BODY, 1_700_000_000, 300));
    }

    #[test]
    fn the_kept_key_never_signs_for_another_secret() {
        let fresh = |secret: &str| {
            let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(b"7.");
            mac.update(BODY);
            format!("t=7,v1={}", hex::encode(mac.finalize().into_bytes()))
        };
        for secret in [
            "a",
            "b",
            "a",
            "",
            "a-much-longer-secret-than-a-block-of-sha256-holds-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "a",
        ] {
            assert_eq!(signature(secret, 7, BODY), fresh(secret), "{secret:?}");
        }
        assert_ne!(signature("a", 7, BODY), signature("b", 7, BODY));
    }

    #[test]
    fn verify_rejects_what_it_should() {
        let t = 1_700_000_000;
        let header = signature(SECRET, t, BODY);
        assert!(!verify_signature("other", &header, BODY, t, 300));
        assert!(!verify_signature(SECRET, &header, b"{}", t, 300));
        // Outside the tolerance on either side.
        assert!(!verify_signature(SECRET, &header, BODY, t + 301, 300));
        assert!(!verify_signature(SECRET, &header, BODY, t - 301, 300));
        assert!(verify_signature(SECRET, &header, BODY, t + 300, 300));
        // Malformed headers.
        for bad in [
            "",
            ",,,",
            "t=",
            "t=abc,v1=00",
            "v1=00",
            &format!("t={t}"),
            &format!("t={t},v1=zz"),
            &format!("t={t},v1="),
            &format!("t={t},t={t},{}", &header[header.find("v1").unwrap()..]),
        ] {
            assert!(!verify_signature(SECRET, bad, BODY, t, 300), "{bad:?}");
        }
    }

    #[test]
    fn verify_accepts_rotation_and_spacing() {
        let t = 1_700_000_000;
        let good = signature(SECRET, t, BODY);
        let tag = &good[good.find("v1=").unwrap() + 3..];
        let rotated = format!("t={t}, v1={}, v1={tag}, v2=future", "ab".repeat(32));
        assert!(verify_signature(SECRET, &rotated, BODY, t, 0));
        assert!(verify_signature(
            SECRET,
            &good
                .to_uppercase()
                .replace("T=", "t=")
                .replace("V1=", "v1="),
            BODY,
            t,
            0
        ));
    }

    #[test]
    fn backoff_never_exceeds_its_ceiling() {
        let (base, max) = (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX);
        for attempt in [0, 1, 2, 5, 10, 11, 40, u32::MAX] {
            let ceiling = backoff_ceiling(attempt, base, max);
            for _ in 0..100 {
                assert!(backoff(attempt, base, max) <= ceiling);
            }
        }
        assert_eq!(backoff(3, Duration::ZERO, max), Duration::ZERO);
    }

    #[test]
    fn bad_urls_are_errors_not_panics() {
        let options = |event_id| SendOptions {
            event_id,
            secret: None,
            auth: None,
            headers: &[],
            timeout: Duration::from_secs(1),
        };
        for url in ["/just/a/path", "ftp://example.net/x"] {
            let uri: Uri = url.parse().unwrap();
            let err =
                build_request(&Outgoing::json(uri, Bytes::new()), &options("id")).unwrap_err();
            assert!(err.starts_with("invalid url:"), "{err}");
        }
        let uri: Uri = "http://127.0.0.1/x".parse().unwrap();
        let err =
            build_request(&Outgoing::json(uri, Bytes::new()), &options("bad\nid")).unwrap_err();
        assert!(err.starts_with("invalid request:"), "{err}");
    }
}
