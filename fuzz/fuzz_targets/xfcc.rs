//! `x-forwarded-client-cert` parsing never panics, and every accepted element has keys.
#![no_main]

use arbiter_engine::identity::xfcc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(elements) = xfcc::parse(s) {
        assert!(!elements.is_empty());
        for el in elements {
            for (k, v) in el {
                assert!(!v.is_empty(), "{k}");
                assert_eq!(k, k.to_ascii_lowercase());
            }
        }
    }
});
