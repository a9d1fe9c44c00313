//! vmnd: receives the SMS people send to a business's numbers and acts on them.
//!
//! Module map (follow one message from top to bottom):
//!
//! | module | what it is for |
//! |---|---|
//! | [`config`] | the operator's TOML: parsing with positions, validation, `vmnd check` diagnostics |
//! | [`smpp::codec`] | framing by `command_length`; a bad length is a value, not a stream error |
//! | [`smpp::pdu`] | the one adapter over rusmpp: our own owned PDU types, decode and encode |
//! | [`smpp::text`] | GSM 03.38 (packed and unpacked), ASCII, Latin-1, UCS2/UTF-16 and DCS groups |
//! | [`smpp::udh`] | user data headers with several information elements; concatenation |
//! | [`smpp::receipt`] | delivery receipt text (`id:... stat:... err:...`) |
//! | [`smpp::session`] | one bound SMPP session: bind, enquire_link, window, unbind, acks after commit |
//! | [`smpp::supervisor`] | one per carrier (on the sessions' own runtime): reconnects with backoff and jitter, publishes bind state |
//! | [`store::writer`] | the group commit: a thread that journals PDUs and releases their acks; bounded handoff to the processor |
//! | [`store::journal`] | the inbound journal: append-only CRC-checked segment files, fdatasync per commit, recovery |
//! | [`store`] | everything on disk behind one module: the journal, an LSM tree (fjall) for message records, attempts and when each contact was last seen, and sled for parts, receipts, consent and the rest |
//! | [`store::hold`] | journal holds: a webhook job kept in memory only until delivered, its journal entry its durable copy |
//! | [`store::queue`] | the durable job queue: due-time ordered, retries, dead letters |
//! | [`store::outbound`] | SMS vmnd sent and their state; receipts correlated by carrier message id |
//! | [`store::polls`] | poll votes, one per sender per poll |
//! | [`store::consent`] | consent state (a compact hot tree), contacts and the consent ledger |
//! | [`store::keywords`] | keywords added at run time through the admin API |
//! | [`actions`] | a routing decision turned into jobs: webhook events, replies, forwards, poll votes |
//! | [`guard`] | caps on auto-replies and forwards per sender, and autoresponder loop detection |
//! | [`processor`] | after the ack (own thread, lower priority): receipts, reassembly, text decoding, the message record, jobs |
//! | [`routing::keywords`] | keyword normalisation and the word-level trie index matched on the hot path |
//! | [`routing::router`] | which rule of a number a message matches (reserved words first), and why others did not |
//! | [`consent::intent`] | opt-out written in words ("please stop texting me"), recognised conservatively |
//! | [`outbound::dispatcher`] | runs queued jobs per endpoint (webhook or carrier) with limits and backoff; consent enforced at send time |
//! | [`outbound::webhook`] | one signed HTTP(S) request with a keep-alive pool (rustls) |
//! | [`outbound::pipeline`] | HTTP/1.1 pipelining for webhooks with `pipeline = N`: many requests per write, answers parsed in order (httparse) |
//! | [`outbound::webhook_format`] | what an event looks like for one webhook: JSON, form or GET, chosen fields |
//! | [`json_write`] | JSON strings and numbers written by hand for the per-message documents, byte for byte serde_json's |
//! | [`outbound::email`] | e-mail forwards over SMTP (lettre, rustls): reply token, stable Message-ID, threading |
//! | [`inbound_mail`] | LMTP listener: replies by e-mail to a forward's `Reply-To` go back as SMS |
//! | [`inbound_mail::reply`] | a reply's own text: plain over HTML, quoted history and signatures cut |
//! | [`store::mail`] | reply tokens and the record of every e-mail that came back |
//! | [`outbound::sms_text`] | outbound text: GSM 03.38 or UCS2, segmentation with concatenation UDH |
//! | [`admin`] | hyper server: health, metrics, messages, keywords, polls, outbound, contacts, ledger, dead letters and replay, route, `/` |
//! | [`daemon`] | wires everything together for `vmnd run` and `vmnd demo` |
//! | [`demo`] | `vmnd demo`: daemon, simulated carrier, HTTP sink, scripted messages |
//! | [`sim`] | a carrier SMSC simulator used by tests, benches and the demo |
//! | [`http_sink`] | a recording HTTP server standing in for a tenant's endpoint (tests, demo, benches) |
//! | [`smtp_sink`] | a recording SMTP server standing in for the operator's mail relay in the demo |
//! | [`cli`] | the subcommands behind `main.rs` |
//! | [`clock`] | durations in config syntax and timestamps in the contract's format |
//! | [`thread_priority`] | short time slices for the acknowledgement path's threads, a lower priority for the processor |
//! | [`allocator`] | the process's allocator (mimalloc) and how long it keeps freed memory |

/// `println!` for the command line's output, without its panic when stdout is closed
/// (`vmnd route ... | head -1`): a reader that went away is not the command's failure.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod actions;
pub mod admin;
pub mod allocator;
pub mod cli;
pub mod clock;
pub mod config;
pub mod consent;
pub mod daemon;
pub mod demo;
pub mod guard;
pub mod http_sink;
pub mod inbound_mail;
pub mod json_write;
pub mod outbound;
pub mod processor;
pub mod routing;
pub mod sim;
pub mod smpp;
pub mod smtp_sink;
pub mod store;
pub mod thread_priority;
