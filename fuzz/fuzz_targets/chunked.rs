//! The chunked decoder must never panic, must not consume past the input,
//! and must decode the same payload however the input is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::wire::http::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    let mut whole = Vec::new();
    let mut d = ChunkedDecoder::new();
    let r1 = d.feed(data, |s| whole.extend_from_slice(s));
    if let Ok(n) = r1 {
        assert!(n <= data.len());
        let mut split = Vec::new();
        let mut d2 = ChunkedDecoder::new();
        let mid = data.len() / 2;
        let a = d2.feed(&data[..mid], |s| split.extend_from_slice(s)).unwrap();
        if a == mid && !d2.is_done() {
            let _ = d2.feed(&data[mid..], |s| split.extend_from_slice(s));
        }
        assert_eq!(whole, split);
    }
});
