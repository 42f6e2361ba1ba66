//! Constraints and user triggers on real clusters: a cascade delete at one node against a concurrent update of the
//! children at another ends the same on every node (last change in stream order per row, foreign keys not
//! enforced by the applier); a `CHECK`, `NOT NULL` or trigger `RAISE` only one node has sends the message to
//! that node's quarantine and its shard goes on; user triggers (an FTS5 external-content index, a node-local
//! audit table) fire once per change on each node, never again for a node's own change coming back from the
//! stream.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use harmonylite::wire::{Row, Value};
use support::*;

const T: Duration = Duration::from_secs(60);
const START: Duration = Duration::from_secs(90);

/// A node's log shows no paused or held shard.
fn assert_never_paused(n: &Node) {
    for what in ["shard paused", "changes held"] {
        let lines = n.log_lines_with(&[what]);
        assert!(lines.is_empty(), "node {}: {what}: {lines:#?}", n.id);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Foreign keys: ON DELETE CASCADE at one node against a concurrent update of the children at another.

const FK_SCHEMA: &str = "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE, v TEXT);";
const ROUNDS: i64 = 8;
const PARENTS_PER_ROUND: i64 = 3;
const CHILDREN_PER_PARENT: i64 = 3;
/// Parents never deleted (with their children): they must stay as seeded.
const KEPT_PARENTS: [i64; 2] = [900, 901];

/// The children of `parent`.
fn children_of(parent: i64) -> Vec<i64> {
    (1..=CHILDREN_PER_PARENT).map(|k| parent * 10 + k).collect()
}

/// The parents node 1 deletes in round `r` (1-based).
fn round_parents(r: i64) -> (i64, i64) {
    ((r - 1) * PARENTS_PER_ROUND + 1, r * PARENTS_PER_ROUND)
}

/// An application's connection, with foreign keys enforced as Django (and most ORMs) asks.
fn app_connection(db: &Path) -> rusqlite::Connection {
    let conn = open(db);
    conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
    let on: i64 = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        on, 1,
        "foreign keys enforced on the application's connection"
    );
    conn
}

/// `child` on one node: id → (parent_id, v).
fn children(n: &Node) -> BTreeMap<i64, (Option<i64>, Option<String>)> {
    let conn = n.open();
    let mut stmt = conn.prepare("SELECT id, parent_id, v FROM child").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn parents(n: &Node) -> BTreeSet<i64> {
    let conn = n.open();
    let mut stmt = conn.prepare("SELECT id FROM parent").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `PRAGMA foreign_key_check` on one node: (table, rowid, parent table, fk id), sorted.
fn foreign_key_check(n: &Node) -> Vec<(String, i64, String, i64)> {
    let conn = n.open();
    let mut stmt = conn.prepare("PRAGMA foreign_key_check").unwrap();
    let mut rows: Vec<_> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.sort();
    rows
}

/// What one round ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Node 1's delete reached node 2 before node 2's update ran: the update changed nothing, the children are gone.
    DeleteBeforeUpdate,
    /// Both wrote; the delete was later in the stream: the children are gone everywhere.
    DeleteWon,
    /// Both wrote; the update was later in the stream: the children are back everywhere with node 2's values,
    /// their parents gone (dangling).
    UpdateWon,
}

/// Node 1 deletes parents (cascading to their children there) while node 2 updates those children, at the same
/// moment, several rounds. Every round converges with every row as its last change in stream order left it: each
/// child is gone everywhere, or everywhere with node 2's value and a parent that no longer exists; `PRAGMA
/// foreign_key_check` says the same on every node, and names exactly those dangling children.
#[test]
fn cascade_delete_against_a_concurrent_child_update_converges() {
    let mut seed = String::from(FK_SCHEMA);
    let all_parents: Vec<i64> = (1..=ROUNDS * PARENTS_PER_ROUND)
        .chain(KEPT_PARENTS)
        .collect();
    for p in &all_parents {
        seed.push_str(&format!("\nINSERT INTO parent VALUES ({p}, 'p{p}');"));
        for c in children_of(*p) {
            seed.push_str(&format!("\nINSERT INTO child VALUES ({c}, {p}, 'seed');"));
        }
    }
    let c = Cluster::start(Options {
        schema: seed,
        ..Default::default()
    });
    let seeded = c.converged_all(T);
    assert_eq!(seeded["child"].1 as usize, all_parents.len() * 3);

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut dangling: BTreeSet<i64> = BTreeSet::new();
    for r in 1..=ROUNDS {
        let (lo, hi) = round_parents(r);
        let barrier = Arc::new(Barrier::new(2));
        let deleter = {
            let db = c.node(1).db.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = app_connection(&db);
                barrier.wait();
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .unwrap();
                let deleted = tx
                    .execute("DELETE FROM parent WHERE id BETWEEN ?1 AND ?2", [lo, hi])
                    .unwrap();
                let left: i64 = tx
                    .query_row(
                        "SELECT count(*) FROM child WHERE parent_id BETWEEN ?1 AND ?2",
                        [lo, hi],
                        |r| r.get(0),
                    )
                    .unwrap();
                tx.commit().unwrap();
                (deleted, left)
            })
        };
        let updater = {
            let db = c.node(2).db.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let conn = app_connection(&db);
                barrier.wait();
                conn.execute(
                    "UPDATE child SET v = 'n2-r' || ?1 || '-' || id WHERE parent_id BETWEEN ?2 AND ?3",
                    [r, lo, hi],
                )
                .unwrap()
            })
        };
        let (deleted, left) = deleter.join().unwrap();
        let updated = updater.join().unwrap();
        assert_eq!(
            deleted as i64, PARENTS_PER_ROUND,
            "round {r}: parents deleted"
        );
        assert_eq!(left, 0, "round {r}: the delete cascaded at node 1");

        c.converged_all(T);
        // Every message of the round handled everywhere (own ones skipped): the state is final, not a moment
        // when the nodes happen to agree.
        c.caught_up(T);
        c.converged_all(T);

        let round_children: Vec<i64> = (lo..=hi).flat_map(children_of).collect();
        let mut gone = 0;
        let mut back = 0;
        for n in &c.nodes {
            let rows = children(n);
            let ps = parents(n);
            for p in lo..=hi {
                assert!(!ps.contains(&p), "node {}: parent {p} is back", n.id);
            }
            for id in &round_children {
                match rows.get(id) {
                    None => gone += 1,
                    Some((parent, v)) => {
                        back += 1;
                        assert_eq!(
                            v.as_deref(),
                            Some(format!("n2-r{r}-{id}").as_str()),
                            "node {}: child {id} is there, but not with node 2's value (round {r})",
                            n.id
                        );
                        let parent = parent.expect("parent_id kept");
                        assert!(
                            !ps.contains(&parent),
                            "node {}: child {id}'s parent {parent} exists",
                            n.id
                        );
                    }
                }
            }
        }
        let total = round_children.len() * c.nodes.len();
        let outcome = if updated == 0 {
            Outcome::DeleteBeforeUpdate
        } else if gone == total {
            Outcome::DeleteWon
        } else if back == total {
            Outcome::UpdateWon
        } else {
            panic!(
                "round {r}: node 2 updated {updated} children; of {total} child rows (all nodes) {gone} gone, \
                 {back} back: one transaction's rows ended differently"
            );
        };
        if updated == 0 {
            assert_eq!(
                gone, total,
                "round {r}: nothing updated, yet children are back"
            );
        } else {
            assert_eq!(updated, round_children.len(), "round {r}: children updated");
        }
        if outcome == Outcome::UpdateWon {
            dangling.extend(&round_children);
        }
        outcomes.push(outcome);

        // PRAGMA foreign_key_check: the same on every node, and exactly the dangling children so far.
        let check = foreign_key_check(c.node(1));
        for n in &c.nodes[1..] {
            assert_eq!(
                foreign_key_check(n),
                check,
                "round {r}: foreign_key_check differs on node {} from node 1",
                n.id
            );
        }
        let flagged: BTreeSet<i64> = check
            .iter()
            .map(|(table, rowid, parent, _)| {
                assert_eq!((table.as_str(), parent.as_str()), ("child", "parent"));
                *rowid
            })
            .collect();
        assert_eq!(flagged, dangling, "round {r}: foreign_key_check");
    }

    // The parents never deleted and their children are as seeded, everywhere.
    for n in &c.nodes {
        let rows = children(n);
        let ps = parents(n);
        for p in KEPT_PARENTS {
            assert!(ps.contains(&p), "node {}: kept parent {p} missing", n.id);
            for id in children_of(p) {
                assert_eq!(
                    rows.get(&id),
                    Some(&(Some(p), Some("seed".to_string()))),
                    "node {}: child {id} of a kept parent",
                    n.id
                );
            }
        }
        assert!(n.quarantined().is_empty(), "node {}: quarantined", n.id);
        assert_never_paused(n);
    }
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    eprintln!(
        "cascade vs update, {ROUNDS} rounds: update won (dangling children) {}, delete won {}, delete reached node 2 \
         before its update {}; per round {outcomes:?}",
        count(Outcome::UpdateWon),
        count(Outcome::DeleteWon),
        count(Outcome::DeleteBeforeUpdate),
    );
    c.assert_all_alive();
}

