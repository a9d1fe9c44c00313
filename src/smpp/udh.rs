//! User data headers (3GPP TS 23.040 9.2.3.24): parsing a header with any number of information
//! elements, finding the concatenation element (8-bit reference, IEI 0x00, or 16-bit, IEI 0x08),
//! and building a concatenation header for outbound parts. rusmpp's `Udh` reads one element
//! only, so this is ours.
//!
//! Parsing never panics: a header whose lengths run past the data is an error value, and a
//! concatenation element with impossible values is ignored (the message is then treated as a
//! single part rather than parked forever waiting for parts that cannot exist).

use std::fmt;

/// IEI of the concatenation element with an 8-bit reference.
pub const IEI_CONCAT_8BIT: u8 = 0x00;
/// IEI of the concatenation element with a 16-bit reference.
pub const IEI_CONCAT_16BIT: u8 = 0x08;

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
    ///
    /// For UDHL, `declared` is the UDHL value and `available` the octets after the UDHL byte; for
    /// an element, `declared` is the octets the element needs (its IEI and length octets
    /// included) and `available` the octets left in the header from its IEI on.
    TooLong { declared: usize, available: usize },
    /// The user data is empty although esm_class says a UDH is present.
    Missing,
}

impl fmt::Display for UdhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdhError::TooLong {
                declared,
                available,
            } => write!(
                f,
                "user data header declares {declared} octets but only {available} are present"
            ),
            UdhError::Missing => write!(f, "user data header indicated but user data is empty"),
        }
    }
}

impl std::error::Error for UdhError {}

/// Splits user data into its UDH and the rest. Errors if UDHL or an element length runs past the
/// end.
///
/// A UDHL of 0 is a valid, empty header (one octet long). An element is IEI, length, data; an IEI
/// with no length octet left in the header is reported as `TooLong` as well.
pub fn parse_udh(user_data: &[u8]) -> Result<(Udh, &[u8]), UdhError> {
    let (&udhl, after) = user_data.split_first().ok_or(UdhError::Missing)?;
    let udhl = usize::from(udhl);
    if udhl > after.len() {
        return Err(UdhError::TooLong {
            declared: udhl,
            available: after.len(),
        });
    }
    let (mut header, rest) = after.split_at(udhl);
    let mut elements = Vec::new();
    while !header.is_empty() {
        let needed = match header.get(1) {
            Some(&len) => 2 + usize::from(len),
            None => 2,
        };
        if needed > header.len() {
            return Err(UdhError::TooLong {
                declared: needed,
                available: header.len(),
            });
        }
        elements.push(InformationElement {
            iei: header[0],
            data: header[2..needed].to_vec(),
        });
        header = &header[needed..];
    }
    Ok((
        Udh {
            elements,
            len: 1 + udhl,
        },
        rest,
    ))
}

impl Udh {
    /// The concatenation element: IEI 0x00 (8-bit ref, 3 data bytes) or 0x08 (16-bit ref, 4 data
    /// bytes); ignores elements with wrong lengths or seq 0 / seq > total / total 0.
    ///
    /// If several valid ones are present, the last wins (23.040 9.2.3.24: a repeated element's
    /// last occurrence is the one used).
    pub fn concat(&self) -> Option<Concat> {
        self.elements.iter().rev().find_map(|e| {
            let (reference, total, seq) = match (e.iei, e.data.as_slice()) {
                (IEI_CONCAT_8BIT, &[r, t, s]) => (u16::from(r), t, s),
                (IEI_CONCAT_16BIT, &[hi, lo, t, s]) => (u16::from_be_bytes([hi, lo]), t, s),
                _ => return None,
            };
            (total != 0 && seq != 0 && seq <= total).then_some(Concat {
                reference,
                total,
                seq,
            })
        })
    }

    /// The first element with this identifier, if any.
    pub fn element(&self, iei: u8) -> Option<&InformationElement> {
        self.elements.iter().find(|e| e.iei == iei)
    }
}

