//! Compatibility with the original's Go TOML decoding: one normalising pass over the parsed table before it is
//! deserialised, and the bookkeeping needed to word warnings and errors with the keys as the user wrote them.
//!
//! The pass
//! - lowercases every key, since Go's decoder matches keys case-insensitively. When two spellings of one key
//!   meet in a table, the exact lowercase one is kept (else the first in the table's key order); the other
//!   is reported after deserialising, as a repeat of a known key or as an unknown key, like the original;
//! - applies the Go-isms of the original: `replication_log.replicas` ≤ 0 means "computed from the shards"
//!   and more than five is capped with a warning, `snapshot.leader_ttl = 0` means 30000,
//!   `snapshot.nats.replicas = 0` means 1, and a `nats.urls` entry may hold several comma-separated URLs;
//! - hides TOML date-times behind a value no key accepts (the deserialiser would otherwise hand them over as
//!   strings) and remembers how they were written, for error messages.

use std::collections::{HashMap, HashSet};

use toml::{Table, Value};

/// JetStream refuses more than five replicas.
pub(super) const MAX_REPLICAS: i64 = 5;

/// Where a value sits: the (lowercase) keys of the tables leading to it, then an index when it is an element
/// of an array.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct KeyPath {
    pub keys: Vec<String>,
    pub index: Option<usize>,
}

impl KeyPath {
    /// The path of a key that `serde_ignored` reports as not deserialised.
    pub fn of_ignored(path: &serde_ignored::Path<'_>) -> KeyPath {
        use serde_ignored::Path;
        match path {
            Path::Root => KeyPath::default(),
            Path::Map { parent, key } => {
                let mut p = KeyPath::of_ignored(parent);
                p.keys.push(key.clone());
                p
            }
            Path::Seq { parent, index } => {
                let mut p = KeyPath::of_ignored(parent);
                p.index = Some(*index);
                p
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => KeyPath::of_ignored(parent),
        }
    }

    /// The dotted key, e.g. `snapshot.nats.replicas`.
    pub fn dotted(&self) -> String {
        self.keys.join(".")
    }
}

/// Two spellings of one key in a table: `keys` leads to the key kept, `dropped` is the other as written.
struct Collision {
    keys: Vec<String>,
    dropped: String,
}

/// The normalised table and what is needed to speak of it as the user wrote it.
#[derive(Default)]
pub(super) struct Normalized {
    /// Lowercase keys, Go-isms applied: what is deserialised.
    pub table: Table,
    /// Keys written in another case than lowercase: lowercase path → the spelling kept.
    spellings: HashMap<Vec<String>, String>,
    collisions: Vec<Collision>,
    /// Date-times hidden from the deserialiser, as written.
    datetimes: HashMap<KeyPath, String>,
}

/// Normalises `table` (see the module documentation); warnings about capped values go to `warnings`.
pub(super) fn normalize(table: Table, warnings: &mut Vec<String>) -> Normalized {
    let mut n = Normalized::default();
    let mut table = fold_table(table, &[], &mut n);
    go_isms(&mut table, warnings);
    for (key, value) in table.iter_mut() {
        let path = KeyPath {
            keys: vec![key.clone()],
            index: None,
        };
        hide_datetimes(value, path, &mut n.datetimes);
    }
    n.table = table;
    n
}

impl Normalized {
    /// The value at `path` as written in TOML (`"two"`, `0`, `[1]`, ...); empty if there is none.
    pub fn render(&self, path: &KeyPath) -> String {
        if let Some(text) = self.datetimes.get(path) {
            return text.clone();
        }
        let mut keys = path.keys.iter();
        let mut value = keys.next().and_then(|k| self.table.get(k));
        for key in keys {
            value = value.and_then(|v| v.get(key));
        }
        if let Some(i) = path.index {
            value = value.and_then(|v| v.get(i));
        }
        value.map(Value::to_string).unwrap_or_default()
    }

