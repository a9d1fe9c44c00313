//! The operator's TOML configuration: parsing with positions, validation of what serde cannot
//! see, and diagnostics printed as `FILE:LINE:COL: message` by `vmnd check`.
//!
//! Three layers, so that one run reports every problem rather than the first:
//! 1. syntax: `toml`'s recoverable parser turns the text into a table in which every key and value
//!    keeps its byte span;
//! 2. shape: each section (and each element of `[[carrier]]`, `[[webhook]]`, `[[number]]`) is
//!    deserialized on its own into a `Raw*` struct (`deny_unknown_fields`, values kept as
//!    [`Spanned`]), so an unknown key in one carrier does not hide a wrong type in a webhook;
//! 3. meaning: `validate_*` functions check what serde cannot see (ranges, durations, addresses,
//!    URLs, secrets, uniqueness, references between sections) and build the resolved types below.
//!
//! The resolved types are what the daemon uses; nothing outside this module sees the raw layer.
//! Two helpers are shared with the daemon so that what `vmnd check` accepts is what runs:
//! templates (`reply`, `expiry_reply`, `invalid_reply`, `forward_template`) are checked by
//! [`template_placeholders_ok`] and filled by [`render_template`]; keywords are normalised by
//! [`crate::routing::keywords::keyword_words`], as the router does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveTime};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::clock::parse_duration;
use crate::routing::keywords::keyword_words;

/// A fully validated configuration: secrets resolved, numbers normalised, references checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub daemon: Daemon,
    pub carriers: Vec<Carrier>,
    pub webhooks: Vec<Webhook>,
    pub numbers: Vec<Number>,
    /// `[smtp]`: e-mail forwards and replies by e-mail; `None` when the section is absent (then
    /// no rule may have `email`).
    pub smtp: Option<Smtp>,
}

/// `tls = "none" | "starttls" | "tls"` of `[smtp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP: only sensible to a relay on the same host or network.
    None,
    /// Plain connection upgraded with STARTTLS, which is required (never falls back to plain).
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// `[smtp]`: where e-mail forwards are sent, and where replies to them come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    /// The relay: an IP address or a host name.
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// `ca_file`: PEM certificates trusted for the relay besides the public roots (a relay
    /// with a certificate from a private CA), read when the config is loaded.
    pub ca_pem: Option<Vec<u8>>,
    /// `username` with `password` / `password_env`: SMTP AUTH; `None` sends without auth.
    pub credentials: Option<(String, String)>,
    /// `from`: the envelope sender and `From:` of every forward (an address, optionally with a
    /// display name: `"vmnd <vmnd@example.net>"`).
    pub from: String,
    /// `reply_domain`: the `Reply-To` of a forward is `reply+<token>@reply_domain`; the
    /// operator's MTA hands mail for this domain to `lmtp_listen`.
    pub reply_domain: String,
    /// `lmtp_listen`: a loopback socket address (LMTP has no authentication of its own).
    pub lmtp_listen: SocketAddr,
    /// Per-connection timeout to the relay (`timeout`, default "30s").
    pub timeout: Duration,
    /// Retry a forward this long, then dead-letter it (`retry_for`, default "24h").
    pub retry_for: Duration,
    /// How long a reply token stays valid after its forward was sent (`reply_token_ttl`,
    /// default "30d").
    pub reply_token_ttl: Duration,
    /// `subject` template, default [`DEFAULT_EMAIL_SUBJECT`].
    pub subject: String,
    /// `body` template, default [`DEFAULT_EMAIL_BODY`].
    pub body: String,
    /// Forwards in flight at once (`concurrency`, default 4).
    pub concurrency: usize,
}

/// The default `[smtp] subject`.
pub const DEFAULT_EMAIL_SUBJECT: &str = "SMS from {from} to {to}";

/// The default `[smtp] body`.
pub const DEFAULT_EMAIL_BODY: &str = "{text}\n\n--\nSMS from {from} to {to}, received {date}.\nReply to this e-mail to answer by SMS.\n";

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Data directory: the journal (`wal/`), the records store (`records/`) and sled.
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
    /// sled page cache in MiB (`cache_mb`, default 16): sled's own default is 1 GiB. sled
    /// overshoots it by about as much again, so the default keeps the daemon under 100 MiB.
    /// The records store (`store::records`) sizes its own cache.
    pub cache_mb: u64,
    /// fdatasync the journal at each group commit and fsync sled's files after its flushes
    /// (`fsync`, default true; sled issue #1452). False trusts the OS page cache: a crash of
    /// the process loses nothing, a power cut may.
    pub fsync: bool,
    /// Committed messages waiting for processing that are kept in memory (`backlog_in_memory`,
    /// default 16384); beyond them, they wait in the journal on disk and are read back.
    pub backlog_in_memory: usize,
}

/// `bind = "transceiver" | "receiver"`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    Transceiver,
    Receiver,
}

/// `[[carrier]]`
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Most submit_sm per second we send on this bind (`submit_per_second`, default 50).
    pub submit_per_second: u32,
}

/// `[[webhook]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub name: String,
    /// `http[s]://host[:port]/path`.
    pub url: String,
    /// Resolved from `secret` or `secret_env`; signs every request when present.
    pub secret: Option<String>,
    /// Retry until this long after the first attempt, then dead-letter (`retry_for`, default "24h").
    pub retry_for: Duration,
    /// Per-request timeout (`timeout`, default "10s").
    pub timeout: Duration,
    /// Requests in flight to this endpoint (`concurrency`, default 32).
    pub concurrency: usize,
    /// `pipeline` (default 1, at most 64): requests written on one connection before their
    /// answers come back (HTTP/1.1 pipelining, see `outbound::pipeline`). 1 sends one at a
    /// time per connection; more needs a receiver that answers pipelined requests in order.
    pub pipeline: usize,
    /// How the event goes out (`method` and `format`; default a JSON POST).
    pub method: WebhookMethod,
    /// `fields = { name = "template" }`: the fields that go out and under what names (sorted
    /// by name), each a template over [`WEBHOOK_FIELD_PLACEHOLDERS`]. `None`: the contract's
    /// whole payload (for a form or GET, its scalar fields under their contract names).
    pub fields: Option<Vec<(String, String)>>,
    /// `headers = { "X-Api-Key" = ".." }`: extra request headers, checked as valid HTTP.
    pub headers: Vec<(String, String)>,
    /// `bearer`/`bearer_env`, or `username` + `password`/`password_env`.
    pub auth: Option<WebhookAuth>,
    /// `ca_file`: PEM certificates trusted for https besides the public roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `fallback_url`: tried at once when the `url` fails with no answer or a 5xx.
    pub fallback_url: Option<String>,
    /// `breaker_failures` (default 10; 0 = never): consecutive failed attempts that open the
    /// circuit. While open, one queued job is tried every `breaker_probe` (default "30s"); the
    /// first success closes it.
    pub breaker_failures: u32,
    pub breaker_probe: Duration,
    /// `on_4xx`: what a 4xx other than 408 and 429 means (default: dead-letter at once).
    pub on_4xx: On4xx,
}

/// How a webhook sends an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMethod {
    /// POST, `application/json` (the contract's default).
    PostJson,
    /// POST, `application/x-www-form-urlencoded`.
    PostForm,
    /// GET with the fields as query parameters (appended to any the `url` has).
    Get,
}

/// Credentials a webhook sends in `Authorization`.
#[derive(Clone, PartialEq, Eq)]
pub enum WebhookAuth {
    Bearer(String),
    Basic { username: String, password: String },
}

impl std::fmt::Debug for WebhookAuth {
    // Never print the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookAuth::Bearer(_) => f.write_str("Bearer(..)"),
            WebhookAuth::Basic { username, .. } => write!(f, "Basic({username:?}, ..)"),
        }
    }
}

/// What a 4xx answer (other than 408 Request Timeout and 429 Too Many Requests) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On4xx {
    /// The request itself is wrong and retrying will not fix it: dead-letter now, where an
    /// operator can fix the config and replay it.
    DeadLetter,
    /// Retry like a 5xx (for endpoints that answer 404 while being deployed, say).
    Retry,
}

/// Placeholders of a webhook's `fields` templates, in the payload's order: the contract's
/// payload fields (`missing_parts` comma-separated), plus `consent` (the new state of an
/// `optin`/`optout` event) and `receipt_stat` (a receipt's stat). A form or GET without
/// `fields` carries all of these that have a value.
pub const WEBHOOK_FIELD_PLACEHOLDERS: &[&str] = &[
    "event",
    "id",
    "to",
    "from",
    "text",
    "keyword",
    "inbox",
    "args",
    "carrier",
    "received_at",
    "parts",
    "encoding",
    "complete",
    "missing_parts",
    "consent",
    "receipt_stat",
];

/// `[[number]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    /// Normalised: digits only, 6 (short code) or 10 (long code).
    pub vmn: String,
    /// Where replies leave (`carrier`), optional until outbound SMS exists.
    pub carrier: Option<String>,
    /// `receipts = "<webhook>"`: where delivery receipts for this number go.
    pub receipts_webhook: Option<String>,
    /// `default = { webhook = .., reply = .., ... }`: the actions for messages that match no
    /// keyword (`default = { webhook = "crm" }`: where they are forwarded).
    pub default_actions: Actions,
    /// `[[number.keyword]]`, in file order.
    pub keywords: Vec<KeywordRule>,
    /// Words checked before any campaign keyword (the consent issue acts on them); a campaign
    /// keyword or alias equal to one is a config error. Defaults: the industry lists.
    pub reserved: ReservedWords,
    /// Confirmations, help and consent events for this number.
    pub consent: ConsentConfig,
    /// Caps on automatic replies and forwards per sender (`[guard]`, the number's `guard`).
    pub guard: GuardConfig,
}

/// The auto-action guard of a number: keeps vmnd from flooding a person, or from talking to
/// another bot forever. Counted per sender and number; the message is still stored and still
/// goes to its webhook, only the replies and forwards it would trigger are held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// `max_auto_actions` (default 5; 0 = no cap): replies and forwards per sender per window.
    pub max_auto_actions: u32,
    /// `window` (default "10m").
    pub window: Duration,
    /// `loop_repeats` (default 3; 0 = off): the same text from the same sender this many times
    /// within the window marks it as an autoresponder, and its messages trigger nothing.
    pub loop_repeats: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_auto_actions: 5,
            window: Duration::from_secs(600),
            loop_repeats: 3,
        }
    }
}

/// The reserved words of a number, upper-case as configured (matching normalises).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedWords {
    /// Default: STOP, STOPALL, STOP ALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT.
    pub stop: Vec<String>,
    /// Default: START, YES, UNSTOP.
    pub start: Vec<String>,
    /// Default: HELP, INFO.
    pub help: Vec<String>,
}

impl Default for ReservedWords {
    fn default() -> Self {
        let list = |words: &[&str]| words.iter().map(|w| w.to_string()).collect();
        ReservedWords {
            stop: list(&[
                "STOP",
                "STOPALL",
                "STOP ALL",
                "UNSUBSCRIBE",
                "CANCEL",
                "END",
                "QUIT",
                "REVOKE",
                "OPTOUT",
            ]),
            start: list(&["START", "YES", "UNSTOP"]),
            help: list(&["HELP", "INFO"]),
        }
    }
}

/// What happens to a message that matched a rule (a keyword, or the number's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// `webhook = "<name>"`.
    pub webhook: Option<String>,
    /// `reply = "<template>"`: placeholders {from} {to} {keyword} {args} {text} {inbox} {date}.
    pub reply: Option<String>,
    /// `reply_after = "10m"`: the reply waits this long (durably).
    pub reply_after: Option<Duration>,
    /// `reply_window = "09:00-18:00 Asia/Kolkata"`: outside it the reply waits for the next
    /// opening.
    pub reply_window: Option<ReplyWindow>,
    /// `forward_to = ["919800000000", ...]`: digits only; each gets `forward_template`.
    pub forward_to: Vec<String>,
    /// `forward_template`, default "{from}: {text}".
    pub forward_template: String,
    /// `email = ["leads@acme.example", ...]`: each message is forwarded by e-mail to these
    /// addresses (one e-mail, all of them as recipients); replies from them come back as SMS.
    pub email: Vec<String>,
}

/// A daily window in a time zone. `start > end` wraps midnight ("22:00-06:00 Europe/Paris").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyWindow {
    pub start: chrono::NaiveTime,
    pub end: chrono::NaiveTime,
    pub tz: chrono_tz::Tz,
    /// As written, for explanations.
    pub text: String,
}

/// `[[number.keyword]]`: one campaign ("inbox") on a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordRule {
    /// As written (e.g. "JOIN" or "JOIN CLUB"); at most 30 characters.
    pub keyword: String,
    /// `aliases = ["SUBSCRIBE"]`.
    pub aliases: Vec<String>,
    /// `tenant = "acme"`: on a shared short code each keyword belongs to one tenant.
    pub tenant: Option<String>,
    /// `inbox = "summer"`; default: the keyword in lower case.
    pub inbox: String,
    /// `starts = "<RFC 3339>"`: before it, messages fall to the default rule.
    pub starts: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// `expires = "<RFC 3339>"`: from it on, messages get `expiry_reply` and an `expired` event.
    pub expires: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// `expiry_reply = "<template>"`.
    pub expiry_reply: Option<String>,
    pub actions: Actions,
    /// `kind = "inbox"` (default) or `kind = "poll"` with its options.
    pub poll: Option<Poll>,
    /// `subscribe = true` (the keyword opts the sender in) or `subscribe = "double"` (it asks
    /// for a confirmation first); default: no change of consent.
    pub subscribe: Subscribe,
    /// Where the keyword is written in the file, for diagnostics after parsing (1-based; 0 for
    /// a keyword added through the admin API).
    pub line: usize,
    pub col: usize,
}

/// What a keyword does to the sender's consent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Subscribe {
    #[default]
    No,
    /// Opted in at once.
    Single,
    /// Pending until a start word ("YES") arrives within `within`; `confirm_reply` asks.
    Double {
        confirm_reply: String,
        within: Duration,
    },
}

/// `[optout]`, with a number's own `optout = { .. }` over it: confirmations, help and events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsentConfig {
    /// `stop_reply`: the one confirmation of an opt-out.
    pub stop_reply: Option<String>,
    /// `start_reply`: the confirmation of an opt-in.
    pub start_reply: Option<String>,
    /// `help_reply`: the answer to a help word.
    pub help_reply: Option<String>,
    /// `webhook`: where `optin` and `optout` events go.
    pub webhook: Option<String>,
    /// `intent_phrases = true`: also recognise opt-outs written in words ("please stop
    /// texting me"), conservatively, in English. Off by default.
    pub intent_phrases: bool,
}

/// `kind = "poll"`: `options = ["A", "B"]` (or numbered answers "1", "2", ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// Option keys as written (matched case-insensitively against the first word of `args`).
    pub options: Vec<String>,
    /// `vote = "last"` (default: a re-vote replaces the earlier one) or `"first"`.
    pub last_vote_counts: bool,
    /// `invalid_reply = "<template>"`: sent when the answer is not an option ({options}).
    pub invalid_reply: Option<String>,
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
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

impl Diagnostic {
    /// Warnings are returned alongside a valid config; their message starts with this prefix so
    /// that `FILE:LINE:COL: warning: ...` reads like a compiler's and scripts can tell them apart.
    pub const WARNING_PREFIX: &'static str = "warning: ";

    /// True for a warning (the config is still usable), false for an error.
    pub fn is_warning(&self) -> bool {
        self.message.starts_with(Self::WARNING_PREFIX)
    }
}

impl Config {
    /// The number served as `vmn`, compared after the same normalisation as the config (so
    /// "567 678" finds "567678"); `None` for a number this daemon does not serve.
    pub fn number(&self, vmn: &str) -> Option<&Number> {
        // Compared char by char rather than through `normalize_vmn`: this runs for every
        // inbound message and needs no allocation.
        let digits = || vmn.chars().filter(|c| !is_vmn_separator(*c));
        self.numbers.iter().find(|n| n.vmn.chars().eq(digits()))
    }

    /// The `[[carrier]]` called `name`.
    pub fn carrier(&self, name: &str) -> Option<&Carrier> {
        self.carriers.iter().find(|c| c.name == name)
    }

    /// The `[[webhook]]` called `name`.
    pub fn webhook(&self, name: &str) -> Option<&Webhook> {
        self.webhooks.iter().find(|w| w.name == name)
    }
}

/// Reads and validates a file. Ok carries the config and warnings; Err carries every problem
/// found (not just the first), sorted by position, warnings included. Secrets given as `*_env`
/// are read from the process environment.
pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let file = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Err(vec![Diagnostic {
                file,
                line: 1,
                col: 1,
                message: format!("cannot read the config file: {e}"),
            }]);
        }
    };
    match std::str::from_utf8(&bytes) {
        Ok(source) => parse(source, &file, &|k| std::env::var(k).ok()),
        Err(e) => {
            // Point at the first bad byte: everything before it is valid UTF-8, so line and
            // column can be counted on that prefix.
            let valid = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
            let (line, col) = position(&valid, valid.len());
            Err(vec![Diagnostic {
                file,
                line,
                col,
                message: "the config file is not valid UTF-8".to_string(),
            }])
        }
    }
}

/// Same as [`load`] from a string; `file` is the name used in diagnostics. `env` looks up
/// environment variables (so tests need not touch the process env): pass
/// `|k| std::env::var(k).ok()` in production.
pub fn parse(
    source: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut problems = Problems::new(source);
    let (root, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        // The recovered table of a broken document is a guess: checking its meaning would
        // report problems the operator did not make. Syntax first, then the rest.
        report_syntax_errors(&syntax_errors, &mut problems);
        return Err(problems.into_diagnostics(file));
    }
    let raw = read_sections(root.into_inner(), &mut problems);
    let config = validate_config(raw, env, &mut problems);
    match config {
        Some(config) if problems.errors() == 0 => Ok((config, problems.into_diagnostics(file))),
        _ => {
            if problems.errors() == 0 {
                // Unreachable by construction (every `None` above reports why); kept so that
                // a future slip shows up as a message rather than an empty error list.
                problems.error(&(0..0), "the configuration could not be resolved");
            }
            Err(problems.into_diagnostics(file))
        }
    }
}

/// Normalises a VMN as configured: strips blanks, '-', '.', '(', ')'; must then be 6 or 10
/// ASCII digits (a short code or a long code).
pub fn normalize_vmn(s: &str) -> Result<String, String> {
    const WHAT: &str = "a VMN is 6 digits (short code) or 10 digits (long code)";
    let digits: String = s.chars().filter(|c| !is_vmn_separator(*c)).collect();
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_digit()) {
        return Err(format!("VMN {s:?} contains {bad:?}; {WHAT}"));
    }
    match digits.len() {
        6 | 10 => Ok(digits),
        0 => Err(format!("VMN {s:?} has no digits; {WHAT}")),
        n => Err(format!("VMN {s:?} has {n} digits; {WHAT}")),
    }
}

/// Characters operators use to group digits ("567 678", "(98) 7654-3210"), ignored in VMNs.
fn is_vmn_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '-' | '.' | '(' | ')')
}

// ---------------------------------------------------------------------------------------------
// Positions and collected problems
// ---------------------------------------------------------------------------------------------

/// A byte range in the config source.
type Span = Range<usize>;

/// 1-based line and column (in characters) of a byte offset. Offsets past the end or inside a
/// character are clamped, never a panic: spans come from another crate.
fn position(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    // A byte-order mark is invisible in every editor: it must not shift the first line's columns.
    let text = &before[line_start..];
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    (line, text.chars().count() + 1)
}

/// One problem, still as a byte offset.
struct Found {
    at: usize,
    warning: bool,
    /// An error that is a clash with something already defined (another keyword or alias, a
    /// reserved word, another tenant's inbox) rather than a mistake in what is checked: the
    /// admin API answers those with 409 rather than 400.
    conflict: bool,
    message: String,
}

/// Everything found while checking one source, errors and warnings.
struct Problems<'s> {
    source: &'s str,
    found: Vec<Found>,
}

impl<'s> Problems<'s> {
    fn new(source: &'s str) -> Self {
        Problems {
            source,
            found: Vec::new(),
        }
    }

    fn error(&mut self, at: &Span, message: impl Into<String>) {
        self.found.push(Found {
            at: at.start,
            warning: false,
            conflict: false,
            message: message.into(),
        });
    }

    /// An error that is a clash with something already defined, see [`Found::conflict`].
    fn conflict(&mut self, at: &Span, message: impl Into<String>) {
        self.found.push(Found {
            at: at.start,
            warning: false,
            conflict: true,
            message: message.into(),
        });
    }

    fn warning(&mut self, at: &Span, message: impl Into<String>) {
        self.found.push(Found {
            at: at.start,
            warning: true,
            conflict: false,
            message: message.into(),
        });
    }

    fn errors(&self) -> usize {
        self.found.iter().filter(|f| !f.warning).count()
    }

    /// For a table checked at run time, where positions mean nothing to the reader: the
    /// errors and the warnings (in the order of the keys they are about), and whether every
    /// error is a conflict.
    fn into_messages(mut self) -> (Vec<String>, Vec<String>, bool) {
        self.found.sort_by_key(|f| f.at);
        let conflict = self.found.iter().all(|f| f.warning || f.conflict);
        let (warnings, errors): (Vec<Found>, Vec<Found>) =
            self.found.into_iter().partition(|f| f.warning);
        let messages = |found: Vec<Found>| found.into_iter().map(|f| f.message).collect();
        (messages(errors), messages(warnings), conflict)
    }

    /// The 1-based line of a span, for messages that point back at an earlier definition.
    fn line(&self, at: &Span) -> usize {
        position(self.source, at.start).0
    }

    /// Sorted by position; problems at the same place keep the order they were found in.
    fn into_diagnostics(mut self, file: &str) -> Vec<Diagnostic> {
        self.found.sort_by_key(|f| f.at);
        self.found
            .into_iter()
            .map(|f| {
                let (line, col) = position(self.source, f.at);
                let message = if f.warning {
                    format!("{}{}", Diagnostic::WARNING_PREFIX, f.message)
                } else {
                    f.message
                };
                Diagnostic {
                    file: file.to_string(),
                    line,
                    col,
                    message,
                }
            })
            .collect()
    }
}

