//! The schema registry and the schema status commands.
//!
//! Every running node keeps one entry in the JetStream KV bucket `harmonylite-schema-registry` (key
//! `node-<id>`): its schema fingerprint, the fingerprint of each captured table, and when it changed. The entry
//! is written at start and again whenever capture is re-installed for a schema change, and has no TTL, so the
//! cluster view never empties while nodes run.
//!
//! `-schema-status` prints the local view from the database alone (beside a running node or without one);
//! `-schema-status-cluster` reads the registry and prints every node's fingerprint and the tables that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::capture::{self, Capture, CurrentCapture, TableInfo, schema::fingerprint};
use crate::config::Config;
use crate::nats::KvError;
use crate::retry::Backoff;

/// The registry's bucket (the original's name).
pub const BUCKET: &str = "harmonylite-schema-registry";

/// One node's registry entry (JSON). The first five fields are the original's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node_id: u64,
    pub schema_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    pub harmonylite_version: String,
    pub updated_at: String,
    /// Captured table → its fingerprint.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// Whether schema changes replicate on this node (`[ddl] enabled`); absent from older versions' entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<bool>,
    /// With schema changes replicated: the records of applied migrations this node holds, by table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<String, Records>,
}

/// What a node holds in one table of migration records: its rows, and a digest of them that leaves out the
/// columns of dates and times (when a node applied a migration is its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub rows: u64,
    pub digest: String,
}

/// The records of applied migrations in `conn`, by table (tables with no row left out).
pub fn records(conn: &Connection) -> anyhow::Result<BTreeMap<String, Records>> {
    let mut out = BTreeMap::new();
    for t in capture::schema::user_tables(conn)? {
        if !capture::local::is_migration_record(&t.name) {
            continue;
        }
        let mut stmt =
            conn.prepare("SELECT name, upper(type) FROM pragma_table_info(?1) ORDER BY cid")?;
        let columns: Vec<String> = stmt
            .query_map([&t.name], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .filter_map(|r| match r {
                Ok((_, ty)) if ty.contains("DATE") || ty.contains("TIME") => None,
                other => {
                    Some(other.map(|(name, _)| format!("quote({})", capture::schema::ident(&name))))
                }
            })
            .collect::<rusqlite::Result<_>>()?;
        if columns.is_empty() {
            continue;
        }
        let mut rows: Vec<String> = conn
            .prepare(&format!(
                "SELECT {} FROM {}",
                columns.join(" || ',' || "),
                capture::schema::ident(&t.name)
            ))?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        if rows.is_empty() {
            continue;
        }
        rows.sort();
        let digest = hex(crate::ids::fnv1_64(rows.join("\n").as_bytes()));
        out.insert(
            t.name,
            Records {
                rows: rows.len() as u64,
                digest,
            },
        );
    }
    Ok(out)
}

/// Before schema changes start replicating on a node (`[ddl] enabled` turned on): refused when this node holds
/// records of applied migrations that differ from those of a node where they already replicate, naming the
/// tables and nodes (the records would mix: a migration one node ran could look applied, or not, on another).
/// A node with no records, or a cluster where no node replicates schema changes yet, is never refused.
pub async fn refuse_diverged_records(
    js: &jetstream::Context,
    node_id: u64,
    conn: &Connection,
) -> anyhow::Result<()> {
    let ours = tokio::task::block_in_place(|| records(conn))?;
    if ours.is_empty() {
        return Ok(());
    }
    let entries = read_all_entries(js).await?;
    let problems = diverged(node_id, &ours, &entries);
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "cannot turn on [ddl] enabled: this node's records of applied migrations differ from those of nodes \
         where schema changes already replicate: {}. Bring this node to the same migrations as those nodes (or \
         copy the records table from one of them), then start it again; or start it with [ddl] enabled off",
        problems.join("; ")
    )
}

/// How long [`read_all_entries`] reads the registry again while it finds fewer entries than its stream says.
const REGISTRY_SETTLE: Duration = Duration::from_secs(10);
/// Longest one reading of the registry may take.
const REGISTRY_READ: Duration = Duration::from_secs(2);
/// How long readings that do not end are tried again before the start fails.
const REGISTRY_PATIENCE: Duration = Duration::from_secs(60);

