//! Delivery receipt text (SMPP 3.4 Appendix B): `id:IIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm
//! done date:YYMMDDhhmm stat:DDDDDDD err:E text:...`: parsing it as carriers really send it,
//! writing it as an SMSC does (for the simulator), and reading its dates.
//!
//! Carriers vary in case, spacing, field order, separators and missing fields, so the parser
//! looks for known keys wherever a word starts, takes the value up to the next whitespace (or `,`
//! / `;`), and lets `text:` take the rest of its line. It never panics.

use serde::{Deserialize, Serialize};

/// A parsed delivery receipt. Absent fields are `None`; values are kept as the carrier sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The carrier's message id of the message this receipt is about.
    pub id: String,
    pub sub: Option<String>,
    pub dlvrd: Option<String>,
    /// `YYMMDDhhmm` (or with seconds) as sent.
    pub submit_date: Option<String>,
    pub done_date: Option<String>,
    /// DELIVRD, EXPIRED, DELETED, UNDELIV, ACCEPTD, UNKNOWN, REJECTD, ENROUTE (upper-cased).
    pub stat: String,
    pub err: Option<String>,
    pub text: Option<String>,
}

/// The receipt fields, as the keys that introduce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Sub,
    Dlvrd,
    SubmitDate,
    DoneDate,
    Stat,
    Err,
    Text,
}

/// Keys as (first word, second word); the words may be joined by nothing, spaces, `_` or `-`, so
/// "submit date", "submit_date" and "submitdate" all match. Longer keys come first.
const KEYS: [(&str, &str, Field); 8] = [
    ("submit", "date", Field::SubmitDate),
    ("done", "date", Field::DoneDate),
    ("dlvrd", "", Field::Dlvrd),
    ("stat", "", Field::Stat),
    ("text", "", Field::Text),
    ("sub", "", Field::Sub),
    ("err", "", Field::Err),
    ("id", "", Field::Id),
];

fn starts_with_ignore_case(s: &[u8], word: &str) -> bool {
    s.len() >= word.len() && s[..word.len()].eq_ignore_ascii_case(word.as_bytes())
}

fn skip_while(s: &[u8], mut pos: usize, pred: impl Fn(u8) -> bool) -> usize {
    while pos < s.len() && pred(s[pos]) {
        pos += 1;
    }
    pos
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Octets that end a value and may precede a key.
fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace() || b == b',' || b == b';'
}

/// A key (and its colon, blanks allowed before it) at the start of `s`: the field and the octets
/// consumed.
fn match_key(s: &[u8]) -> Option<(Field, usize)> {
    KEYS.iter().find_map(|&(first, second, field)| {
        if !starts_with_ignore_case(s, first) {
            return None;
        }
        let mut pos = first.len();
        if !second.is_empty() {
            pos = skip_while(s, pos, |b| is_blank(b) || b == b'_' || b == b'-');
            if !starts_with_ignore_case(&s[pos..], second) {
                return None;
            }
            pos += second.len();
        }
        pos = skip_while(s, pos, is_blank);
        (s.get(pos) == Some(&b':')).then_some((field, pos + 1))
    })
}

/// Parses receipt text. Tolerant: keys case-insensitive, "submit date"/"submit_date"/"submitdate",
/// fields in any order, missing fields None, `text:` takes the rest of the line. Returns None if
/// there is no `id:` AND no `stat:`.
///
/// Blanks after a colon are skipped unless another key follows them (`err: stat:X` is an empty
/// `err`; `id:text:1` is the id `text:1`).
/// An empty value is `None` (or `""` for `id` and `stat`). The first occurrence of a key wins.
/// `text` is trimmed of surrounding whitespace.
pub fn parse_receipt(text: &str) -> Option<Receipt> {
    let s = text.as_bytes();
    let mut found: [Option<&str>; 8] = [None; 8];
    let slot = |f: Field| KEYS.iter().position(|k| k.2 == f).unwrap_or(0);
    let mut i = 0;
    while i < s.len() {
        let at_word_start = i == 0 || is_separator(s[i - 1]);
        let Some((field, consumed)) = at_word_start.then(|| match_key(&s[i..])).flatten() else {
            i += 1;
            continue;
        };
        let start = i + consumed;
        let (value, end) = if field == Field::Text {
            // The rest of the line: the original message text may hold anything, keys included.
            let end = skip_while(s, start, |b| b != b'\n' && b != b'\r');
            (text[start..end].trim(), end)
        } else {
            let after_blanks = skip_while(s, start, is_blank);
            // `err: stat:X` is an empty err, but `id:text:1` is the id "text:1".
            if after_blanks > start && match_key(&s[after_blanks..]).is_some() {
                ("", start)
            } else {
                let end = skip_while(s, after_blanks, |b| !is_separator(b));
                (&text[after_blanks..end], end)
            }
        };
        found[slot(field)].get_or_insert(value);
        i = end.max(i + 1);
    }
    let get = |f: Field| found[slot(f)];
    let optional = |f: Field| get(f).filter(|v| !v.is_empty()).map(str::to_string);
    if get(Field::Id).is_none() && get(Field::Stat).is_none() {
        return None;
    }
    Some(Receipt {
        id: get(Field::Id).unwrap_or_default().to_string(),
        sub: optional(Field::Sub),
        dlvrd: optional(Field::Dlvrd),
        submit_date: optional(Field::SubmitDate),
        done_date: optional(Field::DoneDate),
        stat: get(Field::Stat).unwrap_or_default().to_ascii_uppercase(),
        err: optional(Field::Err),
        text: optional(Field::Text),
    })
}

