//! Built-ins OPA users rely on that regorus lacks, added as regorus extensions.

/// Register every arbiter built-in on `engine`.
pub fn register(engine: &mut regorus::Engine) {
    let _ = engine;
}
