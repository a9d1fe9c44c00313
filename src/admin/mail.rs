//! `GET /api/mail/replies`: every e-mail that came back over LMTP, accepted (with the SMS job
//! it became) or rejected (with the code and reason given to the MTA), newest first, paged with
//! `before=<id>` and `limit`, filtered by `outcome`; the latest of them on the operators' page; and the descriptions of
//! the `vmnd_email_*` metrics.

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::json;

use std::fmt::Write;

use super::page::escape;
use super::{AdminState, MAX_PAGE, Reply, error, json_reply, parse_limit};
use crate::store;

pub(super) fn list_replies(state: &AdminState, q: &HashMap<String, String>) -> Reply {
    let limit = match parse_limit(q, 100, MAX_PAGE) {
        Ok(n) => n,
        Err(e) => return *e,
    };
    let before = match q.get("before") {
        None => None,
        Some(text) => match store::parse_id(text) {
            Some(id) => Some(id),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("before: not a reply id: {text:?}"),
                );
            }
        },
    };
    let outcome = match q.get("outcome").map(String::as_str) {
        None => None,
        Some(o @ ("accepted" | "rejected" | "ignored")) => Some(o),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("outcome: expected accepted, rejected or ignored, got {other:?}"),
            );
        }
    };
    match state.store.mail_replies(before, outcome, limit) {
        Ok(replies) => {
            let next = (replies.len() == limit)
                .then(|| replies.last().map(|r| r.id.clone()))
                .flatten();
            json_reply(StatusCode::OK, &json!({ "replies": replies, "next": next }))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Describes the e-mail metrics for `/metrics`.
pub(super) fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "vmnd_email_attempts_total",
        "e-mail forward attempts per outcome (sent, failed: retried, refused: dead-lettered)"
    );
    describe_histogram!(
        "vmnd_email_latency_seconds",
        "one e-mail forward attempt, connection included"
    );
    describe_counter!(
        "vmnd_email_replies_total",
        "e-mails handed over by LMTP, per outcome (accepted, rejected, deferred) and reason"
    );
}

/// The operators' page section: the latest replies by e-mail, when `[smtp]` is configured.
pub(super) fn page_section(state: &AdminState) -> String {
    if state.config.smtp.is_none() {
        return String::new();
    }
    let mut html = String::from(
        "<h2>Replies by e-mail</h2><table><tr><th>received</th><th>from</th><th>outcome</th>\
         <th>reason</th><th>SMS to</th><th>text</th></tr>",
    );
    for r in state.store.mail_replies(None, None, 20).unwrap_or_default() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.received_at),
            escape(r.from.as_deref().unwrap_or(&r.envelope_from)),
            escape(&r.outcome),
            r.code,
            escape(&r.reason),
            escape(r.msisdn.as_deref().unwrap_or("")),
            escape(r.text.as_deref().unwrap_or("")),
        );
    }
    html.push_str("</table><p><a href=\"/api/mail/replies\">replies API</a></p>");
    html
}