    /// The warnings for keys that were not used: each key `ignored` by the deserialiser, then each dropped
    /// spelling of a key (a repeat of a known key, or one more unknown key), with the parents' canonical names
    /// and the key as written.
    pub fn unknown_key_warnings(&self, ignored: &[KeyPath]) -> Vec<String> {
        let mut warnings = Vec::new();
        for path in ignored {
            let mut shown = path.keys.clone();
            if let (Some(last), Some(spelling)) = (shown.last_mut(), self.spellings.get(&path.keys))
            {
                last.clone_from(spelling);
            }
            warnings.push(format!(
                "unknown configuration key \"{}\" (ignored)",
                shown.join(".")
            ));
        }
        let ignored: HashSet<&[String]> = ignored.iter().map(|p| p.keys.as_slice()).collect();
        for c in &self.collisions {
            // Inside an unknown table: that table alone is reported, like the original.
            if (0..c.keys.len()).any(|n| ignored.contains(&c.keys[..n])) {
                continue;
            }
            let parent = &c.keys[..c.keys.len() - 1];
            let dropped = parent
                .iter()
                .chain([&c.dropped])
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(".");
            warnings.push(if ignored.contains(c.keys.as_slice()) {
                format!("unknown configuration key \"{dropped}\" (ignored)")
            } else {
                format!(
                    "configuration key \"{dropped}\" repeats \"{}\" in another letter case (ignored)",
                    c.keys.join(".")
                )
            });
        }
        warnings
    }
}

/// Lowercases the keys of `table` (at `parent`) and of the tables within.
fn fold_table(table: Table, parent: &[String], n: &mut Normalized) -> Table {
    let entries: Vec<(String, Value)> = table.into_iter().collect();
    // The spelling kept for each lowercase key: the exact lowercase one, else the first.
    let mut kept: HashMap<String, &str> = HashMap::new();
    for (key, _) in &entries {
        let lower = key.to_ascii_lowercase();
        if *key == lower {
            kept.insert(lower, key);
        } else {
            kept.entry(lower).or_insert(key);
        }
    }
    let kept: HashMap<String, String> = kept
        .into_iter()
        .map(|(lower, key)| (lower, key.to_string()))
        .collect();

    let mut out = Table::new();
    for (key, value) in entries {
        let lower = key.to_ascii_lowercase();
        let mut keys = parent.to_vec();
        keys.push(lower.clone());
        if kept[&lower] != key {
            n.collisions.push(Collision { keys, dropped: key });
            continue;
        }
        let value = fold_value(value, &keys, n);
        if key != lower {
            n.spellings.insert(keys, key);
        }
        out.insert(lower, value);
    }
    out
}

fn fold_value(value: Value, keys: &[String], n: &mut Normalized) -> Value {
    match value {
        Value::Table(t) => Value::Table(fold_table(t, keys, n)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let mut keys = keys.to_vec();
                    keys.push(i.to_string());
                    fold_value(item, &keys, n)
                })
                .collect(),
        ),
        other => other,
    }
}

/// The original's readings of particular values, applied where the value has the right type (a value of the
/// wrong type is left for the deserialiser to refuse).
fn go_isms(root: &mut Table, warnings: &mut Vec<String>) {
    if let Some(Value::Table(log)) = root.get_mut("replication_log") {
        let shards = match log.get("shards") {
            Some(Value::Integer(s)) if *s >= 1 => *s,
            _ => 1,
        };
        if let Some(Value::Integer(replicas)) = log.get_mut("replicas") {
            if *replicas < 1 {
                *replicas = (shards / 2 + 1).min(MAX_REPLICAS);
            } else if *replicas > MAX_REPLICAS {
                warnings.push(format!(
                    "replication_log.replicas = {replicas} is more than JetStream allows; using {MAX_REPLICAS}"
                ));
                *replicas = MAX_REPLICAS;
            }
        }
    }
    if let Some(Value::Table(snapshot)) = root.get_mut("snapshot") {
        if let Some(Value::Integer(ttl @ 0)) = snapshot.get_mut("leader_ttl") {
            *ttl = 30_000;
        }
        if let Some(Value::Table(nats)) = snapshot.get_mut("nats")
            && let Some(Value::Integer(replicas @ 0)) = nats.get_mut("replicas")
        {
            // JetStream treats 0 replicas as 1.
            *replicas = 1;
        }
    }
    if let Some(Value::Table(nats)) = root.get_mut("nats")
        && let Some(Value::Array(urls)) = nats.get_mut("urls")
    {
        // The original joins the entries into one comma-separated connect string.
        *urls = std::mem::take(urls)
            .into_iter()
            .flat_map(|entry| match entry {
                Value::String(s) if !s.trim().is_empty() => s
                    .split(',')
                    .map(|url| Value::String(url.trim().to_string()))
                    .collect(),
                other => vec![other],
            })
            .collect();
    }
}

/// Replaces each date-time under `value` by a NaN float, which no key accepts, and records it as written.
fn hide_datetimes(value: &mut Value, path: KeyPath, datetimes: &mut HashMap<KeyPath, String>) {
    match value {
        Value::Datetime(d) => {
            datetimes.insert(path, d.to_string());
            *value = Value::Float(f64::NAN);
        }
        Value::Table(t) => {
            for (key, v) in t.iter_mut() {
                let mut p = path.clone();
                p.keys.push(key.clone());
                hide_datetimes(v, p, datetimes);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let p = KeyPath {
                    keys: path.keys.clone(),
                    index: Some(i),
                };
                hide_datetimes(v, p, datetimes);
            }
        }
        _ => {}
    }
}
