//! Malformed PDUs, written by hand octet by octet, through the public framing and PDU API
//! (`vmnd::smpp::{codec, pdu}`): each gets the answer SMPP prescribes, with its sequence
//! number, and never ends the stream. The answers are checked as they go on the wire: encoded,
//! then decoded again.

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use vmnd::smpp::codec::{Frame, FrameCodec, MAX_PDU_LEN};
use vmnd::smpp::pdu::{self, Body, DecodeError, Pdu, ShortMessage, command_id, status, tlv_tag};

/// A frame from header fields and a body; command_length is the true length.
fn frame(id: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    frame_with_length((16 + body.len()) as u32, id, seq, body)
}

fn frame_with_length(command_length: u32, id: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&command_length.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// deliver_sm mandatory fields (SMPP 3.4 section 4.6.1) up to and including sm_length, then
/// `short_message`, then `tail` (TLVs or garbage).
fn deliver_sm_body(sm_length: u8, short_message: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(0); // service_type ""
    b.extend_from_slice(&[0x01, 0x01]); // source ton, npi
    b.extend_from_slice(b"919812345678\0");
    b.extend_from_slice(&[0x00, 0x01]); // dest ton, npi
    b.extend_from_slice(b"56767\0");
    b.extend_from_slice(&[0x00, 0x00, 0x00]); // esm_class, protocol_id, priority_flag
    b.extend_from_slice(&[0x00, 0x00]); // schedule_delivery_time, validity_period: NULL
    b.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]); // registered, replace, data_coding, default id
    b.push(sm_length);
    b.extend_from_slice(short_message);
    b.extend_from_slice(tail);
    b
}

/// Frames the bytes with the codec, which must yield exactly one frame.
fn one_frame(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let mut codec = FrameCodec;
    let first = codec
        .decode(&mut buf)
        .expect("framing never errs on content")
        .expect("a whole frame");
    assert_eq!(codec.decode(&mut buf).expect("no error"), None);
    first
}

/// What the session sends back for one frame: the response to a good request, the error
/// response to a bad one. Returned as it comes back off the wire.
fn reply(bytes: &[u8]) -> (Result<Pdu, DecodeError>, Pdu) {
    let Frame::Pdu(frame) = one_frame(bytes) else {
        panic!("expected a PDU frame");
    };
    let decoded = pdu::decode(&frame);
    let answer = match &decoded {
        Ok(pdu) => pdu.response(status::ESME_ROK).expect("a request"),
        Err(err) => pdu::error_response(err),
    };
    let wire = pdu::encode_to_bytes(&answer);
    let header = pdu::header(&wire).expect("header");
    assert_eq!(header.command_length as usize, wire.len());
    let back = pdu::decode(&wire).expect("our answer decodes");
    assert_eq!(back, answer);
    (decoded, back)
}

fn expect(answer: &Pdu, command: u32, status: u32, seq: u32) {
    assert_eq!(
        (
            answer.command_id(),
            answer.command_status,
            answer.sequence_number
        ),
        (command, status, seq),
        "answer was {answer:?} ({})",
        pdu::status_name(answer.command_status)
    );
}

#[test]
fn command_length_below_16_is_bad_length_and_the_stream_resynchronises() {
    let mut bytes = frame_with_length(12, command_id::DELIVER_SM, 41, &[]);
    let good = frame(command_id::ENQUIRE_LINK, 42, &[]);
    bytes.extend_from_slice(&good);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut codec = FrameCodec;
    let first = codec.decode(&mut buf).expect("no error").expect("frame");
    assert_eq!(
        first,
        Frame::BadLength {
            command_length: 12,
            command_id: command_id::DELIVER_SM,
            sequence_number: 41
        }
    );
    // What the session answers for it: generic_nack ESME_RINVCMDLEN, exact octets.
    let nack = Pdu {
        command_status: status::ESME_RINVCMDLEN,
        sequence_number: 41,
        body: Body::GenericNack,
    };
    assert_eq!(
        &pdu::encode_to_bytes(&nack)[..],
        &[0, 0, 0, 16, 0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 41]
    );
    assert_eq!(pdu::decode(&pdu::encode_to_bytes(&nack)), Ok(nack));
    // The next PDU still frames and is answered.
    let Some(Frame::Pdu(next)) = codec.decode(&mut buf).expect("no error") else {
        panic!("the good PDU after the bad length");
    };
    let link = pdu::decode(&next).expect("enquire_link");
    expect(
        &link.response(0).expect("response"),
        command_id::ENQUIRE_LINK_RESP,
        0,
        42,
    );
}

#[test]
fn command_length_over_max_is_bad_length() {
    let bytes = frame_with_length(
        (MAX_PDU_LEN + 1) as u32,
        command_id::SUBMIT_SM,
        43,
        b"whatever",
    );
    assert_eq!(
        one_frame(&bytes),
        Frame::BadLength {
            command_length: (MAX_PDU_LEN + 1) as u32,
            command_id: command_id::SUBMIT_SM,
            sequence_number: 43
        }
    );
}

