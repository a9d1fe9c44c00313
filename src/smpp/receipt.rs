//! Delivery receipt text (SMPP 3.4 Appendix B): `id:IIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm
//! done date:YYMMDDhhmm stat:DDDDDDD err:E text:...`. Carriers vary in case, spacing, field order
//! and missing fields; the parser is tolerant and never panics.
//!
//! TYPES ARE FIXED (other modules use them); functions are implemented by the receipt work.

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
