//! What a member of staff wrote in a reply by e-mail, without what their mail client added:
//! the text part is preferred over HTML (which is turned into text when it is all there is),
//! then quoted history and signatures are cut, and the rest is trimmed. The result is what
//! goes back to the customer by SMS, so the rules err on the side of cutting: a reply is
//! rarely more than a few lines above the quote.

use mail_parser::MessageParser;

/// The parts of a parsed e-mail that the listener needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReply {
    /// The address of the `From:` header (lower-case), when there is one.
    pub from: Option<String>,
    /// The reply's own text, stripped; may be empty.
    pub text: String,
}

/// Parses a raw RFC 5322 message; `None` when it has no headers at all.
pub fn parse(raw: &[u8]) -> Option<ParsedReply> {
    let message = MessageParser::default().parse(raw)?;
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase());
    // mail-parser lists text/plain parts as text bodies and converts an HTML-only message's
    // HTML to text there too; for HTML the quote is cut before the conversion, where its
    // markup still shows where it starts.
    let has_plain = (0..message.text_body_count()).any(|i| {
        message
            .text_part(i as u32)
            .is_some_and(|p| matches!(p.body, mail_parser::PartType::Text(_)))
    });
    let body = if has_plain {
        message.body_text(0).map(|t| t.into_owned())
    } else if let Some(html) = message.body_html(0) {
        Some(mail_parser::decoders::html::html_to_text(cut_html_quote(
            &html,
        )))
    } else {
        message.body_text(0).map(|t| t.into_owned())
    };
    Some(ParsedReply {
        from,
        text: strip_reply(&body.unwrap_or_default()),
    })
}

/// The HTML before the quoted message that mail clients append: Gmail's `gmail_quote`,
/// Outlook's `divRplyFwdMsg` / `appendonsend`, Apple Mail's and Thunderbird's `<blockquote`,
/// Yahoo's `yahoo_quoted`, or an `<hr` separator.
fn cut_html_quote(html: &str) -> &str {
    let lower = html.to_ascii_lowercase();
    let markers = [
        "class=\"gmail_quote",
        "class=\"gmail_attr",
        "id=\"divrplyfwdmsg\"",
        "id=\"appendonsend\"",
        "class=\"yahoo_quoted",
        "<blockquote",
        "<hr",
    ];
    let cut = markers
        .iter()
        .filter_map(|m| {
            let at = lower.find(m)?;
            // For an attribute, cut at the start of its tag.
            Some(if m.starts_with('<') {
                at
            } else {
                lower[..at].rfind('<').unwrap_or(at)
            })
        })
        .min();
    // `to_ascii_lowercase` keeps byte offsets, and '<' is ASCII: a char boundary in `html`.
    match cut {
        Some(at) => &html[..at],
        None => html,
    }
}

/// Cuts quoted history and signatures out of a plain-text reply and trims it.
pub fn strip_reply(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if starts_history(&lines, i) || is_signature_start(line) {
            break;
        }
        // A quoted line within the reply (inline quoting): left out, the rest is kept.
        if trimmed.starts_with('>') {
            continue;
        }
        kept.push(line.trim_end());
    }
    // Blank lines at either end go; runs of blank lines inside become one.
    let mut out: Vec<&str> = Vec::new();
    for line in kept {
        if line.trim().is_empty() && out.last().is_none_or(|l| l.trim().is_empty()) {
            continue;
        }
        out.push(line);
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.join("\n").trim().to_string()
}

/// Whether line `i` starts the quoted history of an earlier message.
fn starts_history(lines: &[&str], i: usize) -> bool {
    let line = lines[i].trim();
    let lower = line.to_ascii_lowercase();
    // "On Mon, 1 Dec 2026 at 10:00, Name <a@b> wrote:", possibly wrapped onto the next line;
    // also "Le ... a écrit :" and "Am ... schrieb ...:" from French and German clients.
    let wrote = |l: &str| {
        let l = l.trim_end().to_lowercase();
        l.ends_with("wrote:")
            || l.ends_with("a écrit :")
            || l.ends_with("a écrit:")
            || (l.contains("schrieb") && l.ends_with(':'))
    };
    if (lower.starts_with("on ") || lower.starts_with("le ") || lower.starts_with("am "))
        && (wrote(line) || lines.get(i + 1).is_some_and(|next| wrote(next)))
    {
        return true;
    }
    // "-----Original Message-----", "----- Forwarded message -----".
    if line.starts_with("---")
        && (lower.contains("original message") || lower.contains("forwarded message"))
    {
        return true;
    }
    // Outlook's rule above its header block.
    if line.len() >= 10 && line.chars().all(|c| c == '_') {
        return true;
    }
    // Outlook's header block: "From: ..." followed within a few lines by "Sent: " or "Date: ".
    if lower.starts_with("from:") {
        return lines[i + 1..].iter().take(4).any(|l| {
            let l = l.trim().to_ascii_lowercase();
            l.starts_with("sent:") || l.starts_with("date:")
        });
    }
    false
}

