//! The change feed (`[feed]`, `docs/FEED.md`): every row change of the cluster once, in the cluster's order, as
//! JSON records (one per line, several per NATS message) in a stream of its own (`harmonylite-feed`) with its
//! own retention.
//!
//! One node at a time writes it ([`writer`], under a lease): it reads the change streams from where the feed
//! ends and publishes one record per row change, the records of one table in one change-stream message together
//! in one feed message, each message under an id naming its source (stream position and first row), each
//! expecting the previous one as the stream's last (so a message lost in a failure stops the ones after it, and
//! the writer resumes from what the feed holds). Readers ([`read`]) follow the feed: the
//! `-changes` command, `GET /changes` on the health server, and any NATS client with a consumer of its own.

pub mod read;
pub mod record;
pub mod writer;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::Config;

/// The feed stream's name: `harmonylite-feed` with the default `stream_prefix` (`harmonylite-changes`),
/// `<stream_prefix>-feed` for a prefix not ending in `-changes`.
pub fn stream_name(cfg: &Config) -> String {
    format!("{}-feed", base(cfg))
}

/// The subjects' first tokens: `harmonylite.feed` with the default `stream_prefix`.
pub fn subject_prefix(cfg: &Config) -> String {
    format!("{}.feed", base(cfg))
}

fn base(cfg: &Config) -> &str {
    let p = &cfg.nats.stream_prefix;
    p.strip_suffix("-changes").unwrap_or(p)
}

/// The subject of a change to `table`: `harmonylite.feed.<table as a token>` ([`table_token`]).
pub fn subject(cfg: &Config, table: &str) -> String {
    format!("{}.{}", subject_prefix(cfg), table_token(table))
}

/// A table name as one subject token: ASCII letters, digits, `_` and `-` as they are; every other byte of
/// its UTF-8 as `%` and two upper-case hex digits (so `.`, `*`, `>`, spaces and `%` itself never appear).
pub fn table_token(table: &str) -> String {
    let mut out = String::with_capacity(table.len());
    for b in table.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A position in the feed as readers see it, opaque to them: the record at line `line` (from 0) of the feed
/// message at stream sequence `seq`. Giving it back resumes right after that record.
///
/// Written `1.<seq>` for a message's last record (resuming goes on with the next message, and needs nothing of
/// this one: a cursor of a message the feed no longer holds is still good when the next one is there) and
/// `1.<seq>.<line>` for the others. The first field is the cursor's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    /// `None`: the message's last record.
    pub line: Option<u32>,
}

impl Cursor {
    /// After the whole message `seq`.
    pub fn after_message(seq: u64) -> Cursor {
        Cursor { seq, line: None }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            None => write!(f, "1.{}", self.seq),
            Some(l) => write!(f, "1.{}.{l}", self.seq),
        }
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Cursor, String> {
        let number = |n: &str| {
            Some(n)
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
        };
        s.strip_prefix("1.")
            .and_then(|rest| match rest.split_once('.') {
                None => Some(Cursor::after_message(number(rest)?)),
                Some((seq, line)) => Some(Cursor {
                    seq: number(seq)?,
                    line: Some(u32::try_from(number(line)?).ok()?),
                }),
            })
            .filter(|c| c.seq > 0)
            .ok_or_else(|| {
                format!("{s:?} is not a feed cursor (a cursor is the \"cursor\" of a feed record)")
            })
    }
}

/// The feed stream's configuration: subjects `<prefix>.>`, the `[feed]` caps, fsync as the change streams.
fn stream_config(cfg: &Config, replicas: usize) -> stream::Config {
    stream::Config {
        name: stream_name(cfg),
        description: Some(
            "HarmonyLite: the change feed, JSON records of row changes, one per line (docs/FEED.md)".into(),
        ),
        subjects: vec![format!("{}.>", subject_prefix(cfg))],
        max_age: Duration::from_secs(cfg.feed.max_age_seconds.get()),
        max_bytes: cfg.feed.max_bytes,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Open the feed stream, creating it when missing (the writer does; readers only open it).
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &Config,
    replicas: usize,
) -> Result<stream::Stream, String> {
    let config = stream_config(cfg, replicas);
    crate::nats::placement::create("feed stream", replicas, |n| {
        let mut c = config.clone();
        c.num_replicas = n;
        let js = js.clone();
        async move { js.get_or_create_stream(c).await }
    })
    .await
}

/// The key under which the feed writer records, in the positions bucket, how far it has read each change
/// stream: the trim keeps what the feed has not written yet.
pub const POSITIONS_KEY: &str = "feed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_table_name_is_one_subject_token() {
        assert_eq!(table_token("orders"), "orders");
        assert_eq!(table_token("Order_Items-2"), "Order_Items-2");
        assert_eq!(table_token("a.b *>%"), "a%2Eb%20%2A%3E%25");
        assert_eq!(table_token("café"), "caf%C3%A9");
    }

    #[test]
    fn names_follow_the_stream_prefix() {
        let mut cfg = Config::default();
        assert_eq!(stream_name(&cfg), "harmonylite-feed");
        assert_eq!(subject(&cfg, "t"), "harmonylite.feed.t");
        cfg.nats.stream_prefix = "shop".into();
        assert_eq!(stream_name(&cfg), "shop-feed");
        assert_eq!(subject(&cfg, "t"), "shop.feed.t");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c: Cursor = "1.42".parse().unwrap();
        assert_eq!(c, Cursor::after_message(42));
        assert_eq!(c.to_string(), "1.42");
        let c: Cursor = "1.42.7".parse().unwrap();
        assert_eq!(
            c,
            Cursor {
                seq: 42,
                line: Some(7)
            }
        );
        assert_eq!(c.to_string(), "1.42.7");
        for bad in [
            "",
            "42",
            "1.",
            "1.0",
            "1.-3",
            "2.42",
            "1.4x",
            "now",
            "1.4.",
            "1.4.x",
            "1.0.3",
            "1.4.5.6",
            "1.4.99999999999",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }
}
