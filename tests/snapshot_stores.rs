//! The snapshot stores against real servers (see `support::servers`): S3 (moto), WebDAV (wsgidav), SFTP
//! (OpenSSH) and the NATS object store (a standalone nats-server). Each store is opened from a configuration
//! file read by `config::load`, then: a missing object is `None`; a 20 MiB object streamed from a file comes
//! back with the same sha256; a second put replaces it; no temporary object is left beside it; delete removes
//! it and deleting again is no error; `describe()` shows no credential; bad settings are `StoreError::Config`,
//! a wrong password a clear `StoreError::Failed`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use harmonylite::config::{self, Config, Overrides};
use harmonylite::snapshot::store::{self, Reader, Store, StoreError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use support::*;

const BIG: usize = 20 << 20;
/// The replacing object: smaller than the first, not a whole number of upload parts.
const SMALL: usize = (3 << 20) + 12_345;
const NAME: &str = "snapshot-test.db";

/// What the library logs (`harmonylite` at DEBUG), captured for the whole test process.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// The captured log so far (installs the capture on first use).
fn logs() -> String {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    let logs = LOGS.get_or_init(|| {
        let logs = Logs::default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("harmonylite=debug")
            .with_writer(logs.clone())
            .with_ansi(false)
            .try_init();
        logs
    });
    String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned()
}

/// Writes `len` pseudo-random bytes (from `seed`) to `path`, 1 MiB at a time; returns their sha256.
fn write_random(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    use std::io::Write;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hash = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill(&mut chunk[..n]);
        hash.update(&chunk[..n]);
        file.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
    hash.finalize().to_vec()
}

/// Length and sha256 of a downloaded object, read in 64 KiB pieces.
async fn digest(mut r: Reader) -> (usize, Vec<u8>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read the downloaded object");
        if n == 0 {
            return (len, hash.finalize().to_vec());
        }
        len += n;
        hash.update(&buf[..n]);
    }
}

async fn file_reader(path: &Path) -> Reader {
    Box::pin(tokio::fs::File::open(path).await.unwrap())
}

