//! One durable pull consumer per node per shard, feeding the applier in stream order.
//!
//! The applied position lives in the user's database (written with the rows), so the consumer is (re)created
//! at every start from that position, and again from the last delivered position whenever a gap in stream
//! sequences shows a lost delivery. Errors never end the task: it reconnects with backoff until cancelled. While
//! it keeps failing (the stream has no leader, NATS is away), the warning is said when the trouble starts, then
//! summarised every [`crate::repeat::PERIOD`], and the recovery is said once (see [`crate::repeat`]).
//!
//! When the next change this node needs has already left the stream (it was away longer than the retention
//! caps), the consumer never delivers past the hole: it reports the gap (error line, the shard's gap gauge, and
//! a [`Gap`] to the node, which can restore a snapshot) and looks again every [`GAP_RECHECK`].

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::ShardInput;
use crate::counters::Counters;
use crate::repeat::{Repeats, Report};
use crate::retry::Backoff;

/// How long a start waits for the last run's consumer to answer a reset before it makes a new one.
const RESET_WAIT: Duration = Duration::from_millis(100);

/// How often a shard stopped at a gap looks at the stream again.
pub const GAP_RECHECK: Duration = Duration::from_secs(30);

/// A shard whose next needed change is no longer in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub shard: u32,
    pub stream: String,
    /// The first sequence this node needs.
    pub needed: u64,
    /// The first sequence the stream still has.
    pub first_available: u64,
}

