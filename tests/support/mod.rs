//! The test kit shared by every end-to-end test (`tests/*.rs`: `mod support;`) and the bench
//! (`benches/bench.rs`: `#[path = "../tests/support/mod.rs"] mod support;`).
//!
//! | module       | what it offers |
//! |--------------|----------------|
//! | [`wait`]     | [`eventually`]`(timeout, what, condition)` for conditions returning `bool` or `Option<T>` (trait [`Ready`]), [`eventually_async`], [`poll`], [`during`]: no fixed sleeps |
//! | [`ports`]    | [`free_port`], [`free_ports`]: free loopback ports below the ephemeral range |
//! | [`process`]  | [`temp_dir`], [`ChildGuard`] (also [`ChildGuard::spawn_logged`], [`ChildGuard::exited`], [`ChildGuard::finish`]), [`PidGuard`], [`send_signal`], [`pid_alive`], [`child_pids`], [`process_tree`], [`listening_sockets`], [`rss_kb`], [`peak_rss_kb`] and [`reset_peak_rss`] (`VmHWM`), [`reexec_test`], [`output_retrying`], [`output_text`], [`file_len`], [`script_result`] (a `scripts/` script run with no test-only environment: its last stdout line), [`release_archive`] (`scripts/release.sh`) |
//! | [`sql`]      | the `sqlite3` CLI ([`sqlite3`], [`try_sqlite3`]), rusqlite ([`open`], [`open_read_only`]), [`user_tables`], [`checksum`] (order-independent), [`try_checksums`], [`Writer`] (light write load from a thread) |
//! | [`node`]     | [`Node`]: one real `harmonylite` process: its paths (data directory, database, config, log), extra TOML, arguments and environment, start / `kill -9` / SIGTERM stop / restart, waiting for it to run or exit, its log and pid, settings changed between runs ([`Node::add_toml`]), its metrics ([`Node::serve_metrics`], [`Node::metric`]); [`harmonylite_bin`] |
//! | [`logs`]     | [`Node::log_mark`] / [`Node::log_since`] (what a node printed in a window), [`json_lines`] (a JSON-format log parsed) |
//! | [`cluster`]  | [`Cluster`] of N nodes peered on loopback in one temporary directory ([`Options`]), with the convergence oracle [`Cluster::converged`] (one table) and [`Cluster::converged_all`] (every user table but the node-local ones HarmonyLite never replicates); failures show every node's last log lines |
//! | [`oracle`]   | the fault suite's oracle: [`Apps`] (application processes writing every node, `app_writer.py`; commits per node: [`Apps::committed_on`]), [`Cluster::verdict`] (nothing committed lost, all converged, no node dead or panicked, application errors counted: a [`Verdict`]), [`LEDGER`] (its schema), [`Plan`] (seed, cycles, duration from the environment), [`Rng`], [`oracle::report`], [`StreamWatch`] (reads a replication stream as it grows: `ledger` rows published twice, a [`Published`]) |
//! | [`netns`]    | [`netns::Network`]: one network namespace per node on a hub bridge (veth pairs), [`netns::Network::place`] puts a cluster's nodes there (a [`Node`] runs in its namespace: `netns`, `cluster_host`, `peer_hosts`), [`netns::Network::partition`] / [`netns::Network::heal`]; namespaces removed on drop, also on panic; [`netns::namespaces_with_prefix`] |
//! | [`stream`]   | messages the test puts on a change stream: [`stream::upsert`] (a real wire message), [`stream::publish`] (any bytes, with JetStream acknowledgements); [`Node::loaded_config`] (subject and stream names), [`Node::wait_paused_on`] (a shard paused on a table or column this node lacks), [`Node::handled_positions`] and [`Cluster::caught_up`] (every node handled everything on the streams), [`Node::quarantined`] (its `__harmonylite__quarantine`, [`stream::Quarantined`]) |
//! | [`feed`]     | the change feed as its users read it: [`Node::changes`] (`-changes` run, its NDJSON parsed: [`feed::Changes`]), [`Node::wait_feed`] (until a table has N records), [`Cluster::feed_writer`], [`feed::FEED_ON`], [`FeedHttp`] (a `GET /changes` held open, read line by line), [`Node::feed_consumer`] (the nats-py durable consumer of `tests/tools/feed_consumer.py`: [`feed::FeedConsumer`], each record read a [`feed::Consumed`]) |
//! | [`http`]     | [`http_get`] (and [`http_get_within`] for slow answers) from the test process to a node's metrics, health and readiness endpoints; [`metric`] reads one Prometheus series |
//! | [`docker`]   | [`docker::engine_unavailable`] (the SKIPPED reason), [`docker::Image`] (built for a test, tag removed on drop), [`docker::Compose`] (one compose project, `down -v` on drop, also on panic) |
//! | [`django`]   | [`django::Django`]: a Django project of `tests/tools/` run on a node's database (`manage.py` to completion within a deadline, or in the background as an application) |
//! | [`servers`]  | real servers, killed on drop: [`S3Server`] (moto), [`WebDavServer`] (wsgidav), [`SftpServer`] (OpenSSH sshd, dedicated user), [`NatsServer`] (bundled nats-server with JetStream; [`NatsServer::cluster`]: three in a cluster, for an existing NATS deployment; [`Cluster::on_nats`]: nodes joined to them) |
//! | [`tls`]      | [`TestCa`]: a CA made by the test and the loopback certificates it signs ([`CertFiles`]), as PEM files |
//! | [`large`]    | large values: [`large::random_blob_inserts`] (rows of N MB for the `sqlite3` CLI), per-row [`large::Digest`]s of a column's exact bytes ([`large::row_digests`], [`Cluster::converged_rows`]), [`large::Sampler`] (a reader polling a query from its own connection, recording each distinct answer), [`Node::watch_stream`] (a stream's state polled every few ms until a condition), [`Node::staged_pieces`] and [`Cluster::no_pieces_staged`], [`Node::set_aside`] (its `__harmonylite__unpublished`) and [`Node::retry_set_aside`] |
//! | [`tools`]    | real tools beside a node, from `tests/tools/`: Alembic ([`Node::alembic_upgrade`]), SQLAlchemy writers ([`tools::BookWriter`]), Litestream ([`tools::Litestream`]) |
//!
//! The nodes' binary is `HARMONYLITE_BIN`, else the one cargo built for the test or bench, else one next to
//! the running executable (see [`harmonylite_bin`]).

