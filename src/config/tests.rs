//! Tests of loading: defaults, every key, the original's key handling (letter case, unknown keys, Go-isms),
//! overrides, and read and parse errors.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;

use super::*;

pub(super) fn write(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

pub(super) fn load_str(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    let f = write(text);
    load(Some(f.path()), &Overrides::default())
}

pub(super) fn load_ok(text: &str) -> (Config, Vec<String>) {
    load_str(text).unwrap_or_else(|e| panic!("{text:?} should load: {e}"))
}

/// Loads `text`, expects `ConfigError::Invalid`, and checks its message names `key` and `value`.
pub(super) fn assert_invalid(text: &str, key: &str, value: &str) {
    match load_str(text) {
        Err(e @ ConfigError::Invalid { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("`{key}`")),
                "{text:?}: {msg:?} should name `{key}`"
            );
            assert!(
                msg.contains(value),
                "{text:?}: {msg:?} should show {value:?}"
            );
        }
        other => panic!("{text:?} should be invalid, got {other:?}"),
    }
}

#[test]
fn fnv1_known_values() {
    use crate::ids::fnv1_64;
    assert_eq!(fnv1_64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1_64(b"a"), 0xaf63_bd4c_8601_b7be);
    assert_eq!(fnv1_64(b"foobar"), 0x340d_8765_a4dd_a9c2);
}

#[test]
fn defaults_without_file() {
    let (c, w) = load(None, &Overrides::default()).unwrap();
    assert!(w.is_empty());
    let tmp = std::env::temp_dir();
    assert_eq!(c.db_path, tmp.join("harmonylite.db"));
    assert_eq!(c.seq_map_path, tmp.join("seq-map.cbor"));
    assert_eq!(c.node_id, default_node_id());
    assert_ne!(c.node_id, 0);
    assert!(c.publish && c.replicate);
    assert_eq!(c.scan_max_changes.get(), 512);
    assert_eq!(c.cleanup_interval_ms.get(), 5000);
    assert_eq!((c.sleep_timeout_ms, c.polling_interval_ms), (0, 0));
    assert!(c.include_tables.is_empty());
    // With `[ddl]` off (the default) the records of applied migrations stay on their node.
    assert_eq!(c.exclude_tables, MIGRATION_RECORDS);
    assert_eq!(
        c.replication_log,
        ReplicationLogConfig {
            shards: NonZeroU32::new(1).unwrap(),
            max_entries: -1,
            max_age_seconds: std::num::NonZeroU64::new(604_800).unwrap(),
            max_bytes: 1 << 30,
            replicas: None,
            compress: true,
            update_existing: false,
            max_message_bytes: 512 * 1024,
            stale_node_seconds: std::num::NonZeroU64::new(3600).unwrap(),
        }
    );
    let s = &c.snapshot;
    assert!(s.enabled);
    assert_eq!(s.store, SnapshotStore::Nats);
    assert_eq!((s.interval_ms, s.leader_ttl_ms), (0, 30_000));
    assert_eq!(
        s.nats,
        SnapshotNatsConfig {
            replicas: 0,
            bucket: String::new()
        }
    );
    assert_eq!(s.s3, SnapshotS3Config::default());
    assert_eq!(s.webdav.url, "");
    assert_eq!(s.sftp.url, "");
    let n = &c.nats;
    assert!(n.urls.is_empty());
    assert_eq!(n.subject_prefix, "harmonylite-change-log");
    assert_eq!(n.stream_prefix, "harmonylite-changes");
    assert_eq!(n.server_config, None);
    assert_eq!(n.bind_address, ":-1");
    assert_eq!(
        (&n.seed_file, &n.ca_file, &n.cert_file, &n.key_file),
        (&None, &None, &None, &None)
    );
    assert_eq!((n.user_name.as_str(), n.user_password.as_str()), ("", ""));
    assert_eq!((n.connect_retries, n.reconnect_wait_seconds), (5, 2));
    assert!(n.sync_always);
    assert_eq!(n.ready_timeout_seconds.get(), 60);
    assert_eq!(
        c.logging,
        LoggingConfig {
            verbose: false,
            format: LogFormat::Console
        }
    );
    assert_eq!(
        c.prometheus,
        PrometheusConfig {
            enable: false,
            bind: ":3010".into(),
            namespace: "harmonylite".into(),
            subsystem: String::new()
        }
    );
    assert_eq!(
        c.health_check,
        HealthCheckConfig {
            enable: false,
            bind: "0.0.0.0:8090".into(),
            path: "/health".into(),
            detailed: true,
            ready_path: "/ready".into(),
            ready_max_lag: 100,
            max_stuck_seconds: 60,
        }
    );
    assert_eq!(c.stream_name(1), "harmonylite-changes-c-1");
    assert_eq!(c.subject_name(2), "harmonylite-change-log-2");
}

