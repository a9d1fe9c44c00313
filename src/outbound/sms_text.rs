//! Outbound SMS text: choosing the alphabet and cutting a reply into `submit_sm`-sized segments.
//!
//! Shared by replies, confirmations and forwards, so every outbound text is encoded one way:
//! - GSM 03.38 (`data_coding` 0x00), unpacked (one septet per octet, the SMPP norm) when every
//!   character is in the default alphabet or the extension table. Extension characters
//!   (`€ { } [ ] ~ \ ^ |` and form feed) are ESC + code and count two septets.
//! - Otherwise UCS2 (`data_coding` 0x08), UTF-16BE: characters beyond the BMP (emoji) are
//!   surrogate pairs and count two units. One character outside GSM turns the whole text UCS2,
//!   as handsets do; mixing codings across segments of one message is not allowed.
//!
//! A text that fits one message (160 septets / 70 units) goes without a UDH. A longer one is
//! cut into segments of at most 153 septets / 67 units, each led by a 6-octet concatenation
//! UDH (IEI 0x00, 8-bit reference) and sent with esm_class 0x40. A cut never falls inside an
//! escape sequence or a surrogate pair: the handset would show two wrong characters, so the
//! whole pair moves to the next segment (which can add a segment over the naive count).
//!
//! At most [`MAX_SEGMENTS`] (255, the most a concatenation element can number) segments are
//! produced; [`segments`] drops the text beyond that and [`Plan::is_truncated`] says so, so a
//! caller that must not cut (a config check of a reply template) can refuse first.
//!
//! Nothing here depends on `crate::sim`: the simulator's splitter builds inbound test traffic,
//! this one is the daemon's own.

use std::ops::Range;

use crate::smpp::pdu::esm_class;
use crate::smpp::text::{GSM_ESC, encode_gsm7_unpacked};
use crate::smpp::udh::concat_udh;

/// `data_coding` for the GSM 03.38 default alphabet (SMPP 3.4 5.2.19: SMSC default, which is
/// GSM 03.38 for every carrier vmnd talks to).
pub const DCS_GSM7: u8 = 0x00;
/// `data_coding` for UCS2 (UTF-16BE).
pub const DCS_UCS2: u8 = 0x08;

/// Septets in a message without UDH (140 octets * 8 / 7).
pub const GSM_SINGLE: usize = 160;
/// Septets per concatenated segment: on the air the 140 octets (1120 bits) carry the 6-octet
/// UDH plus 1 fill bit (49 bits, seven septets' worth), leaving 153 septets. We send them
/// unpacked and the carrier packs them, so the air-interface limit is the one that counts.
pub const GSM_PART: usize = 153;
/// UTF-16 units in a message without UDH (140 octets / 2).
pub const UCS2_SINGLE: usize = 70;
/// UTF-16 units per concatenated segment ((140 - 6) / 2).
pub const UCS2_PART: usize = 67;
/// The most segments one concatenated message can have (the element's total is one octet).
pub const MAX_SEGMENTS: usize = 255;

/// The alphabet a text is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsEncoding {
    /// GSM 03.38 default alphabet and extension table, `data_coding` 0x00, unpacked.
    Gsm7,
    /// UTF-16BE, `data_coding` 0x08.
    Ucs2,
}

impl SmsEncoding {
    /// The `data_coding` value of `submit_sm` for this alphabet.
    pub fn data_coding(self) -> u8 {
        match self {
            SmsEncoding::Gsm7 => DCS_GSM7,
            SmsEncoding::Ucs2 => DCS_UCS2,
        }
    }
}

/// How a text will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub encoding: SmsEncoding,
    /// Septets (extension chars count two) or UTF-16 code units (emoji count two), for the
    /// whole text.
    pub units: usize,
    /// Segments the whole text needs, escape sequences and surrogate pairs kept whole. Not
    /// capped: above [`MAX_SEGMENTS`] the text is truncated when sent (see
    /// [`Plan::is_truncated`]); [`segments`] returns `min(segments, MAX_SEGMENTS)` of them.
    pub segments: usize,
}

impl Plan {
    /// True when the text needs more than [`MAX_SEGMENTS`] segments, so [`segments`] drops
    /// its end.
    pub fn is_truncated(&self) -> bool {
        self.segments > MAX_SEGMENTS
    }
}

/// One submit_sm's worth: data_coding, esm_class (set explicitly: 0x00, or 0x40 when a UDH is
/// present) and short_message (UDH + payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub data_coding: u8,
    pub esm_class: u8,
    pub short_message: Vec<u8>,
}

/// A text encoded, before cutting: GSM septets or UTF-16 units.
enum Encoded {
    Gsm(Vec<u8>),
    Ucs2(Vec<u16>),
}

impl Encoded {
    fn new(text: &str) -> Encoded {
        match encode_gsm7_unpacked(text) {
            Some(septets) => Encoded::Gsm(septets),
            None => Encoded::Ucs2(text.encode_utf16().collect()),
        }
    }

    fn encoding(&self) -> SmsEncoding {
        match self {
            Encoded::Gsm(_) => SmsEncoding::Gsm7,
            Encoded::Ucs2(_) => SmsEncoding::Ucs2,
        }
    }

    fn len(&self) -> usize {
        match self {
            Encoded::Gsm(s) => s.len(),
            Encoded::Ucs2(u) => u.len(),
        }
    }

