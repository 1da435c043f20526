// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.
#![allow(
    clippy::as_conversions,
    clippy::unused_trait_names,
    clippy::pattern_type_mismatch
)]
use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{ensure_args_count, ensure_numeric, ensure_string};
use crate::lexer::Span;
use crate::value::Value;
use crate::*;

use anyhow::{bail, Result};

use chrono::{
    DateTime, Datelike, FixedOffset, Local, SecondsFormat, TimeZone, Timelike, Utc, Weekday,
};
use chrono_tz::Tz;

pub(in crate::builtins) mod compat;
mod diff;

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("time.add_date", (add_date, 4));
    m.insert("time.clock", (clock, 1));
    m.insert("time.date", (date, 1));
    m.insert("time.diff", (diff, 2));
    m.insert("time.format", (format, 1));
    m.insert("time.now_ns", (now_ns, 0));
    m.insert("time.parse_duration_ns", (parse_duration_ns, 1));
    m.insert("time.parse_ns", (parse_ns, 2));
    m.insert("time.parse_rfc3339_ns", (parse_rfc3339_ns, 1));
    m.insert("time.weekday", (weekday, 1));
}

fn add_date(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "time.add_date";
    ensure_args_count(span, name, params, args, 4)?;

    let (datetime, _) = parse_epoch(name, &params[0], &args[0])?;
    let years = ensure_i32(name, &params[1], &args[1])?;
    let months = ensure_i32(name, &params[2], &args[2])?;
    let days = ensure_i32(name, &params[3], &args[3])?;

    // arbiter patch 22: Go's `AddDate` (OPA's) normalises instead of clamping: the month
    // carries into the year, and the day counts from the first of that month, so Jan 31 plus a
    // month is Mar 3 (Mar 2 in a leap year) and Feb 29 plus a year is Mar 1.
    let year = i64::from(datetime.year()) + i64::from(years);
    let month0 = i64::from(datetime.month0()) + i64::from(months);
    let day = i64::from(datetime.day()) + i64::from(days);
    let year = year + month0.div_euclid(12);
    let month = month0.rem_euclid(12) as u32 + 1;
    let date = i32::try_from(year)
        .ok()
        .and_then(|y| chrono::NaiveDate::from_ymd_opt(y, month, 1))
        .and_then(|first| first.checked_add_signed(chrono::TimeDelta::try_days(day - 1)?));
    date.map(|d| d.and_time(datetime.time()))
        .and_then(|local| datetime.offset().from_local_datetime(&local).single())
        .map_or(Ok(Value::Undefined), |d| {
            safe_timestamp_nanos(span, strict, d.timestamp_nanos_opt())
        })
}

fn clock(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.clock";
    ensure_args_count(span, name, params, args, 1)?;

    let (datetime, _) = parse_epoch(name, &params[0], &args[0])?;

    Ok(Vec::from([
        (datetime.hour() as u64).into(),
        (datetime.minute() as u64).into(),
        (datetime.second() as u64).into(),
    ])
    .into())
}

fn date(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.date";
    ensure_args_count(span, name, params, args, 1)?;

    let (datetime, _) = parse_epoch(name, &params[0], &args[0])?;

    Ok(Vec::from([
        (datetime.year() as u64).into(),
        (datetime.month() as u64).into(),
        (datetime.day() as u64).into(),
    ])
    .into())
}

fn diff(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.diff";
    ensure_args_count(span, name, params, args, 2)?;

    let (datetime1, _) = parse_epoch(name, &params[0], &args[0])?;
    let (datetime2, _) = parse_epoch(name, &params[1], &args[1])?;

    let (year, month, day, hour, min, sec) = diff::diff_between_datetimes(datetime1, datetime2)?;

    Ok(Vec::from([
        (year as i64).into(),
        (month as i64).into(),
        (day as i64).into(),
        (hour as i64).into(),
        (min as i64).into(),
        (sec as i64).into(),
    ])
    .into())
}

