//! Inbound and outbound text: GSM 03.38 (default alphabet and extension table, unpacked and
//! packed), IA5/ASCII, Latin-1, ISO-8859-5 (Cyrillic), ISO-8859-8 (Hebrew), UCS2 read as UTF-16BE
//! with surrogate pairs, and the DCS coding groups that pick among them. rusmpp has none of this;
//! it is ours and tested hardest.
//!
//! Everything here is total: any `data_coding` and any bytes decode to *some* text (at worst
//! U+FFFD or hex), so a carrier's odd message can never take the daemon down.
//!
//! Decisions where the standards leave room (each is tested below):
//! - `data_coding` 0x00..=0x0F follows SMPP 3.4 5.2.19; 0x10..=0xFF follows the 3GPP TS 23.038
//!   coding groups. Compressed text (23.038 bit 5) and reserved groups are [`Encoding::Binary`]:
//!   we cannot decompress, and hex keeps the payload recoverable.
//! - JIS (0x05, 0x0A, 0x0D), pictograms (0x09), KS C 5601 (0x0E) and the reserved 0x0B, 0x0C,
//!   0x0F are multi-byte or undefined sets we carry no tables for: they are [`Encoding::Binary`]
//!   (hex), which loses nothing, rather than Latin-1 mojibake.
//! - Cyrillic (0x06, ISO-8859-5) and Hebrew (0x07, ISO-8859-8) are decoded properly and reported
//!   as [`Encoding::Latin1`], the contract's name for a single-byte 8-bit character set.
//! - IA5 (0x01) bytes above 0x7F, which IA5 does not have, are read as Latin-1: lossless, and the
//!   likeliest intent of a carrier that sends them.
//! - GSM 7-bit: a septet value above 0x7F (unpacked data from a sloppy carrier) becomes U+FFFD.
//!   ESC followed by a code the extension table does not define shows the default-alphabet
//!   character for that code (23.038 6.2.1.1 note), ESC ESC (reserved for a further extension
//!   table) and a lone ESC at the end show a space (23.038: "display a space").
//! - Packed GSM 7-bit: when the septets exactly fill the octets and the last septet sits alone in
//!   the final octet's top 7 bits, it may be padding: a CR there is the padding 23.038 6.1.2.3.1
//!   prescribes, an `@` (0x00) is the zero padding some encoders write instead. Both are dropped.

/// How a message's text was encoded, as the webhook contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gsm7,
    Ascii,
    Latin1,
    Ucs2,
    /// 8-bit data: kept as hex, never keyword-matched.
    Binary,
}

impl Encoding {
    /// The contract's name: `gsm7`, `ascii`, `latin1`, `ucs2`, `binary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ascii => "ascii",
            Encoding::Latin1 => "latin1",
            Encoding::Ucs2 => "ucs2",
            Encoding::Binary => "binary",
        }
    }
}

/// The decoded text of one message (or one part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedText {
    /// The text; for [`Encoding::Binary`] the payload as lowercase hex.
    pub text: String,
    /// Which alphabet the data coding named (what the webhook reports).
    pub encoding: Encoding,
}

/// The GSM 03.38 escape septet: the next septet is read from the extension table.
pub const GSM_ESC: u8 = 0x1B;

/// The GSM 03.38 default alphabet, indexed by septet. 0x1B is ESC and is never looked up here as
/// a character (the placeholder is U+001B).
const GSM_DEFAULT: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The GSM 03.38 extension table (the septet after ESC), as (code, char).
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed (page break)
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// The character set a data_coding byte selects; finer than [`Encoding`] because the contract
/// has no names for Cyrillic and Hebrew but they still decode differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Gsm7,
    Ascii,
    Latin1,
    Cyrillic,
    Hebrew,
    Ucs2,
    Binary,
}

impl Charset {
    fn encoding(self) -> Encoding {
        match self {
            Charset::Gsm7 => Encoding::Gsm7,
            Charset::Ascii => Encoding::Ascii,
            Charset::Latin1 | Charset::Cyrillic | Charset::Hebrew => Encoding::Latin1,
            Charset::Ucs2 => Encoding::Ucs2,
            Charset::Binary => Encoding::Binary,
        }
    }
}

/// SMPP 3.4 5.2.19 for 0x00..=0x0F, 3GPP TS 23.038 section 4 coding groups above.
fn charset_for_dcs(dcs: u8) -> Charset {
    match dcs {
        0x00 => Charset::Gsm7,
        0x01 => Charset::Ascii,
        0x02 | 0x04 => Charset::Binary,
        0x03 => Charset::Latin1,
        0x06 => Charset::Cyrillic,
        0x07 => Charset::Hebrew,
        0x08 => Charset::Ucs2,
        // JIS, pictogram, ISO-2022-JP, JIS X 0212, KS C 5601, reserved: no tables, keep as hex.
        0x05 | 0x09..=0x0F => Charset::Binary,
        // General data coding (00xx) and automatic deletion (01xx) groups: bit 5 set means
        // compressed (23.042), which we cannot undo; bits 3-2 pick the alphabet.
        0x10..=0x7F => {
            if dcs & 0x20 != 0 {
                return Charset::Binary;
            }
            match (dcs >> 2) & 0x03 {
                0b00 => Charset::Gsm7,
                0b10 => Charset::Ucs2,
                // 01 is 8-bit data; 11 is reserved.
                _ => Charset::Binary,
            }
        }
        // 1000..1011: reserved coding groups.
        0x80..=0xBF => Charset::Binary,
        // Message waiting indication, discard or store: GSM 7-bit.
        0xC0..=0xDF => Charset::Gsm7,
        // Message waiting indication, store, UCS2.
        0xE0..=0xEF => Charset::Ucs2,
        // Data coding / message class: bit 2 chooses GSM 7-bit or 8-bit data.
        0xF0..=0xFF => {
            if dcs & 0x04 == 0 {
                Charset::Gsm7
            } else {
                Charset::Binary
            }
        }
    }
}

