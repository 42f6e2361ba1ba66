//! The message format between nodes (versioned).
//!
//! A message is one version byte, one flags byte, then a postcard-encoded [`Message`] (zstd-compressed when the
//! `compressed` flag is set). Version 2 added what the conflict journal needs (`seen`, `at_ms`); version 1
//! messages, still in a stream after an upgrade, decode with those unknown. Version 3 adds `conditional` (a
//! rebuilt table's backfill, see `docs/DESIGN.md` "Schema changes"); it is written only for messages that carry
//! such rows, so every other message stays version 2 and a node of the previous release still reads it. Version
//! 4 adds large values (a [`Piece`] of one, and [`Value::Staged`] naming one; see `docs/DESIGN.md` "Large
//! values"), likewise written only for messages that carry them. Version 5 adds a schema change ([`Ddl`], see
//! `docs/DESIGN.md` "Schema replication"), written only for the message that carries one. Values travel as their SQLite storage class:
//! integers as i64, reals as their IEEE-754 bits, text and blobs as raw bytes — so a DATETIME text, `-0.0` or
//! invalid UTF-8 arrive byte-exact.

use serde::{Deserialize, Serialize};

pub use crate::ids::fnv1_64;

/// Current wire version. A node refuses (and parks) messages of a version it does not know.
pub const VERSION: u8 = 5;
/// The highest version byte a later release may plausibly write. A message whose first byte is above
/// [`VERSION`] up to this one waits for an upgrade that reads it; any higher first byte is garbage (random
/// bytes would otherwise stop a shard for good).
pub const NEWEST_PLAUSIBLE_VERSION: u8 = VERSION + 14;
/// The version before the conflict journal's fields.
const VERSION_1: u8 = 1;
/// The version before conditional (backfill) rows; still written for messages without them.
const VERSION_2: u8 = 2;
/// The version before large values (pieces and staged values); still written for backfills without them.
const VERSION_3: u8 = 3;
/// The version before schema changes; still written for messages with large values.
const VERSION_4: u8 = 4;
const FLAG_ZSTD: u8 = 1;

/// One SQLite value, by storage class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(#[serde(with = "serde_bytes")] Vec<u8>),
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A large text or blob value sent ahead in [`Piece`] messages on the same stream (version 4): the
    /// receiver assembles it from its staged pieces when it applies the row.
    Staged(Box<StagedValue>),
}

/// Names a large value sent in pieces, and what it must be once assembled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedValue {
    /// `<origin>.<incarnation>.<log id>.<column>.<content hash>` (hex): unique per row change and content.
    pub id: String,
    /// Length in bytes.
    pub len: u64,
    /// Text (else blob).
    pub text: bool,
    /// FNV-1 64 of the bytes ([`fnv1_64`]).
    pub hash: u64,
}

/// A schema change, described by its result (`capture::ddl`): a message of its own, on the first shard's
/// stream (version 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ddl {
    pub changes: Vec<SchemaChange>,
    /// Per shard (index 0 = shard 1), the stream position up to which the origin had published or applied
    /// changes when it made this one: a node applies the change once each shard is past it.
    pub after: Vec<u64>,
}

/// What kind of schema object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    Table,
    Index,
    View,
    Trigger,
}

/// One schema object as `sqlite_master` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaObject {
    pub kind: ObjectKind,
    pub name: String,
    /// The table an index or trigger belongs to (a table's or view's own name otherwise).
    pub table: String,
    pub sql: String,
}

/// One schema change, described by its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaChange {
    /// A new object, created with this SQL.
    Create(SchemaObject),
    /// An object gone.
    Drop { kind: ObjectKind, name: String },
    /// A table renamed; its SQL afterwards (indexes and triggers follow it).
    Rename {
        from: String,
        to: String,
        sql: String,
    },
    /// A table's SQL went from `from` to `to` (columns added, renamed or dropped, or the table rebuilt).
    Alter {
        table: String,
        from: String,
        to: String,
    },
    /// An index, view or trigger whose SQL changed: dropped and created again.
    Replace(SchemaObject),
    /// `PRAGMA user_version`, which some migration tools use to record their migrations.
    UserVersion(i64),
}

