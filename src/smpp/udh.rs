//! User data headers (3GPP TS 23.040 9.2.3.24): several information elements in one header,
//! concatenation with 8-bit (IEI 0x00) and 16-bit (IEI 0x08) references. rusmpp's `Udh` reads one
//! element only, so this is ours.
//!
//! TYPES ARE FIXED (other modules use them); functions are implemented by the UDH work.

/// One information element: its identifier and raw data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InformationElement {
    pub iei: u8,
    pub data: Vec<u8>,
}

/// A parsed user data header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udh {
    pub elements: Vec<InformationElement>,
    /// Octets the header occupies, UDHL byte included (needed for GSM 7-bit fill bits).
    pub len: usize,
}

/// A concatenation element: which message, how many parts, which part (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
}

/// Why a UDH could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdhError {
    /// UDHL (or an element's length) points past the end of the user data.
    TooLong { declared: usize, available: usize },
    /// The user data is empty although esm_class says a UDH is present.
    Missing,
}
