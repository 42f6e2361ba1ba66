//! One feed record per row change: the versioned JSON of `docs/FEED.md`, written by hand so that columns keep
//! their table order and every value keeps its exact form (integers with their digits, reals with a decimal
//! point or an exponent, text that is not UTF-8 and blobs in base64).

use crate::wire::{Row, TableChanges, Value};

/// The record format's version (`"v"`).
pub const VERSION: u32 = 1;

/// What a record says of where its change came from.
pub struct Origin<'a> {
    pub node: u64,
    /// Unix ms by the origin's clock when it read the row (0: unknown).
    pub at_ms: u64,
    pub unit: &'a str,
}

/// The record of `row` (a change to `t`'s table), without its cursor: `{"v":1,...,"unit":"..."}` with the
/// closing brace left off, so a reader can add `,"cursor":"..."}` (see [`close`]). `None` when the row
/// carries a large value that was not assembled (the caller puts assembled values in place first).
pub fn open(t: &TableChanges, row: &Row, origin: &Origin<'_>, out: &mut Vec<u8>) -> Option<()> {
    write(t, row, origin, None, out)
}

/// The record of an upsert too large for one message: its key and no row (`"row":null`), and
/// `"omitted_bytes"`, the size its record would have had.
pub fn open_omitted(
    t: &TableChanges,
    row: &Row,
    origin: &Origin<'_>,
    bytes: usize,
    out: &mut Vec<u8>,
) -> Option<()> {
    write(t, row, origin, Some(bytes), out)
}

fn write(
    t: &TableChanges,
    row: &Row,
    origin: &Origin<'_>,
    omitted: Option<usize>,
    out: &mut Vec<u8>,
) -> Option<()> {
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(VERSION.to_string().as_bytes());
    let (op, values) = match row {
        Row::Upsert(v) => ("upsert", v),
        Row::Delete(v) => ("delete", v),
    };
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"table\":");
    string(&t.table, out);
    out.extend_from_slice(b",\"key\":");
    let key: Option<Vec<(&String, &Value)>> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let v = match row {
                Row::Upsert(_) => t
                    .columns
                    .iter()
                    .position(|c| c == k)
                    .and_then(|p| values.get(p)),
                Row::Delete(_) => values.get(i),
            };
            v.map(|v| (k, v))
        })
        .collect();
    object(key?, out)?;
    out.extend_from_slice(b",\"row\":");
    match (row, omitted) {
        (Row::Upsert(v), None) => object(t.columns.iter().zip(v), out)?,
        (Row::Upsert(_), Some(bytes)) => {
            out.extend_from_slice(b"null,\"omitted_bytes\":");
            out.extend_from_slice(bytes.to_string().as_bytes());
        }
        (Row::Delete(_), _) => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"origin\":");
    out.extend_from_slice(origin.node.to_string().as_bytes());
    out.extend_from_slice(b",\"ts\":");
    match origin.at_ms {
        0 => out.extend_from_slice(b"null"),
        ms => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            out.push(b'"');
            out.extend_from_slice(humantime::format_rfc3339_millis(t).to_string().as_bytes());
            out.push(b'"');
        }
    }
    out.extend_from_slice(b",\"unit\":");
    string(origin.unit, out);
    Some(())
}

/// Ends a record [`open`] wrote (stored in the feed without a cursor) with its cursor.
pub fn close(open: &[u8], cursor: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(open);
    out.extend_from_slice(b",\"cursor\":");
    string(cursor, out);
    out.push(b'}');
}

