//! The request-head parser must never panic, and a parsed head must be
//! self-consistent (its length within the input, framing unambiguous).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::wire::http::{parse_request, BodyFraming, HeadScanner, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(end)) = HeadScanner::new().scan(data) else {
        return;
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Ok(head) = parse_request(&data[..end], &mut storage) {
        assert_eq!(head.head_len, end);
        assert!(head.minor <= 1);
        if head.body == BodyFraming::Chunked {
            assert!(head.header("content-length").is_none());
        }
        let _ = head.host();
    }
});
