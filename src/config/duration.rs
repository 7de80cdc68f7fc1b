//! Durations written as `90s`, `10m`, `12h` or `30d`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Seconds in each accepted unit.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// A duration in the operator-facing form: a whole number followed by `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(Duration);

/// A string that is not a duration of the form `90s`, `10m`, `12h` or `30d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration '{0}': write a whole number followed by s, m, h or d (e.g. 90s, 10m, 12h, 30d)")]
pub struct InvalidDuration(pub String);

impl HumanDuration {
    /// Wraps a standard duration (sub-second parts are kept but not displayed).
    pub const fn new(duration: Duration) -> Self {
        Self(duration)
    }

    /// A duration of whole days.
    pub const fn days(days: u64) -> Self {
        Self(Duration::from_secs(days * 86_400))
    }

    /// A duration of whole minutes.
    pub const fn minutes(minutes: u64) -> Self {
        Self(Duration::from_secs(minutes * 60))
    }

    /// The underlying standard duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<HumanDuration> for Duration {
    fn from(value: HumanDuration) -> Self {
        value.0
    }
}

impl FromStr for HumanDuration {
    type Err = InvalidDuration;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDuration(text.to_owned());
        let unit = text.chars().last().ok_or_else(invalid)?;
        let (_, seconds_per_unit) = UNITS.iter().find(|(c, _)| *c == unit).ok_or_else(invalid)?;
        let number = &text[..text.len() - 1];
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let count: u64 = number.parse().map_err(|_| invalid())?;
        let seconds = count.checked_mul(*seconds_per_unit).ok_or_else(invalid)?;
        Ok(Self(Duration::from_secs(seconds)))
    }
}

impl fmt::Display for HumanDuration {
    /// Prints the largest unit that divides the duration evenly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.as_secs();
        let (unit, size) =
            UNITS.iter().find(|(_, size)| seconds.is_multiple_of(*size) && seconds != 0).unwrap_or(&('s', 1));
        write!(f, "{}{}", seconds / size, unit)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!("90s".parse(), Ok(HumanDuration::new(Duration::from_secs(90))));
        assert_eq!("10m".parse(), Ok(HumanDuration::minutes(10)));
        assert_eq!("12h".parse(), Ok(HumanDuration::new(Duration::from_secs(12 * 3600))));
        assert_eq!("30d".parse(), Ok(HumanDuration::days(30)));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "d", "30", "1.5h", "-1d", "10 m", "3w", "1h30m", "99999999999999999999d"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_in_the_largest_even_unit() {
        assert_eq!(HumanDuration::days(30).to_string(), "30d");
        assert_eq!(HumanDuration::minutes(90).to_string(), "90m");
        assert_eq!(HumanDuration::new(Duration::from_secs(61)).to_string(), "61s");
        assert_eq!(HumanDuration::new(Duration::ZERO).to_string(), "0s");
    }
}
