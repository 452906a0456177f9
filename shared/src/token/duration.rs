//! `--validity` durations: `365d`, `2y`, `3 months`, `1h`…
//!
//! Parsed by `humantime`, as atticadm does: a year is 365.25 days, a month
//! 30.44 days, `M` is a month and `m` a minute; units may be combined (`1y 6M`).

use std::time::Duration;

/// Why a validity could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ValidityError {
    /// Not a duration humantime understands.
    #[error("invalid validity {input:?}: {source} (try `365d`, `2y` or `3 months`)")]
    Parse {
        /// What was given.
        input: String,
        /// humantime's complaint.
        source: humantime::DurationError,
    },
    /// A zero duration would mint a token that is already expired.
    #[error("validity must be longer than zero")]
    Zero,
}

/// Parses a token validity such as `365d`, `2y`, `3 months` or `1h`.
pub fn parse_validity(input: &str) -> Result<Duration, ValidityError> {
    let duration =
        humantime::parse_duration(input.trim()).map_err(|source| ValidityError::Parse {
            input: input.to_owned(),
            source,
        })?;
    if duration.is_zero() {
        return Err(ValidityError::Zero);
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn contract_examples() {
        assert_eq!(
            parse_validity("365d").unwrap(),
            Duration::from_secs(365 * DAY)
        );
        // A year is 365.25 days.
        assert_eq!(
            parse_validity("2y").unwrap(),
            Duration::from_secs(2 * 31_557_600)
        );
        assert_eq!(
            parse_validity("3 months").unwrap(),
            Duration::from_secs(3 * 2_630_016)
        );
    }

    #[test]
    fn other_forms() {
        assert_eq!(parse_validity("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_validity("1y").unwrap(),
            Duration::from_secs(31_557_600)
        );
        assert_eq!(
            parse_validity("2 years").unwrap(),
            Duration::from_secs(2 * 31_557_600)
        );
        assert_eq!(parse_validity("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(
            parse_validity("1M").unwrap(),
            Duration::from_secs(2_630_016)
        );
        assert_eq!(
            parse_validity("1w 2d").unwrap(),
            Duration::from_secs(9 * DAY)
        );
        assert_eq!(
            parse_validity(" 7d ").unwrap(),
            Duration::from_secs(7 * DAY)
        );
    }

    #[test]
    fn rejects_garbage_and_zero() {
        for bad in ["", "soon", "365", "3 fortnights", "-1d"] {
            let err = parse_validity(bad).unwrap_err();
            assert!(matches!(err, ValidityError::Parse { .. }), "{bad}");
        }
        assert!(matches!(parse_validity("0s"), Err(ValidityError::Zero)));
        assert!(
            parse_validity("nope")
                .unwrap_err()
                .to_string()
                .contains("\"nope\"")
        );
    }
}
