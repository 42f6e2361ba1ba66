//! What the nodes keep about each other in the cluster's KV buckets, read by the engine, the operations views
//! and the commands alike: the handled [`positions`], the [`removals`] of nodes removed for good, and the nodes
//! [`holding`] a stream back.

pub mod holding;
pub mod lease;
pub mod positions;
pub mod removals;

pub use holding::Holding;
