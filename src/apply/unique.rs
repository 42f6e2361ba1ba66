//! Unique collisions: an incoming row whose values collide on a UNIQUE index (or on a primary key compared under
//! its collation) with a row of another key. DESIGN.md, "Unique collisions", gives the rule; this module finds
//! the colliding rows exactly as SQLite's index would, for column, expression and partial indexes.
//!
//! The applier writes with plain `INSERT`/`UPDATE`, so a row that collides with nothing costs nothing more; a
//! unique violation (the statement is undone by SQLite) brings it here. Each unique index of the table is read
//! once per schema version (`PRAGMA index_list`/`index_xinfo`, and the `CREATE INDEX` text for expression terms
//! and `WHERE` clauses), and the rows it would hold the incoming values against are selected with the index's
//! own terms and collations.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Transaction;

use crate::capture::ident;
use crate::wire::Value;

/// One term of a unique index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    /// A table column (by its position among the columns of `PRAGMA table_xinfo`'s name).
    Column(String),
    /// An expression, as written in `CREATE INDEX`.
    Expr(String),
}

/// A unique index (or `UNIQUE`/`PRIMARY KEY` constraint) of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueIndex {
    pub name: String,
    terms: Vec<(Term, String)>,
    /// A partial index's `WHERE` expression.
    partial: Option<String>,
}

/// The unique indexes of one table, and how its key compares.
#[derive(Debug, Default)]
pub struct TableUniques {
    pub indexes: Vec<UniqueIndex>,
    /// Some key column compares under a collation other than `BINARY` (`NOCASE`, `RTRIM`, ...): two keys SQLite
    /// treats as one may differ in bytes, so rows are matched by their exact bytes.
    pub key_collated: bool,
    /// Indexes whose definition could not be read (their collisions are left to `OR REPLACE`).
    pub unreadable: Vec<String>,
}

impl TableUniques {
    /// Whether a row of this table can collide with a row of another key.
    pub fn any(&self) -> bool {
        !self.indexes.is_empty() || !self.unreadable.is_empty()
    }
}

/// Unique indexes by table (the local name, as the capture spells it), read once per schema version.
#[derive(Default)]
pub struct Cache {
    version: i64,
    tables: HashMap<String, Arc<TableUniques>>,
}

impl Cache {
    /// Whether `table` (as a message names it; its local spelling may differ in case) is known, at
    /// `schema_version`, to have no unique index but its key. Unknown: `false`.
    pub fn known_without(&self, schema_version: i64, table: &str) -> bool {
        if self.version != schema_version {
            return false;
        }
        match self.tables.get(table) {
            Some(u) => !u.any(),
            None => self
                .tables
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(table))
                .is_some_and(|(_, u)| !u.any()),
        }
    }

    pub fn get(
        &mut self,
        tx: &Transaction<'_>,
        schema_version: i64,
        table: &str,
        key_cols: &[String],
    ) -> rusqlite::Result<Arc<TableUniques>> {
        if self.version != schema_version {
            self.tables.clear();
            self.version = schema_version;
        }
        if let Some(u) = self.tables.get(table) {
            return Ok(u.clone());
        }
        let u = Arc::new(read(tx, table, key_cols)?);
        self.tables.insert(table.to_string(), u.clone());
        Ok(u)
    }
}