/// TOML syntax errors, one per line: the parser recovers and goes on, and a single mistake
/// (an unclosed array, say) can echo on the next few characters of the same line.
fn report_syntax_errors(errors: &[toml::de::Error], p: &mut Problems<'_>) {
    let mut seen_lines = Vec::new();
    let mut errors: Vec<(Span, String)> = errors
        .iter()
        .map(|e| {
            let span = e.span().unwrap_or(0..0);
            let mut message = first_line(e.message());
            // toml says "duplicate key" without naming it; the source does.
            if message == "duplicate key" {
                if let Some(key) = p.source.get(span.clone()).filter(|k| !k.is_empty()) {
                    message = format!("duplicate key `{key}`");
                }
            }
            (span, message)
        })
        .collect();
    errors.sort_by_key(|(span, _)| span.start);
    for (span, message) in errors {
        let line = p.line(&span);
        if !seen_lines.contains(&line) {
            seen_lines.push(line);
            p.error(&span, format!("TOML syntax: {message}"));
        }
    }
}

/// The first line of a message, without the caret art some errors carry.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_string()
}

/// A serde error (unknown key, wrong type, missing key) from deserializing one section, reworded
/// in TOML's terms and naming the key it is about. `section` is how the operator wrote the
/// section, e.g. `[[carrier]]`.
fn report_shape_error(e: &toml::de::Error, section: &str, p: &mut Problems<'_>) {
    let span = e.span().unwrap_or(0..0);
    let message = first_line(e.message()).replace("expected i64", "expected an integer");
    // toml keeps the key path private but prints it as a last line "in `a.b`" when the error
    // has no source attached, which is the case for errors from a value deserializer.
    let rendered = e.to_string();
    let key = rendered
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
        .map(str::to_string);
    let place = match &key {
        Some(key) => format!("`{key}`"),
        None => section.to_string(),
    };
    let message = if let Some(rest) = message.strip_prefix("missing field ") {
        format!("missing key {rest} in {place}")
    } else if let Some(rest) = message.strip_prefix("unknown field ") {
        match rest.split_once(", ") {
            Some((name, expected)) => format!("unknown key {name} in {place}; {expected}"),
            None => format!("unknown key {rest} in {place}"),
        }
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        match &key {
            Some(key) => format!("wrong type for `{key}`: {rest}"),
            None => format!("wrong type in {section}: {rest}"),
        }
    } else {
        match &key {
            Some(key) => format!("`{key}`: {message}"),
            None => format!("{section}: {message}"),
        }
    };
    p.error(&span, message);
}

// ---------------------------------------------------------------------------------------------
// The raw layer: the file's shape, positions kept
// ---------------------------------------------------------------------------------------------

/// `[daemon]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    data_dir: Spanned<String>,
    admin_listen: Option<Spanned<String>>,
    admin_token: Option<Spanned<String>>,
    admin_token_env: Option<Spanned<String>>,
    reassembly_timeout: Option<Spanned<String>>,
    dedup_window: Option<Spanned<String>>,
    // Integers are read as i64 (TOML's own type) and range-checked by us: a serde range error
    // would stop the section at the first one and name a Rust type.
    cache_mb: Option<Spanned<i64>>,
    fsync: Option<bool>,
    backlog_in_memory: Option<Spanned<i64>>,
}

/// Keys of `[daemon]`, to recognise one written above the `[daemon]` header.
const DAEMON_KEYS: &[&str] = &[
    "data_dir",
    "admin_listen",
    "admin_token",
    "admin_token_env",
    "reassembly_timeout",
    "dedup_window",
    "cache_mb",
    "fsync",
    "backlog_in_memory",
];

/// One `[[carrier]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCarrier {
    name: Spanned<String>,
    host: Spanned<String>,
    port: Spanned<i64>,
    system_id: Spanned<String>,
    password: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    system_type: Option<Spanned<String>>,
    // A string checked by us rather than a serde enum, for the same reason as integers.
    bind: Option<Spanned<String>>,
    window: Option<Spanned<i64>>,
    enquire_link: Option<Spanned<String>>,
    response_timeout: Option<Spanned<String>>,
    gsm_packed: Option<bool>,
    reconnect_min: Option<Spanned<String>>,
    reconnect_max: Option<Spanned<String>>,
    submit_per_second: Option<Spanned<i64>>,
}

/// One `[[webhook]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Spanned<String>,
    url: Spanned<String>,
    secret: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    retry_for: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
    pipeline: Option<Spanned<i64>>,
    method: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    fields: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    bearer: Option<Spanned<String>>,
    bearer_env: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    fallback_url: Option<Spanned<String>>,
    breaker_failures: Option<Spanned<i64>>,
    breaker_probe: Option<Spanned<String>>,
    on_4xx: Option<Spanned<String>>,
}

/// `[smtp]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: Spanned<String>,
    port: Spanned<i64>,
    tls: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    from: Spanned<String>,
    reply_domain: Spanned<String>,
    lmtp_listen: Spanned<String>,
    timeout: Option<Spanned<String>>,
    retry_for: Option<Spanned<String>>,
    reply_token_ttl: Option<Spanned<String>>,
    subject: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
}

/// One `[[number]]` as written (its `[[number.keyword]]` rules are taken out before this and
/// read one by one, see [`RawNumberEntry`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNumber {
    vmn: Spanned<String>,
    carrier: Option<Spanned<String>>,
    default: Option<Spanned<RawDefault>>,
    receipts: Option<Spanned<String>>,
    /// `optout = { .. }` or `[number.optout]`: this number's consent settings over `[optout]`.
    optout: Option<Spanned<RawOptout>>,
    /// `guard = { .. }`: this number's auto-action guard over `[guard]`.
    guard: Option<Spanned<RawGuard>>,
}

/// `[guard]`, or a number's `guard = { .. }`: every key optional, a number's over the global.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    max_auto_actions: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    loop_repeats: Option<Spanned<i64>>,
}

/// A list of words or phrases (`stop = ["STOP", "STOP ALL"]`).
type RawWordList = Spanned<Vec<Spanned<String>>>;

/// `[optout]`, or a number's `optout = { .. }`, as written: every key optional, a number's key
/// over the global one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptout {
    stop: Option<RawWordList>,
    start: Option<RawWordList>,
    help: Option<RawWordList>,
    stop_extra: Option<RawWordList>,
    start_extra: Option<RawWordList>,
    help_extra: Option<RawWordList>,
    stop_reply: Option<Spanned<String>>,
    start_reply: Option<Spanned<String>>,
    help_reply: Option<Spanned<String>>,
    webhook: Option<Spanned<String>>,
    intent_phrases: Option<bool>,
}

/// `subscribe = true | false | "double"` as written; a string other than "double" is reported
/// by the validation, with the value.
enum RawSubscribe {
    Bool(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSubscribe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSubscribe;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"double\"")
            }

            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<RawSubscribe, E> {
                Ok(RawSubscribe::Bool(value))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawSubscribe, E> {
                Ok(RawSubscribe::Text(text.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `default = { webhook = "crm", reply = "..." }` in a `[[number]]`: the actions for messages
/// that match no keyword.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    webhook: Option<Spanned<String>>,
    reply: Option<Spanned<String>>,
    reply_after: Option<Spanned<String>>,
    reply_window: Option<Spanned<String>>,
    forward_to: Option<Spanned<Vec<Spanned<String>>>>,
    forward_template: Option<Spanned<String>>,
    email: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[number.keyword]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyword {
    keyword: Spanned<String>,
    aliases: Option<Vec<Spanned<String>>>,
    tenant: Option<Spanned<String>>,
    inbox: Option<Spanned<String>>,
    starts: Option<Spanned<RawTime>>,
    expires: Option<Spanned<RawTime>>,
    expiry_reply: Option<Spanned<String>>,
    webhook: Option<Spanned<String>>,
    reply: Option<Spanned<String>>,
    reply_after: Option<Spanned<String>>,
    reply_window: Option<Spanned<String>>,
    forward_to: Option<Spanned<Vec<Spanned<String>>>>,
    forward_template: Option<Spanned<String>>,
    email: Option<Spanned<Vec<Spanned<String>>>>,
    kind: Option<Spanned<String>>,
    options: Option<Spanned<Vec<Spanned<String>>>>,
    vote: Option<Spanned<String>>,
    invalid_reply: Option<Spanned<String>>,
    subscribe: Option<Spanned<RawSubscribe>>,
    confirm_reply: Option<Spanned<String>>,
    confirm_within: Option<Spanned<String>>,
}

/// The action keys shared by `default` and `[[number.keyword]]`, borrowed from either.
struct RawActions<'a> {
    webhook: Option<&'a Spanned<String>>,
    reply: Option<&'a Spanned<String>>,
    reply_after: Option<&'a Spanned<String>>,
    reply_window: Option<&'a Spanned<String>>,
    forward_to: Option<&'a Spanned<Vec<Spanned<String>>>>,
    forward_template: Option<&'a Spanned<String>>,
    email: Option<&'a Spanned<Vec<Spanned<String>>>>,
}

impl RawDefault {
    fn actions(&self) -> RawActions<'_> {
        RawActions {
            webhook: self.webhook.as_ref(),
            reply: self.reply.as_ref(),
            reply_after: self.reply_after.as_ref(),
            reply_window: self.reply_window.as_ref(),
            forward_to: self.forward_to.as_ref(),
            forward_template: self.forward_template.as_ref(),
            email: self.email.as_ref(),
        }
    }
}

impl RawKeyword {
    fn actions(&self) -> RawActions<'_> {
        RawActions {
            webhook: self.webhook.as_ref(),
            reply: self.reply.as_ref(),
            reply_after: self.reply_after.as_ref(),
            reply_window: self.reply_window.as_ref(),
            forward_to: self.forward_to.as_ref(),
            forward_template: self.forward_template.as_ref(),
            email: self.email.as_ref(),
        }
    }
}

/// A date and time as written: a string (`"2026-12-31T23:59:59+05:30"`, as the design shows)
/// or a TOML datetime written without quotes, which toml hands over as a one-entry map.
struct RawTime(String);

impl<'de> Deserialize<'de> for RawTime {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawTime;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a date and time such as \"2026-12-31T23:59:59+05:30\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawTime, E> {
                Ok(RawTime(text.to_string()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawTime, A::Error> {
                match map.next_key::<String>()? {
                    // toml_datetime's private field name: the value is the datetime as text.
                    Some(key) if key.starts_with("$__toml_private") => {
                        Ok(RawTime(map.next_value::<String>()?))
                    }
                    _ => Err(serde::de::Error::invalid_type(
                        serde::de::Unexpected::Map,
                        &self,
                    )),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Names given to the elements of `[[carrier]]` or `[[webhook]]`, read from the table before
/// deserializing it: a carrier with a typo in one key is still a carrier that numbers may name,
/// and reporting "unknown carrier" for it as well would be noise.
struct Names {
    /// "carrier" or "webhook".
    kind: &'static str,
    names: Vec<(String, Span)>,
    /// False when some element's name could not be read; then an unknown name may be that one.
    complete: bool,
}

impl Names {
    fn new(kind: &'static str) -> Self {
        Names {
            kind,
            names: Vec::new(),
            complete: true,
        }
    }

    fn note(&mut self, element: &DeValue<'_>) {
        match element
            .as_table()
            .and_then(|t| t.get("name"))
            .and_then(|v| Some((v.get_ref().as_str()?, v.span())))
        {
            Some((name, span)) => self.names.push((name.to_string(), span)),
            None => self.complete = false,
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|(n, _)| n == name)
    }

    /// Reports a reference to an undefined name, listing the ones that exist.
    fn check_reference(&self, name: &Spanned<String>, key: &str, p: &mut Problems<'_>) -> bool {
        let wanted = name.get_ref();
        if self.contains(wanted) {
            return true;
        }
        if self.complete {
            let kind = self.kind;
            let known = if self.names.is_empty() {
                format!("no [[{kind}]] is defined")
            } else {
                let list: Vec<String> = self.names.iter().map(|(n, _)| format!("{n:?}")).collect();
                format!("known {kind}s: {}", list.join(", "))
            };
            p.error(
                &name.span(),
                format!("`{key}` names unknown {kind} {wanted:?}; {known}"),
            );
        }
        false
    }

    /// Reports every name defined twice (at the second definition) and every empty name.
    fn check_unique(&self, p: &mut Problems<'_>) {
        for (i, (name, span)) in self.names.iter().enumerate() {
            if name.is_empty() {
                p.error(span, format!("{} name must not be empty", self.kind));
            } else if let Some((_, first)) = self.names[..i].iter().find(|(n, _)| n == name) {
                let line = p.line(first);
                p.error(
                    span,
                    format!(
                        "duplicate {} name {name:?} (first defined at line {line})",
                        self.kind
                    ),
                );
            }
        }
    }
}

/// Every section as written, each element deserialized on its own.
struct RawConfig {
    /// `Some(None)` when `[daemon]` was there but could not be deserialized (already reported).
    daemon: Option<Option<(Span, RawDaemon)>>,
    carriers: Vec<(Span, RawCarrier)>,
    webhooks: Vec<(Span, RawWebhook)>,
    numbers: Vec<RawNumberEntry>,
    /// `[optout]`; `Some(None)` when it was there but could not be read (already reported).
    optout: Option<Option<RawOptout>>,
    /// `[smtp]`; `Some(None)` when it was there but could not be read (already reported).
    smtp: Option<Option<RawSmtp>>,
    /// Whether `email` actions have somewhere to go: `[smtp]` is written (even if it has a
    /// mistake of its own, so that `email` is not reported a second time).
    smtp_defined: bool,
    /// `[guard]`; `Some(None)` when it was there but could not be read (already reported).
    guard: Option<Option<RawGuard>>,
    carrier_names: Names,
    webhook_names: Names,
}

/// One element of `[[number]]`: the number itself and its keyword rules, each read on its own
/// so that a mistake in one does not hide the others.
struct RawNumberEntry {
    /// `None` when the number's own keys could not be read (already reported); its keyword
    /// rules are still checked, without what depends on the number (its carrier).
    number: Option<RawNumber>,
    keywords: Vec<RawKeyword>,
}

/// Splits the document into its sections and deserializes each; reports wrong shapes and
/// unknown sections.
fn read_sections(root: DeTable<'_>, p: &mut Problems<'_>) -> RawConfig {
    let mut raw = RawConfig {
        daemon: None,
        carriers: Vec::new(),
        webhooks: Vec::new(),
        numbers: Vec::new(),
        optout: None,
        smtp: None,
        smtp_defined: false,
        guard: None,
        carrier_names: Names::new("carrier"),
        webhook_names: Names::new("webhook"),
    };
    for (key, value) in root {
        let key_span = key.span();
        let key = key.into_inner();
        match key.as_ref() {
            "daemon" => {
                let span = value.span();
                raw.daemon = Some(
                    expect_table(value, "daemon", p)
                        .and_then(|v| shape::<RawDaemon>(v, "[daemon]", p))
                        .map(|d| (span, d)),
                );
            }
            "carrier" => {
                for element in expect_array_of_tables(value, "carrier", p) {
                    raw.carrier_names.note(element.get_ref());
                    let span = element.span();
                    if let Some(c) = shape::<RawCarrier>(element, "[[carrier]]", p) {
                        raw.carriers.push((span, c));
                    }
                }
            }
            "webhook" => {
                for element in expect_array_of_tables(value, "webhook", p) {
                    raw.webhook_names.note(element.get_ref());
                    let span = element.span();
                    if let Some(w) = shape::<RawWebhook>(element, "[[webhook]]", p) {
                        raw.webhooks.push((span, w));
                    }
                }
            }
            "optout" => {
                raw.optout = Some(
                    expect_table(value, "optout", p)
                        .and_then(|v| shape::<RawOptout>(v, "[optout]", p)),
                );
            }
            "smtp" => {
                raw.smtp_defined = true;
                raw.smtp = Some(
                    expect_table(value, "smtp", p).and_then(|v| shape::<RawSmtp>(v, "[smtp]", p)),
                );
            }
            "guard" => {
                raw.guard = Some(
                    expect_table(value, "guard", p)
                        .and_then(|v| shape::<RawGuard>(v, "[guard]", p)),
                );
            }
            "number" => {
                for mut element in expect_array_of_tables(value, "number", p) {
                    let keywords = take_keywords(&mut element, p);
                    let number = shape::<RawNumber>(element, "[[number]]", p);
                    raw.numbers.push(RawNumberEntry { number, keywords });
                }
            }
            other => {
                if DAEMON_KEYS.contains(&other) {
                    p.error(
                        &key_span,
                        format!("`{other}` belongs in [daemon]; put it below the [daemon] header"),
                    );
                } else {
                    p.error(
                        &key_span,
                        format!(
                            "unknown section `{other}`; expected [daemon], [[carrier]], [[webhook]], [[number]], [optout], [guard] or [smtp]"
                        ),
                    );
                }
            }
        }
    }
    raw
}

/// Takes `[[number.keyword]]` out of a number's table and reads each rule on its own, so that
/// an unknown key in one rule hides neither the other rules nor the number's own keys.
fn take_keywords(element: &mut Spanned<DeValue<'_>>, p: &mut Problems<'_>) -> Vec<RawKeyword> {
    let DeValue::Table(table) = element.get_mut() else {
        return Vec::new();
    };
    // A TOML table holds each key once, so one removal is enough.
    let Some(value) = table.remove("keyword") else {
        return Vec::new();
    };
    expect_array_of_tables(value, "number.keyword", p)
        .into_iter()
        .filter_map(|rule| shape::<RawKeyword>(rule, "[[number.keyword]]", p))
        .collect()
}

/// `[name]`: a single table.
fn expect_table<'i>(
    value: Spanned<DeValue<'i>>,
    name: &str,
    p: &mut Problems<'_>,
) -> Option<Spanned<DeValue<'i>>> {
    match value.get_ref() {
        DeValue::Table(_) => Some(value),
        DeValue::Array(_) => {
            p.error(
                &value.span(),
                format!("[{name}] is a single table: write [{name}], not [[{name}]]"),
            );
            None
        }
        other => {
            p.error(
                &value.span(),
                format!(
                    "`{name}` must be a table ([{name}]), not a {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

/// `[[name]]`: an array of tables (an inline array of inline tables is the same thing in TOML).
fn expect_array_of_tables<'i>(
    value: Spanned<DeValue<'i>>,
    name: &str,
    p: &mut Problems<'_>,
) -> Vec<Spanned<DeValue<'i>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(elements) => elements
            .into_iter()
            .filter(|element| {
                let is_table = element.get_ref().is_table();
                if !is_table {
                    p.error(
                        &element.span(),
                        format!(
                            "each [[{name}]] must be a table, not a {}",
                            element.get_ref().type_str()
                        ),
                    );
                }
                is_table
            })
            .collect(),
        DeValue::Table(_) => {
            p.error(
                &span,
                format!("there may be several of these: write [[{name}]], not [{name}]"),
            );
            Vec::new()
        }
        other => {
            p.error(
                &span,
                format!(
                    "`{name}` must be written as [[{name}]] tables, not a {}",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    }
}

/// Deserializes one section or element, reporting serde's complaint with its position.
fn shape<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    section: &str,
    p: &mut Problems<'_>,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(t) => Some(t),
        Err(e) => {
            report_shape_error(&e, section, p);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation and resolution: what serde cannot see
// ---------------------------------------------------------------------------------------------

/// Checks everything and builds the config; `None` when anything was wrong (all reported).
fn validate_config(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems<'_>,
) -> Option<Config> {
    let daemon = match &raw.daemon {
        Some(Some((span, d))) => validate_daemon(span, d, env, p),
        // Present but malformed: already reported.
        Some(None) => None,
        None => {
            p.error(
                &(0..0),
                "missing [daemon] section; it must give at least `data_dir`",
            );
            None
        }
    };

    raw.carrier_names.check_unique(p);
    raw.webhook_names.check_unique(p);

    let carriers: Vec<Option<Carrier>> = raw
        .carriers
        .iter()
        .map(|(span, c)| validate_carrier(span, c, env, p))
        .collect();
    let webhooks: Vec<Option<Webhook>> = raw
        .webhooks
        .iter()
        .map(|(_, w)| validate_webhook(w, env, p))
        .collect();
    let numbers = validate_numbers(&raw, p);
    let smtp = match &raw.smtp {
        None => Some(None),
        Some(Some(s)) => validate_smtp(s, env, p).map(Some),
        // Present but malformed: already reported.
        Some(None) => None,
    };

    Some(Config {
        daemon: daemon?,
        carriers: carriers.into_iter().collect::<Option<_>>()?,
        webhooks: webhooks.into_iter().collect::<Option<_>>()?,
        numbers: numbers.into_iter().collect::<Option<_>>()?,
        smtp: smtp?,
    })
}

/// A secret given literally or through an environment variable, and where it was given.
struct Secret {
    value: String,
    at: Span,
    /// The variable's name when it came from the environment, for messages.
    env_name: Option<String>,
}

impl Secret {
    /// How to refer to this secret in a message without printing it.
    fn origin(&self, key: &str) -> String {
        match &self.env_name {
            Some(var) => format!("the value of environment variable {var} (`{key}_env`)"),
            None => format!("`{key}`"),
        }
    }
}

/// Resolves `key` / `key_env`. `Some(None)` when neither is given; `None` when there is a
/// problem (reported). Values are never printed: they are secrets.
fn validate_secret(
    literal: Option<&Spanned<String>>,
    from_env: Option<&Spanned<String>>,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems<'_>,
) -> Option<Option<Secret>> {
    match (literal, from_env) {
        (None, None) => Some(None),
        (Some(_), Some(var)) => {
            p.error(
                &var.span(),
                format!("give either `{key}` or `{key}_env`, not both"),
            );
            None
        }
        (Some(value), None) => Some(Some(Secret {
            value: value.get_ref().clone(),
            at: value.span(),
            env_name: None,
        })),
        (None, Some(var)) => {
            let name = var.get_ref();
            // Names that cannot be environment variables would only ever read as "not set".
            if name.is_empty() || name.contains(['=', '\0']) {
                p.error(
                    &var.span(),
                    format!("`{key}_env` must name an environment variable, got {name:?}"),
                );
                return None;
            }
            match env(name) {
                Some(value) => Some(Some(Secret {
                    value,
                    at: var.span(),
                    env_name: Some(name.clone()),
                })),
                None => {
                    p.error(
                        &var.span(),
                        format!("environment variable {name} (from `{key}_env`) is not set"),
                    );
                    None
                }
            }
        }
    }
}

/// An optional duration with its default; `allow_zero` is false where zero would mean a busy
/// loop or an instant timeout.
fn validate_duration(
    value: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
    allow_zero: bool,
    p: &mut Problems<'_>,
) -> Option<Duration> {
    let Some(value) = value else {
        return Some(default);
    };
    match parse_duration(value.get_ref()) {
        Ok(d) if d.is_zero() && !allow_zero => {
            p.error(&value.span(), format!("`{key}` must be longer than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(message) => {
            p.error(&value.span(), format!("`{key}`: {message}"));
            None
        }
    }
}

/// An optional integer with its default, in an inclusive range.
fn validate_integer(
    value: Option<&Spanned<i64>>,
    key: &str,
    default: i64,
    range: RangeInclusive<i64>,
    p: &mut Problems<'_>,
) -> Option<i64> {
    let Some(value) = value else {
        return Some(default);
    };
    let n = *value.get_ref();
    if range.contains(&n) {
        Some(n)
    } else {
        p.error(
            &value.span(),
            format!(
                "`{key}` must be between {} and {}, got {n}",
                range.start(),
                range.end()
            ),
        );
        None
    }
}

/// Checks `[daemon]` and resolves its defaults and token.
fn validate_daemon(
    at: &Span,
    raw: &RawDaemon,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems<'_>,
) -> Option<Daemon> {
    let data_dir = if raw.data_dir.get_ref().trim().is_empty() {
        p.error(&raw.data_dir.span(), "`data_dir` must not be empty");
        None
    } else {
        Some(PathBuf::from(raw.data_dir.get_ref()))
    };

    let admin_listen = match &raw.admin_listen {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8640))),
        Some(text) => match text.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                p.error(
                    &text.span(),
                    format!(
                        "`admin_listen` {:?} is not a socket address such as \"127.0.0.1:8640\" or \"[::1]:8640\"",
                        text.get_ref()
                    ),
                );
                None
            }
        },
    };

    let token = validate_secret(
        raw.admin_token.as_ref(),
        raw.admin_token_env.as_ref(),
        "admin_token",
        env,
        p,
    );
    let token = match token {
        Some(Some(secret)) => {
            // The token travels in an HTTP header: it must be a single visible ASCII word.
            if secret.value.is_empty() {
                p.error(
                    &secret.at,
                    format!("{} is empty", secret.origin("admin_token")),
                );
                None
            } else if !secret.value.bytes().all(|b| b.is_ascii_graphic()) {
                p.error(
                    &secret.at,
                    format!(
                        "{} must be visible ASCII without spaces (it is sent as a bearer token)",
                        secret.origin("admin_token")
                    ),
                );
                None
            } else {
                Some(Some(secret.value))
            }
        }
        other => other.map(|_| None),
    };

    // Only when the token itself was fine: a missing token is then the whole story.
    if let (Some(addr), Some(None)) = (&admin_listen, &token) {
        if !addr.ip().is_loopback() {
            let span = raw.admin_listen.as_ref().map_or(at.clone(), |a| a.span());
            p.error(
                &span,
                format!(
                    "`admin_listen` {addr} is not a loopback address: set `admin_token` or `admin_token_env` so the admin API requires a bearer token"
                ),
            );
        }
    }

    let reassembly_timeout = validate_duration(
        raw.reassembly_timeout.as_ref(),
        "reassembly_timeout",
        Duration::from_secs(600),
        false,
        p,
    );
    let dedup_window = match &raw.dedup_window {
        None => Some(None),
        Some(text) => {
            match validate_duration(Some(text), "dedup_window", Duration::ZERO, false, p) {
                // One entry per conversation is kept for the window: a short one.
                Some(window) if window > MAX_DEDUP_WINDOW => {
                    p.error(
                        &text.span(),
                        "`dedup_window` folds a carrier's redeliveries, which come within minutes: at most \"1h\"",
                    );
                    None
                }
                other => other.map(Some),
            }
        }
    };
    let cache_mb = validate_integer(raw.cache_mb.as_ref(), "cache_mb", 16, 1..=65536, p);
    let backlog_in_memory = validate_integer(
        raw.backlog_in_memory.as_ref(),
        "backlog_in_memory",
        16_384,
        1..=1_000_000,
        p,
    );

    Some(Daemon {
        data_dir: data_dir?,
        admin_listen: admin_listen?,
        admin_token: token?,
        reassembly_timeout: reassembly_timeout?,
        dedup_window: dedup_window?,
        cache_mb: u64::try_from(cache_mb?).ok()?,
        fsync: raw.fsync.unwrap_or(true),
        backlog_in_memory: usize::try_from(backlog_in_memory?).ok()?,
    })
}

/// A host to connect to: an IP address or a DNS name, without a port.
fn validate_host(host: &Spanned<String>, p: &mut Problems<'_>) -> Option<String> {
    let text = host.get_ref();
    // "[::1]" is how addresses are written in URLs; the resolver wants "::1".
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Some(unbracketed.to_string());
    }
    let problem = if text.is_empty() {
        Some("`host` must not be empty".to_string())
    } else if text.contains(':') {
        Some(format!(
            "`host` {text:?} is not a host name or IP address; give the port in `port`"
        ))
    } else if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        Some(format!("`host` {text:?} is not a host name or IP address"))
    } else {
        None
    };
    match problem {
        Some(message) => {
            p.error(&host.span(), message);
            None
        }
        None => Some(text.clone()),
    }
}

/// An SMPP C-Octet String field: ASCII without NUL and at most `max` characters (SMPP 3.4
/// sizes include the terminating NUL, so `max` is one less than the spec's figure).
fn check_smpp_string(value: &str, what: &str, max: usize) -> Result<(), String> {
    if !value.bytes().all(|b| b.is_ascii() && b != 0) {
        Err(format!("{what} must be ASCII (SMPP 3.4)"))
    } else if value.len() > max {
        Err(format!(
            "{what} is {} characters long; SMPP 3.4 allows at most {max}",
            value.len()
        ))
    } else {
        Ok(())
    }
}

/// Checks one `[[carrier]]` (its name's uniqueness is checked with the others).
fn validate_carrier(
    at: &Span,
    raw: &RawCarrier,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems<'_>,
) -> Option<Carrier> {
    let name = raw.name.get_ref();
    let host = validate_host(&raw.host, p);
    let port = validate_integer(Some(&raw.port), "port", 0, 1..=65535, p);

    let system_id = raw.system_id.get_ref();
    let system_id_ok = if system_id.is_empty() {
        p.error(&raw.system_id.span(), "`system_id` must not be empty");
        false
    } else if let Err(message) = check_smpp_string(system_id, "`system_id`", 15) {
        p.error(&raw.system_id.span(), message);
        false
    } else {
        true
    };

    let password = match validate_secret(
        raw.password.as_ref(),
        raw.password_env.as_ref(),
        "password",
        env,
        p,
    ) {
        Some(Some(secret)) => {
            match check_smpp_string(&secret.value, &secret.origin("password"), 8) {
                Ok(()) => Some(secret.value),
                Err(message) => {
                    p.error(&secret.at, message);
                    None
                }
            }
        }
        Some(None) => {
            // An SMSC that needs no password still gets an explicit `password = ""`: a
            // forgotten line should not bind with an empty one.
            p.error(
                at,
                format!("carrier {name:?} has no password: set `password` or `password_env`"),
            );
            None
        }
        None => None,
    };

    let system_type = match &raw.system_type {
        None => Some(String::new()),
        Some(text) => match check_smpp_string(text.get_ref(), "`system_type`", 12) {
            Ok(()) => Some(text.get_ref().clone()),
            Err(message) => {
                p.error(&text.span(), message);
                None
            }
        },
    };

    let bind = match &raw.bind {
        None => Some(BindMode::Transceiver),
        Some(text) => match text.get_ref().as_str() {
            "transceiver" => Some(BindMode::Transceiver),
            "receiver" => Some(BindMode::Receiver),
            other => {
                p.error(
                    &text.span(),
                    format!("`bind` must be \"transceiver\" or \"receiver\", got {other:?}"),
                );
                None
            }
        },
    };

    let window = validate_integer(raw.window.as_ref(), "window", 32, 1..=1000, p);
    let submit_per_second = validate_integer(
        raw.submit_per_second.as_ref(),
        "submit_per_second",
        50,
        1..=10_000,
        p,
    );
    let enquire_link = validate_duration(
        raw.enquire_link.as_ref(),
        "enquire_link",
        Duration::from_secs(30),
        false,
        p,
    );
    let response_timeout = validate_duration(
        raw.response_timeout.as_ref(),
        "response_timeout",
        Duration::from_secs(10),
        false,
        p,
    );
    let reconnect_min = validate_duration(
        raw.reconnect_min.as_ref(),
        "reconnect_min",
        Duration::from_secs(1),
        false,
        p,
    );
    let reconnect_max = validate_duration(
        raw.reconnect_max.as_ref(),
        "reconnect_max",
        Duration::from_secs(60),
        false,
        p,
    );
    if let (Some(min), Some(max)) = (reconnect_min, reconnect_max) {
        if max < min {
            // Point at whichever of the two the operator wrote (max if both).
            let span = raw
                .reconnect_max
                .as_ref()
                .or(raw.reconnect_min.as_ref())
                .map_or(at.clone(), |s| s.span());
            p.error(
                &span,
                format!(
                    "`reconnect_max` ({}) must be at least `reconnect_min` ({})",
                    show_duration(max),
                    show_duration(min)
                ),
            );
        }
    }

    let reconnect_ok = matches!((reconnect_min, reconnect_max), (Some(a), Some(b)) if a <= b);
    if !system_id_ok || !reconnect_ok || name.is_empty() {
        return None;
    }
    Some(Carrier {
        name: name.clone(),
        host: host?,
        port: u16::try_from(port?).ok()?,
        system_id: system_id.clone(),
        password: password?,
        system_type: system_type?,
        bind: bind?,
        window: u32::try_from(window?).ok()?,
        enquire_link: enquire_link?,
        response_timeout: response_timeout?,
        gsm_packed: raw.gsm_packed.unwrap_or(false),
        reconnect_min: reconnect_min?,
        reconnect_max: reconnect_max?,
        submit_per_second: u32::try_from(submit_per_second?).ok()?,
    })
}

/// A duration in the config's own syntax ("10m", "1500ms"), for messages and the admin API.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Checks a webhook URL: `http[s]://host[:port]/path`. Returns it with the scheme in lower case
/// and a path of at least `/`.
fn validate_url(url: &str) -> Result<String, String> {
    const SHAPE: &str = "http[s]://host[:port]/path";
    let lower = url.to_ascii_lowercase();
    let Some(scheme) = ["http://", "https://"]
        .into_iter()
        .find(|scheme| lower.starts_with(scheme))
    else {
        return Err(format!("webhook `url` {url:?} must look like {SHAPE}"));
    };
    // `to_ascii_lowercase` keeps byte offsets, so the prefix length is valid in `url` too.
    let rest = &url[scheme.len()..];
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "webhook `url` {url:?} must not contain spaces or control characters"
        ));
    }
    if url.contains('#') {
        return Err(format!(
            "webhook `url` {url:?} has a #fragment, which is never sent to the server"
        ));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return Err(format!(
            "webhook `url` {url:?} carries credentials; give them as `username` and `password` (or `bearer`) instead"
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return Err(format!("webhook `url` {url:?} has an unclosed '['"));
        };
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "webhook `url` {url:?}: [{inside}] is not an IPv6 address"
            ));
        }
        match after {
            "" => (authority, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (&authority[..authority.len() - after.len()], Some(port)),
                None => return Err(format!("webhook `url` {url:?} must look like {SHAPE}")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("webhook `url` {url:?} has no host"));
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "webhook `url` {url:?}: {host:?} is not a host name or IP address"
        ));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "webhook `url` {url:?}: port {port:?} must be a number from 1 to 65535"
                ));
            }
        }
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let normalised = format!("{scheme}{authority}{path}");
    // The request is built from the URI as the HTTP stack parses it: what it refuses ('<',
    // '>', '`', '{', '}', '|', '^', '"', non-ASCII) would make every attempt fail.
    if let Err(e) = normalised.parse::<hyper::Uri>() {
        return Err(format!(
            "webhook `url` {url:?} is not a valid URI ({e}); percent-encode characters such as < > ` {{ }} | ^ \" and non-ASCII ones"
        ));
    }
    Ok(normalised)
}

