//! Builders for deliver_sm bodies as carriers send them: MO messages in each coding, long
//! messages split by UDH or SAR, and delivery receipts. Used by tests, the demo and benches.
//!
//! Addresses: a numeric `from` (a leading `+` is dropped) goes out as TON 1 (international),
//! NPI 1 (ISDN); anything else as TON 5 (alphanumeric), NPI 0. `to` goes out as TON 0 (unknown),
//! NPI 1, which is what carriers use for short codes and national long codes alike.
//!
//! Text that a coding cannot carry is sent with `?` in place of each character it cannot, as
//! carriers do. A single message whose user data exceeds 254 octets (the SMPP 3.4 limit of
//! `short_message`) is sent in a `message_payload` TLV with an empty `short_message`.

use bytes::Bytes;

use crate::smpp::pdu::{Address, ShortMessage, Tlv, esm_class, tlv_tag};
use crate::smpp::receipt::{Receipt, format_receipt};
use crate::smpp::{text, udh};

/// data_coding values used here (SMPP 3.4 section 5.2.19).
pub mod dcs {
    /// SMSC default alphabet (GSM 03.38 for every carrier vmnd talks to).
    pub const DEFAULT: u8 = 0x00;
    pub const LATIN1: u8 = 0x03;
    pub const BINARY: u8 = 0x04;
    pub const UCS2: u8 = 0x08;
}

/// The SMPP 3.4 limit on `short_message`.
const MAX_SHORT_MESSAGE: usize = 254;

/// GSM septets per concatenated part with an 8-bit reference (6-octet UDH: 160 - 7).
const GSM_PART_8: usize = 153;
/// ... with a 16-bit reference (7-octet UDH: 160 - 8).
const GSM_PART_16: usize = 152;
/// UCS2 code units per part with an 8-bit reference ((140 - 6) / 2).
const UCS2_PART_8: usize = 67;
/// ... with a 16-bit reference ((140 - 7) / 2).
const UCS2_PART_16: usize = 66;

/// The source address for `from`.
pub fn source_address(from: &str) -> Address {
    let digits = from.strip_prefix('+').unwrap_or(from);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        Address {
            ton: 1,
            npi: 1,
            addr: digits.to_string(),
        }
    } else {
        Address {
            ton: 5,
            npi: 0,
            addr: from.to_string(),
        }
    }
}

/// The destination address for `to`.
pub fn dest_address(to: &str) -> Address {
    Address {
        ton: 0,
        npi: 1,
        addr: to.to_string(),
    }
}

/// A deliver_sm body with everything but the user data at carrier-typical values.
fn base(from: &str, to: &str, data_coding: u8, esm: u8) -> ShortMessage {
    ShortMessage {
        source: source_address(from),
        dest: dest_address(to),
        esm_class: esm,
        data_coding,
        ..ShortMessage::default()
    }
}

/// One message: user data in `short_message`, or in `message_payload` when it is too long.
fn single(from: &str, to: &str, data_coding: u8, data: Vec<u8>) -> ShortMessage {
    let mut sm = base(from, to, data_coding, 0x00);
    if data.len() > MAX_SHORT_MESSAGE {
        sm.tlvs.push(Tlv {
            tag: tlv_tag::MESSAGE_PAYLOAD,
            value: Bytes::from(data),
        });
    } else {
        sm.short_message = Bytes::from(data);
    }
    sm
}