fn format(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.format";
    ensure_args_count(span, name, params, args, 1)?;

    let (datetime, format, zone) = parse_epoch_zoned(name, &params[0], &args[0])?;

    let result = match format {
        // arbiter patch 22: Go writes the zone's abbreviation for `MST` (`UTC`, `JST`, `CET`);
        // chrono knows only the offset here, so the abbreviation goes in after formatting.
        Some(format) => match zone.abbreviation(&datetime) {
            Some(abbr) => {
                let layout = layout_with_predefined_formats(&format).replace("MST", "\u{E000}");
                compat::format(datetime, &layout).replace('\u{E000}', &abbr)
            }
            None => compat::format(datetime, layout_with_predefined_formats(&format)),
        },
        None => datetime.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    };

    Ok(Value::String(result.into()))
}

std::thread_local! {
    static FROZEN_NOW_NS: core::cell::Cell<Option<i64>> = const { core::cell::Cell::new(None) };
}

/// Freeze `time.now_ns()` on this thread at `ns` (`None`: the system clock again), for the
/// interpreter and the RVM alike; returns the previous setting. (arbiter patch: decisions
/// replayed or tested as of a given time.)
pub fn set_thread_now_ns(ns: Option<i64>) -> Option<i64> {
    FROZEN_NOW_NS.with(|f| f.replace(ns))
}

fn now_ns(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "time.now_ns";
    ensure_args_count(span, name, params, args, 0)?;

    let frozen = FROZEN_NOW_NS.with(core::cell::Cell::get);
    safe_timestamp_nanos(
        span,
        strict,
        frozen.or_else(|| Utc::now().timestamp_nanos_opt()),
    )
}

fn parse_duration_ns(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "time.parse_duration_ns";
    ensure_args_count(span, name, params, args, 1)?;

    let value = ensure_string(name, &params[0], &args[0])?;
    let dur = compat::parse_duration(value.as_ref()).map_err(anyhow::Error::msg)?;
    safe_timestamp_nanos(span, strict, dur.num_nanoseconds())
}

fn parse_ns(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "time.parse_ns";
    ensure_args_count(span, name, params, args, 2)?;

    let layout = ensure_string(name, &params[0], &args[0])?;
    let value = ensure_string(name, &params[1], &args[1])?;

    let datetime = compat::parse(layout_with_predefined_formats(&layout), &value)
        .map_err(|err| anyhow::anyhow!("Failed to parse datetime: {}", err))?;
    safe_timestamp_nanos(span, strict, datetime.timestamp_nanos_opt())
}

fn parse_rfc3339_ns(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "time.parse_rfc3339_ns";
    ensure_args_count(span, name, params, args, 1)?;

    let value = ensure_string(name, &params[0], &args[0])?;

    let datetime = DateTime::parse_from_rfc3339(&value)
        .map_err(|err| anyhow::anyhow!("Failed to parse datetime: {}", err))?;
    safe_timestamp_nanos(span, strict, datetime.timestamp_nanos_opt())
}

fn weekday(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "time.weekday";
    ensure_args_count(span, name, params, args, 1)?;

    let (datetime, _) = parse_epoch(name, &params[0], &args[0])?;

    let weekday = match datetime.weekday() {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    };

    Ok(Value::String(weekday.into()))
}

fn ensure_i32(name: &str, arg: &Expr, v: &Value) -> Result<i32> {
    ensure_numeric(name, arg, v)?
        .as_i64()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| arg.span().error("could not convert to int32"))
}

fn safe_timestamp_nanos(span: &Span, strict: bool, nanos: Option<i64>) -> Result<Value> {
    match nanos {
        Some(ns) => Ok(Value::Number(ns.into())),
        None if strict => {
            bail!(span.error("time outside of valid range"))
        }
        None => Ok(Value::Undefined),
    }
}

fn parse_epoch(
    fcn: &str,
    arg: &Expr,
    val: &Value,
) -> Result<(DateTime<FixedOffset>, Option<String>)> {
    let (datetime, format, _) = parse_epoch_zoned(fcn, arg, val)?;
    Ok((datetime, format))
}

/// The zone an `ns` operand names (arbiter patch 22: `time.format` writes its abbreviation).
#[derive(Clone, Copy)]
enum Zone {
    Utc,
    Local,
    Named(Tz),
}

