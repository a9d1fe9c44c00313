//! Everything vmnd sends out: signed webhook requests, SMS (replies and forwards) and e-mail.
//!
//! These modules do one attempt well and report its outcome; retries, due times and dead
//! letters belong to the durable queue (`store::queue`), which calls into them.

pub mod dispatcher;
pub mod email;
pub mod pipeline;
pub mod sms_text;
pub mod webhook;
pub mod webhook_format;
