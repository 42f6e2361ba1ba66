//! Health and readiness (`[health_check]`): what the node's view says, as the original's JSON fields plus
//! ours, and the verdicts.
//!
//! Healthy (200) needs: the database opens and answers, the NATS client is connected, the embedded
//! nats-server runs, JetStream answers for every shard's stream with a leader (quorum), and no shard has been
//! paused or stopped at a retention gap for longer than `max_stuck_seconds`. Anything else is 503, with the
//! reasons in the body. Ready (200) needs, besides being healthy, every shard's stream to exist and every
//! shard to be within `ready_max_lag` messages of its stream's end.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::observe::Observed;
use crate::counters::ShardView;

/// One shard in the health body.
#[derive(Debug, Serialize)]
pub struct ShardHealth {
    pub shard: u32,
    pub stream: String,
    pub applied: u64,
    pub last_sequence: u64,
    /// `null` until the stream's last sequence is known.
    pub lag_messages: Option<u64>,
    pub lag_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_needs: Option<u64>,
    pub stuck_seconds: u64,
    /// Tables whose changes this shard holds (this node lacks a table or column they need).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldTable>,
}

/// Changes one shard holds for one table.
#[derive(Debug, Serialize)]
pub struct HeldTable {
    pub table: String,
    pub rows: u64,
    pub seconds: u64,
}

/// The health body (`detailed = true`).
#[derive(Debug, Serialize)]
pub struct Health {
    /// "healthy" or "unhealthy".
    pub status: &'static str,
    pub node_id: u64,
    pub uptime_seconds: u64,
    pub db_connected: bool,
    pub nats_connected: bool,
    pub cdc_installed: bool,
    pub tables_tracked: usize,
    /// RFC 3339, of the last change applied from another node ("" before the first).
    pub last_replicated_event_timestamp: String,
    /// RFC 3339, of the last local change acknowledged by JetStream ("" before the first).
    pub last_published_event_timestamp: String,
    pub version: &'static str,
    pub quorum: bool,
    pub nats_server_running: bool,
    pub nats_server_restarts: u64,
    pub streams_ready: bool,
    pub pending_publish: u64,
    pub paused_shards: Vec<u32>,
    pub gap_shards: Vec<u32>,
    pub lag: Vec<ShardHealth>,
    /// Why the node is unhealthy (empty when healthy).
    pub problems: Vec<String>,
    /// Why the node is not ready (empty when ready).
    pub not_ready: Vec<String>,
    /// Ports this node opens to anyone who can reach them (they do not make it unhealthy); see SECURITY.md.
    pub security_warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_error: Option<String>,
    /// A snapshot being saved, downloaded or restored by this node: bytes, total, rate and time left
    /// (`null` when none).
    pub snapshot_transfer: Option<crate::snapshot::Transfer>,
    /// While this node is far behind its streams (at least `ops::catch_up::BEHIND_MESSAGES` messages): what it
    /// applied since, its pace and the time left (`null` otherwise).
    pub catch_up: Option<super::catch_up::CatchUp>,
    /// Nodes not heard of for `replication_log.stale_node_seconds` that hold back a stream's retention.
    pub stale_nodes: Vec<crate::cluster::Holding>,
    /// The parts of this node a full disk stops now ("publishing", "applying", "nats-server JetStream
    /// store"); empty when none.
    pub disk_full: Vec<String>,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn ready(&self) -> bool {
        self.problems.is_empty() && self.not_ready.is_empty()
    }
}

