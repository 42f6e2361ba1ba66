//! Schema introspection: which tables are captured, their columns, and how each row is keyed.

use rusqlite::Connection;

use super::CaptureError;
use crate::capture::PREFIX;

/// How rows of a table are identified across nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `INTEGER PRIMARY KEY` column (an alias of the rowid): the key is that column.
    RowidAlias(String),
    /// No declared primary key: the key is the rowid itself, shipped as the pseudo column `rowid`.
    Rowid,
    /// Declared primary key of other types, composite keys, `WITHOUT ROWID` tables.
    Columns(Vec<String>),
}

/// A captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Stable small id, written by the triggers into the change log.
    pub id: i64,
    pub name: String,
    /// Writable columns (generated and hidden columns excluded), in table order.
    pub columns: Vec<String>,
    pub key: KeyKind,
    /// `SELECT` of a row's shipped columns by its key values (`?1`, `?2`, ...), built once.
    pub select_sql: String,
    /// Its ` FROM ... WHERE ...` part, to select other columns of the row.
    pub by_key_sql: String,
}

impl TableInfo {
    pub fn new(id: i64, name: String, columns: Vec<String>, key: KeyKind) -> TableInfo {
        let cols: Vec<String> = columns.iter().map(|c| ident(c)).collect();
        let table = ident(&name);
        let (list, by_key_sql) = match &key {
            KeyKind::Rowid => (
                format!("rowid, {}", cols.join(", ")),
                format!(" FROM {table} WHERE rowid = ?1"),
            ),
            KeyKind::RowidAlias(c) => (
                cols.join(", "),
                format!(" FROM {table} WHERE {} = ?1", ident(c)),
            ),
            KeyKind::Columns(kc) => {
                let cond: Vec<String> = kc
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{} IS ?{}", ident(c), i + 1))
                    .collect();
                (
                    cols.join(", "),
                    format!(" FROM {table} WHERE {}", cond.join(" AND ")),
                )
            }
        };
        let select_sql = format!("SELECT {list}{by_key_sql}");
        TableInfo {
            id,
            name,
            columns,
            key,
            select_sql,
            by_key_sql,
        }
    }

    /// Names of the key columns as shipped (`rowid` for rowid-keyed tables).
    pub fn key_names(&self) -> Vec<String> {
        match &self.key {
            KeyKind::RowidAlias(c) => vec![c.clone()],
            KeyKind::Rowid => vec!["rowid".into()],
            KeyKind::Columns(c) => c.clone(),
        }
    }

    /// Columns as shipped in an upsert: `rowid` first for rowid-keyed tables.
    pub fn shipped_columns(&self) -> Vec<String> {
        match &self.key {
            KeyKind::Rowid => std::iter::once("rowid".to_string())
                .chain(self.columns.iter().cloned())
                .collect(),
            _ => self.columns.clone(),
        }
    }
}

/// Quote an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A user table as listed by `PRAGMA table_list`.
#[derive(Debug, Clone)]
pub struct ListedTable {
    pub name: String,
    pub without_rowid: bool,
}

/// Every ordinary user table of the `main` schema: no `sqlite_*` tables, no virtual tables or their shadow
/// tables, none of our own objects.
pub fn user_tables(conn: &Connection) -> Result<Vec<ListedTable>, CaptureError> {
    let mut stmt = conn.prepare(
        "SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main' ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, kind, wr) = row?;
        if kind != "table" || name.starts_with("sqlite_") || name.starts_with(PREFIX) {
            continue;
        }
        out.push(ListedTable {
            name,
            without_rowid: wr != 0,
        });
    }
    Ok(out)
}

/// Columns and key of one table.
pub fn describe(
    conn: &Connection,
    table: &ListedTable,
) -> Result<(Vec<String>, KeyKind), CaptureError> {
    let mut stmt =
        conn.prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?;
    let rows = stmt.query_map([&table.name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut columns = Vec::new();
    let mut pk: Vec<(i64, String, String)> = Vec::new();
    for row in rows {
        let (name, ty, pk_pos, hidden) = row?;
        if hidden != 0 {
            continue;
        }
        if pk_pos > 0 {
            pk.push((pk_pos, name.clone(), ty));
        }
        columns.push(name);
    }
    pk.sort();
    let key = if pk.is_empty() {
        if columns.iter().any(|c| c.eq_ignore_ascii_case("rowid")) {
            return Err(CaptureError::Unsupported {
                table: table.name.clone(),
                reason: "it has no primary key and a column named rowid".into(),
            });
        }
        KeyKind::Rowid
    } else if pk.len() == 1 && !table.without_rowid && pk[0].2.eq_ignore_ascii_case("INTEGER") {
        KeyKind::RowidAlias(pk[0].1.clone())
    } else {
        KeyKind::Columns(pk.into_iter().map(|(_, n, _)| n).collect())
    };
    Ok((columns, key))
}

pub use super::local::selected;

/// A fingerprint of the captured schema (table names, columns, keys), carried in every message.
pub fn fingerprint(tables: &[TableInfo]) -> u64 {
    let mut buf = Vec::new();
    let mut sorted: Vec<&TableInfo> = tables.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for t in sorted {
        buf.extend_from_slice(t.name.as_bytes());
        buf.push(0);
        for c in &t.columns {
            buf.extend_from_slice(c.as_bytes());
            buf.push(1);
        }
        for k in t.key_names() {
            buf.extend_from_slice(k.as_bytes());
            buf.push(2);
        }
    }
    crate::wire::fnv1_64(&buf)
}
