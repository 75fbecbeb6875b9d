//! Time arguments: RFC 3339 (`2026-11-21T10:00:00Z`), a time today in UTC (`10:00`), or an age
//! (`30s`, `15m`, `2h`, `3d` ago).

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};

pub fn parse(arg: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(arg) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveTime::parse_from_str(arg, "%H:%M") {
        return Ok(now.date_naive().and_time(t).and_utc());
    }
    let (digits, unit) = arg.split_at(arg.len().saturating_sub(1));
    let n: i64 = digits.parse().map_err(|_| bad(arg))?;
    let age = match unit {
        "s" => TimeDelta::try_seconds(n),
        "m" => TimeDelta::try_minutes(n),
        "h" => TimeDelta::try_hours(n),
        "d" => TimeDelta::try_days(n),
        _ => None,
    }
    .ok_or_else(|| bad(arg))?;
    now.checked_sub_signed(age).ok_or_else(|| bad(arg))
}

fn bad(arg: &str) -> String {
    format!(
        "`{arg}` is not a time: use RFC 3339 (2026-11-21T10:00:00Z), HH:MM (today, UTC) or an age (30m, 2h, 1d)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T12:34:56Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            parse("2026-11-20T10:00:00+01:00", now)
                .expect("rfc3339")
                .to_rfc3339(),
            "2026-11-20T09:00:00+00:00"
        );
        assert_eq!(
            parse("10:00", now).expect("hh:mm").to_rfc3339(),
            "2026-11-21T10:00:00+00:00"
        );
        assert_eq!(
            parse("90m", now).expect("age").to_rfc3339(),
            "2026-11-21T11:04:56+00:00"
        );
        assert_eq!(
            parse("1d", now).expect("age").to_rfc3339(),
            "2026-11-20T12:34:56+00:00"
        );
        assert!(parse("yesterday", now).unwrap_err().contains("not a time"));
        assert!(parse("5w", now).is_err());
    }
}
