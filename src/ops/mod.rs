//! What operators see: the schema registry and the schema status commands ([`schema`]). Metrics, health and
//! the truth tools join here.

pub mod schema;
