//! HarmonyLite: leaderless, eventually consistent SQLite replication over NATS JetStream.
//!
//! A change travels top to bottom through these modules:
//!
//! - [`capture`]: schema introspection, triggers and the change-log table, file-event watching.
//! - [`publish`]: change log → batches → JetStream, acknowledgements, marking published.
//! - [`wire`]: the versioned message format.
//! - [`nats`]: the bundled nats-server (extract, configure, spawn, supervise, readiness) or an external cluster,
//!   and the JetStream client side.
//! - [`apply`]: JetStream → SQLite transactions, applied positions.
//!
//! At the side, used along the way:
//!
//! - [`cli`], [`config`]: flags and TOML keys of the original, validated.
//! - [`conflict`]: the node's own changes in flight, on which the conflict rule rests (publish and apply).
//! - [`counters`]: what the node did, for `sleep_timeout` and operations.
//! - [`db`]: the node's connections to the user's database, and `-cleanup`.
//! - [`snapshot`]: consistent copies of the database with their stream positions, and the stores that keep
//!   them (NATS object store, S3, WebDAV, SFTP).
//! - [`retry`]: the one backoff policy, with jitter; [`repeat`]: repeated conditions summarised in the logs;
//!   [`logging`]: the log formats, every line with the node id; [`memory`]: heap tuning.
//! - `atomic_file`: files replaced whole and durably (the publisher's state, the server's config).
//!
//! And on top, [`node`]: start-up order, the handles each task gets, and the shutdown that runs on every path;
//! [`ops`]: what operators see (the schema registry, each node's status, and the status commands).

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