/// Every node's registry entry, read again (every 250 ms, for [`REGISTRY_SETTLE`]) while fewer entries come back
/// than the bucket's stream has keys: right after this node's nats-server started, a listing can come from a
/// stream whose leader is still being chosen and see nothing. A removed node's deleted entry also counts as a
/// key: then the last reading is taken after that time.
async fn read_all_entries(js: &jetstream::Context) -> anyhow::Result<BTreeMap<u64, Entry>> {
    let started = std::time::Instant::now();
    loop {
        // A listing is a consumer's delivery, which a server not current with its cluster (just restarted) may
        // never make: each reading is bounded, and one that does not end counts as a short one.
        let entries = match tokio::time::timeout(REGISTRY_READ, read_entries(js)).await {
            Ok(read) => Some(read?),
            Err(_) if started.elapsed() < REGISTRY_PATIENCE => None,
            Err(_) => anyhow::bail!(
                "the schema registry {BUCKET} did not answer within {REGISTRY_PATIENCE:?}"
            ),
        };
        let Some(entries) = entries else {
            tracing::debug!("schema registry listing did not end; reading it again");
            continue;
        };
        let keys = match js.get_key_value(BUCKET).await {
            Ok(store) => store
                .status()
                .await
                .map(|s| s.info.state.subjects_count)
                .unwrap_or(0),
            Err(_) => 0,
        };
        if entries.len() as u64 >= keys || started.elapsed() >= REGISTRY_SETTLE {
            return Ok(entries);
        }
        tracing::debug!(
            read = entries.len(),
            keys,
            "schema registry read short; reading it again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How `ours` differs from the records of every other node that replicates schema changes.
fn diverged(
    node_id: u64,
    ours: &BTreeMap<String, Records>,
    entries: &BTreeMap<u64, Entry>,
) -> Vec<String> {
    let mut out = Vec::new();
    for e in entries.values() {
        if e.node_id == node_id || e.ddl != Some(true) || e.records.is_empty() {
            continue;
        }
        let names: BTreeSet<&String> = ours.keys().chain(e.records.keys()).collect();
        for name in names {
            match (ours.get(name), e.records.get(name)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => out.push(format!(
                    "{name}: {} row(s) here, {} on node {}{}",
                    a.map_or(0, |r| r.rows),
                    b.map_or(0, |r| r.rows),
                    e.node_id,
                    if a.map(|r| r.rows) == b.map(|r| r.rows) {
                        " (other contents)"
                    } else {
                        ""
                    }
                )),
            }
        }
    }
    out
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

/// The fingerprint of one table (name, columns, key), as the registry and the status commands show it.
pub fn table_hash(t: &TableInfo) -> String {
    hex(fingerprint(std::slice::from_ref(t)))
}

impl Entry {
    fn of(
        node_id: u64,
        cap: &Capture,
        previous_hash: Option<String>,
        ddl: bool,
        records: BTreeMap<String, Records>,
    ) -> Entry {
        Entry {
            node_id,
            schema_hash: hex(cap.fingerprint),
            previous_hash,
            harmonylite_version: env!("CARGO_PKG_VERSION").to_string(),
            updated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            tables: cap
                .tables
                .iter()
                .map(|t| (t.name.clone(), table_hash(t)))
                .collect(),
            ddl: Some(ddl),
            records,
        }
    }
}

/// Keep this node's registry entry current until cancelled: written once the bucket can be reached, then
/// after every schema change, and (with schema changes replicated) when its records of applied migrations
/// change, looked at every few seconds. Failures are retried; they never stop replication.
pub async fn publish_entries(
    js: jetstream::Context,
    cfg: std::sync::Arc<Config>,
    capture: CurrentCapture,
    replicas: usize,
    cancel: CancellationToken,
) {
    let mut changes = capture.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut store: Option<kv::Store> = None;
    let mut written: Option<(String, BTreeMap<String, Records>)> = None;
    let mut previous: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        changes.borrow_and_update();
        let cap = capture.get();
        let hash = hex(cap.fingerprint);
        let held = if cfg.ddl.enabled {
            tokio::task::block_in_place(|| records_of(&cfg))
        } else {
            BTreeMap::new()
        };
        if written.as_ref() != Some(&(hash.clone(), held.clone())) {
            // The hash before this one (kept while only the records change).
            let previous_hash = match &written {
                Some((h, _)) if *h != hash => Some(h.clone()),
                _ => previous.clone(),
            };
            let entry = Entry::of(
                cfg.node_id,
                &cap,
                previous_hash.clone(),
                cfg.ddl.enabled,
                held.clone(),
            );
            match put(&js, &mut store, replicas, &entry).await {
                Ok(()) => {
                    tracing::debug!(schema_hash = %hash, "schema registry entry written");
                    previous = previous_hash;
                    written = Some((hash, held));
                    backoff.reset();
                }
                Err(e) => {
                    let level_warn = backoff.current() >= Duration::from_secs(8);
                    if level_warn {
                        tracing::warn!(error = %e, "cannot write the schema registry entry; retrying");
                    } else {
                        tracing::debug!(error = %e, "cannot write the schema registry entry yet; retrying");
                    }
                    store = None;
                    if !backoff.sleep(&cancel).await {
                        return;
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            _ = tick.tick(), if cfg.ddl.enabled => {}
        }
    }
}

/// [`records`] of the node's database; empty (and logged) when it cannot be read now.
fn records_of(cfg: &Config) -> BTreeMap<String, Records> {
    let read = Connection::open_with_flags(&cfg.db_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(anyhow::Error::from)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(1))?;
            records(&c)
        });
    read.unwrap_or_else(|e| {
        tracing::debug!(error = %format!("{e:#}"), "cannot read the records of applied migrations now");
        BTreeMap::new()
    })
}

async fn put(
    js: &jetstream::Context,
    store: &mut Option<kv::Store>,
    replicas: usize,
    entry: &Entry,
) -> Result<(), KvError> {
    if store.is_none() {
        let s = crate::nats::placement::kv_bucket(
            js,
            BUCKET,
            "HarmonyLite: each node's schema fingerprint",
            replicas,
            Duration::ZERO,
        )
        .await?;
        *store = Some(s);
    }
    let s = store.as_ref().expect("store set above");
    let key = format!("node-{}", entry.node_id);
    let body = serde_json::to_vec(entry).map_err(|e| KvError::write(BUCKET, &key, e))?;
    s.put(&key, body.into())
        .await
        .map_err(|e| KvError::write(BUCKET, &key, e))?;
    Ok(())
}

/// Every node's entry, by node id; empty when no node has written one (or the bucket does not exist).
pub async fn read_entries(js: &jetstream::Context) -> anyhow::Result<BTreeMap<u64, Entry>> {
    let store = match js.get_key_value(BUCKET).await {
        Ok(s) => s,
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(e.into()),
    };
    let mut keys = store.keys().await?;
    let mut out = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        let Some(value) = store.get(&key).await? else {
            continue;
        };
        match serde_json::from_slice::<Entry>(&value) {
            Ok(e) => {
                out.insert(e.node_id, e);
            }
            Err(e) => tracing::warn!(key, error = %e, "unreadable schema registry entry"),
        }
    }
    Ok(out)
}

/// `-schema-status`: what this node captures, read from the database alone.
pub fn local_status(cfg: &Config) -> anyhow::Result<String> {
    crate::db::check_db(cfg)?;
    let conn = Connection::open_with_flags(&cfg.db_path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let installed: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [capture::TABLES],
            |r| r.get(0),
        )
        .optional()?;
    let mut triggers: BTreeSet<String> = BTreeSet::new();
    let mut stmt = conn.prepare(
        "SELECT lower(tbl_name) FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, 15) = ?1",
    )?;
    for t in stmt.query_map([capture::PREFIX], |r| r.get::<_, String>(0))? {
        triggers.insert(t?);
    }
    let mut tables = Vec::new();
    for listed in capture::schema::user_tables(&conn)? {
        if capture::schema::selected(&listed.name, &cfg.include_tables, &cfg.exclude_tables) {
            let (columns, key) = capture::schema::describe(&conn, &listed)?;
            tables.push(TableInfo::new(0, listed.name, columns, key));
        }
    }
    let mut out = format!("Database: {}\n", cfg.db_path.display());
    if installed.is_none() {
        out.push_str(
            "Schema hash: Not initialized (no node has installed capture in this database)\n",
        );
    } else {
        out.push_str(&format!("Schema hash: {}\n", hex(fingerprint(&tables))));
        out.push_str(&format!(
            "Schema version: {}\n",
            capture::schema_version(&conn)?
        ));
    }
    out.push_str(&format!("Tables: {}\n", tables.len()));
    for t in &tables {
        let state = if installed.is_none() {
            ""
        } else if triggers.contains(&t.name.to_lowercase()) {
            ", captured"
        } else {
            ", not captured yet"
        };
        out.push_str(&format!(
            "  {}  {}  ({} columns, key {}{state})\n",
            t.name,
            table_hash(t),
            t.columns.len(),
            t.key_names().join(", ")
        ));
    }
    Ok(out)
}

/// The cluster's schema, from the registry: the report, and whether every node has the same schema.
pub fn cluster_report(entries: &BTreeMap<u64, Entry>) -> (String, bool) {
    if entries.is_empty() {
        return (
            "Cluster schema: Not initialized (no node has registered its schema yet)\n".to_string(),
            false,
        );
    }
    let mut groups: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in entries.values() {
        groups.entry(&e.schema_hash).or_default().push(e.node_id);
    }
    let consistent = groups.len() == 1;
    let list = |ids: &[u64]| {
        ids.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "Cluster schema: {} node{}, {}\n",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        if consistent {
            "consistent"
        } else {
            "NOT consistent"
        }
    );
    for (hash, ids) in &groups {
        let word = if ids.len() == 1 { "node" } else { "nodes" };
        out.push_str(&format!("  hash {hash}: {word} {}\n", list(ids)));
    }
    // Where schema changes replicate on some nodes only, the others are named: they need their own migrations.
    if entries.values().any(|e| e.ddl == Some(true)) {
        let off: Vec<u64> = entries
            .values()
            .filter(|e| e.ddl != Some(true))
            .map(|e| e.node_id)
            .collect();
        if !off.is_empty() {
            out.push_str(&format!(
                "Schema changes are not replicated to node{} {} ([ddl] enabled off, or an older version): \
                 migrate there yourself\n",
                if off.len() == 1 { "" } else { "s" },
                list(&off)
            ));
        }
    }
    out.push_str(&node_lines(entries));
    let names: BTreeSet<&String> = entries.values().flat_map(|e| e.tables.keys()).collect();
    let differing: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let per_node: Vec<(u64, Option<&String>)> = entries
                .values()
                .map(|e| (e.node_id, e.tables.get(name)))
                .collect();
            let first = per_node[0].1;
            if per_node.iter().all(|(_, h)| *h == first) {
                return None;
            }
            let cells: Vec<String> = per_node
                .iter()
                .map(|(id, h)| match h {
                    Some(h) => format!("node {id} {h}"),
                    None => format!("node {id} missing"),
                })
                .collect();
            Some(format!("  {name}: {}\n", cells.join(", ")))
        })
        .collect();
    if !differing.is_empty() {
        out.push_str("Tables that differ:\n");
        for d in differing {
            out.push_str(&d);
        }
    }
    (out, consistent)
}

/// `-schema-status-cluster`'s line per node: its fingerprint, tables, version, whether schema changes replicate
/// there, and its records of applied migrations.
fn node_lines(entries: &BTreeMap<u64, Entry>) -> String {
    let mut out = String::from("Nodes:\n");
    for e in entries.values() {
        let ddl = match e.ddl {
            Some(true) => ", schema changes replicated",
            Some(false) => ", schema changes not replicated",
            None => "",
        };
        let records: String = e
            .records
            .iter()
            .map(|(t, r)| format!(", {t}: {} record(s) {}", r.rows, r.digest))
            .collect();
        out.push_str(&format!(
            "  node {}: hash {}, {} tables, version {}, updated {}{ddl}{records}\n",
            e.node_id,
            e.schema_hash,
            e.tables.len(),
            e.harmonylite_version,
            e.updated_at
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, tables: &[(&str, &str)]) -> Entry {
        let tables: BTreeMap<String, String> = tables
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Entry {
            node_id: id,
            schema_hash: format!(
                "{:x}",
                crate::wire::fnv1_64(format!("{tables:?}").as_bytes())
            ),
            previous_hash: None,
            harmonylite_version: "0".into(),
            updated_at: "now".into(),
            tables,
            ddl: None,
            records: BTreeMap::new(),
        }
    }

    fn db(statements: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(statements).unwrap();
        c
    }

    const DJANGO: &str = "CREATE TABLE django_migrations (id INTEGER PRIMARY KEY, app TEXT, name TEXT, applied datetime);
        CREATE TABLE library_book (id INTEGER PRIMARY KEY, title TEXT);
        INSERT INTO library_book VALUES (1, 'x');";

    #[test]
    fn records_leave_out_when_a_node_applied_them_and_other_tables() {
        let a = db(&format!("{DJANGO} INSERT INTO django_migrations VALUES (1, 'library', '0001', '2026-01-01 10:00'),
            (2, 'library', '0002', '2026-01-02 10:00');"));
        // The same migrations applied at other times, listed in another order: the same records.
        let b = db(&format!("{DJANGO} INSERT INTO django_migrations VALUES (2, 'library', '0002', '2026-03-01 09:00'),
            (1, 'library', '0001', '2026-03-01 08:00');"));
        let c = db(&format!("{DJANGO} INSERT INTO django_migrations VALUES (1, 'library', '0001', '2026-01-01 10:00'),
            (2, 'shelf', '0001', '2026-01-02 10:00');"));
        let (ra, rb, rc) = (
            records(&a).unwrap(),
            records(&b).unwrap(),
            records(&c).unwrap(),
        );
        assert_eq!(ra.keys().collect::<Vec<_>>(), ["django_migrations"]);
        assert_eq!(ra["django_migrations"].rows, 2);
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
        assert!(
            records(&db(DJANGO)).unwrap().is_empty(),
            "a table without rows holds no record"
        );
    }

    #[test]
    fn records_diverge_only_from_nodes_that_replicate_schema_changes() {
        let ours = records(&db(&format!(
            "{DJANGO} INSERT INTO django_migrations VALUES (1, 'library', '0001', 'now');"
        )))
        .unwrap();
        let other = records(&db(&format!(
            "{DJANGO} INSERT INTO django_migrations VALUES (1, 'library', '0001', 'then'), (2, 'library', '0002', 'x');"
        )))
        .unwrap();
        let mut m = BTreeMap::new();
        let mut same = entry(2, &[]);
        (same.ddl, same.records) = (Some(true), ours.clone());
        let mut off = entry(3, &[]);
        (off.ddl, off.records) = (Some(false), other.clone());
        m.insert(2, same);
        m.insert(3, off);
        assert!(diverged(1, &ours, &m).is_empty());
        let mut differs = entry(4, &[]);
        (differs.ddl, differs.records) = (Some(true), other);
        m.insert(4, differs);
        assert_eq!(
            diverged(1, &ours, &m),
            ["django_migrations: 1 row(s) here, 2 on node 4"]
        );
    }

    #[test]
    fn the_report_names_nodes_where_schema_changes_do_not_replicate() {
        let mut m = BTreeMap::new();
        for (id, ddl) in [(1, Some(true)), (2, Some(false)), (3, None)] {
            let mut e = entry(id, &[("books", "aa")]);
            e.ddl = ddl;
            m.insert(id, e);
        }
        let (text, ok) = cluster_report(&m);
        assert!(ok, "{text}");
        assert!(
            text.contains("Schema changes are not replicated to nodes 2, 3"),
            "{text}"
        );
        assert!(
            text.contains("node 1: hash") && text.contains(", schema changes replicated\n"),
            "{text}"
        );
        for e in m.values_mut() {
            e.ddl = Some(false);
        }
        let (text, _) = cluster_report(&m);
        assert!(!text.contains("are not replicated to"), "{text}");
    }

    #[test]
    fn the_report_names_the_tables_that_differ_and_where() {
        let mut m = BTreeMap::new();
        m.insert(1, entry(1, &[("books", "aa"), ("notes", "cc")]));
        m.insert(2, entry(2, &[("books", "aa"), ("notes", "cc")]));
        let (text, ok) = cluster_report(&m);
        assert!(ok, "{text}");
        assert!(text.contains("2 nodes, consistent"), "{text}");
        assert!(!text.contains("differ"), "{text}");

        m.insert(3, entry(3, &[("books", "bb")]));
        let (text, ok) = cluster_report(&m);
        assert!(!ok);
        assert!(text.contains("NOT consistent"), "{text}");
        assert!(
            text.contains("books: node 1 aa, node 2 aa, node 3 bb"),
            "{text}"
        );
        assert!(
            text.contains("notes: node 1 cc, node 2 cc, node 3 missing"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_registry_is_not_initialized() {
        let (text, ok) = cluster_report(&BTreeMap::new());
        assert!(!ok);
        assert!(text.contains("Not initialized"), "{text}");
    }

    #[test]
    fn entries_read_by_the_original_keep_its_field_names() {
        let json = serde_json::to_value(entry(4, &[("t", "1")])).unwrap();
        for k in [
            "node_id",
            "schema_hash",
            "harmonylite_version",
            "updated_at",
        ] {
            assert!(json.get(k).is_some(), "{k} missing in {json}");
        }
        let back: Entry = serde_json::from_value(serde_json::json!({
            "node_id": 9, "schema_hash": "ab", "harmonylite_version": "x", "updated_at": "y"
        }))
        .unwrap();
        assert!(back.tables.is_empty());
    }
}
