//! Config text of any shape must load to a `Config` or to an error that
//! names where it is: a line within the text, except the few errors about
//! the file as a whole (nothing to listen on, no registry). Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::config::Config;

/// The errors that are about the whole file, not one line of it.
const WHOLE_FILE: [&str; 2] = [
    "no listener: set `listen` or add a [[tls_listener]]",
    "no [[registry]] configured",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `password_file` is the one setting that reads a file while parsing:
    // a fuzzer-chosen path (`/dev/zero`) would test the machine, not us.
    if text.contains("password_file") {
        return;
    }
    if let Err(e) = Config::parse(text) {
        match e.line {
            Some(line) => {
                let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
                assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
            }
            None => assert!(WHOLE_FILE.contains(&e.message.as_str()), "no line: {e}"),
        }
    }
});