/// A JSON object of `fields` (name, value), in their order.
fn object<'a>(
    fields: impl IntoIterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) -> Option<()> {
    out.push(b'{');
    for (i, (name, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(name, out);
        out.push(b':');
        value(v, out)?;
    }
    out.push(b'}');
    Some(())
}

/// A JSON string.
fn string(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// One value as `docs/FEED.md` says. `None` for a large value not assembled.
fn value(v: &Value, out: &mut Vec<u8>) -> Option<()> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Real(f) if f.is_nan() => out.extend_from_slice(b"\"NaN\""),
        Value::Real(f) if f.is_infinite() && *f > 0.0 => out.extend_from_slice(b"\"Infinity\""),
        Value::Real(f) if f.is_infinite() => out.extend_from_slice(b"\"-Infinity\""),
        // serde_json writes a finite f64 as its shortest round-trip form, always with a decimal point or an
        // exponent ("1.0", "1e+300", "-0.0").
        Value::Real(f) => {
            serde_json::to_writer(&mut *out, f).expect("writing to a Vec cannot fail")
        }
        Value::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => string(s, out),
            Err(_) => {
                out.extend_from_slice(b"{\"text_base64\":\"");
                base64(t, out);
                out.extend_from_slice(b"\"}");
            }
        },
        Value::Blob(b) => {
            out.extend_from_slice(b"{\"base64\":\"");
            base64(b, out);
            out.extend_from_slice(b"\"}");
        }
        Value::Staged(_) => return None,
    }
    Some(())
}

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63]);
        out.push(ALPHABET[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63]
        } else {
            b'='
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableChanges {
        TableChanges {
            table: "t \"x\"".into(),
            columns: vec!["id".into(), "r".into(), "s".into(), "b".into(), "n".into()],
            key: vec!["id".into()],
            rows: Vec::new(),
        }
    }

    fn record(row: Row, at_ms: u64) -> String {
        let mut out = Vec::new();
        let o = Origin {
            node: 7,
            at_ms,
            unit: "7.1.42",
        };
        open(&table(), &row, &o, &mut out).expect("no staged value");
        let mut closed = Vec::new();
        close(&out, "c", &mut closed);
        String::from_utf8(closed).expect("JSON is UTF-8")
    }

    #[test]
    fn an_upsert_keeps_every_value_exact() {
        let row = Row::Upsert(vec![
            Value::Integer(i64::MIN),
            Value::Real(1.0),
            Value::Text("é\n\"".into()),
            Value::Blob(vec![0, 255, 1]),
            Value::Null,
        ]);
        assert_eq!(
            record(row, 1_733_572_800_123),
            r#"{"v":1,"op":"upsert","table":"t \"x\"","key":{"id":-9223372036854775808},"row":{"id":-9223372036854775808,"r":1.0,"s":"é\n\"","b":{"base64":"AP8B"},"n":null},"origin":7,"ts":"2024-12-07T12:00:00.123Z","unit":"7.1.42","cursor":"c"}"#
        );
    }

    #[test]
    fn reals_keep_a_point_or_an_exponent_and_non_finite_ones_are_strings() {
        for (f, want) in [
            (-0.0, "-0.0"),
            (1e300, "1e+300"),
            (0.1, "0.1"),
            (f64::NAN, "\"NaN\""),
            (f64::INFINITY, "\"Infinity\""),
            (f64::NEG_INFINITY, "\"-Infinity\""),
        ] {
            let mut out = Vec::new();
            value(&Value::Real(f), &mut out).expect("a real");
            assert_eq!(String::from_utf8(out).unwrap(), want, "{f}");
        }
    }

    #[test]
    fn a_delete_has_its_key_and_no_row_and_text_that_is_not_utf8_is_base64() {
        let row = Row::Delete(vec![Value::Text(vec![0xff, b'a'])]);
        assert_eq!(
            record(row, 0),
            r#"{"v":1,"op":"delete","table":"t \"x\"","key":{"id":{"text_base64":"/2E="}},"row":null,"origin":7,"ts":null,"unit":"7.1.42","cursor":"c"}"#
        );
    }

    #[test]
    fn a_record_too_large_keeps_its_key_and_says_how_large() {
        let row = Row::Upsert(vec![
            Value::Integer(5),
            Value::Real(1.5),
            Value::Text("x".into()),
            Value::Null,
            Value::Null,
        ]);
        let mut out = Vec::new();
        let o = Origin {
            node: 7,
            at_ms: 0,
            unit: "u",
        };
        open_omitted(&table(), &row, &o, 3_000_000, &mut out).expect("no staged value");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"v":1,"op":"upsert","table":"t \"x\"","key":{"id":5},"row":null,"omitted_bytes":3000000,"origin":7,"ts":null,"unit":"u""#
        );
    }

    #[test]
    fn base64_pads() {
        for (bytes, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
        ] {
            let mut out = Vec::new();
            base64(bytes, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