/// Left-pads an all-digit count to three digits, as SMSCs write `sub` and `dlvrd`.
fn three_digits(value: &str) -> String {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        format!("{value:0>3}")
    } else {
        value.to_string()
    }
}

/// The standard format, as an SMSC writes it (used by the simulator): "id:{id} sub:{sub:03}
/// dlvrd:{dlvrd:03} submit date:{} done date:{} stat:{} err:{} text:{}".
///
/// Defaults for `None`: `sub` "001", `dlvrd` "001" when `stat` is DELIVRD and "000" otherwise,
/// `err` "000"; absent dates and text are written empty (and parse back as `None`).
pub fn format_receipt(r: &Receipt) -> String {
    let dlvrd_default = if r.stat.eq_ignore_ascii_case("DELIVRD") {
        "001"
    } else {
        "000"
    };
    format!(
        "id:{} sub:{} dlvrd:{} submit date:{} done date:{} stat:{} err:{} text:{}",
        r.id,
        three_digits(r.sub.as_deref().unwrap_or("001")),
        three_digits(r.dlvrd.as_deref().unwrap_or(dlvrd_default)),
        r.submit_date.as_deref().unwrap_or(""),
        r.done_date.as_deref().unwrap_or(""),
        r.stat,
        r.err.as_deref().unwrap_or("000"),
        r.text.as_deref().unwrap_or(""),
    )
}

