//! The PROXY header scanner must never panic, must say where a header ends
//! within the input, must not depend on the bytes after it, and must wait
//! (Incomplete) on any shorter beginning of a header it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::wire::proxy_protocol::{scan, Scan};

fuzz_target!(|data: &[u8]| {
    let Ok(Scan::Header(h)) = scan(data) else {
        return;
    };
    assert!(h.len <= data.len());
    assert_eq!(scan(&data[..h.len]), Ok(Scan::Header(h)));
    for cut in [h.len - 1, h.len / 2, 1] {
        if cut < h.len {
            assert_eq!(scan(&data[..cut]), Ok(Scan::Incomplete), "{cut} of {}", h.len);
        }
    }
});