// ---------------------------------------------------------------------------------------------------------------
// 2. A CHECK, NOT NULL or trigger RAISE only node 2 has: the message goes to node 2's quarantine, its shard goes on.

/// `table` (id, a name, `column`) is `loose` on nodes 1 and 3 and `strict` on node 2. Node 1 inserts row 1 with
/// `column` = `bad` (a value node 2's constraint refuses): nodes 1 and 3 keep it; node 2 quarantines the message
/// (the one row, a reason containing `reason`, one ERROR naming its sequence), does not pause, and still receives
/// row 2 written on node 1 afterwards and row 3 written on node 3.
fn refused_by_node_2_only(
    table: &str,
    column: &str,
    loose: &str,
    strict: &str,
    bad: &str,
    reason: &str,
) {
    let t0 = Instant::now();
    let mut c = Cluster::new(Options {
        schema: loose.to_string(),
        ..Default::default()
    });
    sqlite3(&c.node(2).db, &format!("DROP TABLE {table}; {strict}"));
    c.start_all();
    c.wait_all_running(START);
    let stream = c.node(1).loaded_config().stream_name(1);
    let mark = c.node(2).log_mark();

    c.node(1)
        .sql(&format!("INSERT INTO {table} VALUES (1, 'bad', {bad});"));
    let count = |n: &Node, id: i64| -> i64 {
        n.sql(&format!("SELECT count(*) FROM {table} WHERE id = {id};"))
            .trim()
            .parse()
            .unwrap()
    };
    c.node(3)
        .eventually(T, "node 3 has the row", || count(c.node(3), 1) == 1);
    let q = c.node(2).eventually(T, "node 2 quarantined the row", || {
        Some(c.node(2).quarantined()).filter(|q| !q.is_empty())
    });

    // The shard goes on: later writes on nodes 1 and 3 reach node 2.
    c.node(1)
        .sql(&format!("INSERT INTO {table} VALUES (2, 'good', 7);"));
    c.node(3)
        .sql(&format!("INSERT INTO {table} VALUES (3, 'good too', 8);"));
    for id in [2, 3] {
        c.node(2)
            .eventually(T, &format!("node 2 has row {id}"), || {
                count(c.node(2), id) == 1
            });
    }
    let last = c.caught_up(T)[0];

    // Exactly the bad message, with its reason, in node 2's quarantine; none elsewhere.
    assert_eq!(c.node(2).quarantined().len(), 1, "{q:#?}");
    let q = &q[0];
    assert_eq!(q.stream, stream);
    assert!(q.seq >= 1 && q.seq < last, "{q:?}, stream at {last}");
    assert!(
        q.reason.contains(reason),
        "node 2's quarantine reason {:?} should mention {reason:?}",
        q.reason
    );
    let msg = q
        .message()
        .expect("the quarantined payload is a wire message");
    assert_eq!(msg.origin, 1, "{msg:?}");
    let rows: Vec<&Vec<Value>> = msg
        .tables
        .iter()
        .filter(|t| t.table == table)
        .flat_map(|t| &t.rows)
        .filter_map(|r| match r {
            Row::Upsert(v) => Some(v),
            Row::Delete(_) => None,
        })
        .collect();
    assert_eq!(rows.len(), 1, "{msg:?}");
    assert_eq!(rows[0][0], Value::Integer(1), "{msg:?}");
    for i in [1, 3] {
        let n = c.node(i);
        assert!(
            n.quarantined().is_empty(),
            "node {i}: {:?}",
            n.quarantined()
        );
    }

    // Nodes 1 and 3 have the row as written, node 2 everything but it.
    let all = |n: &Node| n.sql(&format!("SELECT * FROM {table} ORDER BY id;"));
    assert_eq!(all(c.node(1)), all(c.node(3)));
    let ids = |n: &Node| {
        n.sql(&format!(
            "SELECT group_concat(id) FROM (SELECT id FROM {table} ORDER BY id);"
        ))
    };
    for i in [1, 3] {
        assert_eq!(ids(c.node(i)).trim(), "1,2,3", "node {i}");
        assert_eq!(
            c.node(i)
                .sql(&format!(
                    "SELECT quote({column}) FROM {table} WHERE id = 1;"
                ))
                .trim(),
            bad,
            "node {i}: row 1's {column}"
        );
    }
    assert_eq!(ids(c.node(2)).trim(), "2,3", "node 2");

    // Said once at ERROR with the stream position; never paused.
    let log = c.node(2).log_since(mark);
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("quarantined"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains(&format!("seq={}", q.seq)),
        "{}",
        errors[0]
    );
    for n in &c.nodes {
        assert_never_paused(n);
    }
    c.assert_all_alive();
    eprintln!(
        "{table}: quarantined on node 2 at {stream}#{}: {:?}; run {:.1}s",
        q.seq,
        q.reason,
        t0.elapsed().as_secs_f64()
    );
}

