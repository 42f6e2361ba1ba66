//! Prometheus metrics (`[prometheus] enable/bind/namespace/subsystem`): the `metrics` facade with the
//! Prometheus exporter's recorder, served by the HTTP server in [`super::http`] on any path.
//!
//! Histograms are recorded where the work happens (`metrics::histogram!` in publish, apply and the observer;
//! without a recorder they cost nothing). Counters and gauges are the node's [`Counters`] and [`Observed`]
//! view, copied into the recorder at each scrape, so the hot paths keep their plain atomics. Every series
//! carries the label `node_id`. Names are written here with the prefix `harmonylite_`; a configuration with
//! another `namespace` or a `subsystem` gets `<namespace>_<subsystem>_` instead, as the original names them.
//! `docs/OPERATIONS.md` lists every metric.

use std::sync::atomic::Ordering;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::observe::Observed;
use crate::config::PrometheusConfig;
use crate::counters::{Total, now_ms};

/// Seconds buckets for batch durations.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Microsecond buckets for the original's `count_changes` and `scan_changes`.
const MICROS_BUCKETS: &[f64] = &[
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    1_000_000.0,
];

/// The installed recorder's handle, and the name prefix the configuration asks for.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    prefix: String,
}

/// The name prefix of `cfg`: `namespace_subsystem_`, parts left out when empty.
pub fn prefix(cfg: &PrometheusConfig) -> String {
    let mut p = String::new();
    for part in [&cfg.namespace, &cfg.subsystem] {
        if !part.is_empty() {
            p.push_str(part);
            p.push('_');
        }
    }
    p
}

/// Install the process's metrics recorder, every series labelled `node_id`. Fails when one is installed
/// already (one node per process).
pub fn install(cfg: &PrometheusConfig, node_id: u64) -> Result<Exporter, String> {
    let recorder = PrometheusBuilder::new()
        .add_global_label("node_id", node_id.to_string())
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("harmonylite_count_changes".into()),
                MICROS_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("harmonylite_scan_changes".into()),
                MICROS_BUCKETS,
            )
        })
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    Ok(Exporter {
        handle,
        prefix: prefix(cfg),
    })
}

impl Exporter {
    /// The text exposition of every metric, with the node's current counters and gauges.
    pub fn render(&self, observed: &Observed) -> String {
        update(observed);
        rename(&self.handle.render(), &self.prefix)
    }
}

/// Replace the `harmonylite_` prefix of every metric name with `prefix`.
pub fn rename(text: &str, prefix: &str) -> String {
    const OURS: &str = "harmonylite_";
    if prefix == OURS {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let (head, rest) = if let Some(r) = line.strip_prefix("# HELP ") {
            ("# HELP ", r)
        } else if let Some(r) = line.strip_prefix("# TYPE ") {
            ("# TYPE ", r)
        } else {
            ("", line)
        };
        out.push_str(head);
        match rest.strip_prefix(OURS) {
            Some(r) => {
                out.push_str(prefix);
                out.push_str(r);
            }
            None => out.push_str(rest),
        }
        out.push('\n');
    }
    out
}

/// What a metric is, for its description.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    HistogramIn(metrics::Unit),
}

