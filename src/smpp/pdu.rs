//! The one adapter over rusmpp: every rusmpp type stays inside this file.
//!
//! The rest of vmnd sees only the owned types below (`Pdu`, `Body`, `ShortMessage`, ...), so the
//! next rusmpp release, which renames things, touches this file alone.
//!
//! TYPES ARE FIXED (other modules use them); functions are implemented by the adapter work.

use bytes::{Bytes, BytesMut};

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
    pub const ESME_RBINDFAIL: u32 = 0x0000_000D;
    pub const ESME_RINVPASWD: u32 = 0x0000_000E;
    pub const ESME_RINVSYSID: u32 = 0x0000_000F;
    pub const ESME_RMSGQFUL: u32 = 0x0000_0014;
    pub const ESME_RTHROTTLED: u32 = 0x0000_0058;
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
    UnknownCommand { command_id: u32, sequence_number: u32 },
    /// The body does not decode: answer the command's response (or generic_nack for a
    /// response PDU) with `status` and this sequence number; the session stays bound.
    BadBody {
        command_id: u32,
        sequence_number: u32,
        status: u32,
        reason: String,
    },
}
