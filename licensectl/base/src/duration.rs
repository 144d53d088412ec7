//! The one duration syntax of every setting: `PRIVITTY_STOP_TIMEOUT=8s`, `--header-timeout 500ms`,
//! `24h`, `14days`; a bare `0` is zero.
//!
//! Owns the parsing only (humantime's syntax, around surrounding blanks). Imports nothing from
//! this crate (leaf).

/// Parses a duration setting; the error says what humantime expected.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, humantime::DurationError> {
    humantime::parse_duration(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn units_blanks_and_zero() {
        assert_eq!(parse_duration(" 8s "), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("14days"),
            Ok(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