#[test]
fn command_length_disagreeing_with_the_frame_is_rinvcmdlen() {
    // Given straight to decode (the codec would have cut it at 20 octets).
    let bytes = frame_with_length(20, command_id::ENQUIRE_LINK, 44, &[]);
    let err = pdu::decode(&bytes).expect_err("length mismatch");
    let answer = pdu::error_response(&err);
    expect(
        &answer,
        command_id::ENQUIRE_LINK_RESP,
        status::ESME_RINVCMDLEN,
        44,
    );
}

#[test]
fn truncated_body_is_rinvcmdlen() {
    let full = deliver_sm_body(2, b"hi", &[]);
    // Cut inside the fixed octets after destination_addr.
    let cut = &full[..1 + 2 + 13 + 2 + 6 + 1];
    let (decoded, answer) = reply(&frame(command_id::DELIVER_SM, 45, cut));
    assert!(matches!(
        decoded,
        Err(DecodeError::BadBody {
            status: status::ESME_RINVCMDLEN,
            ..
        })
    ));
    expect(
        &answer,
        command_id::DELIVER_SM_RESP,
        status::ESME_RINVCMDLEN,
        45,
    );
    assert_eq!(
        answer.body,
        Body::DeliverSmResp {
            message_id: String::new()
        }
    );

    // A bind cut inside its fixed octets.
    let (_, answer) = reply(&frame(
        command_id::BIND_TRANSCEIVER,
        46,
        b"vmnd\0pw\0\0\x34",
    ));
    expect(
        &answer,
        command_id::BIND_TRANSCEIVER_RESP,
        status::ESME_RINVCMDLEN,
        46,
    );
}

#[test]
fn sm_length_past_the_data_is_rinvmsglen() {
    let body = deliver_sm_body(160, b"only twenty octets..", &[]);
    let (decoded, answer) = reply(&frame(command_id::DELIVER_SM, 47, &body));
    let Err(DecodeError::BadBody { reason, .. }) = decoded else {
        panic!("{decoded:?}");
    };
    assert!(reason.contains("160"), "{reason}");
    expect(
        &answer,
        command_id::DELIVER_SM_RESP,
        status::ESME_RINVMSGLEN,
        47,
    );

    // The same for submit_sm, whose answer is a submit_sm_resp without a body.
    let (_, answer) = reply(&frame(command_id::SUBMIT_SM, 48, &body));
    expect(
        &answer,
        command_id::SUBMIT_SM_RESP,
        status::ESME_RINVMSGLEN,
        48,
    );
    assert_eq!(
        pdu::encode_to_bytes(&answer).len(),
        16,
        "error submit_sm_resp has no body"
    );
}

#[test]
fn unterminated_c_strings_name_their_field() {
    // source_addr runs to the end of the body with no NUL.
    let (_, a) = reply(&frame(
        command_id::DELIVER_SM,
        49,
        b"\0\x01\x01919812345678",
    ));
    expect(&a, command_id::DELIVER_SM_RESP, status::ESME_RINVSRCADR, 49);

    // destination_addr with no NUL within its 21 octets.
    let mut body = b"\0\x01\x01919812345678\0\x00\x01".to_vec();
    body.extend_from_slice(&[b'5'; 40]);
    body.push(0);
    let (_, a) = reply(&frame(command_id::DELIVER_SM, 50, &body));
    expect(&a, command_id::DELIVER_SM_RESP, status::ESME_RINVDSTADR, 50);

    // service_type with no NUL at all.
    let (_, a) = reply(&frame(command_id::DELIVER_SM, 51, b"CMTCMTCMT"));
    expect(&a, command_id::DELIVER_SM_RESP, status::ESME_RINVSERTYP, 51);

    // A bind whose password never ends.
    let (_, a) = reply(&frame(
        command_id::BIND_TRANSCEIVER,
        52,
        b"vmnd\0secretsecret",
    ));
    expect(
        &a,
        command_id::BIND_TRANSCEIVER_RESP,
        status::ESME_RINVPASWD,
        52,
    );

    // A response with an unterminated message_id: responses get generic_nack.
    let (_, a) = reply(&frame(command_id::SUBMIT_SM_RESP, 53, b"abc123"));
    expect(&a, command_id::GENERIC_NACK, status::ESME_RINVMSGID, 53);
}