#[test]
fn empty_file_gives_defaults() {
    let (c, w) = load_ok("");
    assert!(w.is_empty());
    assert_eq!(c, load(None, &Overrides::default()).unwrap().0);
}

#[test]
fn example_node_config() {
    let text = r#"
seq_map_path="/tmp/harmonylite-1-sm.cbor"
db_path="/tmp/harmonylite-1.db"
[replication_log]
shards=2
max_entries=2048
replicas=1
compress=true
[nats]
user_name="harmonylite"
user_password="secure-password-here"
reconnect_wait_seconds=5
server_config="examples/nats-server-1.conf"
[logging]
verbose=false
format="console"
[prometheus]
enable=true
bind="0.0.0.0:3010"
[snapshot]
enabled=true
interval=60000
leader_ttl=30000
[health_check]
enable=true
bind="0.0.0.0:8090"
path="/health"
detailed=true
"#;
    let (c, w) = load_ok(text);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.db_path, PathBuf::from("/tmp/harmonylite-1.db"));
    assert_eq!(c.seq_map_path, PathBuf::from("/tmp/harmonylite-1-sm.cbor"));
    assert_eq!(c.replication_log.shards.get(), 2);
    assert_eq!(c.replication_log.max_entries, 2048);
    assert_eq!(c.replication_log.replicas, Some(1));
    assert_eq!(c.nats.user_name, "harmonylite");
    assert_eq!(c.nats.user_password, "secure-password-here");
    assert_eq!(c.nats.reconnect_wait_seconds, 5);
    // Relative paths are kept as written.
    assert_eq!(
        c.nats.server_config,
        Some(PathBuf::from("examples/nats-server-1.conf"))
    );
    assert!(c.prometheus.enable);
    assert_eq!(c.prometheus.bind, "0.0.0.0:3010");
    assert_eq!(
        (c.snapshot.interval_ms, c.snapshot.leader_ttl_ms),
        (60_000, 30_000)
    );
    assert!(c.health_check.enable);
}