/// The configuration of `toml`, written to a file in `dir` and read the way the node reads it.
fn load(dir: &Path, toml: &str) -> Config {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let (cfg, warnings) = config::load(Some(&path), &Overrides::default()).expect("load config");
    assert!(warnings.is_empty(), "config warnings: {warnings:?}");
    cfg
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The entries of `dir`, sorted (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The common scenario. `objects_dir`, when the test can see the store's files, is checked after each put
/// for leftovers: only the final object may be there.
async fn exercise(s: &dyn Store, work: &Path, secrets: &[&str], objects_dir: Option<&Path>) {
    let describe = s.describe();
    for secret in secrets {
        assert!(
            !describe.contains(secret),
            "describe() shows a credential: {describe}"
        );
    }
    let started = std::time::Instant::now();
    assert!(s.get("no-such-object").await.unwrap().is_none());

    let big = work.join("big");
    let big_hash = write_random(&big, BIG, 1);
    s.put(NAME, file_reader(&big).await).await.unwrap();
    let (len, hash) = digest(s.get(NAME).await.unwrap().expect("object after put")).await;
    assert_eq!(
        (len, &hash),
        (BIG, &big_hash),
        "{describe}: downloaded object differs"
    );
    if let Some(dir) = objects_dir {
        assert_eq!(entries(dir), [NAME], "leftovers beside the object");
    }

    let small = work.join("small");
    let small_hash = write_random(&small, SMALL, 2);
    s.put(NAME, file_reader(&small).await).await.unwrap();
    let (len, hash) = digest(
        s.get(NAME)
            .await
            .unwrap()
            .expect("object after the second put"),
    )
    .await;
    assert_eq!(
        (len, &hash),
        (SMALL, &small_hash),
        "{describe}: replaced object differs"
    );
    if let Some(dir) = objects_dir {
        assert_eq!(entries(dir), [NAME], "leftovers beside the replaced object");
    }

    s.delete(NAME).await.unwrap();
    assert!(
        s.get(NAME).await.unwrap().is_none(),
        "object still there after delete"
    );
    s.delete(NAME).await.expect("deleting an absent object");
    eprintln!("{describe}: scenario took {:?}", started.elapsed());
}

async fn open_err(cfg: &Config) -> StoreError {
    match store::open_external(cfg).await {
        Ok(s) => panic!("opened {} with a bad configuration", s.describe()),
        Err(e) => e,
    }
}

fn assert_config_err(e: StoreError, secrets: &[&str]) {
    let text = e.to_string();
    assert!(
        matches!(e, StoreError::Config(_)),
        "not a configuration error: {text}"
    );
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "the error shows a credential: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store() {
    let server = S3Server::start();
    let work = temp_dir("hl-s3-test-");
    let s3 = |bucket: &str, endpoint: &str| {
        format!(
            "[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nendpoint = {}\nbucket = {}\npath = \"/cluster-a/snaps/\"\n\
             access_key = {}\nsecret = {}\nsession_token = \"the-session-token\"\n",
            toml_str(endpoint),
            toml_str(bucket),
            toml_str(&server.access_key),
            toml_str(&server.secret)
        )
    };
    // The bucket does not exist yet: opening creates it, and opening again finds it.
    let cfg = load(work.path(), &s3("hl-snapshots", &server.endpoint));
    let s = store::open_external(&cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(
        s.describe(),
        format!(
            "s3://hl-snapshots/cluster-a/snaps at http://{}",
            server.endpoint
        )
    );
    let s = store::open_external(&cfg).await.unwrap();
    let secrets = [
        server.access_key.as_str(),
        server.secret.as_str(),
        "the-session-token",
    ];
    exercise(&*s, work.path(), &secrets, None).await;
    // The 20 MiB object went up in parts, the small one in one PUT.
    let log = server.log();
    assert!(
        log.contains("snaps/snapshot-test.db?uploads"),
        "no multipart upload:\n{log}"
    );
    assert!(
        log.contains("PUT /hl-snapshots/cluster-a/snaps/snapshot-test.db HTTP"),
        "no single PUT:\n{log}"
    );

    let e = open_err(&load(work.path(), &s3("", &server.endpoint))).await;
    assert_config_err(e, &secrets);
    let e = open_err(&load(
        work.path(),
        &s3("b", &format!("http://{}", server.endpoint)),
    ))
    .await;
    assert_config_err(e, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_store() {
    let server = WebDavServer::start();
    let work = temp_dir("hl-webdav-test-");
    let webdav = |query: &str| {
        format!(
            "[snapshot]\nstore = \"webdav\"\n[snapshot.webdav]\nurl = {}\n",
            toml_str(&format!("{}?{query}", server.url))
        )
    };
    let good = format!(
        "dir=/snaps/sub&login={}&secret={}",
        server.user, server.password
    );
    // Missing collections are made at open.
    let s = store::open_external(&load(work.path(), &webdav(&good)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert!(server.root().join("snaps/sub").is_dir());
    assert_eq!(s.describe(), format!("webdav {}/snaps/sub/", server.url));
    let objects = server.root().join("snaps/sub");
    exercise(&*s, work.path(), &[&server.password], Some(&objects)).await;

    for bad in [
        format!("dir=/snaps&login={}", server.user),
        format!("dir=/snaps&secret={}", server.password),
    ] {
        let e = open_err(&load(work.path(), &webdav(&bad))).await;
        assert_config_err(e, &[&server.password]);
    }
    let wrong = format!(
        "dir=/snaps&login={}&secret=wrong-{}",
        server.user, server.password
    );
    let e = open_err(&load(work.path(), &webdav(&wrong))).await;
    assert!(
        matches!(&e, StoreError::Failed { reason, .. } if reason.contains("401")),
        "{e}"
    );
    assert!(!e.to_string().contains(&server.password), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_store() {
    logs();
    let server = SftpServer::start();
    let work = temp_dir("hl-sftp-test-");
    let sftp = |password: &str, path: &Path| {
        format!(
            "[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\nurl = {}\n",
            toml_str(&format!(
                "sftp://{}:{password}@127.0.0.1:{}{}",
                server.user,
                server.port,
                path.display()
            ))
        )
    };
    let objects: PathBuf = server.home.join("snaps/sub");
    let s = store::open_external(&load(work.path(), &sftp(&server.password, &objects)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert!(objects.is_dir(), "directory not created at open");
    assert_eq!(
        s.describe(),
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            server.user,
            server.port,
            objects.display()
        )
    );
    exercise(&*s, work.path(), &[&server.password], Some(&objects)).await;
    // OpenSSH has the atomic rename extension: the uploads used it. The host key was logged.
    let log = logs();
    let to = objects.join(NAME).display().to_string();
    let renames: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("renamed") && l.contains(&to))
        .collect();
    assert!(
        renames.len() == 2
            && renames
                .iter()
                .all(|l| l.contains("renamed with posix-rename@openssh.com")),
        "not two posix-renames:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains(&server.fingerprint)),
        "host key {} not logged:\n{log}",
        server.fingerprint
    );

    let no_password = format!(
        "[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\nurl = \"sftp://{}@127.0.0.1:{}/x\"\n",
        server.user, server.port
    );
    assert_config_err(open_err(&load(work.path(), &no_password)).await, &[]);
    let e = open_err(&load(work.path(), &sftp("wrong-password", &objects))).await;
    assert!(
        matches!(&e, StoreError::Failed { reason, .. } if reason.contains("password refused")),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong-password"), "{e}");
}

/// A server denying `posix-rename@openssh.com` (and so not offering it): replacing an object falls back on
/// removing the old file, then renaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_store_without_posix_rename() {
    logs();
    let server = SftpServer::start_with("-P posix-rename");
    let work = temp_dir("hl-sftp-test-");
    let objects: PathBuf = server.home.join("plain");
    let url = format!(
        "sftp://{}:{}@127.0.0.1:{}{}",
        server.user,
        server.password,
        server.port,
        objects.display()
    );
    let toml = format!(
        "[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\nurl = {}\n",
        toml_str(&url)
    );
    let s = store::open_external(&load(work.path(), &toml))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    exercise(&*s, work.path(), &[&server.password], Some(&objects)).await;
    let to = objects.join(NAME).display().to_string();
    let log = logs();
    let line = |what: &str| log.lines().any(|l| l.contains(what) && l.contains(&to));
    assert!(!line("renamed with posix-rename"), "{log}");
    assert!(line("removed the old file, then renamed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_store() {
    let server = NatsServer::start();
    let work = temp_dir("hl-nats-test-");
    let cfg = load(
        work.path(),
        "[snapshot]\nstore = \"nats\"\n[snapshot.nats]\nbucket = \"hl-test-snapshots\"\n",
    );
    let client = async_nats::connect(&server.url)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let js = async_nats::jetstream::new(client);
    let s = store::open(&cfg, &js).await.unwrap();
    assert_eq!(s.describe(), "nats object store hl-test-snapshots");
    exercise(&*s, work.path(), &[], None).await;
    assert_config_err(open_err(&cfg).await, &[]);
}

/// Nothing listening: each store fails to open with a `Failed` error that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_fail_clearly() {
    let work = temp_dir("hl-unreachable-test-");
    let port = free_port();
    for toml in [
        format!(
            "[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nendpoint = \"127.0.0.1:{port}\"\nbucket = \"b\"\n"
        ),
        format!(
            "[snapshot]\nstore = \"webdav\"\n[snapshot.webdav]\nurl = \"http://127.0.0.1:{port}/dav?login=u&secret=hidden-pw\"\n"
        ),
        format!(
            "[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\nurl = \"sftp://u:hidden-pw@127.0.0.1:{port}/x\"\n"
        ),
    ] {
        let e = open_err(&load(work.path(), &toml)).await;
        let text = e.to_string();
        eprintln!("{text}");
        assert!(matches!(e, StoreError::Failed { .. }), "{text}");
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        assert!(!text.contains("hidden-pw"), "{text}");
    }
}
