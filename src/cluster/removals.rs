//! The removal records, bucket [`BUCKET`]: one per node removed for good with `-remove-node` (key `node-<id>`),
//! which every count of the cluster's nodes subtracts and which refuses a removed id at start.

use std::collections::BTreeMap;

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::nats::KvError;

/// The bucket of removal records, one per removed node (key `node-<id>`).
pub const BUCKET: &str = "harmonylite-removed";

/// A node removed from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub node_id: u64,
    /// RFC 3339.
    pub removed_at: String,
    /// How many nodes the cluster counted when the node was removed (the more of the removing node's
    /// `-cluster-peers` + 1 and the nodes with a positions entry, the removed one included): a node whose
    /// configuration counts that many still names the removed node's route and subtracts it; one configured
    /// for fewer never counted it, or was reconfigured since.
    pub cluster_size: u64,
    /// The node whose configuration ran the command.
    pub by_node: u64,
}

pub fn key(node_id: u64) -> String {
    format!("node-{node_id}")
}

/// The removal records, by node id (empty when no node was ever removed).
pub async fn removed(js: &jetstream::Context) -> Result<BTreeMap<u64, Removal>, KvError> {
    let store = match js.get_key_value(BUCKET).await {
        Ok(s) => s,
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(KvError::open(BUCKET, e)),
    };
    let mut out = BTreeMap::new();
    let mut keys = store.keys().await.map_err(|e| KvError::keys(BUCKET, e))?;
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| KvError::keys(BUCKET, e))?;
        if let Some(v) = store
            .get(&k)
            .await
            .map_err(|e| KvError::read(BUCKET, &k, e))?
            && let Ok(r) = serde_json::from_slice::<Removal>(&v)
        {
            out.insert(r.node_id, r);
        }
    }
    Ok(out)
}

/// `expected` nodes (a node's `-cluster-peers` + 1) less the removed nodes it still counts.
pub fn expected_without_removed(expected: usize, removed: &BTreeMap<u64, Removal>) -> usize {
    let still_counted = removed
        .values()
        .filter(|r| expected as u64 >= r.cluster_size)
        .count();
    expected.saturating_sub(still_counted).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(node_id: u64, cluster_size: u64) -> Removal {
        Removal {
            node_id,
            removed_at: String::new(),
            cluster_size,
            by_node: 1,
        }
    }

    #[test]
    fn a_node_subtracts_the_removed_nodes_its_configuration_still_counts() {
        let mut r = BTreeMap::new();
        assert_eq!(expected_without_removed(3, &r), 3);
        // Four nodes, all configured with the other three: node 4 removed.
        r.insert(4, removal(4, 4));
        assert_eq!(expected_without_removed(4, &r), 3);
        // A node configured for three (it never named node 4, or was reconfigured since).
        assert_eq!(expected_without_removed(3, &r), 3);
        // Then node 3 removed too while the configurations still name four.
        r.insert(3, removal(3, 4));
        assert_eq!(expected_without_removed(4, &r), 2);
        // Never below one.
        assert_eq!(expected_without_removed(1, &r), 1);
    }
}
