//! Messages put on a cluster's change stream by the test itself, as any client of a node's nats-server could:
//! real wire-format messages built with [`harmonylite::wire`] ([`upsert`]) or any bytes, published with
//! JetStream acknowledgements ([`publish`]); the node's own view of its config ([`Node::loaded_config`]) for
//! the subject and stream names; and what a node did with the stream: the positions every node has handled
//! ([`Node::handled_positions`], [`Cluster::caught_up`]) and its quarantine ([`Node::quarantined`]).

use std::collections::BTreeMap;
use std::time::Duration;

use harmonylite::config::{Config, Overrides};
use harmonylite::wire::{Message, Row, TableChanges, Value};

use super::cluster::Cluster;
use super::node::Node;
use super::wait;

/// The origin node id of messages built by [`upsert`] (no node of the kit's clusters has it).
pub const ORIGIN: u64 = 99;

/// A text value.
pub fn text(s: &str) -> Value {
    Value::Text(s.as_bytes().to_vec())
}

/// A one-unit message from node [`ORIGIN`] upserting one row of `table` (`columns`, key column `key`).
pub fn upsert(table: &str, columns: &[&str], key: &str, row: Vec<Value>) -> Message {
    Message {
        origin: ORIGIN,
        unit: format!("test-{table}-{}", unique()),
        part: 1,
        last: true,
        schema: 0,
        tables: vec![TableChanges {
            table: table.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            key: vec![key.into()],
            rows: vec![Row::Upsert(row)],
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

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Publishes `payloads` in order on `subject` through the nats-server whose client port is `port`, each
/// awaiting its JetStream acknowledgement; returns per payload its stream sequence or the error (as text) the
/// client or the server gave.
pub fn publish(port: u16, subject: &str, payloads: Vec<Vec<u8>>) -> Vec<Result<u64, String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .expect("connect to the node's nats-server");
        let js = async_nats::jetstream::new(client);
        let mut out = Vec::new();
        for p in payloads {
            let r = async {
                let ack = js
                    .publish(subject.to_string(), p.into())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(Duration::from_secs(10), ack)
                    .await
                    .map_err(|_| "no acknowledgement within 10 s".to_string())?
                    .map(|a| a.sequence)
                    .map_err(|e| e.to_string())
            }
            .await;
            out.push(r);
        }
        out
    })
}

impl Node {
    /// The configuration this node runs with, loaded by HarmonyLite's own loader from the config the kit writes
    /// (e.g. for [`Config::subject_name`] and [`Config::stream_name`]).
    pub fn loaded_config(&self) -> Config {
        self.write_config();
        harmonylite::config::load(Some(&self.config), &Overrides::default())
            .unwrap_or_else(|e| panic!("node {} config: {e}", self.id))
            .0
    }

    /// Waits (at most `timeout`) until the node logs that a shard is paused on a change naming `table`
    /// (`column`: one of its columns, or `None` for the table itself); returns that line.
    pub fn wait_paused_on(&self, table: &str, column: Option<&str>, timeout: Duration) -> String {
        let t = format!("table={table}");
        let col = column.map(|c| format!("column={c}")).unwrap_or_default();
        match wait::poll(timeout, || {
            self.log_lines_with(&["changes held", &t, &col]).pop()
        }) {
            Some(line) => line,
            None => panic!(
                "node {} not paused on {table}.{column:?} after {timeout:?}; its warnings and errors:\n{}\n{}",
                self.id,
                self.log_lines_with(&[" WARN "]).join("\n"),
                self.log_lines_with(&[" ERROR "]).join("\n")
            ),
        }
    }
}

/// One row of a node's `__harmonylite__quarantine`.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub stream: String,
    pub seq: u64,
    pub reason: String,
    /// As stored: the bytes received when they could not be decoded, else the decoded message encoded again.
    pub payload: Vec<u8>,
}

impl Quarantined {
    /// The payload decoded as a wire message (`None` when it is not one, e.g. garbage received).
    pub fn message(&self) -> Option<Message> {
        harmonylite::wire::decode(&self.payload).ok()
    }
}

