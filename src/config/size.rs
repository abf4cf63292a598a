//! Byte sizes written by people: `"1GiB"`, `"500MB"`, `"64 KiB"`, `"1.5G"`.
//!
//! SI units (`kB`, `MB`, `GB`, `TB`) are powers of 1000, IEC units (`KiB`,
//! `MiB`, `GiB`, `TiB`) powers of 1024. A bare `K`/`M`/`G`/`T` is taken as
//! IEC, as `du`, `dd` and most backup tools do. Units are case-insensitive;
//! no unit (or `B`) means bytes. This is the one place sizes are parsed.

use std::fmt;

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// No number where one was expected.
    #[error("`{0}` does not start with a number")]
    NoNumber(String),
    /// A unit that is not one of the known ones.
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    /// More than `u64::MAX` bytes.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// The units accepted, for messages.
pub const UNITS: &str = "B, kB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)";

/// Parses a size such as `"1GiB"` or `"500 MB"` into bytes. Fractions are
/// allowed (`"1.5GiB"`) and rounded down to whole bytes.
///
/// # Errors
/// [`SizeError`] when there is no number, the unit is unknown, or the size
/// does not fit in a `u64`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number = number.replace('_', "");
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(SizeError::NoNumber(text.to_owned()));
    }
    let multiplier = unit_multiplier(unit.trim())
        .ok_or_else(|| SizeError::UnknownUnit(unit.trim().to_owned()))?;
    let too_large = || SizeError::TooLarge(text.to_owned());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let digits = fraction.get(..18).unwrap_or(fraction);
        let numerator: u128 = digits
            .parse()
            .map_err(|_| SizeError::NoNumber(text.to_owned()))?;
        let denominator = 10u128.pow(u32::try_from(digits.len()).unwrap_or(18));
        bytes = bytes
            .checked_add(numerator * multiplier / denominator)
            .ok_or_else(too_large)?;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

fn unit_multiplier(unit: &str) -> Option<u128> {
    let m = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u128.pow(2),
        "gb" => 1000u128.pow(3),
        "tb" => 1000u128.pow(4),
        "k" | "ki" | "kib" => 1024,
        "m" | "mi" | "mib" => 1024u128.pow(2),
        "g" | "gi" | "gib" => 1024u128.pow(3),
        "t" | "ti" | "tib" => 1024u128.pow(4),
        _ => return None,
    };
    Some(m)
}

/// Shows a byte count with the largest IEC unit that keeps it readable,
/// e.g. `1.0 GiB`, `512 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        let name = UNITS.get(unit).copied().unwrap_or("B");
        if unit == 0 {
            write!(f, "{} {name}", self.0)
        } else {
            write!(f, "{value:.1} {name}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_and_iec_units() {
        let cases = [
            ("1GiB", 1 << 30),
            ("1 GiB", 1 << 30),
            ("500MB", 500_000_000),
            ("500mb", 500_000_000),
            ("64KiB", 65_536),
            ("2kB", 2000),
            ("1G", 1 << 30),
            ("1.5GiB", 3 << 29),
            ("1_000", 1000),
            ("42", 42),
            ("42B", 42),
            ("1TB", 1_000_000_000_000),
            ("0.5KiB", 512),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(parse_size("GiB"), Err(SizeError::NoNumber("GiB".into())));
        assert_eq!(parse_size("1 XB"), Err(SizeError::UnknownUnit("XB".into())));
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(parse_size("").is_err());
    }

    #[test]
    fn human_size() {
        assert_eq!(HumanSize(512).to_string(), "512 B");
        assert_eq!(HumanSize(1 << 30).to_string(), "1.0 GiB");
    }

    proptest::proptest! {
        #[test]
        fn whole_units_round_trip(n in 0u64..1_000_000) {
            proptest::prop_assert_eq!(parse_size(&format!("{n}")), Ok(n));
            proptest::prop_assert_eq!(parse_size(&format!("{n} KiB")), Ok(n * 1024));
            proptest::prop_assert_eq!(parse_size(&format!("{n}MB")), Ok(n * 1_000_000));
        }

        #[test]
        fn never_panics(text in "\\PC{0,16}") {
            let _ = parse_size(&text);
        }
    }
}
