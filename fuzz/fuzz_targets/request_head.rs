//! The request-head parser must never panic, and a parsed head must be
//! self-consistent (its length within the input, framing unambiguous).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::wire::http::{find_head_end, parse_request, BodyFraming, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let Some(end) = find_head_end(data, 0) else {
        return;
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Ok(head) = parse_request(&data[..end], &mut storage) {
        assert!(head.head_len <= end);
        assert!(head.minor <= 1);
        if head.body == BodyFraming::Chunked {
            assert!(head.header("content-length").is_none());
        }
        let _ = head.host();
    }
});
