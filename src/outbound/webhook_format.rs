//! What one event looks like on the wire for one webhook.
//!
//! The contract's request is the whole payload as JSON in a POST ([`payload`]). A webhook may
//! instead ask for a form-encoded POST or a GET with query parameters (`method`, `format`),
//! and may name which fields go out and under what names (`fields = { mobile = "{from}" }`,
//! like the reference product's callback profiles), so a tenant's existing endpoint can take
//! vmnd's events without a shim.
//!
//! Without `fields`, a form or GET carries every scalar field of the payload under its contract
//! name; fields that are `null` in the JSON are left out. The signature covers the raw body of
//! a POST and the query string of a GET.

use bytes::Bytes;
use hyper::{Method, Uri};

use crate::config::{WEBHOOK_FIELD_PLACEHOLDERS, Webhook, WebhookMethod, render_template};
use crate::outbound::webhook::Outgoing;
use crate::store::MessageRecord;

/// The contract's JSON body for a message record and event: exactly the contract's fields,
/// plus `complete`/`missing_parts` for a concatenated message delivered incomplete, `receipt`
/// for receipts and `consent` for `optin`/`optout` events.
///
/// Written by hand (see [`crate::json_write`]), once per attempt: the bytes are serde_json's
/// for the same fields as a serde struct, which the tests hold it to.
pub fn payload(record: &MessageRecord, event: &str) -> Vec<u8> {
    use crate::json_write::{optional_string, string, unsigned, unsigneds};
    let mut out = Vec::with_capacity(320 + record.text.len());
    out.extend_from_slice(b"{\"event\":");
    string(&mut out, event);
    out.extend_from_slice(b",\"id\":");
    string(&mut out, &record.id);
    out.extend_from_slice(b",\"to\":");
    string(&mut out, &record.to);
    out.extend_from_slice(b",\"from\":");
    string(&mut out, &record.from);
    out.extend_from_slice(b",\"text\":");
    string(&mut out, &record.text);
    out.extend_from_slice(b",\"keyword\":");
    optional_string(&mut out, record.keyword.as_deref());
    out.extend_from_slice(b",\"inbox\":");
    optional_string(&mut out, record.inbox.as_deref());
    out.extend_from_slice(b",\"args\":");
    optional_string(&mut out, record.args.as_deref());
    out.extend_from_slice(b",\"carrier\":");
    string(&mut out, &record.carrier);
    out.extend_from_slice(b",\"received_at\":");
    string(&mut out, &record.received_at);
    out.extend_from_slice(b",\"parts\":");
    unsigned(&mut out, u64::from(record.parts));
    out.extend_from_slice(b",\"encoding\":");
    string(&mut out, &record.encoding);
    if !record.complete {
        out.extend_from_slice(b",\"complete\":false");
    }
    if !record.missing_parts.is_empty() {
        out.extend_from_slice(b",\"missing_parts\":");
        unsigneds(&mut out, &record.missing_parts);
    }
    // Rare (receipts, consent changes), nested and of several fields: serde_json writes them.
    // Plain structs of strings: writing them into a Vec cannot fail.
    if let Some(receipt) = &record.receipt {
        out.extend_from_slice(b",\"receipt\":");
        let _ = serde_json::to_writer(&mut out, receipt);
    }
    if let Some(consent) = &record.consent {
        out.extend_from_slice(b",\"consent\":");
        let _ = serde_json::to_writer(&mut out, consent);
    }
    out.push(b'}');
    out
}

/// The value of one field (a placeholder of `fields` templates) for `record`; `None` when the
/// JSON payload has `null` there or leaves it out.
pub fn field(record: &MessageRecord, event: &str, name: &str) -> Option<String> {
    Some(match name {
        "event" => event.to_string(),
        "id" => record.id.clone(),
        "to" => record.to.clone(),
        "from" => record.from.clone(),
        "text" => record.text.clone(),
        "keyword" => record.keyword.clone()?,
        "inbox" => record.inbox.clone()?,
        "args" => record.args.clone()?,
        "carrier" => record.carrier.clone(),
        "received_at" => record.received_at.clone(),
        "parts" => record.parts.to_string(),
        "encoding" => record.encoding.clone(),
        "complete" => record.complete.to_string(),
        "missing_parts" if !record.missing_parts.is_empty() => record
            .missing_parts
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "consent" => serde_json::to_value(record.consent.as_ref()?.state)
            .ok()?
            .as_str()?
            .to_string(),
        "receipt_stat" => record.receipt.as_ref()?.stat.clone(),
        _ => return None,
    })
}

