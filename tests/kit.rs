//! The test kit itself (`tests/support/`), without starting any node: waiting on `bool` and `Option`
//! conditions, the config it writes (checked by the real loader), pointing a node at another database or
//! directory, and the convergence oracle on databases that agree and that differ.

mod support;

use std::time::{Duration, Instant};

use harmonylite::config::{self, Overrides};
use support::*;

#[test]
fn eventually_takes_bool_and_option_conditions() {
    let start = Instant::now();
    eventually(Duration::from_secs(5), "a bool", || {
        start.elapsed() > Duration::from_millis(50)
    });
    let mut n = 0;
    let v = eventually(Duration::from_secs(5), "an option", || {
        n += 1;
        (n == 3).then_some(n * 10)
    });
    assert_eq!(v, 30);
    assert_eq!(poll(Duration::from_millis(100), || false), None);
    let r =
        std::panic::catch_unwind(|| eventually(Duration::from_millis(50), "never", || None::<u8>));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("waiting for: never"), "{msg}");
}

#[tokio::test]
async fn eventually_async_takes_bool_and_option_conditions() {
    let start = Instant::now();
    eventually_async(Duration::from_secs(5), "a bool", || async {
        start.elapsed() > Duration::from_millis(50)
    })
    .await;
    let v = eventually_async(Duration::from_secs(5), "an option", || async { Some(7) }).await;
    assert_eq!(v, 7);
}

#[test]
fn generated_config_loads_with_extra_toml_merged() {
    let mut c = Cluster::new(Options {
        nodes: 2,
        extra_toml: "publish = false\n[nats]\nconnect_retries = 3".into(),
        per_node_toml: vec![String::new(), "[replication_log]\nshards = 2".into()],
        ..Default::default()
    });
    for n in &c.nodes {
        let (cfg, warnings) = config::load(Some(&n.config), &Overrides::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.node_id, n.id);
        assert_eq!(cfg.db_path, n.db);
        assert_eq!(cfg.seq_map_path, n.seq_map);
        assert!(!cfg.publish);
        assert_eq!(cfg.nats.connect_retries, 3);
        assert_eq!(
            cfg.nats.bind_address,
            format!("127.0.0.1:{}", n.client_port)
        );
        assert_eq!(cfg.replication_log.shards.get(), n.id as u32);
        assert_eq!(cfg.data_root_dir(), c.path().join(format!("node-{}", n.id)));
    }
    assert_eq!(c.node(1).peers, vec![c.node(2).cluster_port]);

    // Another directory, then another database file.
    let fresh = c.fresh_dir("fresh");
    c.node_mut(2).use_data_dir(&fresh);
    let (cfg, _) = config::load(Some(&c.node(2).config), &Overrides::default()).unwrap();
    assert_eq!(cfg.db_path, fresh.join("node-2.db"));
    assert_eq!(c.node(2).data_dir(), fresh);
    let other = c.path().join("other.db");
    sqlite3(&other, "CREATE TABLE t (x);");
    c.node_mut(2).use_db(&other);
    let (cfg, _) = config::load(Some(&c.node(2).config), &Overrides::default()).unwrap();
    assert_eq!(cfg.db_path, other);
    assert_eq!(cfg.seq_map_path, c.path().join("node-2.state"));
    assert_eq!(c.node(2).tables(), ["t"]);
}

#[test]
fn convergence_oracle_compares_every_user_table() {
    let c = Cluster::new(Options {
        nodes: 3,
        ..Default::default()
    });
    // Our own tables and SQLite's are not the user's.
    for n in &c.nodes {
        n.sql("CREATE TABLE __harmonylite__x (v); INSERT INTO __harmonylite__x VALUES (random());");
    }
    assert_eq!(c.node(1).tables(), ["Authors", "Books"]);
    let all = c.converged_all(Duration::from_secs(5));
    assert_eq!(all["Books"].1, 7);
    assert_eq!(all["Authors"].1, 0);
    assert_eq!(c.converged("Books", Duration::from_secs(5)), all["Books"]);

    // The same rows in another order have the same checksum.
    c.node(2)
        .sql("DELETE FROM Books WHERE id = 1; INSERT INTO Books SELECT * FROM (SELECT 1, 'The Hitchhiker''s Guide to the Galaxy', 'Douglas Adams', 1979);");
    c.converged_all(Duration::from_secs(5));

    // One value, one extra table, or one missing table is a difference.
    c.node(3)
        .sql("UPDATE Books SET publication_year = 1980 WHERE id = 1;");
    let r = std::panic::catch_unwind(|| c.converged_all(Duration::from_millis(200)));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(
        msg.contains("did not converge") && msg.contains("Books"),
        "{msg}"
    );
    assert!(msg.contains("--- node 3 log"), "{msg}");
    c.node(3)
        .sql("UPDATE Books SET publication_year = 1979 WHERE id = 1;");
    c.converged_all(Duration::from_secs(5));
    c.node(1).sql("CREATE TABLE extra (x);");
    let r = std::panic::catch_unwind(|| c.converged_all(Duration::from_millis(200)));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("missing [\"extra\"]"), "{msg}");
    let r = std::panic::catch_unwind(|| c.converged("extra", Duration::from_millis(200)));
    assert!(r.is_err(), "a table missing on some nodes is not converged");
}