/// GSM 03.38 septets, one per octet, with `?` for what the alphabet lacks.
pub fn gsm_septets(text: &str) -> Vec<u8> {
    if let Some(s) = text::encode_gsm7_unpacked(text) {
        return s;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut buf = [0u8; 4];
    for c in text.chars() {
        match text::encode_gsm7_unpacked(c.encode_utf8(&mut buf)) {
            Some(s) => out.extend_from_slice(&s),
            None => out.push(b'?'),
        }
    }
    out
}

/// Latin-1 octets with `?` for what Latin-1 lacks.
fn latin1_octets(text: &str) -> Vec<u8> {
    text::encode_latin1(text).unwrap_or_else(|| {
        text.chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect()
    })
}

/// An MO message in the GSM default alphabet, one septet per octet (dcs 0x00, esm_class 0x00).
pub fn gsm(from: &str, to: &str, text: &str) -> ShortMessage {
    single(from, to, dcs::DEFAULT, gsm_septets(text))
}

/// As `gsm`, with the septets packed (for carriers configured with `gsm_packed = true`).
pub fn gsm_packed(from: &str, to: &str, text: &str) -> ShortMessage {
    single(
        from,
        to,
        dcs::DEFAULT,
        text::pack_septets(&gsm_septets(text), 0),
    )
}

/// An MO message in UCS2 (UTF-16BE, surrogate pairs for what lies beyond the BMP; dcs 0x08).
pub fn ucs2(from: &str, to: &str, text: &str) -> ShortMessage {
    single(from, to, dcs::UCS2, text::encode_ucs2(text))
}

/// An MO message in Latin-1 (dcs 0x03).
pub fn latin1(from: &str, to: &str, text: &str) -> ShortMessage {
    single(from, to, dcs::LATIN1, latin1_octets(text))
}

/// An MO message of 8-bit data (dcs 0x04).
pub fn binary(from: &str, to: &str, bytes: &[u8]) -> ShortMessage {
    single(from, to, dcs::BINARY, bytes.to_vec())
}

/// An MO message with an empty `short_message` and the text (GSM, unpacked) in a
/// `message_payload` TLV, as some carriers send every message.
pub fn payload_tlv(from: &str, to: &str, text: &str) -> ShortMessage {
    let mut sm = base(from, to, dcs::DEFAULT, 0x00);
    sm.tlvs.push(Tlv {
        tag: tlv_tag::MESSAGE_PAYLOAD,
        value: Bytes::from(gsm_septets(text)),
    });
    sm
}

/// A long text cut into parts: the coding chosen and each part's user data (without UDH).
struct Split {
    data_coding: u8,
    parts: Vec<Vec<u8>>,
}

/// Cut `text` into parts of at most `gsm_part` septets when the GSM alphabet carries it whole
/// (an escape pair never split), else of at most `ucs2_part` UTF-16 units (a surrogate pair
/// never split). At most 255 parts: text beyond that is dropped (no test needs 38 kB).
fn split(text: &str, gsm_part: usize, ucs2_part: usize) -> Split {
    let (data_coding, data, unit, limit) = match text::encode_gsm7_unpacked(text) {
        Some(septets) => (dcs::DEFAULT, septets, 1, gsm_part),
        None => (dcs::UCS2, text::encode_ucs2(text), 2, ucs2_part * 2),
    };
    let mut parts = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() && parts.len() < 255 {
        let mut cut = limit.min(rest.len());
        if cut < rest.len() {
            if unit == 1 {
                // Do not leave an escape (0x1B) as the last septet of a part: its character
                // would be split from it. Count escapes from the start to know which 0x1B is
                // a prefix and which is the escaped character itself.
                let mut i = 0;
                let mut last_start = 0;
                while i < cut {
                    last_start = i;
                    i += if rest[i] == 0x1B { 2 } else { 1 };
                }
                if i > cut {
                    cut = last_start;
                }
            } else {
                // A high surrogate as the last unit would split a pair.
                let hi = u16::from_be_bytes([rest[cut - 2], rest[cut - 1]]);
                if (0xD800..=0xDBFF).contains(&hi) {
                    cut -= 2;
                }
            }
        }
        parts.push(rest[..cut].to_vec());
        rest = &rest[cut..];
    }
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    Split { data_coding, parts }
}

/// A long message split into UDH-concatenated parts (esm_class 0x40) with an 8-bit (IEI 0x00)
/// or 16-bit (IEI 0x08) reference. GSM (unpacked septets, 153 per part, 152 with a 16-bit
/// reference) when the alphabet carries the whole text, else UCS2 (67 units per part, 66 with a
/// 16-bit reference, never splitting a surrogate pair). A text that fits one part still gets a
/// UDH (total 1).
pub fn concat_udh(
    from: &str,
    to: &str,
    text: &str,
    reference: u16,
    sixteen_bit: bool,
) -> Vec<ShortMessage> {
    concat_udh_inner(from, to, text, reference, sixteen_bit, false)
}

/// As `concat_udh`, with GSM parts packed into septets after the UDH (fill bits to the next
/// septet boundary, TS 23.040 9.2.3.24), for carriers configured with `gsm_packed = true`.
/// UCS2 parts are as in `concat_udh`.
pub fn concat_udh_packed(
    from: &str,
    to: &str,
    text: &str,
    reference: u16,
    sixteen_bit: bool,
) -> Vec<ShortMessage> {
    concat_udh_inner(from, to, text, reference, sixteen_bit, true)
}

fn concat_udh_inner(
    from: &str,
    to: &str,
    text: &str,
    reference: u16,
    sixteen_bit: bool,
    packed: bool,
) -> Vec<ShortMessage> {
    let (gsm_part, ucs2_part) = if sixteen_bit {
        (GSM_PART_16, UCS2_PART_16)
    } else {
        (GSM_PART_8, UCS2_PART_8)
    };
    let split = split(text, gsm_part, ucs2_part);
    let total = split.parts.len() as u8;
    split
        .parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let mut data = udh::concat_udh(reference, total, i as u8 + 1, sixteen_bit);
            if packed && split.data_coding == dcs::DEFAULT {
                let fill = text::fill_bits_for_udh(data.len());
                data.extend_from_slice(&text::pack_septets(&part, fill));
            } else {
                data.extend_from_slice(&part);
            }
            let mut sm = base(from, to, split.data_coding, esm_class::UDHI);
            sm.short_message = Bytes::from(data);
            sm
        })
        .collect()
}

