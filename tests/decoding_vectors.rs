//! Hand-written byte vectors through the public decoding API (`vmnd::smpp::{text, udh,
//! receipt}`): what carriers actually put in `short_message`, checked byte for byte. The packed
//! vectors were computed independently of vmnd's packer (and "hellohello" is 23.038's own
//! example), so a symmetric bug in pack and unpack cannot hide here.

use vmnd::smpp::receipt::{Receipt, format_receipt, parse_receipt, parse_receipt_date};
use vmnd::smpp::text::{
    Encoding, decode_text, encode_gsm7_unpacked, encode_latin1, encode_ucs2, pack_septets,
    unpack_septets,
};
use vmnd::smpp::udh::{Concat, UdhError, concat_udh, parse_udh};

/// `€{}[]~\^|` as ESC + extension code, one septet per octet.
const EXTENSION_UNPACKED: [u8; 18] = [
    0x1B, 0x65, 0x1B, 0x28, 0x1B, 0x29, 0x1B, 0x3C, 0x1B, 0x3E, 0x1B, 0x3D, 0x1B, 0x2F, 0x1B, 0x14,
    0x1B, 0x40,
];
/// The same 18 septets packed (126 bits in 16 octets).
const EXTENSION_PACKED: [u8; 16] = [
    0x9B, 0xF2, 0x06, 0xB5, 0x49, 0x6D, 0x78, 0x1B, 0xDF, 0xA6, 0xB7, 0x79, 0x6D, 0x28, 0x1B, 0x20,
];
const EXTENSION_TEXT: &str = "€{}[]~\\^|";

#[test]
fn gsm_extension_characters_unpacked() {
    let d = decode_text(0x00, &EXTENSION_UNPACKED, false, 0);
    assert_eq!(d.text, EXTENSION_TEXT);
    assert_eq!(d.encoding, Encoding::Gsm7);
    assert_eq!(
        encode_gsm7_unpacked(EXTENSION_TEXT).as_deref(),
        Some(&EXTENSION_UNPACKED[..])
    );
}

#[test]
fn gsm_extension_characters_packed() {
    let d = decode_text(0x00, &EXTENSION_PACKED, true, 0);
    assert_eq!(d.text, EXTENSION_TEXT);
    assert_eq!(pack_septets(&EXTENSION_UNPACKED, 0), EXTENSION_PACKED);
    assert_eq!(unpack_septets(&EXTENSION_PACKED, 0, 18), EXTENSION_UNPACKED);
    // Mixed with ordinary text: "Price: €5".
    let price = [0x50, 0x79, 0x7A, 0x5C, 0xD6, 0x81, 0x36, 0xE5, 0x1A];
    assert_eq!(decode_text(0x00, &price, true, 0).text, "Price: €5");
}

#[test]
fn hello_world_packed() {
    // 3GPP TS 23.038 6.1.2.1.1's example.
    let hellohello = [0xE8, 0x32, 0x9B, 0xFD, 0x46, 0x97, 0xD9, 0xEC, 0x37];
    assert_eq!(decode_text(0x00, &hellohello, true, 0).text, "hellohello");
    let hello_world = [0xC8, 0x32, 0x9B, 0xFD, 0x06, 0x5D, 0xDF, 0x72, 0x36, 0x19];
    let d = decode_text(0x00, &hello_world, true, 0);
    assert_eq!(d.text, "Hello World");
    assert_eq!(d.encoding, Encoding::Gsm7);
    let septets = encode_gsm7_unpacked("Hello World").unwrap();
    assert_eq!(pack_septets(&septets, 0), hello_world);
    // The same octets read unpacked (the SMPP norm) are not "Hello World": the option matters.
    assert_ne!(
        decode_text(0x00, &hello_world, false, 0).text,
        "Hello World"
    );
}

#[test]
fn latin1_accents() {
    // "Grüße, café" in ISO-8859-1.
    let bytes = [
        0x47, 0x72, 0xFC, 0xDF, 0x65, 0x2C, 0x20, 0x63, 0x61, 0x66, 0xE9,
    ];
    let d = decode_text(0x03, &bytes, false, 0);
    assert_eq!(d.text, "Grüße, café");
    assert_eq!(d.encoding, Encoding::Latin1);
    assert_eq!(encode_latin1("Grüße, café").as_deref(), Some(&bytes[..]));
}

