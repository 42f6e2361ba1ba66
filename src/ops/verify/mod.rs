//! Verifying that the nodes hold the same data: each running node answers verify requests ([`serve`]), and
//! `-verify` ([`command`]) asks every node for its checksums at one agreed point of the streams and compares
//! them.
//!
//! A request carries a target position per stream (the streams' last sequences when the command sent it). A
//! node waits, at most [`MAX_WAIT`], until it has handled every stream up to the target and its own changes are
//! all in the streams at or below what it has handled, then computes its checksums in one read transaction
//! ([`checksum::snapshot`], on a blocking thread: replication goes on meanwhile) and replies with them and the
//! positions that transaction saw. Its data is then exactly "the streams up to those positions": nodes that
//! reply with the same positions must have the same checksums.
//!
//! A node's position per stream is the later of `__harmonylite__applied` in the read transaction and the
//! position it has handled in memory, read just before the transaction: the applier writes a position with the
//! rows it applies, but a message it skips as its own change coming back advances the position in memory only
//! (until the next applied transaction). Messages skipped that way changed nothing here, so the later of the two
//! still describes the data the transaction read.
//!
//! "Its own changes are in the streams": the change log holds no row above the id the publisher has had
//! acknowledged (read before the transaction), and every stream sequence at which JetStream stored one of the
//! node's own changes is at or below the node's position. Otherwise the node's data holds a change the other
//! nodes may not have at that position; it keeps waiting.

pub mod checksum;
pub mod command;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::counters::Counters;

/// Longest a node waits to reach a request's target before it answers anyway (`reached: false`).
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Pause between two looks while a node waits for its target.
const POLL: Duration = Duration::from_millis(25);

/// The subject every node listens on: `<subject_prefix>.ops.verify` (the change subjects are
/// `<subject_prefix>-<shard>`, so no stream captures it).
pub fn subject(cfg: &Config) -> String {
    format!("{}.ops.verify", cfg.nats.subject_prefix)
}

/// A verify request (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Which request of the command this is; echoed in the reply (late replies to an earlier one are ignored).
    pub round: u64,
    /// Stream → the position every node must have handled.
    pub target: BTreeMap<String, u64>,
    /// How long the node may wait for the target, in ms (capped at [`MAX_WAIT`]).
    pub wait_ms: u64,
}

/// One table in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReply {
    pub rows: u64,
    /// 32 hex digits.
    pub checksum: String,
}

/// A node's answer (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub node_id: u64,
    pub round: u64,
    /// Stream → position, as the read transaction saw the data.
    pub positions: BTreeMap<String, u64>,
    pub tables: BTreeMap<String, TableReply>,
    /// The positions reached the target and the node's own changes were all in the streams below them.
    pub reached: bool,
    /// Why no checksums could be computed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Answer verify requests until cancelled: one subscription per node, one task per request (each bounded by
/// [`MAX_WAIT`] and the time its checksums take), all stopped with the engine.
pub async fn serve(
    client: async_nats::Client,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    let subject = subject(&cfg);
    let mut sub = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot subscribe to verify requests; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut answering = JoinSet::new();
    // The requests taken (reply inbox, round): a command sends a round again until every node has answered,
    // and a node answers each round once. The oldest are forgotten.
    let mut taken: std::collections::VecDeque<(String, u64)> = std::collections::VecDeque::new();
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = sub.next() => m,
            Some(_) = answering.join_next(), if !answering.is_empty() => continue,
        };
        let Some(msg) = msg else { break };
        let Some(reply_to) = msg.reply else { continue };
        let req: Request = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable verify request ignored");
                continue;
            }
        };
        let key = (reply_to.to_string(), req.round);
        if taken.contains(&key) {
            continue;
        }
        if taken.len() >= 256 {
            taken.pop_front();
        }
        taken.push_back(key);
        let (client, cfg, counters) = (client.clone(), cfg.clone(), counters.clone());
        answering.spawn(async move {
            tracing::debug!(round = req.round, target = ?req.target, "verify request");
            let reply = answer(&cfg, &counters, &req).await;
            let body = serde_json::to_vec(&reply).expect("a reply serialises");
            if let Err(e) = client.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "cannot send the verify reply");
            }
        });
    }
    let _ = sub.unsubscribe().await;
}

/// What the node has handled and published, read before a read transaction.
struct Before {
    /// Change-log ids up to here are in the streams.
    published_upto: u64,
    /// Per shard: the highest sequence of the node's own changes (index 0 = shard 1).
    own: Vec<u64>,
    /// Per shard: the position handled in memory.
    handled: Vec<u64>,
}

impl Before {
    fn read(counters: &Counters) -> Before {
        // Acquire first: the stream sequences of every change up to `published_upto` are recorded before it.
        let published_upto = counters.published_upto.load(Ordering::Acquire);
        Before {
            published_upto,
            own: counters.published_seqs(),
            handled: counters.applied(),
        }
    }
}

/// Wait (bounded) for the request's target, then compute the checksums and reply.
async fn answer(cfg: &Arc<Config>, counters: &Counters, req: &Request) -> Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
    let streams: Vec<String> = (1..=cfg.replication_log.shards.get())
        .map(|s| cfg.stream_name(s))
        .collect();
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    let mut reply = Reply {
        node_id: cfg.node_id,
        round: req.round,
        positions: BTreeMap::new(),
        tables: BTreeMap::new(),
        reached: false,
        error: None,
    };
    loop {
        let last = tokio::time::Instant::now() >= deadline;
        let before = Before::read(counters);
        let in_memory = streams.iter().enumerate().all(|(i, s)| {
            let h = at(&before.handled, i);
            h >= req.target.get(s).copied().unwrap_or(0) && h >= at(&before.own, i)
        });
        if in_memory || last {
            let (path, include, exclude) = (
                cfg.db_path.clone(),
                cfg.include_tables.clone(),
                cfg.exclude_tables.clone(),
            );
            let (publish, upto) = (cfg.publish, before.published_upto);
            let r = tokio::task::spawn_blocking(move || {
                let conn = checksum::open(&path)?;
                if publish && !last && checksum::max_log_id(&conn)? > upto {
                    return Ok(None); // local changes not published yet: no use reading everything
                }
                checksum::snapshot(&conn, &include, &exclude).map(Some)
            })
            .await
            .unwrap_or_else(|e| Err(checksum::ChecksumError::Task(e.to_string())));
            match r {
                Ok(Some(snap)) => {
                    reply.error = None;
                    reply.positions = streams
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let db = snap.applied.get(s).copied().unwrap_or(0);
                            (s.clone(), db.max(at(&before.handled, i)))
                        })
                        .collect();
                    reply.tables = snap
                        .tables
                        .iter()
                        .map(|(t, sum)| {
                            let table = TableReply {
                                rows: sum.rows,
                                checksum: sum.hex(),
                            };
                            (t.clone(), table)
                        })
                        .collect();
                    reply.reached = streams.iter().enumerate().all(|(i, s)| {
                        let p = reply.positions[s];
                        p >= req.target.get(s).copied().unwrap_or(0) && p >= at(&before.own, i)
                    }) && (!publish || snap.max_log_id <= upto);
                    if reply.reached || last {
                        return reply;
                    }
                }
                Ok(None) => {}
                Err(e) if last => {
                    reply.error = Some(e.to_string());
                    return reply;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "verify checksums not computed yet; retrying")
                }
            }
        }
        tokio::time::sleep_until((tokio::time::Instant::now() + POLL).min(deadline)).await;
    }
}
