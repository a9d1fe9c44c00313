//! The admin HTTP server (hyper): `/healthz`, `/metrics` (Prometheus), `/api/messages`, the
//! keywords of a number (listed, and added, replaced or deleted at run time: kept in the store
//! and swapped into the routing snapshot) and the operators' page at `/`. Loopback by default;
//! when it listens elsewhere the config requires a bearer token, checked on everything but
//! `/healthz` (load balancers probe that one).

mod contacts;
mod deadletters;
mod mail;
mod page;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::actions;
use crate::clock;
use crate::config::{self, Config, KeywordRule, Number};
use crate::routing::keywords::keyword_words;
use crate::routing::router::Router;
use crate::smpp::supervisor::CarrierState;
use crate::store::keywords::runtime_keyword_name;
use crate::store::{self, MessageFilter, Store};
use arc_swap::ArcSwap;
use http_body_util::BodyExt;

/// Largest page `/api/messages` returns.
const MAX_PAGE: usize = 1000;

/// What the admin server reads.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub config: Arc<Config>,
    /// The routing snapshot the processor reads (explain uses the same one).
    pub router: Arc<ArcSwap<Router>>,
    /// Carrier name -> bind state, in config order.
    pub carriers: Arc<Vec<(String, Arc<CarrierState>)>>,
    pub token: Option<String>,
    pub metrics: PrometheusHandle,
    /// Held while a keyword change is validated, stored and published: each change builds the
    /// next routing snapshot from the current one, so two at once would lose one.
    pub keyword_changes: Arc<tokio::sync::Mutex<()>>,
    /// Tells the dispatcher about jobs put back in the queue (dead-letter replays).
    pub scheduler: crate::outbound::dispatcher::Scheduler,
    /// Jobs the dispatcher holds, kept by it (no scan of the jobs tree per request).
    pub queue_depth: crate::outbound::dispatcher::QueueDepth,
}

/// The process-wide Prometheus recorder (a process has one global recorder; tests start
/// several daemons in one process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let batch_buckets = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("vmnd_store_batch_size".into()),
                        &batch_buckets,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (e.g. by an embedding program):
            // then our handle renders nothing, which /metrics makes visible.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "vmnd_deliver_sm_received_total",
        "deliver_sm PDUs received, per carrier"
    );
    describe_counter!(
        "vmnd_deliver_sm_acked_total",
        "deliver_sm_resp sent, per carrier and status (ok, tempfail)"
    );
    describe_histogram!(
        "vmnd_ack_latency_seconds",
        "from a deliver_sm read off the socket to its deliver_sm_resp written"
    );
    describe_histogram!(
        "vmnd_store_flush_seconds",
        "one group commit: journal write, flush and fsync"
    );
    describe_histogram!("vmnd_store_batch_size", "deliver_sm PDUs per group commit");
    describe_counter!(
        "vmnd_webhook_attempts_total",
        "webhook attempts per webhook and outcome (delivered, failed, dead)"
    );
    describe_histogram!("vmnd_webhook_latency_seconds", "webhook request latency");
    describe_gauge!(
        "vmnd_queue_depth",
        "jobs waiting (queued, due for a retry or in flight), per queue: in the durable queue, or in memory before their first attempt"
    );
    describe_gauge!(
        "vmnd_journal_depth",
        "acknowledged deliver_sm not yet processed, or whose webhook jobs are still held in memory"
    );
    describe_gauge!(
        "vmnd_jobs_held_in_memory",
        "webhook jobs in or before their first attempt, whose durable copy is their message's journal entry"
    );
    describe_counter!(
        "vmnd_backlog_spilled_total",
        "acknowledged deliver_sm that waited for processing in the journal on disk, not in memory (backlog_in_memory was full)"
    );
    describe_gauge!("vmnd_dead_letters", "jobs given up on");
    describe_gauge!("vmnd_bind_up", "1 while the carrier's session is bound");
    describe_counter!(
        "vmnd_bind_refused_total",
        "bind attempts refused by the SMSC, per status"
    );
    describe_counter!(
        "vmnd_pdu_errors_total",
        "PDUs that could not be framed or decoded, by kind: bad_length and bad_body are answered with an error, bad_response is read leniently, mismatched_response is ignored"
    );
    describe_counter!(
        "vmnd_messages_unrouted_total",
        "messages to numbers vmnd does not serve"
    );
    mail::describe();
}