/// The (name, value) pairs that go out for a form or GET, or for JSON with `fields`.
fn pairs(webhook: &Webhook, record: &MessageRecord, event: &str) -> Vec<(String, String)> {
    match &webhook.fields {
        Some(fields) => fields
            .iter()
            .map(|(name, template)| {
                let value = render_template(template, &|placeholder| {
                    // A placeholder whose field is null renders empty, not as `{keyword}`.
                    Some(field(record, event, placeholder).unwrap_or_default())
                });
                (name.clone(), value)
            })
            .collect(),
        // Every field a template may name, in the payload's order.
        None => WEBHOOK_FIELD_PLACEHOLDERS
            .iter()
            .filter(|name| **name != "complete" || !record.complete)
            .filter_map(|name| Some((name.to_string(), field(record, event, name)?)))
            .collect(),
    }
}

fn form_encode(pairs: &[(String, String)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        out.append_pair(name, value);
    }
    out.finish()
}

/// The request `webhook` makes for `event` of `record`, to `url` (its `url` or its
/// `fallback_url`). Errors only when the URL with the query added is not a valid URI.
pub fn request(
    webhook: &Webhook,
    url: &Uri,
    record: &MessageRecord,
    event: &str,
) -> Result<Outgoing, String> {
    match webhook.method {
        WebhookMethod::PostJson => {
            let body = match &webhook.fields {
                None => payload(record, event),
                Some(_) => {
                    let object: serde_json::Map<String, serde_json::Value> =
                        pairs(webhook, record, event)
                            .into_iter()
                            .map(|(k, v)| (k, serde_json::Value::String(v)))
                            .collect();
                    serde_json::to_vec(&object).unwrap_or_default()
                }
            };
            Ok(Outgoing::json(url.clone(), Bytes::from(body)))
        }
        WebhookMethod::PostForm => {
            let body = Bytes::from(form_encode(&pairs(webhook, record, event)));
            Ok(Outgoing {
                method: Method::POST,
                uri: url.clone(),
                content_type: Some("application/x-www-form-urlencoded"),
                signed: body.clone(),
                body,
            })
        }
        WebhookMethod::Get => {
            let query = form_encode(&pairs(webhook, record, event));
            let text = url.to_string();
            // Parameters the URL already has (an API key, say) stay first.
            let query = match url.query() {
                Some(existing) if !existing.is_empty() => format!("{existing}&{query}"),
                _ => query,
            };
            let base = text.split_once('?').map_or(text.as_str(), |(base, _)| base);
            let uri: Uri = format!("{base}?{query}")
                .parse()
                .map_err(|e| format!("invalid url: `{base}` with the query: {e}"))?;
            Ok(Outgoing {
                method: Method::GET,
                uri,
                content_type: None,
                signed: Bytes::from(query),
                body: Bytes::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::On4xx;
    use std::time::Duration;

    fn record() -> MessageRecord {
        MessageRecord {
            id: "0000000000001000".into(),
            event: "message".into(),
            to: "567678".into(),
            from: "919812345678".into(),
            from_ton_npi: None,
            text: "JOIN summer & co=1".into(),
            encoding: "gsm7".into(),
            keyword: Some("JOIN".into()),
            inbox: None,
            args: Some("summer & co=1".into()),
            carrier: "sim".into(),
            received_at: "2026-11-28T14:00:00.123Z".into(),
            received_at_ms: 0,
            parts: 1,
            complete: true,
            missing_parts: vec![],
            routed: true,
            receipt: None,
            webhooks: vec![],
            consent: None,
            guarded: Vec::new(),
        }
    }

    /// The payload as a serde struct: the reference [`payload`] is held to.
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        event: &'a str,
        id: &'a str,
        to: &'a str,
        from: &'a str,
        text: &'a str,
        keyword: Option<&'a str>,
        inbox: Option<&'a str>,
        args: Option<&'a str>,
        carrier: &'a str,
        received_at: &'a str,
        parts: u32,
        encoding: &'a str,
        #[serde(skip_serializing_if = "is_true")]
        complete: bool,
        #[serde(skip_serializing_if = "<[u8]>::is_empty")]
        missing_parts: &'a [u8],
        #[serde(skip_serializing_if = "Option::is_none")]
        receipt: Option<&'a crate::smpp::receipt::Receipt>,
        #[serde(skip_serializing_if = "Option::is_none")]
        consent: Option<&'a crate::store::ConsentInfo>,
    }

    fn is_true(b: &bool) -> bool {
        *b
    }

    fn payload_by_serde(record: &MessageRecord, event: &str) -> Vec<u8> {
        serde_json::to_vec(&Payload {
            event,
            id: &record.id,
            to: &record.to,
            from: &record.from,
            text: &record.text,
            keyword: record.keyword.as_deref(),
            inbox: record.inbox.as_deref(),
            args: record.args.as_deref(),
            carrier: &record.carrier,
            received_at: &record.received_at,
            parts: record.parts,
            encoding: &record.encoding,
            complete: record.complete,
            missing_parts: &record.missing_parts,
            receipt: record.receipt.as_ref(),
            consent: record.consent.as_ref(),
        })
        .unwrap()
    }

    #[test]
    fn the_hand_written_payload_is_byte_for_byte_serde_jsons() {
        use crate::smpp::receipt::Receipt;
        use crate::store::ConsentInfo;
        use crate::store::consent::ConsentState;
        let mut records = vec![record()];
        let mut odd = record();
        odd.text = "say \"hi\"\\ \n\t\u{1}\u{7f} € 😀 </script>".into();
        odd.keyword = None;
        odd.inbox = Some("in\"box".into());
        odd.args = None;
        odd.parts = 3;
        odd.complete = false;
        odd.missing_parts = vec![2, 3];
        odd.encoding = "ucs2".into();
        records.push(odd);
        let mut receipt = record();
        receipt.event = "receipt".into();
        receipt.receipt = Some(Receipt {
            id: "abc\"1".into(),
            sub: Some("001".into()),
            dlvrd: None,
            submit_date: Some("2611281400".into()),
            done_date: None,
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            text: Some("hello\nthere".into()),
        });
        records.push(receipt);
        let mut consent = record();
        consent.consent = Some(ConsentInfo {
            previous: ConsentState::OptedIn,
            state: ConsentState::OptedOut,
            matched: "STOP".into(),
        });
        let mut incomplete_only = record();
        incomplete_only.complete = false;
        records.push(consent);
        records.push(incomplete_only);
        for record in &records {
            for event in ["message", "optout", "receipt", "ex\"pired"] {
                let ours = payload(record, event);
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&payload_by_serde(record, event))
                );
                let value: serde_json::Value = serde_json::from_slice(&ours).unwrap();
                assert_eq!(value["event"], event);
            }
        }
    }

    fn webhook(method: WebhookMethod, fields: Option<&[(&str, &str)]>) -> Webhook {
        Webhook {
            name: "crm".into(),
            url: "http://127.0.0.1:9/sms?key=k1".into(),
            secret: None,
            retry_for: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            concurrency: 1,
            pipeline: 1,
            method,
            fields: fields.map(|f| {
                f.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()
            }),
            headers: vec![],
            auth: None,
            ca_file: None,
            fallback_url: None,
            breaker_failures: 0,
            breaker_probe: Duration::from_secs(1),
            on_4xx: On4xx::DeadLetter,
        }
    }

    fn url() -> Uri {
        "http://127.0.0.1:9/sms?key=k1".parse().unwrap()
    }

    #[test]
    fn json_without_fields_is_the_contract_payload() {
        let out = request(
            &webhook(WebhookMethod::PostJson, None),
            &url(),
            &record(),
            "message",
        )
        .unwrap();
        assert_eq!(out.method, Method::POST);
        assert_eq!(out.content_type, Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["keyword"], "JOIN");
        assert_eq!(v["inbox"], serde_json::Value::Null);
        assert_eq!(v["parts"], 1);
        assert_eq!(out.signed, out.body);
    }

    #[test]
    fn json_with_fields_renames_and_templates() {
        let fields: &[(&str, &str)] = &[("mobile", "{from}"), ("msg", "{keyword}: {inbox}|")];
        let out = request(
            &webhook(WebhookMethod::PostJson, Some(fields)),
            &url(),
            &record(),
            "message",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"mobile": "919812345678", "msg": "JOIN: |"})
        );
    }

    #[test]
    fn form_escapes_and_leaves_nulls_out() {
        let out = request(
            &webhook(WebhookMethod::PostForm, None),
            &url(),
            &record(),
            "message",
        )
        .unwrap();
        assert_eq!(out.content_type, Some("application/x-www-form-urlencoded"));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&out.body).into_owned().collect();
        assert!(pairs.contains(&("text".into(), "JOIN summer & co=1".into())));
        assert!(pairs.contains(&("parts".into(), "1".into())));
        assert!(!pairs.iter().any(|(k, _)| k == "inbox" || k == "complete"));
        assert_eq!(out.uri, url());
    }

    #[test]
    fn get_appends_the_fields_to_the_query_and_signs_the_query() {
        let fields: &[(&str, &str)] = &[("from", "{from}"), ("t", "{text}")];
        let out = request(
            &webhook(WebhookMethod::Get, Some(fields)),
            &url(),
            &record(),
            "message",
        )
        .unwrap();
        assert_eq!(out.method, Method::GET);
        assert!(out.body.is_empty());
        assert_eq!(
            out.uri.query(),
            Some("key=k1&from=919812345678&t=JOIN+summer+%26+co%3D1")
        );
        assert_eq!(&out.signed[..], out.uri.query().unwrap().as_bytes());
    }

    #[test]
    fn consent_and_receipt_fields() {
        let mut r = record();
        r.consent = Some(crate::store::ConsentInfo {
            previous: crate::store::consent::ConsentState::OptedIn,
            state: crate::store::consent::ConsentState::OptedOut,
            matched: "STOP".into(),
        });
        let state = field(&r, "optout", "consent").unwrap();
        assert!(state.contains("out"), "{state}");
        assert_eq!(field(&r, "optout", "receipt_stat"), None);
        assert_eq!(field(&r, "optout", "nonsense"), None);
    }
}
