//! The one adapter over rusmpp: every rusmpp type stays inside this file.
//!
//! The rest of vmnd sees only the owned types below (`Pdu`, `Body`, `ShortMessage`, ...), so the
//! next rusmpp release, which renames things, touches this file alone.
//!
//! The types are fixed (other modules use them). How a frame becomes a `Pdu`:
//! 1. the header is read here (16 octets, big-endian);
//! 2. the mandatory part of the body is *framed* here: a cheap walk over its C-strings and
//!    `sm_length` that finds where it ends and which field is broken, so a bad body gets a
//!    precise status (`ESME_RINVMSGLEN`, `ESME_RINVSRCADR`, ...) instead of one generic error;
//! 3. rusmpp decodes that mandatory part into its owned types, which we convert to ours;
//! 4. the TLV stream is split here, raw and zero-copy (see [`decode`] for why not by rusmpp).
//!
//! Encoding goes the other way: our types become rusmpp's and rusmpp writes the body; the header
//! and the bodies rusmpp cannot express (empty error bodies) are written here.

use bytes::{BufMut, Bytes, BytesMut};

/// Command ids (SMPP 3.4 section 5.1.2.1).
pub mod command_id {
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    pub const BIND_RECEIVER_RESP: u32 = 0x8000_0001;
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    pub const BIND_TRANSMITTER_RESP: u32 = 0x8000_0002;
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    pub const DELIVER_SM: u32 = 0x0000_0005;
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    pub const UNBIND: u32 = 0x0000_0006;
    pub const UNBIND_RESP: u32 = 0x8000_0006;
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
    /// Set on every response command id.
    pub const RESPONSE_BIT: u32 = 0x8000_0000;
}

/// Command status values vmnd sends or must recognise (SMPP 3.4 section 5.1.3).
pub mod status {
    pub const ESME_ROK: u32 = 0x0000_0000;
    pub const ESME_RINVMSGLEN: u32 = 0x0000_0001;
    pub const ESME_RINVCMDLEN: u32 = 0x0000_0002;
    pub const ESME_RINVCMDID: u32 = 0x0000_0003;
    pub const ESME_RINVBNDSTS: u32 = 0x0000_0004;
    pub const ESME_RALYBND: u32 = 0x0000_0005;
    pub const ESME_RSYSERR: u32 = 0x0000_0008;
    pub const ESME_RINVSRCADR: u32 = 0x0000_000A;
    pub const ESME_RINVDSTADR: u32 = 0x0000_000B;
    pub const ESME_RINVMSGID: u32 = 0x0000_000C;
    pub const ESME_RBINDFAIL: u32 = 0x0000_000D;
    pub const ESME_RINVPASWD: u32 = 0x0000_000E;
    pub const ESME_RINVSYSID: u32 = 0x0000_000F;
    pub const ESME_RMSGQFUL: u32 = 0x0000_0014;
    pub const ESME_RINVSERTYP: u32 = 0x0000_0015;
    pub const ESME_RINVSYSTYP: u32 = 0x0000_0053;
    pub const ESME_RTHROTTLED: u32 = 0x0000_0058;
    pub const ESME_RINVSCHED: u32 = 0x0000_0061;
    pub const ESME_RINVEXPIRY: u32 = 0x0000_0062;
    pub const ESME_RX_T_APPN: u32 = 0x0000_0064;
    pub const ESME_RX_P_APPN: u32 = 0x0000_0065;
    pub const ESME_RX_R_APPN: u32 = 0x0000_0066;
    pub const ESME_RINVTLVSTREAM: u32 = 0x0000_00C0;
    pub const ESME_RINVOPTPARAMVAL: u32 = 0x0000_00C4;
    pub const ESME_RUNKNOWNERR: u32 = 0x0000_00FF;
}

/// Optional parameter tags vmnd reads (SMPP 3.4 section 5.3.2).
pub mod tlv_tag {
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    pub const MESSAGE_STATE: u16 = 0x0427;
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
}

/// esm_class bits vmnd looks at.
pub mod esm_class {
    /// Message type bits (2-5).
    pub const TYPE_MASK: u8 = 0x3C;
    /// SMSC delivery receipt.
    pub const TYPE_SMSC_DELIVERY_RECEIPT: u8 = 0x04;
    /// SME delivery acknowledgement.
    pub const TYPE_SME_DELIVERY_ACK: u8 = 0x08;
    /// SME manual/user acknowledgement.
    pub const TYPE_SME_MANUAL_ACK: u8 = 0x10;
    /// Intermediate delivery notification.
    pub const TYPE_INTERMEDIATE_NOTIFICATION: u8 = 0x20;
    /// UDH indicator (GSM specific feature bit 6).
    pub const UDHI: u8 = 0x40;
}

/// An SMPP address: type of number, numbering plan and the address as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    pub ton: u8,
    pub npi: u8,
    pub addr: String,
}

/// One optional parameter, kept raw: vmnd interprets the few it needs and keeps the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: u16,
    pub value: Bytes,
}

/// The body shared by `deliver_sm` and `submit_sm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShortMessage {
    pub service_type: String,
    pub source: Address,
    pub dest: Address,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: String,
    pub validity_period: String,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    /// `short_message` as sent (may start with a UDH when esm_class has UDHI).
    pub short_message: Bytes,
    /// Every optional parameter in the order received.
    pub tlvs: Vec<Tlv>,
}

impl ShortMessage {
    /// The raw value of the first TLV with this tag.
    pub fn tlv(&self, tag: u16) -> Option<&Bytes> {
        self.tlvs.iter().find(|t| t.tag == tag).map(|t| &t.value)
    }

    /// The user data: `message_payload` when present (it wins over an empty short_message).
    pub fn user_data(&self) -> &Bytes {
        match self.tlv(tlv_tag::MESSAGE_PAYLOAD) {
            Some(payload) if self.short_message.is_empty() => payload,
            _ => &self.short_message,
        }
    }

    /// `(reference, total, sequence)` from the `sar_*` TLVs, when all three are present and sane.
    pub fn sar(&self) -> Option<(u16, u8, u8)> {
        let reference = self.tlv(tlv_tag::SAR_MSG_REF_NUM)?;
        let total = self.tlv(tlv_tag::SAR_TOTAL_SEGMENTS)?;
        let seq = self.tlv(tlv_tag::SAR_SEGMENT_SEQNUM)?;
        if reference.len() != 2 || total.len() != 1 || seq.len() != 1 {
            return None;
        }
        let (total, seq) = (total[0], seq[0]);
        if total == 0 || seq == 0 || seq > total {
            return None;
        }
        Some((u16::from_be_bytes([reference[0], reference[1]]), total, seq))
    }

    /// True when esm_class marks this as a delivery receipt or acknowledgement, not an MO message.
    pub fn is_receipt(&self) -> bool {
        matches!(
            self.esm_class & esm_class::TYPE_MASK,
            esm_class::TYPE_SMSC_DELIVERY_RECEIPT
                | esm_class::TYPE_SME_DELIVERY_ACK
                | esm_class::TYPE_SME_MANUAL_ACK
                | esm_class::TYPE_INTERMEDIATE_NOTIFICATION
        )
    }

    /// True when `short_message` starts with a user data header.
    pub fn has_udh(&self) -> bool {
        self.esm_class & esm_class::UDHI != 0
    }
}

/// The body of the three bind requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bind {
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub interface_version: u8,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: String,
}

/// The PDUs vmnd exchanges, as ESME (daemon) and as SMSC (simulator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    BindReceiver(Bind),
    BindTransmitter(Bind),
    BindTransceiver(Bind),
    BindReceiverResp { system_id: String },
    BindTransmitterResp { system_id: String },
    BindTransceiverResp { system_id: String },
    SubmitSm(Box<ShortMessage>),
    SubmitSmResp { message_id: String },
    DeliverSm(Box<ShortMessage>),
    DeliverSmResp { message_id: String },
    EnquireLink,
    EnquireLinkResp,
    Unbind,
    UnbindResp,
    GenericNack,
}

/// One PDU: header fields (command_length is computed on encode) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub command_status: u32,
    pub sequence_number: u32,
    pub body: Body,
}

/// Why a frame with a readable header could not become a `Pdu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The command id is not one vmnd handles: answer `generic_nack` ESME_RINVCMDID.
    UnknownCommand {
        command_id: u32,
        sequence_number: u32,
    },
    /// The body does not decode: answer the command's response (or generic_nack for a
    /// response PDU) with `status` and this sequence number; the session stays bound.
    BadBody {
        command_id: u32,
        sequence_number: u32,
        status: u32,
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

/// Octets in every PDU header: command_length, command_id, command_status, sequence_number.
pub const HEADER_LEN: usize = 16;

/// The four header fields every PDU starts with (SMPP 3.4 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Octets in the whole PDU, header included.
    pub command_length: u32,
    pub command_id: u32,
    pub command_status: u32,
    pub sequence_number: u32,
}