/// How long a connection may wait before a request's headers have all arrived: a silent or
/// slow-headers client is closed after it. Hyper (1.6 and later) starts it when the
/// connection is accepted and again once a response is written, so it is also the idle
/// timeout of a keep-alive connection.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Admin connections open at once, at most. [`HEADER_TIMEOUT`] does not bound a client that
/// sends a body slowly or does not read its response; without a cap, enough of them would
/// use up the daemon's file descriptors, which its carrier binds, webhooks and databases
/// need too.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves until `shutdown` turns true. Connection errors are logged and never stop the server.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "admin connection refused: too many open");
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move {
                    // Only a request whose body has all arrived (none, for a GET) leaves the
                    // workers: a body still to come is read by this connection's own task,
                    // which `block_in_place` would be holding, and the request would wait
                    // for it forever. Bodies go to short handlers (an import parses on the
                    // blocking pool itself).
                    let reply = if hyper::body::Body::is_end_stream(req.body()) {
                        off_the_workers(handle(&state, req)).await
                    } else {
                        handle(&state, req).await
                    };
                    Ok::<_, Infallible>(reply)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Runs an admin request off the runtime's worker threads. Its store reads block, and some are
/// long (a filtered listing may read every message record), while the main runtime has one
/// worker on a two-core machine (see `cli::main_workers`): on that worker the request would
/// hold up every webhook, reply and e-mail until it ends. `block_in_place` hands the worker's
/// queue to a new thread for the duration. A current-thread runtime (tests) runs it in place.
async fn off_the_workers<F: std::future::Future>(request: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| runtime.block_on(request))
        }
        _ => request.await,
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn json_reply(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if path != "/healthz" && !authorized(state, &req) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if req.method() == Method::POST && path == "/api/route" {
        return explain_route(state, req).await;
    }
    if let Some(vmn) = (req.method() == Method::POST)
        .then(|| {
            path.strip_prefix("/api/numbers/")?
                .strip_suffix("/contacts/import")
        })
        .flatten()
        .filter(|vmn| !vmn.contains('/'))
    {
        return contacts::import(state, vmn, req).await;
    }
    if req.method() == Method::POST {
        if path == "/api/deadletters/replay" {
            return deadletters::replay_matching(state, &query);
        }
        if let Some(id) = path
            .strip_prefix("/api/deadletters/")
            .and_then(|p| p.strip_suffix("/replay"))
        {
            return deadletters::replay(state, id);
        }
    }
    // Keywords take GET, PUT and DELETE.
    if let Some((vmn, keyword)) = keywords_path(&path) {
        return keywords_api(state, req, vmn, keyword).await;
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only here (POST is for /api/route, contact imports and dead-letter replays)",
        );
    }
    match path.as_str() {
        "/healthz" => healthz(state),
        "/metrics" => {
            update_gauges(state);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        "/api/messages" => list_messages(state, &query),
        "/api/deadletters" => deadletters::list(state, &query),
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(state),
        ),
        "/api/outbound" => list_outbound(state, &query),
        "/api/mail/replies" => mail::list_replies(state, &query),
        p if p.starts_with("/api/messages/") => one_message(state, &p["/api/messages/".len()..]),
        p if p.starts_with("/api/deadletters/") => {
            deadletters::one(state, &p["/api/deadletters/".len()..])
        }
        // strip_prefix then strip_suffix: in "/api/jobs/attempts" the two overlap, and slicing
        // by both lengths would panic.
        p if let Some(id) = p
            .strip_prefix("/api/jobs/")
            .and_then(|rest| rest.strip_suffix("/attempts")) =>
        {
            deadletters::attempts(state, id)
        }
        p if p.starts_with("/api/numbers/") => {
            number_api(state, &p["/api/numbers/".len()..], &query)
        }
        _ => error(StatusCode::NOT_FOUND, "no such page"),
    }
}

fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let Some(header) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let given = header.strip_prefix("Bearer ").unwrap_or("");
    // Constant-time: the token is a secret.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn update_gauges(state: &AdminState) {
    metrics::gauge!("vmnd_journal_depth").set(state.store.journal_depth() as f64);
    metrics::gauge!("vmnd_dead_letters").set(state.store.dead_letter_count() as f64);
}