/// What a data_coding byte says (SMPP 3.4 5.2.19 + GSM 03.38 DCS coding groups).
///
/// Values the contract has no name for are mapped as the module header describes (Cyrillic and
/// Hebrew report `Latin1`; multi-byte Asian sets, compressed and reserved values `Binary`).
pub fn encoding_for_dcs(data_coding: u8) -> Encoding {
    charset_for_dcs(data_coding).encoding()
}

/// Fill bits that follow a UDH of `udh_octets` octets (UDHL included) so that the first septet
/// of packed GSM 7-bit text starts on a septet boundary (3GPP TS 23.040 9.2.3.24).
pub fn fill_bits_for_udh(udh_octets: usize) -> u8 {
    // (7 - (bits % 7)) % 7, computed without overflow for any length.
    ((7 - (udh_octets % 7 * 8 % 7)) % 7) as u8
}

/// Decodes user data (UDH already removed). `udh_octets` is the length of the removed UDH
/// including its UDHL byte (0 if none); it matters for packed GSM 7-bit fill bits. `gsm_packed` is
/// a per-carrier option: when true, GSM 7-bit user data is packed septets; when false (the SMPP
/// norm), one septet per octet.
///
/// Never fails: undecodable input becomes U+FFFD (text encodings) or hex (binary).
pub fn decode_text(
    data_coding: u8,
    user_data: &[u8],
    gsm_packed: bool,
    udh_octets: usize,
) -> DecodedText {
    let charset = charset_for_dcs(data_coding);
    let text = match charset {
        Charset::Gsm7 if gsm_packed => decode_in(
            charset,
            &packed_septets(user_data, fill_bits_for_udh(udh_octets)),
        ),
        _ => decode_in(charset, user_data),
    };
    DecodedText {
        text,
        encoding: charset.encoding(),
    }
}

/// One part of a concatenated message, as [`decode_parts`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct PartData<'a> {
    /// The part number (from 1): a gap between two parts' numbers ends the run they join in.
    pub seq: u8,
    pub data_coding: u8,
    /// User data after the UDH.
    pub user_data: &'a [u8],
    /// Octets of the removed UDH, UDHL included (packed GSM fill bits depend on it).
    pub udh_octets: usize,
}

/// Decodes a concatenated message's parts, in part-number order, into one text.
///
/// Consecutive parts in the same character set are joined *before* decoding: senders split a
/// GSM escape pair (ESC ending one part, the extension code starting the next) or a UTF-16
/// surrogate pair across parts, and decoding each part alone would turn either into two wrong
/// characters. Packed GSM parts are unpacked to septets first, each with its own fill bits and
/// padding. A missing part or a change of character set ends the run, and so does a UCS2 run
/// with an odd number of octets (joining past it would shift every later unit). The encoding
/// reported is the first part's. Never fails, like [`decode_text`].
pub fn decode_parts(parts: &[PartData<'_>], gsm_packed: bool) -> DecodedText {
    let mut text = String::new();
    // GSM: septets; every other character set: octets.
    let mut run: Vec<u8> = Vec::new();
    let mut run_charset: Option<Charset> = None;
    let mut last_seq: Option<u8> = None;
    for part in parts {
        let charset = charset_for_dcs(part.data_coding);
        let follows = last_seq.and_then(|s| s.checked_add(1)) == Some(part.seq);
        let joins = follows
            && run_charset == Some(charset)
            && !(charset == Charset::Ucs2 && run.len() % 2 != 0);
        if !joins {
            if let Some(c) = run_charset {
                text.push_str(&decode_in(c, &run));
            }
            run.clear();
        }
        run_charset = Some(charset);
        last_seq = Some(part.seq);
        match charset {
            Charset::Gsm7 if gsm_packed => run.extend(packed_septets(
                part.user_data,
                fill_bits_for_udh(part.udh_octets),
            )),
            _ => run.extend_from_slice(part.user_data),
        }
    }
    if let Some(c) = run_charset {
        text.push_str(&decode_in(c, &run));
    }
    let encoding = parts.first().map_or(Encoding::Gsm7, |p| {
        charset_for_dcs(p.data_coding).encoding()
    });
    DecodedText { text, encoding }
}

/// Decodes `data` in `charset`; for GSM 7-bit, `data` is septets (one per octet).
fn decode_in(charset: Charset, data: &[u8]) -> String {
    match charset {
        Charset::Gsm7 => decode_gsm7_septets(data),
        // IA5 has no bytes above 0x7F; Latin-1 reads them losslessly.
        Charset::Ascii | Charset::Latin1 => decode_latin1(data),
        Charset::Cyrillic => data.iter().map(|&b| iso_8859_5(b)).collect(),
        Charset::Hebrew => data.iter().map(|&b| iso_8859_8(b)).collect(),
        Charset::Ucs2 => decode_ucs2(data),
        Charset::Binary => hex::encode(data),
    }
}

/// Decodes GSM 03.38 septets, one per element (the unpacked form). See the module header for
/// how ESC sequences and values above 0x7F are treated.
pub fn decode_gsm7_septets(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut i = 0;
    while i < septets.len() {
        let s = septets[i];
        i += 1;
        if s != GSM_ESC {
            out.push(gsm_default_char(s));
            continue;
        }
        match septets.get(i) {
            // A lone ESC at the end has no symbol: show a space like ESC ESC.
            None => out.push(' '),
            Some(&next) => {
                i += 1;
                out.push(match next {
                    // Reserved for a further extension table: 23.038 says display a space.
                    GSM_ESC => ' ',
                    _ => gsm_extension_char(next).unwrap_or_else(|| gsm_default_char(next)),
                });
            }
        }
    }
    out
}

/// The default-alphabet character for a septet; U+FFFD for values that are not septets.
fn gsm_default_char(septet: u8) -> char {
    GSM_DEFAULT
        .get(usize::from(septet))
        .copied()
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn gsm_extension_char(code: u8) -> Option<char> {
    GSM_EXTENSION
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, ch)| *ch)
}

