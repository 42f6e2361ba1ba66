//! The `deserialize_with` helpers of the configuration's types, one per kind of key.
//!
//! Each accepts exactly the TOML values the original accepted for that kind of key and refuses any other with
//! an error whose whole text is the reason shown to the user ("expected a positive integer", "expected true
//! or false", ...); the loader adds the dotted key and the value as written (see `super::type_error`).

use std::fmt;
use std::marker::PhantomData;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Value;

use super::compat::MAX_REPLICAS;

/// Largest value accepted by the keys that are `uint32` in the original.
const U32_MAX: u64 = u32::MAX as u64;

const NOT_A_TABLE: &str = "expected a table";
const NOT_STRINGS: &str = "expected an array of strings";

pub fn fail<E: de::Error>(reason: impl fmt::Display) -> E {
    E::custom(reason)
}

pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Boolean(b) => Ok(b),
        _ => Err(fail("expected true or false")),
    }
}

pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        _ => Err(fail("expected a string")),
    }
}

/// A path, kept as written (relative paths too).
pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    string(d).map(PathBuf::from)
}

/// An optional path: `""` means none.
pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Some(string(d)?)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from))
}

fn integer<'de, D: Deserializer<'de>>(d: D, expected: &str) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Integer(i) => Ok(i),
        _ => Err(fail(expected)),
    }
}

/// An unsigned integer in `min..=max`.
fn uint<'de, D: Deserializer<'de>>(d: D, min: u64, max: u64) -> Result<u64, D::Error> {
    let expected = match min {
        0 => "expected a non-negative integer".to_string(),
        1 => "expected a positive integer".to_string(),
        m => format!("expected an integer of at least {m}"),
    };
    match u64::try_from(integer(d, &expected)?) {
        Ok(u) if u > max => Err(fail(format_args!(
            "expected an integer no greater than {max}"
        ))),
        Ok(u) if u >= min => Ok(u),
        _ => Err(fail(expected)),
    }
}

/// `0..=u32::MAX` (the original's `uint32` keys), e.g. milliseconds where 0 means off.
pub fn uint32_range<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    uint(d, 0, U32_MAX)
}

/// `0..=u32::MAX` as a `u32`.
pub fn uint32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    // The range check guarantees the conversion.
    Ok(uint(d, 0, U32_MAX)? as u32)
}

/// `1..=u32::MAX`.
pub fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    let u = uint(d, 1, U32_MAX)?;
    Ok(NonZeroU32::new(u as u32).expect("checked positive"))
}

/// `1..=u32::MAX` as a `u64` (the original's `uint32` durations that must not be 0).
pub fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU64, D::Error> {
    Ok(NonZeroU64::new(uint(d, 1, U32_MAX)?).expect("checked positive"))
}

/// Any positive integer as a `u64`.
pub fn positive_u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU64, D::Error> {
    Ok(NonZeroU64::new(uint(d, 1, i64::MAX as u64)?).expect("checked positive"))
}

/// `nats.max_payload`: bytes, 64 KiB to 64 MiB (nats-server's own ceiling).
pub fn max_payload<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    uint(d, 64 * 1024, 64 * 1024 * 1024)
}

/// `replication_log.max_message_bytes`: bytes, 16 KiB to 64 MiB (its bound by `nats.max_payload` is checked with
/// the whole config).
pub fn max_message_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    uint(d, 16 * 1024, 64 * 1024 * 1024)
}

/// `snapshot.nats.replicas`: `0..=5` (0 has already become 1, see `compat`).
pub fn snapshot_replicas<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(uint(d, 0, MAX_REPLICAS as u64)? as u32)
}

/// `node_id`: a positive integer.
pub fn node_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    const EXPECTED: &str = "expected a positive integer";
    match integer(d, EXPECTED)? {
        0 => Err(fail("must be non-zero")),
        i => u64::try_from(i).map_err(|_| fail(EXPECTED)),
    }
}

/// `replication_log.max_entries`: -1 (unlimited) or a positive integer.
pub fn max_entries<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    const EXPECTED: &str = "expected -1 (unlimited) or a positive integer";
    match integer(d, EXPECTED)? {
        i if i == -1 || i >= 1 => Ok(i),
        _ => Err(fail(EXPECTED)),
    }
}

/// `replication_log.replicas`: any integer (`compat` has already brought it into `1..=5`).
pub fn replicas<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    const EXPECTED: &str = "expected an integer";
    let i = integer(d, EXPECTED)?;
    u32::try_from(i).map(Some).map_err(|_| fail(EXPECTED))
}

/// Implements the visitor methods of the TOML value kinds a visitor does not take, each failing with `$reason`.
macro_rules! refuse_scalars {
    ($reason:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(fail($reason))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(fail($reason))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(fail($reason))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(fail($reason))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(fail($reason))
        }
    };
}

/// An array of non-empty strings. A bad entry is reported at its index, so the error shows that entry.
pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Entry(String);

    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match Value::deserialize(d)? {
                Value::String(s) if s.trim().is_empty() => Err(fail("entries must not be empty")),
                Value::String(s) => Ok(Entry(s)),
                _ => Err(fail(NOT_STRINGS)),
            }
        }
    }

    struct Strings;

    impl<'de> Visitor<'de> for Strings {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(Entry(s)) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }

        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Vec<String>, A::Error> {
            Err(fail(NOT_STRINGS))
        }

        refuse_scalars!(NOT_STRINGS);
    }

    d.deserialize_seq(Strings)
}

/// A section (`[nats]`, `[snapshot.s3]`, ...): a table deserialised as `T`, whose own keys keep being tracked
/// for error paths and unknown keys.
pub fn table<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Section<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Section<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
            Err(fail(NOT_A_TABLE))
        }

        refuse_scalars!(NOT_A_TABLE);
    }

    d.deserialize_map(Section(PhantomData))
}