fn healthz(state: &AdminState) -> Reply {
    let store_ok = state.store.healthy();
    let carriers: serde_json::Map<String, serde_json::Value> = state
        .carriers
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                serde_json::to_value(s.status()).unwrap_or_default(),
            )
        })
        .collect();
    let all_bound = state.carriers.iter().all(|(_, s)| s.is_bound());
    let ok = store_ok && all_bound;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "store": if store_ok { "open" } else { "failing" },
        "carriers": carriers,
        "queue_depth": state.queue_depth.get(),
        "journal_depth": state.store.journal_depth(),
    });
    json_reply(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// `limit`: `default` when absent, an error reply when out of `1..=max`.
pub(super) fn parse_limit(
    q: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, Box<Reply>> {
    match q.get("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                &format!("limit: expected 1..={max}, got {text:?}"),
            ))),
        },
    }
}

/// `since`/`until`: RFC 3339, or Unix seconds.
fn parse_time(text: &str) -> Option<u64> {
    // Seconds past what milliseconds can hold are not a time: a 400, not a wrapped filter.
    clock::parse_rfc3339_ms(text).or_else(|| text.parse::<u64>().ok()?.checked_mul(1000))
}

fn list_messages(state: &AdminState, q: &HashMap<String, String>) -> Reply {
    let mut filter = MessageFilter {
        to: q.get("to").cloned(),
        from: q.get("from").cloned(),
        keyword: q.get("keyword").cloned(),
        inbox: q.get("inbox").cloned(),
        limit: 100,
        ..Default::default()
    };
    for (key, slot) in [
        ("since", &mut filter.since_ms),
        ("until", &mut filter.until_ms),
    ] {
        if let Some(text) = q.get(key) {
            match parse_time(text) {
                Some(t) => *slot = Some(t),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("{key}: expected RFC 3339 time or Unix seconds, got {text:?}"),
                    );
                }
            }
        }
    }
    filter.limit = match parse_limit(q, filter.limit, MAX_PAGE) {
        Ok(n) => n,
        Err(e) => return *e,
    };
    if let Some(before) = q.get("before") {
        match store::parse_id(before) {
            Some(id) => filter.before = Some(id),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("before: not a message id: {before:?}"),
                );
            }
        }
    }
    match state.store.list_messages(&filter) {
        Ok(messages) => {
            let next = (messages.len() == filter.limit)
                .then(|| messages.last().map(|m| m.id.clone()))
                .flatten();
            json_reply(
                StatusCode::OK,
                &json!({ "messages": messages, "next": next }),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn one_message(state: &AdminState, id: &str) -> Reply {
    let Some(id) = store::parse_id(id) else {
        return error(StatusCode::BAD_REQUEST, "not a message id");
    };
    match state.store.message(id) {
        Ok(Some(m)) => json_reply(StatusCode::OK, &json!(m)),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Binds the admin listener (port 0 picks one; the daemon reports the real address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Largest request body accepted (POST /api/route, PUT of a keyword).
const MAX_BODY: usize = 64 * 1024;

/// A JSON request's body, at most [`MAX_BODY`]; the error is a 400's message.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, String> {
    http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("cannot read the body: {e}"))
}

/// `POST /api/route` with `{"to": .., "from": .., "text": .., "at": "<RFC 3339>"?}`.
async fn explain_route(state: &AdminState, req: Request<Incoming>) -> Reply {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RouteRequest {
        to: String,
        from: String,
        text: String,
        at: Option<String>,
        tenant: Option<String>,
    }
    let request: RouteRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"to\", \"from\", \"text\", \"at\"?}}: {e}"),
            );
        }
    };
    let at = match &request.at {
        None => chrono::Utc::now(),
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.with_timezone(&chrono::Utc),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("at: not an RFC 3339 time: {e}"),
                );
            }
        },
    };
    let router = state.router.load();
    let explanation = actions::explain(
        &router,
        &request.to,
        &request.from,
        &request.text,
        at,
        request.tenant.as_deref(),
    );
    json_reply(StatusCode::OK, &json!(explanation))
}

