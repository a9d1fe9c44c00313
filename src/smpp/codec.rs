//! Framing by command_length: turns the bytes of an SMPP connection into whole PDUs.
//!
//! Why our own codec rather than rusmpp's `CommandCodec`: that one decodes the body too and ends
//! the stream on the first error, and a carrier that redelivers the same bad PDU after every
//! reconnect would keep us in a reconnect loop. Here framing only cuts frames; a frame whose
//! body is bad is still a frame (the session answers it with `pdu::error_response` and stays
//! bound), and a bad command_length is a value, [`Frame::BadLength`], not a stream error.
//!
//! There is no `Encoder`: the session writes `pdu::encode_to_bytes` output itself, which keeps
//! encoding out of the write half's locking and lets it batch writes as it likes.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// The longest PDU we accept, header included. SMPP sets no limit; 64 KiB holds the largest
/// message_payload (65535 octets is the TLV limit) of any sane PDU, and bounds what one peer can
/// make us buffer.
pub const MAX_PDU_LEN: usize = 65_536;

/// Octets in a PDU header; command_length can never be smaller.
const HEADER_LEN: usize = 16;

/// One unit of input from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole PDU, header included.
    Pdu(Bytes),
    /// command_length was < 16 or > MAX_PDU_LEN: the session answers generic_nack
    /// ESME_RINVCMDLEN with this sequence number and stays bound.
    BadLength {
        command_length: u32,
        command_id: u32,
        sequence_number: u32,
    },
}

/// Cuts frames by command_length (SMPP 3.4 section 3.2). Stateless: everything it needs is in
/// the buffer, so it never loses its place across reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

/// True when `buffered` already holds the next frame whole, so that [`FrameCodec`] yields it
/// without reading more. The session flushes its replies when this is false: a peer may wait
/// for them before it sends the rest of a PDU whose first octets are already here.
pub fn holds_frame(buffered: &[u8]) -> bool {
    if buffered.len() < HEADER_LEN {
        return false;
    }
    let len = word(buffered, 0) as usize;
    // A bad length is a frame of its own (`Frame::BadLength`), yielded at once.
    !(HEADER_LEN..=MAX_PDU_LEN).contains(&len) || buffered.len() >= len
}