/// Checks one `[[webhook]]` (its name's uniqueness is checked with the others).
fn validate_webhook(
    raw: &RawWebhook,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems<'_>,
) -> Option<Webhook> {
    let name = raw.name.get_ref();
    let url = match validate_url(raw.url.get_ref()) {
        Ok(url) => Some(url),
        Err(message) => {
            p.error(&raw.url.span(), message);
            None
        }
    };
    let secret = match validate_secret(
        raw.secret.as_ref(),
        raw.secret_env.as_ref(),
        "secret",
        env,
        p,
    ) {
        Some(Some(secret)) if secret.value.is_empty() => {
            p.error(
                &secret.at,
                format!(
                    "{} is empty; remove it to send unsigned requests",
                    secret.origin("secret")
                ),
            );
            None
        }
        other => other.map(|s| s.map(|s| s.value)),
    };
    let retry_for = validate_duration(
        raw.retry_for.as_ref(),
        "retry_for",
        Duration::from_secs(86_400),
        // Zero is meaningful: one attempt, then the dead-letter list.
        true,
        p,
    );
    let timeout = validate_duration(
        raw.timeout.as_ref(),
        "timeout",
        Duration::from_secs(10),
        false,
        p,
    );
    let concurrency = validate_integer(raw.concurrency.as_ref(), "concurrency", 32, 1..=1024, p);
    let mut pipeline = validate_integer(raw.pipeline.as_ref(), "pipeline", 1, 1..=64, p);
    if let (Some(depth), Some(at)) = (pipeline, raw.pipeline.as_ref()) {
        // Only requests in flight together can share a connection: `concurrency` caps them.
        let allowed = concurrency.unwrap_or(32);
        if depth > 1 && allowed < 2 {
            p.error(
                &at.span(),
                format!("`pipeline = {depth}` sends several requests on one connection, but `concurrency = 1` lets only one be in flight: nothing would be pipelined; raise `concurrency` or remove `pipeline`"),
            );
            pipeline = None;
        } else if depth > allowed {
            p.warning(
                &at.span(),
                format!("`pipeline = {depth}`: with `concurrency = {allowed}` at most {allowed} requests are in flight, so connections carry at most {allowed} at a time"),
            );
        }
    }
    let method = validate_webhook_method(raw, p);
    let fields = validate_webhook_fields(raw, p);
    let headers = validate_webhook_headers(raw, p);
    let auth = validate_webhook_auth(raw, env, p);
    let ca_file = raw.ca_file.as_ref().map(|path| {
        let problem = read_pem_certificates(Path::new(path.get_ref())).err();
        if let Some(problem) = &problem {
            p.error(&path.span(), format!("`ca_file`: {problem}"));
        }
        problem.is_none().then(|| PathBuf::from(path.get_ref()))
    });
    let fallback_url = raw.fallback_url.as_ref().map(|f| {
        validate_url(f.get_ref())
            .map_err(|message| {
                p.error(
                    &f.span(),
                    message.replacen("webhook `url`", "`fallback_url`", 1),
                )
            })
            .ok()
    });
    let breaker_failures = validate_integer(
        raw.breaker_failures.as_ref(),
        "breaker_failures",
        10,
        0..=100_000,
        p,
    );
    let breaker_probe = validate_duration(
        raw.breaker_probe.as_ref(),
        "breaker_probe",
        Duration::from_secs(30),
        false,
        p,
    );
    let on_4xx = match raw.on_4xx.as_ref() {
        None => Some(On4xx::DeadLetter),
        Some(v) => match v.get_ref().as_str() {
            "dead_letter" => Some(On4xx::DeadLetter),
            "retry" => Some(On4xx::Retry),
            other => {
                p.error(
                    &v.span(),
                    format!("`on_4xx` must be \"dead_letter\" or \"retry\", got {other:?}"),
                );
                None
            }
        },
    };
    if name.is_empty() {
        return None;
    }
    Some(Webhook {
        name: name.clone(),
        url: url?,
        secret: secret?,
        retry_for: retry_for?,
        timeout: timeout?,
        concurrency: usize::try_from(concurrency?).ok()?,
        pipeline: usize::try_from(pipeline?).ok()?,
        method: method?,
        fields: fields?,
        headers: headers?,
        auth: auth?,
        ca_file: ca_file.map_or(Some(None), |c| c.map(Some))?,
        fallback_url: fallback_url.map_or(Some(None), |f| f.map(Some))?,
        breaker_failures: u32::try_from(breaker_failures?).ok()?,
        breaker_probe: breaker_probe?,
        on_4xx: on_4xx?,
    })
}

/// `method` (POST or GET) and `format` (json or form, POST only).
fn validate_webhook_method(raw: &RawWebhook, p: &mut Problems<'_>) -> Option<WebhookMethod> {
    let get = match raw.method.as_ref() {
        None => false,
        Some(m) => match m.get_ref().to_ascii_uppercase().as_str() {
            "POST" => false,
            "GET" => true,
            other => {
                p.error(
                    &m.span(),
                    format!("`method` must be \"POST\" or \"GET\", got {other:?}"),
                );
                return None;
            }
        },
    };
    match (get, raw.format.as_ref()) {
        (true, Some(f)) => {
            p.error(
                &f.span(),
                "a GET sends its fields as query parameters: remove `format` (it is for POST)",
            );
            None
        }
        (true, None) => Some(WebhookMethod::Get),
        (false, None) => Some(WebhookMethod::PostJson),
        (false, Some(f)) => match f.get_ref().as_str() {
            "json" => Some(WebhookMethod::PostJson),
            "form" => Some(WebhookMethod::PostForm),
            other => {
                p.error(
                    &f.span(),
                    format!("`format` must be \"json\" or \"form\", got {other:?}"),
                );
                None
            }
        },
    }
}

/// `fields = { name = "template" }`: names a receiver can read, templates over the payload.
fn validate_webhook_fields(
    raw: &RawWebhook,
    p: &mut Problems<'_>,
) -> Option<Option<Vec<(String, String)>>> {
    let Some(fields) = raw.fields.as_ref() else {
        return Some(None);
    };
    if fields.get_ref().is_empty() {
        p.error(
            &fields.span(),
            "`fields` is empty: name at least one field, or remove it to send the whole payload",
        );
        return None;
    }
    let mut ok = true;
    for (name, template) in fields.get_ref() {
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            p.error(
                &template.span(),
                format!("`fields`: {name:?} is not a usable field name"),
            );
            ok = false;
        }
        ok &= template_placeholders_ok(template.get_ref(), WEBHOOK_FIELD_PLACEHOLDERS)
            .map_err(|message| p.error(&template.span(), format!("`fields.{name}`: {message}")))
            .is_ok();
    }
    ok.then(|| {
        Some(
            fields
                .get_ref()
                .iter()
                .map(|(name, t)| (name.clone(), t.get_ref().clone()))
                .collect(),
        )
    })
}

/// Headers vmnd sets itself: a config may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
    "authorization",
    "vmnd-signature",
    "vmnd-event-id",
];

/// `headers = { "X-Api-Key" = ".." }`: valid HTTP, and none of the ones vmnd sets.
fn validate_webhook_headers(
    raw: &RawWebhook,
    p: &mut Problems<'_>,
) -> Option<Vec<(String, String)>> {
    let Some(headers) = raw.headers.as_ref() else {
        return Some(Vec::new());
    };
    let mut ok = true;
    for (name, value) in headers.get_ref() {
        let lower = name.to_ascii_lowercase();
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            p.error(
                &value.span(),
                format!("`headers`: {name:?} is not a valid HTTP header name"),
            );
            ok = false;
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            let hint = if lower == "authorization" {
                " (use `bearer`, or `username` and `password`)"
            } else {
                ""
            };
            p.error(
                &value.span(),
                format!("`headers`: {name} is set by vmnd and cannot be configured{hint}"),
            );
            ok = false;
        } else if hyper::header::HeaderValue::from_str(value.get_ref()).is_err() {
            p.error(
                &value.span(),
                format!("`headers.{name}`: the value has characters a header cannot carry"),
            );
            ok = false;
        }
    }
    ok.then(|| {
        headers
            .get_ref()
            .iter()
            .map(|(n, v)| (n.clone(), v.get_ref().clone()))
            .collect()
    })
}

/// `bearer`/`bearer_env`, or `username` with `password`/`password_env`; not both kinds.
fn validate_webhook_auth(
    raw: &RawWebhook,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems<'_>,
) -> Option<Option<WebhookAuth>> {
    let bearer = validate_secret(
        raw.bearer.as_ref(),
        raw.bearer_env.as_ref(),
        "bearer",
        env,
        p,
    );
    let password = validate_secret(
        raw.password.as_ref(),
        raw.password_env.as_ref(),
        "password",
        env,
        p,
    );
    let (bearer, password) = (bearer?, password?);
    match (bearer, raw.username.as_ref(), password) {
        (None, None, None) => Some(None),
        (Some(token), None, None) => {
            if token.value.is_empty() || hyper::header::HeaderValue::from_str(&token.value).is_err()
            {
                p.error(
                    &token.at,
                    format!(
                        "{} is empty or has characters a header cannot carry",
                        token.origin("bearer")
                    ),
                );
                return None;
            }
            Some(Some(WebhookAuth::Bearer(token.value)))
        }
        (Some(token), _, _) => {
            p.error(
                &token.at,
                "give either `bearer` or `username` and `password`, not both",
            );
            None
        }
        (None, Some(user), Some(password)) => {
            if user.get_ref().is_empty() || user.get_ref().contains(':') {
                p.error(
                    &user.span(),
                    "`username` must be non-empty and must not contain ':' (HTTP basic auth)",
                );
                return None;
            }
            Some(Some(WebhookAuth::Basic {
                username: user.get_ref().clone(),
                password: password.value,
            }))
        }
        (None, Some(user), None) => {
            p.error(
                &user.span(),
                "`username` needs `password` or `password_env`",
            );
            None
        }
        (None, None, Some(password)) => {
            p.error(&password.at, "`password` needs a `username`");
            None
        }
    }
}

/// The certificates of a PEM file (for `ca_file`), or why there are none.
pub fn read_pem_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    // PEM is only base64 around the certificate: parse each as a trust anchor, as the TLS
    // stack will when it connects, so a damaged one is refused here and not at the first
    // connection (where the webhook or the mail relay would fall back or stop).
    let mut roots = rustls::RootCertStore::empty();
    for (n, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                n + 1
            )
        })?;
    }
    Ok(certs)
}

/// An e-mail address as configured (`email = [...]`): a bare `user@domain`, checked by lettre's
/// parser (the one that sends it), returned trimmed.
pub fn normalize_email_address(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.contains(['<', '>']) {
        return Err(format!(
            "{text:?}: write the bare address (user@domain), without a display name or <>"
        ));
    }
    match trimmed.parse::<lettre::Address>() {
        Ok(address) => Ok(address.to_string()),
        Err(e) => Err(format!("{text:?} is not an e-mail address ({e})")),
    }
}