/// Read the unique indexes of `table` (whose rows are keyed by `key_cols`, `rowid` for rowid-keyed tables).
pub fn read(
    tx: &Transaction<'_>,
    table: &str,
    key_cols: &[String],
) -> rusqlite::Result<TableUniques> {
    let mut out = TableUniques::default();
    let list: Vec<(String, String)> = tx
        .prepare(
            "SELECT name, origin FROM pragma_index_list(?1) WHERE \"unique\" = 1 ORDER BY seq",
        )?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (name, origin) in list {
        let cols: Vec<(i64, Option<String>, String)> = tx
            .prepare(
                "SELECT cid, name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
            )?
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        if origin == "pk" {
            out.key_collated |= cols
                .iter()
                .any(|(_, _, coll)| !coll.eq_ignore_ascii_case("BINARY"));
        }
        let sql: Option<String> = tx
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .ok()
            .flatten();
        let parsed = sql.as_deref().and_then(parse_index_sql);
        let mut terms = Vec::new();
        let mut ok = true;
        for (i, (cid, col, coll)) in cols.iter().enumerate() {
            let term = match (cid, col) {
                (-2, _) => match parsed.as_ref().and_then(|(t, _)| t.get(i)) {
                    Some(e) => Term::Expr(e.clone()),
                    None => {
                        ok = false;
                        break;
                    }
                },
                (-1, _) => Term::Column("rowid".into()),
                (_, Some(c)) => Term::Column(c.clone()),
                _ => {
                    ok = false;
                    break;
                }
            };
            terms.push((term, coll.clone()));
        }
        let partial = parsed.and_then(|(_, w)| w);
        if !ok {
            out.unreadable.push(name);
            continue;
        }
        // The primary key of the row's own key columns, compared in bytes, is the row's identity: only a
        // collated one can collide with another row.
        let is_own_key = origin == "pk"
            && terms.len() == key_cols.len()
            && terms.iter().zip(key_cols).all(|((t, coll), k)| {
                matches!(t, Term::Column(c) if c.eq_ignore_ascii_case(k))
                    && coll.eq_ignore_ascii_case("BINARY")
            });
        if !is_own_key {
            out.indexes.push(UniqueIndex {
                name,
                terms,
                partial,
            });
        }
    }
    Ok(out)
}

/// The terms and the `WHERE` clause of a `CREATE [UNIQUE] INDEX` statement, as SQL text. The terms keep any
/// `COLLATE` and lose `ASC`/`DESC`.
fn parse_index_sql(sql: &str) -> Option<(Vec<String>, Option<String>)> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut open = None;
    // The first parenthesis outside quotes opens the term list (names before it are quoted if odd).
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' | b'`' => i = skip_quoted(b, i, b[i])?,
            b'[' => i = b[i..].iter().position(|&c| c == b']')? + i + 1,
            b'(' => {
                open = Some(i);
                break;
            }
            _ => i += 1,
        }
    }
    let open = open?;
    let mut depth = 0;
    let mut start = open + 1;
    let mut terms = Vec::new();
    let mut i = open;
    let close = loop {
        if i >= b.len() {
            return None;
        }
        match b[i] {
            b'\'' | b'"' | b'`' => {
                i = skip_quoted(b, i, b[i])?;
                continue;
            }
            b'[' => {
                i = b[i..].iter().position(|&c| c == b']')? + i + 1;
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    terms.push(strip_order(&sql[start..i]));
                    break i;
                }
            }
            b',' if depth == 1 => {
                terms.push(strip_order(&sql[start..i]));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    };
    let rest = sql[close + 1..].trim().trim_end_matches(';').trim();
    let partial = (rest.len() > 5 && rest[..5].eq_ignore_ascii_case("where"))
        .then(|| rest[5..].trim().to_string());
    Some((terms, partial))
}

/// The index just past the quoted text starting at `i` (a doubled quote is part of the text).
fn skip_quoted(b: &[u8], mut i: usize, q: u8) -> Option<usize> {
    i += 1;
    loop {
        let c = *b.get(i)?;
        i += 1;
        if c == q {
            if b.get(i) == Some(&q) {
                i += 1;
                continue;
            }
            return Some(i);
        }
    }
}

/// A term without its trailing `ASC` or `DESC`.
fn strip_order(term: &str) -> String {
    let t = term.trim();
    for w in ["asc", "desc"] {
        if t.len() > w.len() {
            let (head, tail) = t.split_at(t.len() - w.len());
            if tail.eq_ignore_ascii_case(w)
                && head.ends_with(|c: char| c.is_whitespace() || c == ')')
            {
                return head.trim().to_string();
            }
        }
    }
    t.to_string()
}

