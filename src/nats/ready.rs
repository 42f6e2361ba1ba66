//! Readiness: JetStream answers and, in a cluster, a meta leader exists.
//!
//! `$JS.API.INFO` (account info) only succeeds once the JetStream meta group has a leader; before that it
//! fails with "JetStream system temporarily unavailable", times out or finds no responders. We poll it until
//! it succeeds or `nats.ready_timeout_seconds` passes. On timeout the error says which route peers did not
//! accept a TCP connection and how many servers the embedded one is connected to (from its `/routez`).

use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::NatsError;

/// A query sent before the cluster has a meta leader goes unanswered: start with short attempts (the leader
/// is usually there within a few hundred milliseconds) and lengthen them for slow or loaded machines.
const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
/// The most queries [`wait_ready`] keeps waiting at once.
const MAX_ASKING: usize = 16;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a server connected to every peer still counts as forming its cluster.
const SETTLING: Duration = Duration::from_secs(5);

/// What readiness knows about the cluster, for progress and error messages.
pub(crate) struct Probe {
    /// `host:port` of each configured route peer (empty for a single node or external NATS).
    pub peers: Vec<String>,
    /// Monitoring base URL of the embedded server (`http://127.0.0.1:port`), when there is one.
    pub monitor_url: Option<String>,
    /// The embedded server's "cluster forming" flag (see `child_io::NatsLog`), set to false once it has a
    /// route to every peer.
    pub forming: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Ends the forming period of `probe`'s server a few seconds after it is connected to every configured peer
/// (nats-server still says it catches up with the meta leader then; looked at every 500 ms, for at most
/// `child_io::FORMING_AT_MOST`).
fn watch_forming(probe: &Probe) {
    use std::sync::atomic::Ordering;
    let Some(flag) = probe.forming.clone() else {
        return;
    };
    let (Some(monitor_url), false) = (probe.monitor_url.clone(), probe.peers.is_empty()) else {
        flag.store(false, Ordering::Relaxed);
        return;
    };
    let want = probe.peers.len() + 1;
    tokio::spawn(async move {
        let probe = Probe {
            peers: Vec::new(),
            monitor_url: Some(monitor_url),
            forming: None,
        };
        let until = Instant::now() + super::child_io::FORMING_AT_MOST;
        while Instant::now() < until {
            if connected_servers(&probe).await.is_some_and(|n| n >= want) {
                tokio::time::sleep(SETTLING).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        flag.store(false, Ordering::Relaxed);
    });
}

/// Waits until JetStream answers. Logs "cluster formed" and "JetStream ready" with the time taken.
///
/// A query sent before the meta leader exists is never answered, so queries overlap: a new one goes out every
/// [`POLL`] while earlier ones still wait (each for up to its own timeout, longer for later ones), and the first
/// answer ends the wait: the leader's election is seen within about [`POLL`] rather than after the timeout of
/// a query sent just before it.
pub(crate) async fn wait_ready(
    js: &Context,
    timeout: Duration,
    probe: &Probe,
) -> Result<(), NatsError> {
    use futures::StreamExt;
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let mut last_error = String::from("no answer yet");
    let mut logged_waiting = false;
    let mut attempt_timeout = FIRST_ATTEMPT_TIMEOUT;
    let mut asking = futures::stream::FuturesUnordered::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick(), if asking.len() < MAX_ASKING => {
                let attempt = attempt_timeout;
                attempt_timeout = (attempt_timeout * 3 / 2).min(ATTEMPT_TIMEOUT);
                asking.push(async move {
                    tokio::time::timeout(attempt, js.query_account())
                        .await
                        .map_err(|_| format!("no answer within {attempt:?}"))
                });
            }
            Some(answer) = asking.next() => match answer {
                Ok(Ok(_)) => {
                    if let Some(servers) = connected_servers(probe).await {
                        tracing::info!(
                            servers,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "cluster formed"
                        );
                    }
                    tracing::debug!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "JetStream ready"
                    );
                    watch_forming(probe);
                    return Ok(());
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(e) => last_error = e,
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(NatsError::NotReady {
                    waited_seconds: timeout.as_secs(),
                    last_error,
                    cluster: diagnose(probe).await,
                });
            }
        }
        if !logged_waiting && started.elapsed() > Duration::from_secs(5) {
            logged_waiting = true;
            tracing::info!(last_error = %last_error, "waiting for JetStream (cluster peers and a meta leader)");
        }
    }
}

/// A sentence about peers and connections, for the timeout error.
async fn diagnose(probe: &Probe) -> String {
    let mut parts = Vec::new();
    match connected_servers(probe).await {
        Some(n) => parts.push(format!(
            "{n} server(s) connected in the cluster, counting this one"
        )),
        None if probe.monitor_url.is_some() => {
            parts.push("cluster connections unknown (monitoring did not answer)".into())
        }
        None => {}
    }
    if !probe.peers.is_empty() {
        let mut unreachable = Vec::new();
        for peer in &probe.peers {
            let reachable =
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(peer.as_str()))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if !reachable {
                unreachable.push(peer.clone());
            }
        }
        if unreachable.is_empty() {
            parts.push(format!(
                "all {} -cluster-peers accept connections",
                probe.peers.len()
            ));
        } else {
            parts.push(format!(
                "-cluster-peers not reachable: {} (of {} configured)",
                unreachable.join(", "),
                probe.peers.len()
            ));
        }
    }
    if parts.is_empty() {
        "no cluster configured".into()
    } else {
        parts.join("; ")
    }
}

/// Distinct servers this one has routes to, plus itself; `None` without monitoring.
pub(crate) async fn connected_servers(probe: &Probe) -> Option<usize> {
    let base = probe.monitor_url.as_deref()?;
    let routez = http_get_json(base, "/routez").await?;
    let mut remotes: Vec<&str> = routez
        .get("routes")?
        .as_array()?
        .iter()
        .filter_map(|r| r.get("remote_id").and_then(|v| v.as_str()))
        .collect();
    remotes.sort_unstable();
    remotes.dedup();
    Some(remotes.len() + 1)
}

/// Minimal HTTP/1.0 GET of a JSON document from the embedded server's monitoring port (plain http only).
pub(crate) async fn http_get_json(base: &str, path: &str) -> Option<serde_json::Value> {
    let hostport = base.strip_prefix("http://")?.trim_end_matches('/');
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(hostport).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        let (head, json) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
            return None;
        }
        serde_json::from_str(json).ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT * 2, fetch)
        .await
        .ok()
        .flatten()
}