/// One slice of a large value (a message of its own, before the unit whose row refers to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// The value's id ([`StagedValue::id`]).
    pub id: String,
    /// Where the slice starts in the value.
    pub offset: u64,
    /// The value's whole length.
    pub len: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Value {
    /// Bytes that identify the value exactly (used for keys and hashing): reals by their bits.
    pub fn write_key_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(0),
            Value::Integer(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Text(t) => {
                out.push(3);
                out.extend_from_slice(&(t.len() as u64).to_le_bytes());
                out.extend_from_slice(t);
            }
            Value::Blob(b) => {
                out.push(4);
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
            Value::Staged(s) => {
                out.push(5);
                out.extend_from_slice(s.id.as_bytes());
            }
        }
    }

    pub fn from_ref(v: rusqlite::types::ValueRef<'_>) -> Value {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    fn approx_size(&self) -> usize {
        match self {
            Value::Text(t) | Value::Blob(t) => t.len() + 4,
            Value::Staged(s) => s.id.len() + 24,
            _ => 9,
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
            Value::Staged(s) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("large value {} was not assembled", s.id).into(),
                ));
            }
        }))
    }
}

/// A canonical, hashable identity of a row's key values.
pub fn key_bytes(key: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * key.len());
    for v in key {
        v.write_key_bytes(&mut out);
    }
    out
}

/// One row change: the row's full current values, or its deletion by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Row {
    /// Values in the order of [`TableChanges::columns`].
    Upsert(Vec<Value>),
    /// Key values in the order of [`TableChanges::key`].
    Delete(Vec<Value>),
}

impl Row {
    pub fn approx_size(&self) -> usize {
        match self {
            Row::Upsert(v) | Row::Delete(v) => 4 + v.iter().map(Value::approx_size).sum::<usize>(),
        }
    }
}

/// Changes to one table within a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChanges {
    pub table: String,
    /// Column names of upserted rows. For tables without a primary key the first column is `rowid`.
    pub columns: Vec<String>,
    /// Key column names (a subset of `columns`; `rowid` for tables without a primary key).
    pub key: Vec<String>,
    pub rows: Vec<Row>,
}

/// One message: part `part` (from 1) of a publish unit; `last` marks the unit's final part. A unit holds whole
/// local transactions; the applier commits a unit's parts in one SQLite transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Node id of the origin.
    pub origin: u64,
    /// Identifies the unit (origin-local, unique per change-log incarnation).
    pub unit: String,
    pub part: u32,
    pub last: bool,
    /// Fingerprint of the origin's captured schema (tables and columns).
    pub schema: u64,
    pub tables: Vec<TableChanges>,
    /// The origin's applied position on this message's stream in the read transaction the values were read
    /// in: every change up to it was in the origin's database when it read them (`None`: unknown, version 1).
    pub seen: Option<u64>,
    /// Unix ms by the origin's clock when it read the values (0: unknown).
    pub at_ms: u64,
    /// Indexes into `tables` of the groups whose rows are *conditional*: a rebuilt table's backfill. Such a row
    /// is applied only when the stream holds no change to the same row after `seen` and before this message
    /// (`docs/DESIGN.md`, "Schema changes"). Empty for ordinary changes (version 2 on the wire).
    pub conditional: Vec<u32>,
    /// With conditional rows: the origin's own change-log ids up to here are in the backfill's values, so its own
    /// messages of passes ending at or below it are not newer than the backfill (0 otherwise).
    pub own_upto: u64,
    /// A slice of a large value (version 4): such a message carries no tables and is a unit of its own.
    pub piece: Option<Piece>,
    /// A schema change (version 5): such a message carries no tables and is a unit of its own.
    pub ddl: Option<Ddl>,
    /// Not on the wire: indexes into `tables` of groups a node put in place of superseded conditional rows
    /// (`apply::window::decide`); their rows are not journaled as conflicts.
    #[serde(skip)]
    pub replayed: Vec<u32>,
}

impl Message {
    /// Whether any row carries a staged (large) value.
    pub fn has_staged(&self) -> bool {
        self.tables.iter().any(|t| {
            t.rows.iter().any(|r| match r {
                Row::Upsert(v) | Row::Delete(v) => v.iter().any(|v| matches!(v, Value::Staged(_))),
            })
        })
    }

    /// Whether the rows of `tables[i]` are conditional.
    pub fn is_conditional(&self, i: usize) -> bool {
        self.conditional.iter().any(|&c| c as usize == i)
    }
}