/// A row that collides with an incoming one.
#[derive(Debug)]
pub struct Collision {
    /// The index it collides on.
    pub index: String,
    /// Its key values (in key column order).
    pub key: Vec<Value>,
    /// The row as a JSON object (the journal's `lost_row`).
    pub row: String,
}

/// The incoming row: its table's shipped columns and key, and its values.
pub struct Incoming<'a> {
    pub columns: &'a [String],
    pub key_cols: &'a [String],
    pub values: &'a [Value],
}

impl Incoming<'_> {
    fn rowid_keyed(&self) -> bool {
        self.key_cols.len() == 1 && self.key_cols[0] == "rowid"
    }

    fn value_of(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))
            .map(|i| &self.values[i])
    }

    /// The key values of the incoming row.
    pub fn key(&self) -> Vec<&Value> {
        self.key_cols
            .iter()
            .filter_map(|k| self.value_of(k))
            .collect()
    }
}

/// `WHERE` condition matching the row with key values at parameters `?first`.. exactly (bytes, not collation).
pub fn exact_key_cond(key_cols: &[String], first: usize, collated: bool) -> String {
    let rowid_keyed = key_cols.len() == 1 && key_cols[0] == "rowid";
    key_cols
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let c = if rowid_keyed {
                "rowid".to_string()
            } else {
                ident(k)
            };
            let p = first + i;
            if collated {
                format!("{c} IS ?{p} AND {c} IS ?{p} COLLATE BINARY")
            } else {
                format!("{c} IS ?{p}")
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Every row of another key that the incoming row collides with, on any unique index, as SQLite compares
/// them. `None` when an index could not be evaluated (its definition unreadable, or an expression naming a
/// column this message does not carry).
pub fn collisions(
    tx: &Transaction<'_>,
    local: &str,
    u: &TableUniques,
    row: &Incoming<'_>,
) -> rusqlite::Result<Option<Vec<Collision>>> {
    if !u.unreadable.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<Collision> = Vec::new();
    let own_key = row.key();
    if own_key.len() != row.key_cols.len() {
        return Ok(None);
    }
    for ix in &u.indexes {
        // The incoming row's entry in this index (None: it has none, so it collides with nothing here).
        let Some(entry) = entry(tx, ix, row)? else {
            return Ok(None);
        };
        let Some(entry) = entry else { continue };
        let mut cond: Vec<String> = ix
            .terms
            .iter()
            .enumerate()
            .map(|(i, (t, coll))| {
                let lhs = match t {
                    Term::Column(c) if c == "rowid" => "rowid".to_string(),
                    Term::Column(c) => ident(c),
                    Term::Expr(e) => format!("({e})"),
                };
                format!("{lhs} = ?{} COLLATE {}", i + 1, ident(coll))
            })
            .collect();
        if let Some(w) = &ix.partial {
            cond.push(format!("({w})"));
        }
        cond.push(format!(
            "NOT ({})",
            exact_key_cond(row.key_cols, entry.len() + 1, u.key_collated)
        ));
        let sql = format!(
            "SELECT {}* FROM {} WHERE {}",
            if row.rowid_keyed() { "rowid, " } else { "" },
            ident(local),
            cond.join(" AND ")
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let key_pos: Vec<usize> = row
            .key_cols
            .iter()
            .map(|k| {
                names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(k))
                    .unwrap_or(0)
            })
            .collect();
        let params = entry.iter().chain(own_key.iter().copied());
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            let key: Vec<Value> = key_pos
                .iter()
                .map(|&p| r.get_ref(p).map(Value::from_ref))
                .collect::<Result<_, _>>()?;
            if out.iter().any(|c| c.key == key) {
                continue;
            }
            let mut obj = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                obj.insert(n.clone(), super::journal::json_value(r.get_ref(i)?));
            }
            out.push(Collision {
                index: ix.name.clone(),
                key,
                row: serde_json::Value::Object(obj).to_string(),
            });
        }
    }
    Ok(Some(out))
}

