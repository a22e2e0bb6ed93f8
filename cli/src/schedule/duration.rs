//! Durations as schedules write them (`30m`, `1h30m`, `2d`) and the start window's bounds.

use std::time::Duration;

use super::error::Error;

/// The start window of a schedule created without `--window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// The shortest window accepted: cron fires at most once a minute.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);
/// The longest window accepted.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

/// The units of [`parse_duration`], largest first.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Parses a duration such as `30m`, `2h`, `1h30m`, `1d` or `90s`: numbers each followed by a unit
/// (`d`, `h`, `m`, `s`), units from largest to smallest, each at most once.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let fail = |problem: String| Error::InvalidDuration {
        text: text.to_owned(),
        problem,
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(fail(
            "it is empty; write for example 30m, 2h or 1h30m".to_owned(),
        ));
    }
    let mut total: u64 = 0;
    let mut previous_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(fail(format!("expected a number at \"{after}\"")));
        }
        let Some(unit) = after.chars().next() else {
            return Err(fail(format!(
                "{digits} has no unit; add d, h, m or s (for example {digits}m)"
            )));
        };
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(fail(format!("unknown unit \"{unit}\"; use d, h, m or s")));
        };
        if previous_unit.is_some_and(|previous| rank <= previous) {
            return Err(fail(
                "units must go from largest to smallest, each once (for example 1h30m)".to_owned(),
            ));
        }
        previous_unit = Some(rank);
        total = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(UNITS[rank].1))
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(|| fail("it is too large".to_owned()))?;
        rest = &after[unit.len_utf8()..];
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (whole seconds): `1h30m`, `2d`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let n = seconds / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
            seconds -= n * size;
        }
    }
    out
}

/// Checks a start window: at least [`MIN_WINDOW`], at most [`MAX_WINDOW`].
pub fn validate_window(window: Duration) -> Result<(), Error> {
    let fail = |problem: String| Error::InvalidWindow {
        window: format_duration(window),
        problem,
    };
    if window < MIN_WINDOW {
        return Err(fail(format!(
            "a start window must be at least {} (cron fires at most once a minute)",
            format_duration(MIN_WINDOW)
        )));
    }
    if window > MAX_WINDOW {
        return Err(fail(format!(
            "a start window may be at most {}",
            format_duration(MAX_WINDOW)
        )));
    }
    Ok(())
}

/// Serde for `Option<Duration>` as the text of [`format_duration`] (or null).
pub(super) mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option, reason = "the signature serde's `with` requires")]
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_some(&super::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
