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

mod support;

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
    let ran = django.run(c.node(node), NEW, &full, MANAGE);
    assert!(
        ran.success(),
        "manage.py {full:?} on node {node} exited {:?}:\n{}\n{}",
        ran.code,
        ran.output,
        c.logs_tail()
    );
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
        migrate(
            &django,
            &c,
            i,
            &["auth"],
            &["contenttypes.0001_initial", "auth.0001_initial"],
        );
        migrate(
            &django,
            &c,
            i,
            &["library", "0001"],
            &["library.0001_initial"],
        );
        migrate(&django, &c, i, &["shelf"], &["shelf.0001_initial"]);
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
    let o = output_retrying(c.node(2).command().args(["-verify", "-timeout", "30"]));
    assert_eq!(
        o.status.code(),
        Some(0),
        "-verify:\n{}\n{}",
        output_text(&o),
        c.logs_tail()
    );
    eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
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