/// The node's health as of now.
pub fn report(o: &Observed) -> Health {
    let cfg = &o.cfg;
    let c = &o.counters;
    let db = o.db();
    let views: Vec<ShardView> = c.shard_views();
    let quorum = c.quorum.load(Ordering::Relaxed);
    let streams_ready = c.streams_ready.load(Ordering::Relaxed);
    let nats_connected = o.nats_connected();
    let nats_server_running = o.nats_server_running();
    let max_stuck_ms = cfg.health_check.max_stuck_seconds.saturating_mul(1000);

    let mut problems = Vec::new();
    if !db.connected {
        problems.push(format!(
            "database cannot be opened: {}",
            db.error.as_deref().unwrap_or("not looked at yet")
        ));
    }
    problems.extend(nats_problems(
        o.nats().is_some(),
        nats_server_running,
        nats_connected,
        quorum,
    ));
    let disk_full = disk_full_parts();
    if !disk_full.is_empty() {
        problems.push(format!(
            "the disk is full: {} stopped",
            disk_full.join(", ")
        ));
    }
    problems.extend(stuck_shards(&views, max_stuck_ms));
    let not_ready = not_ready(cfg, streams_ready, &views);

    Health {
        status: if problems.is_empty() {
            "healthy"
        } else {
            "unhealthy"
        },
        node_id: cfg.node_id,
        uptime_seconds: o.started.elapsed().as_secs(),
        db_connected: db.connected,
        nats_connected,
        cdc_installed: db.cdc_installed,
        tables_tracked: db.tables_tracked,
        last_replicated_event_timestamp: rfc3339(c.last_applied_ms.load(Ordering::Relaxed)),
        last_published_event_timestamp: rfc3339(c.last_published_ms.load(Ordering::Relaxed)),
        version: env!("CARGO_PKG_VERSION"),
        quorum,
        nats_server_running,
        nats_server_restarts: o.nats_server_restarts(),
        streams_ready,
        pending_publish: c.pending_rows.load(Ordering::Relaxed),
        paused_shards: shards_where(&views, |v| v.paused.is_some()),
        gap_shards: shards_where(&views, |v| v.gap.is_some()),
        lag: shard_health(cfg, &views, c.held()),
        problems,
        not_ready,
        security_warnings: c.security_warnings(),
        db_error: db.error,
        snapshot_transfer: crate::snapshot::transfer(),
        catch_up: c.catch_up(),
        stale_nodes: c.stale_nodes(),
        disk_full,
    }
}

/// The parts of this node a full disk stops now.
fn disk_full_parts() -> Vec<String> {
    crate::disk_full::full_parts()
        .into_iter()
        .map(String::from)
        .collect()
}

/// The shards of `views` for which `pick` holds.
fn shards_where(views: &[ShardView], pick: impl Fn(&ShardView) -> bool) -> Vec<u32> {
    views.iter().filter(|v| pick(v)).map(|v| v.shard).collect()
}

/// What makes the node unhealthy on the NATS side (`nats_up`: NATS was started).
fn nats_problems(
    nats_up: bool,
    nats_server_running: bool,
    nats_connected: bool,
    quorum: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !nats_up {
        problems.push("NATS is not up yet".to_string());
    } else {
        if !nats_server_running {
            problems.push("the embedded nats-server is not running".to_string());
        }
        if !nats_connected {
            problems.push("the NATS client is not connected".to_string());
        }
        if !quorum {
            problems.push("JetStream has no quorum for this node's streams".to_string());
        }
    }
    problems
}

/// The shards paused, stopped at a gap or otherwise stuck for longer than `max_stuck_ms`.
fn stuck_shards(views: &[ShardView], max_stuck_ms: u64) -> Vec<String> {
    let mut problems = Vec::new();
    for v in views {
        if v.stuck_for_ms > max_stuck_ms {
            let what = match (&v.gap, &v.paused) {
                (Some(n), _) => format!("stopped at a gap (needs sequence {n})"),
                (None, Some(r)) => format!("paused: {r}"),
                (None, None) => "stuck".to_string(),
            };
            problems.push(format!(
                "shard {} {what} for {} s",
                v.shard,
                v.stuck_for_ms / 1000
            ));
        }
    }
    problems
}

/// Why the node is not ready, besides being unhealthy: streams missing, shards too far behind.
fn not_ready(cfg: &crate::config::Config, streams_ready: bool, views: &[ShardView]) -> Vec<String> {
    let mut not_ready = Vec::new();
    if !streams_ready {
        not_ready.push("the streams do not exist yet".to_string());
    }
    for v in views {
        match v.lag_msgs {
            None => not_ready.push(format!(
                "shard {}: the stream's last sequence is not known yet",
                v.shard
            )),
            Some(lag) if lag > cfg.health_check.ready_max_lag => not_ready.push(format!(
                "shard {} is {lag} messages behind (ready_max_lag {})",
                v.shard, cfg.health_check.ready_max_lag
            )),
            Some(_) => {}
        }
    }
    not_ready
}