/// `CHECK (qty >= 0)` on node 2 only; node 1 inserts qty = -5.
#[test]
fn a_check_only_one_node_has_quarantines_there_and_the_shard_goes_on() {
    refused_by_node_2_only(
        "stock",
        "qty",
        "CREATE TABLE stock (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER);",
        "CREATE TABLE stock (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER CHECK (qty >= 0));",
        "-5",
        "CHECK constraint failed",
    );
}

/// `email TEXT NOT NULL` (no default) on node 2 only; node 1 inserts NULL there.
#[test]
fn a_not_null_only_one_node_has_quarantines_there_and_the_shard_goes_on() {
    refused_by_node_2_only(
        "contacts",
        "email",
        "CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT, email TEXT);",
        "CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT, email TEXT NOT NULL);",
        "NULL",
        "NOT NULL constraint failed",
    );
}

/// A trigger `RAISE(ABORT, ..)` on node 2 only refuses negative quantities; node 1 inserts qty = -5.
#[test]
fn a_trigger_raise_only_one_node_has_quarantines_there_and_the_shard_goes_on() {
    refused_by_node_2_only(
        "ledger_lines",
        "amount",
        "CREATE TABLE ledger_lines (id INTEGER PRIMARY KEY, label TEXT, amount INTEGER);",
        "CREATE TABLE ledger_lines (id INTEGER PRIMARY KEY, label TEXT, amount INTEGER);
         CREATE TRIGGER no_negative BEFORE INSERT ON ledger_lines WHEN new.amount < 0
         BEGIN SELECT RAISE(ABORT, 'negative amounts are refused here'); END;",
        "-5",
        "negative amounts are refused here",
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3. User triggers: an FTS5 external-content index and a node-local audit table.

const NOTES_SCHEMA: &str = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
CREATE VIRTUAL TABLE notes_fts USING fts5(body, content='notes', content_rowid='id');
CREATE TRIGGER notes_fts_ai AFTER INSERT ON notes BEGIN
  INSERT INTO notes_fts(rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER notes_fts_ad AFTER DELETE ON notes BEGIN
  INSERT INTO notes_fts(notes_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
CREATE TRIGGER notes_fts_au AFTER UPDATE ON notes BEGIN
  INSERT INTO notes_fts(notes_fts, rowid, body) VALUES ('delete', old.id, old.body);
  INSERT INTO notes_fts(rowid, body) VALUES (new.id, new.body);
END;
CREATE TABLE audit (id INTEGER PRIMARY KEY, note_id INTEGER, op TEXT);
CREATE TRIGGER audit_ai AFTER INSERT ON notes BEGIN INSERT INTO audit (note_id, op) VALUES (new.id, 'insert'); END;
CREATE TRIGGER audit_au AFTER UPDATE ON notes BEGIN INSERT INTO audit (note_id, op) VALUES (new.id, 'update'); END;
CREATE TRIGGER audit_ad AFTER DELETE ON notes BEGIN INSERT INTO audit (note_id, op) VALUES (old.id, 'delete'); END;";

const WORDS: [&str; 15] = [
    "apple",
    "banana",
    "cherry",
    "date",
    "elder",
    "fig",
    "grape",
    "honeydew",
    "kiwi",
    "lemon",
    "mango",
    "nectarine",
    "olive",
    "papaya",
    "quince",
];

#[derive(Debug, Clone)]
enum Change {
    Insert(i64, &'static str),
    Update(i64, &'static str),
    Delete(i64),
}

impl Change {
    fn sql(&self) -> String {
        match self {
            Change::Insert(id, body) => format!("INSERT INTO notes VALUES ({id}, '{body}');"),
            Change::Update(id, body) => {
                format!("UPDATE notes SET body = '{body}' WHERE id = {id};")
            }
            Change::Delete(id) => format!("DELETE FROM notes WHERE id = {id};"),
        }
    }

    /// What the audit trigger records for it: (note id, op).
    fn audit(&self) -> (i64, &'static str) {
        match self {
            Change::Insert(id, _) => (*id, "insert"),
            Change::Update(id, _) => (*id, "update"),
            Change::Delete(id) => (*id, "delete"),
        }
    }

    fn apply(&self, model: &mut BTreeMap<i64, String>) {
        match self {
            Change::Insert(id, body) | Change::Update(id, body) => {
                model.insert(*id, body.to_string());
            }
            Change::Delete(id) => {
                model.remove(id);
            }
        }
    }
}

/// Phases of (node, transaction). In a phase each row is changed once, by one node; every node has every change
/// of a phase before the next begins (a row changed twice between two publish passes is published once, with
/// its last value: phases keep each change its own).
fn phases() -> Vec<Vec<(usize, Vec<Change>)>> {
    use Change::*;
    vec![
        vec![
            (
                1,
                vec![
                    Insert(1, "apple banana"),
                    Insert(2, "cherry apple"),
                    Insert(3, "banana date"),
                ],
            ),
            (1, vec![Insert(4, "elder fig")]),
            (2, vec![Insert(11, "grape apple"), Insert(12, "honeydew")]),
            (2, vec![Insert(13, "kiwi banana")]),
            (2, vec![Insert(14, "lemon")]),
        ],
        vec![
            (1, vec![Update(1, "mango cherry")]),
            // Rows the other node inserted.
            (1, vec![Update(12, "nectarine")]),
            (2, vec![Update(3, "apple lemon"), Update(14, "lemon olive")]),
            (2, vec![Update(11, "grape olive")]),
        ],
        vec![
            (1, vec![Delete(2), Delete(13)]),
            (2, vec![Delete(4), Insert(15, "papaya apple")]),
            (
                1,
                vec![Update(11, "quince banana"), Insert(5, "fig quince")],
            ),
            (2, vec![Update(1, "mango")]),
        ],
    ]
}

fn notes(n: &Node) -> BTreeMap<i64, String> {
    let conn = n.open();
    let mut stmt = conn.prepare("SELECT id, body FROM notes").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The audit table as a multiset: (note id, op) → entries.
fn audit(n: &Node) -> BTreeMap<(i64, String), i64> {
    let conn = n.open();
    let mut stmt = conn
        .prepare("SELECT note_id, op, count(*) FROM audit GROUP BY note_id, op")
        .unwrap();
    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn fts_match(n: &Node, word: &str) -> BTreeSet<i64> {
    let conn = n.open();
    let mut stmt = conn
        .prepare("SELECT rowid FROM notes_fts WHERE notes_fts MATCH ?1")
        .unwrap();
    stmt.query_map([word], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Inserts, updates and deletes on nodes 1 and 2 with user triggers on `notes` on every node: an FTS5
/// external-content index and an audit table excluded from replication. After each phase, on every node: the
/// full-text index finds exactly the rows whose body holds the word, both integrity checks pass, and the audit
/// table holds exactly one entry per change (each node's own changes once: they fired no trigger when they came
/// back from the stream). Nothing but `notes` is captured.
#[test]
fn user_triggers_fire_once_per_change_on_every_node() {
    let t0 = Instant::now();
    let c = Cluster::start(Options {
        schema: NOTES_SCHEMA.to_string(),
        extra_toml: "exclude_tables = [\"audit\"]".to_string(),
        ..Default::default()
    });
    // Capture is on notes only: not on the audit table, the FTS5 table or its shadow tables.
    for n in &c.nodes {
        let captured = n.sql(
            "SELECT DISTINCT tbl_name FROM sqlite_schema WHERE type = 'trigger' \
             AND substr(name, 1, 15) = '__harmonylite__' ORDER BY 1;",
        );
        assert_eq!(captured.trim(), "notes", "node {}: captured tables", n.id);
    }

    let mut model: BTreeMap<i64, String> = BTreeMap::new();
    let mut expected_audit: BTreeMap<(i64, String), i64> = BTreeMap::new();
    let mut changes = 0;
    for (p, phase) in phases().into_iter().enumerate() {
        for (node, txn) in &phase {
            let sql: String = txn.iter().map(Change::sql).collect();
            // IMMEDIATE: a deferred transaction's first statement reads (FTS5 loads its configuration when
            // the trigger's statement is prepared) and then cannot upgrade to a write once another writer, such
            // as the node's applier, committed in between: SQLITE_BUSY at once, whatever the busy timeout.
            c.node(*node)
                .sql(&format!("BEGIN IMMEDIATE; {sql} COMMIT;"));
            for ch in txn {
                ch.apply(&mut model);
                let (id, op) = ch.audit();
                *expected_audit.entry((id, op.to_string())).or_default() += 1;
                changes += 1;
            }
        }
        for n in &c.nodes {
            n.eventually(T, &format!("phase {p} on node {}", n.id), || {
                notes(n) == model
            });
        }
        c.converged("notes", T);
        // Every message handled everywhere, each node's own included: a trigger fired again by an echo would
        // show now.
        c.caught_up(T);

        for n in &c.nodes {
            assert_eq!(notes(n), model, "node {} after phase {p}", n.id);
            for word in WORDS {
                let want: BTreeSet<i64> = model
                    .iter()
                    .filter(|(_, body)| body.split(' ').any(|w| w == word))
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(
                    fts_match(n, word),
                    want,
                    "node {} after phase {p}: full-text search for {word:?}",
                    n.id
                );
            }
            n.try_sql("INSERT INTO notes_fts(notes_fts) VALUES('integrity-check');")
                .unwrap_or_else(|e| panic!("node {}: integrity-check: {e}", n.id));
            // With rank = 1 the index is also checked against the content table.
            n.try_sql("INSERT INTO notes_fts(notes_fts, rank) VALUES('integrity-check', 1);")
                .unwrap_or_else(|e| panic!("node {}: integrity-check against notes: {e}", n.id));
            let got = audit(n);
            assert_eq!(
                got, expected_audit,
                "node {} after phase {p}: audit entries (note id, op) → count, for {changes} changes",
                n.id
            );
        }
    }
    for n in &c.nodes {
        assert!(n.quarantined().is_empty(), "node {}: quarantined", n.id);
        assert_never_paused(n);
    }
    c.assert_all_alive();
    eprintln!(
        "user triggers: {changes} changes, {} notes left, audit identical on 3 nodes; run {:.1}s",
        model.len(),
        t0.elapsed().as_secs_f64()
    );
}