/// A DNS domain for `reply_domain`: letters, digits and '-' in dot-separated labels of 1 to 63
/// characters, at most 253 in all.
fn check_domain(domain: &str) -> Result<(), String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{domain:?} is not a domain name such as \"reply.example.net\""
        ))
    }
}

/// Reads `[smtp] ca_file`: one or more PEM certificates, as lettre will load them.
fn read_ca_file(path: &str) -> Result<Vec<u8>, String> {
    read_pem_certificates(Path::new(path))?;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    lettre::transport::smtp::client::Certificate::from_pem(&pem)
        .map_err(|e| format!("{path:?}: {e}"))?;
    Ok(pem)
}

/// Checks `[smtp]` and resolves its defaults and password.
fn validate_smtp(
    raw: &RawSmtp,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems<'_>,
) -> Option<Smtp> {
    let host = validate_host(&raw.host, p);
    let port = validate_integer(Some(&raw.port), "port", 0, 1..=65535, p);
    let tls = match &raw.tls {
        None => Some(SmtpTls::None),
        Some(t) => match t.get_ref().as_str() {
            "none" => Some(SmtpTls::None),
            "starttls" => Some(SmtpTls::StartTls),
            "tls" => Some(SmtpTls::Tls),
            other => {
                p.error(
                    &t.span(),
                    format!("`tls` must be \"none\", \"starttls\" or \"tls\", got {other:?}"),
                );
                None
            }
        },
    };
    let ca_pem = match &raw.ca_file {
        None => Some(None),
        Some(path) => match read_ca_file(path.get_ref()) {
            Ok(pem) => {
                if tls == Some(SmtpTls::None) {
                    p.warning(
                        &path.span(),
                        "`ca_file` is only used with tls = \"starttls\" or \"tls\"",
                    );
                }
                Some(Some(pem))
            }
            Err(message) => {
                p.error(&path.span(), format!("`ca_file`: {message}"));
                None
            }
        },
    };
    let password = validate_secret(
        raw.password.as_ref(),
        raw.password_env.as_ref(),
        "password",
        env,
        p,
    );
    let credentials = match (&raw.username, password) {
        (None, Some(None)) => Some(None),
        (Some(user), Some(None)) => {
            p.error(
                &user.span(),
                "`username` needs `password` or `password_env` (SMTP AUTH sends both)",
            );
            None
        }
        (None, Some(Some(secret))) => {
            p.error(
                &secret.at,
                format!(
                    "{} is given without `username`: add `username` or remove it",
                    secret.origin("password")
                ),
            );
            None
        }
        (Some(user), Some(Some(secret))) => {
            if user.get_ref().trim().is_empty() {
                p.error(&user.span(), "`username` must not be empty");
                None
            } else {
                let loopback = raw.host.get_ref() == "localhost"
                    || raw
                        .host
                        .get_ref()
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if tls == Some(SmtpTls::None) && !loopback {
                    p.warning(
                        &user.span(),
                        "with `tls = \"none\"` the SMTP login (`username` and password) crosses the network in cleartext: use tls = \"starttls\" or \"tls\" unless the relay is on a network you trust",
                    );
                }
                Some(Some((user.get_ref().clone(), secret.value)))
            }
        }
        (_, None) => None,
    };
    let from = match raw.from.get_ref().parse::<lettre::message::Mailbox>() {
        Ok(mailbox) => Some(mailbox.to_string()),
        Err(e) => {
            p.error(
                &raw.from.span(),
                format!(
                    "`from` {:?} is not an e-mail address such as \"vmnd@example.net\" or \"vmnd <vmnd@example.net>\" ({e})",
                    raw.from.get_ref()
                ),
            );
            None
        }
    };
    let reply_domain = {
        let domain = raw.reply_domain.get_ref().trim().to_ascii_lowercase();
        match check_domain(&domain) {
            Ok(()) => Some(domain),
            Err(message) => {
                p.error(
                    &raw.reply_domain.span(),
                    format!("`reply_domain`: {message}"),
                );
                None
            }
        }
    };
    let lmtp_listen = match raw.lmtp_listen.get_ref().parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => Some(addr),
        Ok(addr) => {
            p.error(
                &raw.lmtp_listen.span(),
                format!(
                    "`lmtp_listen` {addr} is not a loopback address: LMTP has no authentication, so the operator's MTA must hand mail over on this host (e.g. \"127.0.0.1:2424\")"
                ),
            );
            None
        }
        Err(_) => {
            p.error(
                &raw.lmtp_listen.span(),
                format!(
                    "`lmtp_listen` {:?} is not a socket address such as \"127.0.0.1:2424\"",
                    raw.lmtp_listen.get_ref()
                ),
            );
            None
        }
    };
    let timeout = validate_duration(
        raw.timeout.as_ref(),
        "timeout",
        Duration::from_secs(30),
        false,
        p,
    );
    let retry_for = validate_duration(
        raw.retry_for.as_ref(),
        "retry_for",
        Duration::from_secs(86_400),
        // Zero is meaningful: one attempt, then the dead-letter list.
        true,
        p,
    );
    let reply_token_ttl = validate_duration(
        raw.reply_token_ttl.as_ref(),
        "reply_token_ttl",
        Duration::from_secs(30 * 86_400),
        false,
        p,
    );
    let mut templates_ok = true;
    let mut template = |value: &Option<Spanned<String>>, key: &str, default: &str| match value {
        None => default.to_string(),
        Some(t) => {
            templates_ok &= check_template_value(t, key, TEMPLATE_PLACEHOLDERS, p);
            t.get_ref().clone()
        }
    };
    let subject = template(&raw.subject, "subject", DEFAULT_EMAIL_SUBJECT);
    let body = template(&raw.body, "body", DEFAULT_EMAIL_BODY);
    let concurrency = validate_integer(raw.concurrency.as_ref(), "concurrency", 4, 1..=256, p);
    if !templates_ok {
        return None;
    }
    Some(Smtp {
        host: host?,
        port: u16::try_from(port?).ok()?,
        tls: tls?,
        ca_pem: ca_pem?,
        credentials: credentials?,
        from: from?,
        reply_domain: reply_domain?,
        lmtp_listen: lmtp_listen?,
        timeout: timeout?,
        retry_for: retry_for?,
        reply_token_ttl: reply_token_ttl?,
        subject,
        body,
        concurrency: usize::try_from(concurrency?).ok()?,
    })
}

/// Checks every `[[number]]`: the VMN, uniqueness after normalisation, the carrier and webhooks
/// it names, its `default` actions and its keyword rules.
fn validate_numbers(raw: &RawConfig, p: &mut Problems<'_>) -> Vec<Option<Number>> {
    // `[optout]`, checked once; each number's own `optout` is checked over it.
    let global = raw.optout.as_ref().and_then(Option::as_ref);
    let global_layer = global.map(|g| OptoutLayer::read(g, false, raw, p));
    let (global_lists, _) = effective_lists(global_layer.as_ref(), None, p);
    let global_reserved = reserved_words(&global_lists);
    // `[guard]` over the defaults, checked once; `None` when it has a problem (reported).
    let global_guard = match &raw.guard {
        None => Some(GuardConfig::default()),
        Some(None) => None,
        Some(Some(g)) => validate_guard(g, GuardConfig::default(), "", p),
    };
    let mut seen: Vec<(String, Span)> = Vec::new();
    let mut numbers = Vec::new();
    for entry in &raw.numbers {
        let Some(number) = &entry.number else {
            // The number itself is refused already; its rules are still checked on their own.
            validate_keywords(
                &entry.keywords,
                &SmsRoute::Unknown,
                raw,
                &global_reserved,
                p,
            );
            numbers.push(None);
            continue;
        };
        let vmn = match normalize_vmn(number.vmn.get_ref()) {
            Ok(vmn) => {
                if let Some((_, first)) = seen.iter().find(|(v, _)| *v == vmn) {
                    let line = p.line(first);
                    p.error(
                        &number.vmn.span(),
                        format!(
                            "number {vmn} is already configured at line {line} (numbers are compared without spaces and punctuation)"
                        ),
                    );
                    None
                } else {
                    seen.push((vmn.clone(), number.vmn.span()));
                    Some(vmn)
                }
            }
            Err(message) => {
                p.error(&number.vmn.span(), message);
                None
            }
        };
        let carrier_ok = number
            .carrier
            .as_ref()
            .is_none_or(|c| raw.carrier_names.check_reference(c, "carrier", p));
        let route = sms_route(number, carrier_ok, raw);
        let receipts_ok = number
            .receipts
            .as_ref()
            .is_none_or(|r| raw.webhook_names.check_reference(r, "receipts", p));

        let default_actions = match &number.default {
            None => Some(Actions {
                forward_template: DEFAULT_FORWARD_TEMPLATE.to_string(),
                ..Default::default()
            }),
            Some(d) => validate_actions(&d.get_ref().actions(), "default.", &route, raw, p),
        };
        let default_acts = number.default.as_ref().is_some_and(|d| {
            let d = d.get_ref();
            d.webhook.is_some() || d.reply.is_some() || d.forward_to.is_some() || d.email.is_some()
        });
        if !default_acts {
            let (at, what) = match &number.default {
                Some(d) => (d.span(), "has a `default` with no action"),
                None => (number.vmn.span(), "has no `default`"),
            };
            p.warning(
                &at,
                format!(
                    "number {:?} {what}: messages that match no keyword are stored but not forwarded (give `default` a `webhook`, `reply` or `forward_to`)",
                    number.vmn.get_ref()
                ),
            );
        }

        let own_layer = number
            .optout
            .as_ref()
            .map(|o| OptoutLayer::read(o.get_ref(), true, raw, p));
        let (reserved_lists, lists_ok) = match &own_layer {
            Some(own) if own.has_lists() => effective_lists(global_layer.as_ref(), Some(own), p),
            _ => (global_lists.clone(), true),
        };
        let consent = consent_config(
            global_layer.as_ref(),
            own_layer.as_ref(),
            &route,
            &number.vmn,
            p,
        );
        let reserved = reserved_words(&reserved_lists);
        let keywords = validate_keywords(&entry.keywords, &route, raw, &reserved, p);
        let start_ok = check_start_words_needed(
            &reserved_lists,
            &entry.keywords,
            global_layer.as_ref(),
            own_layer.as_ref(),
            &number.vmn,
            p,
        );
        let optout_ok = lists_ok && start_ok && own_layer.as_ref().is_none_or(|l| l.ok);
        let guard = global_guard.and_then(|global| match &number.guard {
            None => Some(global),
            Some(own) => validate_guard(own.get_ref(), global, "guard.", p),
        });
        numbers.push(match (vmn, default_actions, keywords, consent, guard) {
            (Some(vmn), Some(default_actions), Some(keywords), Some(consent), Some(guard))
                if carrier_ok && receipts_ok && optout_ok =>
            {
                Some(Number {
                    vmn,
                    carrier: number.carrier.as_ref().map(|c| c.get_ref().clone()),
                    receipts_webhook: number.receipts.as_ref().map(|r| r.get_ref().clone()),
                    default_actions,
                    keywords,
                    reserved: reserved_lists.clone(),
                    consent,
                    guard,
                })
            }
            _ => None,
        });
    }
    numbers
}

/// A number whose `optout.start` list is empty has no opt-in word: then what waits for one
/// would do nothing, and is refused. A double opt-in keyword could never be confirmed (its
/// contacts would stay pending until the ask lapses), and `start_reply` would never be sent.
fn check_start_words_needed(
    lists: &ReservedWords,
    rules: &[RawKeyword],
    global: Option<&OptoutLayer<'_>>,
    own: Option<&OptoutLayer<'_>>,
    vmn: &Spanned<String>,
    p: &mut Problems<'_>,
) -> bool {
    if !lists.start.is_empty() {
        return true;
    }
    let mut ok = true;
    for rule in rules {
        if let Some(subscribe) = &rule.subscribe {
            if matches!(subscribe.get_ref(), RawSubscribe::Text(t) if t == "double") {
                p.error(
                    &subscribe.span(),
                    "`subscribe = \"double\"` waits for the sender to confirm with an opt-in word, but this number's `optout.start` is empty: nobody could confirm; list a start word or use `subscribe = true`",
                );
                ok = false;
            }
        }
    }
    let start_reply_at = match (own.and_then(|l| l.raw.start_reply.as_ref()), global) {
        (Some(own), _) => Some(own.span()),
        // Given for every number in `[optout]`: reported at this number.
        (None, Some(global)) => global.raw.start_reply.as_ref().map(|_| vmn.span()),
        (None, None) => None,
    };
    if let Some(at) = start_reply_at {
        p.error(
            &at,
            format!(
                "`optout.start_reply` answers an opt-in word, but the `optout.start` list of number {:?} is empty: it would never be sent; list a start word or remove `start_reply`",
                vmn.get_ref()
            ),
        );
        ok = false;
    }
    ok
}

/// `[guard]` (prefix "") or a number's `guard` (prefix "guard."), each key over `base`.
fn validate_guard(
    raw: &RawGuard,
    base: GuardConfig,
    prefix: &str,
    p: &mut Problems<'_>,
) -> Option<GuardConfig> {
    let max = validate_integer(
        raw.max_auto_actions.as_ref(),
        &format!("{prefix}max_auto_actions"),
        i64::from(base.max_auto_actions),
        0..=100_000,
        p,
    );
    let window = validate_duration(
        raw.window.as_ref(),
        &format!("{prefix}window"),
        base.window,
        false,
        p,
    );
    let repeats = validate_integer(
        raw.loop_repeats.as_ref(),
        &format!("{prefix}loop_repeats"),
        i64::from(base.loop_repeats),
        0..=1000,
        p,
    );
    if let Some(r) = &raw.loop_repeats {
        if *r.get_ref() == 1 {
            p.error(
                &r.span(),
                format!("`{prefix}loop_repeats` = 1 would silence every message; use 2 or more, or 0 to turn loop detection off"),
            );
            return None;
        }
    }
    Some(GuardConfig {
        max_auto_actions: u32::try_from(max?).ok()?,
        window: window?,
        loop_repeats: u32::try_from(repeats?).ok()?,
    })
}

// ---------------------------------------------------------------------------------------------
// `[optout]` and a number's `optout = { .. }`
// ---------------------------------------------------------------------------------------------

/// The reserved lists: their key, the key that adds to it, and what their words are for.
const OPTOUT_LISTS: [(&str, &str, &str); 3] = [
    ("stop", "stop_extra", "opt-out"),
    ("start", "start_extra", "opt-in"),
    ("help", "help_extra", "help"),
];

/// One word or phrase of a reserved list, with where it came from.
#[derive(Clone)]
struct ListedWord {
    /// Trimmed and upper-case, as the resolved lists keep it.
    written: String,
    /// As `keyword_words` returns it: how messages are compared with it.
    words: Vec<String>,
    /// Where it is written and under which key; `None` for a default.
    at: Option<(Span, &'static str)>,
    /// Written in a number's own `optout` rather than in `[optout]`.
    number_level: bool,
}

/// One layer of consent settings (`[optout]`, or a number's `optout`), its values checked.
struct OptoutLayer<'a> {
    raw: &'a RawOptout,
    /// `stop`, `start`, `help` when given (each phrase checked; a bad one is left out).
    base: [Option<Vec<ListedWord>>; 3],
    /// `stop_extra`, `start_extra`, `help_extra` when given.
    extra: [Option<Vec<ListedWord>>; 3],
    /// False when any value of this layer was refused (reported).
    ok: bool,
}

impl<'a> OptoutLayer<'a> {
    /// Checks the values of one layer on their own: each phrase, each template, the webhook.
    fn read(
        raw: &'a RawOptout,
        number_level: bool,
        config: &RawConfig,
        p: &mut Problems<'_>,
    ) -> Self {
        let mut ok = true;
        let mut list = |value: &Option<RawWordList>, key: &'static str, p: &mut Problems<'_>| {
            let value = value.as_ref()?;
            let (words, good) = read_word_list(value, key, number_level, p);
            ok &= good;
            Some(words)
        };
        let base = [
            list(&raw.stop, "stop", p),
            list(&raw.start, "start", p),
            list(&raw.help, "help", p),
        ];
        let extra = [
            list(&raw.stop_extra, "stop_extra", p),
            list(&raw.start_extra, "start_extra", p),
            list(&raw.help_extra, "help_extra", p),
        ];
        for (value, key) in [
            (&raw.stop_reply, "optout.stop_reply"),
            (&raw.start_reply, "optout.start_reply"),
            (&raw.help_reply, "optout.help_reply"),
        ] {
            if let Some(t) = value {
                ok &= check_template_value(t, key, TEMPLATE_PLACEHOLDERS, p);
            }
        }
        if let Some(w) = &raw.webhook {
            ok &= config.webhook_names.check_reference(w, "optout.webhook", p);
        }
        OptoutLayer {
            raw,
            base,
            extra,
            ok,
        }
    }

    /// Whether this layer gives any of the reserved lists.
    fn has_lists(&self) -> bool {
        self.base.iter().chain(&self.extra).any(Option::is_some)
    }
}

/// Reads one `stop`/`start`/`help` list (or an `_extra` one): every phrase must be a valid
/// keyword. Returns the good phrases and whether all were.
fn read_word_list(
    list: &RawWordList,
    key: &'static str,
    number_level: bool,
    p: &mut Problems<'_>,
) -> (Vec<ListedWord>, bool) {
    let mut ok = true;
    if key == "stop" && list.get_ref().is_empty() {
        p.error(
            &list.span(),
            "`optout.stop` is empty: opt-outs must always be possible; list at least one word, or remove `stop` to keep the default words",
        );
        ok = false;
    }
    let mut words = Vec::new();
    for phrase in list.get_ref() {
        match keyword_words(phrase.get_ref()) {
            Ok(normalised) => words.push(ListedWord {
                written: phrase.get_ref().trim().to_uppercase(),
                words: normalised,
                at: Some((phrase.span(), key)),
                number_level,
            }),
            Err(message) => {
                // The routing module words its messages about a "keyword".
                let rest = message.strip_prefix("keyword").unwrap_or(&message);
                p.error(&phrase.span(), format!("`optout.{key}`: phrase{rest}"));
                ok = false;
            }
        }
    }
    (words, ok)
}

/// A default list as listed words.
fn default_list(index: usize) -> Vec<ListedWord> {
    let defaults = ReservedWords::default();
    let list = match index {
        0 => defaults.stop,
        1 => defaults.start,
        _ => defaults.help,
    };
    list.into_iter()
        .filter_map(|written| {
            Some(ListedWord {
                words: keyword_words(&written).ok()?,
                written,
                at: None,
                number_level: false,
            })
        })
        .collect()
}

/// The reserved lists of a number: for each list, the number's key over the global one over
/// the default, plus the `_extra` words (the number's key over the global one). A word or
/// phrase on two lists is reported, once: with `own`, only pairs that involve a word of the
/// number's own (the others were reported with `[optout]`). Returns the lists and whether no
/// such pair was found.
fn effective_lists(
    global: Option<&OptoutLayer<'_>>,
    own: Option<&OptoutLayer<'_>>,
    p: &mut Problems<'_>,
) -> (ReservedWords, bool) {
    let mut lists: Vec<Vec<ListedWord>> = Vec::new();
    for index in 0..3 {
        let pick = |extra: bool| {
            let of = |layer: &OptoutLayer<'_>| {
                if extra {
                    layer.extra[index].clone()
                } else {
                    layer.base[index].clone()
                }
            };
            own.and_then(of).or_else(|| global.and_then(of))
        };
        let mut list: Vec<ListedWord> = Vec::new();
        let all = pick(false)
            .unwrap_or_else(|| default_list(index))
            .into_iter()
            .chain(pick(true).unwrap_or_default());
        for word in all {
            // Twice on one list (e.g. an extra word that is a default already): harmless.
            if !list.iter().any(|w| w.words == word.words) {
                list.push(word);
            }
        }
        lists.push(list);
    }

    let mut ok = true;
    for later in 1..3 {
        for earlier in 0..later {
            for a in &lists[earlier] {
                for b in lists[later].iter().filter(|b| b.words == a.words) {
                    let reported_here = if own.is_some() {
                        a.number_level || b.number_level
                    } else {
                        a.at.is_some() || b.at.is_some()
                    };
                    if !reported_here {
                        continue;
                    }
                    ok = false;
                    // At the word of this layer (or the one written last), naming the other.
                    let (at_word, other, other_list) = match (&a.at, &b.at) {
                        (None, _) => (b, a, earlier),
                        (_, None) => (a, b, later),
                        (Some((sa, _)), Some((sb, _))) => {
                            let a_first = if a.number_level != b.number_level {
                                b.number_level
                            } else {
                                sa.start < sb.start
                            };
                            if a_first {
                                (b, a, earlier)
                            } else {
                                (a, b, later)
                            }
                        }
                    };
                    let Some((at, key)) = &at_word.at else {
                        continue;
                    };
                    let (other_key, _, purpose) = OPTOUT_LISTS[other_list];
                    let whence = match &other.at {
                        None => format!("a default {other_key} word"),
                        Some((span, key)) => {
                            format!("given in `optout.{key}` at line {}", p.line(span))
                        }
                    };
                    p.error(
                        at,
                        format!(
                            "`optout.{key}` lists {:?}, which is already {} {purpose} word ({whence}); a word or phrase can be on one list only",
                            at_word.written,
                            if purpose.starts_with("opt") { "an" } else { "a" }
                        ),
                    );
                }
            }
        }
    }
    let strings =
        |index: usize| -> Vec<String> { lists[index].iter().map(|w| w.written.clone()).collect() };
    (
        ReservedWords {
            stop: strings(0),
            start: strings(1),
            help: strings(2),
        },
        ok,
    )
}

/// The consent settings of a number: each key of its own `optout` over `[optout]`. The replies
/// are SMS: the number must be able to send them. `None` when one cannot be sent (reported).
fn consent_config(
    global: Option<&OptoutLayer<'_>>,
    own: Option<&OptoutLayer<'_>>,
    route: &SmsRoute<'_>,
    vmn: &Spanned<String>,
    p: &mut Problems<'_>,
) -> Option<ConsentConfig> {
    let mut ok = true;
    let mut reply = |get: fn(&RawOptout) -> Option<&Spanned<String>>, key: &str| {
        if let Some(t) = own.and_then(|l| get(l.raw)) {
            ok &= route.check(&format!("optout.{key}"), &t.span(), p);
            return Some(t.get_ref().clone());
        }
        let t = global.and_then(|l| get(l.raw))?;
        // Given for every number in `[optout]`: reported at the number that cannot send it.
        let line = p.line(&t.span());
        let what = format!("`optout.{key}` (from [optout] at line {line})");
        ok &= route.check_what(&what, &vmn.span(), p);
        Some(t.get_ref().clone())
    };
    let stop_reply = reply(|o| o.stop_reply.as_ref(), "stop_reply");
    let start_reply = reply(|o| o.start_reply.as_ref(), "start_reply");
    let help_reply = reply(|o| o.help_reply.as_ref(), "help_reply");
    let pick = |get: fn(&RawOptout) -> Option<&Spanned<String>>| {
        own.and_then(|l| get(l.raw))
            .or_else(|| global.and_then(|l| get(l.raw)))
            .map(|v| v.get_ref().clone())
    };
    let webhook = pick(|o| o.webhook.as_ref());
    let intent_phrases = own
        .and_then(|l| l.raw.intent_phrases)
        .or_else(|| global.and_then(|l| l.raw.intent_phrases))
        .unwrap_or(false);
    ok.then_some(ConsentConfig {
        stop_reply,
        start_reply,
        help_reply,
        webhook,
        intent_phrases,
    })
}

