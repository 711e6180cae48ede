//! OpenVPN over TCP: each packet is preceded by its length as a 16-bit big-endian integer.
//!
//! ```text
//! | len (2, BE) | packet (len bytes) | len (2, BE) | packet ... |
//! ```
//!
//! OpenVPN (socket.c `stream_buf_added`) refuses a length of 0 or above its buffer size and
//! then restarts the connection: a TCP stream cannot be resynchronised after a bad length, so
//! neither can [`FrameDecoder`]. The format caps a frame at 65535 bytes; OpenVPN's real limit
//! is its link buffer (about tun MTU plus protocol overhead), so the limit is a parameter here.

use std::num::NonZeroU16;

/// Size of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 2;
/// Largest frame the 16-bit length prefix can describe.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// Why a TCP stream could not be framed. Fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A length prefix of zero (OpenVPN treats it as an attack or desync).
    #[error("zero-length frame in TCP stream")]
    ZeroLength,
    /// A frame longer than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The frame's length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
}

/// Incremental decoder for the TCP byte stream, with a bounded buffer of
/// `2 + max_frame_len` bytes: always room for one whole frame, never more.
///
/// Feed bytes with [`push`](Self::push), which takes as many as fit, then drain frames with
/// [`next_frame`](Self::next_frame) until it returns `None`, and push the rest:
///
/// ```
/// # use vpn_daemon::proto::framing::FrameDecoder;
/// let mut decoder = FrameDecoder::default();
/// let mut chunk: &[u8] = &[0, 2, 0xaa, 0xbb, 0, 1];
/// let mut frames = Vec::new();
/// while !chunk.is_empty() {
///     let taken = decoder.push(chunk);
///     chunk = &chunk[taken..];
///     while let Some(frame) = decoder.next_frame() {
///         frames.push(frame.unwrap().to_vec());
///     }
/// }
/// assert_eq!(frames, [vec![0xaa, 0xbb]]);
/// assert_eq!(decoder.buffered(), 2); // a partial frame waits for more bytes
/// ```
///
/// After an error the decoder stays failed: `next_frame` repeats the error and `push` takes
/// nothing. Close the connection.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// Received bytes; the undelivered ones are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    max_frame_len: usize,
    failed: Option<FramingError>,
}

