//! Capture on real database files written by the real `sqlite3` CLI, and the apply SQL fed from it.

use std::path::Path;
use std::process::Command;

use super::*;
use crate::wire::{self, Row};

fn cli(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SCHEMA: &str = "
    CREATE TABLE plain (id INTEGER PRIMARY KEY, v TEXT);
    CREATE TABLE comp (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b));
    CREATE TABLE nopk (x TEXT);
    CREATE TABLE wr (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
    CREATE TABLE \"we\"\"ird name\" (\"key col\" INTEGER PRIMARY KEY, \"select\" TEXT);
    CREATE VIRTUAL TABLE docs USING fts5(body);
    CREATE TABLE gen (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL);";

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Connection, Capture) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    cli(&db, SCHEMA);
    let mut conn = Connection::open(&db).unwrap();
    let cap = install(&mut conn, &[], &[]).unwrap();
    (dir, db, conn, cap)
}

#[test]
fn skips_virtual_shadow_and_own_tables_and_keys_each_kind() {
    let (_d, _db, _conn, cap) = setup();
    let names: Vec<&str> = cap.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["comp", "gen", "nopk", "plain", "we\"ird name", "wr"]
    );
    let t = |n: &str| cap.tables.iter().find(|t| t.name == n).unwrap().clone();
    assert_eq!(t("plain").key, KeyKind::RowidAlias("id".into()));
    assert_eq!(t("nopk").key, KeyKind::Rowid);
    assert_eq!(
        t("comp").key,
        KeyKind::Columns(vec!["a".into(), "b".into()])
    );
    assert_eq!(t("wr").key, KeyKind::Columns(vec!["k".into()]));
    assert_eq!(
        t("gen").columns,
        ["id", "a"],
        "generated columns are not shipped"
    );
}

#[test]
fn include_and_exclude_select_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    cli(&db, SCHEMA);
    let mut conn = Connection::open(&db).unwrap();
    let cap = install(
        &mut conn,
        &["plain".into(), "comp".into()],
        &["comp".into()],
    )
    .unwrap();
    assert_eq!(
        cap.tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["plain"]
    );
    let triggers: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 3);
}

#[test]
fn cli_writes_with_trusted_schema_off_are_logged_by_key_including_old_keys() {
    let (_d, db, conn, cap) = setup();
    cli(
        &db,
        "PRAGMA trusted_schema = OFF;
         INSERT INTO plain VALUES (1, 'a');
         INSERT INTO comp VALUES ('x,''y', 2, 'v');
         INSERT INTO nopk VALUES ('n');
         INSERT INTO wr VALUES ('k', 1);
         INSERT INTO \"we\"\"ird name\" VALUES (5, 's');
         INSERT INTO docs VALUES ('full text is not captured');
         UPDATE plain SET id = 2 WHERE id = 1;
         UPDATE plain SET v = 'b' WHERE id = 2;
         DELETE FROM wr;",
    );
    let log = read_log(&conn, &cap, 0, max_log_id(&conn).unwrap()).unwrap();
    let got: Vec<(String, Vec<Value>)> = log
        .iter()
        .map(|r| (cap.table(r.table_id).unwrap().name.clone(), r.key.clone()))
        .collect();
    let txt = |s: &str| Value::Text(s.as_bytes().to_vec());
    assert_eq!(
        got,
        vec![
            ("plain".into(), vec![Value::Integer(1)]),
            ("comp".into(), vec![txt("x,'y"), Value::Integer(2)]),
            ("nopk".into(), vec![Value::Integer(1)]),
            ("wr".into(), vec![txt("k")]),
            ("we\"ird name".into(), vec![Value::Integer(5)]),
            ("plain".into(), vec![Value::Integer(1)]), // old key of the key change
            ("plain".into(), vec![Value::Integer(2)]),
            ("plain".into(), vec![Value::Integer(2)]),
            ("wr".into(), vec![txt("k")]),
        ]
    );
}

