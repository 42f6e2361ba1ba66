//! Django's own migrations on a live three-node cluster, run the way a rolling deploy runs them: `python
//! manage.py migrate` on one node after the other, while the application keeps writing every node through the
//! ORM. The project is `tests/tools/django` (apps `library`, `shelf` and `catalog` beside Django's
//! `contenttypes` and `auth`; migrations committed there, see its `hlsite/settings.py`).
//!
//! What must hold: every `migrate` exits 0 on every node and applies its migrations there (Django's own
//! bookkeeping, `django_migrations`, must not tell a node that a migration another node ran is done here), no
//! application write fails, the nodes converge, a table rebuild (`new__library_book`: create, copy, drop,
//! rename) on a node that is behind reverts no newer value and brings back no deleted row, and `-verify` finds
//! the nodes identical.
//!
//! And a `unique=True` field (`catalog.Entry.code`) claimed through the ORM on two nodes at the same moment, by
//! rows of different primary keys: the later claim in stream order keeps the value on every node, and every
//! entry that lost it is in every node's conflict journal exactly once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use support::django::{Django, Ran};
use support::*;

const T: Duration = Duration::from_secs(60);
/// Longest any single `manage.py` command may take.
const MANAGE: Duration = Duration::from_secs(90);
/// The release whose code ships `library.0002` and `catalog.0002` (and whose `manage.py migrate` every node
/// runs); release 1 is the code before them.
const NEW: u32 = 2;
const OLD: u32 = 1;

/// `manage.py migrate ARGS` on node `node` with the new release's code; panics unless it exits 0 and its
/// output says it applied each of `applies` (e.g. `library.0002_book_edition_alter_book_title`).
fn migrate(django: &Django, c: &Cluster, node: usize, args: &[&str], applies: &[&str]) -> String {
    let mut full = vec!["migrate", "--no-input"];
    full.extend_from_slice(args);
    let mut ran = django.run(c.node(node), NEW, &full, MANAGE);
    let mut output = ran.output.clone();
    // OPERATIONS.md "Django": another node's content types or permissions can land between the post-migrate
    // step's look for missing rows and its insert of them; the migrations are committed, and the recipe is to
    // run `migrate` again, which must then succeed.
    if !ran.success()
        && ["django_content_type.", "auth_permission."]
            .iter()
            .any(|t| {
                ran.output
                    .contains(&format!("UNIQUE constraint failed: {t}"))
            })
    {
        eprintln!(
            "node {node}: manage.py {full:?}: post-migrate met another node's rows; run again"
        );
        ran = django.run(c.node(node), NEW, &full, MANAGE);
        output.push_str(&ran.output);
    }
    assert!(
        ran.success(),
        "manage.py {full:?} on node {node} exited {:?}:\n{}\n{}",
        ran.code,
        output,
        c.logs_tail()
    );
    let ran = Ran { output, ..ran };
    for m in applies {
        assert!(
            ran.output.contains(&format!("Applying {m}... OK")),
            "manage.py {full:?} on node {node} did not apply {m} there:\n{}",
            ran.output
        );
    }
    eprintln!("node {node}: manage.py {full:?}: OK");
    ran.output
}

/// `manage.py ARGS` on node `node` that must exit 0; returns its output.
fn manage(django: &Django, c: &Cluster, node: usize, release: u32, args: &[&str]) -> String {
    let ran: Ran = django.run(c.node(node), release, args, MANAGE);
    assert!(
        ran.success(),
        "manage.py {args:?} (release {release}) on node {node} exited {:?}:\n{}",
        ran.code,
        ran.output
    );
    ran.output
}