#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod django;
pub mod docker;
pub mod feed;
pub mod http;
pub mod large;
pub mod logs;
pub mod netns;
pub mod node;
pub mod oracle;
pub mod ports;
pub mod process;
pub mod servers;
pub mod sql;
pub mod stream;
pub mod tls;
pub mod tools;
pub mod wait;

pub use cluster::{BOOKS, Cluster, Options};
pub use feed::{Changes, FEED_ON, FeedHttp};
pub use http::{Response, http_get, http_get_within, metric};
pub use large::{Digest, MB, Sampler, SetAside, random_blob_inserts};
pub use logs::json_lines;
pub use node::{Node, harmonylite_bin};
pub use oracle::{Apps, LEDGER, Plan, Published, Rng, StreamWatch, Verdict};
pub use ports::{free_port, free_ports};
pub use process::{
    ChildGuard, PidGuard, Signal, child_pids, cpu_and_runqueue_ns, file_len, last_lines,
    listening_sockets, output_retrying, output_text, peak_rss_kb, pid_alive, process_tree,
    read_lossy, reexec_test, release_archive, reset_peak_rss, rss_kb, script_result, send_signal,
    temp_dir,
};
pub use servers::{NatsServer, S3Server, SftpServer, WebDavServer};
pub use sql::{
    Checksum, Writer, checksum, open, open_read_only, sqlite3, try_checksum, try_checksums,
    try_sqlite3, try_user_tables, user_tables,
};
pub use tls::{CertFiles, TestCa};
pub use wait::{Ready, during, eventually, eventually_async, eventually_or, poll};