/// Each shard's part of the body, with the tables whose changes it holds (`held`, per shard).
fn shard_health(
    cfg: &crate::config::Config,
    views: &[ShardView],
    held: Vec<std::collections::BTreeMap<String, (u64, u64)>>,
) -> Vec<ShardHealth> {
    views
        .iter()
        .zip(held)
        .map(|(v, held)| ShardHealth {
            shard: v.shard,
            stream: cfg.stream_name(v.shard),
            applied: v.applied,
            last_sequence: v.last_seq,
            lag_messages: v.lag_msgs,
            lag_seconds: v.lag_ms as f64 / 1000.0,
            paused: v.paused.clone(),
            gap_needs: v.gap,
            stuck_seconds: v.stuck_for_ms / 1000,
            held: held
                .into_iter()
                .map(|(table, (rows, since))| HeldTable {
                    table,
                    rows,
                    seconds: crate::counters::now_ms().saturating_sub(since) / 1000,
                })
                .collect(),
        })
        .collect()
}

fn rfc3339(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::counters::Counters;

    fn observed() -> Arc<Observed> {
        let cfg = crate::config::load(None, &Default::default()).unwrap().0;
        Observed::new(Arc::new(cfg), Arc::new(Counters::default()))
    }

    #[test]
    fn before_nats_is_up_the_node_is_neither_healthy_nor_ready() {
        let o = observed();
        let h = report(&o);
        assert!(!h.healthy());
        assert!(!h.ready());
        assert_eq!(h.status, "unhealthy");
        assert!(h.problems.iter().any(|p| p.contains("NATS is not up")));
        assert!(h.not_ready.iter().any(|p| p.contains("streams")));
        let json = serde_json::to_value(&h).unwrap();
        for field in [
            "status",
            "node_id",
            "uptime_seconds",
            "db_connected",
            "nats_connected",
            "cdc_installed",
            "tables_tracked",
            "last_replicated_event_timestamp",
            "last_published_event_timestamp",
            "version",
            "quorum",
            "paused_shards",
            "lag",
        ] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
    }

    #[test]
    fn lag_is_null_and_the_node_not_ready_until_the_stream_is_known() {
        let cfg = crate::config::load(None, &Default::default()).unwrap().0;
        let c = Arc::new(Counters::default());
        let o = Observed::new(Arc::new(cfg), c.clone());
        c.set_applied(1, 0);
        let h = report(&o);
        assert_eq!(h.lag[0].lag_messages, None);
        assert!(
            h.not_ready.iter().any(|p| p.contains("not known yet")),
            "{:?}",
            h.not_ready
        );
        let json = serde_json::to_value(&h).unwrap();
        assert!(json["lag"][0]["lag_messages"].is_null(), "{json}");
        c.set_stream(1, 0, 0);
        let h = report(&o);
        assert_eq!(h.lag[0].lag_messages, Some(0));
        assert!(!h.not_ready.iter().any(|p| p.contains("not known yet")));
    }

    #[test]
    fn lag_beyond_the_limit_is_not_ready_and_a_long_pause_is_unhealthy() {
        let mut cfg = crate::config::load(None, &Default::default()).unwrap().0;
        cfg.health_check.ready_max_lag = 10;
        cfg.health_check.max_stuck_seconds = 0;
        let c = Arc::new(Counters::default());
        let o = Observed::new(Arc::new(cfg), c.clone());
        c.set_applied(1, 5);
        c.set_stream(1, 50, 1_500);
        let h = report(&o);
        assert!(h.not_ready.iter().any(|p| p.contains("45 messages behind")));
        assert_eq!(h.lag[0].lag_messages, Some(45));
        assert!(!h.problems.iter().any(|p| p.contains("shard 1")));
        c.set_gap(1, Some(6));
        // Stuck for longer than 0 s once a millisecond has passed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while c.shard_views()[0].stuck_for_ms == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let h = report(&o);
        assert!(
            h.problems
                .iter()
                .any(|p| p.contains("shard 1 stopped at a gap")),
            "{:?}",
            h.problems
        );
        assert_eq!(h.gap_shards, [1]);
    }
}