/// A version 2 message, as decoded.
#[derive(Deserialize)]
struct MessageV2 {
    origin: u64,
    unit: String,
    part: u32,
    last: bool,
    schema: u64,
    tables: Vec<TableChanges>,
    seen: Option<u64>,
    at_ms: u64,
}

/// A version 2 message, as encoded (the same fields, borrowed).
#[derive(Serialize)]
struct MessageV2Ref<'a> {
    origin: u64,
    unit: &'a str,
    part: u32,
    last: bool,
    schema: u64,
    tables: &'a [TableChanges],
    seen: Option<u64>,
    at_ms: u64,
}

impl From<MessageV2> for Message {
    fn from(m: MessageV2) -> Message {
        Message {
            origin: m.origin,
            unit: m.unit,
            part: m.part,
            last: m.last,
            schema: m.schema,
            tables: m.tables,
            seen: m.seen,
            at_ms: m.at_ms,
            conditional: Vec::new(),
            own_upto: 0,
            piece: None,
            ddl: None,
            replayed: Vec::new(),
        }
    }
}

/// A version 3 message (a backfill), as decoded.
#[derive(Deserialize)]
struct MessageV3 {
    origin: u64,
    unit: String,
    part: u32,
    last: bool,
    schema: u64,
    tables: Vec<TableChanges>,
    seen: Option<u64>,
    at_ms: u64,
    conditional: Vec<u32>,
    own_upto: u64,
}

/// A version 3 message, as encoded (the same fields, borrowed).
#[derive(Serialize)]
struct MessageV3Ref<'a> {
    origin: u64,
    unit: &'a str,
    part: u32,
    last: bool,
    schema: u64,
    tables: &'a [TableChanges],
    seen: Option<u64>,
    at_ms: u64,
    conditional: &'a [u32],
    own_upto: u64,
}

impl From<MessageV3> for Message {
    fn from(m: MessageV3) -> Message {
        Message {
            origin: m.origin,
            unit: m.unit,
            part: m.part,
            last: m.last,
            schema: m.schema,
            tables: m.tables,
            seen: m.seen,
            at_ms: m.at_ms,
            conditional: m.conditional,
            own_upto: m.own_upto,
            piece: None,
            ddl: None,
            replayed: Vec::new(),
        }
    }
}

/// A version 4 message (large values), as decoded.
#[derive(Deserialize)]
struct MessageV4 {
    origin: u64,
    unit: String,
    part: u32,
    last: bool,
    schema: u64,
    tables: Vec<TableChanges>,
    seen: Option<u64>,
    at_ms: u64,
    conditional: Vec<u32>,
    own_upto: u64,
    piece: Option<Piece>,
}

/// A version 4 message, as encoded (the same fields, borrowed).
#[derive(Serialize)]
struct MessageV4Ref<'a> {
    origin: u64,
    unit: &'a str,
    part: u32,
    last: bool,
    schema: u64,
    tables: &'a [TableChanges],
    seen: Option<u64>,
    at_ms: u64,
    conditional: &'a [u32],
    own_upto: u64,
    piece: &'a Option<Piece>,
}

impl From<MessageV4> for Message {
    fn from(m: MessageV4) -> Message {
        Message {
            origin: m.origin,
            unit: m.unit,
            part: m.part,
            last: m.last,
            schema: m.schema,
            tables: m.tables,
            seen: m.seen,
            at_ms: m.at_ms,
            conditional: m.conditional,
            own_upto: m.own_upto,
            piece: m.piece,
            ddl: None,
            replayed: Vec::new(),
        }
    }
}

/// A version 1 message.
#[derive(Deserialize)]
struct MessageV1 {
    origin: u64,
    unit: String,
    part: u32,
    last: bool,
    schema: u64,
    tables: Vec<TableChanges>,
}

