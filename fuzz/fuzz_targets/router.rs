//! Route classification of arbitrary targets must never panic, and every
//! name it accepts must satisfy the grammar again on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::wire::names::{Reference, RepoName};
use ocirelay::route::classify::{classify, split_target, Route};
use ocirelay::wire::method::Method;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, _query) = split_target(target);
    for method in ["GET", "HEAD", "POST"] {
        match classify(Method::parse(method), path) {
            Route::Manifest { repo, reference } => {
                assert!(RepoName::parse(repo.as_str()).is_ok());
                assert!(Reference::parse(reference.as_str()).is_ok());
                assert!(path.ends_with(reference.as_str()));
            }
            Route::Blob { repo, digest } | Route::Referrers { repo, digest } => {
                assert!(RepoName::parse(repo.as_str()).is_ok());
                assert!(path.ends_with(digest.as_str()));
            }
            Route::Tags { repo } => assert!(RepoName::parse(repo.as_str()).is_ok()),
            _ => {}
        }
    }
});