fn list_outbound(state: &AdminState, q: &HashMap<String, String>) -> Reply {
    let limit = match parse_limit(q, 100, MAX_PAGE) {
        Ok(n) => n,
        Err(e) => return *e,
    };
    match state
        .store
        .list_outbound(q.get("message").map(String::as_str), limit)
    {
        Ok(records) => json_reply(StatusCode::OK, &json!({ "outbound": records })),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `/api/numbers/{vmn}/polls/{keyword}` (JSON, or CSV with `?format=csv`); `.../contacts` and
/// `.../ledger` are answered by [`contacts`].
fn number_api(state: &AdminState, rest: &str, q: &HashMap<String, String>) -> Reply {
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [vmn, "contacts"] => return contacts::list(state, vmn, q),
        [vmn, "ledger"] => return contacts::ledger(state, vmn, q),
        _ => {}
    }
    let [vmn, "polls", keyword] = parts.as_slice() else {
        return error(
            StatusCode::NOT_FOUND,
            "expected /api/numbers/{vmn}/polls/{keyword}",
        );
    };
    let keyword = form_urlencoded::parse(format!("k={keyword}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Some(configured) = state.config.number(vmn) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("vmnd does not serve {vmn:?}"),
        );
    };
    // The routing snapshot's number: its keywords include those added at run time.
    let snapshot = state.router.load();
    let number = snapshot
        .number(&configured.vmn)
        .map_or(configured, |n| n.as_ref());
    let Some((rule, poll)) = number
        .keywords
        .iter()
        .find(|k| k.keyword.eq_ignore_ascii_case(&keyword))
        .and_then(|k| k.poll.as_ref().map(|p| (k, p)))
    else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no poll {keyword:?} on {vmn}"),
        );
    };
    let (counts, voters) = match state.store.tally(&number.vmn, &rule.keyword, &poll.options) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    // In the configured order, then anything else (options removed from the config).
    let mut rows: Vec<(String, u64)> = poll
        .options
        .iter()
        .map(|o| (o.clone(), counts.get(o).copied().unwrap_or(0)))
        .collect();
    rows.extend(
        counts
            .iter()
            .filter(|(o, _)| !poll.options.contains(o))
            .map(|(o, c)| (o.clone(), *c)),
    );
    match q.get("format").map(String::as_str) {
        Some("csv") => {
            let mut csv = String::from("option,votes\r\n");
            for (option, votes) in &rows {
                csv.push_str(&format!("{},{votes}\r\n", csv_field(option)));
            }
            reply(StatusCode::OK, "text/csv; charset=utf-8", csv)
        }
        None | Some("json") => json_reply(
            StatusCode::OK,
            &json!({
                "vmn": number.vmn,
                "keyword": rule.keyword,
                "voters": voters,
                "vote": if poll.last_vote_counts { "last" } else { "first" },
                "options": rows.iter().map(|(o, v)| json!({"option": o, "votes": v})).collect::<Vec<_>>(),
            }),
        ),
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            &format!("format: json or csv, not {other:?}"),
        ),
    }
}

/// RFC 4180 quoting when needed.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Keywords: /api/numbers/{vmn}/keywords[/{keyword}]
// ---------------------------------------------------------------------------------------------

/// `/api/numbers/{vmn}/keywords` (keyword `None`) or `/api/numbers/{vmn}/keywords/{keyword}`,
/// the keyword %-decoded.
fn keywords_path(path: &str) -> Option<(&str, Option<String>)> {
    let rest = path.strip_prefix("/api/numbers/")?;
    let mut parts = rest.split('/');
    let vmn = parts.next()?;
    if parts.next()? != "keywords" {
        return None;
    }
    match (parts.next(), parts.next()) {
        (None | Some(""), None) => Some((vmn, None)),
        (Some(keyword), None) if !keyword.is_empty() => Some((vmn, Some(percent_decode(keyword)))),
        _ => None,
    }
}

/// A path segment with its `%XX` escapes decoded (a '+' stays a plus: a path is not a form).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn keywords_api(
    state: &AdminState,
    req: Request<Incoming>,
    vmn: &str,
    keyword: Option<String>,
) -> Reply {
    let Some(number) = state.config.number(vmn) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("vmnd does not serve {vmn:?}"),
        );
    };
    let method = req.method().clone();
    match (method, keyword) {
        (Method::GET, None) => list_keywords(state, number),
        (Method::GET, Some(keyword)) => one_keyword(state, number, &keyword),
        (Method::PUT, Some(keyword)) => put_keyword(state, number, &keyword, req).await,
        (Method::DELETE, Some(keyword)) => delete_keyword(state, number, &keyword).await,
        (_, None) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only here; PUT and DELETE take /api/numbers/{vmn}/keywords/{keyword}",
        ),
        (_, Some(_)) => error(StatusCode::METHOD_NOT_ALLOWED, "GET, PUT or DELETE"),
    }
}

