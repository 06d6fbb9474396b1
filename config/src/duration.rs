//! Durations as operators write them: `"250ms"`, `"15s"`, `"4m"`, `"1h"`, `"1m30s"`.

use std::time::Duration;

/// The units a duration may use, largest first, with their length in milliseconds.
const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// The start of every complaint about a duration.
const EXPECTED: &str = r#"expected a duration like "4m", "15s" or "250ms""#;

/// Reads a duration such as `"250ms"`, `"15s"`, `"4m"`, `"1h"` or `"1m30s"`.
///
/// A duration is one or more groups of a whole number followed by a unit
/// (`h`, `m`, `s` or `ms`). Units go from largest to smallest and each appears
/// at most once, so `"1h30m"` is fine and `"30s1m"` is not. Spaces, signs,
/// fractions and bare numbers are refused.
///
/// The error is a complete sentence naming what was expected and what was
/// found, ready to be shown to whoever wrote the file.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let fail = |why: &str| {
        if why.is_empty() {
            format!("{EXPECTED}, found {s:?}")
        } else {
            format!("{EXPECTED}, found {s:?} ({why})")
        }
    };

    if s.is_empty() {
        return Err(fail("it is empty"));
    }
    if s.starts_with('-') {
        return Err(fail("a duration cannot be negative"));
    }

    let mut rest = s;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the smallest unit used so far; the next group must
    // use a strictly smaller one.
    let mut last_unit: Option<usize> = None;

    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(fail("each unit needs a whole number in front of it"));
        }
        let (digits, after) = rest.split_at(digits_len);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);

        if unit.is_empty() {
            return Err(match after.chars().next() {
                None if last_unit.is_none() => fail(&format!(
                    "the unit is missing: write \"{digits}s\" for seconds"
                )),
                None => fail("the last number has no unit"),
                Some('.') => fail("use whole numbers, for example \"1500ms\" instead of \"1.5s\""),
                Some(' ') => fail("remove the spaces"),
                Some(other) => fail(&format!("unexpected character {other:?}")),
            });
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(fail(&format!(
                "unknown unit {unit:?}; the units are h, m, s and ms"
            )));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(fail(
                "units must go from largest to smallest, each at most once",
            ));
        }
        last_unit = Some(index);

        let group_ms = digits
            .parse::<u64>()
            .ok()
            .and_then(|count| count.checked_mul(UNITS[index].1))
            .and_then(|ms| total_ms.checked_add(ms));
        match group_ms {
            Some(sum) => total_ms = sum,
            None => return Err(fail("it is too large")),
        }
        rest = after;
    }

    Ok(Duration::from_millis(total_ms))
}

/// Writes a duration the way [`parse_duration`] reads it: `"4m"`, `"1m30s"`,
/// `"250ms"`, `"0s"`. Anything finer than a millisecond is dropped.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, unit_ms) in UNITS {
        let unit_ms = u128::from(unit_ms);
        let count = ms / unit_ms;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(name);
            ms -= count * unit_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_single_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("4m"), Ok(Duration::from_secs(240)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn accepts_combinations() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("2s500ms"), Ok(Duration::from_millis(2500)));
    }

    #[test]
    fn rejects_malformed_input() {
        for (input, reason) in [
            ("", "empty"),
            ("-5s", "negative"),
            ("15", "unit is missing"),
            ("1m30", "no unit"),
            ("4d", "unknown unit \"d\""),
            ("4 minutes", "remove the spaces"),
            ("1.5s", "whole numbers"),
            ("s", "whole number in front"),
            ("30s1m", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            (" 5s", "whole number in front"),
            ("99999999999999999999h", "too large"),
            ("5000000000000000h", "too large"),
        ] {
            let err = parse_duration(input).expect_err(input);
            assert!(
                err.starts_with(r#"expected a duration like "4m", "15s" or "250ms", found "#),
                "{input}: {err}"
            );
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["0s", "250ms", "15s", "4m", "1h", "1m30s", "1h2m3s4ms"] {
            let parsed = parse_duration(text).expect(text);
            assert_eq!(format_duration(parsed), text);
        }
        assert_eq!(format_duration(Duration::from_micros(1500)), "1ms");
    }
}