/// The incoming row's values for the index's terms: `Some(None)` when the row has no entry that can collide
/// (a `NULL` term, or outside a partial index); `None` when they cannot be computed from the message.
fn entry(
    tx: &Transaction<'_>,
    ix: &UniqueIndex,
    row: &Incoming<'_>,
) -> rusqlite::Result<Option<Option<Vec<Value>>>> {
    let plain = ix.partial.is_none() && ix.terms.iter().all(|(t, _)| matches!(t, Term::Column(_)));
    let values: Vec<Value> = if plain {
        let mut v = Vec::with_capacity(ix.terms.len());
        for (t, _) in &ix.terms {
            let Term::Column(c) = t else { unreachable!() };
            match row.value_of(c) {
                Some(x) => v.push(x.clone()),
                // A column the message does not carry: this write does not set it.
                None => return Ok(Some(None)),
            }
        }
        v
    } else {
        // Evaluate the terms (and the partial index's condition) over the incoming values.
        let from: Vec<String> = row
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("?{} AS {}", i + 1, ident(c)))
            .collect();
        let mut exprs: Vec<String> = ix
            .terms
            .iter()
            .map(|(t, _)| match t {
                Term::Column(c) => ident(c),
                Term::Expr(e) => format!("({e})"),
            })
            .collect();
        exprs.push(match &ix.partial {
            Some(w) => format!("(({w}) IS TRUE)"),
            None => "1".into(),
        });
        let sql = format!(
            "SELECT {} FROM (SELECT {})",
            exprs.join(", "),
            from.join(", ")
        );
        let mut stmt = match tx.prepare_cached(&sql) {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        let n = exprs.len();
        let got: Vec<Value> = match stmt.query_row(rusqlite::params_from_iter(row.values), |r| {
            (0..n)
                .map(|i| r.get_ref(i).map(Value::from_ref))
                .collect::<Result<Vec<_>, _>>()
        }) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        let (inside, terms) = got.split_last().expect("at least the condition");
        if !matches!(inside, Value::Integer(1)) {
            return Ok(Some(None));
        }
        terms.to_vec()
    };
    if values.iter().any(|v| matches!(v, Value::Null)) {
        return Ok(Some(None));
    }
    Ok(Some(Some(values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_sql_terms_and_where() {
        let (t, w) = parse_index_sql(
            "CREATE UNIQUE INDEX \"a(b\" ON t (lower(email) COLLATE NOCASE DESC, \"x,y\" ASC, coalesce(a, ','))  WHERE deleted IS NULL;",
        )
        .unwrap();
        assert_eq!(
            t,
            ["lower(email) COLLATE NOCASE", "\"x,y\"", "coalesce(a, ',')"]
        );
        assert_eq!(w.as_deref(), Some("deleted IS NULL"));
        let (t, w) = parse_index_sql("create unique index i on [t (1)] (a)").unwrap();
        assert_eq!(t, ["a"]);
        assert_eq!(w, None);
        assert_eq!(strip_order("desc"), "desc", "a column named desc");
    }

    fn setup(sql: &str) -> rusqlite::Connection {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        c
    }

    fn found(
        c: &mut rusqlite::Connection,
        table: &str,
        cols: &[&str],
        key: &[&str],
        values: Vec<Value>,
    ) -> Option<Vec<(String, Vec<Value>)>> {
        let tx = c.transaction().unwrap();
        let key_cols: Vec<String> = key.iter().map(|s| s.to_string()).collect();
        let columns: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        let u = read(&tx, table, &key_cols).unwrap();
        let row = Incoming {
            columns: &columns,
            key_cols: &key_cols,
            values: &values,
        };
        collisions(&tx, table, &u, &row)
            .unwrap()
            .map(|v| v.into_iter().map(|c| (c.index, c.key)).collect())
    }

    fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn finds_rows_as_the_index_compares_them() {
        let mut c = setup(
            "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, a, b, slug TEXT, gone INT, UNIQUE(a, b));
             CREATE UNIQUE INDEX u_slug ON u (lower(slug)) WHERE gone IS NULL;
             INSERT INTO u VALUES (1, 'ann@x', 1, 2, 'Hello', NULL), (2, 'bob@x', 1, 3, 'World', 1);",
        );
        let cols = ["id", "email", "a", "b", "slug", "gone"];
        let row = |id, email: &str, a, b, slug: &str, gone: Value| {
            vec![
                Value::Integer(id),
                text(email),
                Value::Integer(a),
                Value::Integer(b),
                text(slug),
                gone,
            ]
        };
        let got = found(
            &mut c,
            "u",
            &cols,
            &["id"],
            row(9, "ann@x", 5, 5, "x", Value::Null),
        )
        .unwrap();
        assert_eq!(
            got,
            [("sqlite_autoindex_u_1".to_string(), vec![Value::Integer(1)])]
        );
        let got = found(
            &mut c,
            "u",
            &cols,
            &["id"],
            row(9, "z", 1, 3, "x", Value::Null),
        )
        .unwrap();
        assert_eq!(
            got,
            [("sqlite_autoindex_u_2".to_string(), vec![Value::Integer(2)])]
        );
        // Expression index, partial: row 1 is inside it, row 2 is not.
        let got = found(
            &mut c,
            "u",
            &cols,
            &["id"],
            row(9, "z", 7, 7, "HELLO", Value::Null),
        )
        .unwrap();
        assert_eq!(got, [("u_slug".to_string(), vec![Value::Integer(1)])]);
        assert!(
            found(
                &mut c,
                "u",
                &cols,
                &["id"],
                row(9, "z", 7, 7, "world", Value::Null)
            )
            .unwrap()
            .is_empty()
        );
        assert!(
            found(
                &mut c,
                "u",
                &cols,
                &["id"],
                row(9, "z", 7, 7, "HELLO", Value::Integer(1))
            )
            .unwrap()
            .is_empty(),
            "outside the partial index"
        );
        // The row itself is not a collision; NULLs never collide.
        assert!(
            found(
                &mut c,
                "u",
                &cols,
                &["id"],
                row(1, "ann@x", 1, 2, "Hello", Value::Null)
            )
            .unwrap()
            .is_empty()
        );
        assert!(
            found(
                &mut c,
                "u",
                &cols,
                &["id"],
                vec![
                    Value::Integer(9),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null
                ]
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn a_collated_key_collides_with_its_other_spelling() {
        let mut c = setup(
            "CREATE TABLE a (email TEXT PRIMARY KEY COLLATE NOCASE, name TEXT) WITHOUT ROWID;
             INSERT INTO a VALUES ('Ann@Example.com', 'one');",
        );
        let tx = c.transaction().unwrap();
        assert!(read(&tx, "a", &["email".into()]).unwrap().key_collated);
        drop(tx);
        let got = found(
            &mut c,
            "a",
            &["email", "name"],
            &["email"],
            vec![text("ann@example.com"), text("two")],
        )
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, [text("Ann@Example.com")]);
        assert!(
            found(
                &mut c,
                "a",
                &["email", "name"],
                &["email"],
                vec![text("Ann@Example.com"), text("two")]
            )
            .unwrap()
            .is_empty()
        );
        // A binary key is the row's identity, not an index to collide on.
        let mut c = setup("CREATE TABLE b (k TEXT PRIMARY KEY, v) WITHOUT ROWID;");
        let tx = c.transaction().unwrap();
        let u = read(&tx, "b", &["k".into()]).unwrap();
        assert!(!u.any() && !u.key_collated);
    }
}