/// A keyword as the API shows it; `source` is "config" or "api".
fn keyword_view(rule: &KeywordRule, source: &str) -> serde_json::Value {
    let a = &rule.actions;
    let mut view = json!({
        "keyword": rule.keyword,
        "source": source,
        "active": true,
        "aliases": rule.aliases,
        "tenant": rule.tenant,
        "inbox": rule.inbox,
        "starts": rule.starts.map(|t| t.to_rfc3339()),
        "expires": rule.expires.map(|t| t.to_rfc3339()),
        "expiry_reply": rule.expiry_reply,
        "kind": if rule.poll.is_some() { "poll" } else { "inbox" },
        "actions": {
            "webhook": a.webhook,
            "reply": a.reply,
            "reply_after": a.reply_after.map(config::show_duration),
            "reply_window": a.reply_window.as_ref().map(|w| w.text.clone()),
            "forward_to": a.forward_to,
            "forward_template": (!a.forward_to.is_empty()).then_some(&a.forward_template),
        },
    });
    if let Some(poll) = &rule.poll {
        view["poll"] = json!({
            "options": poll.options,
            "vote": if poll.last_vote_counts { "last" } else { "first" },
            "invalid_reply": poll.invalid_reply,
        });
    }
    if source == "config" {
        view["line"] = json!(rule.line);
    }
    view
}

/// The config keyword `keyword` names (compared as messages are matched), if any: the API
/// neither replaces nor deletes those.
fn config_keyword<'a>(number: &'a Number, keyword: &str) -> Option<&'a KeywordRule> {
    let name = runtime_keyword_name(keyword);
    let words = keyword_words(keyword).ok();
    number.keywords.iter().find(|rule| {
        runtime_keyword_name(&rule.keyword) == name
            || (words.is_some() && keyword_words(&rule.keyword).ok() == words)
    })
}

/// A config keyword the request would change: 409, saying where to change it instead.
fn config_keyword_conflict(rule: &KeywordRule, change: &str) -> Reply {
    error(
        StatusCode::CONFLICT,
        &format!(
            "keyword {:?} is defined in the config file at line {}; {change} it there (the admin API manages only the keywords added through it)",
            rule.keyword, rule.line
        ),
    )
}

/// The keywords added at run time that the current snapshot routes, for `vmn`.
/// A runtime keyword of `vmn` stored under the same name as `keyword` (names are compared
/// upper-cased, blanks collapsed) that matches other words: "kıd" (dotless i) and "KID".
/// Replacing or deleting it through `keyword` would change a keyword the caller did not
/// name.
fn same_name_other_words(snapshot: &Router, vmn: &str, keyword: &str) -> Option<String> {
    let name = runtime_keyword_name(keyword);
    let words = crate::routing::keywords::keyword_words(keyword).ok();
    routed_runtime_keywords(snapshot, vmn)
        .into_iter()
        .find(|rule| {
            runtime_keyword_name(&rule.keyword) == name
                && crate::routing::keywords::keyword_words(&rule.keyword).ok() != words
        })
        .map(|rule| rule.keyword)
}

fn name_clash(number: &Number, keyword: &str, other: &str) -> Reply {
    error(
        StatusCode::CONFLICT,
        &format!(
            "number {} has keyword {other:?}, whose name is that of {keyword:?} (names are compared in upper case) but which matches other words; use {other:?} to change or remove it",
            number.vmn
        ),
    )
}

fn routed_runtime_keywords(snapshot: &Router, vmn: &str) -> Vec<KeywordRule> {
    snapshot
        .runtime_keywords()
        .iter()
        .filter(|(v, _)| v == vmn)
        .map(|(_, rule)| rule.clone())
        .collect()
}

/// Keywords kept in the store for the number but not routed (they no longer fit the config,
/// see the daemon's start), each with its problems; `only` restricts to one name.
fn inactive_keywords(
    state: &AdminState,
    number: &Number,
    routed: &[KeywordRule],
    only: Option<&str>,
) -> store::Result<Vec<serde_json::Value>> {
    let routed_names: Vec<String> = routed
        .iter()
        .map(|r| runtime_keyword_name(&r.keyword))
        .collect();
    let mut out = Vec::new();
    for kept in state.store.runtime_keywords_of(&number.vmn)? {
        if routed_names.contains(&kept.name) || only.is_some_and(|o| o != kept.name) {
            continue;
        }
        let problems = match config::keyword_table_from_json(&kept.table) {
            Ok(table) => config::validate_keyword_table(&state.config, number, &table, routed)
                .err()
                .unwrap_or_default(),
            Err(problems) => problems,
        };
        out.push(json!({
            "keyword": kept.table.get("keyword").cloned().unwrap_or(json!(kept.name)),
            "source": "api",
            "active": false,
            "problems": problems,
            "table": kept.table,
        }));
    }
    Ok(out)
}