/// The submit/done date as RFC 3339 UTC, from YYMMDDhhmm or YYMMDDhhmmss (years 2000+yy).
///
/// Written in the webhook contract's form (`2026-11-28T14:00:00.000Z`). Carriers seldom say
/// which zone they mean; the time is taken as UTC. Also accepts YYYYMMDDhhmmss, which some
/// carriers send. Impossible dates (month 13, 30 February, 24:00) are `None`.
pub fn parse_receipt_date(s: &str) -> Option<String> {
    let s = s.trim();
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |range: std::ops::Range<usize>| s.get(range)?.parse::<u32>().ok();
    let (year, rest) = match s.len() {
        10 | 12 => (2000 + num(0..2)?, 2),
        14 => (num(0..4)?, 4),
        _ => return None,
    };
    let second = if s.len() == 10 {
        0
    } else {
        num(rest + 8..rest + 10)?
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        num(rest..rest + 2)?,
        num(rest + 2..rest + 4)?,
    )?;
    let time = date.and_hms_opt(num(rest + 4..rest + 6)?, num(rest + 6..rest + 8)?, second)?;
    let ms = u64::try_from(time.and_utc().timestamp_millis()).ok()?;
    Some(crate::clock::rfc3339_ms(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard() -> Receipt {
        Receipt {
            id: "0123456789".into(),
            sub: Some("001".into()),
            dlvrd: Some("001".into()),
            submit_date: Some("2611281400".into()),
            done_date: Some("2611281401".into()),
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            text: Some("JOIN summer".into()),
        }
    }

    #[test]
    fn parses_standard_form() {
        let text = "id:0123456789 sub:001 dlvrd:001 submit date:2611281400 done date:2611281401 \
                    stat:DELIVRD err:000 text:JOIN summer";
        assert_eq!(parse_receipt(text), Some(standard()));
    }

    #[test]
    fn format_is_the_standard_form() {
        assert_eq!(
            format_receipt(&standard()),
            "id:0123456789 sub:001 dlvrd:001 submit date:2611281400 done date:2611281401 \
             stat:DELIVRD err:000 text:JOIN summer"
        );
    }

    #[test]
    fn format_defaults_and_padding() {
        let r = Receipt {
            id: "abc".into(),
            stat: "UNDELIV".into(),
            ..Receipt::default()
        };
        assert_eq!(
            format_receipt(&r),
            "id:abc sub:001 dlvrd:000 submit date: done date: stat:UNDELIV err:000 text:"
        );
        let r = Receipt {
            id: "x".into(),
            sub: Some("1".into()),
            dlvrd: Some("12".into()),
            stat: "DELIVRD".into(),
            err: Some("5".into()),
            ..Receipt::default()
        };
        assert!(format_receipt(&r).starts_with("id:x sub:001 dlvrd:012 "));
        assert!(format_receipt(&r).contains(" err:5 "));
        let r = Receipt {
            stat: "DELIVRD".into(),
            ..Receipt::default()
        };
        assert!(format_receipt(&r).contains(" dlvrd:001 "));
    }

    #[test]
    fn format_then_parse_round_trips() {
        assert_eq!(
            parse_receipt(&format_receipt(&standard())),
            Some(standard())
        );
        let sparse = Receipt {
            id: "7".into(),
            sub: Some("001".into()),
            dlvrd: Some("000".into()),
            stat: "EXPIRED".into(),
            err: Some("000".into()),
            ..Receipt::default()
        };
        assert_eq!(parse_receipt(&format_receipt(&sparse)), Some(sparse));
    }

    #[test]
    fn parses_sloppy_form() {
        let text = "STAT:delivrd  ID: 99-ab Err:0 Submit_Date:2611281400 DoneDate:2611281401\r\n\
                    Text:  hello there  \r\n";
        let r = parse_receipt(text).unwrap();
        assert_eq!(r.id, "99-ab");
        assert_eq!(r.stat, "DELIVRD");
        assert_eq!(r.err.as_deref(), Some("0"));
        assert_eq!(r.submit_date.as_deref(), Some("2611281400"));
        assert_eq!(r.done_date.as_deref(), Some("2611281401"));
        assert_eq!(r.text.as_deref(), Some("hello there"));
        assert_eq!((r.sub, r.dlvrd), (None, None));
    }

    #[test]
    fn key_spellings() {
        for key in [
            "submit date",
            "SUBMIT DATE",
            "submit_date",
            "submitdate",
            "Submit-Date",
            "submit  date",
        ] {
            let r = parse_receipt(&format!("id:1 {key}:2611281400")).unwrap();
            assert_eq!(r.submit_date.as_deref(), Some("2611281400"), "{key}");
        }
        let r = parse_receipt("id :1 stat : ENROUTE").unwrap();
        assert_eq!((r.id.as_str(), r.stat.as_str()), ("1", "ENROUTE"));
    }

    #[test]
    fn separators_commas_and_newlines() {
        let r = parse_receipt("id:5,stat:REJECTD;err:011\nsub:001").unwrap();
        assert_eq!(r.id, "5");
        assert_eq!(r.stat, "REJECTD");
        assert_eq!(r.err.as_deref(), Some("011"));
        assert_eq!(r.sub.as_deref(), Some("001"));
    }

    #[test]
    fn text_takes_the_rest_of_its_line() {
        let r = parse_receipt("id:1 text:stat:FAKE id:2 err:9\nstat:DELIVRD").unwrap();
        assert_eq!(r.id, "1");
        assert_eq!(r.text.as_deref(), Some("stat:FAKE id:2 err:9"));
        assert_eq!(r.stat, "DELIVRD");
        assert_eq!(r.err, None);
        // Non-ASCII text is kept intact.
        let r = parse_receipt("id:1 stat:DELIVRD text:Привет 😀").unwrap();
        assert_eq!(r.text.as_deref(), Some("Привет 😀"));
    }

    #[test]
    fn empty_values() {
        let r = parse_receipt("id: stat:DELIVRD err: text:").unwrap();
        assert_eq!(r.id, "");
        assert_eq!(r.stat, "DELIVRD");
        assert_eq!((r.err, r.text), (None, None));
        let r = parse_receipt("id:1 err: stat: DELIVRD").unwrap();
        assert_eq!(r.err, None);
        assert_eq!(r.stat, "DELIVRD");
        let r = parse_receipt("id:1 stat:").unwrap();
        assert_eq!(r.stat, "");
    }

    #[test]
    fn needs_id_or_stat() {
        assert_eq!(parse_receipt(""), None);
        assert_eq!(parse_receipt("hello world"), None);
        assert_eq!(parse_receipt("sub:001 dlvrd:001 err:000 text:x"), None);
        // Key-looking words inside other words are not keys.
        assert_eq!(parse_receipt("msgid:5 status:DELIVRD"), None);
        // Only in the text field.
        assert_eq!(parse_receipt("text:id:5 stat:DELIVRD"), None);
        let r = parse_receipt("stat:expired").unwrap();
        assert_eq!((r.id.as_str(), r.stat.as_str()), ("", "EXPIRED"));
        let r = parse_receipt("id:abc").unwrap();
        assert_eq!((r.id.as_str(), r.stat.as_str()), ("abc", ""));
    }

    #[test]
    fn value_that_looks_like_a_key() {
        let r = parse_receipt("id:text:1 stat:DELIVRD").unwrap();
        assert_eq!(r.id, "text:1");
        assert_eq!(r.text, None);
    }

    #[test]
    fn first_occurrence_wins() {
        let r = parse_receipt("id:1 stat:DELIVRD id:2 stat:UNDELIV").unwrap();
        assert_eq!((r.id.as_str(), r.stat.as_str()), ("1", "DELIVRD"));
    }

    #[test]
    fn err_kept_as_sent() {
        let r = parse_receipt("id:1 stat:UNDELIV err:0A1").unwrap();
        assert_eq!(r.err.as_deref(), Some("0A1"));
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_receipt_date("2611281400").as_deref(),
            Some("2026-11-28T14:00:00.000Z")
        );
        assert_eq!(
            parse_receipt_date("261128140059").as_deref(),
            Some("2026-11-28T14:00:59.000Z")
        );
        assert_eq!(
            parse_receipt_date(" 0001010000 ").as_deref(),
            Some("2000-01-01T00:00:00.000Z")
        );
        assert_eq!(
            parse_receipt_date("9912312359").as_deref(),
            Some("2099-12-31T23:59:00.000Z")
        );
        assert_eq!(
            parse_receipt_date("20261128140059").as_deref(),
            Some("2026-11-28T14:00:59.000Z")
        );
        assert_eq!(
            parse_receipt_date("2402291200").as_deref(),
            Some("2024-02-29T12:00:00.000Z")
        );
        for bad in [
            "",
            "261128",
            "26112814000",
            "2613011200",
            "2602301200",
            "2611282400",
            "2611281460",
            "261128140060",
            "26112814000a",
            "+611281400",
            "２611281400",
            "2611281400 00",
        ] {
            assert_eq!(parse_receipt_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_round_trips() {
        let mut rng = fastrand::Rng::with_seed(0x2ec);
        let word = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(1..12)).map(|_| rng.alphanumeric()).collect()
        };
        for _ in 0..2000 {
            let text = format!("{} stat:{}", word(&mut rng), word(&mut rng));
            let r = Receipt {
                id: word(&mut rng),
                sub: Some(format!("{:03}", rng.u16(0..1000))),
                dlvrd: Some(format!("{:03}", rng.u16(0..1000))),
                submit_date: Some(format!("{:010}", rng.u64(0..10_000_000_000))),
                done_date: Some(format!("{:012}", rng.u64(0..1_000_000_000_000))),
                stat: word(&mut rng).to_ascii_uppercase(),
                err: Some(word(&mut rng)),
                text: Some(text),
            };
            // Drop a random subset of the optional fields.
            let mut r2 = r.clone();
            let mask = rng.u8(..);
            let fields = [
                &mut r2.sub,
                &mut r2.dlvrd,
                &mut r2.submit_date,
                &mut r2.done_date,
                &mut r2.err,
                &mut r2.text,
            ];
            for (bit, field) in fields.into_iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    *field = None;
                }
            }
            let parsed = parse_receipt(&format_receipt(&r2)).unwrap();
            assert_eq!(parsed.id, r2.id);
            assert_eq!(parsed.stat, r2.stat);
            assert_eq!(parsed.submit_date, r2.submit_date);
            assert_eq!(parsed.done_date, r2.done_date);
            assert_eq!(parsed.text, r2.text);
            assert_eq!(parsed.err.unwrap(), r2.err.unwrap_or_else(|| "000".into()));
            assert_eq!(parsed.sub.unwrap(), r2.sub.unwrap_or_else(|| "001".into()));
            assert!(parsed.dlvrd.is_some());
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0xbad_2ec);
        let pieces = [
            "id", "ID:", "sub:", "dlvrd", "submit", " date", "_", "done", "date:", "stat:", "err",
            "text:", ":", " ", "\t", "\n", "\r", ",", ";", "-", "é", "😀", "0", "12", "DELIVRD",
            "\u{0}", "\u{FFFD}",
        ];
        for _ in 0..20_000 {
            let s: String = (0..rng.usize(0..30))
                .map(|_| match rng.u8(0..10) {
                    0 => rng.char(..).to_string(),
                    _ => pieces[rng.usize(0..pieces.len())].to_string(),
                })
                .collect();
            if let Some(r) = parse_receipt(&s) {
                assert_eq!(r.stat, r.stat.to_ascii_uppercase());
                let _ = format_receipt(&r);
            }
            let _ = parse_receipt_date(&s);
            let digits: String = (0..rng.usize(0..16))
                .map(|_| char::from(b'0' + rng.u8(0..10)))
                .collect();
            if let Some(d) = parse_receipt_date(&digits) {
                assert!(crate::clock::parse_rfc3339_ms(&d).is_some(), "{d}");
            }
        }
    }
}