/// Packed GSM 7-bit to septets: septet count from the octets, then the padding rule of the
/// module header.
fn packed_septets(octets: &[u8], fill_bits: u8) -> Vec<u8> {
    let bits = (octets.len() * 8).saturating_sub(usize::from(fill_bits));
    let count = bits / 7;
    let mut septets = unpack_septets(octets, fill_bits, count);
    // The last septet fills the final octet's top 7 bits exactly: 7 spare bits are
    // indistinguishable from one more septet, so padding (CR by the standard, 0 by some
    // encoders) is dropped.
    if count > 0 && bits % 7 == 0 && matches!(septets.last(), Some(0x00 | 0x0D)) {
        septets.pop();
    }
    septets
}

fn decode_latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// ISO-8859-5: Latin-1 below 0xA1, then the Cyrillic block at U+0400 + (b - 0xA0), except three
/// code points outside it.
fn iso_8859_5(b: u8) -> char {
    match b {
        0x00..=0xA0 => char::from(b),
        0xAD => '\u{AD}', // soft hyphen
        0xF0 => '№',
        0xFD => '§',
        _ => char::from_u32(0x0400 + u32::from(b) - 0xA0).unwrap_or(char::REPLACEMENT_CHARACTER),
    }
}

/// ISO-8859-8: Latin-1 where it agrees, the Hebrew letters at U+05D0.., U+FFFD where undefined.
fn iso_8859_8(b: u8) -> char {
    match b {
        0x00..=0xA0 | 0xA2..=0xA9 | 0xAB..=0xB9 | 0xBB..=0xBE => char::from(b),
        0xAA => '×',
        0xBA => '÷',
        0xDF => '‗',
        0xE0..=0xFA => {
            char::from_u32(0x05D0 + u32::from(b) - 0xE0).unwrap_or(char::REPLACEMENT_CHARACTER)
        }
        0xFD => '\u{200E}', // left-to-right mark
        0xFE => '\u{200F}', // right-to-left mark
        _ => char::REPLACEMENT_CHARACTER,
    }
}

/// UTF-16BE; an odd trailing byte or an unpaired surrogate becomes U+FFFD.
fn decode_ucs2(bytes: &[u8]) -> String {
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    let mut out: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    if bytes.len() % 2 != 0 {
        out.push(char::REPLACEMENT_CHARACTER);
    }
    out
}

/// Septets for text if every char is in GSM 03.38 default alphabet or extension table (extension
/// chars become ESC + code). None otherwise.
pub fn encode_gsm7_unpacked(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for ch in text.chars() {
        if let Some((code, _)) = GSM_EXTENSION.iter().find(|(_, c)| *c == ch) {
            out.push(GSM_ESC);
            out.push(*code);
            continue;
        }
        // ESC itself is not a character of the alphabet.
        let septet = GSM_DEFAULT
            .iter()
            .position(|&c| c == ch && ch != '\u{1b}')?;
        out.push(septet as u8);
    }
    Some(out)
}

/// Packs septets into octets with `fill_bits` leading fill bits (for after a UDH).
///
/// Septets go in least significant bit first (23.038 6.1.2.1.1); the fill bits are zero. Values
/// above 0x7F are masked to their low 7 bits. Spare bits in the last octet are zero; a sender
/// that wants the CR padding of 23.038 appends 0x0D itself.
pub fn pack_septets(septets: &[u8], fill_bits: u8) -> Vec<u8> {
    let fill = usize::from(fill_bits);
    let total_bits = fill + septets.len() * 7;
    let mut out = vec![0u8; total_bits.div_ceil(8)];
    for (i, &s) in septets.iter().enumerate() {
        let bit = fill + i * 7;
        let (byte, shift) = (bit / 8, bit % 8);
        let value = u16::from(s & 0x7F) << shift;
        out[byte] |= value as u8;
        if shift > 1 {
            out[byte + 1] |= (value >> 8) as u8;
        }
    }
    out
}

/// Inverse of [`pack_septets`]; `septet_count` tells how many septets to read.
///
/// Stops early (returns fewer septets) if the octets run out before `septet_count`.
pub fn unpack_septets(octets: &[u8], fill_bits: u8, septet_count: usize) -> Vec<u8> {
    let fill = usize::from(fill_bits);
    let available = (octets.len() * 8).saturating_sub(fill) / 7;
    let count = septet_count.min(available);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let bit = fill + i * 7;
        let (byte, shift) = (bit / 8, bit % 8);
        let lo = u16::from(octets[byte]);
        let hi = octets.get(byte + 1).map_or(0, |&b| u16::from(b));
        out.push((((hi << 8) | lo) >> shift) as u8 & 0x7F);
    }
    out
}