/// Why a consumer stopped delivering; it is re-created from its position after any of these.
#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("cannot open the stream: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("cannot read the stream's state: {0}")]
    Info(#[from] jetstream::stream::InfoError),
    #[error("cannot create the consumer: {0}")]
    Create(#[from] jetstream::stream::ConsumerError),
    #[error("no answer within {} ms to {what}", .wait.as_millis())]
    NoAnswer { wait: Duration, what: &'static str },
    #[error("cannot start fetching: {0}")]
    Fetch(#[from] jetstream::consumer::StreamError),
    #[error("delivery failed: {0}")]
    Delivery(#[from] jetstream::consumer::pull::MessagesError),
    #[error("delivered message without JetStream metadata: {0}")]
    Metadata(Box<dyn std::error::Error + Send + Sync>),
    #[error("delivery gap: expected sequence {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("message stream ended")]
    Ended,
    #[error("stopped at a gap: needed sequence {}, the stream starts at {}", .0.needed, .0.first_available)]
    AtGap(Gap),
    #[error(
        "the copy of the stream on this node's own server is current: the consumer moves there"
    )]
    Home,
}

pub struct ShardConsumer {
    js: jetstream::Context,
    durable: String,
    input: ShardInput,
    counters: std::sync::Arc<Counters>,
    gaps: tokio::sync::mpsc::UnboundedSender<Gap>,
    /// The interruptions going on (one condition: this consumer cannot deliver).
    trouble: Repeats,
    /// Until the consumer first delivers: an interruption then is routine (a stream whose replicas are being
    /// raised as the cluster forms answers "insufficient resources" for a moment), said at DEBUG unless it
    /// lasts past [`STARTING`] (then at WARN, as the repeat).
    starting: Option<Instant>,
    /// Told once: sent when the consumer first pulls, dropped when its first attempt fails.
    first_pull: Option<tokio::sync::oneshot::Sender<()>>,
    /// Until the first attempt to consume: the last run's consumer may be reused.
    first_attempt: bool,
    /// Requests in a row that went unanswered while the consumer was being made (see [`ANSWER_WAIT`]).
    unanswered: u32,
    /// The last attempt's request creating the consumer went unanswered: the consumer it asked for may exist,
    /// with this attempt's very settings, so it is asked for again as it is (the same request is answered with
    /// that consumer) rather than deleted first, a second request whose answer may be lost too.
    create_unanswered: bool,
    /// How many consumers in a row were left on another server than the one their placement wants (every
    /// try landed elsewhere): each looks again later than the last, up to [`MISPLACED_CHECK_MAX`].
    misplaced: u32,
}

/// The suffix of a consumer's name while it is away from the node's own server.
const AWAY: &str = "-away";

/// How long a consumer away from home without pulls lasts (its node stopped).
const AWAY_INACTIVE: Duration = Duration::from_secs(300);

/// How often a consumer placed away from the node's own server (its copy of the stream was catching up) looks
/// whether it can move back.
const HOME_CHECK: Duration = Duration::from_secs(2);

/// The longest wait before a consumer left on another server than its placement wants is made again. Such a
/// consumer dies with that server: left there, a node would apply nothing from the moment the other server
/// dies until its pulls miss two heartbeats.
const MISPLACED_CHECK_MAX: Duration = Duration::from_secs(30);

/// How long a request that makes the consumer (deleting the last one, creating the new one) waits for its answer
/// the first time; doubled after each request in a row left unanswered, up to [`ANSWER_WAIT_MAX`]. In a cluster's
/// first second the answer to such a request can be lost (seen here: the consumer was made at once, its answer
/// never came, and the client's own timeout kept the node from receiving for ten seconds); asked again, it is
/// answered in milliseconds. Both can be made again without harm: a creation left unanswered is asked again
/// with the same settings (create-or-update answers with the consumer it made), a deletion deletes nothing more.
const ANSWER_WAIT: Duration = Duration::from_millis(300);
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(8);

const DELETING: &str = "deleting the last consumer";
const CREATING: &str = "creating the consumer";

/// `request`'s result, or [`ConsumeError::NoAnswer`] after `wait`.
async fn answered<T, E>(
    wait: Duration,
    what: &'static str,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ConsumeError>
where
    ConsumeError: From<E>,
{
    match tokio::time::timeout(wait, request).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConsumeError::NoAnswer { wait, what }),
    }
}

/// How long interruptions before the first delivery count as part of the start.
const STARTING: Duration = Duration::from_secs(30);

/// The key of [`ShardConsumer::trouble`]'s only condition.
const INTERRUPTED: &str = "interrupted";

impl ShardConsumer {
    /// The consumer named `durable` (this node's server name) feeding `input`; gaps are reported on `gaps`.
    /// The receiver resolves when the consumer first pulls, or fails when its first attempt does.
    pub fn new(
        js: jetstream::Context,
        durable: String,
        input: ShardInput,
        counters: std::sync::Arc<Counters>,
        gaps: tokio::sync::mpsc::UnboundedSender<Gap>,
    ) -> (ShardConsumer, tokio::sync::oneshot::Receiver<()>) {
        let (first_pull, pulling) = tokio::sync::oneshot::channel();
        let c = ShardConsumer {
            js,
            durable,
            input,
            counters,
            gaps,
            trouble: Repeats::default(),
            starting: Some(Instant::now()),
            first_pull: Some(first_pull),
            first_attempt: true,
            unanswered: 0,
            create_unanswered: false,
            misplaced: 0,
        };
        (c, pulling)
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.consume(&mut backoff) => r,
            };
            // Whatever the first attempt ended with, the start waits no longer; but a request left unanswered
            // is made again at once, and the start may wait for that (within its own bound).
            if let Err(ConsumeError::NoAnswer { what, .. }) = &result {
                self.unanswered += 1;
                self.create_unanswered = *what == CREATING;
            } else {
                self.first_pull = None;
            }
            match result {
                Ok(()) => return, // applier gone
                Err(ConsumeError::Home) => {
                    tracing::debug!(shard = self.input.shard, stream = %self.input.stream,
                        "the own server's copy of the stream is current: the consumer moves there");
                }
                Err(ConsumeError::AtGap(gap)) => {
                    tracing::error!(shard = gap.shard, stream = %gap.stream, needed = gap.needed,
                        first_available = gap.first_available, recheck_s = GAP_RECHECK.as_secs(),
                        "stopped at a gap: changes this node has not applied were removed from the stream \
                         (it was away longer than the retention caps); nothing newer is applied over the hole. \
                         A snapshot restore brings the node back");
                    self.counters.set_gap(gap.shard, Some(gap.needed));
                    let _ = self.gaps.send(gap);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(GAP_RECHECK) => {}
                    }
                }
                Err(e) => {
                    self.counters.error("consume", "interrupted");
                    let (shard, stream) = (self.input.shard, &self.input.stream);
                    let retry_in_ms = backoff.current().as_millis() as u64;
                    match self
                        .trouble
                        .observe(INTERRUPTED, &e.to_string(), Instant::now())
                    {
                        Some(Report::Started { .. })
                            if self.starting.is_some_and(|t| t.elapsed() < STARTING) =>
                        {
                            tracing::debug!(shard, stream = %stream, error = %e,
                            retry_in_ms, "consumer interrupted while starting; resuming")
                        }
                        Some(Report::Started { .. }) => {
                            tracing::warn!(shard, stream = %stream, error = %e,
                            retry_in_ms, "consumer interrupted; resuming")
                        }
                        Some(Report::Repeating { count, ongoing, .. }) => tracing::warn!(shard,
                            stream = %stream, error = %e, retry_in_ms, interruptions = count,
                            ongoing_s = ongoing.as_secs(), "consumer still interrupted; resuming"),
                        _ => tracing::debug!(shard, stream = %stream, error = %e, retry_in_ms,
                            "consumer interrupted; resuming"),
                    }
                    // Unanswered, the request has waited already: asked again at once.
                    if !matches!(e, ConsumeError::NoAnswer { .. }) && !backoff.sleep(&cancel).await
                    {
                        return;
                    }
                }
            }
        }
    }

    async fn consume(&mut self, backoff: &mut Backoff) -> Result<(), ConsumeError> {
        let input = &mut self.input;
        let began = Instant::now();
        let mut stream = self.js.get_stream(&input.stream).await?;
        let first = stream.info().await?.state.first_sequence;
        let looked = began.elapsed();
        // Certified: read from this node's positions entry at start, or later when it did not answer then.
        let certified = self
            .counters
            .certified()
            .get(input.shard as usize - 1)
            .copied()
            .unwrap_or(0);
        if input.next < first && first <= certified + 1 {
            tracing::info!(shard = input.shard, stream = %input.stream, from = input.next, to = first,
                "stepping over a purged range this node had handled before it stopped (its own changes)");
            input.next = first;
        }
        if input.next < first {
            return Err(ConsumeError::AtGap(Gap {
                shard: input.shard,
                stream: input.stream.clone(),
                needed: input.next,
                first_available: first,
            }));
        }
        self.counters.set_gap(input.shard, None);
        let next = input.next.max(1);
        let place = Placement::of(stream.cached_info().cluster.as_ref(), &self.durable);
        // Elsewhere while the stream has fewer servers than it is made for (its replicas are being raised as
        // the cluster forms): the own server may be among them soon, and the consumer moves there then.
        let growing = matches!(place, Placement::Elsewhere) && stream_growing(stream.cached_info());
        // Away from the own server the consumer has another name: the one there may not answer yet (its server
        // has just started), and deleting it would wait for that server.
        let name = if place.away() {
            format!("{}{AWAY}", self.durable)
        } else {
            self.durable.clone()
        };
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            // One left behind away from home (the node stopped) goes by itself.
            inactive_threshold: if place.away() {
                AWAY_INACTIVE
            } else {
                Duration::ZERO
            },
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            ack_policy: consumer::AckPolicy::None,
            num_replicas: if place.alone() { 1 } else { 0 },
            memory_storage: place.alone(),
            ..Default::default()
        };
        // At a process start, the consumer left by the last run (its pull requests gone with that run's
        // connection) is moved to this start's position: one request its leader answers.
        let reset = if self.first_attempt {
            reset_existing(&self.js, &mut stream, &self.durable, next, &config, &place).await
        } else {
            None
        };
        self.first_attempt = false;
        let reused = reset.is_some();
        let deleted;
        let mut made = 0;
        let wait = ANSWER_WAIT
            .saturating_mul(1 << self.unanswered.min(8))
            .min(ANSWER_WAIT_MAX);
        let keep = std::mem::take(&mut self.create_unanswered);
        let consumer: consumer::PullConsumer = match reset {
            Some(c) => {
                deleted = began.elapsed();
                c
            }
            None => {
                if !keep {
                    let _ = answered(wait, DELETING, stream.delete_consumer(&name)).await;
                }
                deleted = began.elapsed();
                loop {
                    let c =
                        answered(wait, CREATING, stream.create_consumer(config.clone())).await?;
                    made += 1;
                    let Placement::OwnServer { peers, .. } = place else {
                        break c;
                    };
                    let leader = c
                        .cached_info()
                        .cluster
                        .as_ref()
                        .and_then(|c| c.leader.clone());
                    if place.wants(leader.as_deref(), &self.durable) || leader.is_none() {
                        break c;
                    }
                    if made >= PLACEMENT_TRIES_PER_PEER * peers {
                        tracing::warn!(shard = input.shard, stream = %input.stream, tries = made,
                            leader = leader.as_deref().unwrap_or("unknown"), away = place.away(),
                            "the consumer could not be placed where it should be; it stays where it is");
                        break c;
                    }
                    // The server picks the one replica's place at random among the stream's servers: made
                    // again until it is where it should be.
                    let _ = stream.delete_consumer(&name).await;
                }
            }
        };
        let created = began.elapsed();
        let leader = consumer
            .cached_info()
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone());
        let misplaced = !place.away() && !place.wants(leader.as_deref(), &self.durable);
        self.misplaced = if misplaced { self.misplaced + 1 } else { 0 };
        // Pieces of large values are large messages: a pull brings two megabytes at once, at least two of the
        // largest messages the server takes.
        let pull_bytes = (2usize << 20).max(2 * self.js.client().server_info().max_payload);
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .max_bytes_per_batch(pull_bytes)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        tracing::debug!(
            shard = input.shard,
            from = input.next,
            stream_info_ms = looked.as_millis() as u64,
            old_deleted_ms = deleted.as_millis() as u64,
            created_ms = created.as_millis() as u64,
            pulling_ms = began.elapsed().as_millis() as u64,
            reused,
            made,
            server = leader.as_deref().unwrap_or("unknown"),
            misplaced,
            growing,
            "consumer started"
        );
        self.unanswered = 0;
        if let Some(told) = self.first_pull.take() {
            let _ = told.send(());
        }
        let starting = self.starting.take().is_some();
        if let Some(Report::Ended { total, lasted, .. }) =
            self.trouble.resolve(INTERRUPTED, Instant::now())
        {
            if starting && lasted < STARTING {
                tracing::debug!(shard = input.shard, stream = %input.stream, interruptions = total,
                    after_s = lasted.as_secs(), "consumer started after interruptions");
            } else {
                tracing::info!(shard = input.shard, stream = %input.stream, interruptions = total,
                    after_s = lasted.as_secs(), "consumer resumed");
            }
        }
        backoff.reset();
        // Away (or elsewhere while the stream grows), it looks whether the own copy is current yet; misplaced,
        // whether it can be placed well now (the same look: the own copy is current), less often each time it
        // could not.
        let mut look_home = if place.away() || growing {
            Some(tokio::time::Instant::now() + HOME_CHECK)
        } else if misplaced {
            let wait = (HOME_CHECK * 2u32.saturating_pow(self.misplaced.min(8) - 1))
                .min(MISPLACED_CHECK_MAX);
            Some(tokio::time::Instant::now() + wait)
        } else {
            None
        };
        loop {
            let m = match look_home {
                None => messages.next().await,
                Some(at) => tokio::select! {
                    m = messages.next() => m,
                    _ = tokio::time::sleep_until(at) => {
                        let info = stream.info().await?;
                        let now = Placement::of(info.cluster.as_ref(), &self.durable);
                        // Grown without the own server (external NATS), or a single server: nothing more to
                        // look for.
                        let look_again = match now {
                            Placement::OwnServer { .. } => true,
                            Placement::Elsewhere => stream_growing(info),
                            Placement::Standalone => false,
                        };
                        if matches!(now, Placement::OwnServer { current: true, .. }) {
                            drop(messages);
                            let _ = stream.delete_consumer(&name).await;
                            return Err(ConsumeError::Home);
                        }
                        look_home = look_again.then(|| tokio::time::Instant::now() + HOME_CHECK);
                        continue;
                    }
                },
            };
            let Some(m) = m else { break };
            let m = m?;
            let seq = m.info().map_err(ConsumeError::Metadata)?.stream_sequence;
            if seq < input.next {
                continue;
            }
            if seq > input.next {
                return Err(ConsumeError::Gap {
                    expected: input.next,
                    got: seq,
                });
            }
            tracing::trace!(shard = input.shard, seq, "delivered");
            let kib = (m.message.payload.len() / 1024 + 1).min(super::IN_TRANSIT_KIB as usize);
            let Ok(room) = input.room.clone().acquire_many_owned(kib as u32).await else {
                return Ok(());
            };
            let incoming = super::Incoming {
                seq,
                payload: m.message.payload.clone(),
                _room: Some(room),
            };
            if input.tx.send(incoming).await.is_err() {
                return Ok(());
            }
            input.wake.notify_one();
            input.next = seq + 1;
        }
        Err(ConsumeError::Ended)
    }
}

