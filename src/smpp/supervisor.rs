//! One supervisor per `[[carrier]]`: connects, runs a session, and reconnects with exponential
//! backoff and jitter when it ends. The backoff resets once a session has lived a while, so a
//! carrier that drops us once a day reconnects at once, and one that refuses every bind is not
//! hammered. Bind state is published for /healthz and /metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::clock;
use crate::smpp::pdu;
use crate::smpp::session::{self, SessionContext, SessionEnd, SubmitRequest};

/// A session that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What operators see of one carrier.
#[derive(Debug, Default)]
pub struct CarrierState {
    bound: AtomicBool,
    since_ms: AtomicU64,
    binds: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A snapshot for /healthz.
#[derive(Debug, Clone, Serialize)]
pub struct CarrierStatus {
    pub bound: bool,
    /// When the current state began (RFC 3339).
    pub since: Option<String>,
    pub binds: u64,
    pub last_error: Option<String>,
}

impl CarrierState {
    pub fn set_bound(&self, bound: bool) {
        self.bound.store(bound, Ordering::SeqCst);
        self.since_ms.store(clock::now_ms(), Ordering::SeqCst);
        if bound {
            self.binds.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn is_bound(&self) -> bool {
        self.bound.load(Ordering::SeqCst)
    }

    fn set_error(&self, error: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
    }

    pub fn status(&self) -> CarrierStatus {
        let since = self.since_ms.load(Ordering::SeqCst);
        CarrierStatus {
            bound: self.is_bound(),
            since: (since > 0).then(|| clock::rfc3339_ms(since)),
            binds: self.binds.load(Ordering::SeqCst),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// Keeps one carrier bound until `shutdown` turns true. `submits` carries the submit_sm the
/// outbound SMS engine wants sent on this carrier; each session takes from it while bound.
pub async fn supervise(
    ctx: SessionContext,
    mut submits: mpsc::Receiver<SubmitRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let carrier = ctx.carrier.clone();
    let mut backoff = carrier.reconnect_min;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let address = format!("{}:{}", carrier.host, carrier.port);
        let connect = tokio::time::timeout(carrier.response_timeout, TcpStream::connect(&address));
        let end = match connect.await {
            Ok(Ok(stream)) => {
                session::run(ctx.clone(), stream, &mut submits, shutdown.clone()).await
            }
            Ok(Err(e)) => SessionEnd::Failed(format!("connect to {address}: {e}")),
            Err(_) => SessionEnd::Failed(format!("connect to {address}: timed out")),
        };
        let reason = match &end {
            SessionEnd::Shutdown => return,
            SessionEnd::BindRefused(status) => {
                let name = pdu::status_name(*status);
                tracing::warn!(carrier = %carrier.name, status = %name, "bind refused");
                metrics::counter!("vmnd_bind_refused_total", "carrier" => carrier.name.clone(), "status" => name.clone()).increment(1);
                format!("bind refused: {name}")
            }
            SessionEnd::Unbound => "unbound".to_string(),
            SessionEnd::Closed => "connection closed by the SMSC".to_string(),
            SessionEnd::Failed(e) => e.clone(),
        };
        tracing::warn!(carrier = %carrier.name, %reason, "session ended; reconnecting");
        ctx.state.set_error(reason);
        if started.elapsed() >= STABLE_AFTER {
            backoff = carrier.reconnect_min;
        }
        // Full jitter over the upper half: spreads reconnects of many binds apart.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
        backoff = (backoff * 2).min(carrier.reconnect_max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}