/// UTF-16BE (characters outside the BMP become surrogate pairs).
pub fn encode_ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// ISO-8859-1 bytes if every char is at most U+00FF. None otherwise.
pub fn encode_latin1(text: &str) -> Option<Vec<u8>> {
    text.chars().map(|c| u8::try_from(c).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(dcs: u8, data: &[u8]) -> DecodedText {
        decode_text(dcs, data, false, 0)
    }

    #[test]
    fn smpp_dcs_table() {
        assert_eq!(encoding_for_dcs(0x00), Encoding::Gsm7);
        assert_eq!(encoding_for_dcs(0x01), Encoding::Ascii);
        assert_eq!(encoding_for_dcs(0x02), Encoding::Binary);
        assert_eq!(encoding_for_dcs(0x03), Encoding::Latin1);
        assert_eq!(encoding_for_dcs(0x04), Encoding::Binary);
        assert_eq!(encoding_for_dcs(0x05), Encoding::Binary);
        assert_eq!(encoding_for_dcs(0x06), Encoding::Latin1);
        assert_eq!(encoding_for_dcs(0x07), Encoding::Latin1);
        assert_eq!(encoding_for_dcs(0x08), Encoding::Ucs2);
        for dcs in 0x09..=0x0F {
            assert_eq!(encoding_for_dcs(dcs), Encoding::Binary, "dcs {dcs:#04x}");
        }
    }

    #[test]
    fn gsm_general_coding_groups() {
        // 0x10..0x1F: uncompressed, with message class (bit 4); bits 3-2 alphabet.
        assert_eq!(encoding_for_dcs(0x10), Encoding::Gsm7);
        assert_eq!(encoding_for_dcs(0x11), Encoding::Gsm7);
        assert_eq!(encoding_for_dcs(0x14), Encoding::Binary);
        assert_eq!(encoding_for_dcs(0x15), Encoding::Binary);
        assert_eq!(encoding_for_dcs(0x18), Encoding::Ucs2);
        assert_eq!(encoding_for_dcs(0x1B), Encoding::Ucs2);
        assert_eq!(encoding_for_dcs(0x1C), Encoding::Binary); // reserved alphabet
        // 0x20..0x3F: compressed.
        for dcs in [0x20, 0x24, 0x28, 0x30, 0x38, 0x3F] {
            assert_eq!(encoding_for_dcs(dcs), Encoding::Binary, "dcs {dcs:#04x}");
        }
        // Automatic deletion group mirrors the general group.
        assert_eq!(encoding_for_dcs(0x40), Encoding::Gsm7);
        assert_eq!(encoding_for_dcs(0x44), Encoding::Binary);
        assert_eq!(encoding_for_dcs(0x48), Encoding::Ucs2);
        assert_eq!(encoding_for_dcs(0x50), Encoding::Gsm7);
        assert_eq!(encoding_for_dcs(0x58), Encoding::Ucs2);
        assert_eq!(encoding_for_dcs(0x60), Encoding::Binary); // compressed
        assert_eq!(encoding_for_dcs(0x7F), Encoding::Binary);
    }

    #[test]
    fn gsm_other_coding_groups() {
        for dcs in [0x80, 0x9F, 0xBF] {
            assert_eq!(encoding_for_dcs(dcs), Encoding::Binary, "dcs {dcs:#04x}");
        }
        for dcs in [0xC0, 0xC8, 0xCF, 0xD0, 0xDB, 0xDF] {
            assert_eq!(encoding_for_dcs(dcs), Encoding::Gsm7, "dcs {dcs:#04x}");
        }
        for dcs in [0xE0, 0xE8, 0xEF] {
            assert_eq!(encoding_for_dcs(dcs), Encoding::Ucs2, "dcs {dcs:#04x}");
        }
        for dcs in [0xF0, 0xF1, 0xF2, 0xF3, 0xF8] {
            assert_eq!(encoding_for_dcs(dcs), Encoding::Gsm7, "dcs {dcs:#04x}");
        }
        for dcs in [0xF4, 0xF5, 0xF6, 0xF7, 0xFF] {
            assert_eq!(encoding_for_dcs(dcs), Encoding::Binary, "dcs {dcs:#04x}");
        }
    }

    #[test]
    fn every_dcs_decodes_to_its_encoding() {
        for dcs in 0..=255u8 {
            let d = decode(dcs, b"Hi");
            assert_eq!(d.encoding, encoding_for_dcs(dcs));
        }
    }

    #[test]
    fn gsm_default_alphabet_spot_checks() {
        let cases: &[(u8, char)] = &[
            (0x00, '@'),
            (0x01, '£'),
            (0x02, '$'),
            (0x03, '¥'),
            (0x09, 'Ç'),
            (0x0A, '\n'),
            (0x0D, '\r'),
            (0x10, 'Δ'),
            (0x11, '_'),
            (0x15, 'Ω'),
            (0x1A, 'Ξ'),
            (0x1C, 'Æ'),
            (0x1E, 'ß'),
            (0x1F, 'É'),
            (0x20, ' '),
            (0x24, '¤'),
            (0x27, '\''),
            (0x30, '0'),
            (0x40, '¡'),
            (0x41, 'A'),
            (0x5A, 'Z'),
            (0x5B, 'Ä'),
            (0x5F, '§'),
            (0x60, '¿'),
            (0x61, 'a'),
            (0x7A, 'z'),
            (0x7B, 'ä'),
            (0x7E, 'ü'),
            (0x7F, 'à'),
        ];
        for &(septet, ch) in cases {
            assert_eq!(
                decode_gsm7_septets(&[septet]),
                ch.to_string(),
                "{septet:#04x}"
            );
        }
    }

    #[test]
    fn gsm_table_has_no_duplicates() {
        // Encoding relies on each character having exactly one septet.
        for (i, a) in GSM_DEFAULT.iter().enumerate() {
            for b in &GSM_DEFAULT[i + 1..] {
                assert_ne!(a, b);
            }
            assert!(
                GSM_EXTENSION.iter().all(|(_, e)| e != a),
                "{a:?} in both tables"
            );
        }
    }

    #[test]
    fn gsm_ascii_text_unpacked() {
        let d = decode(0x00, b"JOIN summer");
        assert_eq!(d.text, "JOIN summer");
        assert_eq!(d.encoding, Encoding::Gsm7);
    }

    #[test]
    fn gsm_extension_table() {
        let data = [
            0x1B, 0x65, 0x1B, 0x28, 0x1B, 0x29, 0x1B, 0x3C, 0x1B, 0x3E, 0x1B, 0x3D, 0x1B, 0x2F,
            0x1B, 0x14, 0x1B, 0x40, 0x1B, 0x0A,
        ];
        assert_eq!(decode_gsm7_septets(&data), "€{}[]~\\^|\u{0C}");
    }

    #[test]
    fn gsm_escape_edge_cases() {
        // Unknown extension code: the default-alphabet character (23.038 6.2.1.1 note).
        assert_eq!(decode_gsm7_septets(&[0x1B, 0x41]), "A");
        assert_eq!(decode_gsm7_septets(&[0x1B, 0x0D]), "\r");
        // ESC ESC: reserved, shown as a space; the text goes on after it.
        assert_eq!(decode_gsm7_septets(&[0x1B, 0x1B, 0x41]), " A");
        // Lone trailing ESC.
        assert_eq!(decode_gsm7_septets(&[0x41, 0x1B]), "A ");
        // ESC then a non-septet.
        assert_eq!(decode_gsm7_septets(&[0x1B, 0xFF, 0x41]), "\u{FFFD}A");
    }

    #[test]
    fn gsm_high_values_are_replaced() {
        assert_eq!(
            decode_gsm7_septets(&[0x41, 0x80, 0xC1, 0xFF]),
            "A\u{FFFD}\u{FFFD}\u{FFFD}"
        );
    }

    #[test]
    fn gsm_encode_round_trip() {
        let text = "@£$¥ Hello {World} [x]~\\^|€ ÆæßÉ ¡¿ äöñüà\n\r\u{0C}";
        let septets = encode_gsm7_unpacked(text).expect("all GSM");
        assert!(septets.iter().all(|&s| s <= 0x7F));
        assert_eq!(decode_gsm7_septets(&septets), text);
    }

    #[test]
    fn gsm_encode_refuses_non_gsm() {
        assert_eq!(encode_gsm7_unpacked("naïve"), None); // ï
        assert_eq!(encode_gsm7_unpacked("ç"), None); // only capital Ç is in the table
        assert_eq!(encode_gsm7_unpacked("😀"), None);
        assert_eq!(encode_gsm7_unpacked("\u{1b}"), None);
        assert_eq!(encode_gsm7_unpacked("\t"), None);
        assert_eq!(encode_gsm7_unpacked(""), Some(vec![]));
    }

    #[test]
    fn gsm_encode_extension_chars() {
        assert_eq!(encode_gsm7_unpacked("€"), Some(vec![0x1B, 0x65]));
        assert_eq!(encode_gsm7_unpacked("a{"), Some(vec![0x61, 0x1B, 0x28]));
    }

    #[test]
    fn hello_world_packed() {
        // "hellohello" from 23.038 6.1.2.1.1's worked example.
        let septets = encode_gsm7_unpacked("hellohello").unwrap();
        let packed = pack_septets(&septets, 0);
        assert_eq!(
            packed,
            [0xE8, 0x32, 0x9B, 0xFD, 0x46, 0x97, 0xD9, 0xEC, 0x37]
        );
        assert_eq!(decode_text(0x00, &packed, true, 0).text, "hellohello");
    }

    #[test]
    fn pack_known_vectors() {
        // "Hello World" packed (a widely used test vector).
        let septets = encode_gsm7_unpacked("Hello World").unwrap();
        assert_eq!(
            pack_septets(&septets, 0),
            [0xC8, 0x32, 0x9B, 0xFD, 0x06, 0x5D, 0xDF, 0x72, 0x36, 0x19]
        );
        assert_eq!(pack_septets(&[], 0), Vec::<u8>::new());
        assert_eq!(pack_septets(&[0x41], 0), [0x41]);
        // One fill bit shifts everything left by one.
        assert_eq!(pack_septets(&[0x41], 1), [0x82]);
        assert_eq!(pack_septets(&[0x7F], 6), [0xC0, 0x1F]);
    }

    #[test]
    fn pack_masks_high_bits() {
        assert_eq!(pack_septets(&[0xC1], 0), pack_septets(&[0x41], 0));
    }

    #[test]
    fn unpack_stops_when_octets_run_out() {
        let packed = pack_septets(&[1, 2, 3], 0);
        assert_eq!(unpack_septets(&packed, 0, 3), [1, 2, 3]);
        assert_eq!(unpack_septets(&packed, 0, 100), [1, 2, 3]);
        assert_eq!(unpack_septets(&packed, 0, 1), [1]);
        assert_eq!(unpack_septets(&[], 3, 5), Vec::<u8>::new());
        assert_eq!(unpack_septets(&[0xFF], 200, 5), Vec::<u8>::new());
    }

    #[test]
    fn fill_bits() {
        assert_eq!(fill_bits_for_udh(0), 0);
        assert_eq!(fill_bits_for_udh(6), 1); // 8-bit concat UDH
        assert_eq!(fill_bits_for_udh(7), 0); // 16-bit concat UDH
        assert_eq!(fill_bits_for_udh(1), 6);
        assert_eq!(fill_bits_for_udh(12), 2);
        for n in 0..100usize {
            let fill = usize::from(fill_bits_for_udh(n));
            assert!(fill < 7);
            assert_eq!((n * 8 + fill) % 7, 0, "udh {n}");
        }
        fill_bits_for_udh(usize::MAX);
    }

    #[test]
    fn packed_after_udh() {
        // After a 6-octet UDH (1 fill bit) and a 7-octet UDH (0 fill bits).
        let septets = encode_gsm7_unpacked("STOP now").unwrap();
        for udh in [6usize, 7, 1, 12] {
            let fill = fill_bits_for_udh(udh);
            let packed = pack_septets(&septets, fill);
            let d = decode_text(0x00, &packed, true, udh);
            assert_eq!(d.text, "STOP now", "udh {udh}");
            assert_eq!(d.encoding, Encoding::Gsm7);
        }
    }

    #[test]
    fn packed_padding_rules() {
        // 7 septets in 7 octets leave 7 spare bits: zero padding must not become '@'.
        let seven = encode_gsm7_unpacked("1234567").unwrap();
        let packed = pack_septets(&seven, 0);
        assert_eq!(packed.len(), 7);
        assert_eq!(decode_text(0, &packed, true, 0).text, "1234567");
        // The same with the standard's CR padding.
        let mut with_cr = seven.clone();
        with_cr.push(0x0D);
        let packed = pack_septets(&with_cr, 0);
        assert_eq!(packed.len(), 7);
        assert_eq!(decode_text(0, &packed, true, 0).text, "1234567");
        // 8 real septets ending in a letter are kept whole.
        let eight = encode_gsm7_unpacked("12345678").unwrap();
        assert_eq!(
            decode_text(0, &pack_septets(&eight, 0), true, 0).text,
            "12345678"
        );
        // A '@' not in the padding position is kept.
        let at = encode_gsm7_unpacked("a@").unwrap();
        assert_eq!(decode_text(0, &pack_septets(&at, 0), true, 0).text, "a@");
        // With a 6-octet UDH (1 fill bit): 6 septets = 43 bits -> 6 octets, 5 spare bits.
        let six = encode_gsm7_unpacked("abcdef").unwrap();
        assert_eq!(
            decode_text(0, &pack_septets(&six, 1), true, 6).text,
            "abcdef"
        );
        // 1 fill bit + 8 septets = 57 bits -> 8 octets with 7 spare bits: padding dropped.
        let eight = encode_gsm7_unpacked("abcdefgh").unwrap();
        let packed = pack_septets(&eight, 1);
        assert_eq!(packed.len(), 8);
        assert_eq!(decode_text(0, &packed, true, 6).text, "abcdefgh");
        // 1 fill bit + 7 octets hold 7 septets and 6 spare bits: a zero last septet is real.
        let mut padded = pack_septets(&six, 1);
        padded.push(0x00);
        assert_eq!(decode_text(0, &padded, true, 6).text, "abcdef@");
    }

    #[test]
    fn packed_empty_and_tiny() {
        assert_eq!(decode_text(0, &[], true, 0).text, "");
        assert_eq!(decode_text(0, &[0x41], true, 0).text, "A");
        // One octet after a 1-octet UDH has 6 fill bits: no whole septet.
        assert_eq!(decode_text(0, &[0xFF], true, 1).text, "");
    }

    #[test]
    fn packed_extension_chars() {
        let septets = encode_gsm7_unpacked("€5 {x}").unwrap();
        let packed = pack_septets(&septets, 0);
        assert_eq!(decode_text(0xF0, &packed, true, 0).text, "€5 {x}");
    }

    #[test]
    fn ascii_and_latin1() {
        let d = decode(0x01, b"HELP me");
        assert_eq!((d.text.as_str(), d.encoding), ("HELP me", Encoding::Ascii));
        let d = decode(0x01, &[0x41, 0xE9]);
        assert_eq!(d.text, "Aé");
        let d = decode(0x03, &[0x63, 0x61, 0x66, 0xE9, 0x20, 0xFC, 0xDF]);
        assert_eq!((d.text.as_str(), d.encoding), ("café üß", Encoding::Latin1));
    }

    #[test]
    fn latin1_round_trip() {
        let all: String = (0u8..=255).map(char::from).collect();
        let bytes = encode_latin1(&all).unwrap();
        assert_eq!(bytes, (0u8..=255).collect::<Vec<_>>());
        assert_eq!(decode(0x03, &bytes).text, all);
        assert_eq!(encode_latin1("€"), None);
        assert_eq!(encode_latin1("Āb"), None);
    }

    #[test]
    fn cyrillic_iso_8859_5() {
        // "Привет" in ISO-8859-5.
        let d = decode(0x06, &[0xBF, 0xE0, 0xD8, 0xD2, 0xD5, 0xE2]);
        assert_eq!(d.text, "Привет");
        assert_eq!(d.encoding, Encoding::Latin1);
        assert_eq!(
            decode(0x06, &[0xA1, 0xF1, 0xF0, 0xFD, 0xAD, 0xFF]).text,
            "Ёё№§\u{AD}џ"
        );
        assert_eq!(decode(0x06, &[0x41, 0xA0]).text, "A\u{A0}");
    }

    #[test]
    fn hebrew_iso_8859_8() {
        // "שלום" in ISO-8859-8.
        let d = decode(0x07, &[0xF9, 0xEC, 0xE5, 0xED]);
        assert_eq!(d.text, "שלום");
        assert_eq!(d.encoding, Encoding::Latin1);
        assert_eq!(decode(0x07, &[0xE0, 0xFA, 0xAA, 0xBA, 0xDF]).text, "את×÷‗");
        assert_eq!(
            decode(0x07, &[0xA1, 0xC0, 0xFB, 0xFF]).text,
            "\u{FFFD}".repeat(4)
        );
        assert_eq!(decode(0x07, &[0xFD, 0xFE]).text, "\u{200E}\u{200F}");
    }

    #[test]
    fn upper_halves_match_reference_tables() {
        // 0xA0..=0xFF as Python's iso8859_5 / iso8859_8 codecs decode them (U+FFFD: undefined).
        let upper: Vec<u8> = (0xA0..=0xFF).collect();
        assert_eq!(
            decode(0x06, &upper).text,
            "\u{A0}ЁЂЃЄЅІЇЈЉЊЋЌ\u{AD}ЎЏАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюя№ёђѓєѕіїјљњћќ§ўџ"
        );
        assert_eq!(
            decode(0x07, &upper).text,
            "\u{A0}\u{FFFD}¢£¤¥¦§¨©×«¬\u{AD}®¯°±²³´µ¶·¸¹÷»¼½¾".to_string()
                + &"\u{FFFD}".repeat(32)
                + "‗אבגדהוזחטיךכלםמןנסעףפץצקרשת\u{FFFD}\u{FFFD}\u{200E}\u{200F}\u{FFFD}"
        );
        let lower: Vec<u8> = (0x00..0xA0).collect();
        let expected: String = lower.iter().map(|&b| char::from(b)).collect();
        assert_eq!(decode(0x06, &lower).text, expected);
        assert_eq!(decode(0x07, &lower).text, expected);
    }

    #[test]
    fn ucs2_basic_and_surrogates() {
        let d = decode(0x08, &[0x00, 0x48, 0x04, 0x1F, 0xD8, 0x3D, 0xDE, 0x00]);
        assert_eq!((d.text.as_str(), d.encoding), ("HП😀", Encoding::Ucs2));
        assert_eq!(
            encode_ucs2("HП😀"),
            [0x00, 0x48, 0x04, 0x1F, 0xD8, 0x3D, 0xDE, 0x00]
        );
    }

    #[test]
    fn ucs2_malformed() {
        // Odd trailing byte.
        assert_eq!(decode(0x08, &[0x00, 0x41, 0x42]).text, "A\u{FFFD}");
        assert_eq!(decode(0x08, &[0x42]).text, "\u{FFFD}");
        // Lone high surrogate, then a letter.
        assert_eq!(decode(0x08, &[0xD8, 0x3D, 0x00, 0x41]).text, "\u{FFFD}A");
        // Lone low surrogate.
        assert_eq!(decode(0x08, &[0xDE, 0x00]).text, "\u{FFFD}");
        // High surrogate at the very end.
        assert_eq!(decode(0x08, &[0x00, 0x41, 0xD8, 0x3D]).text, "A\u{FFFD}");
        assert_eq!(decode(0x08, &[]).text, "");
    }

    #[test]
    fn binary_is_lowercase_hex() {
        let d = decode(0x04, &[0x00, 0xAB, 0xFF, 0x10]);
        assert_eq!(
            (d.text.as_str(), d.encoding),
            ("00abff10", Encoding::Binary)
        );
        assert_eq!(decode(0x02, &[]).text, "");
        assert_eq!(decode(0xF5, &[0xCA, 0xFE]).text, "cafe");
        assert_eq!(decode(0x05, &[0x30, 0x42]).text, "3042");
    }

    #[test]
    fn message_waiting_and_class_groups_decode() {
        assert_eq!(decode(0xC8, b"Hi").text, "Hi");
        assert_eq!(decode(0xE0, &[0x00, 0x48]).text, "H");
        assert_eq!(decode(0x18, &[0x00, 0x48]).text, "H");
        assert_eq!(decode(0xF1, b"Hi").text, "Hi");
    }

    #[test]
    fn random_round_trips() {
        let mut rng = fastrand::Rng::with_seed(0x5e97e75);
        for _ in 0..2000 {
            let len = rng.usize(0..200);
            let septets: Vec<u8> = (0..len).map(|_| rng.u8(0..128)).collect();
            let fill = rng.u8(0..7);
            let packed = pack_septets(&septets, fill);
            assert_eq!(packed.len(), (usize::from(fill) + 7 * len).div_ceil(8));
            assert_eq!(unpack_septets(&packed, fill, len), septets);

            let text: String = (0..rng.usize(0..50))
                .map(|_| match rng.u8(0..4) {
                    0 => GSM_DEFAULT[rng.usize(0..128)],
                    1 => GSM_EXTENSION[rng.usize(0..GSM_EXTENSION.len())].1,
                    _ => rng.char(..),
                })
                .filter(|&c| c != '\u{1b}')
                .collect();
            assert_eq!(decode(0x08, &encode_ucs2(&text)).text, text);
            if let Some(s) = encode_gsm7_unpacked(&text) {
                assert_eq!(decode(0x00, &s).text, text);
            }
            if let Some(b) = encode_latin1(&text) {
                assert_eq!(decode(0x03, &b).text, text);
            }
        }
    }

    #[test]
    fn random_packed_gsm_text_round_trips() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let text: String = (0..rng.usize(0..160))
                .map(|_| match rng.u8(0..8) {
                    0 => GSM_EXTENSION[rng.usize(0..GSM_EXTENSION.len())].1,
                    // No CR or '@' at the very end: those are the ambiguous padding septets.
                    _ => rng.alphanumeric(),
                })
                .collect();
            let udh = [0usize, 6, 7, 12][rng.usize(0..4)];
            let septets = encode_gsm7_unpacked(&text).unwrap();
            let packed = pack_septets(&septets, fill_bits_for_udh(udh));
            assert_eq!(decode_text(0x00, &packed, true, udh).text, text);
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0xdec0de);
        for _ in 0..20_000 {
            let data: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect();
            let dcs = rng.u8(..);
            let udh_octets = rng.usize(0..300);
            let d = decode_text(dcs, &data, rng.bool(), udh_octets);
            assert_eq!(d.encoding, encoding_for_dcs(dcs));
            let _ = decode_gsm7_septets(&data);
            let fill = rng.u8(..);
            let _ = unpack_septets(&data, fill, rng.usize(0..400));
            let _ = pack_septets(&data, fill);
        }
    }

    fn part(seq: u8, data_coding: u8, user_data: &[u8]) -> PartData<'_> {
        PartData {
            seq,
            data_coding,
            user_data,
            udh_octets: 6,
        }
    }

    #[test]
    fn parts_join_a_gsm_escape_split_between_them() {
        // "Price 5€": ESC ends part 1, the euro's code starts part 2.
        let mut one = encode_gsm7_unpacked("Price 5").unwrap();
        one.push(GSM_ESC);
        let two = [0x65, b'!'];
        let d = decode_parts(&[part(1, 0x00, &one), part(2, 0x00, &two)], false);
        assert_eq!((d.text.as_str(), d.encoding), ("Price 5€!", Encoding::Gsm7));
        // Decoded part by part it would be "Price 5 " + "e!" (lone ESC, then 0x65 alone).
        let alone =
            decode_text(0x00, &one, false, 6).text + &decode_text(0x00, &two, false, 6).text;
        assert_eq!(alone, "Price 5 e!");

        // Packed, each part with its own fill bits after a 6-octet UDH.
        let fill = fill_bits_for_udh(6);
        let packed_one = pack_septets(&one, fill);
        let packed_two = pack_septets(&two, fill);
        let d = decode_parts(
            &[part(1, 0x00, &packed_one), part(2, 0x00, &packed_two)],
            true,
        );
        assert_eq!(d.text, "Price 5€!");
    }

    #[test]
    fn parts_join_a_surrogate_pair_split_between_them() {
        // "Hi 😀": the high surrogate ends part 1, the low one starts part 2.
        let bytes = encode_ucs2("Hi 😀 ok");
        let (one, two) = bytes.split_at(8);
        let d = decode_parts(&[part(1, 0x08, one), part(2, 0x08, two)], false);
        assert_eq!((d.text.as_str(), d.encoding), ("Hi 😀 ok", Encoding::Ucs2));
    }

    #[test]
    fn a_missing_part_or_another_charset_ends_the_run() {
        // Part 2 missing: ESC at the end of part 1 is a lone ESC (a space), and part 3's first
        // septet is read on its own.
        let one = [b'a', GSM_ESC];
        let three = [0x65, b'b'];
        let d = decode_parts(&[part(1, 0x00, &one), part(3, 0x00, &three)], false);
        assert_eq!(d.text, "a eb");
        // A high surrogate before a gap becomes U+FFFD; it is not paired with part 3's unit.
        let d = decode_parts(
            &[
                part(1, 0x08, &[0x00, 0x41, 0xD8, 0x3D]),
                part(3, 0x08, &[0xDE, 0x00, 0x00, 0x42]),
            ],
            false,
        );
        assert_eq!(d.text, "A\u{FFFD}\u{FFFD}B");
        // GSM then Latin-1: each decoded in its own set; the first part's encoding is reported.
        let d = decode_parts(
            &[part(1, 0x00, &[b'x', GSM_ESC]), part(2, 0x03, &[0xE9])],
            false,
        );
        assert_eq!((d.text.as_str(), d.encoding), ("x é", Encoding::Gsm7));
        // A UCS2 part with an odd octet does not shift the next part's units.
        let d = decode_parts(
            &[
                part(1, 0x08, &[0x00, 0x41, 0x00]),
                part(2, 0x08, &[0x00, 0x42]),
            ],
            false,
        );
        assert_eq!(d.text, "A\u{FFFD}B");
        let d = decode_parts(&[], false);
        assert_eq!((d.text.as_str(), d.encoding), ("", Encoding::Gsm7));
    }

    #[test]
    fn parts_decode_as_their_joined_data_would() {
        // Cutting a message anywhere and decoding the parts gives the whole message's text.
        let mut rng = fastrand::Rng::with_seed(0x5917);
        for _ in 0..2_000 {
            let (dcs, data): (u8, Vec<u8>) = if rng.bool() {
                let text: String = (0..rng.usize(1..200))
                    .map(|_| match rng.u8(0..6) {
                        0 => GSM_EXTENSION[rng.usize(0..GSM_EXTENSION.len())].1,
                        _ => rng.alphanumeric(),
                    })
                    .collect();
                (0x00, encode_gsm7_unpacked(&text).unwrap())
            } else {
                let text: String = (0..rng.usize(1..100))
                    .map(|_| match rng.u8(0..4) {
                        0 => char::from_u32(rng.u32(0x1F600..0x1F650)).unwrap(),
                        1 => char::from_u32(rng.u32(0x400..0x450)).unwrap(),
                        _ => rng.alphanumeric(),
                    })
                    .collect();
                (0x08, encode_ucs2(&text))
            };
            let step = if dcs == 0x08 { 2 } else { 1 };
            let mut cuts: Vec<usize> = (0..rng.usize(0..4))
                .map(|_| rng.usize(0..=data.len() / step) * step)
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                pieces.push(&data[start..cut]);
                start = cut;
            }
            let parts: Vec<PartData<'_>> = pieces
                .iter()
                .enumerate()
                .map(|(i, p)| part(i as u8 + 1, dcs, p))
                .collect();
            assert_eq!(
                decode_parts(&parts, false),
                decode_text(dcs, &data, false, 0)
            );
        }
    }
}