/// A UDH carrying only a concatenation element (8-bit ref when reference <= 255 and
/// !sixteen_bit; a reference above 255 always uses the 16-bit form so it is not truncated).
pub fn concat_udh(reference: u16, total: u8, seq: u8, sixteen_bit: bool) -> Vec<u8> {
    match u8::try_from(reference) {
        Ok(r) if !sixteen_bit => vec![0x05, IEI_CONCAT_8BIT, 0x03, r, total, seq],
        _ => {
            let [hi, lo] = reference.to_be_bytes();
            vec![0x06, IEI_CONCAT_16BIT, 0x04, hi, lo, total, seq]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ie(iei: u8, data: &[u8]) -> InformationElement {
        InformationElement {
            iei,
            data: data.to_vec(),
        }
    }

    #[test]
    fn single_8bit_concat() {
        let data = [0x05, 0x00, 0x03, 0x2A, 0x03, 0x02, b'H', b'i'];
        let (udh, rest) = parse_udh(&data).unwrap();
        assert_eq!(udh.len, 6);
        assert_eq!(udh.elements, vec![ie(0x00, &[0x2A, 0x03, 0x02])]);
        assert_eq!(rest, b"Hi");
        assert_eq!(
            udh.concat(),
            Some(Concat {
                reference: 0x2A,
                total: 3,
                seq: 2
            })
        );
    }

    #[test]
    fn sixteen_bit_reference() {
        let data = [0x06, 0x08, 0x04, 0xBE, 0xEF, 0x02, 0x01, b'x'];
        let (udh, rest) = parse_udh(&data).unwrap();
        assert_eq!(udh.len, 7);
        assert_eq!(rest, b"x");
        assert_eq!(
            udh.concat(),
            Some(Concat {
                reference: 0xBEEF,
                total: 2,
                seq: 1
            })
        );
    }

    #[test]
    fn port_element_then_concat() {
        // 16-bit application port addressing (IEI 0x05), then 8-bit concat.
        let data = [
            0x0B, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0, 0x00, 0x03, 0x07, 0x02, 0x01, 0xAA,
        ];
        let (udh, rest) = parse_udh(&data).unwrap();
        assert_eq!(udh.len, 12);
        assert_eq!(rest, [0xAA]);
        assert_eq!(
            udh.elements,
            vec![
                ie(0x05, &[0x0B, 0x84, 0x23, 0xF0]),
                ie(0x00, &[0x07, 0x02, 0x01])
            ]
        );
        assert_eq!(udh.element(0x05).unwrap().data, [0x0B, 0x84, 0x23, 0xF0]);
        assert_eq!(
            udh.concat(),
            Some(Concat {
                reference: 7,
                total: 2,
                seq: 1
            })
        );
    }

    #[test]
    fn concat_then_port_element() {
        let data = [
            0x0B, 0x00, 0x03, 0x07, 0x02, 0x02, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0,
        ];
        let (udh, rest) = parse_udh(&data).unwrap();
        assert!(rest.is_empty());
        assert_eq!(udh.elements.len(), 2);
        assert_eq!(udh.elements[1].iei, 0x05);
        assert_eq!(udh.concat().map(|c| c.seq), Some(2));
    }

    #[test]
    fn empty_is_missing() {
        assert_eq!(parse_udh(&[]), Err(UdhError::Missing));
    }

    #[test]
    fn udhl_past_end_is_too_long() {
        assert_eq!(
            parse_udh(&[0x05, 0x00, 0x03, 0x01]),
            Err(UdhError::TooLong {
                declared: 5,
                available: 3
            })
        );
        assert_eq!(
            parse_udh(&[0xFF]),
            Err(UdhError::TooLong {
                declared: 255,
                available: 0
            })
        );
    }

    #[test]
    fn element_past_header_is_too_long() {
        // UDHL 4 fits the data, but the element claims 3 data octets in a 4-octet header.
        assert_eq!(
            parse_udh(&[0x04, 0x00, 0x03, 0x01, 0x02, b'x', b'y']),
            Err(UdhError::TooLong {
                declared: 5,
                available: 4
            })
        );
        // An IEI with no length octet.
        assert_eq!(
            parse_udh(&[0x01, 0x00, b'x']),
            Err(UdhError::TooLong {
                declared: 2,
                available: 1
            })
        );
    }

    #[test]
    fn empty_header_and_empty_elements() {
        let (udh, rest) = parse_udh(&[0x00, b'a']).unwrap();
        assert_eq!((udh.elements.len(), udh.len, rest), (0, 1, &b"a"[..]));
        assert_eq!(udh.concat(), None);
        let (udh, rest) = parse_udh(&[0x02, 0x70, 0x00]).unwrap();
        assert_eq!(udh.elements, vec![ie(0x70, &[])]);
        assert!(rest.is_empty());
    }

    #[test]
    fn bad_concat_values_are_ignored() {
        let udh = |elements| Udh { elements, len: 0 };
        for data in [[1, 0, 0], [1, 0, 1], [1, 2, 0], [1, 2, 3]] {
            assert_eq!(udh(vec![ie(0x00, &data)]).concat(), None, "{data:?}");
        }
        assert_eq!(udh(vec![ie(0x00, &[1, 2])]).concat(), None);
        assert_eq!(udh(vec![ie(0x00, &[0, 1, 2, 1])]).concat(), None);
        assert_eq!(udh(vec![ie(0x08, &[1, 2, 1])]).concat(), None);
        assert_eq!(udh(vec![ie(0x08, &[0, 1, 2, 1, 0])]).concat(), None);
        assert_eq!(udh(vec![ie(0x05, &[0, 1, 2, 1])]).concat(), None);
        // A bad element does not hide a good one.
        let u = udh(vec![ie(0x00, &[9, 0, 1]), ie(0x08, &[0, 9, 2, 2])]);
        assert_eq!(
            u.concat(),
            Some(Concat {
                reference: 9,
                total: 2,
                seq: 2
            })
        );
        // seq == total and reference 0 are fine.
        assert_eq!(
            udh(vec![ie(0x00, &[0, 255, 255])]).concat(),
            Some(Concat {
                reference: 0,
                total: 255,
                seq: 255
            })
        );
    }

    #[test]
    fn repeated_concat_last_wins() {
        let u = Udh {
            elements: vec![ie(0x00, &[1, 2, 1]), ie(0x00, &[5, 3, 3])],
            len: 11,
        };
        assert_eq!(u.concat().map(|c| c.reference), Some(5));
    }

    #[test]
    fn build_concat_udh() {
        assert_eq!(
            concat_udh(0x2A, 3, 1, false),
            [0x05, 0x00, 0x03, 0x2A, 0x03, 0x01]
        );
        assert_eq!(
            concat_udh(0x2A, 3, 1, true),
            [0x06, 0x08, 0x04, 0x00, 0x2A, 0x03, 0x01]
        );
        assert_eq!(
            concat_udh(0x1234, 2, 2, false),
            [0x06, 0x08, 0x04, 0x12, 0x34, 0x02, 0x02]
        );
        assert_eq!(concat_udh(255, 2, 2, false).len(), 6);
        assert_eq!(concat_udh(256, 2, 2, false).len(), 7);
    }

    #[test]
    fn build_then_parse_round_trips() {
        let mut rng = fastrand::Rng::with_seed(0x0d4);
        for _ in 0..2000 {
            let reference = rng.u16(..);
            let total = rng.u8(1..);
            let seq = rng.u8(1..=total);
            let mut data = concat_udh(reference, total, seq, rng.bool());
            data.extend_from_slice(b"body");
            let (udh, rest) = parse_udh(&data).unwrap();
            assert_eq!(rest, b"body");
            assert_eq!(udh.len, data.len() - 4);
            assert_eq!(
                udh.concat(),
                Some(Concat {
                    reference,
                    total,
                    seq
                })
            );
        }
    }

    #[test]
    fn display_errors() {
        assert_eq!(
            UdhError::TooLong {
                declared: 5,
                available: 3
            }
            .to_string(),
            "user data header declares 5 octets but only 3 are present"
        );
        assert!(UdhError::Missing.to_string().contains("empty"));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x0d4_f022);
        for _ in 0..50_000 {
            let len = rng.usize(0..40);
            let mut data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Keep UDHL plausible half the time so element parsing is exercised too.
            if len > 0 && rng.bool() {
                data[0] = rng.u8(0..len as u8);
            }
            if let Ok((udh, rest)) = parse_udh(&data) {
                assert_eq!(udh.len + rest.len(), data.len());
                let element_octets: usize = udh.elements.iter().map(|e| 2 + e.data.len()).sum();
                assert_eq!(element_octets + 1, udh.len);
                if let Some(c) = udh.concat() {
                    assert!(c.seq >= 1 && c.seq <= c.total);
                }
            }
        }
    }
}