/// Most numbers one `forward_to` lists. A message's jobs are numbered in one octet (job id =
/// message id << 8 | index, see `store::queue::Job::id_for`), and a rule adds at most a
/// handful besides its forwards; more than 256 would give two jobs one id.
/// The longest `dedup_window`.
const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(3600);

pub const MAX_FORWARD_TO: usize = 200;

/// `forward_template` when none is given.
const DEFAULT_FORWARD_TEMPLATE: &str = "{from}: {text}";

/// Whether a number's rules can send SMS: replies and forwards leave through its carrier.
enum SmsRoute<'a> {
    /// The number names a carrier that can send submit_sm.
    Ready,
    /// The number has no `carrier`.
    NoCarrier,
    /// The number's carrier binds as a receiver.
    Receiver(&'a str),
    /// Not known: the number or its carrier could not be read (already reported). No checks.
    Unknown,
}

/// How the SMS of `number`'s rules would leave.
fn sms_route<'a>(number: &'a RawNumber, carrier_ok: bool, raw: &'a RawConfig) -> SmsRoute<'a> {
    let Some(name) = &number.carrier else {
        return SmsRoute::NoCarrier;
    };
    if !carrier_ok {
        return SmsRoute::Unknown;
    }
    // The first carrier of that name: a second one is a reported duplicate.
    match raw
        .carriers
        .iter()
        .find(|(_, c)| c.name.get_ref() == name.get_ref())
    {
        Some((_, c)) if c.bind.as_ref().is_some_and(|b| b.get_ref() == "receiver") => {
            SmsRoute::Receiver(name.get_ref())
        }
        Some(_) => SmsRoute::Ready,
        None => SmsRoute::Unknown,
    }
}

impl SmsRoute<'_> {
    /// Reports `key`, an action that sends an SMS, when the number cannot send one.
    fn check(&self, key: &str, at: &Span, p: &mut Problems<'_>) -> bool {
        self.check_what(&format!("`{key}`"), at, p)
    }

    /// As [`SmsRoute::check`], for `what` as it should read in the message ("`reply`", or a
    /// key inherited from `[optout]` with where it is written).
    fn check_what(&self, what: &str, at: &Span, p: &mut Problems<'_>) -> bool {
        match self {
            SmsRoute::Ready | SmsRoute::Unknown => true,
            SmsRoute::NoCarrier => {
                p.error(
                    at,
                    format!(
                        "{what} sends an SMS; replies leave through the number's carrier: set `carrier`"
                    ),
                );
                false
            }
            SmsRoute::Receiver(name) => {
                p.error(
                    at,
                    format!(
                        "{what} sends an SMS, but the number's carrier {name:?} binds as a receiver, which cannot send submit_sm: bind it as \"transceiver\" or give the number another carrier"
                    ),
                );
                false
            }
        }
    }
}

/// Checks the actions of a rule (`prefix` is "default." for a number's default, so messages
/// name the key as written) and resolves them.
fn validate_actions(
    a: &RawActions<'_>,
    prefix: &str,
    route: &SmsRoute<'_>,
    raw: &RawConfig,
    p: &mut Problems<'_>,
) -> Option<Actions> {
    let key = |k: &str| format!("{prefix}{k}");
    let mut ok = true;

    let webhook = a.webhook.map(|w| {
        ok &= raw.webhook_names.check_reference(w, &key("webhook"), p);
        w.get_ref().clone()
    });

    let reply = a.reply.map(|t| {
        ok &= check_template_value(t, &key("reply"), TEMPLATE_PLACEHOLDERS, p);
        ok &= route.check(&key("reply"), &t.span(), p);
        t.get_ref().clone()
    });

    let mut reply_after = None;
    if let Some(text) = a.reply_after {
        if a.reply.is_none() {
            p.error(
                &text.span(),
                format!(
                    "`{}` delays the reply, but there is no `{}`: add one or remove `{}`",
                    key("reply_after"),
                    key("reply"),
                    key("reply_after")
                ),
            );
            ok = false;
        } else {
            // Zero is the same as no delay: harmless.
            reply_after =
                validate_duration(Some(text), &key("reply_after"), Duration::ZERO, true, p);
            ok &= reply_after.is_some();
        }
    }

    let mut reply_window = None;
    if let Some(text) = a.reply_window {
        if a.reply.is_none() {
            p.error(
                &text.span(),
                format!(
                    "`{}` schedules the reply, but there is no `{}`: add one or remove `{}`",
                    key("reply_window"),
                    key("reply"),
                    key("reply_window")
                ),
            );
            ok = false;
        } else {
            match parse_reply_window(text.get_ref()) {
                Ok(window) => reply_window = Some(window),
                Err(message) => {
                    p.error(
                        &text.span(),
                        format!("`{}`: {message}", key("reply_window")),
                    );
                    ok = false;
                }
            }
        }
    }

    let mut forward_to: Vec<String> = Vec::new();
    if let Some(list) = a.forward_to {
        if list.get_ref().is_empty() {
            p.error(
                &list.span(),
                format!(
                    "`{}` is empty: list the numbers to forward to, or remove it",
                    key("forward_to")
                ),
            );
            ok = false;
        } else if list.get_ref().len() > MAX_FORWARD_TO {
            p.error(
                &list.span(),
                format!(
                    "`{}` lists {} numbers; at most {MAX_FORWARD_TO} (each message's jobs are numbered in one octet: for more, forward to a webhook)",
                    key("forward_to"),
                    list.get_ref().len()
                ),
            );
            ok = false;
        } else {
            ok &= route.check(&key("forward_to"), &list.span(), p);
        }
        for number in list.get_ref() {
            match normalize_msisdn(number.get_ref()) {
                Ok(digits) if forward_to.contains(&digits) => {
                    p.error(
                        &number.span(),
                        format!("`{}` lists {digits} twice", key("forward_to")),
                    );
                    ok = false;
                }
                Ok(digits) => forward_to.push(digits),
                Err(message) => {
                    p.error(
                        &number.span(),
                        format!("`{}`: {message}", key("forward_to")),
                    );
                    ok = false;
                }
            }
        }
    }

    let forward_template = match a.forward_template {
        None => DEFAULT_FORWARD_TEMPLATE.to_string(),
        Some(t) => {
            if a.forward_to.is_none() {
                p.error(
                    &t.span(),
                    format!(
                        "`{}` formats forwards, but there is no `{}`: add one or remove `{}`",
                        key("forward_template"),
                        key("forward_to"),
                        key("forward_template")
                    ),
                );
                ok = false;
            }
            ok &= check_template_value(t, &key("forward_template"), TEMPLATE_PLACEHOLDERS, p);
            t.get_ref().clone()
        }
    };

    let mut email: Vec<String> = Vec::new();
    if let Some(list) = a.email {
        if !raw.smtp_defined {
            p.error(
                &list.span(),
                format!(
                    "`{}` forwards by e-mail, but there is no [smtp] section: add one (host, port, from, reply_domain, lmtp_listen) or remove `{}`",
                    key("email"),
                    key("email")
                ),
            );
            ok = false;
        }
        if list.get_ref().is_empty() {
            p.error(
                &list.span(),
                format!(
                    "`{}` is empty: list the addresses to forward to, or remove it",
                    key("email")
                ),
            );
            ok = false;
        }
        for address in list.get_ref() {
            match normalize_email_address(address.get_ref()) {
                Ok(a) if email.iter().any(|e| e.eq_ignore_ascii_case(&a)) => {
                    p.error(
                        &address.span(),
                        format!("`{}` lists {a} twice", key("email")),
                    );
                    ok = false;
                }
                Ok(a) => email.push(a),
                Err(message) => {
                    p.error(&address.span(), format!("`{}`: {message}", key("email")));
                    ok = false;
                }
            }
        }
    }

    ok.then_some(Actions {
        webhook,
        reply,
        reply_after,
        reply_window,
        forward_to,
        forward_template,
        email,
    })
}

/// A template value: not blank, and only known placeholders with balanced braces.
fn check_template_value(
    template: &Spanned<String>,
    key: &str,
    allowed: &[&str],
    p: &mut Problems<'_>,
) -> bool {
    let problem = if template.get_ref().trim().is_empty() {
        Some(format!("`{key}` is empty"))
    } else {
        template_placeholders_ok(template.get_ref(), allowed)
            .err()
            .map(|message| format!("`{key}`: {message}"))
    };
    if let Some(message) = &problem {
        p.error(&template.span(), message);
    }
    problem.is_none()
}

/// A phone number to forward to: '+', blanks and '-' are dropped; then 8 to 15 digits
/// (international form, E.164's maximum).
pub fn normalize_msisdn(s: &str) -> Result<String, String> {
    const WHAT: &str =
        "a phone number is 8 to 15 digits in international form, e.g. \"919800000000\"";
    let digits: String = s
        .chars()
        .filter(|c| !matches!(c, '+' | ' ' | '\t' | '-'))
        .collect();
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_digit()) {
        return Err(format!("{s:?} contains {bad:?}; {WHAT}"));
    }
    match digits.len() {
        8..=15 => Ok(digits),
        n => Err(format!("{s:?} has {n} digits; {WHAT}")),
    }
}

/// `"09:00-18:00 Asia/Kolkata"`: two times of day (`HH:MM`) and an IANA time zone.
fn parse_reply_window(text: &str) -> Result<ReplyWindow, String> {
    const SHAPE: &str = "write e.g. \"09:00-18:00 Asia/Kolkata\" (HH:MM-HH:MM and a time zone)";
    let (times, zone) = text
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("{text:?} has no time zone; {SHAPE}"))?;
    let zone = zone.trim();
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: {times:?} is not a range of times; {SHAPE}"))?;
    let time = |t: &str| {
        let shaped = t.len() == 5 && t.as_bytes()[2] == b':';
        shaped
            .then(|| NaiveTime::parse_from_str(t, "%H:%M").ok())
            .flatten()
            .ok_or_else(|| format!("{text:?}: {t:?} is not a time of day (HH:MM, 00:00 to 23:59)"))
    };
    let (start, end) = (time(start)?, time(end)?);
    if start == end {
        return Err(format!(
            "{text:?} starts and ends at the same time; remove `reply_window` to reply at any time"
        ));
    }
    let tz = chrono_tz::Tz::from_str(zone).map_err(|_| {
        format!("{text:?}: unknown time zone {zone:?}; use an IANA name such as \"Asia/Kolkata\" or \"UTC\"")
    })?;
    Ok(ReplyWindow {
        start,
        end,
        tz,
        text: text.to_string(),
    })
}

/// `starts` / `expires`: RFC 3339 with an offset (TOML's own offset date-time is accepted too).
fn parse_time(text: &str) -> Result<DateTime<FixedOffset>, String> {
    const EXAMPLE: &str = "\"2026-12-31T23:59:59+05:30\"";
    let text = text.trim();
    DateTime::parse_from_rfc3339(text).map_err(|_| {
        let local = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
            .iter()
            .any(|f| chrono::NaiveDateTime::parse_from_str(text, f).is_ok());
        if local {
            format!("{text:?} has no UTC offset; add one, e.g. {EXAMPLE} or a trailing \"Z\"")
        } else {
            format!("{text:?} is not a date and time with an offset (RFC 3339), such as {EXAMPLE}")
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Keyword rules
// ---------------------------------------------------------------------------------------------

/// A keyword or alias of a number, normalised, with where it was written.
struct Word<'a> {
    /// As `keyword_words` returns it: the form messages are matched in.
    words: Vec<String>,
    written: &'a str,
    /// The rule's keyword when this is one of its aliases.
    alias_of: Option<&'a str>,
    /// Index of its rule on the number.
    rule: usize,
    tenant: Option<&'a str>,
    at: Span,
    place: Place,
}

/// Where a keyword or alias was defined, for messages that point back at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the config source being checked: its line comes from the span.
    Here,
    /// In the config file, seen from a keyword checked at run time (its span means nothing).
    Config { line: usize },
    /// Added earlier through the admin API.
    Api,
    /// In the keyword table being checked at run time.
    Request,
}

impl Place {
    /// "at line 12", "in the config file at line 12", ...: for "already used by X <place>".
    fn describe(self, at: &Span, p: &Problems<'_>) -> String {
        match self {
            Place::Here => format!("at line {}", p.line(at)),
            Place::Config { line } => format!("in the config file at line {line}"),
            Place::Api => "added through the admin API".to_string(),
            Place::Request => "in this request".to_string(),
        }
    }
}

impl Word<'_> {
    /// Where this word was defined, see [`Place::describe`].
    fn place(&self, p: &Problems<'_>) -> String {
        self.place.describe(&self.at, p)
    }

    /// `keyword "JOIN"` or `alias "SUBSCRIBE" of keyword "JOIN"`, with the tenant when asked.
    fn describe(&self, with_tenant: bool) -> String {
        let what = match self.alias_of {
            None => format!("keyword {:?}", self.written),
            Some(keyword) => format!("alias {:?} of keyword {keyword:?}", self.written),
        };
        match (with_tenant, self.tenant) {
            (false, _) => what,
            (true, Some(tenant)) => format!("{what} (tenant {tenant:?})"),
            (true, None) => format!("{what} (no tenant)"),
        }
    }
}

/// A reserved word of a number, normalised, with what it is for.
struct Reserved<'a> {
    words: Vec<String>,
    written: &'a str,
    /// "opt-out", "opt-in" or "help".
    purpose: &'static str,
}

/// The reserved words of a number, longest first (so "STOP ALL" is named rather than "STOP").
fn reserved_words(lists: &ReservedWords) -> Vec<Reserved<'_>> {
    let mut reserved: Vec<Reserved<'_>> = [
        (&lists.stop, "opt-out"),
        (&lists.start, "opt-in"),
        (&lists.help, "help"),
    ]
    .into_iter()
    .flat_map(|(list, purpose)| {
        list.iter().filter_map(move |written| {
            Some(Reserved {
                words: keyword_words(written).ok()?,
                written,
                purpose,
            })
        })
    })
    .collect();
    reserved.sort_by_key(|r| std::cmp::Reverse(r.words.len()));
    reserved
}

/// Checks the `[[number.keyword]]` rules of one number, each on its own and then together
/// (collisions, reserved words, prefixes, inboxes shared across tenants).
fn validate_keywords(
    rules: &[RawKeyword],
    route: &SmsRoute<'_>,
    raw: &RawConfig,
    reserved: &[Reserved<'_>],
    p: &mut Problems<'_>,
) -> Option<Vec<KeywordRule>> {
    let mut ok = true;
    let mut words: Vec<Word<'_>> = Vec::new();
    let mut resolved = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let tenant = rule.tenant.as_ref().map(|t| t.get_ref().trim());
        let here = Place::Here;
        ok &= note_word(
            &rule.keyword,
            None,
            index,
            tenant,
            here,
            reserved,
            &mut words,
            p,
        );
        for alias in rule.aliases.iter().flatten() {
            let keyword = Some(rule.keyword.get_ref().as_str());
            ok &= note_word(alias, keyword, index, tenant, here, reserved, &mut words, p);
        }
        match validate_keyword(rule, route, raw, p) {
            Some(r) => resolved.push(r),
            None => ok = false,
        }
    }
    ok &= check_collisions(&words, p);
    check_prefixes(&words, None, p);
    ok &= check_inboxes(rules, &resolved, p);
    ok.then_some(resolved)
}

/// Normalises a keyword or alias, refuses a reserved one, and notes it for the checks across
/// rules. False when it was refused.
#[allow(clippy::too_many_arguments)]
fn note_word<'a>(
    written: &'a Spanned<String>,
    alias_of: Option<&'a str>,
    rule: usize,
    tenant: Option<&'a str>,
    place: Place,
    reserved: &[Reserved<'_>],
    words: &mut Vec<Word<'a>>,
    p: &mut Problems<'_>,
) -> bool {
    let normalised = match keyword_words(written.get_ref()) {
        Ok(normalised) => normalised,
        Err(message) => {
            // The routing module words its messages about a "keyword"; say "alias" for one.
            let message = match (alias_of, message.strip_prefix("keyword ")) {
                (Some(_), Some(rest)) => format!("alias {rest}"),
                _ => message,
            };
            p.error(&written.span(), message);
            return false;
        }
    };
    let word = Word {
        words: normalised,
        written: written.get_ref(),
        alias_of,
        rule,
        tenant,
        at: written.span(),
        place,
    };
    // The router answers a reserved word wherever it starts a message, so a keyword that only
    // starts with one ("STOP NOW") would never be reached either.
    if let Some(r) = reserved.iter().find(|r| word.words.starts_with(&r.words)) {
        let what = word.describe(false);
        let (written, purpose) = (r.written, r.purpose);
        let message = if r.words == word.words {
            format!(
                "{what} is reserved for {purpose} (reserved words are answered before any campaign keyword); choose another"
            )
        } else {
            format!(
                "{what} starts with {written:?}, reserved for {purpose}: reserved words are answered before any campaign keyword, so it would never match; choose another"
            )
        };
        p.conflict(&word.at, message);
        return false;
    }
    words.push(word);
    true
}