    /// Units the character starting at `i` takes: 2 for ESC + code or a surrogate pair.
    ///
    /// `encode_gsm7_unpacked` emits 0x1B only as an escape prefix (no extension code is 0x1B
    /// and ESC is not a character of the alphabet), so every 0x1B starts a pair; likewise
    /// UTF-16 from a `&str` has every high surrogate followed by its low one.
    fn char_len(&self, i: usize) -> usize {
        let pair = match self {
            Encoded::Gsm(s) => s[i] == GSM_ESC,
            Encoded::Ucs2(u) => (0xD800..=0xDBFF).contains(&u[i]),
        };
        if pair { 2 } else { 1 }
    }

    /// (units without UDH, units per concatenated segment).
    fn limits(&self) -> (usize, usize) {
        match self {
            Encoded::Gsm(_) => (GSM_SINGLE, GSM_PART),
            Encoded::Ucs2(_) => (UCS2_SINGLE, UCS2_PART),
        }
    }

    /// Calls `each` with the unit range of each segment, at most `limit` of them; returns how
    /// many segments the whole text needs (which may exceed `limit`).
    ///
    /// Greedy: each segment takes whole characters while they fit. An empty text is one
    /// empty segment, so that "reply with nothing" still sends exactly one message.
    fn for_each_range(&self, limit: usize, mut each: impl FnMut(Range<usize>)) -> usize {
        let len = self.len();
        let (single, part) = self.limits();
        if len <= single {
            if limit > 0 {
                each(0..len);
            }
            return 1;
        }
        let mut count = 0;
        let mut start = 0;
        while start < len {
            let mut end = start;
            while end < len {
                // min: a truncated pair at the very end (impossible from a &str) cannot index
                // past the data.
                let next = end + self.char_len(end).min(len - end);
                if next - start > part {
                    break;
                }
                end = next;
            }
            // Every character is at most 2 units and a part holds more, so `end > start`;
            // the max guards the loop against ever spinning in place.
            let end = end.max(start + 1);
            if count < limit {
                each(start..end);
            }
            count += 1;
            start = end;
        }
        count
    }

    /// The payload octets of a unit range.
    fn octets(&self, range: Range<usize>) -> Vec<u8> {
        match self {
            Encoded::Gsm(s) => s[range].to_vec(),
            Encoded::Ucs2(u) => u[range].iter().flat_map(|u| u.to_be_bytes()).collect(),
        }
    }
}

/// How `text` will be sent: its alphabet, its length in that alphabet's units, and the
/// segments it needs (uncapped; see [`Plan::segments`]).
pub fn plan(text: &str) -> Plan {
    let encoded = Encoded::new(text);
    Plan {
        encoding: encoded.encoding(),
        units: encoded.len(),
        segments: encoded.for_each_range(0, |_| {}),
    }
}

/// Splits for sending. GSM 03.38 (data_coding 0x00, unpacked: one septet per octet, the SMPP
/// norm) when every character fits (extension characters count two), else UCS2 (0x08). One
/// segment: up to 160 septets / 70 UTF-16 units, no UDH, esm_class 0x00. More: 153 septets /
/// 67 units per segment, each with an 8-bit-reference concatenation UDH (`05 00 03 reference
/// total seq`) and esm_class 0x40, never splitting an escape sequence (ESC + char) or a
/// surrogate pair. Empty text: one empty GSM segment.
///
/// At most [`MAX_SEGMENTS`] (255) segments: a longer text is truncated after the 255th
/// segment (whose UDH says total 255), so the handset still reassembles what arrives.
/// [`plan`] tells beforehand ([`Plan::is_truncated`]).
///
/// `reference` must differ between concurrent long messages to the same handset; choosing it
/// is the caller's job (it knows the destination).
pub fn segments(text: &str, reference: u8) -> Vec<Segment> {
    let encoded = Encoded::new(text);
    let data_coding = encoded.encoding().data_coding();
    let mut ranges = Vec::new();
    let needed = encoded.for_each_range(MAX_SEGMENTS, |r| ranges.push(r));
    if needed == 1 {
        return vec![Segment {
            data_coding,
            esm_class: 0x00,
            short_message: encoded.octets(0..encoded.len()),
        }];
    }
    // ranges.len() <= MAX_SEGMENTS = 255 by construction, so the casts are exact.
    let total = ranges.len() as u8;
    ranges
        .into_iter()
        .zip(1..=total)
        .map(|(range, seq)| {
            let mut short_message = concat_udh(u16::from(reference), total, seq, false);
            short_message.extend(encoded.octets(range));
            Segment {
                data_coding,
                esm_class: esm_class::UDHI,
                short_message,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::text::encode_ucs2;

    #[test]
    fn plan_agrees_with_segments_at_the_edges() {
        for text in [
            String::new(),
            "a".repeat(160),
            "a".repeat(161),
            "€".repeat(80),
            "€".repeat(81),
            "é".repeat(70),
            "ê".repeat(71),
            "😀".repeat(35),
            "😀".repeat(36),
        ] {
            let p = plan(&text);
            assert_eq!(segments(&text, 7).len(), p.segments, "{text:?}");
        }
    }

    #[test]
    fn ucs2_octets_are_big_endian() {
        assert_eq!(
            Encoded::new("ê😀").octets(0..3),
            [0x00, 0xEA, 0xD8, 0x3D, 0xDE, 0x00]
        );
        assert_eq!(encode_ucs2("ê😀"), Encoded::new("ê😀").octets(0..3));
    }
}
