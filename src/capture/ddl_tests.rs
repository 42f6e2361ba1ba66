//! Schema changes described by their result: a change made on one database with ordinary statements, read as
//! [`diff`] of its shared schema before and after, and brought to a second database by [`apply`], must leave
//! the second one's `sqlite_master` identical and its rows in place.

use rusqlite::Connection;

use super::*;

const BASE: &str = "
    CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, price REAL);
    CREATE INDEX books_title ON Books(title);
    CREATE TABLE notes (body TEXT);
    CREATE VIEW cheap AS SELECT id, title FROM Books WHERE price < 10;
    CREATE TRIGGER books_audit AFTER UPDATE ON Books BEGIN UPDATE notes SET body = body; END;
    INSERT INTO Books VALUES (1, 'Dune', 9.5), (2, 'Emma', 12.0);
    INSERT INTO notes VALUES ('a'), ('b');
    CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
    CREATE TABLE __harmonylite__meta (key TEXT PRIMARY KEY, value);
";

/// Two databases with the same schema and rows: `a` where the change is made, `b` where it is brought.
fn pair() -> (Connection, Connection) {
    let a = Connection::open_in_memory().expect("a");
    let b = Connection::open_in_memory().expect("b");
    a.execute_batch(BASE).expect("base a");
    b.execute_batch(BASE).expect("base b");
    (a, b)
}

fn shared_of(c: &Connection) -> Shared {
    shared(c, &[], &[]).expect("shared")
}

/// Make the change with `statements` on `a`, bring it to `b` in one transaction, and check both schemas are the
/// same; returns the changes.
fn replicate(a: &Connection, b: &mut Connection, statements: &str) -> Vec<Change> {
    let before = shared_of(a);
    a.execute_batch(statements).expect("change on a");
    let after = shared_of(a);
    let changes = diff(&before, &after);
    assert!(!changes.is_empty(), "no change seen for {statements}");
    let tx = b.transaction().expect("tx");
    apply(&tx, &changes).unwrap_or_else(|e| panic!("apply {changes:?}: {e}"));
    tx.commit().expect("commit");
    assert_eq!(shared_of(b), after, "schemas differ after {statements}");
    changes
}

fn rows(c: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = c.prepare(sql).expect("prepare");
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        let mut parts = Vec::new();
        for i in 0..n {
            let v: rusqlite::types::Value = r.get(i)?;
            parts.push(format!("{v:?}"));
        }
        Ok(parts.join("|"))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

#[test]
fn shared_objects_leave_out_ours_sqlite_s_and_node_local_tables() {
    let (a, _) = pair();
    let s = shared_of(&a);
    let names: Vec<&str> = s.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        ["books_title", "Books", "notes", "books_audit", "cheap"]
    );
    let excluded = shared(&a, &[], &["notes".into()]).expect("shared");
    assert!(excluded.objects.iter().all(|o| o.table != "notes"));
}

#[test]
fn new_tables_indexes_views_and_triggers_are_created() {
    let (a, mut b) = pair();
    let changes = replicate(
        &a,
        &mut b,
        "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT UNIQUE, born DATE DEFAULT (date('now')));
         CREATE UNIQUE INDEX authors_name ON authors(lower(name)) WHERE name IS NOT NULL;
         CREATE VIEW author_names AS SELECT name FROM authors;
         CREATE TRIGGER authors_ins AFTER INSERT ON authors BEGIN SELECT 1; END;",
    );
    // Tables come before what depends on them.
    assert!(matches!(&changes[0], Change::Create(o) if o.kind == Kind::Table));
    assert_eq!(changes.len(), 4);
}

#[test]
fn columns_added_keep_their_definitions_text_and_the_rows() {
    let (a, mut b) = pair();
    let changes = replicate(
        &a,
        &mut b,
        "ALTER TABLE Books ADD COLUMN isbn TEXT DEFAULT 'x, y' CHECK (isbn <> '(');
         ALTER TABLE Books ADD   COLUMN   year INTEGER NOT NULL DEFAULT 0 ;",
    );
    assert!(matches!(&changes[..], [Change::Alter { .. }]));
    assert_eq!(
        rows(&b, "SELECT id, title, isbn, year FROM Books ORDER BY id"),
        [
            "Integer(1)|Text(\"Dune\")|Text(\"x, y\")|Integer(0)",
            "Integer(2)|Text(\"Emma\")|Text(\"x, y\")|Integer(0)"
        ]
    );
}

#[test]
fn a_column_renamed_takes_its_index_view_and_trigger_along() {
    let (a, mut b) = pair();
    replicate(&a, &mut b, "ALTER TABLE Books RENAME COLUMN title TO name;");
    assert_eq!(
        rows(&b, "SELECT name FROM Books ORDER BY id"),
        ["Text(\"Dune\")", "Text(\"Emma\")"]
    );
}