impl Default for FrameDecoder {
    /// A decoder accepting frames up to the format's cap of 65535 bytes.
    fn default() -> Self {
        FrameDecoder::new(NonZeroU16::MAX)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame_len`.
    pub fn new(max_frame_len: NonZeroU16) -> Self {
        let max_frame_len = usize::from(max_frame_len.get());
        FrameDecoder {
            buf: Vec::with_capacity(LENGTH_PREFIX_LEN + max_frame_len),
            start: 0,
            max_frame_len,
            failed: None,
        }
    }

    /// The frame-length limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The most bytes the decoder holds at once.
    pub fn capacity(&self) -> usize {
        LENGTH_PREFIX_LEN + self.max_frame_len
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether a framing error has ended this stream.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Appends as much of `chunk` as the buffer has room for and returns how many bytes it
    /// took. It takes fewer than offered only while a whole frame is waiting to be drained with
    /// [`next_frame`](Self::next_frame), and nothing once the decoder has failed.
    #[must_use = "bytes not taken must be pushed again after draining frames"]
    pub fn push(&mut self, chunk: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let room = self.capacity() - self.buffered();
        let taken = chunk.len().min(room);
        if self.buf.len() + taken > self.capacity() {
            // Move the undelivered bytes to the front instead of growing past the bound.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf
            .extend_from_slice(chunk.get(..taken).unwrap_or_default());
        taken
    }

    /// The next complete frame (without its length prefix), `None` if more bytes are needed,
    /// or the error that ended the stream.
    pub fn next_frame(&mut self) -> Option<Result<&[u8], FramingError>> {
        if let Some(error) = &self.failed {
            return Some(Err(error.clone()));
        }
        let prefix = self
            .buf
            .get(self.start..)?
            .first_chunk::<LENGTH_PREFIX_LEN>()?;
        let len = usize::from(u16::from_be_bytes(*prefix));
        let error = if len == 0 {
            Some(FramingError::ZeroLength)
        } else if len > self.max_frame_len {
            Some(FramingError::TooLong {
                len,
                max: self.max_frame_len,
            })
        } else {
            None
        };
        if let Some(error) = error {
            self.failed = Some(error.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Some(Err(error));
        }
        let frame_start = self.start + LENGTH_PREFIX_LEN;
        let frame_end = frame_start + len;
        if self.buf.len() < frame_end {
            return None;
        }
        self.start = frame_end;
        self.buf.get(frame_start..frame_end).map(Ok)
    }
}

/// The length prefix for a frame of `frame_len` bytes (for vectored writes).
pub fn length_prefix(frame_len: usize) -> Result<[u8; LENGTH_PREFIX_LEN], FramingError> {
    if frame_len == 0 {
        return Err(FramingError::ZeroLength);
    }
    let len = u16::try_from(frame_len).map_err(|_| FramingError::TooLong {
        len: frame_len,
        max: MAX_FRAME_LEN,
    })?;
    Ok(len.to_be_bytes())
}

/// Appends `packet` with its length prefix to `out`.
pub fn encode_frame(packet: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    let prefix = length_prefix(packet.len())?;
    out.reserve(LENGTH_PREFIX_LEN + packet.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(packet);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limit(max: u16) -> NonZeroU16 {
        NonZeroU16::new(max).expect("test limits are non-zero")
    }

    /// Feeds `stream` in chunks of the given sizes (cycled), draining after every push, and
    /// returns the frames and the error that stopped decoding, if any.
    fn decode_chunked(
        decoder: &mut FrameDecoder,
        stream: &[u8],
        chunk_sizes: &[usize],
    ) -> (Vec<Vec<u8>>, Option<FramingError>) {
        let mut frames = Vec::new();
        let mut rest = stream;
        let mut sizes = chunk_sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            let mut chunk = &rest[..size];
            rest = &rest[size..];
            while !chunk.is_empty() {
                let taken = decoder.push(chunk);
                chunk = &chunk[taken..];
                while let Some(frame) = decoder.next_frame() {
                    match frame {
                        Ok(frame) => frames.push(frame.to_vec()),
                        Err(error) => return (frames, Some(error)),
                    }
                }
                if taken == 0 && !chunk.is_empty() {
                    panic!("decoder took nothing with no frame to drain");
                }
            }
        }
        (frames, None)
    }

    #[test]
    fn known_stream_with_two_frames() {
        let stream = [0x00, 0x03, 0x38, 0x01, 0x02, 0x00, 0x01, 0x2a];
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.push(&stream), stream.len());
        assert_eq!(decoder.next_frame(), Some(Ok(&[0x38, 0x01, 0x02][..])));
        assert_eq!(decoder.next_frame(), Some(Ok(&[0x2a][..])));
        assert_eq!(decoder.next_frame(), None);
        assert_eq!(decoder.buffered(), 0);

        let mut encoded = Vec::new();
        encode_frame(&[0x38, 0x01, 0x02], &mut encoded).unwrap();
        encode_frame(&[0x2a], &mut encoded).unwrap();
        assert_eq!(encoded, stream);
    }

    #[test]
    fn partial_prefix_and_partial_body_wait_for_more() {
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.push(&[0x00]), 1);
        assert_eq!(decoder.next_frame(), None);
        assert_eq!(decoder.push(&[0x02, 0xaa]), 2);
        assert_eq!(decoder.next_frame(), None);
        assert_eq!(decoder.buffered(), 3);
        assert_eq!(decoder.push(&[0xbb]), 1);
        assert_eq!(decoder.next_frame(), Some(Ok(&[0xaa, 0xbb][..])));
    }

    #[test]
    fn zero_length_frame_is_fatal() {
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.push(&[0x00, 0x00, 0x00, 0x01, 0xff]), 5);
        assert_eq!(decoder.next_frame(), Some(Err(FramingError::ZeroLength)));
        // The stream cannot be resynchronised: the error sticks.
        assert!(decoder.is_failed());
        assert_eq!(decoder.next_frame(), Some(Err(FramingError::ZeroLength)));
        assert_eq!(decoder.push(&[0x00, 0x01, 0xff]), 0);
    }

    #[test]
    fn frame_over_limit_is_refused_before_its_body_arrives() {
        let mut decoder = FrameDecoder::new(limit(1500));
        assert_eq!(decoder.push(&1501u16.to_be_bytes()), 2);
        assert_eq!(
            decoder.next_frame(),
            Some(Err(FramingError::TooLong {
                len: 1501,
                max: 1500
            }))
        );
    }

    #[test]
    fn frame_at_limit_is_accepted() {
        let mut decoder = FrameDecoder::new(limit(1500));
        let mut stream = Vec::new();
        encode_frame(&[7u8; 1500], &mut stream).unwrap();
        assert_eq!(decoder.push(&stream), 1502);
        assert_eq!(decoder.next_frame().unwrap().unwrap().len(), 1500);
    }

    #[test]
    fn buffer_is_bounded() {
        let mut decoder = FrameDecoder::new(limit(4));
        assert_eq!(decoder.capacity(), 6);
        let stream = [0, 4, 1, 2, 3, 4, 0, 1, 9];
        // Only one maximal frame fits; the rest is refused until it is drained.
        assert_eq!(decoder.push(&stream), 6);
        assert_eq!(decoder.push(&stream[6..]), 0);
        assert_eq!(decoder.next_frame(), Some(Ok(&[1, 2, 3, 4][..])));
        assert_eq!(decoder.push(&stream[6..]), 3);
        assert_eq!(decoder.next_frame(), Some(Ok(&[9][..])));
        assert!(decoder.buf.len() <= decoder.capacity());
    }

    #[test]
    fn compaction_keeps_a_partial_frame() {
        let mut decoder = FrameDecoder::new(limit(4));
        assert_eq!(decoder.push(&[0, 1, 5, 0, 3, 6]), 6);
        assert_eq!(decoder.next_frame(), Some(Ok(&[5][..])));
        assert_eq!(decoder.next_frame(), None);
        // Three bytes are pending, `start` is 3; this push must compact, not overflow.
        assert_eq!(decoder.push(&[7, 8, 0]), 3);
        assert_eq!(decoder.next_frame(), Some(Ok(&[6, 7, 8][..])));
        assert_eq!(decoder.buffered(), 1);
    }

    #[test]
    fn encoder_limits() {
        assert_eq!(length_prefix(0), Err(FramingError::ZeroLength));
        assert_eq!(length_prefix(65535), Ok([0xff, 0xff]));
        assert_eq!(
            length_prefix(65536),
            Err(FramingError::TooLong {
                len: 65536,
                max: 65535
            })
        );
        let mut out = vec![0xee];
        assert_eq!(encode_frame(&[], &mut out), Err(FramingError::ZeroLength));
        assert_eq!(out, [0xee]);
    }

    fn any_frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 0..20)
    }

    proptest! {
        /// However the stream is chunked, the decoder yields the frames that were encoded.
        #[test]
        fn same_frames_however_chunked(
            frames in any_frames(),
            chunk_sizes in prop::collection::vec(1usize..300, 1..20),
            max in 199u16..=1000,
        ) {
            let mut stream = Vec::new();
            for frame in &frames {
                encode_frame(frame, &mut stream).unwrap();
            }
            let mut decoder = FrameDecoder::new(limit(max));
            let (decoded, error) = decode_chunked(&mut decoder, &stream, &chunk_sizes);
            prop_assert_eq!(error, None);
            prop_assert_eq!(decoded, frames);
            prop_assert_eq!(decoder.buffered(), 0);
        }

        /// On arbitrary bytes the decoder never panics, never holds more than its bound, and
        /// the frames and error it reports do not depend on chunking.
        #[test]
        fn arbitrary_stream_is_chunking_independent(
            stream in prop::collection::vec(any::<u8>(), 0..600),
            chunk_sizes in prop::collection::vec(1usize..64, 1..10),
            max in 1u16..=300,
        ) {
            let mut whole = FrameDecoder::new(limit(max));
            let expected = decode_chunked(&mut whole, &stream, &[stream.len().max(1)]);
            let mut chunked = FrameDecoder::new(limit(max));
            let got = decode_chunked(&mut chunked, &stream, &chunk_sizes);
            prop_assert!(chunked.buffered() <= chunked.capacity());
            prop_assert_eq!(got, expected);
        }
    }
}
