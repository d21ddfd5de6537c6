//! Instants and dates spelled as the CRMs spell them, digit by digit.
//!
//! chrono's formatter parses its pattern on every call, and a page of records writes
//! thousands of instants, so the common years are written here by hand. Years outside
//! 0 to 9999, where formatters differ on signs and widths, are left to the callers' chrono
//! patterns.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// The calendar parts of an instant, UTC.
pub(crate) struct Civil {
    date: NaiveDate,
    hour: u32,
    minute: u32,
    second: u32,
    milli: u32,
}

impl Civil {
    /// The parts of `at`, if its year has four digits.
    pub fn of(at: &DateTime<Utc>) -> Option<Civil> {
        let time = at.time();
        Some(Civil {
            date: four_digit_year(at.date_naive())?,
            hour: time.hour(),
            minute: time.minute(),
            second: time.second(),
            milli: time.nanosecond() / 1_000_000,
        })
    }

    /// Whether the instant falls on a whole second.
    pub fn whole_second(&self) -> bool {
        self.milli == 0
    }

    /// `2024-01-31T09:15:00`.
    pub fn push_date_time(&self, out: &mut String) {
        push_date(out, self.date);
        out.push('T');
        push_padded(out, self.hour, 2);
        out.push(':');
        push_padded(out, self.minute, 2);
        out.push(':');
        push_padded(out, self.second, 2);
    }

    /// `.123`.
    pub fn push_millis(&self, out: &mut String) {
        out.push('.');
        push_padded(out, self.milli, 3);
    }
}

/// `date` unless its year needs other than four digits.
pub(crate) fn four_digit_year(date: NaiveDate) -> Option<NaiveDate> {
    (0..=9999).contains(&date.year()).then_some(date)
}

/// `2024-01-31`.
pub(crate) fn push_date(out: &mut String, date: NaiveDate) {
    push_padded(out, date.year().unsigned_abs(), 4);
    out.push('-');
    push_padded(out, date.month(), 2);
    out.push('-');
    push_padded(out, date.day(), 2);
}

/// `value` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut String, value: u32, width: usize) {
    // Least significant digit first; u32 has at most ten.
    let mut digits = [b'0'; 10];
    let mut rest = value;
    let mut len = 0;
    while (rest > 0 || len < width) && len < digits.len() {
        digits[len] = b'0' + (rest % 10) as u8;
        rest /= 10;
        len += 1;
    }
    out.extend(digits[..len].iter().rev().map(|&digit| char::from(digit)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_instants_match_chrono() {
        for ms in [
            0,
            1_767_603_600_000,
            1_767_603_600_007,
            1_767_603_659_999,
            -1,
            -62_135_596_800_000,
            -62_135_596_800_001,
            -62_167_219_200_000,
            253_402_300_799_999,
            951_782_400_123,
        ] {
            let at = DateTime::from_timestamp_millis(ms).unwrap();
            let civil = Civil::of(&at).unwrap();
            let mut text = String::new();
            civil.push_date_time(&mut text);
            civil.push_millis(&mut text);
            assert_eq!(text, at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(), "{ms}");
        }
        for ms in [253_402_300_800_000, -62_167_219_200_001] {
            assert!(Civil::of(&DateTime::from_timestamp_millis(ms).unwrap()).is_none());
        }
    }
}
