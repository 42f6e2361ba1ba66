//! The publisher in-process, against one real nats-server with JetStream started by each test (a free loopback
//! port, its store in a temporary directory, killed by pid when the test ends, also on failure) and a SQLite
//! database in a temporary directory written by the test. What arrives in each shard's stream is read back and
//! decoded: how a local transaction is cut into a unit, which shard's stream each row reaches, that a retried
//! or replayed pass is stored once, and when `published_upto` moves.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use super::state::PublishState;
use super::{Publisher, publish_unit};
use crate::capture::{self, CurrentCapture};
use crate::config::Config;
use crate::conflict::InFlight;
use crate::counters::{Counters, Total};
use crate::wire::{self, Message, Row, Value};

/// This node's id.
const ME: u64 = 3;
const WAIT: Duration = Duration::from_secs(10);

/// One nats-server with JetStream, killed (by its pid) and its store removed when dropped.
struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let bin = crate::nats::extract::server_binary().expect("nats-server binary");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = dir.path().join("nats-server.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.path().join("js").display()
            ),
        )
        .expect("write the server's config");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let mut server = Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        };
        // Ready once it greets a client.
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("nats-server exited ({status}):\n{}", server.log());
            }
            if greets(port) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not ready:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL to this child's pid, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn greets(port: u16) -> bool {
    let Ok(s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO ")
}

/// A message as stored in a stream.
struct Stored {
    seq: u64,
    msg_id: Option<String>,
    msg: Message,
}

struct Harness {
    // Dropped first: the server, then the database's directory.
    _server: Server,
    _dir: tempfile::TempDir,
    cfg: Arc<Config>,
    client: async_nats::Client,
    js: jetstream::Context,
    capture: CurrentCapture,
    counters: Arc<Counters>,
}

impl Harness {
    /// A database with tables `Books` and `Authors` under capture, `shards` shards of at most `max_rows` rows
    /// per message, and a client of a fresh server (its streams not created yet).
    async fn start(shards: u32, max_rows: u32) -> Harness {
        let server = tokio::task::block_in_place(Server::start);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = crate::config::load(None, &Default::default())
            .expect("defaults")
            .0;
        cfg.node_id = ME;
        cfg.db_path = dir.path().join("node.db");
        cfg.seq_map_path = dir.path().join("publish-state");
        cfg.scan_max_changes = nonzero(max_rows);
        cfg.replication_log.shards = nonzero(shards);
        let mut conn = Connection::open(&cfg.db_path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
             CREATE TABLE Authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
        )
        .expect("schema");
        let cap = capture::install(&mut conn, &[], &[]).expect("capture");
        let client = async_nats::connect(&server.url).await.expect("connect");
        let js = crate::nats::jetstream_context(&client, "");
        Harness {
            _server: server,
            _dir: dir,
            cfg: Arc::new(cfg),
            client,
            js,
            capture: CurrentCapture::new(cap),
            counters: Arc::new(Counters::default()),
        }
    }

    /// One stream per shard, created as the node creates them.
    async fn create_streams(&self) {
        crate::node::streams::ensure(&self.js, &self.cfg, 1, Duration::from_secs(10))
            .await
            .expect("create streams");
    }

    /// A publisher on its own connection, from the state file as it is.
    fn publisher(&self) -> Publisher {
        let state = self.state();
        self.publisher_from(state)
    }

    fn publisher_from(&self, state: PublishState) -> Publisher {
        Publisher::new(
            self.cfg.clone(),
            self.conn(),
            state,
            self.capture.clone(),
            Arc::new(InFlight::new(true, 0)),
            self.counters.clone(),
            self.client.clone(),
        )
        .expect("publisher")
    }

