//! What operators see: the schema registry and the schema status commands ([`schema`]), the node's view of
//! itself ([`observe`]), Prometheus metrics ([`metrics`]), health and readiness ([`health`]) and the HTTP
//! server that serves them ([`http`]), each node's status in the cluster and `-status` ([`status`]), checksums
//! of every node's tables compared at one agreed point of the streams, `-verify` ([`verify`]), and write
//! confirmation, `-wait-replicated` ([`wait`]).

pub mod catch_up;
pub mod health;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod schema;
pub mod status;
pub mod verify;
pub mod wait;