#[test]
fn every_key_set() {
    let text = r#"
db_path = "data/app.db"
node_id = 42
seq_map_path = "state/seq.cbor"
publish = false
replicate = false
scan_max_changes = 100
cleanup_interval = 1000
sleep_timeout = 9000
polling_interval = 250
include_tables = ["a", "b"]
exclude_tables = ["c"]
[replication_log]
shards = 3
max_entries = -1
max_age_seconds = 3600
max_bytes = 5000000
replicas = 3
compress = false
update_existing = true
[snapshot]
enabled = false
store = "s3"
interval = 5
leader_ttl = 7
[snapshot.nats]
replicas = 3
bucket = "snaps"
[snapshot.s3]
endpoint = "127.0.0.1:9000"
path = "snapshots/harmonylite"
bucket = "harmonylite"
use_ssl = true
access_key = "ak"
secret = "sk"
session_token = "tok"
[snapshot.webdav]
url = "https://h/p?dir=/s&login=u&secret=p"
[snapshot.sftp]
url = "sftp://u:p@h:22/x"
[nats]
urls = ["nats://a:4222", "tls://user:pw@b:4223/", "ws://[::1]:8080", "c:4222", "d"]
subject_prefix = "app.changes"
stream_prefix = "app-changes"
server_config = "nats.conf"
bind_address = "[::]:4222"
seed_file = "seed.nk"
user_name = "u"
user_password = "p"
ca_file = "ca.pem"
cert_file = "cert.pem"
key_file = "key.pem"
connect_retries = 0
reconnect_wait_seconds = 10
sync_always = false
ready_timeout_seconds = 5
[logging]
verbose = true
format = "json"
[prometheus]
enable = true
bind = "127.0.0.1:0"
namespace = "my_app"
subsystem = "repl"
[health_check]
enable = true
bind = ":8091"
path = "/healthz"
detailed = false
"#;
    let (c, w) = load_ok(text);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.db_path, PathBuf::from("data/app.db"));
    assert_eq!(c.node_id, 42);
    assert_eq!(c.seq_map_path, PathBuf::from("state/seq.cbor"));
    assert!(!c.publish && !c.replicate);
    assert_eq!(
        (
            c.scan_max_changes.get(),
            c.cleanup_interval_ms.get(),
            c.sleep_timeout_ms,
            c.polling_interval_ms
        ),
        (100, 1000, 9000, 250)
    );
    assert_eq!(c.include_tables, ["a", "b"]);
    assert_eq!(c.exclude_tables[0], "c");
    assert_eq!(&c.exclude_tables[1..], MIGRATION_RECORDS);
    assert_eq!(
        c.replication_log,
        ReplicationLogConfig {
            shards: NonZeroU32::new(3).unwrap(),
            max_entries: -1,
            max_age_seconds: std::num::NonZeroU64::new(3600).unwrap(),
            max_bytes: 5_000_000,
            replicas: Some(3),
            compress: false,
            update_existing: true,
            max_message_bytes: 512 * 1024,
            stale_node_seconds: std::num::NonZeroU64::new(3600).unwrap(),
        }
    );
    assert!(!c.snapshot.enabled);
    assert_eq!(c.snapshot.store, SnapshotStore::S3);
    assert_eq!((c.snapshot.interval_ms, c.snapshot.leader_ttl_ms), (5, 7));
    assert_eq!(
        c.snapshot.nats,
        SnapshotNatsConfig {
            replicas: 3,
            bucket: "snaps".into()
        }
    );
    assert_eq!(
        c.snapshot.s3,
        SnapshotS3Config {
            endpoint: "127.0.0.1:9000".into(),
            path: "snapshots/harmonylite".into(),
            bucket: "harmonylite".into(),
            use_ssl: true,
            access_key: "ak".into(),
            secret: "sk".into(),
            session_token: "tok".into(),
        }
    );
    assert_eq!(c.snapshot.webdav.url, "https://h/p?dir=/s&login=u&secret=p");
    assert_eq!(c.snapshot.sftp.url, "sftp://u:p@h:22/x");
    let n = &c.nats;
    assert_eq!(
        n.urls,
        [
            "nats://a:4222",
            "tls://user:pw@b:4223/",
            "ws://[::1]:8080",
            "c:4222",
            "d"
        ]
    );
    assert_eq!(
        (n.subject_prefix.as_str(), n.stream_prefix.as_str()),
        ("app.changes", "app-changes")
    );
    assert_eq!(n.server_config, Some(PathBuf::from("nats.conf")));
    assert_eq!(n.bind_address, "[::]:4222");
    assert_eq!(n.seed_file, Some(PathBuf::from("seed.nk")));
    assert_eq!((n.user_name.as_str(), n.user_password.as_str()), ("u", "p"));
    assert_eq!(n.ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(n.cert_file, Some(PathBuf::from("cert.pem")));
    assert_eq!(n.key_file, Some(PathBuf::from("key.pem")));
    assert_eq!((n.connect_retries, n.reconnect_wait_seconds), (0, 10));
    assert!(!n.sync_always);
    assert_eq!(n.ready_timeout_seconds.get(), 5);
    assert_eq!(
        c.logging,
        LoggingConfig {
            verbose: true,
            format: LogFormat::Json
        }
    );
    assert_eq!(
        c.prometheus,
        PrometheusConfig {
            enable: true,
            bind: "127.0.0.1:0".into(),
            namespace: "my_app".into(),
            subsystem: "repl".into()
        }
    );
    assert_eq!(
        c.health_check,
        HealthCheckConfig {
            enable: true,
            bind: ":8091".into(),
            path: "/healthz".into(),
            detailed: false,
            ready_path: "/ready".into(),
            ready_max_lag: 100,
            max_stuck_seconds: 60,
        }
    );
    assert_eq!(c.stream_name(2), "app-changes-2");
}

#[test]
fn empty_optional_paths_are_none() {
    let (c, _) = load_ok(
        "[nats]\nserver_config = \"\"\nseed_file = \"\"\nca_file = \"\"\ncert_file = \"\"\nkey_file = \"\"\n",
    );
    let n = &c.nats;
    assert_eq!(
        (
            &n.server_config,
            &n.seed_file,
            &n.ca_file,
            &n.cert_file,
            &n.key_file
        ),
        (&None, &None, &None, &None, &None)
    );
}