/// Names of `table`'s columns on `node`.
fn columns(node: &Node, table: &str) -> Vec<String> {
    node.sql(&format!(
        "SELECT name FROM pragma_table_info('{table}') ORDER BY cid;"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// Panics unless `node`'s `table` has `column` now (right after that node's own `migrate`).
fn assert_has_column(node: &Node, table: &str, column: &str) {
    let cols = columns(node, table);
    assert!(
        cols.iter().any(|c| c == column),
        "node {}: {table} has no column {column} after its migrate: {cols:?}",
        node.id
    );
}

/// Operations committed by process `pid` as the writer state `path` records them (0 before its first commit:
/// until then the file holds the run before it, if any).
fn ops_this_run(path: &Path, pid: u32) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|s| {
            let run = s["runs"].as_array()?.last()?.clone();
            (run["pid"].as_u64()? == u64::from(pid)).then(|| run["ops"].as_u64())?
        })
        .unwrap_or(0)
}

/// One application process writing books through the ORM (`manage.py write_books`), owning the books
/// `first .. first + 40`, recording their last state in `state`.
struct AppWriter {
    name: String,
    node: usize,
    first: u32,
    state: PathBuf,
    log: PathBuf,
    child: ChildGuard,
}

impl AppWriter {
    /// Starts writer `name` on node `node` with the code of `release`; `resume`: continue from its state file
    /// (the same application restarted with other code).
    fn start(
        django: &Django,
        c: &Cluster,
        node: usize,
        release: u32,
        name: &str,
        first: u32,
        resume: bool,
    ) -> AppWriter {
        let state = c.path().join(format!("{name}.json"));
        let log = c.path().join(format!("{name}.log"));
        let hold = hold_deletes_file(c, node);
        let first_s = first.to_string();
        let mut args = vec![
            "write_books",
            "--writer",
            name,
            "--first",
            &first_s,
            "--state",
            state.to_str().unwrap(),
            "--hold-deletes",
            hold.to_str().unwrap(),
        ];
        if resume {
            args.push("--resume");
        }
        let child = django.spawn(c.node(node), release, &args, &log);
        AppWriter {
            name: name.to_string(),
            node,
            first,
            state,
            log,
            child,
        }
    }

    /// Operations committed so far by the run under way (0 before its first).
    fn ops_this_run(&self) -> u64 {
        ops_this_run(&self.state, self.child.pid())
    }

    /// Waits until the run under way has committed `n` more operations than `from` (panics with its log when it
    /// dies or is stuck).
    fn wait_ops(&mut self, from: u64, n: u64) {
        let (child, state, log, name) = (&mut self.child, &self.state, &self.log, &self.name);
        let pid = child.pid();
        let done = wait::poll(T, || {
            if let Some(st) = child.exited() {
                panic!("writer {name} exited ({st}):\n{}", read_lossy(log));
            }
            ops_this_run(state, pid) >= from + n
        });
        assert!(
            done.is_some(),
            "writer {name} did not commit {n} operations within {T:?}:\n{}",
            read_lossy(log)
        );
    }

    fn assert_alive(&mut self) {
        if let Some(st) = self.child.exited() {
            panic!(
                "writer {} on node {} exited ({st}):\n{}",
                self.name,
                self.node,
                read_lossy(&self.log)
            );
        }
    }

    /// SIGTERM: it finishes the transaction in progress, records its state and exits 0. Returns its exit status
    /// and its log.
    fn stop(mut self) -> (ExitStatus, String) {
        send_signal(self.child.pid(), Signal::SIGTERM);
        let status = wait::poll(T, || self.child.exited()).unwrap_or_else(|| {
            panic!(
                "writer {} did not stop within {T:?}:\n{}",
                self.name,
                read_lossy(&self.log)
            )
        });
        (status, read_lossy(&self.log))
    }
}

/// While this file exists, the writer on `node` turns its deletes into updates.
fn hold_deletes_file(c: &Cluster, node: usize) -> PathBuf {
    c.path().join(format!("node-{node}.hold-deletes"))
}

/// `migrate` on `node` with the recipe of OPERATIONS.md for deletes on the migrating node: none from the
/// migration's start until HarmonyLite has installed its triggers on the rebuilt table again (a row deleted in
/// between is not seen, and comes back from the other nodes).
fn migrate_holding_deletes(
    django: &Django,
    c: &Cluster,
    node: usize,
    args: &[&str],
    applies: &[&str],
) {
    let hold = hold_deletes_file(c, node);
    std::fs::write(&hold, b"").unwrap();
    migrate(django, c, node, args, applies);
    c.node(node).eventually(T, "capture installed on the rebuilt table", || {
        c.node(node)
            .sql("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = '__harmonylite__library_book_delete';")
            .trim()
            == "1"
    });
    std::fs::remove_file(&hold).unwrap();
}

/// The first deploy on `node`: Django's apps, then `library` at the release before the change, and `shelf`.
fn first_deploy(django: &Django, c: &Cluster, node: usize) {
    migrate(
        django,
        c,
        node,
        &["auth"],
        &["contenttypes.0001_initial", "auth.0001_initial"],
    );
    migrate(
        django,
        c,
        node,
        &["library", "0001"],
        &["library.0001_initial"],
    );
    migrate(django, c, node, &["shelf"], &["shelf.0001_initial"]);
}

/// The column the release adds to `library_book`.
const EDITION: &str = "edition";

/// The initial deploy, then a release (`library.0002`: an `AddField` with a database default and an
/// `AlterField` of `title`'s length, each a table rebuild on SQLite), migrated node by node while three
/// application processes write: on node 1 (restarted with the new code right after node 1's migrate, so that
/// it writes the new column), node 2 and node 3 (the old code all along). Node 3 is migrated last, after its
/// shard has waited on the new column while the others went on inserting, updating and deleting.
#[test]
fn django_migrations_node_by_node_revert_nothing() {
    let mut c = Cluster::new(Options::default());
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    let django = Django::new("django", c.path());

    // The first deploy, node by node: Django's apps, then ours at the release before the change.
    for i in 1..=3 {
        first_deploy(&django, &c, i);
    }
    manage(&django, &c, 1, OLD, &["seed_library"]);
    for t in ["library_author", "library_book", "shelf_placement"] {
        c.converged(t, T);
    }

    let mut writers = vec![
        AppWriter::start(&django, &c, 1, OLD, "w1", 1001, false),
        AppWriter::start(&django, &c, 2, OLD, "w2", 2001, false),
        AppWriter::start(&django, &c, 3, OLD, "w3", 3001, false),
    ];
    for w in &mut writers {
        w.wait_ops(0, 40);
    }

    // The release on node 1 while its application (old code) writes; then the application is restarted with
    // the new code, which writes the new column.
    migrate_holding_deletes(
        &django,
        &c,
        1,
        &["library"],
        &["library.0002_book_edition_alter_book_title"],
    );
    assert_has_column(c.node(1), "library_book", EDITION);
    let w1 = writers.remove(0);
    let (st, log) = w1.stop();
    assert!(st.success(), "writer w1 (old code) exited {st}:\n{log}");
    writers.insert(0, AppWriter::start(&django, &c, 1, NEW, "w1", 1001, true));
    // 50 operations hold two deletes (every 25th operation deletes a book) of books nodes 2 and 3 still have, as
    // they wait on the new column: books deleted between node 1's rebuild and node 2's, which both later
    // rebuilds copy.
    writers[0].wait_ops(0, 50);

    // Nodes 2 and 3 wait on the new column; node 2 is migrated.
    let line = c.node(3).wait_paused_on("library_book", Some(EDITION), T);
    eprintln!("node 3 waits: {line}");
    c.node(2).wait_paused_on("library_book", Some(EDITION), T);
    migrate_holding_deletes(
        &django,
        &c,
        2,
        &["library"],
        &["library.0002_book_edition_alter_book_title"],
    );
    assert_has_column(c.node(2), "library_book", EDITION);

    // The applications go on updating and deleting for a few seconds while node 3 is behind.
    let before: Vec<u64> = writers.iter().map(AppWriter::ops_this_run).collect();
    during(Duration::from_secs(4), || {
        for w in &mut writers {
            w.assert_alive();
        }
    });
    for (w, b) in writers.iter_mut().zip(&before) {
        w.wait_ops(*b, 25);
    }

    // Node 3 last: its rebuild copies rows it has not caught up on yet.
    migrate_holding_deletes(
        &django,
        &c,
        3,
        &["library"],
        &["library.0002_book_edition_alter_book_title"],
    );
    assert_has_column(c.node(3), "library_book", EDITION);

    let mut states = Vec::new();
    for w in writers {
        let (name, node, first, state) = (w.name.clone(), w.node, w.first, w.state.clone());
        let (st, log) = w.stop();
        assert!(st.success(), "writer {name} exited {st}:\n{log}");
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        let objects = s["objects"].as_object().unwrap();
        let deleted = objects.values().filter(|o| o["deleted"] == true).count();
        eprintln!(
            "writer {name} on node {node} (books {first}..): {} operations, {} live and {deleted} deleted books, \
             {} errors",
            s["ops"],
            objects.len() - deleted,
            s["errors"]
        );
        assert_eq!(
            s["errors"], 0,
            "writer {name}: application writes failed:\n{log}"
        );
        assert!(deleted > 0, "writer {name} deleted nothing");
        states.push(state);
    }

    for t in ["library_author", "library_book", "shelf_placement"] {
        let (_, rows) = c.converged(t, Duration::from_secs(90));
        eprintln!("{t}: {rows} rows on every node");
    }
    // Every owned object has its writer's last value on every node, every deleted one is gone.
    let mut check = vec!["check_books"];
    check.extend(states.iter().map(|p| p.to_str().unwrap()));
    let mut differ = String::new();
    for i in 1..=3 {
        let ran = django.run(c.node(i), NEW, &check, MANAGE);
        let lines: Vec<&str> = ran.output.lines().collect();
        let summary = lines
            .iter()
            .find(|l| l.starts_with("checked "))
            .copied()
            .unwrap_or("(no summary)");
        eprintln!("node {i}: {summary}");
        if !ran.success() {
            // The first differences and the summary.
            let first: Vec<&str> = lines.iter().take(8).copied().collect();
            differ.push_str(&format!(
                "--- node {i} ---\n{}\n...\n{}\n",
                first.join("\n"),
                last_lines(&ran.output, 2)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "nodes differ from what the writers last wrote:\n{differ}"
    );
    for i in 1..=3 {
        let n = c.node(i);
        assert_has_column(n, "library_book", EDITION);
        assert_eq!(
            n.sql("SELECT type FROM pragma_table_info('library_book') WHERE name = 'title';")
                .trim(),
            "varchar(300)",
            "node {i}: the AlterField"
        );
        manage(&django, &c, i, NEW, &["migrate", "library", "--check"]);
    }
    eprintln!("{}", c.assert_verified(2));
    c.assert_all_alive();
}

/// A release whose only migration adds a (nullable) field, `catalog.0002`: on SQLite a plain `ALTER TABLE ...
/// ADD COLUMN`. Migrated on node 1, which then writes the new column with the new code; nodes 2 and 3 wait on
/// it, are migrated one after the other, and every node ends with the column and the values.
#[test]
fn django_release_with_one_added_field_reaches_every_node() {
    let c = Cluster::start(Options::default());
    let django = Django::new("django", c.path());
    for i in 1..=3 {
        migrate(
            &django,
            &c,
            i,
            &["catalog", "0001"],
            &["catalog.0001_initial"],
        );
    }
    manage(
        &django,
        &c,
        2,
        OLD,
        &["put_entry", "--id", "1", "--name", "before the release"],
    );
    assert_eq!(c.converged("catalog_entry", T).1, 1);

    migrate(
        &django,
        &c,
        1,
        &["catalog"],
        &["catalog.0002_entry_summary"],
    );
    assert_has_column(c.node(1), "catalog_entry", "summary");
    manage(
        &django,
        &c,
        1,
        NEW,
        &[
            "put_entry",
            "--id",
            "1",
            "--name",
            "before the release",
            "--summary",
            "added on node 1",
        ],
    );
    manage(
        &django,
        &c,
        1,
        NEW,
        &[
            "put_entry",
            "--id",
            "2",
            "--name",
            "after the release",
            "--summary",
            "written by the new code",
        ],
    );
    for i in [2, 3] {
        c.node(i)
            .wait_paused_on("catalog_entry", Some("summary"), T);
        migrate(
            &django,
            &c,
            i,
            &["catalog"],
            &["catalog.0002_entry_summary"],
        );
        assert_has_column(c.node(i), "catalog_entry", "summary");
    }
    assert_eq!(c.converged("catalog_entry", T).1, 2);
    for i in 1..=3 {
        assert_eq!(
            c.node(i)
                .sql("SELECT id, summary FROM catalog_entry ORDER BY id;"),
            "1|added on node 1\n2|written by the new code\n",
            "node {i}"
        );
        manage(&django, &c, i, NEW, &["migrate", "catalog", "--check"]);
    }
    c.assert_all_alive();
}

/// How many codes both applications claim at the same moment in
/// [`django_unique_field_claimed_on_two_nodes_at_once_converges`].
const CLAIMS: u32 = 60;

/// One application's `manage.py claim_codes` run: the entries it created, and those its own node refused
/// with an IntegrityError (the other node's entry with that code had already arrived).
#[derive(Debug)]
struct Claimed {
    node: usize,
    created: BTreeSet<i64>,
    failed: BTreeSet<i64>,
    /// How long its writes took.
    seconds: f64,
}

/// The `catalog_entry` rows of `node` whose code is one of the claimed ones: code → id.
fn claimed_codes(node: &Node) -> BTreeMap<String, i64> {
    let conn = node.open();
    let mut stmt = conn
        .prepare("SELECT code, id FROM catalog_entry WHERE code LIKE 'race-%'")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One journal entry of `catalog_entry` on a node.
#[derive(Debug)]
struct Lost {
    reason: String,
    row_key: serde_json::Value,
    lost_row: serde_json::Value,
    index_name: Option<String>,
    winner_key: Option<serde_json::Value>,
    lost_origin: i64,
    lost_seq: i64,
    winner_origin: i64,
    winner_seq: i64,
}

/// Every journal entry of `catalog_entry` on `node`, in the order they were written.
fn journal(node: &Node) -> Vec<Lost> {
    let conn = node.open();
    let mut stmt = conn
        .prepare(
            "SELECT reason, row_key, lost_row, index_name, winner_key, lost_origin, lost_seq, winner_origin, \
             winner_seq FROM __harmonylite__conflicts \
             WHERE tbl = 'catalog_entry' ORDER BY id",
        )
        .unwrap();
    let json = |s: Option<String>| s.map(|s| serde_json::from_str(&s).unwrap());
    stmt.query_map([], |r| {
        Ok(Lost {
            reason: r.get(0)?,
            row_key: json(r.get(1)?).unwrap_or_default(),
            lost_row: json(r.get(2)?).unwrap_or_default(),
            index_name: r.get(3)?,
            winner_key: json(r.get(4)?),
            lost_origin: r.get(5)?,
            lost_seq: r.get(6)?,
            winner_origin: r.get(7)?,
            winner_seq: r.get(8)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// `Entry.code` is `unique=True`. The applications on nodes 1 and 2 create [`CLAIMS`] entries each through the
/// ORM, started at the same moment, entry `first + k` with the code `race-k` (node 1 the ids 1000.., node 2 the
/// ids 2000..): every code is claimed twice, by rows of different primary keys. Node 1 claims `race-0` first,
/// node 2 `race-59` first: the claims in the middle meet within milliseconds, those at the ends are where a
/// node may already have the other's entry. A create refused on its own node with an IntegrityError (the
/// other node's entry had already arrived) is an application error as on a single SQLite, counted. What must
/// hold: the nodes converge, and on every node each claimed code is held by one created entry, the later of
/// the two in stream order; every created entry that is no longer there is in that node's
/// `__harmonylite__conflicts` exactly once (reason `unique`, the index of `code`, its row, and the key of the
/// entry that holds its code), and nothing else is; at least one such collision happened; no shard paused;
/// `-verify` finds the nodes identical.
#[test]
fn django_unique_field_claimed_on_two_nodes_at_once_converges() {
    let c = Cluster::start(Options::default());
    let django = Django::new("django", c.path());
    for i in 1..=3 {
        migrate(
            &django,
            &c,
            i,
            &["catalog"],
            &["catalog.0001_initial", "catalog.0002_entry_summary"],
        );
    }
    c.converged_all(T);
    // The unique index Django's `unique=True` made (for a column constraint, SQLite's automatic index).
    let index = c
        .node(1)
        .sql(
            "SELECT il.name FROM pragma_index_list('catalog_entry') il, pragma_index_info(il.name) ii \
             WHERE il.\"unique\" = 1 AND ii.name = 'code';",
        )
        .trim()
        .to_string();
    assert_eq!(index, "sqlite_autoindex_catalog_entry_1");

    // Both applications import Django and open their database, then wait for the start file.
    let start = c.path().join("claim.start");
    let count = CLAIMS.to_string();
    let mut apps: Vec<(usize, PathBuf, PathBuf, ChildGuard)> =
        [(1usize, "1000", "ascending"), (2, "2000", "descending")]
            .into_iter()
            .map(|(node, first, order)| {
                let ready = c.path().join(format!("claim-node{node}.ready"));
                let log = c.path().join(format!("claim-node{node}.log"));
                let name = format!("claimed on node {node}");
                let child = django.spawn(
                    c.node(node),
                    NEW,
                    &[
                        "claim_codes",
                        "--first",
                        first,
                        "--count",
                        &count,
                        "--name",
                        &name,
                        "--ready",
                        ready.to_str().unwrap(),
                        "--start",
                        start.to_str().unwrap(),
                        "--order",
                        order,
                    ],
                    &log,
                );
                (node, ready, log, child)
            })
            .collect();
    wait::eventually(MANAGE, "both applications ready to write", || {
        for (node, _, log, child) in &mut apps {
            if let Some(st) = child.exited() {
                panic!(
                    "claim_codes on node {node} exited ({st}) before the start:\n{}",
                    read_lossy(log)
                );
            }
        }
        apps.iter().all(|(_, ready, _, _)| ready.exists())
    });
    std::fs::write(&start, b"").unwrap();

    let mut claimed = Vec::new();
    for (node, _, log, mut child) in apps {
        let st = wait::poll(MANAGE, || child.exited()).unwrap_or_else(|| {
            panic!(
                "claim_codes on node {node} still running after {MANAGE:?}:\n{}",
                read_lossy(&log)
            )
        });
        let out = read_lossy(&log);
        assert!(
            st.success(),
            "claim_codes on node {node} exited {st}:\n{out}"
        );
        let result: serde_json::Value = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("claim_codes on node {node} printed no JSON:\n{out}"));
        assert_eq!(
            result["errors"],
            serde_json::json!([]),
            "claim_codes on node {node}: errors other than IntegrityError"
        );
        let ids = |k: &str| -> BTreeSet<i64> {
            result[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        };
        let one = Claimed {
            node,
            created: ids("created"),
            failed: ids("failed"),
            seconds: result["seconds"].as_f64().unwrap_or_default(),
        };
        assert_eq!(
            one.created.len() + one.failed.len(),
            CLAIMS as usize,
            "claim_codes on node {node}: {one:?}"
        );
        claimed.push(one);
    }
    let created: BTreeSet<i64> = claimed.iter().flat_map(|w| w.created.clone()).collect();
    // The code of entry `id`, and the other node's entry that claimed it.
    let code_of = |id: i64| format!("race-{}", id % 1000);
    let rival = |id: i64| if id < 2000 { id + 1000 } else { id - 1000 };
    // The node whose application created entry `id`.
    let node_of = |id: i64| if id < 2000 { 1 } else { 2 };
    for w in &claimed {
        // An entry refused on its own node: the rival's entry with that code was there already, so it was
        // created.
        for id in &w.failed {
            assert!(
                created.contains(&rival(*id)),
                "node {}: entry {id} was refused, but its rival {} was not created either",
                w.node,
                rival(*id)
            );
        }
    }
    let both = created
        .iter()
        .filter(|id| **id < 2000 && created.contains(&rival(**id)))
        .count();
    eprintln!(
        "claim_codes: node 1 created {} and was refused {} in {}s, node 2 created {} and was refused {} in {}s; \
         {both} codes created on both nodes",
        claimed[0].created.len(),
        claimed[0].failed.len(),
        claimed[0].seconds,
        claimed[1].created.len(),
        claimed[1].failed.len(),
        claimed[1].seconds
    );

    let tables = c.converged_all(T);
    eprintln!("converged: {tables:?}");
    let held = claimed_codes(c.node(1));
    // Each code is held by exactly one created entry; the other is gone.
    for k in 0..i64::from(CLAIMS) {
        let code = format!("race-{k}");
        let id = held
            .get(&code)
            .unwrap_or_else(|| panic!("no entry holds {code}: {held:?}"));
        assert!(
            created.contains(id) && code_of(*id) == code,
            "{code} is held by entry {id}, which no application created with it"
        );
    }
    let present: BTreeSet<i64> = held.values().copied().collect();
    let lost: BTreeSet<i64> = created.difference(&present).copied().collect();
    assert!(
        !lost.is_empty(),
        "no created entry lost its code ({both} codes created on both nodes): the writes did not collide, \
         the test proves nothing"
    );

    let mut differ = String::new();
    for i in 1..=3 {
        let n = c.node(i);
        assert_eq!(claimed_codes(n), held, "node {i}");
        let entries = journal(n);
        let mut journaled: BTreeMap<i64, usize> = BTreeMap::new();
        for e in &entries {
            let id = e.row_key[0].as_i64();
            let ok = e.reason == "unique"
                && e.row_key.as_array().map(Vec::len) == Some(1)
                && id.is_some_and(|id| {
                    e.lost_row["id"] == id
                        && e.lost_row["code"] == code_of(id)
                        && e.winner_key.as_ref().and_then(|w| w[0].as_i64())
                            == held.get(&code_of(id)).copied()
                })
                && e.index_name.as_deref() == Some(index.as_str());
            // Node 3 wrote neither entry: it applied both in stream order, the winner after the loser.
            let in_order = i != 3
                || id.is_some_and(|id| {
                    e.lost_origin == node_of(id)
                        && e.winner_origin == node_of(rival(id))
                        && 0 < e.lost_seq
                        && e.lost_seq < e.winner_seq
                });
            if !ok || !in_order {
                differ.push_str(&format!("node {i}: unexpected entry {e:?}\n"));
            }
            if let Some(id) = id {
                *journaled.entry(id).or_default() += 1;
            }
        }
        let once: BTreeSet<i64> = journaled.keys().copied().collect();
        let twice: Vec<_> = journaled.iter().filter(|(_, n)| **n > 1).collect();
        if once != lost || !twice.is_empty() {
            differ.push_str(&format!(
                "node {i}: journaled {journaled:?}; lost (created, no longer there): {lost:?}; \
                 not journaled: {:?}; journaled but not lost: {:?}\n",
                lost.difference(&once).collect::<Vec<_>>(),
                once.difference(&lost).collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "the conflict journals do not hold exactly the lost entries:\n{differ}\ntable: {held:?}\n{}",
        c.logs_tail()
    );
    eprintln!(
        "{} entries lost their code; each journaled once on every node",
        lost.len()
    );

    for n in &c.nodes {
        let paused: Vec<String> = n
            .log_lines_with(&["paused"])
            .into_iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        assert!(
            paused.is_empty(),
            "node {}: a shard paused:\n{}",
            n.id,
            paused.join("\n")
        );
        let unresolved = n.log_lines_with(&["could not be resolved row by row"]);
        assert!(
            unresolved.is_empty(),
            "node {}: collisions left to OR REPLACE (not journaled):\n{}",
            n.id,
            unresolved.join("\n")
        );
    }
    eprintln!("{}", c.assert_verified(3));
    c.assert_all_alive();
}

/// With `[ddl] enabled`, the way its users would run Django: every `migrate` on node 1 only (Django's and our
/// apps, then the release: `library.0002`, two table rebuilds with a database default that fills the new column,
/// and `catalog.0002`, an added column) while the application writes books through the ORM on node 2 with the
/// old code. Every node ends with node 1's schema and with `django_migrations` saying the migrations are applied
/// there (`migrate --check` on nodes 2 and 3 has nothing to do), the ORM writes the new columns on all three,
/// no application write fails, and `-verify` finds the nodes identical.
#[test]
fn django_migrated_on_one_node_with_ddl_enabled_reaches_every_node() {
    let mut c = Cluster::new(Options {
        extra_toml: "[ddl]\nenabled = true\n".into(),
        ..Options::default()
    });
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    let django = Django::new("django", c.path());

    first_deploy(&django, &c, 1);
    migrate(
        &django,
        &c,
        1,
        &["catalog", "0001"],
        &["catalog.0001_initial"],
    );
    c.same_schema(T, "the first deploy's schema on every node");
    let (_, records) = c.converged("django_migrations", T);
    eprintln!("django_migrations: {records} rows on every node");
    for i in [2, 3] {
        manage(
            &django,
            &c,
            i,
            OLD,
            &["migrate", "library", "0001", "--check"],
        );
        manage(
            &django,
            &c,
            i,
            OLD,
            &["migrate", "catalog", "0001", "--check"],
        );
    }
    manage(&django, &c, 2, OLD, &["seed_library"]);
    c.converged("library_book", T);

    // The release, migrated on node 1 while node 2's application (old code) writes.
    let mut writer = AppWriter::start(&django, &c, 2, OLD, "w2", 2001, false);
    writer.wait_ops(0, 30);
    migrate(
        &django,
        &c,
        1,
        &[],
        &[
            "library.0002_book_edition_alter_book_title",
            "catalog.0002_entry_summary",
        ],
    );
    let schema = c.same_schema(T, "the release's schema on every node");
    assert!(
        schema.contains("\"edition\" integer unsigned DEFAULT 1 NOT NULL CHECK"),
        "{schema}"
    );
    let from = writer.ops_this_run();
    writer.wait_ops(from, 30);
    let (st, log) = writer.stop();
    assert!(st.success(), "writer w2 (old code) exited {st}:\n{log}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path().join("w2.json")).unwrap()).unwrap();
    assert_eq!(state["errors"], 0, "application writes failed:\n{log}");

    c.converged("django_migrations", T);
    for i in 1..=3 {
        assert_has_column(c.node(i), "library_book", EDITION);
        assert_has_column(c.node(i), "catalog_entry", "summary");
        // Nothing left to apply: node 1's migrations are recorded on every node.
        manage(&django, &c, i, NEW, &["migrate", "--check"]);
    }
    let ran = django.run(c.node(3), NEW, &["migrate", "--no-input"], MANAGE);
    assert!(
        ran.success() && ran.output.contains("No migrations to apply."),
        "{}",
        ran.output
    );

    // The new code writes the new columns on every node.
    for i in 1..=3u32 {
        let id = i.to_string();
        let summary = format!("written on node {i}");
        manage(
            &django,
            &c,
            i as usize,
            NEW,
            &[
                "put_entry",
                "--id",
                &id,
                "--name",
                "new code",
                "--summary",
                &summary,
            ],
        );
    }
    c.converged("catalog_entry", T);
    assert_eq!(
        c.node(3)
            .sql("SELECT id, summary FROM catalog_entry ORDER BY id;"),
        "1|written on node 1\n2|written on node 2\n3|written on node 3\n"
    );
    let tables = c.converged_all(T);
    assert!(tables.contains_key("django_migrations"), "{tables:?}");
    eprintln!("{}", c.assert_verified(2));
    c.assert_all_alive();
}

/// `[ddl] enabled` turned on for a cluster whose nodes ran their migrations themselves: a node whose records
/// of applied migrations are those of the nodes already replicating schema changes (the same migrations,
/// applied at other times) starts and the records converge; a node that ran a migration the others did not is
/// refused, told which table differs and from which node, and starts once it holds the same migrations.
#[test]
fn turning_ddl_on_takes_equal_migration_records_and_refuses_differing_ones() {
    let mut c = Cluster::new(Options::default());
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    let django = Django::new("django", c.path());
    for i in 1..=3 {
        migrate(
            &django,
            &c,
            i,
            &["catalog", "0001"],
            &["catalog.0001_initial"],
        );
    }
    // Only node 3 runs the release's migration (each node's records are its own with `[ddl]` off).
    migrate(
        &django,
        &c,
        3,
        &["catalog"],
        &["catalog.0002_entry_summary"],
    );

    let on = "[ddl]\nenabled = true\n";
    c.node_mut(1).add_toml(on);
    c.node_mut(1).restart(T);
    c.eventually(T, "node 1's records in the schema registry", || {
        let o = output_retrying(c.node(2).command().arg("-schema-status-cluster"));
        output_text(&o).contains("node 1: hash ")
            && output_text(&o)
                .lines()
                .any(|l| l.contains("node 1: ") && l.contains("django_migrations: 1 record(s)"))
    });
    c.node_mut(2).add_toml(on);
    c.node_mut(2).restart(T);

    // Node 3 holds a record the others do not: refused, and told why.
    c.node_mut(3).stop();
    c.node_mut(3).add_toml(on);
    c.node_mut(3).start();
    let code = c.node_mut(3).wait_exit(T);
    assert_ne!(code, Some(0), "node 3 started with differing records");
    let log = c.node(3).log_tail(20);
    assert!(
        log.contains("cannot turn on [ddl] enabled")
            && log.contains("django_migrations: 2 row(s) here, 1 on node 1"),
        "{log}"
    );

    // Node 3 back at the others' migrations (Django unapplies the release there): it starts.
    let ran = django.run(
        c.node(3),
        OLD,
        &["migrate", "--no-input", "catalog", "0001"],
        MANAGE,
    );
    assert!(
        ran.success()
            && ran
                .output
                .contains("Unapplying catalog.0002_entry_summary... OK"),
        "{}",
        ran.output
    );
    c.node_mut(3).start_and_wait(T);
    c.converged("django_migrations", T);
    c.same_schema(T, "one schema on every node");
    // From now on a migration runs once.
    migrate(
        &django,
        &c,
        2,
        &["catalog"],
        &["catalog.0002_entry_summary"],
    );
    c.same_schema(T, "the release's schema on every node");
    c.converged("django_migrations", T);
    for i in 1..=3 {
        manage(&django, &c, i, NEW, &["migrate", "catalog", "--check"]);
    }
    eprintln!("{}", c.assert_verified(1));
    c.assert_all_alive();
}
