//! Composite keys in the change log are written by the triggers as `quote(a) || ',' || quote(b) ...`:
//! a list of SQL literals. This parses such a list back into exact values.

use crate::wire::Value;

/// Parse a comma-separated list of SQL literals as produced by SQLite's `quote()`: `NULL`, integers, reals
/// (`1.0e+308`, `9.0e+999` for infinity), `'text'` with doubled quotes, `X'hex'` blobs.
pub fn parse_quoted_list(input: &[u8], expected: usize) -> Option<Vec<Value>> {
    let mut out = Vec::with_capacity(expected);
    let mut i = 0;
    loop {
        let (v, next) = parse_one(input, i)?;
        out.push(v);
        i = next;
        if i == input.len() {
            break;
        }
        if input[i] != b',' {
            return None;
        }
        i += 1;
    }
    (out.len() == expected).then_some(out)
}

fn parse_one(s: &[u8], start: usize) -> Option<(Value, usize)> {
    let rest = &s[start..];
    if rest.starts_with(b"NULL") {
        return Some((Value::Null, start + 4));
    }
    if rest.starts_with(b"X'") || rest.starts_with(b"x'") {
        let end = rest[2..].iter().position(|&c| c == b'\'')? + 2;
        let blob = hex::decode(&rest[2..end]).ok()?;
        return Some((Value::Blob(blob), start + end + 1));
    }
    if rest.first() == Some(&b'\'') {
        let mut text = Vec::new();
        let mut j = 1;
        loop {
            let c = *rest.get(j)?;
            if c == b'\'' {
                if rest.get(j + 1) == Some(&b'\'') {
                    text.push(b'\'');
                    j += 2;
                    continue;
                }
                return Some((Value::Text(text), start + j + 1));
            }
            text.push(c);
            j += 1;
        }
    }
    let len = rest.iter().position(|&c| c == b',').unwrap_or(rest.len());
    let tok = std::str::from_utf8(&rest[..len]).ok()?;
    if tok.is_empty() {
        return None;
    }
    let v = if tok.bytes().all(|c| c.is_ascii_digit() || c == b'-') {
        Value::Integer(tok.parse().ok()?)
    } else {
        Value::Real(tok.parse().ok()?)
    };
    Some((v, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_sqlite_quote_produces() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let cases: Vec<Vec<Value>> = vec![
            vec![Value::Integer(i64::MIN), Value::Integer(i64::MAX)],
            vec![Value::Text(b"it's, a 'test'".to_vec()), Value::Null],
            vec![Value::Blob(vec![0, 255, 16]), Value::Real(0.1)],
            vec![
                Value::Real(1e308),
                Value::Real(f64::INFINITY),
                Value::Real(-2.5e-300),
            ],
            vec![Value::Text(Vec::new()), Value::Blob(Vec::new())],
        ];
        for vals in cases {
            let exprs: Vec<String> = (1..=vals.len()).map(|i| format!("quote(?{i})")).collect();
            let sql = format!("SELECT {}", exprs.join(" || ',' || "));
            let text: String = conn
                .query_row(&sql, rusqlite::params_from_iter(vals.iter()), |r| r.get(0))
                .unwrap();
            let parsed =
                parse_quoted_list(text.as_bytes(), vals.len()).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(parsed, vals, "from {text}");
        }
    }

    #[test]
    fn rejects_malformed_lists() {
        assert!(parse_quoted_list(b"1,2", 3).is_none());
        assert!(parse_quoted_list(b"'unterminated", 1).is_none());
        assert!(parse_quoted_list(b"1,,2", 3).is_none());
        assert!(parse_quoted_list(b"X'zz'", 1).is_none());
    }
}
