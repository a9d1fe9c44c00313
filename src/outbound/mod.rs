//! Everything vmnd sends out: signed webhook POSTs, SMS through the carriers, e-mail forwards.
//!
//! These modules do one attempt well and report its outcome; retries, due times and dead
//! letters belong to the durable queue (`store::queue`), which calls into them.

pub mod dispatcher;
pub mod email;
pub mod sms_text;
pub mod webhook;