/// [`parse_epoch`], and the zone the operand names.
fn parse_epoch_zoned(
    fcn: &str,
    arg: &Expr,
    val: &Value,
) -> Result<(DateTime<FixedOffset>, Option<String>, Zone)> {
    match val {
        Value::Number(num) => {
            let ns = num
                .as_i64()
                .ok_or_else(|| arg.span().error("timestamp too big"))?;

            return Ok((Utc.timestamp_nanos(ns).fixed_offset(), None, Zone::Utc));
        }

        Value::Array(arr) => match arr.as_slice() {
            [Value::Number(num)] => {
                let ns = num
                    .as_i64()
                    .ok_or_else(|| arg.span().error("timestamp too big"))?;

                return Ok((Utc.timestamp_nanos(ns).fixed_offset(), None, Zone::Utc));
            }
            [Value::Number(num), Value::String(tz), rest @ ..] => {
                let ns = num
                    .as_i64()
                    .ok_or_else(|| arg.span().error("timestamp too big"))?;

                let (datetime, zone) = match tz.as_ref() {
                    "UTC" | "" => (Utc.timestamp_nanos(ns).fixed_offset(), Zone::Utc),
                    "Local" => (Local.timestamp_nanos(ns).fixed_offset(), Zone::Local),
                    _ => {
                        let tz: Tz = match tz.parse() {
                            Ok(tz) => tz,
                            Err(e) => bail!(e),
                        };
                        (tz.timestamp_nanos(ns).fixed_offset(), Zone::Named(tz))
                    }
                };

                let format = match rest.first() {
                    Some(Value::String(format)) => Some(format.to_string()),
                    Some(other) => {
                        bail!(arg.span().error(&format!(
                            "`{fcn}` expects 3rd element of `ns` to be a `string`. Got `{other}` instead"
                        )))
                    }
                    None => None,
                };

                return Ok((datetime, format, zone));
            }
            _ => {}
        },

        _ => {}
    }

    bail!(arg.span().error(&format!(
        "`{fcn}` expects `ns` to be a `number` or `array[number, string]`. Got `{val}` instead"
    )))
}

impl Zone {
    /// arbiter patch 22: what Go's `MST` writes for this zone at `at`: `UTC` for UTC, the tz
    /// database's abbreviation at that instant for a named zone; for `Local`, `UTC` at offset
    /// zero and otherwise `None` (the offset is written).
    fn abbreviation(self, at: &DateTime<FixedOffset>) -> Option<String> {
        use chrono_tz::OffsetName as _;
        let secs = at.offset().local_minus_utc();
        match self {
            Zone::Utc => Some(String::from("UTC")),
            // Go names a zone it knows nothing of `UTC`; otherwise the offset is written.
            Zone::Local => (secs == 0).then(|| String::from("UTC")),
            Zone::Named(tz) => {
                // A zone without letters has a numeric abbreviation in the tz database (`+04`,
                // `+0545`), which chrono-tz leaves out.
                let named = at.with_timezone(&tz);
                named.offset().abbreviation().map(String::from).or_else(|| {
                    let (sign, m) = if secs < 0 {
                        ('-', -secs / 60)
                    } else {
                        ('+', secs / 60)
                    };
                    Some(if m % 60 == 0 {
                        alloc::format!("{sign}{:02}", m / 60)
                    } else {
                        alloc::format!("{sign}{:02}{:02}", m / 60, m % 60)
                    })
                })
            }
        }
    }
}

fn layout_with_predefined_formats(format: &str) -> &str {
    match format {
        "ANSIC" => "Mon Jan _2 15:04:05 2006",
        "UnixDate" => "Mon Jan _2 15:04:05 MST 2006",
        "RubyDate" => "Mon Jan 02 15:04:05 -0700 2006",
        "RFC822" => "02 Jan 06 15:04 MST",
        // RFC822 with numeric zone
        "RFC822Z" => "02 Jan 06 15:04 -0700",
        "RFC850" => "Monday, 02-Jan-06 15:04:05 MST",
        "RFC1123" => "Mon, 02 Jan 2006 15:04:05 MST",
        // RFC1123 with numeric zone
        "RFC1123Z" => "Mon, 02 Jan 2006 15:04:05 -0700",
        "RFC3339" => "2006-01-02T15:04:05Z07:00",
        "RFC3339Nano" => "2006-01-02T15:04:05.999999999Z07:00",
        other => other,
    }
}