/// A keyword or alias used twice on a number (after normalisation), reported at the second
/// (a conflict when the first belongs to another rule).
fn check_collisions(words: &[Word<'_>], p: &mut Problems<'_>) -> bool {
    let mut first: HashMap<&[String], &Word<'_>> = HashMap::new();
    let mut ok = true;
    for word in words {
        match first.get(word.words.as_slice()) {
            None => {
                first.insert(&word.words, word);
            }
            Some(earlier) => {
                let tenants = earlier.tenant != word.tenant;
                let message = format!(
                    "{} is already used by {} {} (keywords and aliases are compared without case and punctuation)",
                    word.describe(tenants),
                    earlier.describe(tenants),
                    earlier.place(p)
                );
                if earlier.rule == word.rule {
                    // An alias repeating its own keyword: a mistake in the rule itself.
                    p.error(&word.at, message);
                } else {
                    p.conflict(&word.at, message);
                }
                ok = false;
            }
        }
    }
    ok
}

/// Warns where a keyword or alias is a strict word-prefix of another rule's: the longer one
/// wins for messages that start with it. Reported at the longer one. With `only_rule`, only
/// pairs that involve that rule (a keyword checked at run time against the existing ones,
/// whose own warnings were given when they were defined).
fn check_prefixes(words: &[Word<'_>], only_rule: Option<usize>, p: &mut Problems<'_>) {
    let mut first: HashMap<&[String], &Word<'_>> = HashMap::new();
    for word in words {
        first.entry(&word.words).or_insert(word);
    }
    for word in words {
        if !first
            .get(word.words.as_slice())
            .is_some_and(|w| std::ptr::eq(*w, word))
        {
            // A duplicate: refused already.
            continue;
        }
        for len in 1..word.words.len() {
            let Some(shorter) = first.get(&word.words[..len]) else {
                continue;
            };
            if shorter.rule == word.rule {
                // Both lead to the same rule.
                continue;
            }
            if only_rule.is_some_and(|r| r != word.rule && r != shorter.rule) {
                continue;
            }
            let tenants = shorter.tenant != word.tenant;
            p.warning(
                &word.at,
                format!(
                    "{} starts with {} {}: messages that start with {:?} go to the longer keyword, not to {:?}",
                    word.describe(tenants),
                    shorter.describe(tenants),
                    shorter.place(p),
                    word.written,
                    shorter.written
                ),
            );
        }
    }
}

/// Keywords of different tenants must not share an inbox: each would see the other's messages.
fn check_inboxes(rules: &[RawKeyword], resolved: &[KeywordRule], p: &mut Problems<'_>) -> bool {
    // Only when every rule resolved: the indexes then match.
    if rules.len() != resolved.len() {
        return true;
    }
    let mut ok = true;
    for (i, rule) in resolved.iter().enumerate() {
        let clash = resolved[..i]
            .iter()
            .position(|r| r.inbox == rule.inbox && r.tenant != rule.tenant);
        if let Some(j) = clash {
            let earlier = &resolved[j];
            let at = rules[i]
                .inbox
                .as_ref()
                .map_or(rules[i].keyword.span(), |s| s.span());
            let place = format!("at line {}", earlier.line);
            p.conflict(&at, inbox_clash(rule, earlier, &place));
            ok = false;
        }
    }
    ok
}

/// The message for `rule` taking the inbox of `earlier`, another tenant's keyword defined at
/// `place` ("at line 12", ...).
fn inbox_clash(rule: &KeywordRule, earlier: &KeywordRule, place: &str) -> String {
    let tenant = |t: &Option<String>| match t {
        Some(t) => format!("tenant {t:?}"),
        None => "no tenant".to_string(),
    };
    format!(
        "inbox {:?} of keyword {:?} ({}) is already the inbox of keyword {:?} ({}) {place}; keywords of different tenants cannot share an inbox",
        rule.inbox,
        rule.keyword,
        tenant(&rule.tenant),
        earlier.keyword,
        tenant(&earlier.tenant),
    )
}

/// Checks one `[[number.keyword]]` on its own (its words are checked across rules by the
/// caller) and resolves it.
fn validate_keyword(
    rule: &RawKeyword,
    route: &SmsRoute<'_>,
    raw: &RawConfig,
    p: &mut Problems<'_>,
) -> Option<KeywordRule> {
    let mut ok = true;
    let non_empty = |value: &Option<Spanned<String>>, key: &str, p: &mut Problems<'_>| match value {
        Some(v) if v.get_ref().trim().is_empty() => {
            p.error(&v.span(), format!("`{key}` must not be empty"));
            false
        }
        _ => true,
    };
    ok &= non_empty(&rule.tenant, "tenant", p);
    ok &= non_empty(&rule.inbox, "inbox", p);
    let inbox = match &rule.inbox {
        Some(inbox) => inbox.get_ref().trim().to_string(),
        None => rule
            .keyword
            .get_ref()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
    };

    let mut time = |value: &Option<Spanned<RawTime>>, key: &str| match value {
        None => None,
        Some(v) => match parse_time(&v.get_ref().0) {
            Ok(t) => Some(t),
            Err(message) => {
                p.error(&v.span(), format!("`{key}`: {message}"));
                ok = false;
                None
            }
        },
    };
    let starts = time(&rule.starts, "starts");
    let expires = time(&rule.expires, "expires");
    if let (Some(starts), Some(expires), Some(at)) = (starts, expires, &rule.starts) {
        if starts >= expires {
            p.error(
                &at.span(),
                format!(
                    "`starts` ({}) must be before `expires` ({})",
                    at.get_ref().0.trim(),
                    rule.expires.as_ref().map_or("", |e| e.get_ref().0.trim())
                ),
            );
            ok = false;
        }
    }
    if let Some(reply) = &rule.expiry_reply {
        if rule.expires.is_none() {
            p.error(
                &reply.span(),
                "`expiry_reply` answers messages that arrive after `expires`, but there is no `expires`: add one or remove `expiry_reply`",
            );
            ok = false;
        }
        ok &= check_template_value(reply, "expiry_reply", TEMPLATE_PLACEHOLDERS, p);
        ok &= route.check("expiry_reply", &reply.span(), p);
    }

    let is_poll = match &rule.kind {
        None => Some(false),
        Some(kind) => match kind.get_ref().as_str() {
            "inbox" => Some(false),
            "poll" => Some(true),
            other => {
                p.error(
                    &kind.span(),
                    format!("`kind` must be \"inbox\" or \"poll\", got {other:?}"),
                );
                ok = false;
                None
            }
        },
    };
    let poll = match is_poll {
        Some(true) => {
            let poll = validate_poll(rule, route, p);
            ok &= poll.is_some();
            poll
        }
        Some(false) => {
            let poll_only = [
                ("options", rule.options.as_ref().map(|o| o.span())),
                ("vote", rule.vote.as_ref().map(|v| v.span())),
                (
                    "invalid_reply",
                    rule.invalid_reply.as_ref().map(|r| r.span()),
                ),
            ];
            for (key, at) in poll_only {
                if let Some(at) = at {
                    p.error(
                        &at,
                        format!("`{key}` is only for polls: set `kind = \"poll\"` or remove it"),
                    );
                    ok = false;
                }
            }
            None
        }
        // A bad `kind`, reported: whether the poll keys belong is unknown.
        None => None,
    };

    let subscribe = validate_subscribe(rule, route, p);
    ok &= subscribe.is_some();

    let actions = validate_actions(&rule.actions(), "", route, raw, p);
    let (line, col) = position(p.source, rule.keyword.span().start);
    if !ok {
        return None;
    }
    Some(KeywordRule {
        keyword: rule.keyword.get_ref().clone(),
        aliases: rule
            .aliases
            .iter()
            .flatten()
            .map(|a| a.get_ref().clone())
            .collect(),
        tenant: rule.tenant.as_ref().map(|t| t.get_ref().trim().to_string()),
        inbox,
        starts,
        expires,
        expiry_reply: rule.expiry_reply.as_ref().map(|r| r.get_ref().clone()),
        actions: actions?,
        poll,
        subscribe: subscribe?,
        line,
        col,
    })
}

/// `subscribe = true | false | "double"` with `confirm_reply` and `confirm_within`, which only
/// a double opt-in has (and needs: the request for a confirmation is an SMS).
fn validate_subscribe(
    rule: &RawKeyword,
    route: &SmsRoute<'_>,
    p: &mut Problems<'_>,
) -> Option<Subscribe> {
    // `None` for a value refused here (then the other keys are checked on their own only).
    let kind = match rule.subscribe.as_ref().map(|s| (s.get_ref(), s.span())) {
        None | Some((RawSubscribe::Bool(false), _)) => Some(Subscribe::No),
        Some((RawSubscribe::Bool(true), _)) => Some(Subscribe::Single),
        Some((RawSubscribe::Text(text), _)) if text == "double" => Some(Subscribe::Double {
            confirm_reply: String::new(),
            within: Duration::ZERO,
        }),
        Some((RawSubscribe::Text(other), at)) => {
            p.error(
                &at,
                format!(
                    "`subscribe` must be true (opt in at once), false or \"double\" (opt in after a confirmation), got {other:?}"
                ),
            );
            None
        }
    };
    let mut ok = kind.is_some();
    let double = matches!(kind, Some(Subscribe::Double { .. }));
    if let Some(reply) = &rule.confirm_reply {
        ok &= check_template_value(reply, "confirm_reply", TEMPLATE_PLACEHOLDERS, p);
        if double {
            ok &= route.check("confirm_reply", &reply.span(), p);
        }
    }
    if kind.is_some() && !double {
        let only_double = [
            (
                "confirm_reply",
                "asks the sender to confirm a double opt-in",
                rule.confirm_reply.as_ref().map(|r| r.span()),
            ),
            (
                "confirm_within",
                "bounds the wait for a double opt-in confirmation",
                rule.confirm_within.as_ref().map(|w| w.span()),
            ),
        ];
        for (key, what, at) in only_double {
            if let Some(at) = at {
                p.error(
                    &at,
                    format!(
                        "`{key}` {what}, but `subscribe` is not \"double\": set `subscribe = \"double\"` or remove `{key}`"
                    ),
                );
                ok = false;
            }
        }
    }
    let mut within = None;
    if double {
        if rule.confirm_reply.is_none() {
            let at = rule
                .subscribe
                .as_ref()
                .map_or(rule.keyword.span(), |s| s.span());
            p.error(
                &at,
                "`subscribe = \"double\"` asks the sender to confirm: set `confirm_reply`, e.g. \"Reply YES to confirm\"",
            );
            ok = false;
        }
        within = validate_duration(
            rule.confirm_within.as_ref(),
            "confirm_within",
            DEFAULT_CONFIRM_WITHIN,
            false,
            p,
        );
        ok &= within.is_some();
    }
    if !ok {
        return None;
    }
    Some(match (kind?, within, &rule.confirm_reply) {
        (Subscribe::Double { .. }, Some(within), Some(reply)) => Subscribe::Double {
            confirm_reply: reply.get_ref().clone(),
            within,
        },
        (kind, _, _) => kind,
    })
}

/// `confirm_within` when none is given.
const DEFAULT_CONFIRM_WITHIN: Duration = Duration::from_secs(24 * 60 * 60);

/// The keys of a `kind = "poll"` rule.
fn validate_poll(rule: &RawKeyword, route: &SmsRoute<'_>, p: &mut Problems<'_>) -> Option<Poll> {
    let mut ok = true;
    let mut options = Vec::new();
    match &rule.options {
        None => {
            let at = rule.kind.as_ref().map_or(rule.keyword.span(), |k| k.span());
            p.error(
                &at,
                "a poll needs `options`, e.g. options = [\"A\", \"B\"] or [\"1\", \"2\", \"3\"]",
            );
            ok = false;
        }
        Some(list) if list.get_ref().is_empty() => {
            p.error(
                &list.span(),
                "`options` is empty: a poll needs at least one option",
            );
            ok = false;
        }
        Some(list) => {
            let mut seen: Vec<(String, &str)> = Vec::new();
            for option in list.get_ref() {
                let written = option.get_ref().trim();
                // One word of letters and digits: the vote is the first word after the
                // keyword, trimmed of punctuation, compared without case.
                if written.is_empty() || !written.chars().all(char::is_alphanumeric) {
                    p.error(
                        &option.span(),
                        format!(
                            "poll option {:?} must be one word of letters or digits (the answer is the first word after the keyword)",
                            option.get_ref()
                        ),
                    );
                    ok = false;
                    continue;
                }
                // Compared as answers are: "A" and "Ａ" are one option.
                let folded = crate::routing::keywords::first_word_key(written)
                    .unwrap_or_else(|| written.to_lowercase());
                if let Some((_, first)) = seen.iter().find(|(f, _)| *f == folded) {
                    p.error(
                        &option.span(),
                        format!("poll option {written:?} repeats {first:?} (options are compared as keywords are: without case or full-width forms)"),
                    );
                    ok = false;
                } else {
                    seen.push((folded, written));
                    options.push(written.to_string());
                }
            }
        }
    }
    let last_vote_counts = match &rule.vote {
        None => true,
        Some(vote) => match vote.get_ref().as_str() {
            "last" => true,
            "first" => false,
            other => {
                p.error(
                    &vote.span(),
                    format!("`vote` must be \"last\" (a re-vote replaces the earlier one) or \"first\", got {other:?}"),
                );
                ok = false;
                true
            }
        },
    };
    if let Some(reply) = &rule.invalid_reply {
        ok &= check_template_value(reply, "invalid_reply", INVALID_REPLY_PLACEHOLDERS, p);
        ok &= route.check("invalid_reply", &reply.span(), p);
    }
    ok.then(|| Poll {
        options,
        last_vote_counts,
        invalid_reply: rule.invalid_reply.as_ref().map(|r| r.get_ref().clone()),
    })
}

// ---------------------------------------------------------------------------------------------
// Keywords added at run time: one `[[number.keyword]]` table checked against a running config
// ---------------------------------------------------------------------------------------------

/// A keyword table accepted at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedKeyword {
    /// Resolved; `line` and `col` are 0 (it is not in the file).
    pub rule: KeywordRule,
    /// What `vmnd check` would warn about (a keyword that starts another rule's), without
    /// positions.
    pub warnings: Vec<String>,
}

/// Why a keyword table was refused at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordRefusal {
    /// Every problem found, worded as `vmnd check` words it, without a position.
    pub problems: Vec<String>,
    /// True when every problem is a clash with what the number already has (a keyword or alias
    /// of another rule, a reserved word, another tenant's inbox) rather than a mistake in the
    /// table itself: the admin API answers 409 Conflict rather than 400.
    pub conflict: bool,
}

/// Validates one `[[number.keyword]]` table given at run time (through the admin API, or kept
/// in the store and read at start) against a running config. See [`check_keyword_table`].
pub fn validate_keyword_table(
    config: &Config,
    number: &Number,
    table: &toml::Table,
    runtime: &[KeywordRule],
) -> Result<KeywordRule, Vec<String>> {
    check_keyword_table(config, number, table, runtime)
        .map(|checked| checked.rule)
        .map_err(|refusal| refusal.problems)
}

/// Checks one `[[number.keyword]]` table for `number` (one of `config.numbers`) with the code
/// and the messages of `vmnd check`: the table's keys and types, each value, the reserved
/// words, collisions with every keyword and alias of the number (its config keywords and
/// `runtime`, the keywords added at run time, without the one this table replaces), inboxes
/// shared across tenants, the webhooks it names and whether the number's carrier can send the
/// SMS its actions need.
pub fn check_keyword_table(
    config: &Config,
    number: &Number,
    table: &toml::Table,
    runtime: &[KeywordRule],
) -> Result<CheckedKeyword, KeywordRefusal> {
    // The checks read spanned values as the file parser makes them, so the table is written
    // out as one inline TOML table and read back; positions in that text are never shown.
    let mut source = String::new();
    write_inline_table(table, &mut source);
    let mut p = Problems::new(&source);
    let value = match DeValue::parse(&source) {
        Ok(value) => value,
        Err(e) => {
            // Unreachable for text written by `write_inline_table`; reported, never a panic.
            return Err(KeywordRefusal {
                problems: vec![format!(
                    "the keyword table cannot be read: {}",
                    first_line(e.message())
                )],
                conflict: false,
            });
        }
    };
    let raw = shape::<RawKeyword>(value, "[[number.keyword]]", &mut p);

    // What the rule is checked against: the config's webhooks, the number's carrier, its
    // reserved words and every keyword it already has.
    let context = RawConfig {
        daemon: None,
        carriers: Vec::new(),
        webhooks: Vec::new(),
        numbers: Vec::new(),
        optout: None,
        smtp: None,
        smtp_defined: config.smtp.is_some(),
        guard: None,
        carrier_names: Names::new("carrier"),
        webhook_names: Names {
            kind: "webhook",
            names: config
                .webhooks
                .iter()
                .map(|w| (w.name.clone(), 0..0))
                .collect(),
            complete: true,
        },
    };
    let route = match &number.carrier {
        None => SmsRoute::NoCarrier,
        Some(name) => match config.carrier(name) {
            Some(c) if c.bind == BindMode::Receiver => SmsRoute::Receiver(name),
            Some(_) => SmsRoute::Ready,
            None => SmsRoute::Unknown,
        },
    };
    let reserved = reserved_words(&number.reserved);
    let existing: Vec<(&KeywordRule, Place)> = number
        .keywords
        .iter()
        .map(|r| (r, Place::Config { line: r.line }))
        .chain(runtime.iter().map(|r| (r, Place::Api)))
        .collect();
    let mut words: Vec<Word<'_>> = Vec::new();
    for (index, &(rule, place)) in existing.iter().enumerate() {
        let keyword = std::iter::once((&rule.keyword, None));
        let aliases = rule
            .aliases
            .iter()
            .map(|a| (a, Some(rule.keyword.as_str())));
        for (written, alias_of) in keyword.chain(aliases) {
            // Already accepted, so already checked on their own: only noted for the
            // checks across rules.
            if let Ok(normalised) = keyword_words(written) {
                words.push(Word {
                    words: normalised,
                    written,
                    alias_of,
                    rule: index,
                    tenant: rule.tenant.as_deref(),
                    at: 0..0,
                    place,
                });
            }
        }
    }

    let resolved = raw.as_ref().and_then(|raw| {
        let new = existing.len();
        let tenant = raw.tenant.as_ref().map(|t| t.get_ref().trim());
        let request = Place::Request;
        note_word(
            &raw.keyword,
            None,
            new,
            tenant,
            request,
            &reserved,
            &mut words,
            &mut p,
        );
        for alias in raw.aliases.iter().flatten() {
            let keyword = Some(raw.keyword.get_ref().as_str());
            note_word(
                alias, keyword, new, tenant, request, &reserved, &mut words, &mut p,
            );
        }
        check_collisions(&words, &mut p);
        check_prefixes(&words, Some(new), &mut p);
        let rule = validate_keyword(raw, &route, &context, &mut p)?;
        for &(earlier, place) in &existing {
            if earlier.inbox == rule.inbox && earlier.tenant != rule.tenant {
                let at = raw.inbox.as_ref().map_or(raw.keyword.span(), |s| s.span());
                let place = place.describe(&at, &p);
                p.conflict(&at, inbox_clash(&rule, earlier, &place));
            }
        }
        Some(rule)
    });
    let (mut problems, warnings, conflict) = p.into_messages();
    match resolved {
        Some(rule) if problems.is_empty() => Ok(CheckedKeyword {
            rule: KeywordRule {
                line: 0,
                col: 0,
                ..rule
            },
            warnings,
        }),
        _ => {
            if problems.is_empty() {
                // Unreachable by construction (every `None` reports why), as in `parse`.
                problems.push("the keyword could not be resolved".to_string());
            }
            Err(KeywordRefusal { problems, conflict })
        }
    }
}

/// Converts a JSON object (an admin API body, or a keyword kept in the store) to the TOML table
/// it stands for. JSON's `null` has no TOML counterpart: such a key is refused by name.
pub fn keyword_table_from_json(value: &serde_json::Value) -> Result<toml::Table, Vec<String>> {
    let serde_json::Value::Object(map) = value else {
        return Err(vec![format!(
            "expected a JSON object of [[number.keyword]] keys, got {}",
            json_type(value)
        )]);
    };
    let mut table = toml::Table::new();
    let mut problems = Vec::new();
    for (key, value) in map {
        match json_to_toml(value) {
            Ok(v) => {
                table.insert(key.clone(), v);
            }
            Err((path, message)) => problems.push(format!("`{key}{path}`: {message}")),
        }
    }
    if problems.is_empty() {
        Ok(table)
    } else {
        Err(problems)
    }
}

/// One JSON value as TOML; the error names the path inside the value (`[1]`, `.a`) and why.
fn json_to_toml(value: &serde_json::Value) -> Result<toml::Value, (String, String)> {
    use serde_json::Value as J;
    Ok(match value {
        J::Null => {
            return Err((
                String::new(),
                "null is not a value here; leave the key out instead".to_string(),
            ));
        }
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) => toml::Value::Float(f),
            (None, None) => {
                return Err((String::new(), format!("{n} is out of range")));
            }
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(items) => toml::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| json_to_toml(v).map_err(|(path, m)| (format!("[{i}]{path}"), m)))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(k, v)| {
                    json_to_toml(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|(path, m)| (format!(".{k}{path}"), m))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// "a string", "an array", ...: for messages about a JSON value.
fn json_type(value: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match value {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

/// Writes `table` as one TOML inline table (`{ "key" = value, ... }`): every key quoted, every
/// string escaped, so any table reads back as itself.
fn write_inline_table(table: &toml::Table, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in table.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        write_toml_string(key, out);
        out.push_str(" = ");
        write_inline_value(value, out);
    }
    out.push_str(" }");
}

fn write_inline_value(value: &toml::Value, out: &mut String) {
    match value {
        toml::Value::String(s) => write_toml_string(s, out),
        toml::Value::Integer(i) => out.push_str(&i.to_string()),
        toml::Value::Float(f) if f.is_nan() => out.push_str("nan"),
        toml::Value::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "inf" } else { "-inf" });
        }
        // Debug keeps a fraction or an exponent ("1.0", "1e300"): both read back as a float.
        toml::Value::Float(f) => out.push_str(&format!("{f:?}")),
        toml::Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        toml::Value::Datetime(d) => out.push_str(&d.to_string()),
        toml::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_inline_value(item, out);
            }
            out.push(']');
        }
        toml::Value::Table(table) => write_inline_table(table, out),
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn write_toml_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// Templates: `reply`, `expiry_reply`, `invalid_reply`, `forward_template`
// ---------------------------------------------------------------------------------------------

/// Placeholders of `reply`, `expiry_reply` and `forward_template`.
pub const TEMPLATE_PLACEHOLDERS: &[&str] =
    &["from", "to", "keyword", "args", "text", "inbox", "date"];

/// Placeholders of a poll's `invalid_reply`: the above and `{options}`.
pub const INVALID_REPLY_PLACEHOLDERS: &[&str] = &[
    "from", "to", "keyword", "args", "text", "inbox", "date", "options",
];

/// A template cut into what it says: `{{` and `}}` are literal braces.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'t> {
    Text(&'t str),
    /// `{name}`.
    Placeholder(&'t str),
    /// A '{' with no '}' before the next '{' or the end; its byte offset.
    Unclosed(usize),
    /// A '}' that closes nothing; its byte offset.
    Unmatched(usize),
}

fn template_pieces(template: &str) -> Vec<Piece<'_>> {
    let bytes = template.as_bytes();
    let mut pieces = Vec::new();
    let (mut i, mut text_start) = (0, 0);
    // Braces are ASCII, so byte offsets next to them are character boundaries.
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'{' && b != b'}' {
            i += 1;
            continue;
        }
        if text_start < i {
            pieces.push(Piece::Text(&template[text_start..i]));
        }
        if bytes.get(i + 1) == Some(&b) {
            // `{{` or `}}`: the brace itself.
            pieces.push(Piece::Text(&template[i..i + 1]));
            i += 2;
        } else if b == b'}' {
            pieces.push(Piece::Unmatched(i));
            i += 1;
        } else {
            match template[i + 1..].find(['{', '}']) {
                Some(n) if bytes[i + 1 + n] == b'}' => {
                    pieces.push(Piece::Placeholder(&template[i + 1..i + 1 + n]));
                    i += n + 2;
                }
                _ => {
                    pieces.push(Piece::Unclosed(i));
                    i += 1;
                }
            }
        }
        text_start = i;
    }
    if text_start < bytes.len() {
        pieces.push(Piece::Text(&template[text_start..]));
    }
    pieces
}

/// Checks that `template` uses only the placeholders in `allowed` (names without braces) and
/// that its braces balance (`{{` and `}}` stand for literal braces). The error names the first
/// problem. The config and the daemon's renderer agree through this and [`render_template`].
pub fn template_placeholders_ok(template: &str, allowed: &[&str]) -> Result<(), String> {
    let at = |offset: usize| template[..offset].chars().count() + 1;
    for piece in template_pieces(template) {
        match piece {
            Piece::Text(_) => {}
            Piece::Placeholder(name) if allowed.contains(&name) => {}
            Piece::Placeholder(name) => {
                let known: Vec<String> = allowed.iter().map(|n| format!("{{{n}}}")).collect();
                return Err(format!(
                    "unknown placeholder {{{name}}}; the placeholders are {} (write {{{{ and }}}} for literal braces)",
                    known.join(" ")
                ));
            }
            Piece::Unclosed(offset) => {
                return Err(format!(
                    "'{{' at character {} is not closed; write {{{{ for a literal brace",
                    at(offset)
                ));
            }
            Piece::Unmatched(offset) => {
                return Err(format!(
                    "'}}' at character {} closes nothing; write }}}} for a literal brace",
                    at(offset)
                ));
            }
        }
    }
    Ok(())
}

