//! TCP framing on arbitrary streams: no panics, the buffer stays bounded, and the frames and
//! error reported do not depend on how the stream is chunked. The first three input bytes pick
//! the frame limit and the chunk size.
#![no_main]

use std::num::NonZeroU16;

use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::framing::{FrameDecoder, FramingError};

fn decode(
    max: NonZeroU16,
    stream: &[u8],
    chunk_size: usize,
) -> (Vec<Vec<u8>>, Option<FramingError>) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for mut chunk in stream.chunks(chunk_size) {
        while !chunk.is_empty() {
            let taken = decoder.push(chunk);
            assert!(decoder.buffered() <= decoder.capacity());
            chunk = &chunk[taken..];
            while let Some(frame) = decoder.next_frame() {
                match frame {
                    Ok(frame) => frames.push(frame.to_vec()),
                    Err(error) => return (frames, Some(error)),
                }
            }
            assert!(taken > 0 || chunk.is_empty(), "decoder stalled");
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let [a, b, c, stream @ ..] = data else {
        return;
    };
    let max = NonZeroU16::new(u16::from_be_bytes([*a, *b])).unwrap_or(NonZeroU16::MAX);
    let chunk_size = usize::from(*c).max(1);
    let whole = decode(max, stream, stream.len().max(1));
    assert_eq!(decode(max, stream, chunk_size), whole);
});
