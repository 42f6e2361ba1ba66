//! The node's own NATS client: to the embedded server's loopback port, or to the external `nats.urls`.
//!
//! The initial connection is tried a bounded number of times (`nats.connect_retries`, `reconnect_wait_seconds`
//! apart) and fails start-up with the last error. Once connected, the client reconnects forever, quickly at
//! first and then every `reconnect_wait_seconds`, logging each disconnect and reconnect.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use super::NatsError;

/// How to connect. Its `Debug` shows no password and no NKey seed.
#[derive(Clone)]
pub(crate) struct ClientSettings {
    /// Comma-separated server URLs.
    pub urls: String,
    /// Client name, `harmonylite-node-<id>`.
    pub name: String,
    pub user: Option<(String, String)>,
    pub nkey_seed: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub require_tls: bool,
    /// Embedded mode: talk only to our own server (ignore servers it advertises).
    pub own_server_only: bool,
    pub attempts: u32,
    pub retry_wait: Duration,
    pub reconnect_wait: Duration,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const REDACTED: &str = "<redacted>";
        f.debug_struct("ClientSettings")
            .field("urls", &redact_url_passwords(&self.urls))
            .field("name", &self.name)
            .field("user", &self.user.as_ref().map(|(u, _)| (u, REDACTED)))
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| REDACTED))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("require_tls", &self.require_tls)
            .field("own_server_only", &self.own_server_only)
            .field("attempts", &self.attempts)
            .field("retry_wait", &self.retry_wait)
            .field("reconnect_wait", &self.reconnect_wait)
            .finish()
    }
}

/// Comma-separated URLs with their passwords and tokens replaced.
fn redact_url_passwords(urls: &str) -> String {
    urls.split(',')
        .map(crate::config::redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn options(s: &ClientSettings) -> ConnectOptions {
    let mut opts = ConnectOptions::new()
        .name(&s.name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback({
            let cap = s.reconnect_wait;
            move |attempts| crate::retry::jitter(reconnect_delay(attempts, cap))
        })
        .event_callback({
            let name = s.name.clone();
            move |event| {
                let name = name.clone();
                async move { log_event(&name, event) }
            }
        });
    // One identity per connection: the NKey when there is one, else user and password.
    if let Some(seed) = &s.nkey_seed {
        opts = opts.nkey(seed.clone());
    } else if let Some((user, password)) = &s.user {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &s.ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &s.client_cert {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if s.require_tls {
        opts = opts.require_tls(true);
    }
    if s.own_server_only {
        opts = opts.ignore_discovered_servers().retain_servers_order();
    }
    opts
}

/// 0 for the first attempt, then 100 ms doubling, capped at `cap`.
pub(crate) fn reconnect_delay(attempts: usize, cap: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = (attempts - 2).min(16) as u32;
    Duration::from_millis(100u64.saturating_mul(1 << exp)).min(cap.max(Duration::from_millis(100)))
}

/// Whether the client lost its connection since it last said it had one (so that getting it back is said).
static DISCONNECTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn log_event(name: &str, event: Event) {
    use std::sync::atomic::Ordering;
    match event {
        Event::Connected if DISCONNECTED.swap(false, Ordering::Relaxed) => {
            tracing::info!(client = name, "reconnected to NATS")
        }
        Event::Connected => tracing::debug!(client = name, "connected to NATS"),
        Event::Disconnected => {
            DISCONNECTED.store(true, Ordering::Relaxed);
            tracing::warn!(client = name, "disconnected from NATS; reconnecting")
        }
        // Our own shutdown (or a command's end) drains the client.
        Event::Draining => tracing::debug!(client = name, "draining the NATS client"),
        Event::LameDuckMode => tracing::warn!(client = name, "NATS server entered lame duck mode"),
        Event::Closed => tracing::info!(client = name, "NATS connection closed"),
        Event::SlowConsumer(sid) => tracing::warn!(client = name, sid, "slow NATS consumer"),
        other => tracing::warn!(client = name, "NATS: {other}"),
    }
}

/// Connects, retrying the initial connection `settings.attempts` times, about `retry_wait` apart (jittered).
/// A refusal that retrying cannot heal (credentials or a certificate refused, see [`lasting_cause`]) fails at
/// once with [`NatsError::Refused`].
pub(crate) async fn connect(settings: &ClientSettings) -> Result<Client, NatsError> {
    let attempts = settings.attempts.max(1);
    let mut backoff = crate::retry::Backoff::new(settings.retry_wait, settings.retry_wait);
    let mut last = String::new();
    let shown_urls = redact_url_passwords(&settings.urls);
    for attempt in 1..=attempts {
        match options(settings).connect(settings.urls.as_str()).await {
            Ok(client) => {
                tracing::debug!(urls = %shown_urls, attempt, "NATS client connected");
                return Ok(client);
            }
            Err(e) => {
                if let Some(reason) = lasting_cause(&e) {
                    return Err(NatsError::Refused {
                        urls: shown_urls,
                        reason,
                    });
                }
                last = e.to_string();
                tracing::warn!(urls = %shown_urls, attempt, attempts, error = %e, "cannot connect to NATS");
            }
        }
        if attempt < attempts {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Err(NatsError::Connect {
        urls: shown_urls,
        attempts,
        reason: last,
    })
}

/// Why a failed connection will fail the same way however often it is tried, naming the cause and the
/// settings to look at: the server refused our credentials or our certificate, or its certificate is not
/// trusted. `None` for what may pass (nothing listening yet, a time-out, a dropped connection).
fn lasting_cause(e: &async_nats::ConnectError) -> Option<String> {
    use async_nats::ConnectErrorKind as Kind;
    match e.kind() {
        Kind::AuthorizationViolation => Some(
            "authorization violation: the server refused our credentials (nats.user_name and \
             nats.user_password, or nats.seed_file whose public key it does not know)"
                .to_string(),
        ),
        Kind::Authentication => Some(format!("authentication failed: {e} (nats.seed_file)")),
        Kind::Tls => Some(format!(
            "TLS cannot be set up: {e} (nats.ca_file, nats.cert_file, nats.key_file)"
        )),
        _ => tls_error(e).map(describe_tls_error),
    }
}

/// The TLS error behind a connection failure, if any (rustls's errors reach us inside `std::io::Error`s).
fn tls_error(e: &async_nats::ConnectError) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if tls.is_some() {
            return tls;
        }
        source = err.source();
    }
    None
}

fn describe_tls_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as Cert;
    match e {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                Cert::UnknownIssuer => {
                    "is signed by an unknown issuer (no CA of nats.ca_file signed it)".to_string()
                }
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    "is not valid for the host name connected to".to_string()
                }
                Cert::Expired | Cert::ExpiredContext { .. } => "has expired".to_string(),
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                    "is not valid yet".to_string()
                }
                other => format!("is refused: {other:?}"),
            };
            format!("TLS: the server's certificate {why} ({e})")
        }
        rustls::Error::AlertReceived(alert) => format!(
            "TLS: the server refused the handshake with alert {alert:?}: it does not accept our client \
             certificate (nats.cert_file, nats.key_file) or needs one"
        ),
        other => format!("TLS: {other}"),
    }
}

