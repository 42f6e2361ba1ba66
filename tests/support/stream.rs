//! Messages put on a cluster's change stream by the test itself, as any client of a node's nats-server could:
//! real wire-format messages built with [`harmonylite::wire`] ([`upsert`]) or any bytes, published with
//! JetStream acknowledgements ([`publish`]); and the node's own view of its config ([`Node::loaded_config`]) for
//! the subject and stream names.

use std::time::Duration;

use harmonylite::config::{Config, Overrides};
use harmonylite::wire::{Message, Row, TableChanges, Value};

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
