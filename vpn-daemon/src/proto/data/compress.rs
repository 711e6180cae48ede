//! Compression framing of data-channel plaintext. We never compress; we only add and strip the
//! bytes that OpenVPN's stubs expect, and recognise really compressed packets so the caller
//! can count and drop them.
//!
//! Framings (OpenVPN comp.h, compstub.c, lzo.c, comp-lz4.c; options.c picks the variant):
//!
//! | option                                        | framing                | no-compress form          |
//! |-----------------------------------------------|------------------------|---------------------------|
//! | none                                          | [`None`]               | payload                   |
//! | `comp-lzo [yes\|no\|adaptive]`, `compress lzo` | [`LzoStub`]            | `0xFA` payload            |
//! | `compress` / `compress stub`, `compress lz4`  | [`StubV1`] ("swap")    | `0xFB` payload[1..] payload[0] |
//! | `compress stub-v2`, `compress lz4-v2`         | [`StubV2`]             | payload, or `0x50 0x00` payload if it starts with `0x50` |
//!
//! Compressed packets start with `0x66` (LZO) or `0x69` (LZ4, swap form) in the V1 framings and
//! with `0x50` followed by `0x01` (LZ4), `0x02` (LZO) or `0x03` (Snappy) in V2.
//!
//! [`None`]: CompressionFraming::None
//! [`LzoStub`]: CompressionFraming::LzoStub
//! [`StubV1`]: CompressionFraming::StubV1
//! [`StubV2`]: CompressionFraming::StubV2
use super::DataError;

/// `NO_COMPRESS_BYTE`: an uncompressed packet in the LZO framing.
pub const NO_COMPRESS_BYTE: u8 = 0xFA;
/// `NO_COMPRESS_BYTE_SWAP`: an uncompressed packet in the swap framing.
pub const NO_COMPRESS_BYTE_SWAP: u8 = 0xFB;
/// `LZO_COMPRESS_BYTE`: an LZO-compressed packet (V1 framings).
pub const LZO_COMPRESS_BYTE: u8 = 0x66;
/// `LZ4_COMPRESS_BYTE`: an LZ4-compressed packet (swap framing).
pub const LZ4_COMPRESS_BYTE: u8 = 0x69;
/// `COMP_ALGV2_INDICATOR_BYTE`: starts every V2 header.
pub const V2_INDICATOR_BYTE: u8 = 0x50;
/// `COMP_ALGV2_UNCOMPRESSED_BYTE`: V2 header of an escaped uncompressed packet.
pub const V2_UNCOMPRESSED_BYTE: u8 = 0x00;
/// What OpenVPN 2.6's `compv2_escape_data_ifneeded` actually writes after `0x50`: the
/// algorithm number `COMP_ALGV2_UNCOMPRESSED` (10) rather than the byte 0 its own decoders
/// want. We accept it on receive (it is unambiguous) and send the byte 0. Only non-IP payloads
/// (starting with `0x50`) are affected.
pub(super) const V2_UNCOMPRESSED_OPENVPN_ESCAPE: u8 = 10;
/// V2 header second bytes of compressed packets: LZ4, LZO, Snappy.
pub(super) const V2_COMPRESSED_BYTES: [u8; 3] = [0x01, 0x02, 0x03];

/// How the data-channel plaintext is framed for compression (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CompressionFraming {
    /// No compression option: the plaintext is the payload.
    #[default]
    None,
    /// `comp-lzo` (any argument) and `compress lzo`: a `0xFA` byte before the payload.
    LzoStub,
    /// `compress`, `compress stub` and `compress lz4`: `0xFB` replaces the payload's first
    /// byte, which moves to the end.
    StubV1,
    /// `compress stub-v2` and `compress lz4-v2`: the payload as is, escaped with `0x50 0x00`
    /// only when it starts with `0x50`.
    StubV2,
}

/// The payload inside a decrypted plaintext.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unframed<'a> {
    /// An uncompressed payload.
    Payload(&'a [u8]),
    /// A really compressed packet; we do not decompress.
    Compressed,
}

impl CompressionFraming {
    /// Most bytes the framing adds to a payload.
    pub const fn max_overhead(self) -> usize {
        match self {
            CompressionFraming::None => 0,
            CompressionFraming::LzoStub | CompressionFraming::StubV1 => 1,
            CompressionFraming::StubV2 => 2,
        }
    }

