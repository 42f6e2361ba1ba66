//! The applier in-process: encoded messages fed over its shard channel, as a consumer would, against a SQLite
//! database in a temporary directory. No nats-server: the JetStream context is never asked (no backfill here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use super::{Applier, Incoming, ShardInput};
use crate::capture::{self, CurrentCapture};
use crate::conflict::InFlight;
use crate::counters::{Counters, Total};
use crate::wire::{self, Message, Row, TableChanges, Value};

/// This node's id; messages from [`OTHER`] are applied, messages from [`ME`] are own echoes.
const ME: u64 = 2;
const OTHER: u64 = 7;
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    dir: tempfile::TempDir,
    input: ShardInput,
    counters: Arc<Counters>,
    in_flight: Arc<InFlight>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    stream: String,
    capture: CurrentCapture,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("node.db");
        let mut cfg = crate::config::load(None, &Default::default())
            .expect("defaults")
            .0;
        cfg.node_id = ME;
        cfg.db_path = db.clone();
        let mut conn = Connection::open(&db).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL CHECK (title <> 'poison'));
             CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);",
        )
        .expect("schema");
        let cap = capture::install(&mut conn, &[], &[]).expect("capture");
        // A client that never reaches a server: the applier asks JetStream only for backfill windows.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("client");
        let counters = Arc::new(Counters::default());
        let in_flight = Arc::new(InFlight::new(true, 0));
        let stream = cfg.stream_name(1);
        let capture = CurrentCapture::new(cap);
        let (applier, mut inputs) = Applier::new(
            Arc::new(cfg),
            async_nats::jetstream::new(client),
            capture.clone(),
            in_flight.clone(),
            counters.clone(),
            conn,
        )
        .expect("applier");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(applier.run(cancel.clone()));
        Harness {
            dir,
            input: inputs.remove(0),
            counters,
            in_flight,
            cancel,
            task,
            stream,
            capture,
        }
    }

    /// Deliver `msg` at stream sequence `seq`, as the shard's consumer does.
    async fn deliver(&self, seq: u64, msg: &Message) {
        let payload = bytes::Bytes::from(wire::encode(msg, false));
        self.deliver_raw(seq, payload).await;
    }

    async fn deliver_raw(&self, seq: u64, payload: bytes::Bytes) {
        self.input
            .tx
            .send(Incoming {
                seq,
                payload,
                _room: None,
            })
            .await
            .expect("applier gone");
        self.input.wake.notify_one();
    }

    fn applied(&self) -> u64 {
        self.counters.shard_views().first().map_or(0, |v| v.applied)
    }

    async fn wait_applied(&self, seq: u64) {
        let deadline = Instant::now() + WAIT;
        while self.applied() < seq {
            assert!(
                Instant::now() < deadline,
                "position {seq} not handled within {WAIT:?} (at {})",
                self.applied()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn read(&self) -> Connection {
        Connection::open(self.dir.path().join("node.db")).expect("read connection")
    }

    /// The titles of Books and the recorded applied position, read in one transaction.
    fn snapshot(&self) -> (Vec<(i64, String)>, u64) {
        let mut conn = self.read();
        let tx = conn.transaction().expect("read transaction");
        let books = {
            let mut stmt = tx
                .prepare("SELECT id, title FROM Books ORDER BY id")
                .expect("prepare");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows")
        };
        let seq: u64 = tx
            .query_row(
                &format!("SELECT seq FROM {} WHERE stream = ?1", capture::APPLIED),
                [&self.stream],
                |r| r.get::<_, i64>(0),
            )
            .map(|s| s as u64)
            .unwrap_or(0);
        (books, seq)
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("applier task");
    }
}

fn book(id: i64, title: &str) -> Row {
    Row::Upsert(vec![
        Value::Integer(id),
        Value::Text(title.as_bytes().to_vec()),
    ])
}

fn user(origin: u64, unit: &str, id: i64, email: &str) -> Message {
    let mut m = message(origin, unit, 1, true, Vec::new());
    m.tables = vec![TableChanges {
        table: "users".into(),
        columns: vec!["id".into(), "email".into()],
        key: vec!["id".into()],
        rows: vec![Row::Upsert(vec![
            Value::Integer(id),
            Value::Text(email.as_bytes().to_vec()),
        ])],
    }];
    m
}

fn message(origin: u64, unit: &str, part: u32, last: bool, rows: Vec<Row>) -> Message {
    Message {
        origin,
        unit: unit.to_string(),
        part,
        last,
        schema: 0,
        tables: vec![TableChanges {
            table: "Books".into(),
            columns: vec!["id".into(), "title".into()],
            key: vec!["id".into()],
            rows,
        }],
        seen: None,
        at_ms: 0,
        conditional: Vec::new(),
        own_upto: 0,
        piece: None,
        ddl: None,
        replayed: Vec::new(),
    }
}

/// A unit of one message from `origin` changing `table` (its `columns`, keyed by `id`).
fn changes(origin: u64, unit: &str, table: &str, columns: &[&str], rows: Vec<Row>) -> Message {
    let mut m = message(origin, unit, 1, true, Vec::new());
    m.tables = vec![TableChanges {
        table: table.into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        key: vec!["id".into()],
        rows,
    }];
    m
}

fn text(s: &str) -> Value {
    Value::Text(s.as_bytes().to_vec())
}

impl Harness {
    fn quarantined(&self) -> i64 {
        self.read()
            .query_row(
                &format!("SELECT count(*) FROM {}", capture::QUARANTINE),
                [],
                |r| r.get(0),
            )
            .expect("quarantine")
    }

    /// Poll `done` until it holds; panics with `what` after [`WAIT`].
    async fn until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} not within {WAIT:?}: {:?}, recorded position {}",
                self.counters.shard_views().first(),
                self.snapshot().1
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The shard's counters once `taken` messages were taken (applied, skipped or held), its reported
    /// position is `applied` and it holds changes or not (the counters move just after the commit).
    async fn settled(&self, taken: u64, applied: u64, holding: bool) -> crate::counters::ShardView {
        self.until("the shard settled", || {
            let v = self.counters.shard_views().remove(0);
            self.counters.totals().get(Total::AppliedMessages) == taken
                && v.applied == applied
                && v.schema_paused == holding
                && v.paused.is_some() == holding
        })
        .await;
        self.counters.shard_views().remove(0)
    }

    /// Create what `sql` says, as an application migrating this node would, and put the new capture in
    /// force as the node does when it finds the schema changed.
    fn migrate(&self, sql: &str) {
        let mut conn = self.read();
        conn.execute_batch(sql).expect("migration");
        assert!(
            self.capture.refresh(&mut conn, &[], &[]).expect("capture"),
            "capture re-installed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_change_is_written_with_its_position_in_one_transaction() {
    let h = Harness::start().await;
    h.deliver(1, &message(OTHER, "u1", 1, true, vec![book(1, "Dune")]))
        .await;
    h.wait_applied(1).await;
    // Flushed with the transaction that wrote the row.
    let deadline = Instant::now() + WAIT;
    loop {
        let (books, seq) = h.snapshot();
        if seq == 1 {
            assert_eq!(books, vec![(1, "Dune".to_string())]);
            break;
        }
        assert!(
            books.is_empty(),
            "row written without its position: {books:?}"
        );
        assert!(Instant::now() < deadline, "position never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.counters.totals().get(Total::AppliedRows), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_of_two_parts_is_applied_whole_or_not_at_all() {
    let h = Harness::start().await;
    h.deliver(
        1,
        &message(OTHER, "u2", 1, false, vec![book(1, "first part")]),
    )
    .await;
    // Until its last part arrives, nothing of the unit is written.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        assert!(h.snapshot().0.is_empty(), "a part applied alone");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.deliver(
        2,
        &message(OTHER, "u2", 2, true, vec![book(2, "second part")]),
    )
    .await;
    h.wait_applied(2).await;
    let (books, _) = h.snapshot();
    assert_eq!(
        books,
        vec![
            (1, "first part".to_string()),
            (2, "second part".to_string())
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_echo_is_skipped_and_its_position_still_handled() {
    let h = Harness::start().await;
    // This node published its change of book 1 (change-log id 1) and JetStream stored it at sequence 1; the
    // database already holds the value.
    let echo = message(ME, "mine", 1, true, vec![book(1, "echo")]);
    let key = super::sql::row_keys(&echo).remove(0);
    h.in_flight.mark_sent(&[(key.clone(), 1)], 1, 0);
    h.in_flight.mark_acked([(&key, 1, Some(1))]);
    h.deliver(1, &echo).await;
    h.wait_applied(1).await;
    assert!(h.snapshot().0.is_empty(), "an own echo was written");
    assert_eq!(h.counters.totals().get(Total::SkippedRows), 1);
    assert_eq!(h.counters.totals().get(Total::AppliedRows), 0);
    // The position of a skipped message is written with the next transaction that applies something.
    h.deliver(2, &message(OTHER, "u3", 1, true, vec![book(2, "after")]))
        .await;
    h.wait_applied(2).await;
    let deadline = Instant::now() + WAIT;
    while h.snapshot().1 < 2 {
        assert!(Instant::now() < deadline, "position 2 never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.snapshot().0, vec![(2, "after".to_string())]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_quarantined_with_its_unit_and_the_shard_goes_on() {
    let h = Harness::start().await;
    // Undecodable bytes, then a unit whose row fails the table's CHECK, then a good one.
    h.deliver_raw(1, bytes::Bytes::from_static(b"not a message"))
        .await;
    h.deliver(2, &message(OTHER, "bad", 1, true, vec![book(5, "poison")]))
        .await;
    h.deliver(3, &message(OTHER, "good", 1, true, vec![book(6, "fine")]))
        .await;
    h.wait_applied(3).await;
    let (books, _) = h.snapshot();
    assert_eq!(books, vec![(6, "fine".to_string())]);
    let quarantined: i64 = h
        .read()
        .query_row(
            &format!("SELECT count(*) FROM {}", capture::QUARANTINE),
            [],
            |r| r.get(0),
        )
        .expect("quarantine");
    assert_eq!(quarantined, 2, "both poison messages kept");
    assert_eq!(h.counters.totals().get(Total::Quarantined), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_echo_takes_a_unique_value_from_a_row_applied_while_our_newer_write_had_left_it() {
    let h = Harness::start().await;
    // This node wrote user 1 as a@x (change-log id 1, stored at sequence 2), then moved it to b@x (id 2, not
    // published yet).
    h.read()
        .execute_batch("INSERT INTO users VALUES (1, 'b@x');")
        .expect("local write");
    let echo = user(ME, "mine", 1, "a@x");
    let key = super::sql::row_keys(&echo).remove(0);
    h.in_flight.mark_sent(&[(key.clone(), 1)], 1, 0);
    h.in_flight.mark_acked([(&key, 1, Some(2))]);
    h.in_flight.record_local([(key, 2)], 2);
    // Another node's user 9 takes a@x at sequence 1: free here, so it is written.
    h.deliver(1, &user(OTHER, "theirs", 9, "a@x")).await;
    h.wait_applied(1).await;
    // Our a@x at sequence 2 comes back: skipped (our newer b@x stays), but in stream order it took a@x from
    // user 9, as every other node does when it applies sequence 2.
    h.deliver(2, &echo).await;
    h.wait_applied(2).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let rows: Vec<(i64, String)> = {
            let conn = h.read();
            let mut stmt = conn
                .prepare("SELECT id, email FROM users ORDER BY id")
                .expect("prepare");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        if rows == vec![(1, "b@x".to_string())] {
            break;
        }
        assert!(Instant::now() < deadline, "user 9 kept a@x: {rows:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let journaled: i64 = h
        .read()
        .query_row(
            &format!(
                "SELECT count(*) FROM {} WHERE row_key = '[9]' AND reason = 'unique'",
                capture::CONFLICTS
            ),
            [],
            |r| r.get(0),
        )
        .expect("journal");
    assert_eq!(journaled, 1, "the displaced row is in the conflict journal");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_a_table_this_node_lacks_is_held_until_the_table_exists() {
    let h = Harness::start().await;
    let author = |unit, name| {
        changes(
            OTHER,
            unit,
            "Authors",
            &["id", "name"],
            vec![Row::Upsert(vec![Value::Integer(1), text(name)])],
        )
    };
    h.deliver(1, &message(OTHER, "u1", 1, true, vec![book(1, "before")]))
        .await;
    h.deliver(2, &author("u2", "Herbert")).await;
    h.deliver(3, &message(OTHER, "u3", 1, true, vec![book(2, "after")]))
        .await;
    // A later change to the held table waits behind it, in order.
    h.deliver(4, &author("u4", "Frank Herbert")).await;
    // The shard goes on past the held changes; its position stays before the first of them.
    let view = h.settled(4, 1, true).await;
    let (books, seq) = h.snapshot();
    assert_eq!(
        books,
        vec![(1, "before".to_string()), (2, "after".to_string())]
    );
    assert_eq!(seq, 1, "recorded position past a held change");
    assert!(
        view.paused
            .as_deref()
            .is_some_and(|p| p.contains("Authors")),
        "pause reason: {:?}",
        view.paused
    );
    assert_eq!(h.counters.totals().get(Total::SchemaPauses), 1);
    assert_eq!(h.quarantined(), 0);

    h.migrate("CREATE TABLE Authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);");
    h.settled(4, 4, false).await;
    h.until("position 4 recorded", || h.snapshot().1 == 4).await;
    let name: String = h
        .read()
        .query_row("SELECT name FROM Authors WHERE id = 1", [], |r| r.get(0))
        .expect("author applied");
    assert_eq!(
        name, "Frank Herbert",
        "held changes applied in stream order"
    );
    assert_eq!(h.quarantined(), 0);
    assert_eq!(h.counters.totals().get(Total::Quarantined), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_with_a_column_this_node_lacks_is_held_until_the_column_exists() {
    let h = Harness::start().await;
    h.deliver(
        1,
        &changes(
            OTHER,
            "u1",
            "Books",
            &["id", "title", "year"],
            vec![Row::Upsert(vec![
                Value::Integer(1),
                text("Dune"),
                Value::Integer(1965),
            ])],
        ),
    )
    .await;
    h.deliver(2, &user(OTHER, "u2", 1, "a@x")).await;
    // Another table's change applies; the position stays before the held one.
    h.settled(2, 0, true).await;
    let users: i64 = h
        .read()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .expect("users");
    assert_eq!(users, 1);
    assert_eq!(h.snapshot(), (Vec::new(), 0));

    h.migrate("ALTER TABLE Books ADD COLUMN year INTEGER;");
    h.settled(2, 2, false).await;
    h.until("position 2 recorded", || h.snapshot().1 == 2).await;
    let row: (String, i64) = h
        .read()
        .query_row("SELECT title, year FROM Books WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("book applied");
    assert_eq!(row, ("Dune".to_string(), 1965));
    assert_eq!(h.quarantined(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_echo_of_a_table_without_unique_index_is_skipped_without_the_write_lock() {
    let h = Harness::start().await;
    // Another node's change: the applier learns that Books has no unique index but its key.
    h.deliver(1, &message(OTHER, "u1", 1, true, vec![book(1, "theirs")]))
        .await;
    h.wait_applied(1).await;
    // Our change of book 2 (change-log id 1) was stored at sequence 2; the database holds a newer value.
    h.read()
        .execute_batch("INSERT INTO Books VALUES (2, 'newer');")
        .expect("local write");
    let echo = message(ME, "mine", 1, true, vec![book(2, "echo")]);
    let key = super::sql::row_keys(&echo).remove(0);
    h.in_flight.mark_sent(&[(key.clone(), 1)], 1, 0);
    h.in_flight.mark_acked([(&key, 1, Some(2))]);
    // An application holds the write lock while the echo comes back.
    let app = h.read();
    app.execute_batch("BEGIN IMMEDIATE;").expect("write lock");
    h.deliver(2, &echo).await;
    // Shorter than the applier connection's busy timeout (5 s): an apply transaction could not have begun.
    let deadline = Instant::now() + Duration::from_secs(3);
    while h.applied() < 2 {
        assert!(
            Instant::now() < deadline,
            "the echo waited for the write lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.counters.totals().get(Total::SkippedRows), 1);
    assert_eq!(h.counters.totals().get(Total::AppliedRows), 1);
    app.execute_batch("COMMIT;").expect("release");
    let (books, seq) = h.snapshot();
    assert_eq!(
        books,
        vec![(1, "theirs".to_string()), (2, "newer".to_string())]
    );
    assert_eq!(
        seq, 1,
        "a skipped position is written with the next transaction"
    );
    h.stop().await;
}

/// Rows new here and rows already here, mixed in one message, are all written: after a new row the next is
/// tried as an insert first, and a row already there is then updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_existing_rows_mixed_in_one_message_are_all_written() {
    let h = Harness::start().await;
    h.deliver(
        1,
        &message(OTHER, "u1", 1, true, vec![book(1, "a"), book(2, "b")]),
    )
    .await;
    h.wait_applied(1).await;
    let rows = vec![
        book(3, "c"),
        book(1, "A"),
        book(4, "d"),
        book(5, "e"),
        book(2, "B"),
        book(2, "B2"),
    ];
    h.deliver(2, &message(OTHER, "u2", 1, true, rows)).await;
    h.wait_applied(2).await;
    let books: Vec<(i64, String)> = [(1, "A"), (2, "B2"), (3, "c"), (4, "d"), (5, "e")]
        .iter()
        .map(|(i, t)| (*i, t.to_string()))
        .collect();
    assert_eq!(h.snapshot(), (books, 2));
    assert_eq!(h.counters.totals().get(Total::AppliedRows), 8);
    h.stop().await;
}

/// A new row colliding on a unique value is a collision whether it comes first in its message or after a
/// new row (tried as an insert first): the stream's older row loses to it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_collision_after_a_new_row_is_handled_as_when_it_comes_first() {
    let mut outcomes = Vec::new();
    for collision_first in [true, false] {
        let h = Harness::start().await;
        h.deliver(1, &user(OTHER, "u1", 1, "x@example.org")).await;
        h.wait_applied(1).await;
        let new = Row::Upsert(vec![Value::Integer(2), text("y@example.org")]);
        let colliding = Row::Upsert(vec![Value::Integer(3), text("x@example.org")]);
        let rows = if collision_first {
            vec![colliding, new]
        } else {
            vec![new, colliding]
        };
        let m = changes(OTHER, "u2", "users", &["id", "email"], rows);
        h.deliver(2, &m).await;
        h.wait_applied(2).await;
        let users: Vec<(i64, String)> = h
            .read()
            .prepare("SELECT id, email FROM users ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        outcomes.push((users, h.counters.totals().get(Total::Conflicts)));
        h.stop().await;
    }
    assert_eq!(
        outcomes[0], outcomes[1],
        "collision first, then after a new row"
    );
    let (users, conflicts) = &outcomes[0];
    assert_eq!(
        users,
        &vec![
            (2, "y@example.org".to_string()),
            (3, "x@example.org".to_string())
        ]
    );
    assert!(*conflicts >= 1, "{outcomes:?}");
}