#[test]
fn urls_entry_with_commas_is_split() {
    let (c, _) = load_ok("[nats]\nurls = [\"nats://a:4222, nats://b:4222\"]\n");
    assert_eq!(c.nats.urls, ["nats://a:4222", "nats://b:4222"]);
}

#[test]
fn unknown_keys_warn() {
    let (_, w) = load_ok(
        "foo = 1\n[nats]\nfoo = 1\n[bogus]\nx = 2\n[snapshot.s3]\nregion = \"eu\"\n[snapshot.extra]\n[replication_log]\nshards = 1\nwat = true\n",
    );
    for key in [
        "foo",
        "nats.foo",
        "bogus",
        "snapshot.s3.region",
        "snapshot.extra",
        "replication_log.wat",
    ] {
        let expected = format!("unknown configuration key \"{key}\" (ignored)");
        assert!(w.contains(&expected), "missing {expected:?} in {w:?}");
    }
    assert_eq!(w.len(), 6, "{w:?}");
}

#[test]
fn keys_match_case_insensitively_like_the_original() {
    let (c, w) = load_ok("DB_Path = \"/x.db\"\n[NATS]\nURLs = [\"nats://a:1\"]\n");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.db_path, PathBuf::from("/x.db"));
    assert_eq!(c.nats.urls, ["nats://a:1"]);
    let (c, w) = load_ok("db_path = \"/a.db\"\nDB_PATH = \"/b.db\"\n");
    assert_eq!(c.db_path, PathBuf::from("/a.db"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("\"DB_PATH\""), "{w:?}");
}

#[test]
fn node_id_override() {
    let o = Overrides {
        node_id: Some(7),
        ..Overrides::default()
    };
    let (c, _) = load(None, &o).unwrap();
    assert_eq!(c.node_id, 7);
    let f = write("node_id = 3\n");
    assert_eq!(
        load(Some(f.path()), &Overrides::default())
            .unwrap()
            .0
            .node_id,
        3
    );
    assert_eq!(load(Some(f.path()), &o).unwrap().0.node_id, 7);
    let err = load(
        None,
        &Overrides {
            node_id: Some(0),
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { .. }));
    assert!(
        err.to_string().contains("node-id") && err.to_string().contains(": 0 "),
        "{err}"
    );
}

#[test]
fn replicas_rules() {
    assert_eq!(
        load_ok("[replication_log]\nshards = 4")
            .0
            .replication_log
            .replicas,
        None
    );
    assert_eq!(
        load_ok("[replication_log]\nshards = 4\nreplicas = 0")
            .0
            .replication_log
            .replicas,
        Some(3)
    );
    assert_eq!(
        load_ok("[replication_log]\nshards = 4\nreplicas = -1")
            .0
            .replication_log
            .replicas,
        Some(3)
    );
    assert_eq!(
        load_ok("[replication_log]\nshards = 20\nreplicas = 0")
            .0
            .replication_log
            .replicas,
        Some(5)
    );
    let (c, w) = load_ok("[replication_log]\nreplicas = 7");
    assert_eq!(c.replication_log.replicas, Some(5));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("replication_log.replicas"));
}

#[test]
fn leader_ttl_zero_means_default() {
    assert_eq!(
        load_ok("[snapshot]\nleader_ttl = 0")
            .0
            .snapshot
            .leader_ttl_ms,
        30_000
    );
}

#[test]
fn seq_map_path_empty_means_db_dir() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (c, _) = load_ok(&format!(
        "db_path = {}\nseq_map_path = \"\"\n",
        quoted(db.to_str().unwrap())
    ));
    assert_eq!(c.seq_map_path, dir.path().join("seq-map.cbor"));
    let (c, _) = load_ok("db_path = \"rel/app.db\"\nseq_map_path = \"\"\n");
    assert!(c.seq_map_path.is_absolute());
    assert_eq!(
        c.seq_map_path,
        std::env::current_dir()
            .unwrap()
            .join("rel")
            .join("seq-map.cbor")
    );
}

#[test]
fn missing_file_is_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(Some(&dir.path().join("nope.toml")), &Overrides::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
}

#[test]
fn bad_toml_is_parse_error() {
    let err = load_str("db_path = \n").unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
}

