//! The opt-in database and the consent ledger through the admin API (issue 5):
//! - `GET /api/numbers/{vmn}/contacts?state=&after=&limit=&format=csv`: contacts in msisdn
//!   order, JSON `{contacts, next}` or CSV (`msisdn,state,first_seen,last_seen,source_keyword,
//!   attributes`, the next page's cursor in the `Vmnd-Next` header);
//! - `GET /api/numbers/{vmn}/ledger?msisdn=&after=&limit=`: changes oldest first `{entries, next}`;
//! - `POST /api/numbers/{vmn}/contacts/import`: an existing opt-out list as CSV, reported line by
//!   line; every good row is applied (and recorded in the ledger with source `import`) even when
//!   other rows are bad.
//!
//! The CSV this module writes is one it reads: exporting the opted-out contacts of one number
//! and importing that file into another gives the same set.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::{Request, StatusCode};
use serde_json::json;

use super::{AdminState, MAX_PAGE, Reply, csv_field, error, json_reply, parse_limit, reply};
use crate::clock;
use crate::store::consent::{ConsentChange, ConsentState, Contact};
use crate::store::{self, Store};

/// Largest import body: about half a million rows.
pub const MAX_IMPORT_BODY: usize = 16 * 1024 * 1024;
/// Rows applied per store transaction: small, because sled blocks every read (the consent
/// check on the outbound hot path too) while a transaction commits.
const IMPORT_BATCH: usize = 32;
/// Largest CSV page: exports are read by programs, in few requests.
const MAX_CSV_PAGE: usize = 1_000_000;
/// Bad rows reported in full; past this only counted (a wrong file should not make a 50 MB
/// answer).
const MAX_REPORTED_ERRORS: usize = 1000;
/// An opt-out time this far in the future is a mistake in the file, not clock skew.
const FUTURE_SLACK_MS: u64 = 24 * 3600 * 1000;
/// The CSV header of an export; an import recognises it (and any header naming `msisdn`).
pub const CSV_HEADER: &str = "msisdn,state,first_seen,last_seen,source_keyword,attributes";

/// `GET /api/numbers/{vmn}/contacts`.
pub(super) fn list(state: &AdminState, vmn: &str, q: &HashMap<String, String>) -> Reply {
    let Some(number) = state.config.number(vmn) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("vmnd does not serve {vmn:?}"),
        );
    };
    let filter = match q.get("state").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(text) => match ConsentState::parse(text) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("state: unknown, opted_in, opted_out, pending or all, not {text:?}"),
                );
            }
        },
    };
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("format: json or csv, not {other:?}"),
            );
        }
    };
    let limit = match if csv {
        parse_limit(q, MAX_CSV_PAGE, MAX_CSV_PAGE)
    } else {
        parse_limit(q, 100, MAX_PAGE)
    } {
        Ok(n) => n,
        Err(e) => return *e,
    };
    let after = q.get("after").map(String::as_str).filter(|a| !a.is_empty());
    let contacts = match state.store.contacts(&number.vmn, filter, after, limit) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let next = (contacts.len() == limit)
        .then(|| contacts.last().map(|c| c.msisdn.clone()))
        .flatten();
    if !csv {
        return json_reply(
            StatusCode::OK,
            &json!({ "vmn": number.vmn, "contacts": contacts, "next": next }),
        );
    }
    let mut body = String::with_capacity(64 * (contacts.len() + 1));
    body.push_str(CSV_HEADER);
    body.push_str("\r\n");
    for c in &contacts {
        push_csv_row(&mut body, c);
    }
    let mut response = reply(StatusCode::OK, "text/csv; charset=utf-8", body);
    if let Some(value) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("vmnd-next", value);
    }
    response
}

fn push_csv_row(out: &mut String, c: &Contact) {
    let attributes = serde_json::to_string(&c.attributes).unwrap_or_default();
    let fields = [
        csv_field(&c.msisdn),
        c.state.as_str().to_string(),
        clock::rfc3339_ms(c.first_seen_ms),
        clock::rfc3339_ms(c.last_seen_ms),
        csv_field(c.source_keyword.as_deref().unwrap_or("")),
        csv_field(&attributes),
    ];
    out.push_str(&fields.join(","));
    out.push_str("\r\n");
}

