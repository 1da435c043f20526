//! The time decisions are made at: the system clock, or a time frozen for the current thread.
//!
//! Decision tests (`now:` in a `*_test.yaml` case) and `arbiter replay` (each event as of its
//! own time) freeze the clock so that time-of-day rules, token expiry and certificate
//! validity decide the same way on every run. Everything on the decision path that reads the
//! time reads it here; Rego's `time.now_ns()` (on the interpreter and the RVM alike) reads
//! regorus's thread clock, which [`freeze`] sets with this one.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static FROZEN_NS: Cell<Option<i64>> = const { Cell::new(None) };
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    frozen_ns().unwrap_or_else(system_now_ns)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    now_ns().div_euclid(1_000_000_000)
}

/// The frozen time of this thread, if any.
pub fn frozen_ns() -> Option<i64> {
    FROZEN_NS.with(Cell::get)
}

fn system_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Freeze this thread's clock at `ns` until the guard is dropped (guards nest).
#[must_use = "the clock is frozen only while the guard lives"]
pub fn freeze(ns: i64) -> Frozen {
    let previous = FROZEN_NS.with(|f| f.replace(Some(ns)));
    regorus::set_thread_now_ns(Some(ns));
    Frozen { previous }
}

/// Restores the previous clock when dropped.
#[derive(Debug)]
pub struct Frozen {
    previous: Option<i64>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        FROZEN_NS.with(|f| f.set(self.previous));
        regorus::set_thread_now_ns(self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezing_nests_and_restores() {
        assert_eq!(frozen_ns(), None);
        {
            let _a = freeze(5_000_000_000);
            assert_eq!(now_secs(), 5);
            {
                let _b = freeze(7);
                assert_eq!(now_ns(), 7);
            }
            assert_eq!(now_ns(), 5_000_000_000);
        }
        assert_eq!(frozen_ns(), None);
        assert!(now_secs() > 1_700_000_000);
    }
}
