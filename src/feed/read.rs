//! Reading the feed, for the `-changes` command and `GET /changes`: an ordered reader of the feed stream from a
//! cursor (or its oldest record, or only new ones), for some tables or all, that ends at the feed's end as it
//! was when it started or follows it.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::Cursor;
use crate::config::Config;

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record the feed holds.
    Oldest,
    /// Only records written from now on.
    Now,
    /// Right after this record.
    After(Cursor),
}

impl std::str::FromStr for Start {
    type Err = String;
    fn from_str(s: &str) -> Result<Start, String> {
        match s {
            "now" => Ok(Start::Now),
            _ => s.parse().map(Start::After),
        }
    }
}

/// Why the feed cannot be read as asked (the `-changes` command exits 1 with it).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "the change feed is not enabled: set [feed] enabled = true on the nodes (docs/FEED.md)"
    )]
    NotEnabled,
    #[error(
        "the feed no longer holds the records after cursor {cursor}: its oldest record is {oldest} (the records in between left it with [feed] max_age_seconds or max_bytes); read from the oldest (no -from) or from now (-from now)"
    )]
    Expired { cursor: Cursor, oldest: Cursor },
    #[error(
        "the change feed's stream {0} does not exist yet: no node with [feed] enabled has started writing it"
    )]
    NotWritten(String),
    #[error("cannot read the change feed: {0}")]
    Nats(String),
}

fn nats(e: impl std::fmt::Display) -> ReadError {
    ReadError::Nats(e.to_string())
}

/// How long a reader waits for its next record before it checks that the feed has none for it.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// Feed messages a reader's consumer fetches at once.
const READ_AHEAD: i64 = 16;

/// An open reader of the feed.
pub struct Reader {
    stream: jetstream::stream::Stream,
    filter_subjects: Vec<String>,
    messages: consumer::pull::Ordered,
    follow: bool,
    /// Nothing to read when the reader ends at the feed's end.
    done: bool,
    /// The feed's sequence of the last message read (or of the feed's end before the first one, from now).
    last: u64,
    /// The message read last, while it has records not given yet.
    current: Option<Current>,
    /// Records of the first message (`skip.0`) up to line `skip.1` were given before: left out.
    skip: Option<(u64, u32)>,
}

