//! The operator's TOML configuration: parsing with positions, validation of what serde cannot
//! see, and diagnostics printed as `FILE:LINE:COL: message` by `vmnd check`.
//!
//! The resolved types below are FIXED (the daemon uses them); the raw serde layer, validation and
//! diagnostics are implemented by the config work.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A fully validated configuration: secrets resolved, numbers normalised, references checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: Daemon,
    pub carriers: Vec<Carrier>,
    pub webhooks: Vec<Webhook>,
    pub numbers: Vec<Number>,
}

/// `[daemon]`
#[derive(Debug, Clone)]
pub struct Daemon {
    /// sled database directory.
    pub data_dir: PathBuf,
    /// Admin API, pages, /metrics, /healthz.
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin API (`admin_token` or `admin_token_env`); required when
    /// `admin_listen` is not a loopback address.
    pub admin_token: Option<String>,
    /// How long the parts of a concatenated message wait for the missing ones before what
    /// arrived is delivered with `complete: false` (`reassembly_timeout`, default "10m").
    pub reassembly_timeout: Duration,
    /// Optional de-duplication window for carrier redeliveries (`dedup_window`, default off).
    pub dedup_window: Option<Duration>,
    /// sled page cache in MiB (`cache_mb`, default 32): sled's own default is 1 GiB.
    pub cache_mb: u64,
    /// Also fsync sled's files through our own fd after each group commit (`fsync`, default
    /// true): sled issue #1452.
    pub fsync: bool,
}

/// `bind = "transceiver" | "receiver"`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    Transceiver,
    Receiver,
}

/// `[[carrier]]`
#[derive(Debug, Clone)]
pub struct Carrier {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub system_id: String,
    /// Resolved from `password` or `password_env`.
    pub password: String,
    /// `system_type`, default "".
    pub system_type: String,
    pub bind: BindMode,
    /// PDUs in flight we send (`window`, default 32).
    pub window: u32,
    /// Idle time before we send enquire_link (`enquire_link`, default "30s").
    pub enquire_link: Duration,
    /// How long we wait for any response before the session is considered dead
    /// (`response_timeout`, default "10s").
    pub response_timeout: Duration,
    /// This carrier sends GSM 7-bit text packed into octets (`gsm_packed`, default false).
    pub gsm_packed: bool,
    /// Reconnect backoff bounds (`reconnect_min` default "1s", `reconnect_max` default "60s").
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// `[[webhook]]`
#[derive(Debug, Clone)]
pub struct Webhook {
    pub name: String,
    /// `http://host[:port]/path` (https is not in this build: a config error).
    pub url: String,
    /// Resolved from `secret` or `secret_env`; signs every request when present.
    pub secret: Option<String>,
    /// Retry until this long after the first attempt, then dead-letter (`retry_for`, default "24h").
    pub retry_for: Duration,
    /// Per-request timeout (`timeout`, default "10s").
    pub timeout: Duration,
    /// Requests in flight to this endpoint (`concurrency`, default 32).
    pub concurrency: usize,
}

/// `[[number]]`
#[derive(Debug, Clone)]
pub struct Number {
    /// Normalised: digits only, 6 (short code) or 10 (long code).
    pub vmn: String,
    /// Where replies leave (`carrier`), optional until outbound SMS exists.
    pub carrier: Option<String>,
    /// `default = { webhook = "crm" }`: where messages that match nothing go.
    pub default_webhook: Option<String>,
    /// `receipts = "<webhook>"`: where delivery receipts for this number go.
    pub receipts_webhook: Option<String>,
}

/// One problem found in a config file, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}
