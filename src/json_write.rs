//! JSON values written straight into a buffer, for the documents built once per message.
//!
//! serde_json checks a string for characters to escape one byte at a time, through its
//! generic serializer, and in a profile of the end-to-end bench its string escaping was 5-6%
//! of the daemon's CPU: every message's webhook payload and record went through it. Almost
//! every string here (ids, numbers, dates, carrier names, most texts) has nothing to escape.
//! [`string`] checks a whole string at once, in a loop the compiler vectorises, and copies it
//! in one piece; only a string that needs escaping goes through the careful path.
//!
//! The output is exactly serde_json's (its compact formatter): the same escapes, lowercase
//! hex for `\u00XX`, nothing else escaped (not `/`, not DEL, not non-ASCII). The tests hold
//! every writer here to serde_json's bytes, so a document written here reads back anywhere
//! serde_json's would.

/// Writes `s` as a JSON string, quotes included.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // No early exit: a plain fold over the bytes vectorises; strings here are short.
    let needs_escape = bytes.iter().fold(false, |any, &b| any | escapes(b));
    if needs_escape {
        escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

/// Writes `s` as a JSON string, or `null`.
pub fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes `n` in decimal.
pub fn unsigned(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes an array of strings.
pub fn strings(out: &mut Vec<u8>, items: &[String]) {
    array(out, items, |out, s| string(out, s));
}

/// Writes an array of numbers.
pub fn unsigneds(out: &mut Vec<u8>, items: &[u8]) {
    array(out, items, |out, n| unsigned(out, u64::from(*n)));
}

fn array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// True for the bytes JSON does not allow unescaped in a string: control characters, the
/// quote and the backslash. (Bytes of multi-byte UTF-8 characters are all 0x80 or above.)
fn escapes(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !escapes(b) {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        run_start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, s);
        out
    }

    #[test]
    fn every_single_character_class_is_written_as_serde_json_writes_it() {
        // Every ASCII byte alone, between text, and at both ends.
        for b in 0u8..=0x7f {
            let c = char::from(b);
            for s in [
                c.to_string(),
                format!("a{c}b"),
                format!("{c}{c}x{c}"),
                format!("{c}é€😀{c}"),
            ] {
                assert_eq!(ours(&s), serde_json::to_vec(&s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn texts_that_need_no_escape_and_texts_that_do() {
        let samples = [
            "",
            "JOIN summer offer please 12345",
            "2026-11-29T11:46:27.123Z",
            "Grüße aus Köln, 5 € {x} [y] ~ ^ |",
            "तुम्हारा संदेश 😀👍🏽",
            "quote \" backslash \\ slash / tab \t newline \n cr \r",
            "\u{0}\u{1}\u{1f}\u{7f}\u{80}\u{2028}\u{2029}\u{feff}",
            "ends with a backslash \\",
            "\"",
        ];
        for s in samples {
            assert_eq!(ours(s), serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn random_strings_match_serde_json() {
        // A fixed-seed generator: the same strings every run, mixing the classes that matter.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pool = [
            'a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}',
            '\u{1b}', '\u{7f}', 'é', '€', '😀', '\u{2028}',
        ];
        for _ in 0..5_000 {
            let len = (next() % 40) as usize;
            let s: String = (0..len)
                .map(|_| pool[(next() % pool.len() as u64) as usize])
                .collect();
            assert_eq!(ours(&s), serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn null_numbers_and_arrays() {
        let mut out = Vec::new();
        optional_string(&mut out, None);
        out.push(b',');
        optional_string(&mut out, Some("x"));
        out.push(b',');
        unsigned(&mut out, 0);
        out.push(b',');
        unsigned(&mut out, u64::MAX);
        out.push(b',');
        unsigneds(&mut out, &[]);
        unsigneds(&mut out, &[2, 3]);
        strings(&mut out, &["a\"".to_string()]);
        assert_eq!(out, b"null,\"x\",0,18446744073709551615,[][2,3][\"a\\\"\"]");
        let mut arrays = Vec::new();
        unsigneds(&mut arrays, &[2, 3]);
        strings(&mut arrays, &["a\"".to_string(), String::new()]);
        let serde = format!(
            "{}{}",
            serde_json::to_string(&[2u8, 3]).unwrap(),
            serde_json::to_string(&["a\"", ""]).unwrap()
        );
        assert_eq!(String::from_utf8(arrays).unwrap(), serde);
    }
}