/// Every metric that is not a running total of `counters::Total` (those are declared in their own table
/// there): name, kind, help text. `update` sets them.
const METRICS: &[(&str, Kind, &str)] = &[
    (
        "harmonylite_catching_up",
        Kind::Gauge,
        "1 while this node is far behind its streams and catching up.",
    ),
    (
        "harmonylite_catch_up_rows_per_second",
        Kind::Gauge,
        "Rows applied per second while catching up, over the last few seconds (0 otherwise).",
    ),
    (
        "harmonylite_catch_up_remaining_seconds",
        Kind::Gauge,
        "Estimated seconds until caught up at the current pace (0 when not catching up or not known yet).",
    ),
    (
        "harmonylite_pending_publish",
        Kind::Gauge,
        "Change-log rows written by applications and not yet published.",
    ),
    (
        "harmonylite_count_changes",
        Kind::HistogramIn(metrics::Unit::Microseconds),
        "Time to count the change-log rows pending publication (microseconds).",
    ),
    (
        "harmonylite_scan_changes",
        Kind::HistogramIn(metrics::Unit::Microseconds),
        "Time to read one publish pass from the change log (microseconds).",
    ),
    (
        "harmonylite_schema_mismatch_paused",
        Kind::Gauge,
        "1 while a shard waits for this node's schema to catch up with a change it received.",
    ),
    (
        "harmonylite_errors",
        Kind::Counter,
        "Errors by operation (publish, apply, consume) and kind.",
    ),
    (
        "harmonylite_held_changes",
        Kind::Gauge,
        "Rows held per shard and table because this node lacks a table or column a change names (the missing table and every table its transactions touch).",
    ),
    (
        "harmonylite_held_seconds",
        Kind::Gauge,
        "How long changes of the table have been held on the shard.",
    ),
    (
        "harmonylite_applied_position",
        Kind::Gauge,
        "Last stream sequence this node handled, per shard.",
    ),
    (
        "harmonylite_stream_last_sequence",
        Kind::Gauge,
        "The stream's last sequence at the last look, per shard.",
    ),
    (
        "harmonylite_disk_full",
        Kind::Gauge,
        "1 while a full disk stops a part of this node (publishing, applying, its nats-server's store), else 0.",
    ),
    (
        "harmonylite_lag_messages",
        Kind::Gauge,
        "Stream messages this node has not handled yet, per shard.",
    ),
    (
        "harmonylite_lag_seconds",
        Kind::Gauge,
        "Age of the oldest stream message this node has not handled yet, per shard (0 when caught up).",
    ),
    (
        "harmonylite_shard_paused",
        Kind::Gauge,
        "1 while the shard is paused at a message it cannot apply yet, per shard.",
    ),
    (
        "harmonylite_paused_shards",
        Kind::Gauge,
        "Shards paused now.",
    ),
    (
        "harmonylite_gap_shards",
        Kind::Gauge,
        "Shards stopped at a retention gap (their next change left the stream) now.",
    ),
    (
        "harmonylite_jetstream_quorum",
        Kind::Gauge,
        "1 when every shard's stream answered with a leader at the last look.",
    ),
    (
        "harmonylite_nats_connected",
        Kind::Gauge,
        "1 while the node's NATS client is connected.",
    ),
    (
        "harmonylite_nats_server_up",
        Kind::Gauge,
        "1 while the embedded nats-server runs (or NATS is external and connected).",
    ),
    (
        "harmonylite_nats_server_restarts",
        Kind::Counter,
        "Restarts of the embedded nats-server after it died.",
    ),
    (
        "harmonylite_db_connected",
        Kind::Gauge,
        "1 when the database opened and answered at the last look.",
    ),
    (
        "harmonylite_uptime_seconds",
        Kind::Gauge,
        "Seconds since the node started.",
    ),
    (
        "harmonylite_last_snapshot_age_seconds",
        Kind::Gauge,
        "Age of the latest snapshot this node saved or restored (absent before the first).",
    ),
    (
        "harmonylite_last_snapshot_duration_seconds",
        Kind::Gauge,
        "How long the latest snapshot this node saved or restored took.",
    ),
    (
        "harmonylite_publish_batch_seconds",
        Kind::HistogramIn(metrics::Unit::Seconds),
        "Time from sending a publish pass to its last acknowledgement.",
    ),
    (
        "harmonylite_apply_batch_seconds",
        Kind::HistogramIn(metrics::Unit::Seconds),
        "Time of one apply transaction.",
    ),
];

fn describe() {
    for &t in Total::ALL {
        if let Some(name) = t.metric() {
            describe_counter!(name, t.help());
        }
    }
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::HistogramIn(unit) => describe_histogram!(name, unit, help),
        }
    }
}

/// The held-changes gauges per (shard, table); a table no longer held reads 0.
fn update_held(c: &crate::counters::Counters) {
    static SHOWN: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    let now = now_ms();
    let mut current = std::collections::BTreeSet::new();
    for (i, held) in c.held().into_iter().enumerate() {
        let shard = (i + 1).to_string();
        for (table, (rows, since)) in held {
            gauge!("harmonylite_held_changes", "shard" => shard.clone(), "table" => table.clone())
                .set(rows as f64);
            gauge!("harmonylite_held_seconds", "shard" => shard.clone(), "table" => table.clone())
                .set(now.saturating_sub(since) as f64 / 1000.0);
            current.insert((shard.clone(), table));
        }
    }
    for (shard, table) in shown.difference(&current) {
        gauge!("harmonylite_held_changes", "shard" => shard.clone(), "table" => table.clone())
            .set(0.0);
        gauge!("harmonylite_held_seconds", "shard" => shard.clone(), "table" => table.clone())
            .set(0.0);
    }
    *shown = current;
}

