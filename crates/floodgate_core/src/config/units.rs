//! Human-friendly sizes (`'64kb'`, `'100mb'`) and durations (`'30s'`, `'5m'`) for config values.
//!
//! Sizes use binary multiples, as nginx does (`1k` = 1024). A bare number is bytes or
//! milliseconds. Used by the serde deserializers in `config`, so every error names its field.

use std::time::Duration;

/// Parses `"64kb"`, `"1.5 MiB"`, `"100"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {unit:?} (use b, kb, mb, gb)"
            ))
        }
    };
    to_integer(number * multiplier as f64, text)
}

/// Parses `"30s"`, `"250ms"`, `"5m"`, `"1h"`, `"1500"` (milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text)?;
    let millis_per_unit: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "s" | "sec" | "secs" => 1_000.0,
        "m" | "min" | "mins" => 60_000.0,
        "h" | "hr" | "hrs" => 3_600_000.0,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h)"
            ))
        }
    };
    Ok(Duration::from_millis(to_integer(
        number * millis_per_unit,
        text,
    )?))
}

fn split_number(text: &str) -> Result<(f64, &str), String> {
    let trimmed = text.trim();
    let split_at = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split_at);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid value {text:?}: expected a number with an optional unit"))?;
    Ok((number, unit.trim()))
}

fn to_integer(value: f64, text: &str) -> Result<u64, String> {
    if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 {
        return Err(format!("invalid value {text:?}: out of range"));
    }
    Ok(value.round() as u64)
}

/// Checks a plain JSON number used as a size or duration: finite, not negative, integral.
pub fn number_to_u64(value: f64) -> Result<u64, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "invalid value {value}: must be a non-negative number"
        ));
    }
    if value.fract() != 0.0 {
        return Err(format!("invalid value {value}: must be a whole number"));
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("64kb"), Ok(64 * 1024));
        assert_eq!(parse_size("100MB"), Ok(100 << 20));
        assert_eq!(parse_size("1.5 mib"), Ok(3 << 19));
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1500"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
    }
}