/// Whether `line` starts a signature: the conventional "-- " delimiter (RFC 3676), or the
/// lines phones and apps add.
fn is_signature_start(line: &str) -> bool {
    if line == "-- " || line == "--" {
        return true;
    }
    let lower = line.trim().to_ascii_lowercase();
    [
        "sent from my ",
        "get outlook for ",
        "sent from outlook",
        "sent from mail for windows",
        "sent with proton mail",
        "sent from yahoo mail",
    ]
    .iter()
    .any(|p| lower.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(headers: &str, body: &str) -> Vec<u8> {
        format!("{headers}\r\n\r\n{body}").into_bytes()
    }

    #[test]
    fn plain_text_is_trimmed() {
        let raw = mail(
            "From: Desk <Desk@Acme.Example>\r\nTo: reply+x@r.example\r\nSubject: Re: SMS",
            "\r\n  Thanks, we will call you at 5.  \r\n\r\n",
        );
        let reply = parse(&raw).expect("parsed");
        assert_eq!(reply.from.as_deref(), Some("desk@acme.example"));
        assert_eq!(reply.text, "Thanks, we will call you at 5.");
    }

    #[test]
    fn gmail_quote_and_signature_are_cut() {
        let text = "Yes, your order ships today.\n\nBest,\nAnna\n-- \nAnna Smith | Acme\n\nOn Mon, 1 Dec 2026 at 10:00, vmnd <vmnd@example.net> wrote:\n> JOIN summer\n> --\n";
        assert_eq!(
            strip_reply(text),
            "Yes, your order ships today.\n\nBest,\nAnna"
        );
        // The attribution line wrapped by the client.
        let text = "See you then.\n\nOn Mon, 1 Dec 2026 at 10:00, Some Long Name\n<vmnd@example.net> wrote:\n> hello";
        assert_eq!(strip_reply(text), "See you then.");
    }

    #[test]
    fn outlook_history_is_cut() {
        let text = "We open at 9.\r\n\r\n________________________________\r\nFrom: vmnd <vmnd@example.net>\r\nSent: Monday, December 1, 2026 10:00 AM\r\nTo: Desk\r\nSubject: SMS\r\n\r\nJOIN summer";
        assert_eq!(strip_reply(text), "We open at 9.");
        let text = "We open at 9.\nFrom: vmnd <vmnd@example.net>\nSent: Monday\nTo: Desk\n\nJOIN";
        assert_eq!(strip_reply(text), "We open at 9.");
        let text = "Call us.\n-----Original Message-----\nFrom: x\nJOIN";
        assert_eq!(strip_reply(text), "Call us.");
        // "From:" in the reply's own words, with no header block after it, stays.
        assert_eq!(
            strip_reply("From: tomorrow on, we open at 8.\nSee you."),
            "From: tomorrow on, we open at 8.\nSee you."
        );
    }

    #[test]
    fn phone_signatures_and_inline_quotes_go() {
        assert_eq!(strip_reply("OK!\n\nSent from my iPhone"), "OK!");
        assert_eq!(strip_reply("OK!\nGet Outlook for Android"), "OK!");
        assert_eq!(
            strip_reply("> what time?\nAt 5.\n> and where?\nHere."),
            "At 5.\nHere."
        );
    }

    #[test]
    fn only_quotes_or_signature_leaves_nothing() {
        assert_eq!(strip_reply("\n\n> JOIN\n"), "");
        assert_eq!(strip_reply("-- \nAnna"), "");
        assert_eq!(
            strip_reply("Sent from my iPhone\n\nOn Mon, 1 Dec 2026, x wrote:\n> hi"),
            ""
        );
    }

    #[test]
    fn text_part_is_preferred_over_html() {
        let raw = mail(
            "From: desk@acme.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"",
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain answer\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML answer</p>\r\n--b--\r\n",
        );
        assert_eq!(parse(&raw).expect("parsed").text, "Plain answer");
    }

    #[test]
    fn html_only_is_turned_into_text_without_its_quote() {
        let raw = mail(
            "From: desk@acme.example\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8",
            "<html><body><div dir=\"ltr\">Your table is <b>booked</b>.</div><br><div class=\"gmail_quote\"><div class=\"gmail_attr\">On Mon, x wrote:<br></div><blockquote>JOIN summer</blockquote></div></body></html>",
        );
        let text = parse(&raw).expect("parsed").text;
        assert_eq!(text, "Your table is booked.");
        let outlook = mail(
            "From: desk@acme.example\r\nContent-Type: text/html",
            "<p>Done &amp; dusted</p><div id=\"appendonsend\"></div><hr><div id=\"divRplyFwdMsg\"><b>From:</b> vmnd</div>",
        );
        assert_eq!(parse(&outlook).expect("parsed").text, "Done & dusted");
    }

    #[test]
    fn quoted_printable_and_encoded_headers_decode() {
        let raw = mail(
            "From: =?utf-8?q?J=C3=BCrgen?= <j@acme.example>\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable",
            "Gr=C3=BC=C3=9Fe, see you at 5=\r\n today.\r\n",
        );
        let reply = parse(&raw).expect("parsed");
        assert_eq!(reply.from.as_deref(), Some("j@acme.example"));
        assert_eq!(reply.text, "Grüße, see you at 5 today.");
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [
            &b""[..],
            b"\r\n\r\n",
            b"not a mail at all",
            b"From:\r\n\r\n",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x--",
            &[0xff, 0xfe, 0x00, 0x0d, 0x0a][..],
        ] {
            let _ = parse(raw);
        }
    }
}
