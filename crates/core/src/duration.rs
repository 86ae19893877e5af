//! Durations with units: `500ms`, `30s`, `5m`, `1h`, `1d`, and sums of them written largest
//! unit first, e.g. `1m30s` or `1h5m`.
//!
//! Every duration is a whole number of milliseconds between 0 and [`DURATION_MAX_MS`] (7 days).
//! A bare number such as `30` is refused: the unit must be written.

/// The longest duration any plan field accepts: 7 days.
pub const DURATION_MAX_MS: u64 = 7 * DAY_MS;

/// The longest duration text accepted, in bytes.
pub const DURATION_TEXT_MAX_BYTES: usize = 64;

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Units from largest to smallest, as written and in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", DAY_MS),
    ("h", HOUR_MS),
    ("m", MINUTE_MS),
    ("s", SECOND_MS),
    ("ms", 1),
];

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty; expected a number and a unit, e.g. 30s, 5m")]
    Empty,
    #[error("duration is {len} bytes long; the limit is {max} bytes")]
    TooLongText { len: usize, max: usize },
    #[error("duration {given:?} has no unit; add a unit: 30s, 5m")]
    MissingUnit { given: String },
    #[error("duration {given:?} has unknown unit {unit:?}; expected one of ms, s, m, h, d")]
    UnknownUnit { given: String, unit: String },
    #[error(
        "duration {given:?} is not a number followed by a unit; expected e.g. 500ms, 30s, 5m, 1h, 1m30s"
    )]
    Malformed { given: String },
    #[error(
        "duration {given:?} repeats or misorders unit {unit:?}; write units from largest to smallest, each once, e.g. 1h30m"
    )]
    UnitOrder { given: String, unit: String },
    #[error("duration {given:?} is longer than the limit of 7 days ({max_ms} ms)")]
    TooLong { given: String, max_ms: u64 },
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h`, `1d` or `1m30s` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    if text.len() > DURATION_TEXT_MAX_BYTES {
        return Err(DurationError::TooLongText {
            len: text.len(),
            max: DURATION_TEXT_MAX_BYTES,
        });
    }
    let given = text.trim();
    if given.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed {
        given: given.to_owned(),
    };
    let mut rest = given;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the smallest unit seen so far; the next must be smaller.
    let mut next_unit_index = 0usize;
    // Each round consumes at least one byte, and the text is bounded above.
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(malformed());
        }
        let (digits, after_digits) = rest.split_at(digits_len);
        let unit_len = after_digits
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (unit, after_unit) = after_digits.split_at(unit_len);
        if unit.is_empty() {
            if after_digits.is_empty() {
                return Err(DurationError::MissingUnit {
                    given: given.to_owned(),
                });
            }
            return Err(malformed());
        }
        let Some(position) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                given: given.to_owned(),
                unit: unit.to_owned(),
            });
        };
        if position < next_unit_index {
            return Err(DurationError::UnitOrder {
                given: given.to_owned(),
                unit: unit.to_owned(),
            });
        }
        next_unit_index = position + 1;
        let unit_ms = UNITS.get(position).map_or(1, |(_, ms)| *ms);
        let too_long = || DurationError::TooLong {
            given: given.to_owned(),
            max_ms: DURATION_MAX_MS,
        };
        let count: u64 = digits.parse().map_err(|_| too_long())?;
        let part_ms = count.checked_mul(unit_ms).ok_or_else(too_long)?;
        total_ms = total_ms.checked_add(part_ms).ok_or_else(too_long)?;
        if total_ms > DURATION_MAX_MS {
            return Err(too_long());
        }
        rest = after_unit;
    }
    Ok(total_ms)
}

/// Formats milliseconds for people, largest unit first: `0s`, `500ms`, `1m30s`, `1d2h`.
/// For durations up to [`DURATION_MAX_MS`], [`parse_duration_ms`] reads the text back to the
/// same number.
pub fn format_ms(duration_ms: u64) -> String {
    if duration_ms == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    let mut rest_ms = duration_ms;
    for (name, unit_ms) in UNITS {
        let count = rest_ms / unit_ms;
        if count > 0 {
            text.push_str(&count.to_string());
            text.push_str(name);
            rest_ms -= count * unit_ms;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_unit_and_sums() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms(" 1h5m10s250ms "), Ok(3_910_250));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms("7d"), Ok(DURATION_MAX_MS));
    }

    #[test]
    fn bare_number_asks_for_a_unit() {
        let error = parse_duration_ms("30").unwrap_err();
        assert!(matches!(error, DurationError::MissingUnit { .. }));
        assert!(error.to_string().contains("add a unit: 30s, 5m"), "{error}");
        assert!(matches!(
            parse_duration_ms("1m30"),
            Err(DurationError::MissingUnit { .. })
        ));
    }

    #[test]
    fn refuses_bad_text() {
        assert_eq!(parse_duration_ms(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration_ms("5 m"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_ms("m"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_ms("-5s"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_ms("1.5s"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_ms("5min"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration_ms("30s1m"),
            Err(DurationError::UnitOrder { .. })
        ));
        assert!(matches!(
            parse_duration_ms("1s1s"),
            Err(DurationError::UnitOrder { .. })
        ));
        assert!(matches!(
            parse_duration_ms("8d"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_duration_ms("99999999999999999999999s"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_duration_ms(&"1".repeat(100)),
            Err(DurationError::TooLongText { .. })
        ));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_ms(0), "0s");
        assert_eq!(format_ms(500), "500ms");
        assert_eq!(format_ms(90_000), "1m30s");
        assert_eq!(format_ms(3_600_000), "1h");
        assert_eq!(format_ms(86_400_000 + 2 * 3_600_000 + 1), "1d2h1ms");
    }

    proptest! {
        #[test]
        fn parser_never_panics(text in "\\PC{0,80}") {
            let _ = parse_duration_ms(&text);
        }

        #[test]
        fn parser_never_panics_on_duration_like_text(text in "[0-9dhms ]{0,40}") {
            let _ = parse_duration_ms(&text);
        }

        #[test]
        fn format_then_parse_round_trips(duration_ms in 0..=DURATION_MAX_MS) {
            prop_assert_eq!(parse_duration_ms(&format_ms(duration_ms)), Ok(duration_ms));
        }
    }
}
