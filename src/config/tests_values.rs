//! Tests of refused values (each names its key and shows the value as written), the address and URL checks,
//! and that `Debug` prints no credential.

use super::tests::{assert_invalid, load_ok, load_str};
use super::validate::{check_host_port, check_nats_url};

#[test]
fn bad_values_are_invalid() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[replication_log]\nshards = \"two\"",
            "replication_log.shards",
            "\"two\"",
        ),
        (
            "[replication_log]\nshards = 0",
            "replication_log.shards",
            "0",
        ),
        (
            "[replication_log]\nshards = -3",
            "replication_log.shards",
            "-3",
        ),
        (
            "[replication_log]\nmax_entries = 0",
            "replication_log.max_entries",
            "0",
        ),
        (
            "[replication_log]\nmax_entries = -2",
            "replication_log.max_entries",
            "-2",
        ),
        (
            "[replication_log]\nreplicas = \"x\"",
            "replication_log.replicas",
            "\"x\"",
        ),
        (
            "[replication_log]\ncompress = \"yes\"",
            "replication_log.compress",
            "\"yes\"",
        ),
        ("scan_max_changes = 0", "scan_max_changes", "0"),
        (
            "scan_max_changes = 4294967296",
            "scan_max_changes",
            "4294967296",
        ),
        ("cleanup_interval = 0", "cleanup_interval", "0"),
        ("cleanup_interval = -5", "cleanup_interval", "-5"),
        ("sleep_timeout = -1", "sleep_timeout", "-1"),
        ("polling_interval = 1.5", "polling_interval", "1.5"),
        ("publish = 1", "publish", "1"),
        ("node_id = 0", "node_id", "0"),
        ("node_id = -7", "node_id", "-7"),
        ("node_id = \"abc\"", "node_id", "\"abc\""),
        ("db_path = \"\"", "db_path", "\"\""),
        ("db_path = 5", "db_path", "5"),
        ("include_tables = \"a\"", "include_tables", "\"a\""),
        ("include_tables = [1]", "include_tables", "1"),
        ("include_tables = [\"\"]", "include_tables", "\"\""),
        (
            "include_tables = [\"t\"]\nexclude_tables = [\"T\"]",
            "exclude_tables",
            "\"T\"",
        ),
        ("[snapshot]\nstore = \"ftp\"", "snapshot.store", "\"ftp\""),
        ("[snapshot]\ninterval = -1", "snapshot.interval", "-1"),
        (
            "[snapshot.nats]\nreplicas = 9",
            "snapshot.nats.replicas",
            "9",
        ),
        (
            "[snapshot.s3]\nuse_ssl = \"true\"",
            "snapshot.s3.use_ssl",
            "\"true\"",
        ),
        ("snapshot = 3", "snapshot", "3"),
        ("[nats]\nurls = [\"\"]", "nats.urls", "\"\""),
        (
            "[nats]\nurls = [\"http://a:80\"]",
            "nats.urls",
            "\"http://a:80\"",
        ),
        (
            "[nats]\nurls = [\"nats://a:99999\"]",
            "nats.urls",
            "\"nats://a:99999\"",
        ),
        (
            "[nats]\nurls = [\"nats://a b\"]",
            "nats.urls",
            "\"nats://a b\"",
        ),
        ("[nats]\nurls = [\"nats://a,\"]", "nats.urls", "\"\""),
        ("[nats]\nurls = \"nats://a\"", "nats.urls", "\"nats://a\""),
        (
            "[nats]\nbind_address = \"4222\"",
            "nats.bind_address",
            "\"4222\"",
        ),
        (
            "[nats]\nbind_address = \"host:-2\"",
            "nats.bind_address",
            "\"host:-2\"",
        ),
        (
            "[nats]\nbind_address = \"host:65536\"",
            "nats.bind_address",
            "\"host:65536\"",
        ),
        (
            "[nats]\nbind_address = \"::1:4222\"",
            "nats.bind_address",
            "\"::1:4222\"",
        ),
        (
            "[nats]\nbind_address = \"bad host:4222\"",
            "nats.bind_address",
            "\"bad host:4222\"",
        ),
        ("[nats]\nconnect_retries = -1", "nats.connect_retries", "-1"),
        (
            "[nats]\nreconnect_wait_seconds = -1",
            "nats.reconnect_wait_seconds",
            "-1",
        ),
        (
            "[nats]\nready_timeout_seconds = 0",
            "nats.ready_timeout_seconds",
            "0",
        ),
        ("[nats]\nsync_always = \"no\"", "nats.sync_always", "\"no\""),
        (
            "[nats]\nstream_prefix = \"a.b\"",
            "nats.stream_prefix",
            "\"a.b\"",
        ),
        (
            "[nats]\nsubject_prefix = \"a.*\"",
            "nats.subject_prefix",
            "\"a.*\"",
        ),
        (
            "[nats]\nsubject_prefix = \"\"",
            "nats.subject_prefix",
            "\"\"",
        ),
        ("[logging]\nformat = \"xml\"", "logging.format", "\"xml\""),
        ("[prometheus]\nbind = \":-1\"", "prometheus.bind", "\":-1\""),
        (
            "[prometheus]\nbind = \"localhost\"",
            "prometheus.bind",
            "\"localhost\"",
        ),
        (
            "[prometheus]\nenable = true\nnamespace = \"my-app\"",
            "prometheus.namespace",
            "\"my-app\"",
        ),
        (
            "[health_check]\nbind = \"0.0.0.0:\"",
            "health_check.bind",
            "\"0.0.0.0:\"",
        ),
        (
            "[health_check]\npath = \"health\"",
            "health_check.path",
            "\"health\"",
        ),
        ("[health_check]\ndetailed = 0", "health_check.detailed", "0"),
        (
            "[health_check]\npath = \"/wait-replicated\"",
            "health_check.path",
            "\"/wait-replicated\"",
        ),
        (
            "[health_check]\nready_path = \"/wait-replicated\"",
            "health_check.ready_path",
            "\"/wait-replicated\"",
        ),
    ];
    for (text, key, value) in cases {
        assert_invalid(text, key, value);
    }
}

