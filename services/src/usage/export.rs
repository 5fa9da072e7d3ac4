//! The CSV export format (DESIGN.md): one header row, then one row per period, key and
//! endpoint, UTC periods, RFC 4180 quoting.

use std::fmt::Write;

use super::reports::ExportRow;

pub const HEADER: &str = "period_start,key_id,key_name,method,endpoint,requests,errors_4xx,errors_5xx,throttled,bytes_in,bytes_out,p50_ms,p95_ms\r\n";

/// A field quoted when it holds a comma, quote or line break. Text a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@` first) is prefixed with `'`.
pub fn field(raw: &str) -> String {
    let guarded = if raw.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{raw}") } else { raw.to_owned() };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

fn millis(v: Option<f64>) -> String {
    v.map(|ms| format!("{ms:.3}")).unwrap_or_default()
}

/// Appends one row (with its line break) to `out`.
pub fn write_row(out: &mut String, row: &ExportRow, key_name: &str) {
    let t = &row.totals;
    let _ = write!(
        out,
        "{},{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
        row.period_start.format("%Y-%m-%dT%H:%M:%SZ"),
        row.key_id,
        field(key_name),
        field(&row.method),
        field(&row.endpoint),
        t.requests,
        t.errors_4xx,
        t.errors_5xx,
        t.throttled,
        t.bytes_in,
        t.bytes_out,
        millis(t.p50_ms()),
        millis(t.p95_ms()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("=SUM(A1:A9)"), "'=SUM(A1:A9)");
        assert_eq!(field("-1,2"), "\"'-1,2\"");
    }
}
