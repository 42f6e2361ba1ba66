//! Replicas for the node's streams and buckets when not every server is up.
//!
//! A three-node cluster whose third server has never run (it failed at the first start) cannot place a
//! stream of three replicas: JetStream answers "no suitable peers for placement". Rather than wait for that
//! server, streams and buckets are created with the replicas the servers up can hold ([`create`]), never
//! fewer than a majority of those wanted, and raised to the wanted count once the missing servers join
//! ([`raise`], run for the node's life).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

/// Whether a JetStream refusal says that too few servers are up to place the replicas asked for.
pub fn too_few_servers(error: &str) -> bool {
    error.contains("no suitable peers")
}

/// The fewest replicas a stream is created with when `wanted` cannot be placed: a majority of `wanted`.
pub fn fewest(wanted: usize) -> usize {
    wanted / 2 + 1
}

/// How long a creation asks again for the wanted replicas before placing fewer.
const SERVERS_JOINING: Duration = Duration::from_secs(3);

/// A creation of this process had to place fewer replicas than wanted.
static PLACED_FEWER: AtomicBool = AtomicBool::new(false);

/// Runs `create(replicas)` with `wanted` replicas (asked again for [`SERVERS_JOINING`] while the servers up
/// cannot place them), then with one fewer each time, down to [`fewest`]`(wanted)`. A creation with fewer
/// replicas than wanted is logged; [`raise`] brings it to `wanted` later.
pub async fn create<T, E, F, Fut>(what: &str, wanted: usize, mut create: F) -> Result<T, String>
where
    E: std::fmt::Display,
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut replicas = wanted.max(1);
    let started = std::time::Instant::now();
    loop {
        match create(replicas).await {
            Ok(t) => {
                // Routine while a cluster starts: the raise adds the replicas as the servers join (and
                // says so); a server that never comes is named by readiness and the status views.
                if replicas < wanted {
                    tracing::info!(
                        what,
                        replicas,
                        wanted,
                        "created with {replicas} of {wanted} replicas: not every server is up; the missing \
                         replicas are added when the servers join"
                    );
                }
                return Ok(t);
            }
            Err(e) => {
                let e = e.to_string();
                if !too_few_servers(&e) || replicas <= fewest(wanted) {
                    return Err(e);
                }
                // Servers of a cluster that has just formed join JetStream's placement a moment after their
                // routes: ask again for a few seconds before placing fewer replicas (a stream of two replicas
                // stalls if one of its two servers dies before the raise). Once a creation had to place
                // fewer, the servers are taken to be missing and later creations do not wait.
                if !PLACED_FEWER.load(Ordering::Relaxed) && started.elapsed() < SERVERS_JOINING {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    continue;
                }
                PLACED_FEWER.store(true, Ordering::Relaxed);
                replicas -= 1;
            }
        }
    }
}

/// Opens key-value bucket `bucket`, or creates it (history 1; `max_age` zero: entries do not expire) with
/// `replicas` replicas as [`create`] does.
pub async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<jetstream::kv::Store, super::KvError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = create(bucket, replicas, |num_replicas| {
        js.create_key_value(jetstream::kv::Config {
            bucket: bucket.to_string(),
            description: description.to_string(),
            history: 1,
            max_age,
            num_replicas,
            ..Default::default()
        })
    })
    .await;
    match created {
        // Another node created it in the meantime (with the replicas its servers could place then).
        Err(e) if e.contains("already in use") => js
            .get_key_value(bucket)
            .await
            .map_err(|_| super::KvError::open(bucket, e)),
        other => other.map_err(|e| super::KvError::open(bucket, e)),
    }
}

/// JetStream's stream behind key-value bucket `bucket`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// JetStream's stream behind object store `bucket`.
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// How often [`raise`] looks.
const EVERY: Duration = Duration::from_secs(5);

/// Every few seconds, each stream of `streams` (name, wanted replicas) that exists with fewer replicas than
/// wanted is updated to have them. JetStream refuses while the servers are missing; the next look tries again.
/// Once every stream is at its count (or does not exist) the task ends: a stream at its count is not looked at
/// again.
pub async fn raise(
    js: jetstream::Context,
    mut streams: Vec<(String, usize)>,
    cancel: CancellationToken,
) {
    loop {
        let mut below = Vec::new();
        for (name, wanted) in streams {
            if !raise_one(&js, &name, wanted).await {
                below.push((name, wanted));
            }
        }
        streams = below;
        if streams.is_empty() {
            tracing::debug!("every stream has its replicas; no more looks");
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Whether stream `name` needs no more looks: it has (now) at least `wanted` replicas, or it does not exist
/// (a bucket made later, on first use, is created with its replicas by [`create`]; one made while servers
/// are missing is raised at the node's next start).
async fn raise_one(js: &jetstream::Context, name: &str, wanted: usize) -> bool {
    let mut stream = match tokio::time::timeout(EVERY, js.get_stream(name)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
        }
        _ => return false,
    };
    let Ok(Ok(info)) = tokio::time::timeout(EVERY, stream.info()).await else {
        return false;
    };
    let has = info.config.num_replicas;
    if has >= wanted {
        return true;
    }
    let mut config = info.config.clone();
    config.num_replicas = wanted;
    match tokio::time::timeout(EVERY, js.update_stream(config)).await {
        Ok(Ok(_)) => {
            tracing::info!(
                stream = name,
                replicas = wanted,
                was = has,
                "replicas raised"
            );
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(stream = name, replicas = wanted, was = has, error = %e,
                "replicas not raised yet");
            false
        }
        Err(_) => {
            tracing::debug!(stream = name, "replicas not raised yet: no answer");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_at_least() {
        assert_eq!((fewest(1), fewest(2), fewest(3), fewest(5)), (1, 2, 2, 3));
    }

    #[tokio::test]
    async fn fewer_replicas_only_when_servers_are_missing() {
        let mut tried = Vec::new();
        let r = create("s", 3, |n| {
            tried.push(n);
            async move {
                if n > 2 {
                    Err("no suitable peers for placement".to_string())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        // The wanted count is asked again while the servers may still be joining, then one fewer.
        assert!(tried.iter().filter(|&&n| n == 3).count() >= 2, "{tried:?}");
        tried.dedup();
        assert_eq!((r, tried), (Ok(2), vec![3, 2]));

        // Once fewer had to be placed, the next creation does not wait.
        let mut tried = Vec::new();
        let r: Result<usize, _> = create("s", 3, |n| {
            tried.push(n);
            async move { Err::<usize, _>("no suitable peers for placement".to_string()) }
        })
        .await;
        assert_eq!(tried, vec![3, 2], "never below a majority");
        assert!(r.is_err());

        let mut tried = Vec::new();
        let r: Result<usize, _> = create("s", 3, |n| {
            tried.push(n);
            async move { Err::<usize, _>("timed out".to_string()) }
        })
        .await;
        assert_eq!(
            (r.is_err(), tried),
            (true, vec![3]),
            "other errors as they are"
        );
    }
}