#[test]
fn unknown_keys_are_shown_as_written() {
    let (_, w) = load_ok("[NATS]\nFooBar = 1\n");
    assert_eq!(w, ["unknown configuration key \"nats.FooBar\" (ignored)"]);
    // Two spellings of an unknown key are two unknown keys; inside an unknown table, only the table is.
    let (_, mut w) = load_ok("Foo = 1\nfoo = 2\n[bogus]\nA = 1\na = 2\n");
    w.sort();
    assert_eq!(
        w,
        [
            "unknown configuration key \"Foo\" (ignored)",
            "unknown configuration key \"bogus\" (ignored)",
            "unknown configuration key \"foo\" (ignored)",
        ]
    );
    // Without the exact lowercase spelling, the first in key order (uppercase sorts first) is kept.
    let (c, w) = load_ok("[nats]\nUser_Name = \"a\"\nUSER_NAME = \"b\"\n");
    assert_eq!(c.nats.user_name, "b");
    assert_eq!(
        w,
        [
            "configuration key \"nats.User_Name\" repeats \"nats.user_name\" in another letter case (ignored)"
        ]
    );
}

/// Keys of the shipped `config.toml`, `section.key` (`key` at the top level), commented-out ones included.
fn shipped_config_keys(text: &str) -> std::collections::BTreeSet<String> {
    let mut section = String::new();
    let mut keys = std::collections::BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let body = line.strip_prefix("# ").unwrap_or(line);
        if let Some((key, _)) = body.split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(qualified(&section, key));
        }
    }
    keys
}

fn qualified(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// Keys of the configuration-file tables in docs/CONFIGURATION.md: the first cell of each row names one or
/// more keys in backquotes, optionally led by `[section]`; otherwise the heading's section applies.
fn documented_keys(doc: &str) -> std::collections::BTreeSet<String> {
    let file_part = doc
        .split_once("## Configuration file")
        .expect("CONFIGURATION.md has a configuration file part")
        .1;
    let file_part = file_part
        .split("\n## ")
        .next()
        .expect("split yields a first part");
    let mut heading = String::new();
    let mut keys = std::collections::BTreeSet::new();
    for line in file_part.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            heading = match h.split('`').nth(1) {
                Some(s) if h.matches("`[").count() == 1 => s.trim_matches(['[', ']']).to_string(),
                _ => String::new(),
            };
            continue;
        }
        let Some(cell) = line
            .strip_prefix("| `")
            .map(|_| line.split('|').nth(1).unwrap_or(""))
        else {
            continue;
        };
        let mut section = heading.clone();
        for (i, name) in cell.split('`').enumerate().filter(|(i, _)| i % 2 == 1) {
            let name = match name.strip_prefix('[').and_then(|n| n.split_once("] ")) {
                Some((sec, key)) if i == 1 => {
                    section = sec.to_string();
                    key
                }
                _ => name,
            };
            keys.insert(qualified(&section, name));
        }
    }
    keys
}

/// The `config.toml` shipped in the release archive names every documented key, and loading it as it is gives
/// exactly the defaults (so its values are the defaults) with no warning (so it has no unknown key).
#[test]
fn shipped_config_toml_has_every_key_at_its_default() {
    let shipped = include_str!("../../config.toml");
    let doc = include_str!("../../docs/CONFIGURATION.md");
    let documented = documented_keys(doc);
    assert!(
        documented.len() > 60 && documented.contains("snapshot.s3.session_token"),
        "the documentation parser found too little: {documented:?}"
    );
    let in_file = shipped_config_keys(shipped);
    let missing: Vec<_> = documented.difference(&in_file).collect();
    assert!(missing.is_empty(), "config.toml lacks {missing:?}");
    let extra: Vec<_> = in_file.difference(&documented).collect();
    assert!(
        extra.is_empty(),
        "config.toml has undocumented keys {extra:?}"
    );

    let (loaded, warnings) = load_ok(shipped);
    assert!(warnings.is_empty(), "config.toml warns: {warnings:?}");
    let (defaults, _) = load(None, &Overrides::default()).unwrap();
    assert_eq!(
        loaded, defaults,
        "config.toml sets a value other than its default"
    );
}

#[test]
fn migration_records_replicate_only_with_ddl_on() {
    let (off, _) = load_ok("exclude_tables = [\"audit\"]\n");
    assert!(off.exclude_tables.iter().any(|t| t == "django_migrations"));
    let (on, _) = load_ok("exclude_tables = [\"audit\"]\n[ddl]\nenabled = true\n");
    assert_eq!(on.exclude_tables, ["audit"]);
}
