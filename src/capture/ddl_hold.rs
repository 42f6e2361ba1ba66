//! A schema change from another node that does not apply to this node's schema: held, or quarantined.
//!
//! When the change was made without knowing a schema change this node applied before it in stream order (its
//! origin had not applied that one yet), the later one is what no longer applies, on every node: it is
//! quarantined ([`concurrent`]). Otherwise this node's schema differs for a reason of its own (a table made by
//! hand before schema replication was turned on, rows a new constraint refuses, a table of the same name this
//! node created at the same moment): the change is held with everything after it that touches its tables, until
//! the node's schema is fixed. The tables it touches are recorded ([`hold`]); a schema change made here to them
//! meanwhile is the fix, kept local ([`kept_local`]): sent to the others, it would change the nodes that are
//! right.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension};

use super::META;
use super::ddl::Change;

/// The tables (lower-cased) `changes` touch: the tables created, dropped, renamed or reshaped, and those an
/// index or trigger belongs to (a dropped index, view or trigger: its own name).
pub fn tables_of(changes: &[Change]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in changes {
        match c {
            Change::Create(o) | Change::Replace(o) => {
                out.insert(o.table.to_lowercase());
            }
            Change::Drop { name, .. } => {
                out.insert(name.to_lowercase());
            }
            Change::Rename { from, to, .. } => {
                out.insert(from.to_lowercase());
                out.insert(to.to_lowercase());
            }
            Change::Alter { table, .. } => {
                out.insert(table.to_lowercase());
            }
            Change::UserVersion(_) => {}
        }
    }
    out
}

/// `changes` as statements a person reads (an altered table: its SQL afterwards).
pub fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| match c {
            Change::Create(o) | Change::Replace(o) => o.sql.clone(),
            Change::Drop { kind, name } => format!("DROP {kind:?} {name}").to_uppercase(),
            Change::Rename { from, to, .. } => format!("ALTER TABLE {from} RENAME TO {to}"),
            Change::Alter { to, .. } => to.clone(),
            Change::UserVersion(v) => format!("PRAGMA user_version = {v}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn read<T: serde::de::DeserializeOwned + Default>(
    conn: &Connection,
    key: &str,
) -> rusqlite::Result<T> {
    let text: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = ?1"),
            [key],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

fn write<T: serde::Serialize>(
    conn: &Connection,
    key: &str,
    value: &T,
    empty: bool,
) -> rusqlite::Result<()> {
    if empty {
        conn.execute(&format!("DELETE FROM {META} WHERE key = ?1"), [key])?;
    } else {
        conn.execute(
            &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES(?1, ?2)"),
            [key, &serde_json::to_string(value).expect("serialises")],
        )?;
    }
    Ok(())
}

/// The schema change at `seq` of the first shard (another node's, or this node's own come back) is applied
/// here: per table it touches, the last one.
pub fn applied(conn: &Connection, changes: &[Change], seq: u64) -> rusqlite::Result<()> {
    let mut seen: BTreeMap<String, u64> = read(conn, "ddl_seen")?;
    for t in tables_of(changes) {
        seen.insert(t, seq);
    }
    write(conn, "ddl_seen", &seen, seen.is_empty())
}

/// Whether `changes`, made on a node that had the first shard up to `after`, come after a schema change this
/// node applied to one of their tables from past `after` (their origin had not applied it): in stream order that
/// one came first, and these no longer apply to its result anywhere. One of this node's own changes not come back
/// yet comes after them in stream order instead: they stand, and when they cannot be brought under it (its
/// rebase, see `ddl::apply`) they are held here until this node's operator decides.
pub fn concurrent(conn: &Connection, changes: &[Change], after: u64) -> rusqlite::Result<bool> {
    let seen: BTreeMap<String, u64> = read(conn, "ddl_seen")?;
    Ok(tables_of(changes)
        .iter()
        .any(|t| seen.get(t).is_some_and(|&s| s > after)))
}

/// The tables held here by a schema change that does not apply (see the module's text).
pub fn held(conn: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    read(conn, "ddl_held")
}

/// A schema change touching `tables` is held here.
pub fn hold<'a>(
    conn: &Connection,
    tables: impl IntoIterator<Item = &'a String>,
) -> rusqlite::Result<()> {
    let mut h = held(conn)?;
    h.extend(tables.into_iter().cloned());
    write(conn, "ddl_held", &h, h.is_empty())
}

/// The held schema change touching `tables` is applied.
pub fn release<'a>(
    conn: &Connection,
    tables: impl IntoIterator<Item = &'a String>,
) -> rusqlite::Result<()> {
    let mut h = held(conn)?;
    for t in tables {
        h.remove(t);
    }
    write(conn, "ddl_held", &h, h.is_empty())
}

/// Split this node's own schema changes into those sent to every node and those kept local: a change to a
/// table a schema change from another node is held on is this node's fix for it.
pub fn kept_local(
    conn: &Connection,
    changes: Vec<Change>,
) -> rusqlite::Result<(Vec<Change>, Vec<Change>)> {
    let h = held(conn)?;
    if h.is_empty() {
        return Ok((changes, Vec::new()));
    }
    Ok(changes
        .into_iter()
        .partition(|c| tables_of(std::slice::from_ref(c)).is_disjoint(&h)))
}

/// Forget it all (schema replication turned off).
pub fn forget(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        &format!("DELETE FROM {META} WHERE key IN ('ddl_seen', 'ddl_held')"),
        [],
    )?;
    Ok(())
}
