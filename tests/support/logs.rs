//! A node's log as lines: what it printed since a mark (to measure a window), and JSON-format logs parsed.

use super::node::Node;
use super::process::file_len;

impl Node {
    /// The log's current length: a mark for [`Node::log_since`].
    pub fn log_mark(&self) -> u64 {
        file_len(&self.log)
    }

    /// What the node printed after `mark` (from [`Node::log_mark`]).
    pub fn log_since(&self, mark: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = (mark as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// Every non-empty line of `text` parsed as a JSON object; the first line that is not one, as an error.
pub fn json_lines(text: &str) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(o)) => Ok(o),
            Ok(other) => Err(format!("not a JSON object: {other}")),
            Err(e) => Err(format!("not JSON ({e}): {l}")),
        })
        .collect()
}