/// Where a shard's consumer lives. With a copy of the stream on this node's own server, the consumer is there
/// alone (one replica, in memory): no election to wait for when it is made, and it dies only with this node
/// (one placed on a peer's server would stop delivering when that peer dies). Without one (external NATS, a
/// leaf node) it has the stream's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    /// A single server, this node's own or not: nothing to place.
    Standalone,
    /// The stream has a copy on this node's own server, among `peers` servers; `current` when that copy is up
    /// to date (not when the server has just started after missing changes: a consumer there would deliver
    /// only as fast as the copy catches up, so it is placed on another server until then).
    OwnServer { peers: usize, current: bool },
    /// The stream lives on other servers only.
    Elsewhere,
}

/// How many times a new consumer is made per stream server before one elsewhere is kept (the chance that
/// none lands on the own server is then below (1 - 1/n)^(4n), under 2 % for any n).
const PLACEMENT_TRIES_PER_PEER: usize = 4;

impl Placement {
    /// From the stream's cluster part of its info (none: a single server).
    fn of(cluster: Option<&jetstream::stream::ClusterInfo>, server: &str) -> Placement {
        let Some(cluster) = cluster else {
            return Placement::Standalone;
        };
        let mut peers: Vec<&str> = cluster.replicas.iter().map(|p| p.name.as_str()).collect();
        peers.extend(cluster.leader.as_deref());
        if peers.len() <= 1 && cluster.leader.is_none() {
            return Placement::Standalone;
        }
        if peers.contains(&server) {
            let current = cluster.leader.as_deref() == Some(server)
                || cluster
                    .replicas
                    .iter()
                    .any(|p| p.name == server && p.current && !p.offline);
            Placement::OwnServer {
                peers: peers.len(),
                current,
            }
        } else {
            Placement::Elsewhere
        }
    }