/// Number of servers the connected server advertises (its cluster's client URLs, its own included); at least 1.
/// A server listening on several interfaces advertises one URL per address and is then counted more than once;
/// with `no_advertise` the count is 1. It is a hint: set `replication_log.replicas` explicitly for external NATS.
pub(crate) fn advertised_servers(client: &Client) -> usize {
    let mut urls: Vec<String> = client.server_info().connect_urls;
    urls.sort();
    urls.dedup();
    urls.len().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secrets() {
        let s = ClientSettings {
            urls: "nats://a:1,tls://bob:hunter2@b:2".into(),
            name: "n".into(),
            user: Some(("alice".into(), "s3cret-pw".into())),
            nkey_seed: Some("SUAMYSEEDVALUE".into()),
            ca_file: None,
            client_cert: None,
            require_tls: false,
            own_server_only: true,
            attempts: 1,
            retry_wait: Duration::ZERO,
            reconnect_wait: Duration::ZERO,
        };
        let text = format!("{s:?}");
        for secret in ["s3cret-pw", "SUAMYSEEDVALUE", "hunter2"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("alice") && text.contains("tls://bob:<redacted>@b:2"),
            "{text}"
        );
    }

    #[test]
    fn refusals_are_lasting_and_named_while_outages_are_retried() {
        use async_nats::{ConnectError, ConnectErrorKind as Kind};
        let io = |e: std::io::Error| ConnectError::with_source(Kind::Io, e);
        let tls = |e: rustls::Error| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));

        for passing in [
            io(std::io::ErrorKind::ConnectionRefused.into()),
            io(std::io::ErrorKind::UnexpectedEof.into()),
            ConnectError::new(Kind::TimedOut),
        ] {
            assert_eq!(lasting_cause(&passing), None, "{passing}");
        }

        let cases = [
            (
                ConnectError::new(Kind::AuthorizationViolation),
                &[
                    "authorization violation",
                    "nats.user_password",
                    "nats.seed_file",
                ][..],
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
                &["certificate", "unknown issuer", "nats.ca_file"][..],
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                )),
                &["certificate", "host name"][..],
            ),
            (
                tls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate,
                )),
                &["BadCertificate", "nats.cert_file"][..],
            ),
        ];
        for (error, words) in cases {
            let cause = lasting_cause(&error).unwrap_or_else(|| panic!("{error} is lasting"));
            for word in words {
                assert!(cause.contains(word), "{word:?} in {cause}");
            }
        }
    }

    #[test]
    fn reconnect_delays_grow_to_the_cap() {
        let cap = Duration::from_secs(2);
        let delays: Vec<u64> = (1..=8)
            .map(|a| reconnect_delay(a, cap).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(reconnect_delay(1000, cap), cap);
        assert_eq!(
            reconnect_delay(3, Duration::ZERO),
            Duration::from_millis(100)
        );
    }
}
