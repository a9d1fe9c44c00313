//! The operators' page at `/`: carriers' bind state, queue and journal depth, and the latest
//! messages with their fate. Plain server-rendered HTML: it works without JavaScript and from a
//! terminal browser on the box.

use std::fmt::Write;

use super::AdminState;
use crate::store::MessageFilter;

pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn render(state: &AdminState) -> String {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>vmnd</title>\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <style>body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
         .up{color:#070}.down{color:#a00}</style></head><body><h1>vmnd</h1><h2>Carriers</h2>\
         <table><tr><th>carrier</th><th>state</th><th>since</th><th>binds</th><th>last error</th></tr>",
    );
    for (name, s) in state.carriers.iter() {
        let st = s.status();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            if st.bound { "up" } else { "down" },
            if st.bound { "bound" } else { "not bound" },
            escape(st.since.as_deref().unwrap_or("-")),
            st.binds,
            escape(st.last_error.as_deref().unwrap_or("")),
        );
    }
    let _ = write!(
        html,
        "</table><h2>Store</h2><p>{} messages stored, {} acknowledged and not yet processed, \
         {} jobs queued, {} dead letters.</p><h2>Latest messages</h2><table><tr><th>id</th>\
         <th>received</th><th>from</th><th>to</th><th>text</th><th>encoding</th><th>parts</th>\
         <th>forwarded to</th></tr>",
        state
            .store
            .message_count()
            .map_or_else(|e| format!("(unreadable: {e})"), |n| n.to_string()),
        state.store.journal_depth(),
        state.queue_depth.get(),
        state.store.dead_letter_count(),
    );
    let filter = MessageFilter {
        limit: 50,
        ..Default::default()
    };
    for m in state.store.list_messages(&filter).unwrap_or_default() {
        let forwarded = if !m.routed {
            "unrouted (number not served)".to_string()
        } else if m.webhooks.is_empty() {
            "stored only".to_string()
        } else {
            m.webhooks.join(", ")
        };
        let parts = if m.complete {
            m.parts.to_string()
        } else {
            format!("{} (missing {:?})", m.parts, m.missing_parts)
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.id),
            escape(&m.received_at),
            escape(&m.from),
            escape(&m.to),
            if m.event == "receipt" {
                "[receipt] "
            } else {
                ""
            },
            escape(&m.text),
            escape(&m.encoding),
            escape(&parts),
            escape(&forwarded),
        );
    }
    html.push_str("</table>");
    html.push_str(&super::mail::page_section(state));
    html.push_str("<p><a href=\"/metrics\">metrics</a> · <a href=\"/api/messages\">messages API</a> · <a href=\"/healthz\">health</a></p></body></html>");
    html
}