    /// Appends the framed `payload` to `out`. `payload` must not be empty.
    pub(crate) fn frame_into(self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            CompressionFraming::None => out.extend_from_slice(payload),
            CompressionFraming::LzoStub => {
                out.push(NO_COMPRESS_BYTE);
                out.extend_from_slice(payload);
            }
            CompressionFraming::StubV1 => {
                if let Some((&first, rest)) = payload.split_first() {
                    out.push(NO_COMPRESS_BYTE_SWAP);
                    out.extend_from_slice(rest);
                    out.push(first);
                }
            }
            CompressionFraming::StubV2 => {
                if payload.first() == Some(&V2_INDICATOR_BYTE) {
                    out.extend_from_slice(&[V2_INDICATOR_BYTE, V2_UNCOMPRESSED_BYTE]);
                }
                out.extend_from_slice(payload);
            }
        }
    }

    /// Strips the framing from a decrypted `plaintext` in place. An empty result is
    /// [`DataError::EmptyPayload`] (OpenVPN drops it).
    pub(crate) fn unframe(self, plaintext: &mut [u8]) -> Result<Unframed<'_>, DataError> {
        let payload: &[u8] = match self {
            CompressionFraming::None => plaintext,
            CompressionFraming::LzoStub => match plaintext.split_first() {
                Some((&NO_COMPRESS_BYTE, rest)) => rest,
                Some((&LZO_COMPRESS_BYTE | &LZ4_COMPRESS_BYTE, _)) => {
                    return Ok(Unframed::Compressed)
                }
                Some((&other, _)) => return Err(DataError::BadCompressionHeader(other)),
                None => &[],
            },
            CompressionFraming::StubV1 => match plaintext.split_first_mut() {
                Some((head, rest)) if *head == NO_COMPRESS_BYTE_SWAP => match rest.split_last() {
                    // The payload's first byte travelled at the end: put it back in front.
                    Some((&first, _)) => {
                        *head = first;
                        let len = plaintext.len() - 1;
                        plaintext.get(..len).unwrap_or_default()
                    }
                    None => &[],
                },
                Some((&mut (LZO_COMPRESS_BYTE | LZ4_COMPRESS_BYTE), _)) => {
                    return Ok(Unframed::Compressed)
                }
                Some((other, _)) => return Err(DataError::BadCompressionHeader(*other)),
                None => &[],
            },
            CompressionFraming::StubV2 => match plaintext {
                [V2_INDICATOR_BYTE, V2_UNCOMPRESSED_BYTE | V2_UNCOMPRESSED_OPENVPN_ESCAPE, rest @ ..] => {
                    rest
                }
                [V2_INDICATOR_BYTE, algorithm, ..] if V2_COMPRESSED_BYTES.contains(algorithm) => {
                    return Ok(Unframed::Compressed)
                }
                [V2_INDICATOR_BYTE, other, ..] => {
                    return Err(DataError::BadCompressionHeader(*other))
                }
                [V2_INDICATOR_BYTE] => &[],
                other => other,
            },
        };
        if payload.is_empty() {
            Err(DataError::EmptyPayload)
        } else {
            Ok(Unframed::Payload(payload))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [CompressionFraming; 4] = [
        CompressionFraming::None,
        CompressionFraming::LzoStub,
        CompressionFraming::StubV1,
        CompressionFraming::StubV2,
    ];

    fn framed(framing: CompressionFraming, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        framing.frame_into(payload, &mut out);
        out
    }

    #[test]
    fn wire_forms_match_openvpn_stubs() {
        let ipv4 = [0x45, 0x00, 0x00, 0x14];
        assert_eq!(framed(CompressionFraming::None, &ipv4), ipv4);
        assert_eq!(
            framed(CompressionFraming::LzoStub, &ipv4),
            [0xFA, 0x45, 0x00, 0x00, 0x14]
        );
        assert_eq!(
            framed(CompressionFraming::StubV1, &ipv4),
            [0xFB, 0x00, 0x00, 0x14, 0x45]
        );
        assert_eq!(framed(CompressionFraming::StubV2, &ipv4), ipv4);
        assert_eq!(
            framed(CompressionFraming::StubV2, &[0x50, 0x01]),
            [0x50, 0x00, 0x50, 0x01]
        );
    }

    #[test]
    fn unframe_inverts_frame() {
        for framing in ALL {
            for payload in [
                &[0x45u8][..],
                &[0x60, 1, 2, 3],
                &[0x50, 0x50],
                &[0xFB, 0xFA],
            ] {
                let mut wire = framed(framing, payload);
                assert!(wire.len() <= payload.len() + framing.max_overhead());
                assert_eq!(
                    framing.unframe(&mut wire),
                    Ok(Unframed::Payload(payload)),
                    "{framing:?} {payload:02x?}"
                );
            }
        }
    }

    #[test]
    fn compressed_packets_are_recognised() {
        let cases: [(CompressionFraming, &[u8]); 5] = [
            (CompressionFraming::LzoStub, &[0x66, 1, 2]),
            (CompressionFraming::StubV1, &[0x69, 1, 2]),
            (CompressionFraming::StubV2, &[0x50, 0x01, 1]),
            (CompressionFraming::StubV2, &[0x50, 0x02, 1]),
            (CompressionFraming::StubV2, &[0x50, 0x03, 1]),
        ];
        for (framing, wire) in cases {
            let mut wire = wire.to_vec();
            assert_eq!(framing.unframe(&mut wire), Ok(Unframed::Compressed));
        }
    }

    #[test]
    fn bad_headers_and_empty_payloads_are_errors() {
        let mut wire = vec![0x45, 1];
        assert_eq!(
            CompressionFraming::LzoStub.unframe(&mut wire),
            Err(DataError::BadCompressionHeader(0x45))
        );
        assert_eq!(
            CompressionFraming::StubV1.unframe(&mut wire),
            Err(DataError::BadCompressionHeader(0x45))
        );
        let mut wire = vec![0x50, 0x07, 1];
        assert_eq!(
            CompressionFraming::StubV2.unframe(&mut wire),
            Err(DataError::BadCompressionHeader(0x07))
        );
        for (framing, wire) in [
            (CompressionFraming::LzoStub, &[0xFA][..]),
            (CompressionFraming::StubV1, &[0xFB]),
            (CompressionFraming::StubV2, &[0x50]),
            (CompressionFraming::StubV2, &[0x50, 0x00]),
            (CompressionFraming::None, &[]),
        ] {
            let mut wire = wire.to_vec();
            assert_eq!(framing.unframe(&mut wire), Err(DataError::EmptyPayload));
        }
    }

    #[test]
    fn openvpn_escape_with_algorithm_number_is_accepted() {
        let mut wire = vec![0x50, 10, 0x50, 0xAA];
        assert_eq!(
            CompressionFraming::StubV2.unframe(&mut wire),
            Ok(Unframed::Payload(&[0x50, 0xAA][..]))
        );
    }
}
