//! HarmonyLite: leaderless, eventually consistent SQLite replication over NATS JetStream.
//!
//! The modules stand in layers (docs/DESIGN.md, "Layers"; `tests/layers.rs` keeps them so): a module uses only
//! modules below its own. From the top:
//!
//! 1. `commands`: every mode of the binary (the node's run, the one-shot commands).
//! 2. `node`: start-up order, the engine's tasks, recovery, retention's trim, join and removal, snapshots taken.
//! 3. `ops`: what operators see (health, metrics, status, `-verify`, `-wait-replicated`, the schema registry).
//! 4. `snapshot`: consistent copies of the database and the stores that keep them.
//! 5. `apply` (JetStream → SQLite) and `publish` (change log → JetStream): the engine; `feed`, the change feed
//!    for other programs.
//! 6. `counters`: what the node did.
//! 7. `cluster` (positions, removals, nodes holding a stream: the KV records nodes keep about each other) and
//!    `db` (the node's connections to the user's database, `-cleanup`).
//! 8. `capture` (triggers, change log, schema, file watching) and `nats` (the bundled nats-server or an
//!    external cluster, the client).
//! 9. `logging`; 10. `config`, `conflict`, `disk_full`; 11. `wire` (the message format); 12. leaves: `ids`,
//!    `retry`, `repeat`, `atomic_file`, `memory`, `sd_notify`, `cli`.

pub(crate) mod apply;
pub(crate) mod atomic_file;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub(crate) mod conflict;
pub mod counters;
pub mod db;
pub(crate) mod disk_full;
pub mod feed;
pub mod ids;
pub mod logging;
pub mod memory;
pub mod nats;
pub mod node;
pub mod ops;
pub(crate) mod publish;
pub mod repeat;
pub(crate) mod retry;
pub mod sd_notify;
pub mod snapshot;
/// The wire format of change messages (public for tools and tests that read or write the stream).
pub mod wire;