/// `GET /api/numbers/{vmn}/ledger`.
pub(super) fn ledger(state: &AdminState, vmn: &str, q: &HashMap<String, String>) -> Reply {
    let Some(number) = state.config.number(vmn) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("vmnd does not serve {vmn:?}"),
        );
    };
    let limit = match parse_limit(q, 100, MAX_PAGE) {
        Ok(n) => n,
        Err(e) => return *e,
    };
    let after = match q.get("after").map(String::as_str) {
        None | Some("") => None,
        Some(text) => match store::parse_id(text) {
            Some(id) => Some(id),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("after: not a ledger id (the `next` of a page): {text:?}"),
                );
            }
        },
    };
    let msisdn = q
        .get("msisdn")
        .map(String::as_str)
        .filter(|m| !m.is_empty());
    match state.store.ledger(&number.vmn, msisdn, after, limit) {
        Ok(entries) => {
            let next = (entries.len() == limit)
                .then(|| entries.last().map(|(id, _)| store::format_id(*id)))
                .flatten();
            let entries: Vec<serde_json::Value> = entries
                .into_iter()
                .map(|(id, entry)| {
                    let mut value = json!(entry);
                    if let Some(map) = value.as_object_mut() {
                        map.insert("id".into(), json!(store::format_id(id)));
                        map.insert("at".into(), json!(clock::rfc3339_ms(entry.at_ms)));
                    }
                    value
                })
                .collect();
            json_reply(
                StatusCode::OK,
                &json!({ "vmn": number.vmn, "entries": entries, "next": next }),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `POST /api/numbers/{vmn}/contacts/import`.
pub(super) async fn import(state: &AdminState, vmn: &str, req: Request<Incoming>) -> Reply {
    let Some(number) = state.config.number(vmn) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("vmnd does not serve {vmn:?}"),
        );
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("an import is at most {MAX_IMPORT_BODY} bytes: split the file"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_IMPORT_BODY as u64) {
        return too_large();
    }
    let body: Bytes = match http_body_util::Limited::new(req.into_body(), MAX_IMPORT_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the CSV is not UTF-8");
    };
    let now = clock::now_ms();
    let (rows, errors) = parse_opt_out_csv(text, now);
    let store = state.store.clone();
    let vmn = number.vmn.clone();
    // Sled calls block: off the admin server's async workers.
    let applied = tokio::task::spawn_blocking(move || apply_rows(&store, &vmn, &rows, now)).await;
    let (imported, unchanged) = match applied {
        Ok(Ok(counts)) => counts,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    // The evidence is durable before we say it is recorded.
    if let Err(e) = state.store.commit().await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    let error_count = errors.len();
    json_reply(
        StatusCode::OK,
        &json!({
            "imported": imported,
            "unchanged": unchanged,
            "error_count": error_count,
            "errors": errors
                .iter()
                .take(MAX_REPORTED_ERRORS)
                .map(|e| json!({ "line": e.line, "error": e.error }))
                .collect::<Vec<_>>(),
        }),
    )
}

/// A good row of an opt-out list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutRow {
    /// Where the record starts in the file (1-based).
    pub line: usize,
    /// Normalised: digits only.
    pub msisdn: String,
    /// When they opted out, if the file says.
    pub opted_out_at_ms: Option<u64>,
    /// The record as written, for the ledger's evidence.
    pub raw: String,
}

/// A bad row, reported back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: usize,
    pub error: String,
}

/// Applies good rows in batches (the ledger text is the row as written); returns
/// (changed, unchanged).
fn apply_rows(
    store: &Store,
    vmn: &str,
    rows: &[OptOutRow],
    now: u64,
) -> store::Result<(usize, usize)> {
    let (mut imported, mut unchanged) = (0, 0);
    let texts: Vec<String> = rows.iter().map(|r| format!("import: {}", r.raw)).collect();
    for (chunk, texts) in rows.chunks(IMPORT_BATCH).zip(texts.chunks(IMPORT_BATCH)) {
        let changes: Vec<ConsentChange> = chunk
            .iter()
            .zip(texts)
            .map(|(row, text)| ConsentChange {
                vmn,
                msisdn: &row.msisdn,
                to: ConsentState::OptedOut,
                at_ms: row.opted_out_at_ms.unwrap_or(now),
                text,
                matched: "import",
                message_id: None,
                source: "import",
                keyword: None,
                attributes: &[],
                pending_until_ms: None,
            })
            .collect();
        for (_, changed) in store.apply_consents(&changes)? {
            if changed {
                imported += 1;
            } else {
                unchanged += 1;
            }
        }
    }
    Ok((imported, unchanged))
}

/// Columns of an import, by position when the file has no header.
struct Columns {
    msisdn: usize,
    opted_out_at: Option<usize>,
    /// An export's `state` column: only `opted_out` rows are taken.
    state: Option<usize>,
    /// Without a header: more fields than `msisdn,opted_out_at,note` is an error.
    max_fields: Option<usize>,
}

const POSITIONAL: Columns = Columns {
    msisdn: 0,
    opted_out_at: Some(1),
    state: None,
    max_fields: Some(3),
};

/// Parses an opt-out list: `msisdn[,opted_out_at][,note]` (RFC 4180 quoting), an optional header
/// line (then columns go by name: `msisdn`, `opted_out_at`, `state`; others, `note` among them,
/// are kept only as part of the row's text, so an export reads back), blank lines and `#`
/// comments ignored. Returns the good rows and the bad ones with their line numbers, in file
/// order.
pub fn parse_opt_out_csv(text: &str, now_ms: u64) -> (Vec<OptOutRow>, Vec<RowError>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut columns: Option<Columns> = None;
    for record in records(text.strip_prefix('\u{feff}').unwrap_or(text)) {
        let (line, raw, fields) = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if columns.is_none() {
            // The first record is a header when its first field has no digit at all.
            let first = fields.first().map(|f| f.trim()).unwrap_or("");
            if first.chars().any(|c| c.is_ascii_digit()) {
                columns = Some(POSITIONAL);
            } else {
                match header_columns(&fields) {
                    Ok(c) => {
                        columns = Some(c);
                        continue;
                    }
                    Err(e) => {
                        errors.push(RowError { line, error: e });
                        // Nothing below can be read with an unknown layout.
                        return (Vec::new(), errors);
                    }
                }
            }
        }
        let Some(cols) = &columns else {
            continue;
        };
        match parse_row(cols, &fields, now_ms) {
            Ok((msisdn, opted_out_at_ms)) => rows.push(OptOutRow {
                line,
                msisdn,
                opted_out_at_ms,
                raw: trimmed.to_string(),
            }),
            Err(error) => errors.push(RowError { line, error }),
        }
    }
    (rows, errors)
}

fn header_columns(fields: &[String]) -> Result<Columns, String> {
    let names: Vec<String> = fields
        .iter()
        .map(|f| f.trim().to_ascii_lowercase())
        .collect();
    let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
    let msisdn = find(&["msisdn", "phone", "mobile", "number"]).ok_or_else(|| {
        format!(
            "header {:?} has no msisdn column (expected msisdn[,opted_out_at][,note])",
            fields.join(",")
        )
    })?;
    Ok(Columns {
        msisdn,
        opted_out_at: find(&["opted_out_at"]),
        state: find(&["state"]),
        max_fields: None,
    })
}

fn parse_row(
    cols: &Columns,
    fields: &[String],
    now_ms: u64,
) -> Result<(String, Option<u64>), String> {
    if let Some(max) = cols.max_fields.filter(|m| fields.len() > *m) {
        return Err(format!(
            "{} fields, expected at most {max}: msisdn[,opted_out_at][,note] (quote a note that has commas)",
            fields.len()
        ));
    }
    let field = |i: Option<usize>| i.and_then(|i| fields.get(i)).map(|f| f.trim());
    if let Some(state) = field(cols.state).filter(|s| !s.is_empty()) {
        if state != ConsentState::OptedOut.as_str() {
            return Err(format!(
                "state is {state:?}: only opted_out rows are imported"
            ));
        }
    }
    let msisdn = parse_msisdn(field(Some(cols.msisdn)).unwrap_or(""))?;
    let at = match field(cols.opted_out_at).filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => {
            let at = clock::parse_rfc3339_ms(text).ok_or_else(|| {
                format!(
                    "opted_out_at {text:?} is not an RFC 3339 time (e.g. 2026-11-28T14:00:00Z) or empty"
                )
            })?;
            if at > now_ms.saturating_add(FUTURE_SLACK_MS) {
                return Err(format!("opted_out_at {text:?} is in the future"));
            }
            Some(at)
        }
    };
    Ok((msisdn, at))
}

