//! Numbers, sizes and times formatted for people, the same in the dashboard (server and browser)
//! and in the emails; and text escaped for HTML and URLs, the one escaper of each.

use chrono::{DateTime, Utc};

/// `2026-11-28 07:12 UTC`
pub fn time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub fn time_or(at: Option<&DateTime<Utc>>, none: &str) -> String {
    at.map(time).unwrap_or_else(|| none.to_owned())
}

/// `1234567` → `1,234,567`
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 request`, `1,234 requests`: a count with its noun in the right number.
pub fn counted(n: i64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// A key's limits where space is short (tables, cards): `1,000/h · 10,000/day`.
pub fn limits(per_hour: i64, per_day: i64) -> String {
    format!("{}/h · {}/day", count(per_hour), count(per_day))
}

/// A key's limits in a sentence (emails, notices, messages): `1,000 requests per hour and 10,000
/// per day`.
pub fn limits_in_words(per_hour: i64, per_day: i64) -> String {
    format!("{} per hour and {} per day", counted(per_hour, "request", "requests"), count(per_day))
}

/// `07:12:05 UTC`
pub fn time_seconds(at: &DateTime<Utc>) -> String {
    at.format("%H:%M:%S UTC").to_string()
}

/// `17:40 UTC`
pub fn clock(at: &DateTime<Utc>) -> String {
    at.format("%H:%M UTC").to_string()
}

/// `12.5%` from a share between 0 and 1.
pub fn percent(share: f64) -> String {
    if share > 0.0 && share < 0.001 {
        "<0.1%".to_owned()
    } else {
        format!("{:.1}%", share * 100.0)
    }
}

/// `29%` from a quota's use already in percent (0 to 100 and over), as [`percent`] keeps some use
/// from reading as none: below 1 % is "<1%", and use short of the whole quota ">99%", not a
/// "100%" that reads as used up.
pub fn whole_percent(pct: f64) -> String {
    if pct > 0.0 && pct < 1.0 {
        "<1%".to_owned()
    } else if pct > 99.0 && pct < 100.0 {
        ">99%".to_owned()
    } else {
        format!("{pct:.0}%")
    }
}

/// `850 µs`, `3.4 ms`, `1.25 s`; `—` for none.
pub fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "—".to_owned(),
        Some(ms) if ms < 1.0 => format!("{:.0} µs", ms * 1000.0),
        Some(ms) if ms < 1000.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{:.2} s", ms / 1000.0),
    }
}

/// `512 B`, `1.5 KB`, `2.0 MB` (units of 1024). A unit is used below 1000 of it: four digits
/// before the point would read as a typo for the next unit ("1003.1 KB" is "1.0 MB").
pub fn bytes(n: i64) -> String {
    let mut size = n.max(0) as f64;
    if size < 1000.0 {
        return format!("{size:.0} B");
    }
    let units = ["KB", "MB", "GB"];
    let mut unit = 0;
    size /= 1024.0;
    // On the figure as shown: 999.96 KB would read "1000.0 KB".
    while size >= 999.95 && unit + 1 < units.len() {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", units[unit])
}

/// [`wait`] from `now` until `at`.
pub fn duration_until(now: &DateTime<Utc>, at: &DateTime<Utc>) -> String {
    // Whole seconds rounded up too: 59.9 s away reads "1 min", not "59 s".
    wait((*at - *now).num_milliseconds().max(0).saturating_add(999) / 1000)
}

/// A wait of `secs` seconds: `23 min`, `4 h 05 min`, `45 s`; minutes rounded up throughout, as
/// `Retry-After` rounds its seconds (16 min 45 s is "17 min", 4 h 16 min 45 s "4 h 17 min",
/// 59 min 59 s "1 h 00 min").
pub fn wait(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60 + i64::from(secs % 60 != 0);
    if secs < 60 {
        format!("{secs} s")
    } else if minutes < 60 {
        format!("{minutes} min")
    } else {
        format!("{} h {:02} min", minutes / 60, minutes % 60)
    }
}

/// `text` for HTML text or a double-quoted attribute value: what the server writes by hand
/// (emails, page titles, kept form text, the unsubscribe pages).
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as a URL query value: all but unreserved characters and `/` percent-encoded (a path
/// in `?next=` stays readable).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_for_html_and_urls() {
        assert_eq!(
            html_escape("a & b </textarea><script>x</script> \"q\""),
            "a &amp; b &lt;/textarea&gt;&lt;script&gt;x&lt;/script&gt; &quot;q&quot;"
        );
        assert_eq!(html_escape("50% more, “please”"), "50% more, “please”");
        assert_eq!(query_value("/dashboard/keys?a=1&b=é #x"), "/dashboard/keys%3Fa%3D1%26b%3D%C3%A9%20%23x");
        assert_eq!(query_value("ann+test@example.com"), "ann%2Btest%40example.com");
    }

    #[test]
    fn human_numbers() {
        assert_eq!(counted(1, "request", "requests"), "1 request");
        assert_eq!(counted(0, "request", "requests"), "0 requests");
        assert_eq!(counted(12_000, "key", "keys"), "12,000 keys");
        assert_eq!(limits(1_000, 10_000), "1,000/h · 10,000/day");
        assert_eq!(limits_in_words(1, 10_000), "1 request per hour and 10,000 per day");
        assert_eq!(limits_in_words(2_000, 20_000), "2,000 requests per hour and 20,000 per day");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(millis(Some(3.44)), "3.4 ms");
        assert_eq!(millis(Some(0.85)), "850 µs");
        assert_eq!(millis(None), "—");
        assert_eq!(bytes(1536), "1.5 KB");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.0 KB");
        assert_eq!(bytes(1_027_174), "1.0 MB");
        assert_eq!(bytes(1_023_949), "1.0 MB");
        assert_eq!(bytes(1_023_948), "999.9 KB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 * 1024), "3072.0 GB");
        let now = DateTime::parse_from_rfc3339("2026-11-28T07:37:00Z").unwrap().with_timezone(&Utc);
        let reset = DateTime::parse_from_rfc3339("2026-11-28T08:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(duration_until(&now, &reset), "23 min");
        // Rounded up on both sides of an hour: a gauge never says a reset comes sooner.
        let before = |secs: i64| duration_until(&(reset - chrono::Duration::seconds(secs)), &reset);
        assert_eq!(before(16 * 60 + 45), "17 min");
        assert_eq!(before(4 * 3600 + 16 * 60 + 45), "4 h 17 min");
        assert_eq!(before(3599), "1 h 00 min");
        // A sign-in lockout's wait, in seconds.
        assert_eq!(wait(892), "15 min");
        assert_eq!(wait(1), "1 s");
        assert_eq!(before(3600), "1 h 00 min");
        assert_eq!(before(3601), "1 h 01 min");
        assert_eq!(before(59), "59 s");
        // An absurd wait (a value from outside) still reads as one, without overflowing.
        assert_eq!(wait(i64::MAX), format!("{} h 31 min", i64::MAX / 3600));
    }

    #[test]
    fn some_use_never_reads_as_none() {
        assert_eq!(whole_percent(0.0), "0%");
        assert_eq!(whole_percent(0.22), "<1%");
        assert_eq!(whole_percent(0.9), "<1%");
        assert_eq!(whole_percent(1.0), "1%");
        assert_eq!(whole_percent(29.4), "29%");
        assert_eq!(whole_percent(99.6), ">99%");
        assert_eq!(whole_percent(99.0), "99%");
        assert_eq!(whole_percent(100.0), "100%");
    }

    #[test]
    fn counts_get_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(-10000), "-10,000");
    }
}