#[test]
fn broken_tlv_stream_is_rinvtlvstream() {
    // message_payload declaring 200 octets with 3 present.
    let body = deliver_sm_body(0, b"", &[0x04, 0x24, 0x00, 0xC8, b'a', b'b', b'c']);
    let (_, a) = reply(&frame(command_id::DELIVER_SM, 54, &body));
    expect(
        &a,
        command_id::DELIVER_SM_RESP,
        status::ESME_RINVTLVSTREAM,
        54,
    );

    // Two stray octets after a good TLV.
    let body = deliver_sm_body(0, b"", &[0x02, 0x0C, 0x00, 0x02, 0x00, 0x01, 0x02, 0x0E]);
    let (_, a) = reply(&frame(command_id::DELIVER_SM, 55, &body));
    expect(
        &a,
        command_id::DELIVER_SM_RESP,
        status::ESME_RINVTLVSTREAM,
        55,
    );
}

#[test]
fn unknown_tlvs_are_kept_and_acknowledged() {
    let tlvs = [
        0x14, 0x01, 0x00, 0x03, b'x', b'y', b'z', // vendor tag 0x1401
        0xFF, 0xFF, 0x00, 0x00, // tag 0xFFFF, empty
        0x04, 0x24, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', // message_payload
    ];
    let body = deliver_sm_body(0, b"", &tlvs);
    let (decoded, a) = reply(&frame(command_id::DELIVER_SM, 56, &body));
    let Ok(Pdu {
        body: Body::DeliverSm(sm),
        ..
    }) = decoded
    else {
        panic!("{decoded:?}");
    };
    let sm: ShortMessage = *sm;
    let tags: Vec<u16> = sm.tlvs.iter().map(|t| t.tag).collect();
    assert_eq!(tags, vec![0x1401, 0xFFFF, tlv_tag::MESSAGE_PAYLOAD]);
    assert_eq!(&sm.tlv(0x1401).expect("kept")[..], b"xyz");
    assert!(sm.tlv(0xFFFF).expect("kept").is_empty());
    assert_eq!(&sm.user_data()[..], b"hello");
    expect(&a, command_id::DELIVER_SM_RESP, status::ESME_ROK, 56);
    assert_eq!(
        &pdu::encode_to_bytes(&a)[..],
        &[0, 0, 0, 17, 0x80, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 56, 0]
    );
}

#[test]
fn unknown_command_id_is_generic_nack_rinvcmdid() {
    for id in [0x0000_0103, 0x0000_0000, 0x1234_5678, 0x8000_0103] {
        let (decoded, a) = reply(&frame(id, 57, b"\x01\x02\x03"));
        assert_eq!(
            decoded,
            Err(DecodeError::UnknownCommand {
                command_id: id,
                sequence_number: 57
            })
        );
        expect(&a, command_id::GENERIC_NACK, status::ESME_RINVCMDID, 57);
        assert_eq!(
            &pdu::encode_to_bytes(&a)[..],
            &[0, 0, 0, 16, 0x80, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 57]
        );
    }
}

#[test]
fn header_only_command_with_a_body_is_rinvcmdlen() {
    let (_, a) = reply(&frame(command_id::ENQUIRE_LINK, 58, b"junk"));
    expect(
        &a,
        command_id::ENQUIRE_LINK_RESP,
        status::ESME_RINVCMDLEN,
        58,
    );
    let (_, a) = reply(&frame(command_id::UNBIND, 59, b"junk"));
    expect(&a, command_id::UNBIND_RESP, status::ESME_RINVCMDLEN, 59);
}

#[test]
fn a_stream_of_bad_pdus_never_ends_the_framing() {
    let mut stream = Vec::new();
    stream.extend(frame(0x0000_0103, 1, b"??"));
    stream.extend(frame(
        command_id::DELIVER_SM,
        2,
        &deliver_sm_body(99, b"", &[]),
    ));
    stream.extend(frame_with_length(3, command_id::DELIVER_SM, 3, &[]));
    stream.extend(frame(
        command_id::DELIVER_SM,
        4,
        &deliver_sm_body(2, b"ok", &[]),
    ));
    let mut buf = BytesMut::from(&stream[..]);
    let mut codec = FrameCodec;
    let mut answers = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).expect("never errs") {
        answers.push(match frame {
            Frame::Pdu(bytes) => match pdu::decode(&bytes) {
                Ok(p) => p.response(0).expect("request"),
                Err(e) => pdu::error_response(&e),
            },
            Frame::BadLength {
                sequence_number, ..
            } => Pdu {
                command_status: status::ESME_RINVCMDLEN,
                sequence_number,
                body: Body::GenericNack,
            },
        });
    }
    let summary: Vec<(u32, u32, u32)> = answers
        .iter()
        .map(|a| (a.command_id(), a.command_status, a.sequence_number))
        .collect();
    assert_eq!(
        summary,
        vec![
            (command_id::GENERIC_NACK, status::ESME_RINVCMDID, 1),
            (command_id::DELIVER_SM_RESP, status::ESME_RINVMSGLEN, 2),
            (command_id::GENERIC_NACK, status::ESME_RINVCMDLEN, 3),
            (command_id::DELIVER_SM_RESP, status::ESME_ROK, 4),
        ]
    );
}