/// `GET /api/numbers/{vmn}/keywords`: the config's keywords, then those added at run time.
fn list_keywords(state: &AdminState, number: &Number) -> Reply {
    let snapshot = state.router.load();
    let routed = routed_runtime_keywords(&snapshot, &number.vmn);
    let mut keywords: Vec<serde_json::Value> = number
        .keywords
        .iter()
        .map(|rule| keyword_view(rule, "config"))
        .chain(routed.iter().map(|rule| keyword_view(rule, "api")))
        .collect();
    match inactive_keywords(state, number, &routed, None) {
        Ok(inactive) => keywords.extend(inactive),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    json_reply(
        StatusCode::OK,
        &json!({ "vmn": number.vmn, "keywords": keywords }),
    )
}

/// `GET /api/numbers/{vmn}/keywords/{keyword}`.
fn one_keyword(state: &AdminState, number: &Number, keyword: &str) -> Reply {
    if let Some(rule) = config_keyword(number, keyword) {
        return json_reply(StatusCode::OK, &keyword_view(rule, "config"));
    }
    let snapshot = state.router.load();
    let routed = routed_runtime_keywords(&snapshot, &number.vmn);
    let name = runtime_keyword_name(keyword);
    if let Some(rule) = routed
        .iter()
        .find(|r| runtime_keyword_name(&r.keyword) == name)
    {
        return json_reply(StatusCode::OK, &keyword_view(rule, "api"));
    }
    match inactive_keywords(state, number, &routed, Some(&name)) {
        Ok(mut inactive) if !inactive.is_empty() => json_reply(StatusCode::OK, &inactive.remove(0)),
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            &format!("number {} has no keyword {keyword:?}", number.vmn),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A refusal that lists every problem.
fn problems_reply(status: StatusCode, summary: &str, problems: &[String]) -> Reply {
    json_reply(status, &json!({ "error": summary, "problems": problems }))
}

/// `PUT /api/numbers/{vmn}/keywords/{keyword}` with the keys of a `[[number.keyword]]` table
/// as a JSON object: validated as `vmnd check` validates the config, kept in the store
/// (durably) and published in a new routing snapshot. 201 when created, 200 when replaced.
async fn put_keyword(
    state: &AdminState,
    number: &Number,
    keyword: &str,
    req: Request<Incoming>,
) -> Reply {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut table: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not JSON: {e}"),
            );
        }
    };
    let Some(object) = table.as_object_mut() else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object of [[number.keyword]] keys (the keyword itself comes from the path)",
        );
    };
    match object.get("keyword") {
        None => {}
        Some(serde_json::Value::String(k))
            if runtime_keyword_name(k) == runtime_keyword_name(keyword) => {}
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "`keyword` in the body ({other}) is not the keyword of the path ({keyword:?}); leave it out"
                ),
            );
        }
    }
    // The path's spelling is the one kept: it names the keyword from now on.
    object.insert("keyword".to_string(), json!(keyword));
    if let Some(rule) = config_keyword(number, keyword) {
        return config_keyword_conflict(rule, "change");
    }
    let toml_table = match config::keyword_table_from_json(&table) {
        Ok(t) => t,
        Err(problems) => {
            return problems_reply(
                StatusCode::BAD_REQUEST,
                "the keyword table is not valid",
                &problems,
            );
        }
    };

    let _change = state.keyword_changes.lock().await;
    let snapshot = state.router.load_full();
    if let Some(other) = same_name_other_words(&snapshot, &number.vmn, keyword) {
        return name_clash(number, keyword, &other);
    }
    let name = runtime_keyword_name(keyword);
    let is_this = |vmn: &str, rule: &KeywordRule| {
        vmn == number.vmn && runtime_keyword_name(&rule.keyword) == name
    };
    let others: Vec<KeywordRule> = routed_runtime_keywords(&snapshot, &number.vmn)
        .into_iter()
        .filter(|rule| !is_this(&number.vmn, rule))
        .collect();
    let checked = match config::check_keyword_table(&state.config, number, &toml_table, &others) {
        Ok(checked) => checked,
        Err(refusal) if refusal.conflict => {
            return problems_reply(
                StatusCode::CONFLICT,
                &format!(
                    "the keyword clashes with what number {} already has",
                    number.vmn
                ),
                &refusal.problems,
            );
        }
        Err(refusal) => {
            return problems_reply(
                StatusCode::BAD_REQUEST,
                "the keyword table is not valid",
                &refusal.problems,
            );
        }
    };
    let replaced = match state
        .store
        .put_runtime_keyword(&number.vmn, keyword, &table)
    {
        Ok(replaced) => replaced,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    // Durable before it is announced or routed: a change the caller saw succeed survives a
    // crash. (If this fails the snapshot is left as it was; the record may still reach the
    // disk with sled's next flush and be routed after a restart, which a retry makes agree.)
    if let Err(e) = state.store.commit().await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the keyword could not be stored durably: {e}"),
        );
    }
    let runtime: Vec<(String, KeywordRule)> = snapshot
        .runtime_keywords()
        .iter()
        .filter(|(vmn, rule)| !is_this(vmn, rule))
        .cloned()
        .chain(std::iter::once((number.vmn.clone(), checked.rule.clone())))
        .collect();
    state
        .router
        .store(Arc::new(Router::with_runtime(&state.config, &runtime)));
    tracing::info!(vmn = %number.vmn, keyword, replaced, "keyword stored through the admin API");
    json_reply(
        if replaced {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        &json!({
            "keyword": keyword_view(&checked.rule, "api"),
            "warnings": checked.warnings,
        }),
    )
}

