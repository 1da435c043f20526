//! SPIFFE ID parsing never panics; an accepted ID is exactly its input and parses again; a
//! match against a pattern never panics.
#![no_main]

use arbiter_engine::identity::{SpiffeId, spiffe_match};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert!(SpiffeId::parse(id.as_str()).is_ok());
        assert!(!id.path().contains("//"));
        assert!(id.segments().iter().all(|seg| !seg.is_empty() && *seg != "." && *seg != ".."));
    }
    let mid = (0..=s.len() / 2).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    let (a, b) = s.split_at(mid);
    let _ = spiffe_match(a, b);
});