/// Fills a template: `{name}` becomes `vars(name)`; `{{` and `}}` become `{` and `}`. Never
/// fails: a placeholder `vars` does not know and a stray brace are kept as written (the config
/// check refuses both, see [`template_placeholders_ok`]).
pub fn render_template(template: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in template_pieces(template) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Placeholder(name) => match vars(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
            Piece::Unclosed(_) => out.push('{'),
            Piece::Unmatched(_) => out.push('}'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment with nothing set.
    pub(super) fn no_env(_: &str) -> Option<String> {
        None
    }

    pub(super) fn errors_of(source: &str) -> Vec<String> {
        match parse(source, "t.toml", &no_env) {
            Ok((_, warnings)) => panic!("expected errors, got a config (warnings {warnings:?})"),
            Err(diagnostics) => diagnostics.iter().map(|d| d.to_string()).collect(),
        }
    }

    pub(super) const VALID: &str = r#"
[daemon]
data_dir = "./var"

[[carrier]]
name = "sim"
host = "127.0.0.1"
port = 2775
system_id = "vmnd"
password = "secret"

[[webhook]]
name = "crm"
url = "http://127.0.0.1:8080/sms"
secret = "whsec-test"

[[number]]
vmn = "567 678"
carrier = "sim"
default = { webhook = "crm" }
receipts = "crm"
"#;

    #[test]
    fn defaults_are_the_documented_ones() {
        let (config, warnings) = parse(VALID, "t.toml", &no_env).expect("valid");
        assert!(warnings.is_empty());
        let d = &config.daemon;
        assert_eq!(d.admin_listen, "127.0.0.1:8640".parse().unwrap());
        assert_eq!(d.admin_token, None);
        assert_eq!(d.reassembly_timeout, Duration::from_secs(600));
        assert_eq!(d.dedup_window, None);
        assert_eq!(
            (d.cache_mb, d.fsync, d.backlog_in_memory),
            (16, true, 16_384)
        );
        let c = config.carrier("sim").unwrap();
        assert_eq!(c.system_type, "");
        assert_eq!(c.bind, BindMode::Transceiver);
        assert_eq!(c.window, 32);
        assert_eq!(c.enquire_link, Duration::from_secs(30));
        assert_eq!(c.response_timeout, Duration::from_secs(10));
        assert!(!c.gsm_packed);
        assert_eq!(c.reconnect_min, Duration::from_secs(1));
        assert_eq!(c.reconnect_max, Duration::from_secs(60));
        assert_eq!(c.submit_per_second, 50);
        let w = config.webhook("crm").unwrap();
        assert_eq!(w.retry_for, Duration::from_secs(86_400));
        assert_eq!(w.timeout, Duration::from_secs(10));
        assert_eq!(w.concurrency, 32);
        assert_eq!(w.pipeline, 1);
        let n = config.number("567678").unwrap();
        assert_eq!(n.vmn, "567678");
        assert_eq!(n.default_actions.webhook.as_deref(), Some("crm"));
        assert_eq!(n.receipts_webhook.as_deref(), Some("crm"));
        assert_eq!(
            n.default_actions,
            Actions {
                webhook: Some("crm".to_string()),
                forward_template: "{from}: {text}".to_string(),
                ..Default::default()
            }
        );
        assert!(n.keywords.is_empty());
        assert_eq!(n.reserved, ReservedWords::default());
        assert!(n.reserved.stop.iter().any(|w| w == "STOP ALL"));
    }

    #[test]
    fn lookups_normalise_and_miss_cleanly() {
        let (config, _) = parse(VALID, "t.toml", &no_env).expect("valid");
        assert!(config.number("567-678").is_some());
        assert!(config.number("(567) 678").is_some());
        assert!(config.number("5676789").is_none());
        assert!(config.number("").is_none());
        assert!(config.carrier("SIM").is_none());
        assert!(config.webhook("nope").is_none());
    }

    #[test]
    fn vmns_are_normalised_to_six_or_ten_digits() {
        assert_eq!(normalize_vmn("567678").as_deref(), Ok("567678"));
        assert_eq!(normalize_vmn(" 56-76.78 ").as_deref(), Ok("567678"));
        assert_eq!(normalize_vmn("(98) 7654-3210").as_deref(), Ok("9876543210"));
        assert_eq!(normalize_vmn("98\t76543210").as_deref(), Ok("9876543210"));
        for bad in [
            "",
            "()",
            "56767",
            "5676789",
            "+919876543210",
            "56767a",
            "٥٦٧٦٧٨",
        ] {
            let err = normalize_vmn(bad).unwrap_err();
            assert!(err.contains("6 digits"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let s = "ab\nçé = 1\n";
        assert_eq!(position(s, 0), (1, 1));
        assert_eq!(position(s, 3), (2, 1));
        // 'ç' and 'é' are two bytes each: byte 7 is the third character of line 2.
        assert_eq!(position(s, 7), (2, 3));
        // Inside a character, past the end: clamped, no panic.
        assert_eq!(position(s, 4), (2, 1));
        assert_eq!(position(s, 1000), (3, 1));
        assert_eq!(position("", 5), (1, 1));
        // A byte-order mark does not count as a column.
        assert_eq!(position("\u{feff}[daemon]", 4), (1, 2));
    }

    #[test]
    fn urls_are_checked_and_normalised() {
        assert_eq!(
            validate_url("http://127.0.0.1:8080/sms").as_deref(),
            Ok("http://127.0.0.1:8080/sms")
        );
        assert_eq!(
            validate_url("HTTP://Example.net").as_deref(),
            Ok("http://Example.net/")
        );
        assert_eq!(validate_url("http://h?x=1").as_deref(), Ok("http://h/?x=1"));
        assert_eq!(
            validate_url("http://[::1]:80/a").as_deref(),
            Ok("http://[::1]:80/a")
        );
        assert_eq!(
            validate_url("https://example.net/sms").as_deref(),
            Ok("https://example.net/sms")
        );
        assert_eq!(
            validate_url("HTTPS://h:8443").as_deref(),
            Ok("https://h:8443/")
        );
        for bad in [
            "",
            "http://",
            "http:///x",
            "ftp://h/x",
            "https:/h/x",
            "http://h:0/",
            "http://h:65536/",
            "http://h:/",
            "http://u@h/",
            "http://h /x",
            "http://h/x#f",
            "http://[::1/",
            "http://[zz]/",
            "http://[::1]x/",
            "http://h_é/",
            "httpé://h/",
        ] {
            assert!(validate_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_are_shown_in_config_syntax() {
        assert_eq!(show_duration(Duration::from_secs(120)), "2m");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(show_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn secrets_come_from_the_env_closure_and_are_never_printed() {
        let source = VALID.replace("password = \"secret\"", "password_env = \"SIM_PW\"");
        let env = |k: &str| (k == "SIM_PW").then(|| "from-env".to_string());
        let (config, _) = parse(&source, "t.toml", &env).expect("valid");
        assert_eq!(config.carrier("sim").unwrap().password, "from-env");

        let long = |k: &str| (k == "SIM_PW").then(|| "hunter2-too-long".to_string());
        let errors = parse(&source, "t.toml", &long).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("SIM_PW"), "{}", errors[0]);
        assert!(!errors[0].message.contains("hunter2"), "{}", errors[0]);
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let open = VALID.replace(
            "data_dir = \"./var\"",
            "data_dir = \"./var\"\nadmin_listen = \"[::]:8640\"",
        );
        let errors = errors_of(&open);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("t.toml:4:16: `admin_listen` [::]:8640 is not a loopback"));
        let with_token = open.replace("[daemon]", "[daemon]\nadmin_token = \"tok\"");
        let (config, _) = parse(&with_token, "t.toml", &no_env).expect("valid");
        assert_eq!(config.daemon.admin_token.as_deref(), Some("tok"));
    }

    #[test]
    fn warnings_are_marked_and_also_returned_with_errors() {
        let source = VALID
            .replace("default = { webhook = \"crm\" }\n", "")
            .replace("port = 2775", "port = 0");
        let errors = parse(&source, "t.toml", &no_env).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            "t.toml:8:8: `port` must be between 1 and 65535, got 0"
        );
        assert!(!errors[0].is_warning());
        assert!(errors[1].is_warning(), "{}", errors[1]);
        assert_eq!(
            errors[1].message,
            "warning: number \"567 678\" has no `default`: messages that match no keyword are stored but not forwarded (give `default` a `webhook`, `reply` or `forward_to`)"
        );
    }

    /// Keyword rules appended to [`VALID`] (its number has a carrier and a webhook).
    const KEYWORDS: &str = r#"
[[number.keyword]]
keyword = "Join Club"
aliases = ["SUBSCRIBE"]
tenant = "acme"
starts = "2026-06-01T00:00:00+05:30"
expires = 2026-12-31T23:59:59Z
expiry_reply = "Over, {from}."
reply = "Hi {from}"
reply_after = "10m"
reply_window = "22:00-06:00 Europe/Paris"
forward_to = ["+91 98000-00000"]

[[number.keyword]]
keyword = "VOTE"
kind = "poll"
options = ["A", "b"]
invalid_reply = "One of {options}"
"#;

    /// `VALID` plus `extra` (keyword rules), parsed; panics on errors.
    fn parse_with(extra: &str) -> (Config, Vec<Diagnostic>) {
        let source = format!("{VALID}{extra}");
        parse(&source, "t.toml", &no_env).unwrap_or_else(|e| {
            panic!(
                "refused: {:#?}",
                e.iter().map(|d| d.to_string()).collect::<Vec<_>>()
            )
        })
    }

    /// `VALID` plus `extra`, refused: the diagnostics as `vmnd check` prints them.
    fn errors_with(extra: &str) -> Vec<String> {
        errors_of(&format!("{VALID}{extra}"))
    }

    #[test]
    fn keyword_rules_resolve_with_their_defaults() {
        let (config, warnings) = parse_with(KEYWORDS);
        assert!(warnings.is_empty(), "{warnings:?}");
        let n = config.number("567678").unwrap();
        assert_eq!(n.keywords.len(), 2);

        let join = &n.keywords[0];
        assert_eq!(join.keyword, "Join Club");
        assert_eq!(join.aliases, ["SUBSCRIBE"]);
        assert_eq!(join.tenant.as_deref(), Some("acme"));
        assert_eq!(join.inbox, "join club");
        // Where the keyword's value starts: line 3 of KEYWORDS (it starts with a blank line),
        // after `keyword = `.
        let line = VALID.lines().count() + 3;
        assert_eq!((join.line, join.col), (line, 11));
        let starts = join.starts.unwrap();
        assert_eq!(starts.to_rfc3339(), "2026-06-01T00:00:00+05:30");
        assert_eq!(starts.timestamp(), 1_780_252_200);
        assert_eq!(
            join.expires.unwrap().to_rfc3339(),
            "2026-12-31T23:59:59+00:00"
        );
        assert_eq!(join.expiry_reply.as_deref(), Some("Over, {from}."));
        let a = &join.actions;
        assert_eq!(a.webhook, None);
        assert_eq!(a.reply.as_deref(), Some("Hi {from}"));
        assert_eq!(a.reply_after, Some(Duration::from_secs(600)));
        let window = a.reply_window.as_ref().unwrap();
        assert_eq!(window.start, NaiveTime::from_hms_opt(22, 0, 0).unwrap());
        assert_eq!(window.end, NaiveTime::from_hms_opt(6, 0, 0).unwrap());
        assert_eq!(window.tz, chrono_tz::Europe::Paris);
        assert_eq!(window.text, "22:00-06:00 Europe/Paris");
        assert_eq!(a.forward_to, ["919800000000"]);
        assert_eq!(a.forward_template, "{from}: {text}");
        assert_eq!(join.poll, None);

        let vote = &n.keywords[1];
        assert_eq!(
            (vote.inbox.as_str(), vote.tenant.as_deref()),
            ("vote", None)
        );
        assert_eq!(
            vote.poll,
            Some(Poll {
                options: vec!["A".to_string(), "b".to_string()],
                last_vote_counts: true,
                invalid_reply: Some("One of {options}".to_string()),
            })
        );
    }

    #[test]
    fn collisions_are_reported_at_the_second_use_with_both_tenants() {
        let errors = errors_with(
            "[[number.keyword]]\nkeyword = \"JOIN\"\ntenant = \"a\"\n\n\
             [[number.keyword]]\nkeyword = \"X\"\naliases = [\"join!\"]\ntenant = \"b\"\n",
        );
        let line = VALID.lines().count() + 2;
        assert_eq!(
            errors,
            [format!(
                "t.toml:{}:12: alias \"join!\" of keyword \"X\" (tenant \"b\") is already used by keyword \"JOIN\" (tenant \"a\") at line {line} (keywords and aliases are compared without case and punctuation)",
                line + 5
            )]
        );
    }

    #[test]
    fn reserved_words_cannot_be_keywords_or_start_them() {
        for (keyword, purpose) in [
            ("stop", "opt-out"),
            ("Stop All", "opt-out"),
            ("OPTOUT", "opt-out"),
            ("unstop", "opt-in"),
            ("Info", "help"),
        ] {
            let errors = errors_with(&format!("[[number.keyword]]\nkeyword = \"{keyword}\"\n"));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].contains(&format!("is reserved for {purpose}")),
                "{errors:?}"
            );
        }
        let errors = errors_with("[[number.keyword]]\nkeyword = \"HELP ME\"\n");
        assert!(
            errors[0].contains("starts with \"HELP\", reserved for help"),
            "{errors:?}"
        );
        // Only a leading reserved word matters.
        parse_with("[[number.keyword]]\nkeyword = \"NON STOP\"\n");
    }

    #[test]
    fn a_keyword_that_starts_another_rules_keyword_is_a_warning() {
        let (_, warnings) = parse_with(
            "[[number.keyword]]\nkeyword = \"JOIN\"\naliases = [\"JOIN US\"]\n\n\
             [[number.keyword]]\nkeyword = \"join club gold\"\n",
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].is_warning());
        assert!(
            warnings[0]
                .message
                .contains("keyword \"join club gold\" starts with keyword \"JOIN\""),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn a_receiver_bind_cannot_send() {
        let source = VALID.replace(
            "password = \"secret\"",
            "password = \"secret\"\nbind = \"receiver\"",
        );
        let errors = errors_of(&format!(
            "{source}[[number.keyword]]\nkeyword = \"A\"\nforward_to = [\"919800000000\"]\n"
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("binds as a receiver, which cannot send submit_sm"),
            "{errors:?}"
        );
        // Without SMS actions a receiver bind is fine.
        let (config, _) = parse(
            &format!("{source}[[number.keyword]]\nkeyword = \"A\"\n"),
            "t.toml",
            &no_env,
        )
        .expect("valid");
        assert_eq!(config.numbers[0].keywords.len(), 1);
    }

    #[test]
    fn templates_accept_known_placeholders_and_escaped_braces() {
        let ok = |t: &str| template_placeholders_ok(t, TEMPLATE_PLACEHOLDERS);
        assert_eq!(ok(""), Ok(()));
        assert_eq!(
            ok("Thanks {from}, you wrote {text} to {to} on {date}"),
            Ok(())
        );
        assert_eq!(ok("{keyword}/{args}/{inbox}"), Ok(()));
        assert_eq!(ok("JSON: {{\"a\": 1}}"), Ok(()));
        assert_eq!(ok("{{{from}}}"), Ok(()));
        assert_eq!(ok("héllo {from} ✓"), Ok(()));
        assert!(
            ok("{options}")
                .unwrap_err()
                .starts_with("unknown placeholder {options}")
        );
        assert_eq!(
            template_placeholders_ok("{options}", INVALID_REPLY_PLACEHOLDERS),
            Ok(())
        );
        assert!(
            ok("{FROM}")
                .unwrap_err()
                .starts_with("unknown placeholder {FROM}")
        );
        assert!(ok("{}").unwrap_err().starts_with("unknown placeholder {}"));
        assert!(
            ok("{ from }")
                .unwrap_err()
                .starts_with("unknown placeholder { from }")
        );
        assert_eq!(
            ok("é {from"),
            Err("'{' at character 3 is not closed; write {{ for a literal brace".to_string())
        );
        assert!(
            ok("{a{from}")
                .unwrap_err()
                .contains("character 1 is not closed")
        );
        assert_eq!(
            ok("a}b"),
            Err("'}' at character 2 closes nothing; write }} for a literal brace".to_string())
        );
        assert!(
            ok("{from}}")
                .unwrap_err()
                .contains("character 7 closes nothing")
        );
    }

    #[test]
    fn render_template_fills_placeholders_and_unescapes_braces() {
        let vars = |name: &str| match name {
            "from" => Some("919812345678".to_string()),
            "args" => Some("summer {x}".to_string()),
            "empty" => Some(String::new()),
            _ => None,
        };
        let render = |t: &str| render_template(t, &vars);
        assert_eq!(render(""), "");
        assert_eq!(render("no placeholders"), "no placeholders");
        assert_eq!(render("Thanks {from}!"), "Thanks 919812345678!");
        assert_eq!(render("{from}{from}"), "919812345678919812345678");
        assert_eq!(render("[{empty}]"), "[]");
        // Values are inserted as they are: braces in them are not templates.
        assert_eq!(render("got: {args}"), "got: summer {x}");
        assert_eq!(render("{{from}} is {from}"), "{from} is 919812345678");
        assert_eq!(render("{{{from}}}"), "{919812345678}");
        assert_eq!(render("}}{{"), "}{");
        // Unknown names and stray braces (refused by the config check) are kept as written.
        assert_eq!(render("Hi {name}"), "Hi {name}");
        assert_eq!(render("Hi {from"), "Hi {from");
        assert_eq!(render("a } b"), "a } b");
        assert_eq!(render("{a{from}"), "{a919812345678");
        assert_eq!(render("ünï {from} ✓"), "ünï 919812345678 ✓");
    }

    #[test]
    fn reply_windows_are_two_times_and_a_zone() {
        let w = parse_reply_window("09:00-18:30 Asia/Kolkata").unwrap();
        assert_eq!(w.start, NaiveTime::from_hms_opt(9, 0, 0).unwrap());
        assert_eq!(w.end, NaiveTime::from_hms_opt(18, 30, 0).unwrap());
        assert_eq!(w.tz, chrono_tz::Asia::Kolkata);
        assert_eq!(
            parse_reply_window("  22:00-06:00   UTC ").unwrap().tz,
            chrono_tz::UTC
        );
        for (bad, says) in [
            ("09:00-18:00", "no time zone"),
            ("09:00 Asia/Kolkata", "not a range"),
            ("9:00-18:00 UTC", "\"9:00\" is not a time of day"),
            ("09:00-24:00 UTC", "\"24:00\" is not a time of day"),
            ("09:60-10:00 UTC", "\"09:60\" is not a time of day"),
            (
                "09:00-18:00 Mars/Olympus",
                "unknown time zone \"Mars/Olympus\"",
            ),
            ("09:00-18:00 asia/kolkata", "unknown time zone"),
            ("12:00-12:00 UTC", "starts and ends at the same time"),
            ("", "no time zone"),
        ] {
            let err = parse_reply_window(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn forward_numbers_are_8_to_15_digits() {
        assert_eq!(
            normalize_msisdn("+91 98000-00000").as_deref(),
            Ok("919800000000")
        );
        assert_eq!(normalize_msisdn("12345678").as_deref(), Ok("12345678"));
        assert_eq!(
            normalize_msisdn("123456789012345").as_deref(),
            Ok("123456789012345")
        );
        for bad in [
            "",
            "+",
            "1234567",
            "1234567890123456",
            "9198OOOOOOOO",
            "(91) 98000 00000",
        ] {
            assert!(normalize_msisdn(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn times_need_an_offset() {
        let t = parse_time("2026-12-31T23:59:59+05:30").unwrap();
        assert_eq!(t.offset().local_minus_utc(), 19_800);
        assert!(parse_time("2026-12-31T18:29:59Z").unwrap() == t);
        assert!(
            parse_time("2026-12-31T23:59:59")
                .unwrap_err()
                .contains("no UTC offset")
        );
        assert!(
            parse_time("2026-12-31 23:59:59")
                .unwrap_err()
                .contains("no UTC offset")
        );
        assert!(parse_time("2026-12-31").unwrap_err().contains("RFC 3339"));
        assert!(parse_time("2026-02-30T00:00:00Z").is_err());
    }

    #[test]
    fn keys_that_depend_on_another_are_refused_alone() {
        for (extra, says) in [
            (
                "reply_after = \"1m\"",
                "`reply_after` delays the reply, but there is no `reply`",
            ),
            (
                "reply_window = \"09:00-18:00 UTC\"",
                "`reply_window` schedules the reply",
            ),
            (
                "forward_template = \"{text}\"",
                "`forward_template` formats forwards, but there is no `forward_to`",
            ),
            ("expiry_reply = \"Over\"", "there is no `expires`"),
            ("options = [\"A\"]", "`options` is only for polls"),
            ("vote = \"first\"", "`vote` is only for polls"),
            (
                "invalid_reply = \"No\"",
                "`invalid_reply` is only for polls",
            ),
            ("kind = \"poll\"", "a poll needs `options`"),
            (
                "email = [\"a@b.example\"]",
                "`email` forwards by e-mail, but there is no [smtp] section",
            ),
            (
                "starts = \"2026-01-02T00:00:00Z\"\nexpires = \"2026-01-01T00:00:00Z\"",
                "must be before `expires`",
            ),
        ] {
            let errors = errors_with(&format!("[[number.keyword]]\nkeyword = \"K\"\n{extra}\n"));
            assert_eq!(errors.len(), 1, "{extra}: {errors:?}");
            assert!(errors[0].contains(says), "{extra}: {errors:?}");
        }
    }

    #[test]
    fn a_default_without_action_is_a_warning_and_a_reply_alone_is_an_action() {
        let source = VALID.replace(
            "default = { webhook = \"crm\" }",
            "default = { reply = \"Got it\" }",
        );
        let (config, warnings) = parse(&source, "t.toml", &no_env).expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        let n = &config.numbers[0];
        assert_eq!(n.default_actions.webhook, None);
        assert_eq!(n.default_actions.reply.as_deref(), Some("Got it"));

        let source = VALID.replace("default = { webhook = \"crm\" }", "default = { }");
        let (_, warnings) = parse(&source, "t.toml", &no_env).expect("valid");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].message.contains("has a `default` with no action: messages that match no keyword are stored but not forwarded"));
    }

    #[test]
    fn syntax_errors_are_reported_once_per_line() {
        let errors = errors_of("[daemon]\ndata_dir = [1,\n\nx = = 2\n");
        assert!(!errors.is_empty());
        let mut lines: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').nth(1).unwrap())
            .collect();
        let before = lines.len();
        lines.dedup();
        assert_eq!(before, lines.len(), "{errors:?}");
        assert!(
            errors.iter().all(|e| e.contains("TOML syntax: ")),
            "{errors:?}"
        );
        assert!(errors.iter().all(|e| !e.contains('\n')), "{errors:?}");
    }

    #[test]
    fn an_empty_document_needs_a_daemon_section() {
        assert_eq!(
            errors_of(""),
            ["t.toml:1:1: missing [daemon] section; it must give at least `data_dir`"]
        );
    }

    /// Checks that `parse` returns (never panics) and that every diagnostic is well formed.
    fn must_not_panic(source: &str) {
        let result = std::panic::catch_unwind(|| parse(source, "g.toml", &no_env));
        let Ok(result) = result else {
            panic!("parse panicked on {source:?}");
        };
        let diagnostics = match result {
            Ok((_, warnings)) => warnings,
            Err(errors) => {
                assert!(
                    errors.iter().any(|d| !d.is_warning()),
                    "refused without an error: {source:?}"
                );
                errors
            }
        };
        let lines = source.split('\n').count();
        for d in diagnostics {
            assert!(
                d.line >= 1 && d.line <= lines && d.col >= 1,
                "{d} for {source:?}"
            );
            assert!(!d.message.is_empty() && !d.message.contains('\n'), "{d:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "\0",
            "\u{feff}",
            "[",
            "[[",
            "]]",
            "=",
            "\"",
            "'''",
            "[daemon",
            "[daemon]\ndata_dir = ",
            "[daemon]\ndata_dir = 1",
            "daemon = 1\ncarrier = 2\nwebhook = \"x\"\nnumber = []",
            "carrier = [1, \"a\", {}]",
            "[[number]]\nvmn = \"\"\n[[number.keyword]]\n[[number.keyword]]",
            "[daemon.x]\n[carrier.y]",
            "a.b.c.d = 1",
            "[daemon]\ndata_dir = \"é\"\ncache_mb = 99999999999999999999",
            "[daemon]\ndata_dir = \"x\"\nadmin_listen = \"\u{0}\"",
            "[daemon]\ndata_dir = \"x\"\ndedup_window = \"99999999999999999999d\"",
            "[[webhook]]\nname = 1\nurl = []",
        ] {
            must_not_panic(s);
        }

        // Every prefix of a valid config, cut at each character.
        for (i, _) in VALID.char_indices() {
            must_not_panic(&VALID[..i]);
        }
        let with_keywords = format!("{VALID}{KEYWORDS}");
        for (i, _) in with_keywords.char_indices().skip(VALID.len()) {
            must_not_panic(&with_keywords[..i]);
        }

        // Random edits of a valid config and random strings from TOML's own alphabet.
        let mut rng = fastrand::Rng::with_seed(0x766d_6e64);
        let pieces = [
            "[",
            "]",
            "[[",
            "]]",
            "{",
            "}",
            "=",
            ",",
            ".",
            "\"",
            "'",
            "\n",
            " ",
            "#",
            "\\",
            "é",
            "\u{feff}",
            "\0",
            "0",
            "-1",
            "1e3",
            "true",
            "daemon",
            "carrier",
            "webhook",
            "number",
            "keyword",
            "name",
            "vmn",
            "port",
            "url",
            "\"http://h:1/x\"",
            "\"30s\"",
            "\"567678\"",
            "[[number.keyword]]",
            "aliases",
            "kind = \"poll\"",
            "options = [\"A\"]",
            "reply = \"{from\"",
            "reply_window",
            "\"09:00-18:00 UTC\"",
            "2026-12-31T23:59:59Z",
            "\"STOP\"",
        ];
        for round in 0..2000 {
            let base = if round % 2 == 0 {
                VALID.to_string()
            } else {
                format!("{VALID}{KEYWORDS}")
            };
            let mut text: Vec<char> = base.chars().collect();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..=text.len());
                match rng.u8(..3) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    1 => text.insert(at, rng.char('\0'..='\u{10ffff}')),
                    _ => {
                        let piece = pieces[rng.usize(..pieces.len())];
                        text.splice(at..at, piece.chars());
                    }
                }
            }
            must_not_panic(&text.into_iter().collect::<String>());

            let random: String = (0..rng.usize(0..40))
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            must_not_panic(&random);
        }
    }
}

#[cfg(test)]
mod runtime_keyword_tests {
    //! [`check_keyword_table`]: one keyword table checked against a running config.

    use super::*;

    const CONFIG: &str = r#"
[daemon]
data_dir = "./var"

[[carrier]]
name = "sim"
host = "127.0.0.1"
port = 2775
system_id = "vmnd"
password = "secret"

[[webhook]]
name = "crm"
url = "http://127.0.0.1:8080/sms"

[[number]]
vmn = "567678"
carrier = "sim"
default = { webhook = "crm" }

[[number.keyword]]
keyword = "JOIN"
aliases = ["SUBSCRIBE"]
tenant = "acme"
inbox = "summer"

[[number]]
vmn = "9876543210"
default = { webhook = "crm" }
"#;

    fn config() -> Config {
        parse(CONFIG, "t.toml", &|_| None).expect("valid").0
    }

    fn table(json: serde_json::Value) -> toml::Table {
        keyword_table_from_json(&json).expect("a JSON object")
    }

    fn check(
        config: &Config,
        vmn: &str,
        json: serde_json::Value,
        runtime: &[KeywordRule],
    ) -> Result<CheckedKeyword, KeywordRefusal> {
        let number = config.number(vmn).expect("served");
        check_keyword_table(config, number, &table(json), runtime)
    }

    #[test]
    fn a_valid_table_resolves_like_a_config_keyword() {
        let config = config();
        let checked = check(
            &config,
            "567678",
            serde_json::json!({
                "keyword": "Go Now",
                "aliases": ["GONOW"],
                "reply": "Thanks {from}",
                "reply_after": "10m",
                "expires": "2026-12-31T23:59:59+05:30",
                "expiry_reply": "Over",
                "webhook": "crm",
            }),
            &[],
        )
        .expect("valid");
        let rule = checked.rule;
        assert_eq!(
            (rule.keyword.as_str(), rule.inbox.as_str()),
            ("Go Now", "go now")
        );
        assert_eq!(rule.aliases, ["GONOW"]);
        assert_eq!(rule.actions.reply.as_deref(), Some("Thanks {from}"));
        assert_eq!(rule.actions.reply_after, Some(Duration::from_secs(600)));
        assert_eq!(rule.actions.webhook.as_deref(), Some("crm"));
        assert_eq!(
            rule.expires.map(|e| e.to_rfc3339()).as_deref(),
            Some("2026-12-31T23:59:59+05:30")
        );
        assert_eq!((rule.line, rule.col), (0, 0));
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    }

    #[test]
    fn mistakes_in_the_table_are_every_one_named_and_not_conflicts() {
        let config = config();
        let refusal = check(
            &config,
            "567678",
            serde_json::json!({
                "keyword": "GO",
                "reply": "Hi {name}",
                "reply_window": "9-5",
                "webhook": "nope",
            }),
            &[],
        )
        .unwrap_err();
        assert!(!refusal.conflict);
        let all = refusal.problems.join("\n");
        assert_eq!(refusal.problems.len(), 3, "{all}");
        assert!(all.contains("`reply`: unknown placeholder {name}"), "{all}");
        assert!(
            all.contains("`reply_window`: \"9-5\" has no time zone"),
            "{all}"
        );
        assert!(
            all.contains("`webhook` names unknown webhook \"nope\"; known webhooks: \"crm\""),
            "{all}"
        );

        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "GO", "colour": "red"}),
            &[],
        )
        .unwrap_err();
        assert_eq!(refusal.problems.len(), 1, "{:?}", refusal.problems);
        assert!(
            refusal.problems[0].starts_with("unknown key `colour` in [[number.keyword]]"),
            "{:?}",
            refusal.problems
        );
        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "GO", "aliases": "GONOW"}),
            &[],
        )
        .unwrap_err();
        assert!(
            refusal.problems[0].starts_with("wrong type for `aliases`"),
            "{:?}",
            refusal.problems
        );
    }

    #[test]
    fn clashes_with_the_number_are_conflicts_that_say_where() {
        let config = config();
        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "Stop"}),
            &[],
        )
        .unwrap_err();
        assert!(refusal.conflict);
        assert_eq!(
            refusal.problems,
            [
                "keyword \"Stop\" is reserved for opt-out (reserved words are answered before any campaign keyword); choose another"
            ]
        );

        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "GO", "aliases": ["subscribe!"]}),
            &[],
        )
        .unwrap_err();
        assert!(refusal.conflict);
        assert_eq!(
            refusal.problems,
            [
                "alias \"subscribe!\" of keyword \"GO\" (no tenant) is already used by alias \"SUBSCRIBE\" of keyword \"JOIN\" (tenant \"acme\") in the config file at line 22 (keywords and aliases are compared without case and punctuation)"
            ]
        );

        let earlier = check(&config, "567678", serde_json::json!({"keyword": "GO"}), &[])
            .expect("valid")
            .rule;
        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "go!", "tenant": "globex", "inbox": "summer"}),
            std::slice::from_ref(&earlier),
        )
        .unwrap_err();
        assert!(refusal.conflict);
        let all = refusal.problems.join("\n");
        assert!(
            all.contains("keyword \"go!\" (tenant \"globex\") is already used by keyword \"GO\" (no tenant) added through the admin API"),
            "{all}"
        );
        assert!(
            all.contains("inbox \"summer\" of keyword \"go!\" (tenant \"globex\") is already the inbox of keyword \"JOIN\" (tenant \"acme\") in the config file at line 22"),
            "{all}"
        );

        // A mistake and a clash together: a bad request first.
        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "JOIN", "reply": "{x}"}),
            &[],
        )
        .unwrap_err();
        assert!(!refusal.conflict);
        assert_eq!(refusal.problems.len(), 2, "{:?}", refusal.problems);
        // An alias repeating its own keyword is a mistake, not a clash.
        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "GO", "aliases": ["go"]}),
            &[],
        )
        .unwrap_err();
        assert!(!refusal.conflict, "{:?}", refusal.problems);
        assert!(
            refusal.problems[0].contains("in this request"),
            "{:?}",
            refusal.problems
        );
    }

    #[test]
    fn prefixes_are_warnings_about_the_new_keyword_only() {
        let config = config();
        let checked = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "JOIN CLUB"}),
            &[],
        )
        .expect("valid");
        assert_eq!(
            checked.warnings,
            [
                "keyword \"JOIN CLUB\" (no tenant) starts with keyword \"JOIN\" (tenant \"acme\") in the config file at line 22: messages that start with \"JOIN CLUB\" go to the longer keyword, not to \"JOIN\""
            ]
        );
    }

    #[test]
    fn sms_actions_need_a_carrier_that_can_send() {
        let config = config();
        let refusal = check(
            &config,
            "9876543210",
            serde_json::json!({"keyword": "HI", "reply": "Hello"}),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            refusal.problems,
            ["`reply` sends an SMS; replies leave through the number's carrier: set `carrier`"]
        );
    }

    #[test]
    fn json_values_become_toml_and_read_back_as_written() {
        assert_eq!(
            keyword_table_from_json(&serde_json::json!(["a"])).unwrap_err(),
            ["expected a JSON object of [[number.keyword]] keys, got an array"]
        );
        assert_eq!(
            keyword_table_from_json(&serde_json::json!({"aliases": ["A", null], "tenant": null}))
                .unwrap_err(),
            [
                "`aliases[1]`: null is not a value here; leave the key out instead",
                "`tenant`: null is not a value here; leave the key out instead"
            ]
        );
        let config = config();
        let tricky = "Quote \" back\\slash \n tab\t bell\u{7} {{braces}} ✓ {from}";
        let checked = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "GO", "reply": tricky, "inbox": "x = 1, y"}),
            &[],
        )
        .expect("valid");
        assert_eq!(checked.rule.actions.reply.as_deref(), Some(tricky));
        assert_eq!(checked.rule.inbox, "x = 1, y");
        let refusal = check(
            &config,
            "567678",
            serde_json::json!({"keyword": "GO", "options": [1.5, {"a": true}], "kind": "poll"}),
            &[],
        )
        .unwrap_err();
        assert!(
            refusal.problems[0].starts_with("wrong type for `options"),
            "{:?}",
            refusal.problems
        );
    }
}

