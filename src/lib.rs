//! HarmonyLite: leaderless, eventually consistent SQLite replication over NATS JetStream.
//!
//! A change travels top to bottom through these modules:
//!
//! - [`cli`], [`config`]: flags and TOML keys of the original, validated.
//! - [`capture`]: schema introspection, triggers and the change-log table, file-event watching.
//! - [`publish`]: change log → batches → JetStream, acknowledgements, marking published.
//! - [`wire`]: the versioned message format.
//! - [`nats`]: the bundled nats-server (extract, configure, spawn, supervise, readiness) or an external cluster,
//!   and the JetStream client side.
//! - [`apply`]: JetStream → SQLite transactions, applied positions, the conflict rule.
//! - [`pending`]: the node's own changes in flight, on which the conflict rule rests.
//! - [`shared`], [`node`]: state shared by the engine's parts; start-up order and the shutdown tree.

pub mod apply;
pub mod capture;
pub mod cli;
pub mod config;
pub mod nats;
pub mod node;
pub mod pending;
pub mod publish;
pub mod shared;
pub mod wire;
