//! Routing: which rule of which number a message's text matches.
//!
//! [`keywords`] holds the matching half: the normalisation shared by config validation, the router
//! and `vmnd route`, and the immutable word-level index the router reads on the hot path.

pub mod keywords;
pub mod router;

pub use keywords::{
    KeywordIndex, KeywordIndexBuilder, MAX_KEYWORD_CHARS, MAX_KEYWORD_WORDS, Normalized, RuleId,
    keyword_words, normalize, normalize_prefix,
};