#[test]
fn ucs2_with_emoji() {
    // "Hi 😀" in UTF-16BE: the emoji is the surrogate pair D83D DE00.
    let bytes = [0x00, 0x48, 0x00, 0x69, 0x00, 0x20, 0xD8, 0x3D, 0xDE, 0x00];
    let d = decode_text(0x08, &bytes, false, 0);
    assert_eq!(d.text, "Hi 😀");
    assert_eq!(d.encoding, Encoding::Ucs2);
    assert_eq!(encode_ucs2("Hi 😀"), bytes);
    // Cut inside the pair: replacement characters, no panic.
    assert_eq!(
        decode_text(0x08, &bytes[..9], false, 0).text,
        "Hi \u{FFFD}\u{FFFD}"
    );
}

#[test]
fn udh_with_two_information_elements() {
    // UDHL 0x0B: 16-bit application ports (IEI 0x05: dest 0x0B84, src 0x23F0), then an 8-bit
    // concatenation element (ref 0xCC, 2 parts, part 1), then the UCS2 text "OK".
    let pdu = [
        0x0B, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0, 0x00, 0x03, 0xCC, 0x02, 0x01, 0x00, 0x4F, 0x00,
        0x4B,
    ];
    let (udh, rest) = parse_udh(&pdu).unwrap();
    assert_eq!(udh.len, 12);
    assert_eq!(udh.elements.len(), 2);
    assert_eq!(udh.elements[0].iei, 0x05);
    assert_eq!(udh.elements[0].data, [0x0B, 0x84, 0x23, 0xF0]);
    assert_eq!(
        udh.concat(),
        Some(Concat {
            reference: 0xCC,
            total: 2,
            seq: 1
        })
    );
    assert_eq!(decode_text(0x08, rest, false, udh.len).text, "OK");
}

#[test]
fn concat_udh_then_packed_gsm_with_fill_bit() {
    // 8-bit concat UDH (6 octets, so 1 fill bit), then "JOIN summer" packed after the fill bit.
    let pdu = [
        0x05, 0x00, 0x03, 0x2A, 0x02, 0x02, 0x94, 0xCF, 0xA4, 0x13, 0x34, 0xAF, 0xB7, 0xDB, 0x65,
        0x39,
    ];
    let (udh, rest) = parse_udh(&pdu).unwrap();
    assert_eq!(
        udh.concat().map(|c| (c.reference, c.total, c.seq)),
        Some((0x2A, 2, 2))
    );
    assert_eq!(decode_text(0x00, rest, true, udh.len).text, "JOIN summer");
}

#[test]
fn sixteen_bit_reference_udh() {
    let pdu = [0x06, 0x08, 0x04, 0x12, 0x34, 0x03, 0x03, b'e', b'n', b'd'];
    let (udh, rest) = parse_udh(&pdu).unwrap();
    assert_eq!(udh.len, 7);
    assert_eq!(
        udh.concat(),
        Some(Concat {
            reference: 0x1234,
            total: 3,
            seq: 3
        })
    );
    assert_eq!(decode_text(0x00, rest, false, udh.len).text, "end");
    assert_eq!(concat_udh(0x1234, 3, 3, false), pdu[..7]);
}

#[test]
fn udh_errors() {
    assert_eq!(parse_udh(&[]), Err(UdhError::Missing));
    assert!(matches!(
        parse_udh(&[0x05, 0x00, 0x03, 0x2A]),
        Err(UdhError::TooLong { .. })
    ));
}

#[test]
fn receipt_standard_form() {
    let text = "id:3F2A11 sub:001 dlvrd:001 submit date:2611281400 done date:261128140105 \
                stat:DELIVRD err:000 text:JOIN summer";
    let r = parse_receipt(text).unwrap();
    assert_eq!(
        r,
        Receipt {
            id: "3F2A11".into(),
            sub: Some("001".into()),
            dlvrd: Some("001".into()),
            submit_date: Some("2611281400".into()),
            done_date: Some("261128140105".into()),
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            text: Some("JOIN summer".into()),
        }
    );
    assert_eq!(format_receipt(&r), text);
    assert_eq!(
        parse_receipt_date(r.done_date.as_deref().unwrap()).as_deref(),
        Some("2026-11-28T14:01:05.000Z")
    );
}

#[test]
fn receipt_sloppy_form() {
    let text = "Stat: undeliv ID:77aa Submit_Date:2611281400\nERR:021,DoneDate:2611281410 Text:Hi";
    let r = parse_receipt(text).unwrap();
    assert_eq!(r.id, "77aa");
    assert_eq!(r.stat, "UNDELIV");
    assert_eq!(r.err.as_deref(), Some("021"));
    assert_eq!(r.submit_date.as_deref(), Some("2611281400"));
    assert_eq!(r.done_date.as_deref(), Some("2611281410"));
    assert_eq!(r.text.as_deref(), Some("Hi"));
    assert_eq!((r.sub, r.dlvrd), (None, None));
    assert_eq!(parse_receipt("JOIN summer"), None);
}