impl From<MessageV1> for Message {
    fn from(m: MessageV1) -> Message {
        Message {
            origin: m.origin,
            unit: m.unit,
            part: m.part,
            last: m.last,
            schema: m.schema,
            tables: m.tables,
            seen: None,
            at_ms: 0,
            conditional: Vec::new(),
            own_upto: 0,
            piece: None,
            ddl: None,
            replayed: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unknown wire version {0} (this node speaks {VERSION})")]
    Version(u8),
    #[error("cannot decompress message: {0}")]
    Decompress(std::io::Error),
    #[error("cannot decode message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encode a message in the oldest version that carries it: 5 with a schema change, 4 with a piece or a staged
/// value, 3 with conditional rows, 2 otherwise; zstd-compress the body when `compress`.
pub fn encode(msg: &Message, compress: bool) -> Vec<u8> {
    let (version, body) = if msg.ddl.is_some() {
        (VERSION, postcard::to_stdvec(msg))
    } else if msg.piece.is_some() || msg.has_staged() {
        let v4 = MessageV4Ref {
            origin: msg.origin,
            unit: &msg.unit,
            part: msg.part,
            last: msg.last,
            schema: msg.schema,
            tables: &msg.tables,
            seen: msg.seen,
            at_ms: msg.at_ms,
            conditional: &msg.conditional,
            own_upto: msg.own_upto,
            piece: &msg.piece,
        };
        (VERSION_4, postcard::to_stdvec(&v4))
    } else if !msg.conditional.is_empty() {
        let v3 = MessageV3Ref {
            origin: msg.origin,
            unit: &msg.unit,
            part: msg.part,
            last: msg.last,
            schema: msg.schema,
            tables: &msg.tables,
            seen: msg.seen,
            at_ms: msg.at_ms,
            conditional: &msg.conditional,
            own_upto: msg.own_upto,
        };
        (VERSION_3, postcard::to_stdvec(&v3))
    } else {
        let v2 = MessageV2Ref {
            origin: msg.origin,
            unit: &msg.unit,
            part: msg.part,
            last: msg.last,
            schema: msg.schema,
            tables: &msg.tables,
            seen: msg.seen,
            at_ms: msg.at_ms,
        };
        (VERSION_2, postcard::to_stdvec(&v2))
    };
    let body = body.expect("in-memory encoding cannot fail");
    let mut out = Vec::with_capacity(body.len() / 2 + 2);
    out.push(version);
    if compress {
        out.push(FLAG_ZSTD);
        out.extend_from_slice(&compress_body(&body));
    } else {
        out.push(0);
        out.extend_from_slice(&body);
    }
    out
}

thread_local! {
    /// One zstd context per thread, used again for every message: a new one per message took 150 KB (to
    /// compress) or 100 KB (to decompress) of heap each time, and the time to set it up.
    static COMPRESSOR: std::cell::RefCell<zstd::bulk::Compressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(1).expect("zstd context"));
    /// `None` if the context could not be made: bodies are then read as a stream.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// The body compressed at level 1, one zstd frame that records its content size.
fn compress_body(body: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| c.borrow_mut().compress(body).expect("zstd compress"))
}

/// Largest body decompressed into a buffer of its recorded size at once; a larger one is read as a stream.
const MAX_BULK_BODY: u64 = 64 << 20;

/// A compressed body: one frame of a recorded size (what [`encode`] writes) with this thread's context, any
/// other (several frames, no recorded size) as a stream.
fn decompress_body(data: &[u8]) -> Result<Vec<u8>, WireError> {
    if let Ok(Some(len)) = zstd::zstd_safe::get_frame_content_size(data)
        && len <= MAX_BULK_BODY
    {
        let bulk = DECOMPRESSOR.with(|d| {
            d.borrow_mut()
                .as_mut()
                .map(|d| d.decompress(data, len as usize))
        });
        if let Some(Ok(body)) = bulk
            && body.len() as u64 == len
        {
            return Ok(body);
        }
    }
    zstd::stream::decode_all(data).map_err(WireError::Decompress)
}

/// Decode a message of any known version, compressed or not.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() < 2 {
        return Err(WireError::Empty);
    }
    let version = bytes[0];
    if !(VERSION_1..=VERSION).contains(&version) {
        return Err(WireError::Version(version));
    }
    let body = if bytes[1] & FLAG_ZSTD != 0 {
        std::borrow::Cow::Owned(decompress_body(&bytes[2..])?)
    } else {
        std::borrow::Cow::Borrowed(&bytes[2..])
    };
    match version {
        VERSION_1 => Ok(postcard::from_bytes::<MessageV1>(&body)?.into()),
        VERSION_2 => Ok(postcard::from_bytes::<MessageV2>(&body)?.into()),
        VERSION_3 => Ok(postcard::from_bytes::<MessageV3>(&body)?.into()),
        VERSION_4 => Ok(postcard::from_bytes::<MessageV4>(&body)?.into()),
        _ => Ok(postcard::from_bytes(&body)?),
    }
}