    /// The state file, opened and locked. A publisher just dropped may still seem to hold its lock for a moment:
    /// a child process spawned meanwhile (another test's server) holds a copy of the lock's descriptor until
    /// it executes.
    fn state(&self) -> PublishState {
        let deadline = Instant::now() + WAIT;
        loop {
            match PublishState::open(&self.cfg.seq_map_path, ME, self.capture.get().incarnation) {
                Ok(state) => return state,
                Err(super::state::StateError::Locked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("state file: {e}"),
            }
        }
    }

    fn conn(&self) -> Connection {
        Connection::open(&self.cfg.db_path).expect("connection")
    }

    /// Write `rows` (table, id) in one transaction.
    fn write(&self, rows: &[(&str, i64)]) {
        let mut conn = self.conn();
        let tx = conn.transaction().expect("transaction");
        for (table, id) in rows {
            tx.execute(
                &format!("INSERT INTO {table} VALUES (?1, ?2)"),
                rusqlite::params![id, format!("{table} {id}")],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }

    fn max_log_id(&self) -> i64 {
        capture::max_log_id(&self.conn()).expect("change log")
    }

    /// Every message `shard`'s stream holds, in order.
    async fn stored(&self, shard: u32) -> Vec<Stored> {
        let mut s = self
            .js
            .get_stream(self.cfg.stream_name(shard))
            .await
            .expect("stream");
        let st = s.info().await.expect("stream info").state.clone();
        let mut out = Vec::new();
        if st.messages == 0 {
            return out;
        }
        for seq in st.first_sequence..=st.last_sequence {
            let m = s.get_raw_message(seq).await.expect("stored message");
            out.push(Stored {
                seq,
                msg_id: m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string()),
                msg: wire::decode(&m.payload).expect("decode"),
            });
        }
        assert_eq!(out.len() as u64, st.messages, "a gap in the stream");
        out
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).expect("non-zero")
}

/// The (table, id) of every row a message carries, with its title or name.
fn rows_of(msg: &Message) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for t in &msg.tables {
        assert_eq!(
            t.columns.len(),
            2,
            "columns of {}: {:?}",
            t.table,
            t.columns
        );
        let id_at = t.columns.iter().position(|c| c == "id").expect("id column");
        for r in &t.rows {
            let Row::Upsert(values) = r else {
                panic!("a delete where only inserts were made: {r:?}");
            };
            let Value::Integer(id) = values[id_at] else {
                panic!("id not an integer: {values:?}");
            };
            let Value::Text(text) = &values[1 - id_at] else {
                panic!("text not a text: {values:?}");
            };
            out.push((
                t.table.clone(),
                id,
                String::from_utf8(text.clone()).expect("utf-8"),
            ));
        }
    }
    out
}

/// The ids of `rows`, sorted; panics on a row carried twice.
fn ids_once(rows: impl IntoIterator<Item = (String, i64, String)>) -> Vec<i64> {
    let mut seen = BTreeSet::new();
    for (table, id, _) in rows {
        assert!(seen.insert(id), "row {table} {id} carried twice");
    }
    seen.into_iter().collect()
}

/// The state file's (published_upto, inflight_end).
fn state_file(path: &Path) -> (i64, i64) {
    let text = std::fs::read_to_string(path).expect("state file");
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 5, "state file: {text:?}");
    (
        f[3].parse().expect("published_upto"),
        f[4].parse().expect("inflight_end"),
    )
}

