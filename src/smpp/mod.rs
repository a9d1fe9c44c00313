//! SMPP 3.4 as vmnd speaks it: framing, the rusmpp adapter, text and UDH decoding, receipts,
//! and the session and supervisor that keep one carrier bound.

pub mod codec;
pub mod pdu;
pub mod receipt;
pub mod session;
pub mod supervisor;
pub mod text;
pub mod udh;