/// A unit id's origin incarnation and pass end (`<node>.<incarnation>.<pass end>.<shard>.<unit>`, hex), when it
/// has that form.
pub fn unit_pass(unit: &str) -> Option<(u64, u64)> {
    let mut parts = unit.split('.');
    let _node = parts.next()?;
    let incarnation = u64::from_str_radix(parts.next()?, 16).ok()?;
    let end = u64::from_str_radix(parts.next()?, 16).ok()?;
    Some((incarnation, end))
}

/// Shard (1-based) of a row: by a hash of its table name and key values.
pub fn shard_of(table: &str, key: &[u8], shards: u32) -> u32 {
    let mut buf = Vec::with_capacity(table.len() + 1 + key.len());
    buf.extend_from_slice(table.as_bytes());
    buf.push(0);
    buf.extend_from_slice(key);
    (fnv1_64(&buf) % shards.max(1) as u64) as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            origin: 7,
            unit: "7-1-42".into(),
            part: 1,
            last: true,
            schema: 99,
            tables: vec![TableChanges {
                table: "T".into(),
                columns: vec!["id".into(), "v".into()],
                key: vec!["id".into()],
                rows: vec![
                    Row::Upsert(vec![Value::Integer(i64::MIN), Value::Real(-0.0)]),
                    Row::Upsert(vec![Value::Integer(i64::MAX), Value::Real(f64::INFINITY)]),
                    Row::Upsert(vec![Value::Integer(1), Value::Text(vec![0xff, 0xfe, b'a'])]),
                    Row::Upsert(vec![Value::Integer(2), Value::Blob(vec![0; 300_000])]),
                    Row::Delete(vec![Value::Integer(3)]),
                ],
            }],
            seen: Some(41),
            at_ms: 1_790_000_000_000,
            conditional: Vec::new(),
            own_upto: 0,
            piece: None,
            ddl: None,
            replayed: Vec::new(),
        }
    }

    #[test]
    fn ordinary_messages_stay_version_2_and_backfills_are_version_3() {
        let m = sample();
        let plain = encode(&m, false);
        assert_eq!(plain[0], 2);
        assert_eq!(decode(&plain).unwrap(), m);
        assert_eq!(unit_pass("7.1f.2a.1.0"), Some((0x1f, 0x2a)));
        assert_eq!(unit_pass("test-x"), None);
        let mut c = sample();
        c.conditional = vec![0];
        c.own_upto = 41;
        let cond = encode(&c, true);
        assert_eq!(cond[0], 3);
        let back = decode(&cond).unwrap();
        assert_eq!(back, c);
        assert!(back.is_conditional(0) && !back.is_conditional(1));
    }

    #[test]
    fn pieces_and_staged_values_are_version_4_and_nothing_else_is() {
        let mut m = sample();
        m.tables[0].rows.push(Row::Upsert(vec![
            Value::Integer(9),
            Value::Staged(Box::new(StagedValue {
                id: "7.1.2a.1.ff".into(),
                len: 3 << 20,
                text: true,
                hash: 0xff,
            })),
        ]));
        assert!(m.has_staged() && !sample().has_staged());
        let b = encode(&m, true);
        assert_eq!(b[0], 4);
        assert_eq!(decode(&b).unwrap(), m);
        let mut p = sample();
        p.tables.clear();
        p.piece = Some(Piece {
            id: "7.1.2a.1.ff".into(),
            offset: 1 << 20,
            len: 3 << 20,
            data: vec![7; 1000],
        });
        let b = encode(&p, false);
        assert_eq!(b[0], 4);
        assert_eq!(decode(&b).unwrap(), p);
        // A backfill without large values is still version 3, which the previous release reads.
        let mut c = sample();
        c.conditional = vec![0];
        assert_eq!(encode(&c, false)[0], 3);
    }

    #[test]
    fn a_schema_change_is_version_5_and_nothing_else_is() {
        let mut m = sample();
        m.tables.clear();
        m.ddl = Some(Ddl {
            changes: vec![
                SchemaChange::Alter {
                    table: "T".into(),
                    from: "CREATE TABLE T (id, v)".into(),
                    to: "CREATE TABLE T (id, v, w)".into(),
                },
                SchemaChange::Drop {
                    kind: ObjectKind::Index,
                    name: "t_v".into(),
                },
                SchemaChange::UserVersion(3),
            ],
            after: vec![12, 0, 7],
        });
        for compress in [false, true] {
            let b = encode(&m, compress);
            assert_eq!(b[0], 5);
            assert_eq!(decode(&b).unwrap(), m);
        }
        // Large values without a schema change stay version 4, which the previous release reads; the previous
        // release's version 4 bytes decode here.
        let mut p = sample();
        p.piece = Some(Piece {
            id: "x".into(),
            offset: 0,
            len: 1,
            data: vec![1],
        });
        let b = encode(&p, false);
        assert_eq!(b[0], 4);
        assert_eq!(decode(&b).unwrap(), p);
        assert_eq!(encode(&sample(), false)[0], 2);
    }

    #[test]
    fn version_1_messages_still_decode() {
        #[derive(Serialize)]
        struct V1<'a> {
            origin: u64,
            unit: &'a str,
            part: u32,
            last: bool,
            schema: u64,
            tables: &'a [TableChanges],
        }
        let m = sample();
        let body = postcard::to_stdvec(&V1 {
            origin: m.origin,
            unit: &m.unit,
            part: m.part,
            last: m.last,
            schema: m.schema,
            tables: &m.tables,
        })
        .unwrap();
        let mut bytes = vec![1, 0];
        bytes.extend_from_slice(&body);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.tables, m.tables);
        assert_eq!((back.seen, back.at_ms), (None, 0));
    }

    #[test]
    fn round_trip_is_exact_with_and_without_compression() {
        for compress in [false, true] {
            let m = sample();
            let back = decode(&encode(&m, compress)).unwrap();
            assert_eq!(back, m);
            match &back.tables[0].rows[0] {
                Row::Upsert(v) => match v[1] {
                    Value::Real(f) => assert_eq!(f.to_bits(), (-0.0f64).to_bits()),
                    _ => panic!("type changed"),
                },
                _ => panic!("row kind changed"),
            }
        }
        // a 300 KB zero blob compresses well
        assert!(encode(&sample(), true).len() < 10_000);
    }

    #[test]
    fn compressed_bodies_of_several_frames_or_without_a_size_still_decode() {
        let m = sample();
        let plain = encode(&m, false);
        let body = &plain[2..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut two = vec![plain[0], FLAG_ZSTD];
        two.extend(zstd::bulk::compress(a, 1).unwrap());
        two.extend(zstd::bulk::compress(b, 1).unwrap());
        assert_eq!(decode(&two).unwrap(), m, "two frames");
        let mut streamed = vec![plain[0], FLAG_ZSTD];
        let mut enc = zstd::stream::Encoder::new(&mut streamed, 1).unwrap();
        std::io::Write::write_all(&mut enc, body).unwrap();
        enc.finish().unwrap();
        assert_eq!(decode(&streamed).unwrap(), m, "no recorded size");
        // The context kept for the thread decodes the next message right after a failure.
        let mut bad = encode(&m, true);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(decode(&bad).is_err());
        assert_eq!(decode(&encode(&m, true)).unwrap(), m);
    }

    #[test]
    fn rejects_unknown_version_and_garbage() {
        let mut b = encode(&sample(), false);
        b[0] = 9;
        assert!(matches!(decode(&b), Err(WireError::Version(9))));
        b[0] = 0;
        assert!(matches!(decode(&b), Err(WireError::Version(0))));
        assert!(matches!(decode(&[2]), Err(WireError::Empty)));
        assert!(decode(&[1, 0, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[1, 1, 1, 2, 3]).is_err());
    }

    #[test]
    fn shard_depends_on_table_and_key_only() {
        let k1 = key_bytes(&[Value::Integer(1)]);
        let k2 = key_bytes(&[Value::Text(b"1".to_vec())]);
        assert_ne!(k1, k2);
        assert_eq!(shard_of("a", &k1, 4), shard_of("a", &k1, 4));
        let spread: std::collections::HashSet<u32> = (0..100)
            .map(|i| shard_of("a", &key_bytes(&[Value::Integer(i)]), 4))
            .collect();
        assert_eq!(spread.len(), 4);
        assert!(spread.iter().all(|s| (1..=4).contains(s)));
    }
}