/// Publish everything the change log holds.
async fn drain(p: &mut Publisher) {
    let cancel = CancellationToken::new();
    let drained = tokio::time::timeout(WAIT, p.drain(&cancel))
        .await
        .expect("drained in time");
    assert!(drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_transaction_is_one_message_or_one_atomic_batch() {
    let h = Harness::start(1, 10).await;
    h.create_streams().await;
    let mut p = h.publisher();

    // Five rows fit one message: a unit of one part.
    h.write(&(1..=5).map(|i| ("Books", i)).collect::<Vec<_>>());
    drain(&mut p).await;
    let stored = h.stored(1).await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0].msg;
    assert_eq!((m.origin, m.part, m.last), (ME, 1, true));
    assert_eq!(stored[0].msg_id.as_deref(), Some(m.unit.as_str()));
    assert_eq!(
        wire::unit_pass(&m.unit),
        Some((h.capture.get().incarnation, 5))
    );
    assert_eq!(ids_once(rows_of(m)), (1..=5).collect::<Vec<_>>());

    // 35 rows, one of them changed twice, in one transaction: four messages of at most 10 rows, one batch.
    {
        let mut conn = h.conn();
        let tx = conn.transaction().expect("transaction");
        for id in 100..135 {
            tx.execute("INSERT INTO Books VALUES (?1, 'first')", [id])
                .expect("insert");
        }
        tx.execute("UPDATE Books SET title = 'second' WHERE id = 100", [])
            .expect("update");
        tx.commit().expect("commit");
    }
    assert_eq!(h.max_log_id(), 5 + 36);
    drain(&mut p).await;
    let stored = h.stored(1).await;
    assert_eq!(stored.len(), 1 + 4, "one message per 10 rows");
    let batch = &stored[1..];
    let unit = &batch[0].msg.unit;
    assert_ne!(unit, &stored[0].msg.unit, "a new unit");
    assert_eq!(
        wire::unit_pass(unit),
        Some((h.capture.get().incarnation, 41))
    );
    for (i, s) in batch.iter().enumerate() {
        assert_eq!(&s.msg.unit, unit, "every part names the unit");
        assert_eq!(s.msg.part, i as u32 + 1);
        assert_eq!(s.msg.last, i == 3, "only the fourth part ends the unit");
        assert_eq!(s.seq, stored[0].seq + 1 + i as u64, "stored together");
    }
    // The batch's commit carries the unit's message id.
    assert_eq!(batch[3].msg_id.as_deref(), Some(unit.as_str()));
    let counts: Vec<usize> = batch.iter().map(|s| rows_of(&s.msg).len()).collect();
    assert_eq!(counts, vec![10, 10, 10, 5]);
    let rows: Vec<_> = batch.iter().flat_map(|s| rows_of(&s.msg)).collect();
    let titles: BTreeMap<i64, String> = rows.iter().map(|(_, id, t)| (*id, t.clone())).collect();
    assert_eq!(ids_once(rows), (100..135).collect::<Vec<_>>());
    assert_eq!(titles[&100], "second", "a row's values as committed");
    assert_eq!(titles[&101], "first");
    assert_eq!(p.published_upto(), 41);
    assert_eq!(h.counters.totals().get(Total::PublishedMessages), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_different_shards_arrive_in_their_shards_streams() {
    const SHARDS: u32 = 3;
    let h = Harness::start(SHARDS, 512).await;
    h.create_streams().await;
    let written: Vec<(&str, i64)> = ["Books", "Authors"]
        .into_iter()
        .flat_map(|t| (1..=6).map(move |id| (t, id)))
        .collect();
    // Where each row belongs: by its table and key.
    let mut expected: BTreeMap<u32, BTreeSet<(String, i64)>> = BTreeMap::new();
    for (table, id) in &written {
        let shard = wire::shard_of(table, &wire::key_bytes(&[Value::Integer(*id)]), SHARDS);
        expected
            .entry(shard)
            .or_default()
            .insert((table.to_string(), *id));
    }
    assert_eq!(
        expected.len(),
        SHARDS as usize,
        "the rows reach every shard"
    );
    h.write(&written);
    let mut p = h.publisher();
    drain(&mut p).await;
    let end = h.max_log_id();
    let mut ids = BTreeSet::new();
    for shard in 1..=SHARDS {
        let stored = h.stored(shard).await;
        assert_eq!(stored.len(), 1, "one message in shard {shard}");
        let m = &stored[0].msg;
        assert_eq!((m.part, m.last), (1, true));
        assert!(
            m.unit.ends_with(&format!(".{shard}.0")),
            "unit {} of shard {shard}",
            m.unit
        );
        assert_eq!(wire::unit_pass(&m.unit).map(|u| u.1), Some(end as u64));
        assert!(ids.insert(stored[0].msg_id.clone().expect("message id")));
        let rows: Vec<(String, i64)> = rows_of(m).into_iter().map(|(t, id, _)| (t, id)).collect();
        let got: BTreeSet<(String, i64)> = rows.iter().cloned().collect();
        assert_eq!(got.len(), rows.len(), "a row twice in shard {shard}");
        assert_eq!(got, expected[&shard], "rows of shard {shard}");
    }
    assert_eq!(p.published_upto(), end);
    assert_eq!(
        h.counters.totals().get(Total::PublishedRows),
        written.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_unit_is_stored_once() {
    let h = Harness::start(1, 10).await;
    h.create_streams().await;
    let mut p = h.publisher();
    // A unit of one message, then a batch of four: each sent, then sent again as a retry (the next attempt:
    // same message id, a new batch id), then its pass published again over the same range.
    for (rows, parts) in [(1..=3, 1usize), (10..=44, 4)] {
        h.write(&rows.clone().map(|i| ("Books", i)).collect::<Vec<_>>());
        let before = h.stored(1).await.len();
        let pass = tokio::task::block_in_place(|| p.build())
            .expect("build")
            .expect("a pass");
        assert_eq!(pass.units.len(), 1);
        let unit = &pass.units[0];
        assert_eq!(unit.payloads.len(), parts);
        let first = publish_unit(&p.js, &p.client, &p.cfg, unit, 0)
            .await
            .expect("first attempt");
        let again = publish_unit(&p.js, &p.client, &p.cfg, unit, 1)
            .await
            .expect("retry");
        if parts == 1 {
            assert_eq!(
                again, first,
                "the duplicate is acknowledged at its sequence"
            );
        } else {
            assert_eq!(again, vec![0; parts], "the batch is known as stored");
        }
        let stored = h.stored(1).await;
        assert_eq!(stored.len(), before + parts, "stored once");
        assert_eq!(
            stored.last().map(|s| s.seq),
            first.last().copied(),
            "where the first attempt stored it"
        );
        // The pass was not recorded: the next one covers the same range under the same ids.
        drain(&mut p).await;
        assert_eq!(h.stored(1).await.len(), before + parts, "stored once");
        assert_eq!(p.published_upto(), pass.end);
        let all = h.stored(1).await;
        let ids = ids_once(all[before..].iter().flat_map(|s| rows_of(&s.msg)));
        assert_eq!(ids, rows.collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_acknowledged_but_not_recorded_is_stored_once_by_the_next_publisher() {
    let h = Harness::start(1, 10).await;
    h.create_streams().await;
    h.write(&(1..=3).map(|i| ("Books", i)).collect::<Vec<_>>());
    let mut p = h.publisher();
    drain(&mut p).await;
    h.write(&(10..=34).map(|i| ("Books", i)).collect::<Vec<_>>());
    drain(&mut p).await;
    let end = h.max_log_id();
    assert_eq!(p.published_upto(), end);
    drop(p);
    let before: Vec<(u64, Option<String>)> = h
        .stored(1)
        .await
        .into_iter()
        .map(|s| (s.seq, s.msg_id))
        .collect();
    assert_eq!(before.len(), 1 + 3);
    // A crash after the last pass was acknowledged, before its progress was saved: the state file still says
    // that pass is in flight.
    let incarnation = h.capture.get().incarnation;
    std::fs::write(
        &h.cfg.seq_map_path,
        format!("harmonylite-publish-state-v1 {ME} {incarnation} 3 {end}\n"),
    )
    .expect("state file");
    let mut p = h.publisher();
    assert_eq!(p.published_upto(), 3);
    drain(&mut p).await;
    assert_eq!(p.published_upto(), end);
    assert_eq!(state_file(&h.cfg.seq_map_path), (end, end));
    let after: Vec<(u64, Option<String>)> = h
        .stored(1)
        .await
        .into_iter()
        .map(|s| (s.seq, s.msg_id))
        .collect();
    assert_eq!(after, before, "nothing stored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_file_is_found_again_in_the_stream_and_nothing_is_published_twice() {
    let h = Harness::start(1, 512).await;
    h.create_streams().await;
    h.write(&(1..=5).map(|i| ("Books", i)).collect::<Vec<_>>());
    let mut p = h.publisher();
    drain(&mut p).await;
    drop(p);
    std::fs::remove_file(&h.cfg.seq_map_path).expect("remove the state file");
    // Changes made while the state was lost: only these are new.
    h.write(&(6..=8).map(|i| ("Books", i)).collect::<Vec<_>>());
    let mut state = h.state();
    assert!(!state.from_file);
    let conn = h.conn();
    super::recover::progress(&h.js, &h.cfg, &conn, &h.capture.get(), &mut state).await;
    assert_eq!(state.published_upto, 5, "found again in the stream");
    let mut p = h.publisher_from(state);
    drain(&mut p).await;
    assert_eq!(p.published_upto(), 8);
    let stored = h.stored(1).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(ids_once(rows_of(&stored[0].msg)), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids_once(rows_of(&stored[1].msg)), vec![6, 7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_upto_moves_only_once_acknowledged_and_is_recorded() {
    let h = Harness::start(1, 512).await;
    h.write(&(1..=4).map(|i| ("Books", i)).collect::<Vec<_>>());
    let end = h.max_log_id();
    let state_path: PathBuf = h.cfg.seq_map_path.clone();
    let mut p = h.publisher();
    assert_eq!(p.published_upto(), 0);
    // No stream yet: nothing acknowledges the pass, which is retried.
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        let drained = p.drain(&c).await;
        (drained, p)
    });
    let deadline = Instant::now() + WAIT;
    while h.counters.totals().get(Total::PublishErrors) == 0 {
        assert!(Instant::now() < deadline, "the publish never failed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.counters.published_upto.load(Ordering::Acquire), 0);
    assert_eq!(
        state_file(&state_path),
        (0, end),
        "in flight, not published"
    );
    assert!(!task.is_finished());
    h.create_streams().await;
    let (drained, p) = tokio::time::timeout(WAIT, task)
        .await
        .expect("published in time")
        .expect("publisher task");
    assert!(drained);
    assert_eq!(p.published_upto(), end);
    assert_eq!(
        h.counters.published_upto.load(Ordering::Acquire),
        end as u64
    );
    assert_eq!(state_file(&state_path), (end, end));
    let stored = h.stored(1).await;
    assert_eq!(stored.len(), 1, "stored once despite the failed attempts");
    assert_eq!(ids_once(rows_of(&stored[0].msg)), vec![1, 2, 3, 4]);
}