/// Copy the node's counters and gauges into the recorder.
fn update(o: &Observed) {
    let c = &o.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    gauge!("harmonylite_pending_publish").set(get(&c.pending_rows) as f64);
    let catch_up = c.catch_up();
    gauge!("harmonylite_catching_up").set(catch_up.is_some() as u8 as f64);
    gauge!("harmonylite_catch_up_rows_per_second")
        .set(catch_up.as_ref().map_or(0.0, |u| u.rows_per_second));
    gauge!("harmonylite_catch_up_remaining_seconds")
        .set(catch_up.and_then(|u| u.remaining_seconds).unwrap_or(0.0));
    gauge!("harmonylite_schema_mismatch_paused").set((c.schema_paused() > 0) as u8 as f64);
    let totals = c.totals();
    for &t in Total::ALL {
        if let Some(name) = t.metric() {
            counter!(name).absolute(totals.get(t));
        }
    }
    for ((op, kind), n) in c.errors() {
        counter!("harmonylite_errors", "op" => op, "kind" => kind).absolute(n);
    }
    gauge!("harmonylite_disk_full").set(!crate::disk_full::full_parts().is_empty() as u8 as f64);
    let views = c.shard_views();
    for v in &views {
        let shard = v.shard.to_string();
        gauge!("harmonylite_applied_position", "shard" => shard.clone()).set(v.applied as f64);
        gauge!("harmonylite_stream_last_sequence", "shard" => shard.clone()).set(v.last_seq as f64);
        // Left out until the stream's last sequence is known (a 0 would read as caught up).
        if let Some(lag) = v.lag_msgs {
            gauge!("harmonylite_lag_messages", "shard" => shard.clone()).set(lag as f64);
        }
        gauge!("harmonylite_lag_seconds", "shard" => shard.clone()).set(v.lag_ms as f64 / 1000.0);
        gauge!("harmonylite_shard_paused", "shard" => shard).set(v.paused.is_some() as u8 as f64);
    }
    update_held(c);
    gauge!("harmonylite_paused_shards")
        .set(views.iter().filter(|v| v.paused.is_some()).count() as f64);
    gauge!("harmonylite_gap_shards").set(views.iter().filter(|v| v.gap.is_some()).count() as f64);
    gauge!("harmonylite_jetstream_quorum").set(c.quorum.load(Ordering::Relaxed) as u8 as f64);
    gauge!("harmonylite_nats_connected").set(o.nats_connected() as u8 as f64);
    gauge!("harmonylite_nats_server_up").set(o.nats_server_running() as u8 as f64);
    counter!("harmonylite_nats_server_restarts").absolute(o.nats_server_restarts());
    gauge!("harmonylite_db_connected").set(o.db().connected as u8 as f64);
    gauge!("harmonylite_uptime_seconds").set(o.started.elapsed().as_secs_f64());
    let snap_at = get(&c.last_snapshot_ms);
    if snap_at > 0 {
        gauge!("harmonylite_last_snapshot_age_seconds")
            .set(now_ms().saturating_sub(snap_at) as f64 / 1000.0);
        gauge!("harmonylite_last_snapshot_duration_seconds")
            .set(get(&c.last_snapshot_duration_ms) as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_declared_once_and_documented() {
        let ops =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md"))
                .expect("docs/OPERATIONS.md");
        let names: Vec<&str> = Total::ALL
            .iter()
            .filter_map(|t| t.metric())
            .chain(METRICS.iter().map(|m| m.0))
            .collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "a metric declared twice: {names:?}"
        );
        for name in names {
            assert!(name.starts_with("harmonylite_"), "{name}");
            assert!(
                ops.contains(&format!("`{name}`")),
                "{name} is not in OPERATIONS.md's metrics list"
            );
        }
    }

    #[test]
    fn prefix_follows_namespace_and_subsystem() {
        let mut cfg = PrometheusConfig::default();
        assert_eq!(prefix(&cfg), "harmonylite_");
        cfg.subsystem = "db".into();
        assert_eq!(prefix(&cfg), "harmonylite_db_");
        cfg.namespace = String::new();
        assert_eq!(prefix(&cfg), "db_");
    }

    #[test]
    fn rename_changes_names_only() {
        let text = "# HELP harmonylite_published Rows harmonylite_x.\n# TYPE harmonylite_published counter\n\
                    harmonylite_published{node_id=\"1\"} 3\n";
        assert_eq!(rename(text, "harmonylite_"), text);
        assert_eq!(
            rename(text, "app_db_"),
            "# HELP app_db_published Rows harmonylite_x.\n# TYPE app_db_published counter\n\
             app_db_published{node_id=\"1\"} 3\n"
        );
    }
}