/// Strips `+`, blanks and `-`; then 8..=15 digits.
fn parse_msisdn(text: &str) -> Result<String, String> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, '+' | '-') && !c.is_whitespace())
        .collect();
    if digits.is_empty() {
        return Err("no msisdn".into());
    }
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_digit()) {
        return Err(format!(
            "msisdn {text:?} contains {bad:?}: digits only (with optional +, blanks, -)"
        ));
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(format!(
            "msisdn {text:?} has {} digits: expected 8 to 15, international form",
            digits.len()
        ));
    }
    Ok(digits)
}

type Record = (usize, String, Vec<String>);

/// Splits CSV text into records with RFC 4180 quoting (a quoted field may span lines). Yields
/// (first line number, raw text of the record, fields) or an error for a record whose quote
/// never closes.
fn records(text: &str) -> impl Iterator<Item = Result<Record, RowError>> + '_ {
    let mut rest = text;
    let mut line = 1usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let start_line = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut in_quotes = false;
        let mut at_field_start = true;
        let mut chars = rest.char_indices().peekable();
        let mut end = rest.len();
        let mut next_start = rest.len();
        while let Some((i, c)) = chars.next() {
            if in_quotes {
                match c {
                    '"' if chars.peek().map(|(_, c)| *c) == Some('"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => in_quotes = false,
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' if at_field_start => {
                    in_quotes = true;
                    at_field_start = false;
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\n' => {
                    end = i;
                    next_start = i + 1;
                    break;
                }
                '\r' if chars.peek().map(|(_, c)| *c) == Some('\n') => {}
                ' ' | '\t' if at_field_start => field.push(c),
                _ => {
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        let raw = rest[..end].trim_end_matches('\r').to_string();
        rest = &rest[next_start..];
        line += 1;
        if in_quotes {
            return Some(Err(RowError {
                line: start_line,
                error: "a quoted field is never closed".into(),
            }));
        }
        fields.push(field);
        Some(Ok((start_line, raw, fields)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn rows_comments_header_and_errors_by_line() {
        let text = "msisdn,opted_out_at,note\n\
                    # exported from the old system\n\
                    +91 98123-45678,2026-01-02T03:04:05Z,called support\n\
                    \n\
                    12345,,\n\
                    919800000001,yesterday\n\
                    919800000002,,\"said \"\"stop\"\", twice\"\n\
                    91980000000x\n\
                    919800000003,2999-01-01T00:00:00Z\n";
        let (rows, errors) = parse_opt_out_csv(text, NOW);
        let got: Vec<(usize, &str)> = rows.iter().map(|r| (r.line, r.msisdn.as_str())).collect();
        assert_eq!(got, [(3, "919812345678"), (7, "919800000002")]);
        assert_eq!(rows[0].opted_out_at_ms, Some(1_767_323_045_000));
        assert_eq!(rows[1].raw, "919800000002,,\"said \"\"stop\"\", twice\"");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [5, 6, 8, 9], "{errors:?}");
        assert!(errors[0].error.contains("5 digits"), "{errors:?}");
        assert!(errors[1].error.contains("RFC 3339"), "{errors:?}");
        assert!(errors[2].error.contains("'x'"), "{errors:?}");
        assert!(errors[3].error.contains("future"), "{errors:?}");
    }

    #[test]
    fn no_header_is_positional_and_extra_fields_are_refused() {
        let (rows, errors) = parse_opt_out_csv("919812345678\r\n919812345679,,a,b\r\n", NOW);
        assert_eq!(rows.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
    }

    #[test]
    fn an_export_reads_back_and_other_states_are_refused() {
        let text = format!(
            "{CSV_HEADER}\r\n919812345678,opted_out,2026-01-01T00:00:00.000Z,2026-01-01T00:00:00.000Z,JOIN,\"{{\"\"args\"\":\"\"a,b\"\"}}\"\r\n919812345679,opted_in,2026-01-01T00:00:00.000Z,2026-01-01T00:00:00.000Z,,{{}}\r\n"
        );
        let (rows, errors) = parse_opt_out_csv(&text, NOW);
        assert_eq!(rows.len(), 1, "{errors:?}");
        assert_eq!(rows[0].msisdn, "919812345678");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].error.contains("opted_in"));
    }

    #[test]
    fn a_header_without_msisdn_stops_the_import_and_an_open_quote_is_reported() {
        let (rows, errors) = parse_opt_out_csv("name,when\n919812345678\n", NOW);
        assert!(rows.is_empty());
        assert_eq!(errors[0].line, 1);
        let (rows, errors) = parse_opt_out_csv("919812345678\n\"919812345679\n", NOW);
        assert_eq!(rows.len(), 1);
        assert_eq!(errors[0].line, 2);
    }
}