    /// The consumer has one replica, in memory.
    fn alone(&self) -> bool {
        !matches!(self, Placement::Elsewhere)
    }

    /// Whether a consumer whose one replica's server is `leader` is where this placement wants it: on the own
    /// server once its copy is current, on another one before.
    fn wants(&self, leader: Option<&str>, own: &str) -> bool {
        match self {
            Placement::OwnServer { current: true, .. } => leader == Some(own),
            Placement::OwnServer { current: false, .. } => leader.is_some_and(|l| l != own),
            Placement::Standalone | Placement::Elsewhere => true,
        }
    }

    /// The consumer is away from the own server for now and goes back once the copy there is current.
    fn away(&self) -> bool {
        matches!(self, Placement::OwnServer { current: false, .. })
    }
}

/// Whether the stream has fewer servers than its configured replicas: they are being raised (the cluster is
/// forming) or a server is missing.
fn stream_growing(info: &jetstream::stream::Info) -> bool {
    info.cluster.as_ref().is_some_and(|c| {
        c.replicas.len() + usize::from(c.leader.is_some()) < info.config.num_replicas
    })
}

/// This node's consumer on `stream` (named in `wanted`) as the last run left it, moved to deliver from `next` on
/// (`$JS.API.CONSUMER.RESET`, nats-server 2.14 and later): `None` when there is none, its settings are not
/// `wanted` (a position below the one it was made with included), it is not where `place` wants it for the
/// node whose server is `server`, or it does
/// not answer within [`RESET_WAIT`] (it is on this node's own server, which has just started and is still
/// catching up the stream; then a new one is made).
async fn reset_existing(
    js: &jetstream::Context,
    stream: &mut jetstream::stream::Stream,
    server: &str,
    next: u64,
    wanted: &consumer::pull::Config,
    place: &Placement,
) -> Option<consumer::PullConsumer> {
    #[derive(serde::Deserialize)]
    struct Reset {
        reset_seq: u64,
        #[serde(flatten)]
        info: consumer::Info,
    }
    let name = stream.cached_info().config.name.clone();
    let consumer_name = wanted.durable_name.as_deref()?;
    let same = |c: &consumer::Config| {
        c.durable_name.as_deref() == Some(consumer_name)
            && c.inactive_threshold == wanted.inactive_threshold
            && c.ack_policy == consumer::AckPolicy::None
            && c.num_replicas == wanted.num_replicas
            && c.memory_storage == wanted.memory_storage
            && matches!(
                c.deliver_policy,
                consumer::DeliverPolicy::ByStartSequence { start_sequence } if start_sequence <= next
            )
            && c.filter_subject.is_empty()
            && c.filter_subjects.is_empty()
    };
    let placed = |i: &consumer::Info| {
        place.wants(i.cluster.as_ref().and_then(|c| c.leader.as_deref()), server)
    };
    let reset = async {
        // The server answers a reset of a consumer that does not exist with silence: ask about it first (the
        // stream's leader says "not found" at once).
        let info = stream
            .consumer_info(consumer_name)
            .await
            .map_err(|e| e.to_string())?;
        if !same(&info.config) {
            return Err("other settings".to_string());
        }
        if !placed(&info) {
            return Err("on another server".to_string());
        }
        let subject = format!("CONSUMER.RESET.{name}.{consumer_name}");
        let body = serde_json::json!({ "seq": next });
        match js
            .request::<_, _, jetstream::response::Response<Reset>>(subject, &body)
            .await
        {
            Ok(jetstream::response::Response::Ok(a))
                if a.reset_seq == next && same(&a.info.config) =>
            {
                Ok(a)
            }
            Ok(jetstream::response::Response::Ok(a)) => {
                Err(format!("reset to {} instead of {next}", a.reset_seq))
            }
            Ok(jetstream::response::Response::Err { error }) => Err(error.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let answer = match tokio::time::timeout(RESET_WAIT, reset).await {
        Ok(Ok(a)) => a,
        Ok(Err(why)) => {
            tracing::debug!(stream = %name, why, "the last run's consumer not reused");
            return None;
        }
        Err(_) => {
            tracing::debug!(stream = %name, wait_ms = RESET_WAIT.as_millis() as u64,
                "the last run's consumer not reused: no answer");
            return None;
        }
    };
    let config = <consumer::pull::Config as consumer::FromConsumer>::try_from_consumer_config(
        answer.info.config.clone(),
    )
    .ok()?;
    Some(consumer::Consumer::new(config, answer.info, js.clone()))
}

#[cfg(test)]
mod tests {
    use super::Placement;

    fn cluster(json: &str) -> async_nats::jetstream::stream::ClusterInfo {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_consumer_is_placed_on_the_own_server_when_it_holds_a_copy() {
        let three = cluster(
            r#"{"leader":"harmonylite-node-2","replicas":[
                {"name":"harmonylite-node-1","current":true,"active":1000},
                {"name":"harmonylite-node-3","current":false,"active":1000}]}"#,
        );
        // The leader's copy and a current follower's: the consumer goes there.
        for own in ["harmonylite-node-1", "harmonylite-node-2"] {
            let p = Placement::of(Some(&three), own);
            assert_eq!(
                p,
                Placement::OwnServer {
                    peers: 3,
                    current: true
                },
                "{own}"
            );
            assert!(p.alone() && !p.away());
            assert!(p.wants(Some(own), own));
            assert!(!p.wants(Some("harmonylite-node-3"), own));
        }
        // A follower still catching up: the consumer goes elsewhere until it is current.
        let behind = Placement::of(Some(&three), "harmonylite-node-3");
        assert_eq!(
            behind,
            Placement::OwnServer {
                peers: 3,
                current: false
            }
        );
        assert!(behind.alone() && behind.away());
        assert!(behind.wants(Some("harmonylite-node-1"), "harmonylite-node-3"));
        assert!(!behind.wants(Some("harmonylite-node-3"), "harmonylite-node-3"));
        // A leaf node or a client of external NATS: the stream is on other servers.
        assert_eq!(
            Placement::of(Some(&three), "harmonylite-node-4"),
            Placement::Elsewhere
        );
        assert!(!Placement::Elsewhere.alone());
        // One server without clustering.
        assert_eq!(
            Placement::of(None, "harmonylite-node-1"),
            Placement::Standalone
        );
        assert!(Placement::Standalone.alone());
        assert!(Placement::Standalone.wants(Some("anyone"), "harmonylite-node-1"));
        // A clustered stream with one replica.
        let one = cluster(r#"{"leader":"harmonylite-node-1"}"#);
        assert_eq!(
            Placement::of(Some(&one), "harmonylite-node-1"),
            Placement::OwnServer {
                peers: 1,
                current: true
            }
        );
        assert_eq!(
            Placement::of(Some(&one), "harmonylite-node-2"),
            Placement::Elsewhere
        );
    }
}
