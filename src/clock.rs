//! Durations in the config's syntax (`"500ms"`, `"30s"`, `"10m"`, `"24h"`, `"7d"`) and times in
//! the webhook contract's format (RFC 3339, UTC, milliseconds, `Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `<digits><unit>` with unit `ms`, `s`, `m`, `h` or `d`. Whitespace, signs, fractions and
/// missing units are refused with a message that says what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit; write e.g. \"500ms\", \"30s\", \"10m\", \"24h\" or \"7d\""))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "duration {text:?} must start with a whole number, e.g. \"30s\""
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} is too large"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?}; use ms, s, m, h or d"
            ));
        }
    };
    let millis = value
        .checked_mul(millis_per_unit)
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .ok_or_else(|| {
            format!("duration {text:?} is too large; the longest vmnd takes is 36500d (100 years)")
        })?;
    Ok(Duration::from_millis(millis))
}

/// The longest duration the config takes: 100 years. Longer is surely a typo, and the limit
/// keeps every sum of a time and a duration (`now + retry_for`, `received_at + within`) far
/// from `u64` overflow, which in release builds would wrap into the past.
pub const MAX_DURATION_MS: u64 = 36_500 * 86_400_000;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-28T14:00:00.123Z` for a time in milliseconds since the epoch.
///
/// Every message record gets one: the digits are written here rather than through chrono's
/// `format`, which parses its format string on every call (2.7% of the daemon's CPU in a
/// profile of the ingest benchmark). Years past 9999 go through chrono.
pub fn rfc3339_ms(ms: u64) -> String {
    use chrono::{Datelike, Timelike};
    let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64) else {
        return "1970-01-01T00:00:00.000Z".to_string();
    };
    let Ok(year) = u32::try_from(t.year()) else {
        return t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    };
    if year > 9999 {
        return t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let fields = [
        (0, 4, year),
        (5, 2, t.month()),
        (8, 2, t.day()),
        (11, 2, t.hour()),
        (14, 2, t.minute()),
        (17, 2, t.second()),
        (20, 3, t.timestamp_subsec_millis()),
    ];
    for (at, width, mut value) in fields {
        for digit in out[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Parses an RFC 3339 time (any offset) into milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_digits_agree_with_chrono() {
        let chrono_form = |ms: u64| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap()
        };
        let mut samples = vec![
            0,
            1,
            999,
            1_000,
            951_782_400_000,     // 2000-02-29 (a leap day)
            1_796_083_199_999,   // the last ms of 2026
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            253_402_300_800_000, // year 10000: chrono's own form
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        samples.extend((0..10_000).map(|_| rng.u64(0..253_402_300_800_000)));
        for ms in samples {
            assert_eq!(rfc3339_ms(ms), chrono_form(ms), "{ms}");
        }
        assert_eq!(rfc3339_ms(1_764_338_400_123), "2025-11-28T14:00:00.123Z");
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        for bad in [
            "",
            "30",
            "s",
            "-1s",
            "1.5s",
            "10 m",
            "3w",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn durations_stop_at_a_hundred_years() {
        assert_eq!(
            parse_duration("36500d"),
            Ok(Duration::from_millis(MAX_DURATION_MS))
        );
        for too_long in ["36501d", "18446744073709551615ms", "3153600000001ms"] {
            let err = parse_duration(too_long).unwrap_err();
            assert!(err.contains("too large") && err.contains("36500d"), "{err}");
        }
        // Far from overflow when added to any time this century and the next.
        assert!(MAX_DURATION_MS.checked_add(now_ms() * 2).is_some());
    }

    #[test]
    fn timestamps_round_trip() {
        let ms = 1_795_860_000_123;
        let text = rfc3339_ms(ms);
        assert_eq!(text, "2026-11-28T10:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&text), Some(ms));
        assert_eq!(parse_rfc3339_ms("2026-11-28T15:30:00.123+05:30"), Some(ms));
    }
}
