//! The one reading of durations and sizes in configuration: flags, `serve --config` and
//! `limits:` all parse with these two functions.

use std::time::Duration;

/// A positive duration: a number followed by `ns`, `us` (or `µs`), `ms`, `s`, `m` or `h`, as
/// Go's `time.ParseDuration` (and so OPA's configuration) writes them; a bare number is
/// seconds. `50ms`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as `50ms`"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (ns, us, ms, s, m or h)"
            ));
        }
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}` must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A positive size in bytes: `500000`, `64k`, `10MB` (powers of 1000) or `100MiB` (powers of
/// 1024), units case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as `100MiB`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        u => return Err(format!("`{s}`: unknown size unit `{u}`")),
    };
    n.checked_mul(mult)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{s}` must be a positive size"))
}

/// Serde helpers: a duration from its text, a size from a number or its text.
pub mod serde_units {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(u64),
        Text(String),
    }

    pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let n = match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => n,
            NumberOrText::Text(s) => super::parse_size(&s).map_err(serde::de::Error::custom)?,
        };
        usize::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_units() {
        for (text, want) in [
            ("50ms", Duration::from_millis(50)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("3", Duration::from_secs(3)),
            (" 10ms ", Duration::from_millis(10)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "ms", "0s", "-1s", "5 minutes", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_in_decimal_and_binary_units() {
        for (text, want) in [
            ("500000", 500_000),
            ("64k", 64_000),
            ("64KiB", 65_536),
            ("10MB", 10_000_000),
            ("100MiB", 100 << 20),
            ("1Gi", 1 << 30),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "0", "MiB", "1.5MiB", "12 parsecs"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