#[test]
fn reinstall_keeps_ids_backfills_new_tables_and_uninstall_removes_everything() {
    let (_d, db, mut conn, cap) = setup();
    cli(
        &db,
        "INSERT INTO plain VALUES (1, 'a'); CREATE TABLE later (id INTEGER PRIMARY KEY); INSERT INTO later VALUES (7), (8);",
    );
    let cap2 = install(&mut conn, &[], &[]).unwrap();
    assert_eq!(cap2.incarnation, cap.incarnation);
    let plain = |c: &Capture| c.tables.iter().find(|t| t.name == "plain").unwrap().id;
    assert_eq!(plain(&cap), plain(&cap2), "table ids are stable");
    let later = cap2.tables.iter().find(|t| t.name == "later").unwrap().id;
    let log = read_log(&conn, &cap2, 0, max_log_id(&conn).unwrap()).unwrap();
    let backfilled: Vec<&Value> = log
        .iter()
        .filter(|r| r.table_id == later)
        .map(|r| &r.key[0])
        .collect();
    assert_eq!(backfilled, [&Value::Integer(7), &Value::Integer(8)]);

    assert!(uninstall(&mut conn).unwrap() >= 4);
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '%harmonylite%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM plain", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
    // a fresh install after cleanup is a new incarnation
    assert_ne!(
        install(&mut conn, &[], &[]).unwrap().incarnation,
        cap.incarnation
    );
}

