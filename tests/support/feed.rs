//! The change feed read as its users read it: the `-changes` command on a node's config, its NDJSON parsed.

use std::time::Duration;

use super::cluster::Cluster;
use super::node::Node;
use super::process::output_retrying;
use super::wait::poll;

/// The TOML that turns the feed on.
pub const FEED_ON: &str = "[feed]\nenabled = true\n";

/// What one run of `-changes` printed and how it ended.
pub struct Changes {
    pub code: Option<i32>,
    /// The lines printed, as printed.
    pub lines: Vec<String>,
    pub records: Vec<serde_json::Value>,
    pub stderr: String,
}

impl Changes {
    /// The records' cursors, in order.
    pub fn cursors(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| {
                r["cursor"]
                    .as_str()
                    .expect("every record has a cursor")
                    .to_string()
            })
            .collect()
    }

    /// The records of `table`.
    pub fn of(&self, table: &str) -> Vec<&serde_json::Value> {
        self.records
            .iter()
            .filter(|r| r["table"] == table)
            .collect()
    }
}

impl Node {
    /// Runs `-changes` with `args` on this node's config (without `-follow`, it ends at the feed's end).
    pub fn changes(&self, args: &[&str]) -> Changes {
        let out = output_retrying(self.command().arg("-changes").args(args));
        let stdout = String::from_utf8(out.stdout).expect("the feed is UTF-8");
        let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
        let records = lines
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}"))
            })
            .collect();
        Changes {
            code: out.status.code(),
            lines,
            records,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Polls `-changes` until `table` has `n` records in the feed (or more: it fails then), returning them all.
    pub fn wait_feed(&self, table: &str, n: usize, timeout: Duration) -> Changes {
        let mut last = 0;
        let found = poll(timeout, || {
            let c = self.changes(&[]);
            if c.code == Some(1) && c.stderr.contains("does not exist yet") {
                // No node has begun writing the feed yet.
                return None;
            }
            assert_eq!(c.code, Some(0), "-changes failed: {}", c.stderr);
            last = c.of(table).len();
            assert!(
                last <= n,
                "the feed holds {last} records of {table}, more than {n}: {:#?}",
                c.records
            );
            (last == n).then_some(c)
        });
        found.unwrap_or_else(|| {
            panic!(
                "the feed held {last} records of {table}, not {n}, within {timeout:?}\n{}",
                self.log_tail(40)
            )
        })
    }
}

impl Cluster {
    /// The node (1-based, as [`Cluster::node`]) that says it writes the feed now (the last to say so among the
    /// running ones).
    pub fn feed_writer(&self, timeout: Duration) -> usize {
        poll(timeout, || {
            self.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_alive())
                .filter(|(_, n)| !n.log_lines_with(&["writing the change feed"]).is_empty())
                .map(|(i, _)| i + 1)
                .next_back()
        })
        .unwrap_or_else(|| {
            panic!(
                "no node writes the change feed within {timeout:?}\n{}",
                self.logs_tail()
            )
        })
    }
}

/// A `GET /changes` held open, read line by line as it comes (an HTTP/1.0 request, so the body is the raw
/// lines, ended by the server closing the connection).
pub struct FeedHttp {
    pub status: u16,
    /// The response's header lines.
    pub headers: String,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl FeedHttp {
    /// Sends `GET path` with `headers` to `127.0.0.1:port` and reads the status and header lines.
    pub fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> FeedHttp {
        FeedHttp::open_at("127.0.0.1", port, path, headers)
    }

    /// [`FeedHttp::open`] on `host` (e.g. a node's address in its network namespace).
    pub fn open_at(host: &str, port: u16, path: &str, headers: &[(&str, &str)]) -> FeedHttp {
        use std::io::{BufRead, Write};
        let mut s =
            std::net::TcpStream::connect((host, port)).expect("connect to the health server");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("send the request");
        let mut reader = std::io::BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("a status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a header line");
            if line.trim().is_empty() {
                break;
            }
            headers.push_str(&line);
        }
        FeedHttp {
            status,
            headers,
            reader,
        }
    }

    /// The next non-empty line of the body (`None` once the server closed the connection).
    pub fn next_line(&mut self) -> Option<String> {
        self.try_next_line()
            .unwrap_or_else(|e| panic!("no line of /changes within 30 s: {e}"))
    }

    /// [`FeedHttp::next_line`], or the error when no line came within 30 s.
    pub fn try_next_line(&mut self) -> std::io::Result<Option<String>> {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                return Ok(None);
            }
            if !line.trim().is_empty() {
                return Ok(Some(line.trim_end().to_string()));
            }
        }
    }

    /// The next record (an NDJSON line parsed).
    pub fn next_record(&mut self) -> Option<serde_json::Value> {
        self.next_line()
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
    }
}

/// A program of another language following the feed: `tests/tools/feed_consumer.py` (nats-py), its output in a
/// file, killed on drop.
pub struct FeedConsumer {
    pub child: super::process::ChildGuard,
    pub out: std::path::PathBuf,
}

impl Node {
    /// Starts the nats-py consumer on this node's NATS: durable consumer `durable` of the feed filtered by
    /// `subject`, ending after `idle` seconds without a record, spending `delay` seconds on each one before it
    /// acknowledges it; its output goes to `out`.
    pub fn feed_consumer(
        &self,
        subject: &str,
        durable: &str,
        idle: &str,
        delay: &str,
        out: &std::path::Path,
    ) -> FeedConsumer {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/feed_consumer.py");
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .arg(format!("nats://127.0.0.1:{}", self.client_port))
            .args(["harmonylite-feed", subject, durable, idle, delay]);
        FeedConsumer {
            child: super::process::ChildGuard::spawn_logged(cmd, out),
            out: out.to_path_buf(),
        }
    }
}

/// One record a [`FeedConsumer`] printed: where it is in the feed (its feed message's stream sequence, and its
/// line there; `None` for the message's last) and the record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub seq: u64,
    pub line: Option<u32>,
    pub record: String,
}

impl Consumed {
    /// The record's cursor, as `-changes` and `/changes` give it.
    pub fn cursor(&self) -> String {
        match self.line {
            None => format!("1.{}", self.seq),
            Some(l) => format!("1.{}.{l}", self.seq),
        }
    }

    /// Its place in the feed's order.
    pub fn order(&self) -> (u64, u32) {
        (self.seq, self.line.unwrap_or(u32::MAX))
    }
}

impl FeedConsumer {
    /// What it has printed so far, one entry per record.
    pub fn read(&self) -> Vec<Consumed> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(position, record)| {
                let (seq, line) = match position.split_once('.') {
                    Some((s, l)) => (s.parse().ok()?, Some(l.parse().ok()?)),
                    None => (position.parse().ok()?, None),
                };
                Some(Consumed {
                    seq,
                    line,
                    record: record.to_string(),
                })
            })
            .collect()
    }

    /// Waits (within `timeout`) until it ends by itself, having read everything; fails with its output when
    /// it does not end or ends with an error.
    pub fn finish(&mut self, timeout: Duration) -> Vec<Consumed> {
        let status = poll(timeout, || self.child.exited())
            .expect("the consumer ends once it has read everything");
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(&self.out).unwrap_or_default()
        );
        self.read()
    }
}