#[cfg(test)]
mod optout_tests {
    use super::*;

    /// The valid consent fixture: `[optout]`, a number's own `optout` over it, extra words,
    /// a double opt-in keyword and a subscribe keyword.
    const OPTOUT: &str = include_str!("../tests/config/valid/optout.toml");

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn global_optout_and_a_numbers_own_resolve_key_by_key() {
        let (config, warnings) = parse(OPTOUT, "t.toml", &|_| None).expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");

        let first = config.number("567678").unwrap();
        assert_eq!(
            first.reserved,
            ReservedWords {
                stop: words(&[
                    "STOP",
                    "STOPALL",
                    "STOP ALL",
                    "UNSUBSCRIBE",
                    "CANCEL",
                    "END",
                    "QUIT",
                    "ARRET",
                    "BASTA"
                ]),
                start: words(&["START", "YES", "UNSTOP"]),
                help: words(&["HELP", "INFO"]),
            }
        );
        assert_eq!(
            first.consent,
            ConsentConfig {
                stop_reply: Some(
                    "You are unsubscribed from {to}. Reply START to join again.".into()
                ),
                start_reply: Some("Welcome back to {to}. Reply STOP to unsubscribe.".into()),
                help_reply: Some(
                    "{to}: reply STOP to unsubscribe. Help: support@example.net".into()
                ),
                webhook: Some("consent".into()),
                intent_phrases: false,
            }
        );
        assert_eq!(
            first.keywords[0].subscribe,
            Subscribe::Double {
                confirm_reply: "Reply YES within 2 hours to join {to}.".into(),
                within: Duration::from_secs(2 * 3600),
            }
        );
        assert_eq!(first.keywords[1].subscribe, Subscribe::Single);
        assert_eq!(first.keywords[2].subscribe, Subscribe::No);

        // The second number replaces `help`, adds start words, keeps the global extras.
        let second = config.number("9876543210").unwrap();
        assert_eq!(second.reserved.help, words(&["AIDE", "AIUTO"]));
        assert_eq!(
            second.reserved.start,
            words(&["START", "YES", "UNSTOP", "OUI", "SI"])
        );
        assert!(second.reserved.stop.contains(&"BASTA".to_string()));
        assert_eq!(
            second.consent.stop_reply.as_deref(),
            Some("Vous êtes désabonné de {to}.")
        );
        assert_eq!(
            second.consent.start_reply, first.consent.start_reply,
            "inherited"
        );
        assert_eq!(second.consent.webhook.as_deref(), Some("crm"));
        assert!(second.consent.intent_phrases);
        assert_eq!(second.keywords[0].keyword, "INFO");
    }

    #[test]
    fn without_optout_the_defaults_apply_and_double_waits_a_day() {
        let source = r#"
[daemon]
data_dir = "./var"

[[carrier]]
name = "sim"
host = "127.0.0.1"
port = 2775
system_id = "vmnd"
password = "secret"

[[number]]
vmn = "567678"
carrier = "sim"
default = { reply = "ok" }

[[number.keyword]]
keyword = "JOIN"
subscribe = "double"
confirm_reply = "Reply YES"
"#;
        let (config, _) = parse(source, "t.toml", &|_| None).expect("valid");
        let n = config.number("567678").unwrap();
        assert_eq!(n.reserved, ReservedWords::default());
        assert_eq!(n.consent, ConsentConfig::default());
        assert_eq!(
            n.keywords[0].subscribe,
            Subscribe::Double {
                confirm_reply: "Reply YES".into(),
                within: DEFAULT_CONFIRM_WITHIN,
            }
        );
    }

    #[test]
    fn runtime_keywords_meet_the_effective_lists_and_subscribe_keys() {
        let (config, _) = parse(OPTOUT, "t.toml", &|_| None).expect("valid");
        let number = config.number("567678").unwrap();
        let table = |text: &str| -> toml::Table { text.parse().expect("toml") };
        let refused = check_keyword_table(&config, number, &table("keyword = \"basta\""), &[])
            .expect_err("an extra stop word");
        assert!(refused.conflict, "{refused:?}");
        assert!(
            refused.problems[0].contains("reserved for opt-out"),
            "{refused:?}"
        );
        let checked = check_keyword_table(
            &config,
            number,
            &table("keyword = \"PROMO\"\nsubscribe = \"double\"\nconfirm_reply = \"Reply YES\"\nconfirm_within = \"1h\""),
            &[],
        )
        .expect("valid");
        assert_eq!(
            checked.rule.subscribe,
            Subscribe::Double {
                confirm_reply: "Reply YES".into(),
                within: Duration::from_secs(3600),
            }
        );
        let refused = check_keyword_table(
            &config,
            number,
            &table("keyword = \"PROMO\"\nconfirm_within = \"1h\""),
            &[],
        )
        .expect_err("not double");
        assert!(!refused.conflict);
    }
}

#[cfg(test)]
mod smtp_tests {
    use super::tests::{VALID, errors_of, no_env};
    use super::*;

    fn errors_with(extra: &str) -> Vec<String> {
        errors_of(&format!("{VALID}{extra}"))
    }

    fn parse_with(extra: &str) -> (Config, Vec<Diagnostic>) {
        let source = format!("{VALID}{extra}");
        parse(&source, "t.toml", &no_env).unwrap_or_else(|e| {
            panic!(
                "refused: {:#?}",
                e.iter().map(|d| d.to_string()).collect::<Vec<_>>()
            )
        })
    }

    /// A complete `[smtp]`, appended after the numbers of `VALID`.
    const SMTP: &str = r#"
[smtp]
host = "127.0.0.1"
port = 2525
from = "vmnd <vmnd@example.net>"
reply_domain = "Reply.Example.NET"
lmtp_listen = "127.0.0.1:2424"
"#;

    #[test]
    fn smtp_resolves_with_its_defaults_and_email_actions_are_checked() {
        let (config, warnings) = parse_with(&format!(
            "{SMTP}\n[[number.keyword]]\nkeyword = \"JOIN\"\nemail = [\" leads@acme.example \", \"desk@acme.example\"]\n"
        ));
        assert!(warnings.is_empty(), "{warnings:?}");
        let smtp = config.smtp.as_ref().expect("smtp");
        assert_eq!(smtp.port, 2525);
        assert_eq!(smtp.tls, SmtpTls::None);
        assert_eq!(smtp.credentials, None);
        assert_eq!(smtp.reply_domain, "reply.example.net");
        assert_eq!(smtp.retry_for, Duration::from_secs(86_400));
        assert_eq!(smtp.reply_token_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(smtp.subject, DEFAULT_EMAIL_SUBJECT);
        assert_eq!(smtp.concurrency, 4);
        let join = &config.numbers[0].keywords[0];
        assert_eq!(
            join.actions.email,
            ["leads@acme.example", "desk@acme.example"]
        );
    }

    #[test]
    fn pipeline_is_read_and_kept_in_its_range() {
        let with = |value: &str| {
            let source = VALID.replace(
                "secret = \"whsec-test\"\n",
                &format!("secret = \"whsec-test\"\npipeline = {value}\n"),
            );
            parse(&source, "t.toml", &|_: &str| None)
        };
        let (config, _) = with("16").expect("pipeline = 16 is valid");
        assert_eq!(config.webhook("crm").unwrap().pipeline, 16);
        for bad in ["0", "65", "-1"] {
            let errors: Vec<String> = match with(bad) {
                Ok(_) => panic!("pipeline = {bad}: accepted"),
                Err(d) => d.iter().map(|d| d.to_string()).collect(),
            };
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].contains("`pipeline` must be between 1 and 64"),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn smtp_mistakes_are_reported_each_at_its_key() {
        let env = |k: &str| (k == "SMTP_PW").then(|| "pw".to_string());
        for (change, says) in [
            (
                "tls = \"ssl\"",
                "`tls` must be \"none\", \"starttls\" or \"tls\", got \"ssl\"",
            ),
            (
                "username = \"u\"",
                "`username` needs `password` or `password_env`",
            ),
            ("password = \"p\"", "`password` is given without `username`"),
            (
                "username = \"u\"\npassword = \"p\"\npassword_env = \"SMTP_PW\"",
                "give either `password` or `password_env`, not both",
            ),
            (
                "subject = \"{sender}\"",
                "`subject`: unknown placeholder {sender}",
            ),
            ("body = \"\"", "`body` is empty"),
            ("retry_for = \"soon\"", "`retry_for`"),
            (
                "reply_token_ttl = \"0s\"",
                "`reply_token_ttl` must be longer than zero",
            ),
            ("concurrency = 0", "`concurrency` must be between 1 and 256"),
        ] {
            let source = format!("{VALID}{SMTP}{change}\n");
            let errors: Vec<String> = match parse(&source, "t.toml", &env) {
                Ok(_) => panic!("{change}: accepted"),
                Err(d) => d.iter().map(|d| d.to_string()).collect(),
            };
            assert_eq!(errors.len(), 1, "{change}: {errors:?}");
            assert!(errors[0].contains(says), "{change}: {errors:?}");
        }
        for (from, to, says) in [
            (
                "lmtp_listen = \"127.0.0.1:2424\"",
                "lmtp_listen = \"0.0.0.0:2424\"",
                "is not a loopback address",
            ),
            (
                "lmtp_listen = \"127.0.0.1:2424\"",
                "lmtp_listen = \"localhost\"",
                "is not a socket address",
            ),
            (
                "reply_domain = \"Reply.Example.NET\"",
                "reply_domain = \"reply..example\"",
                "is not a domain name",
            ),
            (
                "from = \"vmnd <vmnd@example.net>\"",
                "from = \"nobody\"",
                "`from` \"nobody\" is not an e-mail address",
            ),
            (
                "port = 2525",
                "port = 0",
                "`port` must be between 1 and 65535",
            ),
        ] {
            let errors = errors_of(&format!("{VALID}{}", SMTP.replace(from, to)));
            assert_eq!(errors.len(), 1, "{to}: {errors:?}");
            assert!(errors[0].contains(says), "{to}: {errors:?}");
        }
        // `ca_file` must hold PEM certificates.
        for (value, says) in [
            (
                "\"/nonexistent/ca.pem\"",
                "`ca_file`: cannot read /nonexistent/ca.pem",
            ),
            ("\"Cargo.toml\"", "holds no PEM certificate"),
        ] {
            let errors = errors_of(&format!("{VALID}{SMTP}tls = \"tls\"\nca_file = {value}\n"));
            assert_eq!(errors.len(), 1, "{value}: {errors:?}");
            assert!(errors[0].contains(says), "{value}: {errors:?}");
        }
        // Keys the section requires.
        let errors = errors_of(&format!(
            "{VALID}\n[smtp]\nhost = \"127.0.0.1\"\nport = 25\n"
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("missing key `from` in [smtp]"),
            "{errors:?}"
        );
    }

    #[test]
    fn email_addresses_are_checked_and_need_smtp() {
        for (list, says) in [
            ("[]", "`email` is empty"),
            (
                "[\"not-an-address\"]",
                "\"not-an-address\" is not an e-mail address",
            ),
            ("[\"Desk <desk@acme.example>\"]", "write the bare address"),
            (
                "[\"a@acme.example\", \"A@acme.example\"]",
                "lists A@acme.example twice",
            ),
        ] {
            let errors = errors_with(&format!(
                "{SMTP}\n[[number.keyword]]\nkeyword = \"K\"\nemail = {list}\n"
            ));
            assert_eq!(errors.len(), 1, "{list}: {errors:?}");
            assert!(errors[0].contains(says), "{list}: {errors:?}");
        }
        // Without [smtp], on a keyword and on a default, each at its key.
        let source = VALID.replace(
            "default = { webhook = \"crm\" }",
            "default = { webhook = \"crm\", email = [\"desk@acme.example\"] }",
        );
        let errors = errors_of(&format!(
            "{source}\n[[number.keyword]]\nkeyword = \"K\"\nemail = [\"a@b.example\"]\n"
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("`default.email` forwards by e-mail, but there is no [smtp]"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("`email` forwards by e-mail, but there is no [smtp]"),
            "{errors:?}"
        );
    }
}
