//! What operators see: the schema registry and the schema status commands ([`schema`]), each node's status
//! and `-status` ([`status`]). Metrics, health and the truth tools join here.

pub mod schema;
pub mod status;