impl Node {
    /// What every node of the cluster has handled (applied, or skipped as its own), as their entries in the
    /// `harmonylite-positions` bucket say (each node writes its own about once a second), read through this node's
    /// nats-server: node id → stream → position. `None` when it cannot be read. (`__harmonylite__applied` is no
    /// such measure: a node writes the positions of messages it only skipped there at its next apply.)
    pub fn handled_positions(&self) -> Option<BTreeMap<u64, BTreeMap<String, u64>>> {
        self.with_jetstream(async |js| {
            harmonylite::cluster::positions::handled_by_node(&js)
                .await
                .ok()
        })
    }

    /// Every row of this node's `__harmonylite__quarantine`, oldest first (none before capture is installed).
    pub fn quarantined(&self) -> Vec<Quarantined> {
        let conn = super::sql::open_read_only(&self.db);
        let Ok(mut stmt) = conn.prepare(
            "SELECT stream, seq, reason, payload FROM __harmonylite__quarantine ORDER BY id",
        ) else {
            return Vec::new();
        };
        stmt.query_map([], |r| {
            Ok(Quarantined {
                stream: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                reason: r.get(2)?,
                payload: r.get(3)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}

impl Cluster {
    /// Waits (at most `timeout`) until every node has handled every message each shard's stream holds now: its
    /// handled position ([`Node::handled_positions`]) has reached the stream's last sequence, read once through
    /// the first running node. Own changes count: a node's position moves past them as it skips them. Returns
    /// the last sequences, by shard (shard 1 first). Call it once the writes of interest are on the stream (seen
    /// on another node, say). Panics with every node's positions and last log lines.
    pub fn caught_up(&self, timeout: Duration) -> Vec<u64> {
        let via = self
            .nodes
            .iter()
            .find(|n| n.is_alive())
            .expect("a running node");
        let cfg = via.loaded_config();
        let streams: Vec<String> = (1..=cfg.replication_log.shards.get())
            .map(|s| cfg.stream_name(s))
            .collect();
        let last: Vec<u64> = streams
            .iter()
            .map(|s| {
                self.eventually(timeout, &format!("stream {s}'s last sequence"), || {
                    via.stream_info(s).map(|i| i.state.last_sequence)
                })
            })
            .collect();
        let mut seen = None;
        let done = wait::poll(timeout, || {
            seen = via.handled_positions();
            let handled = seen.as_ref()?;
            self.nodes
                .iter()
                .all(|n| {
                    streams.iter().zip(&last).all(|(s, l)| {
                        handled
                            .get(&n.id)
                            .and_then(|p| p.get(s))
                            .is_some_and(|p| p >= l)
                    })
                })
                .then_some(())
        });
        if done.is_none() {
            panic!(
                "not every node handled {streams:?} up to {last:?} within {timeout:?}; handled: {seen:?}\n{}",
                self.logs_tail()
            );
        }
        last
    }
}

/// Bytes that start like a compressed message of the current wire version but are not zstd.
pub const NOT_ZSTD: &[u8] = b"\x02\x01not zstd at all";
/// Bytes that start like an uncompressed message of the current wire version but cannot be decoded.
pub const BAD_BODY: &[u8] = b"\x02\x00\xff\xff";

/// A message (encoded, compressed) that would move `stream`'s applied position in a node's own bookkeeping to
/// `seq`: the stream must never write it.
pub fn applied_position_message(stream: &str, seq: i64) -> Vec<u8> {
    harmonylite::wire::encode(
        &upsert(
            "__harmonylite__applied",
            &["stream", "seq"],
            "stream",
            vec![text(stream), Value::Integer(seq)],
        ),
        true,
    )
}

/// A message (encoded, compressed) that would set SQLite's AUTOINCREMENT counter of `table` to `seq`: the
/// stream must never write it.
pub fn sqlite_sequence_message(table: &str, seq: i64) -> Vec<u8> {
    harmonylite::wire::encode(
        &upsert(
            "sqlite_sequence",
            &["name", "seq"],
            "name",
            vec![text(table), Value::Integer(seq)],
        ),
        true,
    )
}
