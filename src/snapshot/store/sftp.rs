//! Snapshots on an SFTP server: `[snapshot.sftp] url` = `sftp://user:password@host[:port]/path` (password
//! authentication; port 22 by default). Object `name` is the file `/path/<name>`; an empty path is the user's
//! login directory. The directory is created (with its parents) at open and before each upload.
//!
//! Each operation opens its own SSH connection (snapshots are rare; nothing to keep alive in between). An upload
//! writes `<name>.tmp-<hex>` in the same directory (pipelined writes, flushed with `fsync@openssh.com` when the
//! server has it), then renames it over `<name>` with `posix-rename@openssh.com` (atomic), or where the server
//! lacks that extension with a plain rename, removing the old file first if the rename is refused.
//!
//! The server's host key is not checked against a known_hosts file (as the original); its SHA-256 fingerprint
//! is logged at INFO on first contact, and at WARN if it changes while running.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use russh::client;
use russh::keys::{HashAlg, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::fs::File;
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::{Reader, Store, StoreError};
use crate::config::SnapshotSftpConfig;

const POSIX_RENAME: &str = "posix-rename@openssh.com";
/// Connecting, key exchange and authentication together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// One SFTP request (a write, a read, a rename) before the operation fails.
const REQUEST_TIMEOUT_SECS: u64 = 60;
/// The read buffer of an upload (the SFTP writes are 32 KiB packets, pipelined).
const UPLOAD_CHUNK: usize = 256 * 1024;

pub struct SftpStore {
    host: String,
    port: u16,
    user: String,
    password: String,
    /// The directory (no trailing `/`; empty: the login directory).
    dir: String,
    /// The host key fingerprint last seen.
    fingerprint: Arc<Mutex<Option<String>>>,
}

impl SftpStore {
    pub async fn open(cfg: &SnapshotSftpConfig) -> Result<SftpStore, StoreError> {
        let store = SftpStore::parse(&cfg.url)?;
        let conn = store.connect().await.map_err(|e| store.failed(e))?;
        let made = store.ensure_dir(&conn.sftp).await;
        conn.close().await;
        made.map_err(|e| store.failed(e))?;
        Ok(store)
    }

    /// Checks and splits the configured URL (no connection).
    fn parse(raw: &str) -> Result<SftpStore, StoreError> {
        let config = |msg: &str| {
            StoreError::Config(format!(
                "[snapshot.sftp] url: {msg} (sftp://user:password@host:port/path)"
            ))
        };
        if raw.trim().is_empty() {
            return Err(config("empty"));
        }
        // The error text of a bad URL never repeats the URL: it holds the password.
        let url = url::Url::parse(raw.trim()).map_err(|_| config("not a URL"))?;
        if url.scheme() != "sftp" {
            return Err(config("the scheme must be sftp://"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err(config("no host")),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| config("user, password and path must be UTF-8"))
        };
        let user = decode(url.username())?;
        if user.is_empty() {
            return Err(config("no user name"));
        }
        let password = decode(url.password().unwrap_or_default())?;
        if password.is_empty() {
            return Err(config(
                "no password (password authentication is the one supported)",
            ));
        }
        let mut dir = decode(url.path())?;
        while dir.len() > 1 && dir.ends_with('/') {
            dir.pop();
        }
        Ok(SftpStore {
            host,
            port: url.port().unwrap_or(22),
            user,
            password,
            dir,
            fingerprint: Arc::new(Mutex::new(None)),
        })
    }

    fn failed(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::failed(&self.describe(), reason)
    }

    fn path(&self, name: &str) -> String {
        match self.dir.as_str() {
            "" => name.to_string(),
            "/" => format!("/{name}"),
            dir => format!("{dir}/{name}"),
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(5 * 60)),
            keepalive_interval: Some(Duration::from_secs(15)),
            ..Default::default()
        });
        let handler = HostKeyLogger {
            server: format!("{}:{}", self.host, self.port),
            seen: self.fingerprint.clone(),
        };
        let connecting = async {
            let mut ssh = client::connect(config, (self.host.as_str(), self.port), handler)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let auth = ssh
                .authenticate_password(&self.user, &self.password)
                .await
                .map_err(|e| format!("authenticating: {e}"))?;
            if !auth.success() {
                return Err(format!("password refused for user {}", self.user));
            }
            Ok(ssh)
        };
        let ssh = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no SSH session within {CONNECT_TIMEOUT:?}"))??;
        let sftp = SftpSession::new_with_config(subsystem(&ssh).await?, sftp_config())
            .await
            .map_err(|e| format!("starting SFTP: {e}"))?;
        Ok(Conn { ssh, sftp })
    }

    /// Creates the directory and its missing parents.
    async fn ensure_dir(&self, sftp: &SftpSession) -> Result<(), String> {
        if self.dir.is_empty() || is_dir(sftp, &self.dir).await {
            return Ok(());
        }
        let mut path = String::new();
        for (i, part) in self.dir.split('/').enumerate() {
            if i > 0 {
                path.push('/');
            }
            path.push_str(part);
            if part.is_empty() || is_dir(sftp, &path).await {
                continue;
            }
            if let Err(e) = sftp.create_dir(path.as_str()).await {
                // Made meanwhile by another node?
                if !is_dir(sftp, &path).await {
                    return Err(format!("creating directory {path}: {e}"));
                }
            }
        }
        Ok(())
    }

    async fn put_inner(&self, conn: &Conn, name: &str, body: Reader) -> Result<(), String> {
        self.ensure_dir(&conn.sftp).await?;
        let temp = self.path(&format!("{name}.{}", super::temp_suffix()));
        let written = async {
            let mut file = conn
                .sftp
                .create(temp.as_str())
                .await
                .map_err(|e| format!("creating {temp}: {e}"))?;
            let mut body = tokio::io::BufReader::with_capacity(UPLOAD_CHUNK, body);
            tokio::io::copy_buf(&mut body, &mut file)
                .await
                .map_err(|e| format!("writing {temp}: {e}"))?;
            // Waits for every write to be acknowledged, and fsyncs where the server can.
            file.flush()
                .await
                .map_err(|e| format!("flushing {temp}: {e}"))?;
            file.shutdown()
                .await
                .map_err(|e| format!("closing {temp}: {e}"))?;
            self.rename(conn, &temp, &self.path(name)).await
        }
        .await;
        if written.is_err() {
            let _ = conn.sftp.remove_file(temp.as_str()).await;
        }
        written
    }

    /// Renames `from` over `to`: atomically with `posix-rename@openssh.com`, else (the server lacks or refuses
    /// it) with a plain rename, which SFTP servers refuse onto an existing file: that one is removed first.
    async fn rename(&self, conn: &Conn, from: &str, to: &str) -> Result<(), String> {
        let raw = RawSftpSession::new(subsystem(&conn.ssh).await?);
        raw.set_timeout(REQUEST_TIMEOUT_SECS);
        let version = raw
            .init()
            .await
            .map_err(|e| format!("starting SFTP: {e}"))?;
        if version
            .extensions
            .get(POSIX_RENAME)
            .is_some_and(|v| v == "1")
        {
            let mut data = Vec::with_capacity(8 + from.len() + to.len());
            for s in [from, to] {
                data.extend_from_slice(&(s.len() as u32).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            match raw.extended(POSIX_RENAME, data).await {
                Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => {
                    tracing::debug!(from, to, "renamed with {POSIX_RENAME}");
                    return Ok(());
                }
                // Refused (a server may list the extension yet deny it): the plain way below.
                Ok(answer) => tracing::debug!(from, to, ?answer, "{POSIX_RENAME} refused"),
                Err(e) => tracing::debug!(from, to, error = %e, "{POSIX_RENAME} failed"),
            }
        }
        if conn.sftp.rename(from, to).await.is_ok() {
            tracing::debug!(from, to, "renamed");
            return Ok(());
        }
        match conn.sftp.remove_file(to).await {
            Ok(()) => {}
            Err(e) if is_no_such_file(&e) => {}
            Err(e) => return Err(format!("removing {to} to replace it: {e}")),
        }
        conn.sftp
            .rename(from, to)
            .await
            .map_err(|e| format!("renaming {from} to {to}: {e}"))?;
        tracing::debug!(from, to, "removed the old file, then renamed");
        Ok(())
    }
}

/// One SSH connection with its SFTP session.
struct Conn {
    ssh: client::Handle<HostKeyLogger>,
    sftp: SftpSession,
}

impl Conn {
    async fn close(self) {
        let _ = self.sftp.close().await;
        let _ = self
            .ssh
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn sftp_config() -> russh_sftp::client::Config {
    russh_sftp::client::Config {
        request_timeout_secs: REQUEST_TIMEOUT_SECS,
        ..Default::default()
    }
}

/// A new channel running the `sftp` subsystem.
async fn subsystem(
    ssh: &client::Handle<HostKeyLogger>,
) -> Result<russh::ChannelStream<client::Msg>, String> {
    let channel = ssh
        .channel_open_session()
        .await
        .map_err(|e| format!("opening an SSH channel: {e}"))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| format!("starting the sftp subsystem: {e}"))?;
    Ok(channel.into_stream())
}

async fn is_dir(sftp: &SftpSession, path: &str) -> bool {
    sftp.metadata(path).await.is_ok_and(|m| m.is_dir())
}

fn is_no_such_file(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

/// Accepts any host key (no known_hosts, as the original) and logs its fingerprint.
struct HostKeyLogger {
    server: String,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyLogger {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = key.public_key();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.as_deref() {
            Some(f) if f == fingerprint => {}
            Some(previous) => tracing::warn!(server = %self.server, algorithm = %key.algorithm(),
                %fingerprint, previous, "the SFTP server's host key changed (not checked against known_hosts)"),
            None => {
                tracing::info!(server = %self.server, algorithm = %key.algorithm(), %fingerprint,
                "SFTP server host key (not checked against known_hosts)")
            }
        }
        *seen = Some(fingerprint);
        Ok(true)
    }
}

/// A downloaded file, keeping its SSH connection open while it is read.
struct Download {
    file: File,
    _conn: Conn,
}

impl AsyncRead for Download {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

impl Store for SftpStore {
    fn describe(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let sep = if self.dir.starts_with('/') { "" } else { "/" };
        format!("sftp://{}@{host}:{}{sep}{}", self.user, self.port, self.dir)
    }

    fn put<'a>(&'a self, name: &'a str, body: Reader) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let conn = self.connect().await.map_err(|e| self.failed(e))?;
            let result = self.put_inner(&conn, name, body).await;
            conn.close().await;
            result.map_err(|e| self.failed(e))
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Reader>, StoreError>> {
        Box::pin(async move {
            let conn = self.connect().await.map_err(|e| self.failed(e))?;
            let path = self.path(name);
            match conn.sftp.open(path.as_str()).await {
                Ok(file) => Ok(Some(Box::pin(Download { file, _conn: conn }) as Reader)),
                Err(e) if is_no_such_file(&e) => {
                    conn.close().await;
                    Ok(None)
                }
                Err(e) => {
                    conn.close().await;
                    Err(self.failed(format!("opening {path}: {e}")))
                }
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let conn = self.connect().await.map_err(|e| self.failed(e))?;
            let path = self.path(name);
            let result = match conn.sftp.remove_file(path.as_str()).await {
                Ok(()) => Ok(()),
                Err(e) if is_no_such_file(&e) => Ok(()),
                Err(e) => Err(self.failed(format!("removing {path}: {e}"))),
            };
            conn.close().await;
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_gives_user_password_host_port_and_directory() {
        let s = SftpStore::parse("sftp://bob:p%40ss%3Aw@files.example:2222/srv/snap%20s/").unwrap();
        assert_eq!(
            (
                s.user.as_str(),
                s.password.as_str(),
                s.host.as_str(),
                s.port
            ),
            ("bob", "p@ss:w", "files.example", 2222)
        );
        assert_eq!(s.path("snapshot.db"), "/srv/snap s/snapshot.db");
        assert_eq!(s.describe(), "sftp://bob@files.example:2222/srv/snap s");
        assert!(!s.describe().contains("ss"));

        let s = SftpStore::parse("sftp://bob:pw@[::1]").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.dir.as_str()), ("::1", 22, ""));
        assert_eq!(s.path("o"), "o");
        assert_eq!(s.describe(), "sftp://bob@[::1]:22/");
    }

    #[test]
    fn password_user_and_scheme_are_required() {
        for bad in [
            "",
            "sftp://bob@h/x",
            "sftp://bob:@h/x",
            "sftp://:pw@h/x",
            "ssh://bob:pw@h/x",
            "bob:pw@h",
        ] {
            match SftpStore::parse(bad) {
                Err(StoreError::Config(msg)) => assert!(!msg.contains("pw@"), "{msg}"),
                Err(e) => panic!("{bad}: {e}"),
                Ok(_) => panic!("{bad} accepted"),
            }
        }
    }
}