#[test]
fn a_column_dropped_leaves_the_others() {
    let (a, mut b) = pair();
    replicate(
        &a,
        &mut b,
        "DROP VIEW cheap; ALTER TABLE Books DROP COLUMN price;",
    );
    assert_eq!(
        rows(&b, "SELECT * FROM Books ORDER BY id"),
        ["Integer(1)|Text(\"Dune\")", "Integer(2)|Text(\"Emma\")"]
    );
}

#[test]
fn a_table_renamed_keeps_its_rows_index_and_trigger() {
    let (a, mut b) = pair();
    let changes = replicate(&a, &mut b, "ALTER TABLE Books RENAME TO Tomes;");
    assert!(
        changes.iter().any(
            |c| matches!(c, Change::Rename { from, to, .. } if from == "Books" && to == "Tomes")
        ),
        "{changes:?}"
    );
    assert_eq!(rows(&b, "SELECT count(*) FROM Tomes"), ["Integer(2)"]);
}

#[test]
fn drops_of_every_kind() {
    let (a, mut b) = pair();
    replicate(
        &a,
        &mut b,
        "DROP TRIGGER books_audit; DROP VIEW cheap; DROP INDEX books_title; DROP TABLE notes;",
    );
}

#[test]
fn a_rebuild_by_a_migration_tool_arrives_as_the_table_s_new_shape_with_the_rows_kept() {
    let (a, mut b) = pair();
    // What Django's schema editor and sqlite-utils `transform` do: a new table, copy, drop, rename.
    let changes = replicate(
        &a,
        &mut b,
        "PRAGMA legacy_alter_table = ON;
         CREATE TABLE new__Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE, price NUMERIC NOT NULL DEFAULT 0);
         INSERT INTO new__Books (id, title, price) SELECT id, title, coalesce(price, 0) FROM Books;
         DROP TABLE Books;
         ALTER TABLE new__Books RENAME TO Books;
         CREATE INDEX books_title ON Books(title);
         PRAGMA legacy_alter_table = OFF;",
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Alter { table, .. } if table == "Books")),
        "{changes:?}"
    );
    assert_eq!(
        rows(&b, "SELECT id, title, price FROM Books ORDER BY id"),
        [
            "Integer(1)|Text(\"Dune\")|Real(9.5)",
            "Integer(2)|Text(\"Emma\")|Integer(12)"
        ]
    );
}

#[test]
fn user_version_follows() {
    let (a, mut b) = pair();
    replicate(&a, &mut b, "PRAGMA user_version = 7;");
    let v: i64 = b
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(v, 7);
}

#[test]
fn nothing_from_another_node_touches_sqlite_s_or_our_objects() {
    let (_, b) = pair();
    for name in ["__harmonylite__meta", "sqlite_sequence", "__HARMONYLITE__x"] {
        let changes = [Change::Drop {
            kind: Kind::Table,
            name: name.into(),
        }];
        assert!(
            matches!(apply(&b, &changes), Err(DdlError::Reserved { .. })),
            "{name}"
        );
    }
    let create = [Change::Create(Object {
        kind: Kind::Trigger,
        name: "t".into(),
        table: "Books".into(),
        sql: "CREATE TRIGGER t AFTER INSERT ON Books BEGIN SELECT 1; END".into(),
    })];
    assert!(apply(&b, &create).is_ok());
    assert!(
        b.query_row("SELECT count(*) FROM __harmonylite__meta", [], |r| r
            .get::<_, i64>(0))
            .is_ok()
    );
}

#[test]
fn an_object_s_sql_is_one_create_statement_or_nothing_runs() {
    let (_, b) = pair();
    for sql in [
        "CREATE VIEW v AS SELECT 1; DELETE FROM Books",
        "DELETE FROM Books",
        "DROP TABLE Books",
    ] {
        let changes = [Change::Create(Object {
            kind: Kind::View,
            name: "v".into(),
            table: "v".into(),
            sql: sql.into(),
        })];
        assert!(apply(&b, &changes).is_err(), "{sql}");
        assert_eq!(
            rows(&b, "SELECT count(*) FROM Books"),
            ["Integer(2)"],
            "{sql}"
        );
    }
}