#[test]
fn wrong_type_message_names_expected_type() {
    let err = load_str("[replication_log]\nshards = \"two\"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for `replication_log.shards`: \"two\" (expected a positive integer)"
    );
}

#[test]
fn prometheus_names_checked_only_when_enabled() {
    let (c, _) = load_ok("[prometheus]\nnamespace = \"my-app\"");
    assert_eq!(c.prometheus.namespace, "my-app");
}

#[test]
fn address_checks() {
    for ok in [
        ":4222",
        "0.0.0.0:4222",
        "localhost:0",
        "[::]:1",
        "[fe80::1%eth0]:2",
        "my-host.example:65535",
    ] {
        assert!(check_host_port(ok, false).is_ok(), "{ok}");
    }
    assert!(check_host_port(":-1", true).is_ok());
    for bad in [
        ":-1",
        "",
        ":",
        "h",
        "h:x",
        "[::1]",
        "[::1]4222",
        "[zz]:1",
        "h:+1",
        "h: 1",
    ] {
        assert!(check_host_port(bad, false).is_err(), "{bad}");
    }
    for ok in [
        "nats://h",
        "NATS://h:1",
        "wss://u:p@h:443/path?q",
        "h:4222",
        "10.0.0.1",
        "[::1]:4222",
    ] {
        assert!(check_nats_url(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "nats://",
        "nats://:4222",
        "http://h",
        "h:",
        "h:abc",
        "nats://[::1",
    ] {
        assert!(check_nats_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn type_errors_show_the_value_as_written() {
    let err = load_str("db_path = 1979-05-27").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for `db_path`: 1979-05-27 (expected a string)"
    );
    // The entry at fault, also after an entry holding several URLs was split.
    let err = load_str("[nats]\nurls = [\"nats://a:1, nats://b:2\", 7]").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for `nats.urls`: 7 (expected an array of strings)"
    );
    let err = load_str("[Snapshot.NATS]\nReplicas = 9").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for `snapshot.nats.replicas`: 9 (expected an integer no greater than 5)"
    );
}

#[test]
fn debug_prints_no_credentials() {
    let (c, _) = load_ok(
        r#"
[nats]
urls = ["nats://alice:pw-in-url@a:4222", "tls://lone-token@b:4223", "c:4222"]
user_name = "alice"
user_password = "nats-password"
[snapshot.s3]
access_key = "s3-access-key"
secret = "s3-secret-key"
session_token = "s3-session-token"
[snapshot.webdav]
url = "https://h/p?dir=/s&login=u&secret=webdav-password"
[snapshot.sftp]
url = "sftp://u:sftp-password@h:22/x"
"#,
    );
    for text in [format!("{c:?}"), format!("{c:#?}")] {
        for secret in [
            "pw-in-url",
            "lone-token",
            "nats-password",
            "s3-access-key",
            "s3-secret-key",
            "s3-session-token",
            "webdav-password",
            "sftp-password",
        ] {
            assert!(!text.contains(secret), "{secret:?} shows in {text}");
        }
        for shown in [
            "\"<redacted>\"",
            "nats://alice:<redacted>@a:4222",
            "c:4222",
            "https://h/p?dir=/s&login=u&secret=<redacted>",
            "sftp://u:<redacted>@h:22/x",
            "user_name: \"alice\"",
        ] {
            assert!(text.contains(shown), "{shown:?} missing in {text}");
        }
    }
}

#[test]
fn route_tls_keys_come_together_and_name_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, "PEM").unwrap();
        p.display().to_string()
    };
    let (cert, key, ca) = (file("route.pem"), file("route.key"), file("ca.pem"));
    let keys = |cert: &str, key: &str, ca: &str| {
        format!(
            "[nats]\ncluster_cert_file = {cert:?}\ncluster_key_file = {key:?}\ncluster_ca_file = {ca:?}\n"
        )
    };
    let (c, _) = load_ok(&keys(&cert, &key, &ca));
    assert_eq!(
        (
            c.nats.cluster_cert_file.as_deref(),
            c.nats.cluster_key_file.as_deref(),
            c.nats.cluster_ca_file.as_deref()
        ),
        (
            Some(std::path::Path::new(&cert)),
            Some(std::path::Path::new(&key)),
            Some(std::path::Path::new(&ca))
        )
    );
    // None at all is fine too; an empty path is the same as none.
    let (c, _) = load_ok(&keys("", "", ""));
    assert_eq!(c.nats.cluster_cert_file, None);

    assert_invalid(&keys(&cert, "", &ca), "nats.cluster_key_file", "\"\"");
    assert_invalid(&keys("", &key, &ca), "nats.cluster_cert_file", "\"\"");
    assert_invalid(&keys(&cert, &key, ""), "nats.cluster_ca_file", "\"\"");
    assert_invalid(&keys("", "", &ca), "nats.cluster_cert_file", "\"\"");
    let missing = dir.path().join("missing.pem").display().to_string();
    assert_invalid(
        &keys(&cert, &key, &missing),
        "nats.cluster_ca_file",
        &missing,
    );
    let text = load_str(&keys(&missing, &key, &ca))
        .unwrap_err()
        .to_string();
    assert!(text.contains("cannot read the file"), "{text}");
    let folder = dir.path().display().to_string();
    assert_invalid(
        &keys(&cert, &folder, &ca),
        "nats.cluster_key_file",
        "not a file",
    );
}
