//! Snapshots: a consistent copy of the user's tables with each shard's applied stream position, saved to and
//! restored from a [`store`].

pub mod store;