#[test]
fn a_rebuild_of_a_table_changed_here_meanwhile_is_not_made_and_says_how_it_differs() {
    let (a, mut b) = pair();
    b.execute_batch("ALTER TABLE Books ADD COLUMN here_only TEXT")
        .expect("local change");
    let before = shared_of(&a);
    // A type changed: a rebuild, which cannot be made again on top of another shape.
    a.execute_batch(
        "PRAGMA legacy_alter_table = ON;
         CREATE TABLE new_books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, price TEXT);
         INSERT INTO new_books SELECT * FROM Books; DROP TABLE Books; ALTER TABLE new_books RENAME TO Books;
         CREATE INDEX books_title ON Books(title);
         PRAGMA legacy_alter_table = OFF;",
    )
    .expect("change on a");
    let changes = diff(&before, &shared_of(&a));
    let tx = b.transaction().expect("tx");
    let err = apply(&tx, &changes).expect_err("must not apply");
    assert!(matches!(err, DdlError::Differs { .. }), "{err}");
    assert!(err.to_string().contains("here_only"), "{err}");
}

/// A change made on `db` with `statements` (taken as one of its own, pending until it comes back).
fn change_here(db: &Connection, statements: &str) -> Vec<Change> {
    let before = shared_of(db);
    db.execute_batch(statements).expect("change");
    let changes = diff(&before, &shared_of(db));
    let mut own = own_pending(db).expect("own");
    own.push(changes.clone());
    set_own_pending(db, &own).expect("own");
    changes
}

/// `changes` from another node applied on `db` in one transaction (committed only when they apply).
fn from_stream(db: &mut Connection, changes: &[Change]) -> Result<(), DdlError> {
    let tx = db.transaction().expect("tx");
    apply(&tx, changes)?;
    tx.commit().expect("commit");
    Ok(())
}

#[test]
fn two_nodes_adding_columns_at_once_end_with_both_in_stream_order() {
    let (mut a, mut b) = pair();
    let mut c = Connection::open_in_memory().expect("c");
    c.execute_batch(BASE).expect("base c");
    let from_a = change_here(
        &a,
        "ALTER TABLE Books ADD COLUMN x TEXT; ALTER TABLE Books ADD COLUMN z INT",
    );
    let from_b = change_here(&b, "ALTER TABLE Books ADD COLUMN y INTEGER DEFAULT 7");
    b.execute_batch("INSERT INTO Books (id, title, y) VALUES (3, 'Ubik', 8)")
        .expect("row on b");
    // The stream: a's change, then b's. c applies both.
    from_stream(&mut c, &from_a).expect("a's on c");
    from_stream(&mut c, &from_b).expect("b's on c, on top of a's");
    // a: its own comes back, then b's.
    own_returned(&a, &from_a).expect("own");
    from_stream(&mut a, &from_b).expect("b's on a");
    // b: a's arrives while its own is still on its way; then its own comes back.
    from_stream(&mut b, &from_a).expect("a's on b, under its own");
    own_returned(&b, &from_b).expect("own");
    assert!(own_pending(&b).expect("own").is_empty());
    let want = shared_of(&c);
    assert_eq!(shared_of(&a), want);
    assert_eq!(shared_of(&b), want);
    assert_eq!(
        columns_of(&b, "Books").expect("columns"),
        ["id", "title", "price", "x", "z", "y"]
    );
    assert_eq!(
        rows(&b, "SELECT id, title, x, z, y FROM Books ORDER BY id"),
        [
            "Integer(1)|Text(\"Dune\")|Null|Null|Integer(7)",
            "Integer(2)|Text(\"Emma\")|Null|Null|Integer(7)",
            "Integer(3)|Text(\"Ubik\")|Null|Null|Integer(8)"
        ]
    );
}

#[test]
fn a_later_change_from_the_same_node_lands_under_a_pending_own_change_too() {
    let (mut a, mut b) = pair();
    let a1 = change_here(&a, "ALTER TABLE Books ADD COLUMN x TEXT");
    let a2 = change_here(&a, "ALTER TABLE Books ADD COLUMN z TEXT");
    let b1 = change_here(&b, "ALTER TABLE Books ADD COLUMN y TEXT");
    // The stream: a1, a2, b1.
    from_stream(&mut b, &a1).expect("a1 on b");
    from_stream(&mut b, &a2).expect("a2 on b");
    own_returned(&b, &b1).expect("own");
    own_returned(&a, &a1).expect("own");
    own_returned(&a, &a2).expect("own");
    from_stream(&mut a, &b1).expect("b1 on a");
    assert_eq!(shared_of(&a), shared_of(&b));
    assert_eq!(
        columns_of(&a, "Books").expect("columns"),
        ["id", "title", "price", "x", "z", "y"]
    );
}

