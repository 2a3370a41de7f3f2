//! Timestamps as users write them in `user.time.<T>`: milliseconds since the epoch, or an
//! RFC 3339 date-time such as `2026-11-25T12:00:00Z` or `2026-11-25T14:00:00.250+02:00`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch for `text`, or `None` if it is neither an integer nor an
/// RFC 3339 date-time. Digits past the millisecond round up, since the answer is "the first
/// message at or after T" and message times are whole milliseconds.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    parse_rfc3339_ms(text)
}

fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let mut cursor = Cursor {
        bytes: text.as_bytes(),
        at: 0,
    };
    let year = cursor.digits(4)?;
    cursor.expect(b"-")?;
    let month = cursor.digits(2)?;
    cursor.expect(b"-")?;
    let day = cursor.digits(2)?;
    cursor.expect(b"Tt ")?;
    let hour = cursor.digits(2)?;
    cursor.expect(b":")?;
    let minute = cursor.digits(2)?;
    cursor.expect(b":")?;
    let second = cursor.digits(2)?;
    let mut millis = 0;
    let mut round_up = false;
    if cursor.peek() == Some(b'.') {
        cursor.at += 1;
        let fraction = cursor.take_while(|b| b.is_ascii_digit());
        if fraction.is_empty() {
            return None;
        }
        for (place, digit) in fraction.iter().map(|d| i64::from(d - b'0')).enumerate() {
            match place {
                0..=2 => millis += digit * [100, 10, 1][place],
                _ => round_up |= digit != 0,
            }
        }
    }
    let offset_minutes = match cursor.next()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let hours = cursor.digits(2)?;
            cursor.expect(b":")?;
            let minutes = cursor.digits(2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 60 + minutes;
            if sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    if cursor.at != text.len() {
        return None;
    }
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        // RFC 3339 allows a leap second; it counts as the first second of the next minute.
        && second <= 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis + i64::from(round_up))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, any_of: &[u8]) -> Option<()> {
        any_of.contains(&self.next()?).then_some(())
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &[u8] {
        let start = self.at;
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
        &self.bytes[start..self.at]
    }

    /// Exactly `count` ASCII digits.
    fn digits(&mut self, count: usize) -> Option<i64> {
        let digits = self.bytes.get(self.at..self.at + count)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.at += count;
        Some(
            digits
                .iter()
                .fold(0, |value, d| value * 10 + i64::from(d - b'0')),
        )
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Milliseconds since the epoch as a `SystemTime` (before 1970 too).
pub fn system_time(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_milliseconds() {
        assert_eq!(parse_timestamp_ms("0"), Some(0));
        assert_eq!(parse_timestamp_ms("1764072000000"), Some(1_764_072_000_000));
        assert_eq!(parse_timestamp_ms("-5"), Some(-5));
    }

    #[test]
    fn utc_date_times() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp_ms("2025-11-25T12:00:00Z"),
            Some(1_764_072_000_000)
        );
        assert_eq!(
            parse_timestamp_ms("2025-11-25t12:00:00z"),
            Some(1_764_072_000_000)
        );
        assert_eq!(
            parse_timestamp_ms("2025-11-25 12:00:00Z"),
            Some(1_764_072_000_000)
        );
        assert_eq!(
            parse_timestamp_ms("2000-02-29T23:59:59Z"),
            Some(951_868_799_000)
        );
        assert_eq!(parse_timestamp_ms("1969-12-31T23:59:59Z"), Some(-1_000));
    }

    #[test]
    fn offsets_move_to_utc() {
        assert_eq!(
            parse_timestamp_ms("2025-11-25T14:00:00+02:00"),
            Some(1_764_072_000_000)
        );
        assert_eq!(
            parse_timestamp_ms("2025-11-25T06:30:00-05:30"),
            Some(1_764_072_000_000)
        );
        assert_eq!(
            parse_timestamp_ms("2025-11-25T12:00:00+00:00"),
            Some(1_764_072_000_000)
        );
    }

    #[test]
    fn fractions_count_to_the_millisecond_and_round_up_beyond() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.25Z"), Some(250));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.123Z"), Some(123));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.123000Z"), Some(123));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.1234Z"), Some(124));
        assert_eq!(parse_timestamp_ms("1969-12-31T23:59:59.500Z"), Some(-500));
        assert_eq!(
            parse_timestamp_ms("2025-11-25T14:00:00.250+02:00"),
            Some(1_764_072_000_250)
        );
    }

    #[test]
    fn a_leap_second_is_the_next_minute() {
        assert_eq!(
            parse_timestamp_ms("2016-12-31T23:59:60Z"),
            parse_timestamp_ms("2017-01-01T00:00:00Z")
        );
    }

    #[test]
    fn malformed_times_do_not_parse() {
        for bad in [
            "",
            "yesterday",
            "2025-11-25",
            "2025-11-25T12:00:00",
            "2025-11-25T12:00Z",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-11-25T24:00:00Z",
            "2025-11-25T12:60:00Z",
            "2025-11-25T12:00:61Z",
            "2025-11-25T12:00:00.Z",
            "2025-11-25T12:00:00+2:00",
            "2025-11-25T12:00:00+24:00",
            "2025-11-25T12:00:00+0200",
            "2025-11-25T12:00:00Zjunk",
            "+2025-11-25T12:00:00Z",
            "2025-11-25T12:00:00.5\u{e9}Z",
            "1.5",
        ] {
            assert_eq!(parse_timestamp_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn system_times_on_both_sides_of_the_epoch() {
        assert_eq!(
            system_time(1_500),
            UNIX_EPOCH + Duration::from_millis(1_500)
        );
        assert_eq!(
            system_time(-1_500),
            UNIX_EPOCH - Duration::from_millis(1_500)
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    /// Days since 1970-01-01 by counting, as a reference for the closed formula.
    fn days_by_counting(year: i64, month: i64, day: i64) -> i64 {
        let year_days = |y| if is_leap_year(y) { 366 } else { 365 };
        let mut days: i64 = if year >= 1970 {
            (1970..year).map(year_days).sum()
        } else {
            -(year..1970).map(year_days).sum::<i64>()
        };
        days += (1..month).map(|m| days_in_month(year, m)).sum::<i64>();
        days + day - 1
    }

    /// A valid RFC 3339 time and its milliseconds since the epoch, computed by counting.
    fn rfc3339() -> impl Strategy<Value = (String, i64)> {
        let date = (
            0i64..=9999,
            1i64..=12,
            1i64..=31,
            0i64..24,
            0i64..60,
            0i64..=60,
        );
        let zone = prop_oneof![
            Just(None),
            (any::<bool>(), 0i64..24, 0i64..60).prop_map(Some)
        ];
        (date, 0i64..1000, zone, any::<bool>()).prop_map(
            |((year, month, day, hour, minute, second), millis, zone, lower)| {
                let day = day.min(days_in_month(year, month));
                let (suffix, offset) = match zone {
                    None => (if lower { "z" } else { "Z" }.to_owned(), 0),
                    Some((west, h, m)) => {
                        let sign = if west { '-' } else { '+' };
                        let offset = (h * 60 + m) * if west { -1 } else { 1 };
                        (format!("{sign}{h:02}:{m:02}"), offset)
                    }
                };
                let text = format!(
                    "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}{suffix}"
                );
                let seconds = days_by_counting(year, month, day) * 86_400
                    + hour * 3_600
                    + minute * 60
                    + second
                    - offset * 60;
                (text, seconds * 1_000 + millis)
            },
        )
    }

    proptest! {
        #![proptest_config(fuzzing::config(1000))]

        #[test]
        fn a_valid_time_parses_to_the_counted_milliseconds((text, ms) in rfc3339()) {
            prop_assert_eq!(parse_timestamp_ms(&text), Some(ms));
            prop_assert_eq!(parse_timestamp_ms(&ms.to_string()), Some(ms));
        }

        /// Damaged times and arbitrary text parse or are refused, never panic; a time that
        /// parses converts to a `SystemTime`.
        #[test]
        fn any_text_parses_or_is_refused(
            bytes in fuzzing::garbage_or_damaged(rfc3339().prop_map(|(t, _)| t.into_bytes()), 40)
        ) {
            let text = String::from_utf8_lossy(&bytes);
            if let Some(ms) = parse_timestamp_ms(&text) {
                let _ = system_time(ms);
            }
        }
    }
}