impl Reader {
    /// Open a reader from `start`, for `tables` (all when empty); `follow`: keep reading new records, else end
    /// at the feed's end as it is now.
    pub async fn open(
        js: &jetstream::Context,
        cfg: &Config,
        start: Start,
        tables: &[String],
        follow: bool,
    ) -> Result<Reader, ReadError> {
        if !cfg.feed.enabled {
            return Err(ReadError::NotEnabled);
        }
        let mut stream = match js.get_stream(super::stream_name(cfg)).await {
            Ok(s) => s,
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Err(ReadError::NotWritten(super::stream_name(cfg)));
            }
            Err(e) => return Err(nats(e)),
        };
        let state = stream.info().await.map_err(nats)?.state.clone();
        let last = match start {
            Start::Oldest => state.first_sequence.saturating_sub(1),
            Start::Now => state.last_sequence,
            Start::After(c) => first_wanted(c) - 1,
        };
        let deliver_policy = match start {
            Start::Oldest => consumer::DeliverPolicy::All,
            Start::Now => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            },
            Start::After(c) => {
                // An empty stream's first sequence is one past its last.
                if first_wanted(c) < state.first_sequence {
                    return Err(ReadError::Expired {
                        cursor: c,
                        oldest: Cursor {
                            seq: state.first_sequence,
                            line: Some(0),
                        },
                    });
                }
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first_wanted(c),
                }
            }
        };
        let filter_subjects: Vec<String> = tables.iter().map(|t| super::subject(cfg, t)).collect();
        let (messages, pending) = ordered(&stream, deliver_policy, &filter_subjects).await?;
        let done = !follow && (start == Start::Now || pending == 0);
        let skip = match start {
            Start::After(Cursor {
                seq,
                line: Some(line),
            }) => Some((seq, line)),
            _ => None,
        };
        Ok(Reader {
            stream,
            filter_subjects,
            messages,
            follow,
            done,
            last,
            current: None,
            skip,
        })
    }

    /// Whether the feed holds a record for this reader past the last one given: the feed's last sequence, or,
    /// for some tables only, the last of each table's subject.
    async fn more_for_me(&mut self) -> Result<bool, ReadError> {
        if self.filter_subjects.is_empty() {
            let last = self.stream.info().await.map_err(nats)?.state.last_sequence;
            return Ok(last > self.last);
        }
        for subject in &self.filter_subjects {
            match self.stream.direct_get_last_for_subject(subject).await {
                Ok(m) if m.sequence > self.last => return Ok(true),
                Ok(_) => {}
                // No record of that table yet.
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(nats(e)),
            }
        }
        Ok(false)
    }

    /// The next message of the consumer; when none comes for [`STALL_CHECK`] while the feed holds one for this
    /// reader, the consumer (whose one replica may have been on a server that stopped) is made again after the
    /// last record given.
    async fn next_message(&mut self) -> Option<Result<jetstream::Message, ReadError>> {
        loop {
            match tokio::time::timeout(STALL_CHECK, self.messages.next()).await {
                Ok(m) => return m.map(|m| m.map_err(nats)),
                Err(_) => match self.more_for_me().await {
                    Ok(false) => {}
                    Ok(true) => {
                        let policy = consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: self.last + 1,
                        };
                        match ordered(&self.stream, policy, &self.filter_subjects).await {
                            Ok((m, _)) => self.messages = m,
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }

    /// The next record as one JSON line (no newline) with its cursor; `None` at the feed's end when not
    /// following.
    pub async fn next(&mut self) -> Option<Result<(Vec<u8>, Cursor), ReadError>> {
        loop {
            if let Some(c) = &mut self.current
                && let Some(record) = c.next_record()
            {
                return Some(Ok(record));
            }
            self.current = None;
            if self.done {
                return None;
            }
            let m = match self.next_message().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            let (seq, pending) = match m.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(e) => return Some(Err(nats(e))),
            };
            if !self.follow && pending == 0 {
                self.done = true;
            }
            self.last = seq;
            // A message the feed's writer did not write (another program published on the feed's subjects):
            // not a record, passed over.
            if m.message
                .headers
                .as_ref()
                .is_none_or(|h| h.get(super::writer::NEXT).is_none())
            {
                tracing::debug!(
                    seq,
                    "passed over a feed message the feed's writer did not write"
                );
                continue;
            }
            let mut c = Current {
                seq,
                payload: m.message.payload,
                at: 0,
                line: 0,
            };
            // Resuming inside a message: the records up to the cursor's were given before.
            if let Some((s, line)) = self.skip.take()
                && s == seq
            {
                for _ in 0..=line {
                    if c.next_line().is_none() {
                        break;
                    }
                }
            }
            self.current = Some(c);
        }
    }

    /// Whether the next record is at hand (in the message read last): `next` gives it without waiting.
    pub fn has_buffered(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.at < c.payload.len())
    }
}

/// A feed message being read: its records one per line.
struct Current {
    seq: u64,
    payload: bytes::Bytes,
    /// Where its next line starts.
    at: usize,
    /// The next line's number (from 0).
    line: u32,
}

impl Current {
    /// The next line (empty lines skipped) and its number.
    fn next_line(&mut self) -> Option<(std::ops::Range<usize>, u32)> {
        while self.at < self.payload.len() {
            let start = self.at;
            let end = self.payload[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.payload.len(), |p| start + p);
            self.at = end + 1;
            if end > start {
                let n = self.line;
                self.line += 1;
                return Some((start..end, n));
            }
        }
        None
    }

    /// The next record with its cursor (the message's last record's cursor names the whole message).
    fn next_record(&mut self) -> Option<(Vec<u8>, Cursor)> {
        let (range, n) = self.next_line()?;
        // Empty lines after the last record do not count.
        let last = self.payload[self.at.min(self.payload.len())..]
            .iter()
            .all(|&b| b == b'\n');
        let cursor = Cursor {
            seq: self.seq,
            line: (!last).then_some(n),
        };
        let body = &self.payload[range];
        let body = body.strip_suffix(b"}").unwrap_or(body);
        let mut line = Vec::with_capacity(body.len() + 32);
        super::record::close(body, &cursor.to_string(), &mut line);
        Some((line, cursor))
    }
}

/// The first feed message a reader resuming after `c` needs: `c`'s own when records of it come after `c`.
fn first_wanted(c: Cursor) -> u64 {
    match c.line {
        Some(_) => c.seq,
        None => c.seq + 1,
    }
}

/// An ordered consumer of the feed stream and how many records it has to deliver now.
async fn ordered(
    stream: &jetstream::stream::Stream,
    deliver_policy: consumer::DeliverPolicy,
    filter_subjects: &[String],
) -> Result<(consumer::pull::Ordered, u64), ReadError> {
    let c = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            filter_subjects: filter_subjects.to_vec(),
            // A feed message holds up to 256 KiB of records: the messages fetched ahead of the reader stay a few
            // MiB, however far behind it is.
            max_batch: READ_AHEAD,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let pending = c.cached_info().num_pending;
    Ok((c.messages().await.map_err(nats)?, pending))
}