#[test]
fn a_change_that_no_longer_applies_after_an_earlier_one_is_refused_everywhere_and_undone_where_made()
 {
    let (mut a, mut b) = pair();
    let mut c = Connection::open_in_memory().expect("c");
    c.execute_batch(BASE).expect("base c");
    for db in [&a, &b, &c] {
        db.execute_batch("ALTER TABLE Books ADD COLUMN extra TEXT")
            .expect("extra");
    }
    let from_a = change_here(&a, "ALTER TABLE Books DROP COLUMN extra");
    let from_b = change_here(&b, "ALTER TABLE Books RENAME COLUMN extra TO more");
    // The stream: a's drop, then b's rename, which no longer applies.
    from_stream(&mut c, &from_a).expect("a's on c");
    let err = from_stream(&mut c, &from_b).expect_err("b's rename on c");
    assert!(err.to_string().contains("no longer apply"), "{err}");
    own_returned(&a, &from_a).expect("own");
    from_stream(&mut a, &from_b).expect_err("b's rename on a");
    // b: a's drop arrives under its own rename, which is undone here.
    from_stream(&mut b, &from_a).expect("a's on b");
    own_returned(&b, &from_b).expect("own");
    let want = shared_of(&c);
    assert_eq!(shared_of(&a), want);
    assert_eq!(shared_of(&b), want);
    assert_eq!(
        columns_of(&b, "Books").expect("columns"),
        ["id", "title", "price"]
    );
}

#[test]
fn a_table_created_otherwise_here_keeps_its_rows() {
    let (_, b) = pair();
    let changes = [Change::Create(Object {
        kind: Kind::Table,
        name: "notes".into(),
        table: "notes".into(),
        sql: "CREATE TABLE notes (body TEXT, extra INT)".into(),
    })];
    assert!(matches!(apply(&b, &changes), Err(DdlError::Differs { .. })));
    assert_eq!(rows(&b, "SELECT count(*) FROM notes"), ["Integer(2)"]);
}

#[test]
fn names_are_read_past_quotes_and_commas_split_outside_parentheses() {
    assert_eq!(
        without_name("CREATE TABLE \"my \"\"t\"\" \"(a, b)"),
        without_name("create table IF NOT EXISTS main.[other](a, b)")
    );
    assert_eq!(without_name("CREATE TABLE t (a)"), "CREATE TABLE ? (a)");
    assert_eq!(
        split_top_level("a TEXT DEFAULT 'x, y', b CHECK (b IN (1, 2)), c"),
        ["a TEXT DEFAULT 'x, y'", "b CHECK (b IN (1, 2))", "c"]
    );
}

#[test]
fn a_failing_change_is_concurrent_only_when_made_without_a_change_this_node_has() {
    use crate::capture::ddl_hold::{applied, concurrent, held, hold, kept_local, release};
    let (a, b) = pair();
    // Made on a after a had the first shard up to 10.
    let change = change_here(&a, "ALTER TABLE Books ADD COLUMN x TEXT");
    // Nothing here touches Books: not concurrent (held if it fails).
    assert!(!concurrent(&b, &change, 10).unwrap());
    // A change to notes applied here at 12 does not matter; one to Books at 12 does, at 9 it does not.
    let notes = vec![Change::Create(Object {
        kind: Kind::Table,
        name: "n".into(),
        table: "n".into(),
        sql: "CREATE TABLE n (v)".into(),
    })];
    applied(&b, &notes, 12).unwrap();
    assert!(!concurrent(&b, &change, 10).unwrap());
    applied(&b, &change, 9).unwrap();
    assert!(!concurrent(&b, &change, 10).unwrap());
    applied(&b, &change, 12).unwrap();
    assert!(concurrent(&b, &change, 10).unwrap());
    assert!(!concurrent(&b, &change, 12).unwrap());
    // One of this node's own changes to Books not come back yet comes after it in stream order: not concurrent
    // (held here if it cannot be brought under it).
    let (_, c) = pair();
    change_here(&c, "ALTER TABLE Books ADD COLUMN y TEXT");
    assert!(!concurrent(&c, &change, 0).unwrap());

    // While a change to Books is held, this node's own change to Books is its fix (kept local); others are sent.
    let books = "books".to_string();
    hold(&b, [&books]).unwrap();
    let before = shared_of(&b);
    b.execute_batch("ALTER TABLE Books ADD COLUMN fix TEXT; CREATE TABLE other (v);")
        .unwrap();
    let (sent, local) = kept_local(&b, diff(&before, &shared_of(&b))).unwrap();
    assert!(
        matches!(&sent[..], [Change::Create(o)] if o.name == "other"),
        "{sent:?}"
    );
    assert!(
        matches!(&local[..], [Change::Alter { table, .. }] if table == "Books"),
        "{local:?}"
    );
    release(&b, [&books]).unwrap();
    assert!(held(&b).unwrap().is_empty());
    let (sent, local) = kept_local(&b, change.clone()).unwrap();
    assert_eq!((sent.len(), local.len()), (1, 0));
}