/// The applier's SQL fed with what capture produced: the peer ends with identical rows, and its own triggers'
/// echo rows are what the applier deletes.
#[test]
fn apply_sql_reproduces_rows_exactly() {
    use crate::apply::sql;
    let (_d, db, conn, cap) = setup();
    cli(
        &db,
        "INSERT INTO plain VALUES (1, 'a'), (2, 'b'); INSERT INTO comp VALUES ('p', 1, 'x');
         INSERT INTO nopk VALUES ('n1'), ('n2'); INSERT INTO wr VALUES ('k', x'00ff');
         DELETE FROM nopk WHERE x = 'n1';",
    );
    let log = read_log(&conn, &cap, 0, max_log_id(&conn).unwrap()).unwrap();
    let mut tables: Vec<wire::TableChanges> = Vec::new();
    for r in &log {
        let info = cap.table(r.table_id).unwrap();
        let mut stmt = conn.prepare(&info.select_sql).unwrap();
        let n = stmt.column_count();
        let row = stmt
            .query_row(rusqlite::params_from_iter(r.key.iter()), |row| {
                (0..n)
                    .map(|i| Ok(Value::from_ref(row.get_ref(i)?)))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .ok()
            .map(Row::Upsert)
            .unwrap_or_else(|| Row::Delete(r.key.clone()));
        tables.push(wire::TableChanges {
            table: info.name.clone(),
            columns: info.shipped_columns(),
            key: info.key_names(),
            rows: vec![row],
        });
    }
    let msg = wire::Message {
        origin: 2,
        unit: "u".into(),
        part: 1,
        last: true,
        schema: cap.fingerprint,
        tables,
        seen: Some(0),
        at_ms: 0,
        conditional: Vec::new(),
        own_upto: 0,
        piece: None,
        ddl: None,
        replayed: Vec::new(),
    };
    let msg = wire::decode(&wire::encode(&msg, true)).unwrap();

    let peer_db = db.with_file_name("b.db");
    cli(&peer_db, SCHEMA);
    let mut peer = Connection::open(&peer_db).unwrap();
    let peer_cap = install(&mut peer, &[], &[]).unwrap();
    let cfg = crate::config::load(None, &Default::default()).unwrap().0;
    let in_flight = crate::conflict::InFlight::new(false, 0);
    let tx = peer.transaction().unwrap();
    let before = max_log_id(&tx).unwrap();
    sql::apply_message(
        &tx,
        &msg,
        1,
        &in_flight,
        &cfg,
        &peer_cap,
        &mut sql::Memory::default(),
    )
    .unwrap();
    tx.execute(&format!("DELETE FROM {LOG} WHERE id > ?1"), [before])
        .unwrap();
    tx.commit().unwrap();
    for t in ["plain", "comp", "nopk", "wr"] {
        let q = if t == "nopk" {
            "SELECT rowid, * FROM nopk ORDER BY rowid".to_string()
        } else {
            format!("SELECT * FROM {t} ORDER BY 1, 2")
        };
        let dump = |c: &Connection| -> Vec<String> {
            let mut s = c.prepare(&q).unwrap();
            let n = s.column_count();
            s.query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
        };
        assert_eq!(dump(&conn), dump(&peer), "table {t}");
        assert!(!dump(&conn).is_empty());
    }
    assert_eq!(
        max_log_id(&peer).unwrap(),
        0,
        "the applier's own writes left no change-log rows"
    );
}

#[test]
fn install_records_the_schema_version_it_was_made_against() {
    let (_d, db, mut conn, cap) = setup();
    assert_eq!(cap.schema_version, schema_version(&conn).unwrap());
    let current = CurrentCapture::new(cap.clone());
    assert!(
        !current.refresh(&mut conn, &[], &[]).unwrap(),
        "nothing changed"
    );
    cli(&db, "ALTER TABLE plain ADD COLUMN extra INTEGER;");
    let seen = current.subscribe();
    assert!(current.refresh(&mut conn, &[], &[]).unwrap());
    assert!(
        seen.has_changed().unwrap(),
        "subscribers hear of the new schema"
    );
    let now = current.get();
    assert_eq!(now.schema_version, schema_version(&conn).unwrap());
    let plain = now.tables.iter().find(|t| t.name == "plain").unwrap();
    assert_eq!(plain.columns, ["id", "v", "extra"]);
    // a stale capture stored last is found out by the next check and replaced
    current.set(cap.clone());
    assert!(current.refresh(&mut conn, &[], &[]).unwrap());
    assert_eq!(current.get().schema_version, schema_version(&conn).unwrap());
}

fn log_keys(conn: &Connection, cap: &Capture, table: &str) -> Vec<Value> {
    let id = cap.table_named(table).unwrap().id;
    read_log(conn, cap, 0, max_log_id(conn).unwrap())
        .unwrap()
        .into_iter()
        .filter(|r| r.table_id == id)
        .map(|r| r.key[0].clone())
        .collect()
}

#[test]
fn a_rebuilt_table_is_backfilled_and_a_renamed_one_keeps_its_pending_rows() {
    let (_d, db, mut conn, _cap) = setup();
    cli(&db, "INSERT INTO plain VALUES (1, 'a'), (2, 'b');");
    let cap = install(&mut conn, &[], &[]).unwrap();
    delete_published(&conn, max_log_id(&conn).unwrap() + 1).unwrap();
    // the rebuild of migration tools, then a write before capture is re-installed
    cli(
        &db,
        "BEGIN; CREATE TABLE plain_new (id INTEGER PRIMARY KEY, v TEXT, w INTEGER);
         INSERT INTO plain_new (id, v) SELECT id, v FROM plain; DROP TABLE plain;
         ALTER TABLE plain_new RENAME TO plain; COMMIT;
         INSERT INTO plain VALUES (3, 'c', 9);",
    );
    let rebuilt = install(&mut conn, &[], &[]).unwrap();
    assert_eq!(
        rebuilt.table_named("plain").unwrap().id,
        cap.table_named("plain").unwrap().id
    );
    assert_eq!(
        log_keys(&conn, &rebuilt, "plain"),
        [Value::Integer(1), Value::Integer(2), Value::Integer(3)],
        "every row of the rebuilt table is published, the one written before its triggers existed too"
    );

    // a rename keeps the triggers: no backfill, and rows logged under the old name follow the table
    delete_published(&conn, max_log_id(&conn).unwrap() + 1).unwrap();
    cli(
        &db,
        "ALTER TABLE wr RENAME TO wr2; INSERT INTO wr2 VALUES ('after', 1);",
    );
    let renamed = install(&mut conn, &[], &[]).unwrap();
    assert_eq!(
        log_keys(&conn, &renamed, "wr2"),
        [Value::Text(b"after".to_vec())],
        "only the row written after the rename, now under the new name"
    );
    assert_eq!(
        renamed.table_named("wr").map(|t| t.name.as_str()),
        Some("wr2"),
        "changes still named after the old name go to the new one"
    );
}

#[test]
fn incoming_tables_and_columns_resolve_against_what_this_node_has_and_had() {
    let (_d, db, mut conn, _cap) = setup();
    cli(
        &db,
        "ALTER TABLE plain DROP COLUMN v; ALTER TABLE plain ADD COLUMN w; DROP TABLE nopk;",
    );
    let cap = install(&mut conn, &[], &[]).unwrap();
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match cap.target("PLAIN", &cols(&["id", "v", "w"])) {
        Target::Table { info, drop } => {
            assert_eq!(info.name, "plain");
            assert_eq!(drop, [1], "v was dropped here: its values are not written");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cap.target("plain", &cols(&["id", "rating"])),
        Target::Behind {
            column: Some("rating".into())
        }
    );
    assert_eq!(cap.target("nopk", &cols(&["rowid", "x"])), Target::Dropped);
    assert_eq!(
        cap.target("notes", &cols(&["id"])),
        Target::Behind { column: None }
    );
    assert!(matches!(
        cap.target("comp", &cols(&["a", "b", "v"])),
        Target::Table { drop, .. } if drop.is_empty()
    ));
}

#[test]
fn a_migration_record_follows_the_schema_change_it_was_written_with() {
    let (_d, db, mut conn, _) = setup();
    ddl::set_enabled(&conn, true, &[], &[]).unwrap();
    cli(
        &db,
        "CREATE TABLE django_migrations (id INTEGER PRIMARY KEY, app TEXT, name TEXT);",
    );
    install(&mut conn, &[], &[]).unwrap();
    let last = |conn: &Connection| -> i64 {
        conn.query_row(&format!("SELECT max(id) FROM {LOG}"), [], |r| r.get(0))
            .unwrap()
    };
    let before = last(&conn);
    // As a migration tool does it: the schema change and its record in one transaction; the record's trigger
    // logs it at once, the change is logged by the next install.
    cli(
        &db,
        "BEGIN; ALTER TABLE plain ADD COLUMN w TEXT;
         INSERT INTO django_migrations(app, name) VALUES ('library', '0002'); COMMIT;",
    );
    let records: i64 = conn
        .query_row(
            &format!(
                "SELECT id FROM {LOG} WHERE id > ?1 AND tbl <> {}",
                ddl::LOGGED
            ),
            [before],
            |r| r.get(0),
        )
        .unwrap();
    install(&mut conn, &[], &[]).unwrap();
    let order: Vec<(i64, i64)> = conn
        .prepare(&format!(
            "SELECT id, tbl FROM {LOG} WHERE id > ?1 ORDER BY id"
        ))
        .unwrap()
        .query_map([before], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(order.len(), 2, "{order:?}");
    assert_eq!(order[0].1, ddl::LOGGED, "the change comes first: {order:?}");
    assert!(order[1].0 > records, "the record moved after it: {order:?}");
}

/// A pass's changes grouped, in memory and by SQLite alike: each row once, in the order of its newest change, with composite keys
/// parsed; a row is a backfill's (conditional) only when every change of it in the range is; rows of tables
/// no longer captured and schema changes are left out, and the count is of the captured change-log rows.
#[test]
fn changes_grouped_by_row_in_the_order_of_their_newest_change() {
    let (_dir, db, conn, cap) = setup();
    cli(
        &db,
        "INSERT INTO plain VALUES (1, 'a');
         INSERT INTO plain VALUES (2, 'b');
         INSERT INTO comp VALUES ('x', 1, 'c');
         UPDATE plain SET v = 'a2' WHERE id = 1;
         DELETE FROM plain WHERE id = 2;",
    );
    let plain = cap.table_named("plain").unwrap().id;
    // A backfill of rows 1 and 3: row 1 was also written by a trigger in the range, row 3 only backfilled.
    conn.execute_batch(&format!(
        "INSERT INTO {LOG}(tbl, k) VALUES (-{plain}, 3), (-{plain}, 1);
         INSERT INTO {LOG}(tbl, k) VALUES (999, 1);"
    ))
    .unwrap();
    let max = max_log_id(&conn).unwrap();
    let grouped = |by_sqlite: bool| {
        let mut got = Vec::new();
        let f = |r: LogRow| {
            got.push((
                cap.table(r.table_id).unwrap().name.clone(),
                r.key.clone(),
                r.id,
                r.backfill,
            ));
            Ok::<(), CaptureError>(())
        };
        let logged = if by_sqlite {
            newest_by_sqlite(&conn, &cap, 0, max, f).unwrap()
        } else {
            let (rows, logged) = newest_in_memory(&conn, &cap, 0, max).unwrap();
            rows.into_iter().try_for_each(f).unwrap();
            logged
        };
        (got, logged)
    };
    let (got, logged) = grouped(true);
    assert_eq!((got.clone(), logged), grouped(false));
    let txt = |s: &str| Value::Text(s.as_bytes().to_vec());
    let first = max - 7;
    assert_eq!(
        got,
        [
            (
                "comp".to_string(),
                vec![txt("x"), Value::Integer(1)],
                first + 2,
                false
            ),
            (
                "plain".to_string(),
                vec![Value::Integer(2)],
                first + 4,
                false
            ),
            (
                "plain".to_string(),
                vec![Value::Integer(3)],
                first + 5,
                true
            ),
            (
                "plain".to_string(),
                vec![Value::Integer(1)],
                first + 6,
                false
            ),
        ]
    );
    // The table id 999 is not captured; the seven others are.
    assert_eq!(logged, 7);
    assert!(any_backfill(&conn, 0, max).unwrap());
    assert!(!any_backfill(&conn, 0, first + 4).unwrap());
    assert_eq!(first_schema_change(&conn, 0, max).unwrap(), None);
    assert!(any_captured(&conn, &cap, 0, max).unwrap());
    assert!(!any_captured(&conn, &cap, max - 1, max).unwrap());
}
