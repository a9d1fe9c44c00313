//! Dead letters and job attempts in the admin API: list, inspect, replay.
//!
//! - `GET /api/deadletters`: newest first; filters `webhook` (a webhook's name, or
//!   `sms:<carrier>`), `since`, `until` (RFC 3339 or Unix seconds, on the time the job died),
//!   `before` (a job id: the next page), `limit`.
//! - `GET /api/deadletters/{id}`: one letter with the job's recorded attempts.
//! - `POST /api/deadletters/{id}/replay`: back in the queue as a fresh job, due now.
//! - `POST /api/deadletters/replay?webhook=NAME[&since=..][&until=..]`: every matching letter
//!   of one webhook (the webhook is required, so a stray request cannot replay everything).
//! - `GET /api/jobs/{id}/attempts`: the recorded requests of any job, pending or dead.
//!
//! A replayed job keeps its id, so the receiver de-duplicates it like any retry
//! (`Vmnd-Event-Id` is the message's id).

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::json;

use super::{AdminState, MAX_PAGE, Reply, error, json_reply, parse_limit, parse_time};
use crate::clock;
use crate::store::queue::DeadLetterFilter;
use crate::store::{self};

/// Reads the filter of a listing or a bulk replay; the error is a 400's message.
fn filter(q: &HashMap<String, String>) -> Result<DeadLetterFilter, String> {
    let mut filter = DeadLetterFilter {
        queue: q.get("webhook").cloned(),
        ..Default::default()
    };
    for (key, slot) in [
        ("since", &mut filter.since_ms),
        ("until", &mut filter.until_ms),
    ] {
        if let Some(text) = q.get(key) {
            *slot = Some(parse_time(text).ok_or_else(|| {
                format!("{key}: expected RFC 3339 time or Unix seconds, got {text:?}")
            })?);
        }
    }
    if let Some(text) = q.get("before") {
        filter.before =
            Some(store::parse_id(text).ok_or_else(|| {
                format!("before: expected a job id (16 hex digits), got {text:?}")
            })?);
    }
    Ok(filter)
}

/// `GET /api/deadletters`.
pub(super) fn list(state: &AdminState, q: &HashMap<String, String>) -> Reply {
    let limit = match parse_limit(q, 100, MAX_PAGE) {
        Ok(n) => n,
        Err(e) => return *e,
    };
    let filter = match filter(q) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match state.store.dead_letters_matching(&filter, limit) {
        Ok(letters) => {
            let next = (letters.len() == limit)
                .then(|| letters.last().map(|l| store::format_id(l.job.id)))
                .flatten();
            let letters: Vec<_> = letters
                .iter()
                .map(|l| {
                    json!({
                        "id": store::format_id(l.job.id),
                        "message_id": store::format_id(l.job.message_id),
                        "queue": l.job.queue_key(),
                        "event": l.job.event,
                        "attempts": l.job.attempts,
                        "last_status": l.job.last_status,
                        "dead_at_ms": l.dead_at_ms,
                        "reason": l.reason,
                        "job": l.job,
                    })
                })
                .collect();
            json_reply(
                StatusCode::OK,
                &json!({ "deadletters": letters, "next_before": next }),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A job id from a path; the error is a 400's message.
fn job_id(text: &str) -> Result<u64, String> {
    store::parse_id(text).ok_or_else(|| format!("expected a job id (16 hex digits), got {text:?}"))
}

/// `GET /api/deadletters/{id}`.
pub(super) fn one(state: &AdminState, id: &str) -> Reply {
    let id = match job_id(id) {
        Ok(id) => id,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let found = state
        .store
        .dead_letter(id)
        .and_then(|l| Ok((l, state.store.attempts(id)?)));
    match found {
        Ok((Some(letter), attempts)) => json_reply(
            StatusCode::OK,
            &json!({ "deadletter": letter, "attempts": attempts }),
        ),
        Ok((None, _)) => error(StatusCode::NOT_FOUND, "no such dead letter"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /api/jobs/{id}/attempts`.
pub(super) fn attempts(state: &AdminState, id: &str) -> Reply {
    let id = match job_id(id) {
        Ok(id) => id,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match state.store.attempts(id) {
        Ok(attempts) => json_reply(
            StatusCode::OK,
            &json!({ "id": store::format_id(id), "attempts": attempts }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Puts one letter back in the queue and tells the dispatcher.
fn replay_one(state: &AdminState, id: u64) -> store::Result<bool> {
    match state.store.replay_dead_letter(id, clock::now_ms())? {
        Some(job) => {
            tracing::info!(job = id, queue = %job.queue_key(), "dead letter replayed");
            metrics::counter!("vmnd_deadletters_replayed_total", "queue" => job.queue_key())
                .increment(1);
            state.scheduler.schedule(&job);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// `POST /api/deadletters/{id}/replay`.
pub(super) fn replay(state: &AdminState, id: &str) -> Reply {
    let id = match job_id(id) {
        Ok(id) => id,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match replay_one(state, id) {
        Ok(true) => json_reply(
            StatusCode::OK,
            &json!({ "replayed": [store::format_id(id)] }),
        ),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such dead letter"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `POST /api/deadletters/replay?webhook=NAME[&since=..][&until=..]`.
pub(super) fn replay_matching(state: &AdminState, q: &HashMap<String, String>) -> Reply {
    if !q.contains_key("webhook") {
        return error(
            StatusCode::BAD_REQUEST,
            "webhook is required: name the webhook (or sms:<carrier>) whose dead letters to replay",
        );
    }
    let mut filter = match filter(q) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut replayed = 0u64;
    loop {
        let page = match state.store.dead_letters_matching(&filter, 1000) {
            Ok(page) => page,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let Some(last) = page.last() else {
            break;
        };
        filter.before = Some(last.job.id);
        for letter in &page {
            match replay_one(state, letter.job.id) {
                Ok(true) => replayed += 1,
                Ok(false) => {}
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("{e} (after replaying {replayed})"),
                    );
                }
            }
        }
    }
    json_reply(StatusCode::OK, &json!({ "replayed_count": replayed }))
}