/// The big-endian u32 at `at`; the caller has checked that 16 octets are buffered.
fn word(src: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]])
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let command_length = word(src, 0);
        let command_id = word(src, 4);
        let sequence_number = word(src, 12);
        let bad = Frame::BadLength {
            command_length,
            command_id,
            sequence_number,
        };
        let len = command_length as usize;
        if len < HEADER_LEN {
            // Only the header can be the PDU's: drop those 16 octets. If the peer's next PDU
            // follows them, the stream is back in step.
            src.advance(HEADER_LEN);
            return Ok(Some(bad));
        }
        if len > MAX_PDU_LEN {
            // We will not buffer that much, and the length cannot be trusted to skip by either
            // (a garbage length of 4 GiB would swallow the session), so there is no telling
            // where the next PDU starts. Drop what is buffered and read on: the next read most
            // likely starts at a PDU the peer sends after our generic_nack.
            src.clear();
            return Ok(Some(bad));
        }
        if src.len() < len {
            // Make room for the rest of this PDU in one go instead of growing per read.
            src.reserve(len - src.len());
            return Ok(None);
        }
        Ok(Some(Frame::Pdu(src.split_to(len).freeze())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        // The default turns a partial frame at EOF into an error; a peer that hangs up mid-PDU
        // is an ordinary disconnect, and the partial PDU has nothing to answer.
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                if !src.is_empty() {
                    tracing::debug!(octets = src.len(), "partial PDU dropped at end of stream");
                    src.clear();
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(id: u32, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&((16 + body.len()) as u32).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn header_with_length(command_length: u32, id: u32, seq: u32) -> Vec<u8> {
        let mut f = pdu(id, seq, &[]);
        f[..4].copy_from_slice(&command_length.to_be_bytes());
        f
    }

    fn all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(buf).expect("never errs") {
            out.push(frame);
        }
        out
    }

    #[test]
    fn frame_fed_one_byte_at_a_time() {
        let first = pdu(0x0000_0005, 1, b"a deliver_sm body of some length");
        let second = pdu(0x0000_0015, 2, &[]);
        let stream: Vec<u8> = first.iter().chain(&second).copied().collect();
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &b in &stream {
            buf.extend_from_slice(&[b]);
            frames.extend(all(&mut codec, &mut buf));
        }
        assert_eq!(
            frames,
            vec![
                Frame::Pdu(Bytes::from(first)),
                Frame::Pdu(Bytes::from(second))
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn two_pdus_in_one_buffer() {
        let a = pdu(0x0000_0015, 7, &[]);
        let b = pdu(0x8000_0005, 8, b"\0");
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        buf.extend_from_slice(&[0, 0]); // the start of a third
        let frames = all(&mut FrameCodec, &mut buf);
        assert_eq!(
            frames,
            vec![Frame::Pdu(Bytes::from(a)), Frame::Pdu(Bytes::from(b))]
        );
        assert_eq!(&buf[..], &[0, 0]);
    }

    #[test]
    fn small_bad_length_then_good_pdu() {
        let good = pdu(0x0000_0015, 10, &[]);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&header_with_length(8, 0x0000_0005, 9));
        buf.extend_from_slice(&good);
        let frames = all(&mut FrameCodec, &mut buf);
        assert_eq!(
            frames,
            vec![
                Frame::BadLength {
                    command_length: 8,
                    command_id: 5,
                    sequence_number: 9
                },
                Frame::Pdu(Bytes::from(good)),
            ]
        );
    }

    #[test]
    fn huge_bad_length_drops_the_buffer_and_carries_on() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&header_with_length(0xFFFF_FFF0, 0x0000_0004, 12));
        buf.extend_from_slice(&[0xAB; 100]);
        let frames = all(&mut FrameCodec, &mut buf);
        assert_eq!(
            frames,
            vec![Frame::BadLength {
                command_length: 0xFFFF_FFF0,
                command_id: 4,
                sequence_number: 12
            }]
        );
        assert!(buf.is_empty());
        // The next PDU the peer sends frames normally.
        let good = pdu(0x0000_0015, 13, &[]);
        buf.extend_from_slice(&good);
        assert_eq!(
            all(&mut FrameCodec, &mut buf),
            vec![Frame::Pdu(Bytes::from(good))]
        );
    }

    #[test]
    fn max_length_is_accepted_and_one_more_is_not() {
        let body = vec![0u8; MAX_PDU_LEN - 16];
        let mut buf = BytesMut::from(&pdu(0x0000_0005, 1, &body)[..]);
        assert!(matches!(
            FrameCodec.decode(&mut buf),
            Ok(Some(Frame::Pdu(b))) if b.len() == MAX_PDU_LEN
        ));
        let mut buf = BytesMut::from(&header_with_length(MAX_PDU_LEN as u32 + 1, 5, 2)[..]);
        assert!(matches!(
            FrameCodec.decode(&mut buf),
            Ok(Some(Frame::BadLength { .. }))
        ));
    }

    #[test]
    fn holds_frame_says_whether_decode_yields_without_more_input() {
        // Every prefix of a stream of good and bad frames: holds_frame agrees with decode.
        let mut stream = pdu(0x0000_0005, 1, b"a body");
        stream.extend(header_with_length(8, 5, 2));
        stream.extend(header_with_length(MAX_PDU_LEN as u32 + 1, 5, 3));
        for end in 0..=stream.len() {
            for start in 0..end {
                let buffered = &stream[start..end];
                let mut buf = BytesMut::from(buffered);
                let yields = FrameCodec.decode(&mut buf).expect("never errs").is_some();
                assert_eq!(holds_frame(buffered), yields, "octets {start}..{end}");
            }
        }
        assert!(!holds_frame(&[]));
    }

    #[test]
    fn partial_pdu_at_eof_is_not_an_error() {
        let mut buf = BytesMut::from(&pdu(0x0000_0005, 1, b"body")[..10]);
        assert_eq!(FrameCodec.decode_eof(&mut buf).expect("no error"), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let a = pdu(0x0000_0015, 1, b"xyz");
        let mut buf = BytesMut::from(&a[..]);
        let before = buf.as_ptr();
        let Some(Frame::Pdu(frame)) = FrameCodec.decode(&mut buf).expect("ok") else {
            panic!("no frame");
        };
        assert_eq!(frame.as_ptr(), before, "split_to().freeze(), no copy");
    }
}