/// Reads the 16-byte header; None if fewer than 16 bytes.
pub fn header(frame: &[u8]) -> Option<Header> {
    let word = |at: usize| -> Option<u32> {
        let bytes = frame.get(at..at + 4)?;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    Some(Header {
        command_length: word(0)?,
        command_id: word(4)?,
        command_status: word(8)?,
        sequence_number: word(12)?,
    })
}

/// True for a response command id (the high bit is set; generic_nack included).
pub fn is_response(command_id: u32) -> bool {
    command_id & command_id::RESPONSE_BIT != 0
}

/// The SMPP name of a command id, for logs ("deliver_sm"); "unknown" for ids vmnd does not handle.
pub fn command_name(id: u32) -> &'static str {
    match id {
        command_id::GENERIC_NACK => "generic_nack",
        command_id::BIND_RECEIVER => "bind_receiver",
        command_id::BIND_RECEIVER_RESP => "bind_receiver_resp",
        command_id::BIND_TRANSMITTER => "bind_transmitter",
        command_id::BIND_TRANSMITTER_RESP => "bind_transmitter_resp",
        command_id::BIND_TRANSCEIVER => "bind_transceiver",
        command_id::BIND_TRANSCEIVER_RESP => "bind_transceiver_resp",
        command_id::SUBMIT_SM => "submit_sm",
        command_id::SUBMIT_SM_RESP => "submit_sm_resp",
        command_id::DELIVER_SM => "deliver_sm",
        command_id::DELIVER_SM_RESP => "deliver_sm_resp",
        command_id::UNBIND => "unbind",
        command_id::UNBIND_RESP => "unbind_resp",
        command_id::ENQUIRE_LINK => "enquire_link",
        command_id::ENQUIRE_LINK_RESP => "enquire_link_resp",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------------------------
// Status names
// ---------------------------------------------------------------------------------------------

/// Every command status SMPP 3.4 and 5.0 define, by value. Names follow the constants in
/// [`status`] (5.0 names for 0xC0-0xC3, where 3.4 said `..OPTPAR..`).
const STATUS_NAMES: &[(u32, &str)] = &[
    (0x000, "ESME_ROK"),
    (0x001, "ESME_RINVMSGLEN"),
    (0x002, "ESME_RINVCMDLEN"),
    (0x003, "ESME_RINVCMDID"),
    (0x004, "ESME_RINVBNDSTS"),
    (0x005, "ESME_RALYBND"),
    (0x006, "ESME_RINVPRTFLG"),
    (0x007, "ESME_RINVREGDLVFLG"),
    (0x008, "ESME_RSYSERR"),
    (0x00A, "ESME_RINVSRCADR"),
    (0x00B, "ESME_RINVDSTADR"),
    (0x00C, "ESME_RINVMSGID"),
    (0x00D, "ESME_RBINDFAIL"),
    (0x00E, "ESME_RINVPASWD"),
    (0x00F, "ESME_RINVSYSID"),
    (0x011, "ESME_RCANCELFAIL"),
    (0x013, "ESME_RREPLACEFAIL"),
    (0x014, "ESME_RMSGQFUL"),
    (0x015, "ESME_RINVSERTYP"),
    (0x033, "ESME_RINVNUMDESTS"),
    (0x034, "ESME_RINVDLNAME"),
    (0x040, "ESME_RINVDESTFLAG"),
    (0x042, "ESME_RINVSUBREP"),
    (0x043, "ESME_RINVESMCLASS"),
    (0x044, "ESME_RCNTSUBDL"),
    (0x045, "ESME_RSUBMITFAIL"),
    (0x048, "ESME_RINVSRCTON"),
    (0x049, "ESME_RINVSRCNPI"),
    (0x050, "ESME_RINVDSTTON"),
    (0x051, "ESME_RINVDSTNPI"),
    (0x053, "ESME_RINVSYSTYP"),
    (0x054, "ESME_RINVREPFLAG"),
    (0x055, "ESME_RINVNUMMSGS"),
    (0x058, "ESME_RTHROTTLED"),
    (0x061, "ESME_RINVSCHED"),
    (0x062, "ESME_RINVEXPIRY"),
    (0x063, "ESME_RINVDFTMSGID"),
    (0x064, "ESME_RX_T_APPN"),
    (0x065, "ESME_RX_P_APPN"),
    (0x066, "ESME_RX_R_APPN"),
    (0x067, "ESME_RQUERYFAIL"),
    (0x0C0, "ESME_RINVTLVSTREAM"),
    (0x0C1, "ESME_RTLVNOTALLWD"),
    (0x0C2, "ESME_RINVTLVLEN"),
    (0x0C3, "ESME_RMISSINGTLV"),
    (0x0C4, "ESME_RINVOPTPARAMVAL"),
    (0x0FE, "ESME_RDELIVERYFAILURE"),
    (0x0FF, "ESME_RUNKNOWNERR"),
    (0x100, "ESME_RSERTYPUNAUTH"),
    (0x101, "ESME_RPROHIBITED"),
    (0x102, "ESME_RSERTYPUNAVAIL"),
    (0x103, "ESME_RSERTYPDENIED"),
    (0x104, "ESME_RINVDCS"),
    (0x105, "ESME_RINVSRCADDRSUBUNIT"),
    (0x106, "ESME_RINVDSTADDRSUBUNIT"),
    (0x107, "ESME_RINVBCASTFREQINT"),
    (0x108, "ESME_RINVBCASTALIAS_NAME"),
    (0x109, "ESME_RINVBCASTAREAFMT"),
    (0x10A, "ESME_RINVNUMBCAST_AREAS"),
    (0x10B, "ESME_RINVBCASTCNTTYPE"),
    (0x10C, "ESME_RINVBCASTMSGCLASS"),
    (0x10D, "ESME_RBCASTFAIL"),
    (0x10E, "ESME_RBCASTQUERYFAIL"),
    (0x10F, "ESME_RBCASTCANCELFAIL"),
    (0x110, "ESME_RINVBCAST_REP"),
    (0x111, "ESME_RINVBCASTSRVGRP"),
    (0x112, "ESME_RINVBCASTCHANIND"),
];

/// "ESME_RINVPASWD" etc. for known statuses, "0x000000FF"-style hex for others.
///
/// Carrier-specific statuses (0x400-0x4FF are reserved for SMSC vendors) print as hex.
pub fn status_name(status: u32) -> String {
    match STATUS_NAMES.binary_search_by_key(&status, |&(value, _)| value) {
        Ok(index) => STATUS_NAMES[index].1.to_string(),
        Err(_) => format!("0x{status:08X}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Pdu helpers
// ---------------------------------------------------------------------------------------------

impl Body {
    /// The command id this body is sent with.
    pub fn command_id(&self) -> u32 {
        match self {
            Body::BindReceiver(_) => command_id::BIND_RECEIVER,
            Body::BindTransmitter(_) => command_id::BIND_TRANSMITTER,
            Body::BindTransceiver(_) => command_id::BIND_TRANSCEIVER,
            Body::BindReceiverResp { .. } => command_id::BIND_RECEIVER_RESP,
            Body::BindTransmitterResp { .. } => command_id::BIND_TRANSMITTER_RESP,
            Body::BindTransceiverResp { .. } => command_id::BIND_TRANSCEIVER_RESP,
            Body::SubmitSm(_) => command_id::SUBMIT_SM,
            Body::SubmitSmResp { .. } => command_id::SUBMIT_SM_RESP,
            Body::DeliverSm(_) => command_id::DELIVER_SM,
            Body::DeliverSmResp { .. } => command_id::DELIVER_SM_RESP,
            Body::EnquireLink => command_id::ENQUIRE_LINK,
            Body::EnquireLinkResp => command_id::ENQUIRE_LINK_RESP,
            Body::Unbind => command_id::UNBIND,
            Body::UnbindResp => command_id::UNBIND_RESP,
            Body::GenericNack => command_id::GENERIC_NACK,
        }
    }
}

/// The body of the response to a request with this command id; None for responses and ids
/// vmnd does not handle. Shared by [`Pdu::response`] and [`error_response`] so both agree.
fn response_body(request_id: u32) -> Option<Body> {
    Some(match request_id {
        command_id::BIND_RECEIVER => Body::BindReceiverResp {
            system_id: String::new(),
        },
        command_id::BIND_TRANSMITTER => Body::BindTransmitterResp {
            system_id: String::new(),
        },
        command_id::BIND_TRANSCEIVER => Body::BindTransceiverResp {
            system_id: String::new(),
        },
        command_id::SUBMIT_SM => Body::SubmitSmResp {
            message_id: String::new(),
        },
        command_id::DELIVER_SM => Body::DeliverSmResp {
            message_id: String::new(),
        },
        command_id::ENQUIRE_LINK => Body::EnquireLinkResp,
        command_id::UNBIND => Body::UnbindResp,
        _ => return None,
    })
}

impl Pdu {
    /// The command id this PDU is sent with.
    pub fn command_id(&self) -> u32 {
        self.body.command_id()
    }

    /// The response for a request with the given status, None for responses (e.g. DeliverSm ->
    /// DeliverSmResp{message_id:""}, EnquireLink -> EnquireLinkResp, Unbind -> UnbindResp, binds
    /// -> the bind resp with system_id ""). The sequence number is the request's.
    pub fn response(&self, status: u32) -> Option<Pdu> {
        Some(Pdu {
            command_status: status,
            sequence_number: self.sequence_number,
            body: response_body(self.command_id())?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Decode errors
// ---------------------------------------------------------------------------------------------

impl DecodeError {
    /// The command id from the frame's header.
    pub fn command_id(&self) -> u32 {
        match self {
            DecodeError::UnknownCommand { command_id, .. }
            | DecodeError::BadBody { command_id, .. } => *command_id,
        }
    }

    /// The sequence number from the frame's header (the response must carry it).
    pub fn sequence_number(&self) -> u32 {
        match self {
            DecodeError::UnknownCommand {
                sequence_number, ..
            }
            | DecodeError::BadBody {
                sequence_number, ..
            } => *sequence_number,
        }
    }

    /// The status the response carries.
    pub fn status(&self) -> u32 {
        match self {
            DecodeError::UnknownCommand { .. } => status::ESME_RINVCMDID,
            DecodeError::BadBody { status, .. } => *status,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownCommand {
                command_id,
                sequence_number,
            } => write!(
                f,
                "unknown command id 0x{command_id:08X} (sequence {sequence_number})"
            ),
            DecodeError::BadBody {
                command_id,
                sequence_number,
                status,
                reason,
            } => write!(
                f,
                "bad {} body (sequence {sequence_number}): {reason} -> {}",
                command_name(*command_id),
                status_name(*status)
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Longest id [`salvage_response`] keeps, in octets: well past SMPP's 65 (which sloppy SMSCs
/// exceed), short of letting a broken PDU put kilobytes into the carrier-id index.
const MAX_SALVAGED_ID: usize = 255;

/// A response whose body did not decode, read leniently: the header's status and sequence
/// number, and for the responses that carry an id (`message_id`, `system_id`) the octets up to
/// the first NUL or the end, at most `MAX_SALVAGED_ID` (255), as text (bytes that are not
/// UTF-8 become U+FFFD). Anything after the id is ignored.
///
/// Why: SMSCs send ids without their terminator, padded with NULs, longer than SMPP allows,
/// or with a stray octet after an empty body. The request such a response answers must still
/// be settled. Otherwise the session waits for it until `response_timeout` and drops the bind,
/// and a submit_sm the SMSC accepted is sent again (the handset gets it twice).
///
/// None for frames that are not one of the responses vmnd reads (and for requests: a bad
/// request is answered with an error, see [`error_response`]).
pub fn salvage_response(frame: &[u8]) -> Option<Pdu> {
    let h = header(frame)?;
    let body = frame.get(HEADER_LEN..)?;
    let id = || {
        let end = body
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(body.len())
            .min(MAX_SALVAGED_ID);
        String::from_utf8_lossy(&body[..end]).into_owned()
    };
    let body = match h.command_id {
        command_id::SUBMIT_SM_RESP => Body::SubmitSmResp { message_id: id() },
        command_id::DELIVER_SM_RESP => Body::DeliverSmResp { message_id: id() },
        command_id::BIND_RECEIVER_RESP => Body::BindReceiverResp { system_id: id() },
        command_id::BIND_TRANSMITTER_RESP => Body::BindTransmitterResp { system_id: id() },
        command_id::BIND_TRANSCEIVER_RESP => Body::BindTransceiverResp { system_id: id() },
        command_id::ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
        command_id::UNBIND_RESP => Body::UnbindResp,
        command_id::GENERIC_NACK => Body::GenericNack,
        _ => return None,
    };
    Some(Pdu {
        command_status: h.command_status,
        sequence_number: h.sequence_number,
        body,
    })
}

/// True when a response with command id `response` settles a request sent with `request`:
/// its own `_resp`, or `generic_nack` (the SMSC did not understand the request).
pub fn answers(response: u32, request: u32) -> bool {
    response == request | command_id::RESPONSE_BIT || response == command_id::GENERIC_NACK
}

/// The response to send for a frame that failed to decode: for a request command id, its _resp
/// with the error's status and sequence number; for a response command id or an unknown id,
/// generic_nack (ESME_RINVCMDID for unknown ids).
pub fn error_response(err: &DecodeError) -> Pdu {
    // A response is never answered with a response of a response; SMPP's only answer to a bad
    // response (or to a command nobody knows) is generic_nack.
    let body = response_body(err.command_id()).unwrap_or(Body::GenericNack);
    Pdu {
        command_status: err.status(),
        sequence_number: err.sequence_number(),
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------------

/// Why a body did not decode, before the header fields are attached.
struct Bad {
    status: u32,
    reason: String,
}

fn bad(status: u32, reason: impl Into<String>) -> Bad {
    Bad {
        status,
        reason: reason.into(),
    }
}

/// rusmpp refused a mandatory part our own walk accepted. The walk checks what rusmpp checks
/// (terminators, maximum lengths, ASCII), so this means the two disagree: a system error.
fn rusmpp_bad(err: rusmpp::decode::DecodeError) -> Bad {
    bad(
        status::ESME_RSYSERR,
        format!("rusmpp refused the body: {err}"),
    )
}

/// A walk over a body that finds field boundaries without copying anything.
struct Walk<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Walk<'a> {
    fn new(body: &'a [u8]) -> Self {
        Walk { body, pos: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        self.body.get(self.pos..).unwrap_or_default()
    }

    /// One integer octet; a body that ends here is truncated.
    fn octet(&mut self, field: &str) -> Result<u8, Bad> {
        let value = *self.rest().first().ok_or_else(|| truncated(field))?;
        self.pos += 1;
        Ok(value)
    }

    /// A C-Octet String of at most `max` octets, NUL included (SMPP 3.4 section 3.1): it must
    /// end within `max` octets and within the body, and hold ASCII only (what rusmpp requires).
    /// `status` is the field's own error status, so the peer learns which field was wrong.
    fn c_string(&mut self, field: &str, max: usize, status: u32) -> Result<(), Bad> {
        let rest = self.rest();
        if rest.is_empty() {
            return Err(truncated(field));
        }
        let window = &rest[..rest.len().min(max)];
        let Some(nul) = window.iter().position(|&b| b == 0) else {
            return Err(if rest.len() < max {
                bad(
                    status,
                    format!("{field} runs past the end of the body (no NUL terminator)"),
                )
            } else {
                bad(
                    status,
                    format!("{field} is not NUL-terminated within {max} octets"),
                )
            });
        };
        if !window[..nul].is_ascii() {
            return Err(bad(status, format!("{field} holds non-ASCII octets")));
        }
        self.pos += nul + 1;
        Ok(())
    }

    /// A time field: empty, or exactly 16 characters and a NUL (SMPP 3.4 section 7.1.1).
    fn time(&mut self, field: &str, status: u32) -> Result<(), Bad> {
        let start = self.pos;
        self.c_string(field, 17, status)?;
        match self.pos - start {
            1 | 17 => Ok(()),
            n => Err(bad(
                status,
                format!("{field} has {} characters; SMPP times have 0 or 16", n - 1),
            )),
        }
    }
}

fn truncated(field: &str) -> Bad {
    bad(
        status::ESME_RINVCMDLEN,
        format!("body ends before {field} (truncated PDU)"),
    )
}

/// Finds where the mandatory part of a deliver_sm / submit_sm body ends (SMPP 3.4 sections
/// 4.4.1 and 4.6.1 share the layout), checking every field rusmpp would reject.
fn sm_mandatory_len(body: &[u8]) -> Result<usize, Bad> {
    let mut w = Walk::new(body);
    w.c_string("service_type", 6, status::ESME_RINVSERTYP)?;
    w.octet("source_addr_ton")?;
    w.octet("source_addr_npi")?;
    w.c_string("source_addr", 21, status::ESME_RINVSRCADR)?;
    w.octet("dest_addr_ton")?;
    w.octet("dest_addr_npi")?;
    w.c_string("destination_addr", 21, status::ESME_RINVDSTADR)?;
    w.octet("esm_class")?;
    w.octet("protocol_id")?;
    w.octet("priority_flag")?;
    w.time("schedule_delivery_time", status::ESME_RINVSCHED)?;
    w.time("validity_period", status::ESME_RINVEXPIRY)?;
    w.octet("registered_delivery")?;
    w.octet("replace_if_present_flag")?;
    w.octet("data_coding")?;
    w.octet("sm_default_msg_id")?;
    let sm_length = usize::from(w.octet("sm_length")?);
    let left = w.rest().len();
    if sm_length > left {
        return Err(bad(
            status::ESME_RINVMSGLEN,
            format!("sm_length is {sm_length} but only {left} octets follow"),
        ));
    }
    Ok(w.pos + sm_length)
}

/// Splits a TLV stream (SMPP 3.4 section 3.2.4.1) into (tag, value range) pairs.
fn walk_tlvs(region: &[u8], mut each: impl FnMut(u16, std::ops::Range<usize>)) -> Result<(), Bad> {
    let mut pos = 0;
    while pos < region.len() {
        let Some(&[t0, t1, l0, l1]) = region.get(pos..pos + 4) else {
            return Err(bad(
                status::ESME_RINVTLVSTREAM,
                format!(
                    "{} stray octets where a TLV header (4 octets) should be",
                    region.len() - pos
                ),
            ));
        };
        let tag = u16::from_be_bytes([t0, t1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        pos += 4;
        let left = region.len() - pos;
        if len > left {
            return Err(bad(
                status::ESME_RINVTLVSTREAM,
                format!("TLV 0x{tag:04X} declares {len} octets but only {left} follow"),
            ));
        }
        each(tag, pos..pos + len);
        pos += len;
    }
    Ok(())
}

/// Text of a C-Octet String as rusmpp holds it (NUL included). rusmpp guarantees ASCII; the
/// lossy conversion only keeps this free of panics should that ever change.
fn text(c_string: &[u8]) -> String {
    let bytes = c_string.strip_suffix(&[0]).unwrap_or(c_string);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds a `ShortMessage` from rusmpp's `DeliverSmParts` or `SubmitSmParts` (same fields).
macro_rules! short_message_from_parts {
    ($parts:expr, $tlvs:expr) => {{
        let p = $parts;
        ShortMessage {
            service_type: text(p.service_type.value()),
            source: Address {
                ton: p.source_addr_ton.into(),
                npi: p.source_addr_npi.into(),
                addr: text(&p.source_addr),
            },
            dest: Address {
                ton: p.dest_addr_ton.into(),
                npi: p.dest_addr_npi.into(),
                addr: text(&p.destination_addr),
            },
            esm_class: p.esm_class.into(),
            protocol_id: p.protocol_id,
            priority_flag: p.priority_flag.into(),
            schedule_delivery_time: text(&p.schedule_delivery_time),
            validity_period: text(&p.validity_period),
            registered_delivery: p.registered_delivery.into(),
            replace_if_present_flag: p.replace_if_present_flag.into(),
            data_coding: p.data_coding.into(),
            sm_default_msg_id: p.sm_default_msg_id,
            short_message: p.short_message.into_bytes(),
            tlvs: $tlvs,
        }
    }};
}

/// deliver_sm / submit_sm body.
///
/// rusmpp decodes the mandatory part only; the TLVs are split here, raw. Why not by rusmpp:
/// 0.4.0 decodes a known tag by its type and ignores the TLV's length field, so a `sar_msg_ref_num`
/// sent with length 1, or a `receipted_message_id` without its NUL, silently misaligns every
/// TLV after it; a known TLV whose value breaks rusmpp's rules (say a 3-octet `callback_num`)
/// fails the whole message; and we would have to re-encode each typed value to keep it raw.
/// Unknown tags are kept either way; here every tag is kept exactly as received.
fn decode_short_message(body: &[u8], deliver: bool) -> Result<ShortMessage, Bad> {
    let mandatory = sm_mandatory_len(body)?;
    let mut tlvs = Vec::new();
    // The one copy: rusmpp's owned decoder wants a BytesMut, and every field below (short
    // message, TLV values) is a zero-copy slice of it.
    let mut buf = BytesMut::from(body);
    let tlv_region = buf.split_off(mandatory).freeze();
    walk_tlvs(&tlv_region, |tag, range| {
        tlvs.push(Tlv {
            tag,
            value: tlv_region.slice(range),
        })
    })?;
    // The length given to rusmpp ends at the mandatory part, so its TLV list decodes empty.
    let (message, used) = if deliver {
        let (sm, used) = <rusmpp::pdus::DeliverSm as rusmpp::decode::DecodeWithLength>::decode(
            &mut buf, mandatory,
        )
        .map_err(rusmpp_bad)?;
        (short_message_from_parts!(sm.into_parts(), tlvs), used)
    } else {
        let (sm, used) = <rusmpp::pdus::SubmitSm as rusmpp::decode::DecodeWithLength>::decode(
            &mut buf, mandatory,
        )
        .map_err(rusmpp_bad)?;
        (short_message_from_parts!(sm.into_parts(), tlvs), used)
    };
    if used != mandatory {
        return Err(bad(
            status::ESME_RSYSERR,
            format!("rusmpp read {used} octets of a {mandatory}-octet mandatory part"),
        ));
    }
    Ok(message)
}

/// bind_receiver / bind_transmitter / bind_transceiver body (SMPP 3.4 section 4.1.1).
fn decode_bind(body: &[u8], id: u32) -> Result<Bind, Bad> {
    let mut w = Walk::new(body);
    w.c_string("system_id", 16, status::ESME_RINVSYSID)?;
    w.c_string("password", 9, status::ESME_RINVPASWD)?;
    w.c_string("system_type", 13, status::ESME_RINVSYSTYP)?;
    w.octet("interface_version")?;
    w.octet("addr_ton")?;
    w.octet("addr_npi")?;
    w.c_string("address_range", 41, status::ESME_RBINDFAIL)?;
    if !w.rest().is_empty() {
        return Err(bad(
            status::ESME_RINVCMDLEN,
            format!(
                "{} octets after address_range; binds carry no TLVs",
                w.rest().len()
            ),
        ));
    }
    let mut buf = BytesMut::from(body);
    macro_rules! bind {
        ($ty:ty) => {{
            let (bind, used) =
                <$ty as rusmpp::decode::Decode>::decode(&mut buf).map_err(rusmpp_bad)?;
            (bind.into_parts(), used)
        }};
    }
    macro_rules! convert {
        ($decoded:expr) => {{
            let (p, used) = $decoded;
            (
                Bind {
                    system_id: text(&p.system_id),
                    password: text(&p.password),
                    system_type: text(&p.system_type),
                    interface_version: p.interface_version.into(),
                    addr_ton: p.addr_ton.into(),
                    addr_npi: p.addr_npi.into(),
                    address_range: text(&p.address_range),
                },
                used,
            )
        }};
    }
    let (bind, used) = match id {
        command_id::BIND_RECEIVER => convert!(bind!(rusmpp::pdus::BindReceiver)),
        command_id::BIND_TRANSMITTER => convert!(bind!(rusmpp::pdus::BindTransmitter)),
        _ => convert!(bind!(rusmpp::pdus::BindTransceiver)),
    };
    if used != body.len() {
        return Err(bad(
            status::ESME_RSYSERR,
            format!("rusmpp read {used} octets of a {}-octet bind", body.len()),
        ));
    }
    Ok(bind)
}

/// The C-string that opens bind_*_resp, submit_sm_resp and deliver_sm_resp, for the response
/// with command id `id`. TLVs after it must be well formed and are dropped: vmnd reads none of
/// them (sc_interface_version, additional_status_info_text, ...).
///
/// By hand, not by rusmpp: an empty body. SMSCs leave the body out of a bind_resp or
/// submit_sm_resp with a non-zero status (SMPP 3.4 sections 4.1.2 and 4.4.2 say the body "is not
/// returned"), and rusmpp 0.4.0 decodes such a command with no PDU at all. It decodes here to
/// an empty id.
fn decode_id_resp(body: &[u8], id: u32) -> Result<String, Bad> {
    if body.is_empty() {
        return Ok(String::new());
    }
    let (field, max, status) =
        if id == command_id::SUBMIT_SM_RESP || id == command_id::DELIVER_SM_RESP {
            ("message_id", 65, status::ESME_RINVMSGID)
        } else {
            ("system_id", 16, status::ESME_RINVSYSID)
        };
    let mut w = Walk::new(body);
    w.c_string(field, max, status)?;
    let end = w.pos;
    walk_tlvs(w.rest(), |_, _| {})?;
    let mut buf = BytesMut::from(&body[..end]);
    macro_rules! id_of {
        ($ty:ty, $field:ident) => {{
            let (resp, used) = <$ty as rusmpp::decode::DecodeWithLength>::decode(&mut buf, end)
                .map_err(rusmpp_bad)?;
            (text(&resp.into_parts().$field), used)
        }};
    }
    let (text, used) = match id {
        command_id::SUBMIT_SM_RESP => id_of!(rusmpp::pdus::SubmitSmResp, message_id),
        command_id::DELIVER_SM_RESP => id_of!(rusmpp::pdus::DeliverSmResp, message_id),
        command_id::BIND_RECEIVER_RESP => id_of!(rusmpp::pdus::BindReceiverResp, system_id),
        command_id::BIND_TRANSMITTER_RESP => id_of!(rusmpp::pdus::BindTransmitterResp, system_id),
        _ => id_of!(rusmpp::pdus::BindTransceiverResp, system_id),
    };
    if used != end {
        return Err(bad(
            status::ESME_RSYSERR,
            format!("rusmpp read {used} octets of a {end}-octet {field}"),
        ));
    }
    Ok(text)
}

/// Decodes one whole PDU (header included; the codec already checked command_length ==
/// frame.len()).
///
/// - Unknown command ids give [`DecodeError::UnknownCommand`].
/// - A body that does not decode gives [`DecodeError::BadBody`] with the status to answer:
///   `ESME_RINVMSGLEN` when sm_length runs past the data, `ESME_RINVTLVSTREAM` for a broken TLV
///   stream, the field's own status for a bad C-string (`ESME_RINVSRCADR` for source_addr,
///   ...), `ESME_RINVCMDLEN` for a truncated body or one that should be empty but is not.
/// - Unknown TLV tags are kept in [`ShortMessage::tlvs`], as are known ones, raw and in order;
///   a known tag with an odd length is kept too (the reader of that tag judges it).
/// - Never panics, whatever the input.
pub fn decode(frame: &[u8]) -> Result<Pdu, DecodeError> {
    let Some(h) = header(frame) else {
        // The codec never hands over less than a header; answer something sane if it did.
        let mut fields = [0u8; HEADER_LEN];
        fields[..frame.len()].copy_from_slice(frame);
        let h = header(&fields).unwrap_or(Header {
            command_length: 0,
            command_id: 0,
            command_status: 0,
            sequence_number: 0,
        });
        return Err(DecodeError::BadBody {
            command_id: h.command_id,
            sequence_number: h.sequence_number,
            status: status::ESME_RINVCMDLEN,
            reason: format!("{} octets cannot hold a 16-octet header", frame.len()),
        });
    };
    let fail = |b: Bad| DecodeError::BadBody {
        command_id: h.command_id,
        sequence_number: h.sequence_number,
        status: b.status,
        reason: b.reason,
    };
    if h.command_length as usize != frame.len() {
        return Err(fail(bad(
            status::ESME_RINVCMDLEN,
            format!(
                "command_length is {} but the frame has {} octets",
                h.command_length,
                frame.len()
            ),
        )));
    }
    let body = &frame[HEADER_LEN..];
    let empty = |b: Body| {
        if body.is_empty() {
            Ok(b)
        } else {
            Err(bad(
                status::ESME_RINVCMDLEN,
                format!(
                    "{} has no body but {} octets follow the header",
                    command_name(h.command_id),
                    body.len()
                ),
            ))
        }
    };
    let decoded = match h.command_id {
        // Header-only PDUs: nothing for rusmpp to do.
        command_id::ENQUIRE_LINK => empty(Body::EnquireLink),
        command_id::ENQUIRE_LINK_RESP => empty(Body::EnquireLinkResp),
        command_id::UNBIND => empty(Body::Unbind),
        command_id::UNBIND_RESP => empty(Body::UnbindResp),
        command_id::GENERIC_NACK => empty(Body::GenericNack),
        command_id::DELIVER_SM => {
            decode_short_message(body, true).map(|sm| Body::DeliverSm(Box::new(sm)))
        }
        command_id::SUBMIT_SM => {
            decode_short_message(body, false).map(|sm| Body::SubmitSm(Box::new(sm)))
        }
        command_id::DELIVER_SM_RESP => {
            decode_id_resp(body, h.command_id).map(|message_id| Body::DeliverSmResp { message_id })
        }
        command_id::SUBMIT_SM_RESP => {
            decode_id_resp(body, h.command_id).map(|message_id| Body::SubmitSmResp { message_id })
        }
        command_id::BIND_RECEIVER => decode_bind(body, h.command_id).map(Body::BindReceiver),
        command_id::BIND_TRANSMITTER => decode_bind(body, h.command_id).map(Body::BindTransmitter),
        command_id::BIND_TRANSCEIVER => decode_bind(body, h.command_id).map(Body::BindTransceiver),
        command_id::BIND_RECEIVER_RESP => {
            decode_id_resp(body, h.command_id).map(|system_id| Body::BindReceiverResp { system_id })
        }
        command_id::BIND_TRANSMITTER_RESP => decode_id_resp(body, h.command_id)
            .map(|system_id| Body::BindTransmitterResp { system_id }),
        command_id::BIND_TRANSCEIVER_RESP => decode_id_resp(body, h.command_id)
            .map(|system_id| Body::BindTransceiverResp { system_id }),
        _ => {
            return Err(DecodeError::UnknownCommand {
                command_id: h.command_id,
                sequence_number: h.sequence_number,
            });
        }
    };
    decoded.map_err(fail).map(|body| Pdu {
        command_status: h.command_status,
        sequence_number: h.sequence_number,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------------

/// Our string as a rusmpp C-Octet String of at most `MAX` octets (NUL included). Values are
/// ours (config, addresses we received), so a bad one is a bug upstream; rather than fail a
/// send, it is made legal: NULs dropped, non-ASCII characters as '?', cut to length; logged.
fn c_string<const MAX: usize>(value: &str, field: &str) -> rusmpp::types::COctetString<1, MAX> {
    let mut bytes: Vec<u8> = value
        .chars()
        .filter(|&c| c != '\0')
        .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
        .take(MAX - 1)
        .collect();
    if bytes.len() != value.len() || !value.is_ascii() {
        tracing::warn!(
            field,
            value,
            max = MAX - 1,
            "value made SMPP-legal for encoding"
        );
    }
    bytes.push(0);
    rusmpp::types::COctetString::from_vec(bytes).unwrap_or_default()
}

/// A time field: empty or exactly 16 characters (SMPP 3.4 section 7.1.1); anything else is
/// sent empty (the SMSC default) and logged.
fn time(value: &str, field: &str) -> rusmpp::types::EmptyOrFullCOctetString<17> {
    if value.is_empty() || (value.len() == 16 && value.is_ascii() && !value.contains('\0')) {
        let mut bytes = Vec::with_capacity(17);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        if let Ok(time) = rusmpp::types::EmptyOrFullCOctetString::from_vec(bytes) {
            return time;
        }
    }
    tracing::warn!(
        field,
        value,
        "not an SMPP time (0 or 16 characters); sent empty"
    );
    rusmpp::types::EmptyOrFullCOctetString::default()
}

/// One raw TLV as rusmpp's `Other` value, which writes tag, length and value as given whatever
/// the tag (known tags included), so what we received is what we send.
fn raw_tlv(tag: u16, value: &Bytes) -> rusmpp::tlvs::Tlv {
    rusmpp::tlvs::Tlv::from(rusmpp::tlvs::TlvValue::Other {
        tag: rusmpp::tlvs::TlvTag::from(tag),
        value: rusmpp::types::AnyOctetString::from_bytes(value.clone()),
    })
}

/// short_message and TLVs as sent. A short_message over 255 octets (sm_length is one octet)
/// travels as message_payload instead when there is none, else it is cut to 255 and logged.
/// TLVs over 65535 octets cannot be expressed and are dropped (logged).
fn wire_user_data(
    sm: &ShortMessage,
) -> (rusmpp::types::OctetString<0, 255>, Vec<rusmpp::tlvs::Tlv>) {
    let mut tlvs = Vec::with_capacity(sm.tlvs.len() + 1);
    for tlv in &sm.tlvs {
        if tlv.value.len() > usize::from(u16::MAX) {
            tracing::warn!(
                tag = tlv.tag,
                len = tlv.value.len(),
                "TLV too long for SMPP; dropped"
            );
            continue;
        }
        tlvs.push(raw_tlv(tlv.tag, &tlv.value));
    }
    let mut short_message = sm.short_message.clone();
    if short_message.len() > 255 {
        if sm.tlv(tlv_tag::MESSAGE_PAYLOAD).is_none()
            && short_message.len() <= usize::from(u16::MAX)
        {
            tlvs.push(raw_tlv(tlv_tag::MESSAGE_PAYLOAD, &short_message));
            short_message = Bytes::new();
        } else {
            tracing::warn!(
                len = short_message.len(),
                "short_message over 255 octets; cut"
            );
            short_message.truncate(255);
        }
    }
    let short_message = rusmpp::types::OctetString::from_bytes(short_message).unwrap_or_default();
    (short_message, tlvs)
}

/// rusmpp's `DeliverSmParts` or `SubmitSmParts` (same fields) from our `ShortMessage`.
macro_rules! short_message_parts {
    ($parts:ident, $sm:expr) => {{
        let sm: &ShortMessage = $sm;
        let (short_message, tlvs) = wire_user_data(sm);
        rusmpp::pdus::parts::$parts {
            service_type: rusmpp::values::ServiceType::new(c_string(
                &sm.service_type,
                "service_type",
            )),
            source_addr_ton: sm.source.ton.into(),
            source_addr_npi: sm.source.npi.into(),
            source_addr: c_string(&sm.source.addr, "source_addr"),
            dest_addr_ton: sm.dest.ton.into(),
            dest_addr_npi: sm.dest.npi.into(),
            destination_addr: c_string(&sm.dest.addr, "destination_addr"),
            // Always from our octet: rusmpp's EsmClass::default() encodes 0x08, not 0x00.
            esm_class: rusmpp::values::EsmClass::from(sm.esm_class),
            protocol_id: sm.protocol_id,
            priority_flag: sm.priority_flag.into(),
            schedule_delivery_time: time(&sm.schedule_delivery_time, "schedule_delivery_time"),
            validity_period: time(&sm.validity_period, "validity_period"),
            registered_delivery: sm.registered_delivery.into(),
            replace_if_present_flag: sm.replace_if_present_flag.into(),
            data_coding: sm.data_coding.into(),
            sm_default_msg_id: sm.sm_default_msg_id,
            // wire_user_data caps it at 255.
            sm_length: u8::try_from(short_message.len()).unwrap_or(u8::MAX),
            short_message,
            tlvs,
        }
    }};
}

/// Appends header and body; `command_length` is the header plus rusmpp's body length.
fn put<T>(out: &mut BytesMut, pdu: &Pdu, body: Option<&T>)
where
    T: rusmpp::encode::owned::Encode,
{
    let body_len = body.map_or(0, rusmpp::encode::Length::length);
    let command_length = u32::try_from(HEADER_LEN + body_len).unwrap_or(u32::MAX);
    out.reserve(HEADER_LEN + body_len);
    out.put_u32(command_length);
    out.put_u32(pdu.command_id());
    out.put_u32(pdu.command_status);
    out.put_u32(pdu.sequence_number);
    if let Some(body) = body {
        body.encode(out);
    }
}

/// Appends the encoded PDU (with correct command_length) to `out`.
///
/// Values outside SMPP's limits are made legal rather than refused (see the notes on the
/// helpers): strings are cut and non-ASCII replaced, a short_message over 255 octets goes as
/// message_payload. A bind_resp or submit_sm_resp with a non-zero status and an empty id is
/// sent without a body, as SMPP 3.4 sections 4.1.2 and 4.4.2 say.
pub fn encode(pdu: &Pdu, out: &mut BytesMut) {
    // `None::<&T>` for header-only PDUs; the type is only there to satisfy `put`.
    type NoBody = rusmpp::pdus::SubmitSmResp;
    let error_without_id = |id: &str| pdu.command_status != status::ESME_ROK && id.is_empty();
    macro_rules! bind {
        ($ty:ty, $b:expr) => {{
            let b: &Bind = $b;
            let body = <$ty>::new(
                c_string(&b.system_id, "system_id"),
                c_string(&b.password, "password"),
                c_string(&b.system_type, "system_type"),
                b.interface_version.into(),
                b.addr_ton.into(),
                b.addr_npi.into(),
                c_string(&b.address_range, "address_range"),
            );
            put(out, pdu, Some(&body))
        }};
    }
    macro_rules! bind_resp {
        ($ty:ty, $system_id:expr) => {{
            let system_id: &String = $system_id;
            if error_without_id(system_id) {
                put(out, pdu, None::<&NoBody>)
            } else {
                let body = <$ty>::new(c_string(system_id, "system_id"), None);
                put(out, pdu, Some(&body))
            }
        }};
    }
    match &pdu.body {
        Body::BindReceiver(b) => bind!(rusmpp::pdus::BindReceiver, b),
        Body::BindTransmitter(b) => bind!(rusmpp::pdus::BindTransmitter, b),
        Body::BindTransceiver(b) => bind!(rusmpp::pdus::BindTransceiver, b),
        Body::BindReceiverResp { system_id } => {
            bind_resp!(rusmpp::pdus::BindReceiverResp, system_id)
        }
        Body::BindTransmitterResp { system_id } => {
            bind_resp!(rusmpp::pdus::BindTransmitterResp, system_id)
        }
        Body::BindTransceiverResp { system_id } => {
            bind_resp!(rusmpp::pdus::BindTransceiverResp, system_id)
        }
        Body::SubmitSm(sm) => {
            let body = rusmpp::pdus::SubmitSm::from_parts(short_message_parts!(SubmitSmParts, sm));
            put(out, pdu, Some(&body))
        }
        Body::DeliverSm(sm) => {
            let body =
                rusmpp::pdus::DeliverSm::from_parts(short_message_parts!(DeliverSmParts, sm));
            put(out, pdu, Some(&body))
        }
        Body::SubmitSmResp { message_id } => {
            if error_without_id(message_id) {
                put(out, pdu, None::<&NoBody>)
            } else {
                let body =
                    rusmpp::pdus::SubmitSmResp::new(c_string(message_id, "message_id"), Vec::new());
                put(out, pdu, Some(&body))
            }
        }
        // Always with its (NULL) message_id, error or not: section 4.6.2 keeps the field.
        Body::DeliverSmResp { message_id } => {
            let body =
                rusmpp::pdus::DeliverSmResp::new(c_string(message_id, "message_id"), Vec::new());
            put(out, pdu, Some(&body))
        }
        Body::EnquireLink
        | Body::EnquireLinkResp
        | Body::Unbind
        | Body::UnbindResp
        | Body::GenericNack => put(out, pdu, None::<&NoBody>),
    }
}

/// The encoded PDU as one buffer, ready to write to the socket.
pub fn encode_to_bytes(pdu: &Pdu) -> Bytes {
    let mut out = BytesMut::new();
    encode(pdu, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole frame from header fields and a hand-written body.
    fn frame(id: u32, status: u32, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(HEADER_LEN + body.len());
        f.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&status.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// The sloppy responses real SMSCs send: each fails the strict decode, and each is salvaged
    /// with the header's status and sequence number and the id up to its NUL or the end.
    #[test]
    fn responses_that_do_not_decode_are_salvaged_with_their_header_and_id() {
        let long_id = "9".repeat(80);
        let cases: Vec<(u32, u32, Vec<u8>, Body)> = vec![
            // No NUL after the id.
            (
                command_id::SUBMIT_SM_RESP,
                status::ESME_ROK,
                b"abc123".to_vec(),
                Body::SubmitSmResp {
                    message_id: "abc123".into(),
                },
            ),
            // Padded with NULs to a fixed width, then a stray octet: not a TLV stream.
            (
                command_id::SUBMIT_SM_RESP,
                status::ESME_ROK,
                b"id7\0\0\0\0\x05".to_vec(),
                Body::SubmitSmResp {
                    message_id: "id7".into(),
                },
            ),
            // Longer than SMPP's 65 octets.
            (
                command_id::SUBMIT_SM_RESP,
                status::ESME_ROK,
                [long_id.as_bytes(), b"\0"].concat(),
                Body::SubmitSmResp {
                    message_id: long_id.clone(),
                },
            ),
            // Not ASCII.
            (
                command_id::DELIVER_SM_RESP,
                status::ESME_ROK,
                b"x\xffy\0".to_vec(),
                Body::DeliverSmResp {
                    message_id: "x\u{fffd}y".into(),
                },
            ),
            // A system_id with no terminator, and one too long for SMPP's 16 octets.
            (
                command_id::BIND_TRANSCEIVER_RESP,
                status::ESME_ROK,
                b"SMSC".to_vec(),
                Body::BindTransceiverResp {
                    system_id: "SMSC".into(),
                },
            ),
            (
                command_id::BIND_RECEIVER_RESP,
                status::ESME_RINVPASWD,
                b"a-very-long-system-id\0".to_vec(),
                Body::BindReceiverResp {
                    system_id: "a-very-long-system-id".into(),
                },
            ),
            // A body where there should be none.
            (
                command_id::ENQUIRE_LINK_RESP,
                status::ESME_ROK,
                vec![0],
                Body::EnquireLinkResp,
            ),
            (
                command_id::UNBIND_RESP,
                status::ESME_ROK,
                vec![1, 2],
                Body::UnbindResp,
            ),
            (
                command_id::GENERIC_NACK,
                status::ESME_RINVCMDID,
                vec![0],
                Body::GenericNack,
            ),
        ];
        for (id, st, body, want) in cases {
            let f = frame(id, st, 77, &body);
            assert!(decode(&f).is_err(), "0x{id:08x} {body:?} decodes strictly");
            let got = salvage_response(&f).unwrap_or_else(|| panic!("0x{id:08x}: not salvaged"));
            assert_eq!(
                got,
                Pdu {
                    command_status: st,
                    sequence_number: 77,
                    body: want
                }
            );
        }
        // The id is capped, whatever the PDU claims.
        let huge = frame(command_id::SUBMIT_SM_RESP, 0, 1, &[b'7'; 4000]);
        match salvage_response(&huge).map(|p| p.body) {
            Some(Body::SubmitSmResp { message_id }) => {
                assert_eq!(message_id.len(), MAX_SALVAGED_ID)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_unknown_ids_and_short_frames_are_not_salvaged() {
        for id in [
            command_id::DELIVER_SM,
            command_id::SUBMIT_SM,
            command_id::ENQUIRE_LINK,
            command_id::BIND_TRANSCEIVER,
            0x8000_0777,
            0x8000_0003, // query_sm_resp: vmnd never asks
        ] {
            assert_eq!(
                salvage_response(&frame(id, 0, 5, b"junk")),
                None,
                "0x{id:08x}"
            );
        }
        assert_eq!(salvage_response(&[0, 0, 0, 16, 0x80, 0, 0]), None);
        assert_eq!(salvage_response(&[]), None);
    }

    #[test]
    fn a_response_answers_its_own_request_or_a_generic_nack_does() {
        use command_id::*;
        assert!(answers(SUBMIT_SM_RESP, SUBMIT_SM));
        assert!(answers(ENQUIRE_LINK_RESP, ENQUIRE_LINK));
        assert!(answers(GENERIC_NACK, SUBMIT_SM));
        assert!(answers(GENERIC_NACK, ENQUIRE_LINK));
        assert!(!answers(ENQUIRE_LINK_RESP, SUBMIT_SM));
        assert!(!answers(DELIVER_SM_RESP, SUBMIT_SM));
        assert!(!answers(SUBMIT_SM_RESP, ENQUIRE_LINK));
        assert!(!answers(UNBIND_RESP, BIND_TRANSCEIVER));
    }

    /// A deliver_sm body written octet by octet from SMPP 3.4 section 4.6.1: an MO concatenated
    /// part in UCS2 with UDHI, sar_* TLVs (one with a wrong length) and an unknown TLV.
    fn hand_deliver_sm_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"\0"); // service_type: default
        b.push(0x01); // source_addr_ton: international
        b.push(0x01); // source_addr_npi: ISDN
        b.extend_from_slice(b"919812345678\0"); // source_addr
        b.push(0x00); // dest_addr_ton: unknown
        b.push(0x01); // dest_addr_npi: ISDN
        b.extend_from_slice(b"56767\0"); // destination_addr
        b.push(0x40); // esm_class: UDHI
        b.push(0x00); // protocol_id
        b.push(0x01); // priority_flag
        b.push(0x00); // schedule_delivery_time: NULL
        b.push(0x00); // validity_period: NULL
        b.push(0x00); // registered_delivery
        b.push(0x00); // replace_if_present_flag
        b.push(0x08); // data_coding: UCS2
        b.push(0x00); // sm_default_msg_id
        b.push(10); // sm_length
        b.extend_from_slice(&[0x05, 0x00, 0x03, 0x2A, 0x02, 0x01]); // UDH: concat ref 42, 2 parts, #1
        b.extend_from_slice(&[0x00, 0x48, 0x00, 0x69]); // "Hi" in UCS2
        b.extend_from_slice(&[0x02, 0x0C, 0x00, 0x02, 0x00, 0x2A]); // sar_msg_ref_num = 42
        b.extend_from_slice(&[0x02, 0x0E, 0x00, 0x02, 0x00, 0x02]); // sar_total_segments, length 2 (wrong)
        b.extend_from_slice(&[0x14, 0x01, 0x00, 0x03, b'a', b'b', b'c']); // vendor TLV 0x1401
        b
    }

    fn sample_sm() -> ShortMessage {
        ShortMessage {
            service_type: "CMT".into(),
            source: Address {
                ton: 1,
                npi: 1,
                addr: "919812345678".into(),
            },
            dest: Address {
                ton: 0,
                npi: 1,
                addr: "56767".into(),
            },
            esm_class: esm_class::UDHI,
            protocol_id: 0x00,
            priority_flag: 0,
            schedule_delivery_time: String::new(),
            validity_period: "000001000000000R".into(),
            registered_delivery: 1,
            replace_if_present_flag: 0,
            data_coding: 0x08,
            sm_default_msg_id: 0,
            short_message: Bytes::from_static(&[0x05, 0x00, 0x03, 0x07, 0x02, 0x02, 0x00, 0x41]),
            tlvs: vec![
                Tlv {
                    tag: tlv_tag::SAR_MSG_REF_NUM,
                    value: Bytes::from_static(&[0x00, 0x07]),
                },
                Tlv {
                    tag: tlv_tag::SAR_TOTAL_SEGMENTS,
                    value: Bytes::from_static(&[2]),
                },
                Tlv {
                    tag: tlv_tag::SAR_SEGMENT_SEQNUM,
                    value: Bytes::from_static(&[2]),
                },
                Tlv {
                    tag: tlv_tag::MESSAGE_PAYLOAD,
                    value: Bytes::from_static(b"payload wins when short_message is empty"),
                },
                Tlv {
                    tag: 0x1401,
                    value: Bytes::from_static(b"vendor"),
                },
                Tlv {
                    tag: 0x1402,
                    value: Bytes::new(),
                },
            ],
        }
    }

    fn sample_bind() -> Bind {
        Bind {
            system_id: "vmnd".into(),
            password: "secret".into(),
            system_type: "VMN".into(),
            interface_version: 0x34,
            addr_ton: 1,
            addr_npi: 1,
            address_range: "^5676[0-9]$".into(),
        }
    }

    fn roundtrip(pdu: &Pdu) {
        let bytes = encode_to_bytes(pdu);
        let h = header(&bytes).expect("header");
        assert_eq!(h.command_length as usize, bytes.len(), "{pdu:?}");
        assert_eq!(h.command_id, pdu.command_id());
        assert_eq!(decode(&bytes).as_ref(), Ok(pdu));
    }

    fn bad_body(result: Result<Pdu, DecodeError>) -> (u32, String) {
        match result {
            Err(DecodeError::BadBody { status, reason, .. }) => (status, reason),
            other => panic!("expected BadBody, got {other:?}"),
        }
    }

    #[test]
    fn decodes_hand_built_deliver_sm() {
        let f = frame(command_id::DELIVER_SM, 0, 7, &hand_deliver_sm_body());
        let pdu = decode(&f).expect("decodes");
        assert_eq!(pdu.sequence_number, 7);
        assert_eq!(pdu.command_status, 0);
        let Body::DeliverSm(sm) = &pdu.body else {
            panic!("not a deliver_sm: {pdu:?}");
        };
        assert_eq!(sm.service_type, "");
        assert_eq!(
            sm.source,
            Address {
                ton: 1,
                npi: 1,
                addr: "919812345678".into()
            }
        );
        assert_eq!(
            sm.dest,
            Address {
                ton: 0,
                npi: 1,
                addr: "56767".into()
            }
        );
        assert_eq!(sm.esm_class, 0x40);
        assert!(sm.has_udh());
        assert!(!sm.is_receipt());
        assert_eq!(sm.priority_flag, 1);
        assert_eq!(sm.data_coding, 0x08);
        assert_eq!(
            &sm.short_message[..],
            &[0x05, 0x00, 0x03, 0x2A, 0x02, 0x01, 0x00, 0x48, 0x00, 0x69]
        );
        // Every TLV kept raw and in order: the odd-length one and the vendor one included.
        let tags: Vec<u16> = sm.tlvs.iter().map(|t| t.tag).collect();
        assert_eq!(tags, vec![0x020C, 0x020E, 0x1401]);
        assert_eq!(&sm.tlv(0x020E).expect("kept")[..], &[0x00, 0x02]);
        assert_eq!(&sm.tlv(0x1401).expect("kept")[..], b"abc");
        // The wrong-length sar_total_segments makes sar() refuse, as it should.
        assert_eq!(sm.sar(), None);
        // Re-encoding gives back the very same octets.
        assert_eq!(&encode_to_bytes(&pdu)[..], &f[..]);
    }

    /// rusmpp 0.4.0 decodes known TLVs by type, ignoring their length: the wrong-length
    /// sar_total_segments above misaligns the vendor TLV after it. This is why TLVs are split
    /// by hand; if this test starts failing, rusmpp fixed it and the hand walk could go.
    #[test]
    fn rusmpp_misreads_known_tlv_with_wrong_length() {
        let body = hand_deliver_sm_body();
        let mut buf = BytesMut::from(&body[..]);
        let decoded = <rusmpp::pdus::DeliverSm as rusmpp::decode::DecodeWithLength>::decode(
            &mut buf,
            body.len(),
        );
        let faithful = match decoded {
            Ok((sm, _)) => {
                let tags: Vec<u16> = sm.tlvs().iter().map(|t| t.tag().into()).collect();
                tags == vec![0x020C, 0x020E, 0x1401]
                    && sm.tlvs().iter().all(|t| {
                        t.value().map_or(0, rusmpp::encode::Length::length)
                            == usize::from(t.value_length())
                    })
            }
            Err(_) => false,
        };
        assert!(!faithful, "rusmpp now reads odd-length TLVs faithfully");
    }

    #[test]
    fn esm_class_zero_encodes_as_zero() {
        let mut sm = sample_sm();
        sm.esm_class = 0;
        sm.service_type.clear();
        sm.source.addr = "1".into();
        sm.dest.addr = "2".into();
        let bytes = encode_to_bytes(&Pdu {
            command_status: 0,
            sequence_number: 1,
            body: Body::SubmitSm(Box::new(sm)),
        });
        // header, service_type "\0", ton, npi, "1\0", ton, npi, "2\0", then esm_class.
        assert_eq!(bytes[HEADER_LEN + 1 + 2 + 2 + 2 + 2], 0x00);
    }

    #[test]
    fn every_octet_field_survives_all_256_values() {
        for v in 0..=255u8 {
            let mut sm = sample_sm();
            sm.source.ton = v;
            sm.source.npi = v;
            sm.dest.ton = v;
            sm.dest.npi = v;
            sm.esm_class = v;
            sm.protocol_id = v;
            sm.priority_flag = v;
            sm.registered_delivery = v;
            sm.replace_if_present_flag = v;
            sm.data_coding = v;
            sm.sm_default_msg_id = v;
            roundtrip(&Pdu {
                command_status: 0,
                sequence_number: u32::from(v),
                body: Body::DeliverSm(Box::new(sm.clone())),
            });
            roundtrip(&Pdu {
                command_status: 0,
                sequence_number: u32::from(v),
                body: Body::SubmitSm(Box::new(sm)),
            });
            let bind = Bind {
                interface_version: v,
                addr_ton: v,
                addr_npi: v,
                ..sample_bind()
            };
            roundtrip(&Pdu {
                command_status: 0,
                sequence_number: 1,
                body: Body::BindTransceiver(bind),
            });
        }
    }

    #[test]
    fn every_body_variant_roundtrips() {
        let sm = sample_sm();
        let bodies = vec![
            Body::BindReceiver(sample_bind()),
            Body::BindTransmitter(sample_bind()),
            Body::BindTransceiver(Bind::default()),
            Body::BindReceiverResp {
                system_id: "SMSC".into(),
            },
            Body::BindTransmitterResp {
                system_id: String::new(),
            },
            Body::BindTransceiverResp {
                system_id: "carrier-smsc-01".into(),
            },
            Body::SubmitSm(Box::new(sm.clone())),
            Body::SubmitSmResp {
                message_id: "5f3a1c0e-0001".into(),
            },
            Body::DeliverSm(Box::new(sm)),
            Body::DeliverSm(Box::default()),
            Body::DeliverSmResp {
                message_id: String::new(),
            },
            Body::EnquireLink,
            Body::EnquireLinkResp,
            Body::Unbind,
            Body::UnbindResp,
            Body::GenericNack,
        ];
        for body in bodies {
            for status in [status::ESME_ROK, status::ESME_RX_T_APPN] {
                roundtrip(&Pdu {
                    command_status: status,
                    sequence_number: 0x7FFF_FFFF,
                    body: body.clone(),
                });
            }
        }
    }

    #[test]
    fn deliver_sm_resp_is_exactly_seventeen_octets() {
        let pdu = Pdu {
            command_status: status::ESME_RX_T_APPN,
            sequence_number: 9,
            body: Body::DeliverSmResp {
                message_id: String::new(),
            },
        };
        assert_eq!(
            &encode_to_bytes(&pdu)[..],
            &[0, 0, 0, 17, 0x80, 0, 0, 5, 0, 0, 0, 0x64, 0, 0, 0, 9, 0][..]
        );
    }

    #[test]
    fn refused_bind_with_empty_body_decodes_and_encodes_without_body() {
        let f = frame(
            command_id::BIND_TRANSCEIVER_RESP,
            status::ESME_RINVPASWD,
            1,
            &[],
        );
        let pdu = decode(&f).expect("an empty error body is legal");
        assert_eq!(
            pdu,
            Pdu {
                command_status: status::ESME_RINVPASWD,
                sequence_number: 1,
                body: Body::BindTransceiverResp {
                    system_id: String::new()
                },
            }
        );
        assert_eq!(&encode_to_bytes(&pdu)[..], &f[..]);

        let f = frame(command_id::SUBMIT_SM_RESP, 0x45, 2, &[]);
        let pdu = decode(&f).expect("decodes");
        assert_eq!(
            pdu.body,
            Body::SubmitSmResp {
                message_id: String::new()
            }
        );
        assert_eq!(encode_to_bytes(&pdu).len(), HEADER_LEN);
    }

    #[test]
    fn response_tlvs_are_checked_and_dropped() {
        // bind_transceiver_resp "SMSC" + sc_interface_version 0x34.
        let f = frame(
            command_id::BIND_TRANSCEIVER_RESP,
            0,
            1,
            b"SMSC\0\x02\x10\x00\x01\x34",
        );
        assert_eq!(
            decode(&f).map(|p| p.body),
            Ok(Body::BindTransceiverResp {
                system_id: "SMSC".into()
            })
        );
        let f = frame(command_id::SUBMIT_SM_RESP, 0, 1, b"id\0\x02\x10\x00");
        assert_eq!(bad_body(decode(&f)).0, status::ESME_RINVTLVSTREAM);
    }

    #[test]
    fn malformed_bodies_get_precise_statuses() {
        let good = hand_deliver_sm_body();
        let dsm = |body: &[u8]| decode(&frame(command_id::DELIVER_SM, 0, 3, body));

        // Truncated right after source_addr.
        let (status, reason) = bad_body(dsm(&good[..16]));
        assert_eq!(status, status::ESME_RINVCMDLEN, "{reason}");
        assert!(reason.contains("dest_addr_ton"), "{reason}");

        // sm_length past the data: body ends inside short_message.
        let sm_at = good.iter().position(|&b| b == 10).expect("sm_length");
        let (status, reason) = bad_body(dsm(&good[..sm_at + 5]));
        assert_eq!(status, status::ESME_RINVMSGLEN, "{reason}");

        // Unterminated source_addr: the body ends inside it.
        let (status, reason) = bad_body(dsm(b"\0\x01\x01919812"));
        assert_eq!(status, status::ESME_RINVSRCADR, "{reason}");

        // source_addr longer than 20 characters.
        let mut long = b"\0\x01\x01".to_vec();
        long.extend_from_slice(&[b'9'; 30]);
        long.push(0);
        assert_eq!(bad_body(dsm(&long)).0, status::ESME_RINVSRCADR);

        // Non-ASCII source_addr (rusmpp's rule, checked here to name the field).
        assert_eq!(
            bad_body(dsm(b"\0\x05\x00Caf\xe9\0")).0,
            status::ESME_RINVSRCADR
        );

        // A schedule_delivery_time that is neither empty nor 16 characters.
        let mut sched = good.clone();
        let at = 1 + 2 + 13 + 2 + 6 + 3;
        sched.splice(at..at + 1, b"12345\0".iter().copied());
        assert_eq!(bad_body(dsm(&sched)).0, status::ESME_RINVSCHED);

        // TLV length past the end, and stray octets after the last TLV.
        let mut tlv_long = good.clone();
        tlv_long.extend_from_slice(&[0x04, 0x24, 0x00, 0x09, b'x']);
        assert_eq!(bad_body(dsm(&tlv_long)).0, status::ESME_RINVTLVSTREAM);
        let mut stray = good.clone();
        stray.extend_from_slice(&[0x04, 0x24, 0x00]);
        assert_eq!(bad_body(dsm(&stray)).0, status::ESME_RINVTLVSTREAM);

        // A header-only command with a body.
        let f = frame(command_id::ENQUIRE_LINK, 0, 4, &[0]);
        assert_eq!(bad_body(decode(&f)).0, status::ESME_RINVCMDLEN);

        // command_length disagreeing with the frame.
        let mut f = frame(command_id::ENQUIRE_LINK, 0, 4, &[]);
        f[3] = 17;
        assert_eq!(bad_body(decode(&f)).0, status::ESME_RINVCMDLEN);

        // Fewer than 16 octets.
        assert_eq!(bad_body(decode(&[0, 0, 0])).0, status::ESME_RINVCMDLEN);
    }

    #[test]
    fn unknown_command_is_generic_nack_rinvcmdid() {
        let f = frame(0x0000_0103, 0, 77, b"data_sm body"); // data_sm: valid SMPP, not ours
        let err = decode(&f).expect_err("unknown");
        assert_eq!(
            err,
            DecodeError::UnknownCommand {
                command_id: 0x0000_0103,
                sequence_number: 77
            }
        );
        assert_eq!(
            error_response(&err),
            Pdu {
                command_status: status::ESME_RINVCMDID,
                sequence_number: 77,
                body: Body::GenericNack
            }
        );
    }

    #[test]
    fn error_response_answers_requests_in_kind_and_responses_with_generic_nack() {
        let err = DecodeError::BadBody {
            command_id: command_id::DELIVER_SM,
            sequence_number: 5,
            status: status::ESME_RINVMSGLEN,
            reason: "x".into(),
        };
        assert_eq!(
            error_response(&err),
            Pdu {
                command_status: status::ESME_RINVMSGLEN,
                sequence_number: 5,
                body: Body::DeliverSmResp {
                    message_id: String::new()
                }
            }
        );
        let err = DecodeError::BadBody {
            command_id: command_id::SUBMIT_SM_RESP,
            sequence_number: 6,
            status: status::ESME_RINVMSGID,
            reason: "x".into(),
        };
        assert_eq!(error_response(&err).body, Body::GenericNack);
        assert_eq!(error_response(&err).command_status, status::ESME_RINVMSGID);
    }

    #[test]
    fn responses_follow_requests() {
        let req = |body| Pdu {
            command_status: 0,
            sequence_number: 11,
            body,
        };
        let cases = [
            (
                Body::BindReceiver(sample_bind()),
                Some(Body::BindReceiverResp {
                    system_id: String::new(),
                }),
            ),
            (
                Body::BindTransmitter(sample_bind()),
                Some(Body::BindTransmitterResp {
                    system_id: String::new(),
                }),
            ),
            (
                Body::BindTransceiver(sample_bind()),
                Some(Body::BindTransceiverResp {
                    system_id: String::new(),
                }),
            ),
            (
                Body::DeliverSm(Box::new(sample_sm())),
                Some(Body::DeliverSmResp {
                    message_id: String::new(),
                }),
            ),
            (
                Body::SubmitSm(Box::new(sample_sm())),
                Some(Body::SubmitSmResp {
                    message_id: String::new(),
                }),
            ),
            (Body::EnquireLink, Some(Body::EnquireLinkResp)),
            (Body::Unbind, Some(Body::UnbindResp)),
            (Body::EnquireLinkResp, None),
            (Body::UnbindResp, None),
            (Body::GenericNack, None),
            (
                Body::DeliverSmResp {
                    message_id: String::new(),
                },
                None,
            ),
        ];
        for (request, expected) in cases {
            let response = req(request).response(status::ESME_RX_T_APPN);
            assert_eq!(response.as_ref().map(|p| &p.body), expected.as_ref());
            if let Some(r) = response {
                assert_eq!(r.sequence_number, 11);
                assert_eq!(r.command_status, status::ESME_RX_T_APPN);
            }
        }
    }

    #[test]
    fn status_names() {
        assert_eq!(status_name(status::ESME_ROK), "ESME_ROK");
        assert_eq!(status_name(status::ESME_RINVPASWD), "ESME_RINVPASWD");
        assert_eq!(status_name(status::ESME_RX_T_APPN), "ESME_RX_T_APPN");
        assert_eq!(
            status_name(status::ESME_RINVTLVSTREAM),
            "ESME_RINVTLVSTREAM"
        );
        assert_eq!(status_name(status::ESME_RUNKNOWNERR), "ESME_RUNKNOWNERR");
        assert_eq!(status_name(0x0000_0009), "0x00000009");
        assert_eq!(status_name(0x0000_0400), "0x00000400");
        assert!(STATUS_NAMES.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn out_of_range_values_are_made_legal_on_encode() {
        let mut sm = sample_sm();
        sm.source.addr = "Café\0Ünïcode-and-far-too-long".into();
        sm.schedule_delivery_time = "tomorrow".into();
        sm.tlvs.clear();
        sm.short_message = Bytes::from(vec![b'x'; 300]);
        let pdu = Pdu {
            command_status: 0,
            sequence_number: 1,
            body: Body::SubmitSm(Box::new(sm)),
        };
        let back = decode(&encode_to_bytes(&pdu)).expect("still decodes");
        let Body::SubmitSm(got) = back.body else {
            panic!("{back:?}");
        };
        assert_eq!(got.source.addr, "Caf??n?code-and-far-");
        assert_eq!(got.schedule_delivery_time, "");
        assert!(got.short_message.is_empty());
        assert_eq!(got.user_data().len(), 300);
    }

    /// Thousands of random and mutated frames: decode never panics, whatever it returns
    /// re-encodes to itself, and every error has an answer that encodes and decodes.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x0005_6767);
        let ids = [
            command_id::DELIVER_SM,
            command_id::SUBMIT_SM,
            command_id::DELIVER_SM_RESP,
            command_id::SUBMIT_SM_RESP,
            command_id::BIND_TRANSCEIVER,
            command_id::BIND_RECEIVER_RESP,
            command_id::ENQUIRE_LINK,
            command_id::GENERIC_NACK,
            0x0000_0103,
            rng.u32(..),
        ];
        let seeds: Vec<Vec<u8>> = vec![
            frame(command_id::DELIVER_SM, 0, 1, &hand_deliver_sm_body()),
            encode_to_bytes(&Pdu {
                command_status: 0,
                sequence_number: 2,
                body: Body::SubmitSm(Box::new(sample_sm())),
            })
            .to_vec(),
            encode_to_bytes(&Pdu {
                command_status: 0,
                sequence_number: 3,
                body: Body::BindTransmitter(sample_bind()),
            })
            .to_vec(),
            frame(
                command_id::BIND_TRANSCEIVER_RESP,
                0,
                4,
                b"SMSC\0\x02\x10\x00\x01\x34",
            ),
        ];
        let mut decoded_ok = 0;
        for i in 0..30_000 {
            let mut f = match i % 3 {
                0 => {
                    // Random body behind a plausible header.
                    let body: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect();
                    frame(ids[rng.usize(..ids.len())], rng.u32(..), rng.u32(..), &body)
                }
                1 => {
                    // A valid frame with a few octets flipped, cut or inserted.
                    let mut f = seeds[rng.usize(..seeds.len())].clone();
                    for _ in 0..rng.usize(1..4) {
                        match rng.u8(..3) {
                            0 if !f.is_empty() => {
                                let at = rng.usize(..f.len());
                                f[at] = rng.u8(..);
                            }
                            1 => f.truncate(rng.usize(..=f.len())),
                            0 => {}
                            _ => f.insert(rng.usize(..=f.len()), rng.u8(..)),
                        }
                    }
                    f
                }
                _ => (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
            };
            // Mostly keep command_length honest so the body walk is what gets exercised.
            if f.len() >= 4 && rng.u8(..10) > 0 {
                let len = (f.len() as u32).to_be_bytes();
                f[..4].copy_from_slice(&len);
            }
            match decode(&f) {
                Ok(pdu) => {
                    decoded_ok += 1;
                    assert_eq!(decode(&encode_to_bytes(&pdu)), Ok(pdu));
                }
                Err(err) => {
                    let answer = error_response(&err);
                    assert_eq!(answer.sequence_number, err.sequence_number());
                    assert_eq!(decode(&encode_to_bytes(&answer)), Ok(answer));
                    assert!(!err.to_string().is_empty());
                }
            }
        }
        assert!(
            decoded_ok > 1_000,
            "mutations should often stay valid: {decoded_ok}"
        );
    }
}
