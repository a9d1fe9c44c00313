//! Inbound and outbound text: GSM 03.38 (default alphabet and extension table, unpacked and
//! packed), IA5/ASCII, Latin-1, UCS2 read as UTF-16BE with surrogate pairs, and the DCS coding
//! groups that pick among them. rusmpp has none of this; it is ours and tested hardest.
//!
//! TYPES ARE FIXED (other modules use them); functions are implemented by the text work.

/// How a message's text was encoded, as the webhook contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gsm7,
    Ascii,
    Latin1,
    Ucs2,
    /// 8-bit data: kept as hex, never keyword-matched.
    Binary,
}

impl Encoding {
    /// The contract's name: `gsm7`, `ascii`, `latin1`, `ucs2`, `binary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ascii => "ascii",
            Encoding::Latin1 => "latin1",
            Encoding::Ucs2 => "ucs2",
            Encoding::Binary => "binary",
        }
    }
}
