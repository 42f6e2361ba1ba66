//! Tests of refused values (each names its key and shows the value as written), the address and URL checks,
//! and that `Debug` prints no credential.

use super::tests::{assert_invalid, load_ok, load_str};
use super::validate::{check_host_port, check_nats_url};

#[test]
fn bad_values_are_invalid() {
    let cases: &[(&str, &str, &str)] = include!("bad_values.in");
    for (text, key, value) in cases {
        assert_invalid(text, key, value);
    }
}

#[test]
fn message_size_is_bounded_by_max_payload() {
    let (c, _) =
        load_ok("[nats]\nmax_payload = 8388608\n[replication_log]\nmax_message_bytes = 4194304");
    assert_eq!(
        (c.nats.max_payload, c.replication_log.max_message_bytes),
        (8 << 20, 4 << 20)
    );
    let err = load_str("[replication_log]\nmax_message_bytes = 1040000").unwrap_err();
    assert!(
        err.to_string()
            .contains("must be at most nats.max_payload (1048576) - 16384 = 1032192"),
        "{err}"
    );
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
