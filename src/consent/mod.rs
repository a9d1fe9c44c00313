//! Consent: opt-in, opt-out and the consent ledger.

pub mod intent;