/// `DELETE /api/numbers/{vmn}/keywords/{keyword}`: 204, or 404 when the API never added it.
async fn delete_keyword(state: &AdminState, number: &Number, keyword: &str) -> Reply {
    if let Some(rule) = config_keyword(number, keyword) {
        return config_keyword_conflict(rule, "remove");
    }
    let _change = state.keyword_changes.lock().await;
    if let Some(other) = same_name_other_words(&state.router.load_full(), &number.vmn, keyword) {
        return name_clash(number, keyword, &other);
    }
    match state.store.delete_runtime_keyword(&number.vmn, keyword) {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!(
                    "number {} has no keyword {keyword:?} added through the admin API",
                    number.vmn
                ),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    if let Err(e) = state.store.commit().await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the deletion could not be stored durably: {e}"),
        );
    }
    let name = runtime_keyword_name(keyword);
    let snapshot = state.router.load_full();
    let runtime: Vec<(String, KeywordRule)> = snapshot
        .runtime_keywords()
        .iter()
        .filter(|(vmn, rule)| !(*vmn == number.vmn && runtime_keyword_name(&rule.keyword) == name))
        .cloned()
        .collect();
    state
        .router
        .store(Arc::new(Router::with_runtime(&state.config, &runtime)));
    tracing::info!(vmn = %number.vmn, keyword, "keyword deleted through the admin API");
    reply(StatusCode::NO_CONTENT, "application/json", Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Ticks of a task that counts milliseconds, taken while an admin request blocks its
    /// thread for 300 ms.
    fn ticks_during_a_blocking_request(runtime: &tokio::runtime::Runtime) -> usize {
        runtime.block_on(async {
            let ticks = Arc::new(AtomicUsize::new(0));
            let counter = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            // The request itself runs on a task too, as under hyper.
            let request = tokio::spawn(off_the_workers(async {
                std::thread::sleep(std::time::Duration::from_millis(300));
                7
            }));
            assert_eq!(request.await.unwrap(), 7, "the request's answer comes back");
            ticker.abort();
            ticks.load(Ordering::Relaxed)
        })
    }

    #[test]
    fn a_blocking_admin_request_leaves_the_only_worker_to_other_tasks() {
        let one_worker = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Without `off_the_workers` the ticker gets no turn during the 300 ms (0 ticks); with
        // it, a tick per millisecond or so. 50 leaves room for a busy machine.
        let ticks = ticks_during_a_blocking_request(&one_worker);
        assert!(ticks >= 50, "only {ticks} ticks while the request blocked");
    }

    #[test]
    fn on_a_current_thread_runtime_the_request_runs_in_place() {
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // No panic (block_in_place would panic here), and the answer comes back.
        ticks_during_a_blocking_request(&current);
    }
}