/// The same split as `concat_udh` with an 8-bit reference, concatenated by the
/// `sar_msg_ref_num` / `sar_total_segments` / `sar_segment_seqnum` TLVs (esm_class 0x00).
pub fn concat_sar(from: &str, to: &str, text: &str, reference: u16) -> Vec<ShortMessage> {
    let split = split(text, GSM_PART_8, UCS2_PART_8);
    let total = split.parts.len() as u8;
    split
        .parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let mut sm = base(from, to, split.data_coding, 0x00);
            sm.short_message = Bytes::from(part);
            sm.tlvs = vec![
                Tlv {
                    tag: tlv_tag::SAR_MSG_REF_NUM,
                    value: Bytes::copy_from_slice(&reference.to_be_bytes()),
                },
                Tlv {
                    tag: tlv_tag::SAR_TOTAL_SEGMENTS,
                    value: Bytes::copy_from_slice(&[total]),
                },
                Tlv {
                    tag: tlv_tag::SAR_SEGMENT_SEQNUM,
                    value: Bytes::copy_from_slice(&[i as u8 + 1]),
                },
            ];
            sm
        })
        .collect()
}

/// The SMPP 3.4 `message_state` value (section 5.3.2.35) for a receipt's `stat`.
pub fn message_state(stat: &str) -> u8 {
    match stat.to_ascii_uppercase().as_str() {
        "ENROUTE" => 1,
        "DELIVRD" => 2,
        "EXPIRED" => 3,
        "DELETED" => 4,
        "UNDELIV" => 5,
        "ACCEPTD" => 6,
        "REJECTD" => 8,
        _ => 7, // UNKNOWN
    }
}

/// A delivery receipt (esm_class 0x04) whose text is `format_receipt(r)`, with the
/// `receipted_message_id` (a C-octet string, NUL included, as SMPP 3.4 defines it) and
/// `message_state` TLVs. `from` is the handset the original message went to, `to` the number
/// that sent it.
pub fn receipt(from: &str, to: &str, r: &Receipt) -> ShortMessage {
    let mut sm = base(
        from,
        to,
        dcs::DEFAULT,
        esm_class::TYPE_SMSC_DELIVERY_RECEIPT,
    );
    sm.short_message = Bytes::from(format_receipt(r).into_bytes());
    let mut id = r.id.clone().into_bytes();
    id.push(0);
    sm.tlvs = vec![
        Tlv {
            tag: tlv_tag::RECEIPTED_MESSAGE_ID,
            value: Bytes::from(id),
        },
        Tlv {
            tag: tlv_tag::MESSAGE_STATE,
            value: Bytes::copy_from_slice(&[message_state(&r.stat)]),
        },
    ];
    sm
}
