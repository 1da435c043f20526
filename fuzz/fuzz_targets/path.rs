//! Path canonicalization (reliability.md §3 A16): never panics; an accepted path never holds
//! `//`, `.` or `..` segments, an encoded `/`, `\` or NUL, `#` or `\`; canonicalizing the
//! result again gives the same result.
#![no_main]

use arbiter_engine::path::{PathPolicy, canonicalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = canonicalize(s, PathPolicy::Lenient);
    // The empty target is CONNECT's (no path); input building refuses it for other methods.
    if s.is_empty() {
        return;
    }
    if let Ok(c) = canonicalize(s, PathPolicy::Strict) {
        assert!(c.path.starts_with('/'), "{c:?}");
        assert!(!c.path.contains("//"), "{c:?}");
        assert!(c.segments().all(|seg| seg != "." && seg != ".."), "{c:?}");
        assert_eq!(c.segments().count(), c.segment_count());
        assert!(!c.path.contains('\\') && !c.path.contains('#') && !c.path.contains('\0'));
        // Idempotent: the canonical path, written back as a request target (non-ASCII bytes
        // percent-encoded, as a client must send them), canonicalizes to the same segments. It
        // may hold `%` only as decoded text, which canonicalize would read again, so paths
        // with `%` are skipped.
        if !c.path.contains('%') {
            let mut target = String::new();
            for b in c.path.bytes() {
                if b.is_ascii() {
                    target.push(char::from(b));
                } else {
                    target.push_str(&format!("%{b:02X}"));
                }
            }
            let again = canonicalize(&target, PathPolicy::Strict).expect("a canonical path is accepted");
            assert!(again.segments().eq(c.segments()));
        }
    }
});
