//! The checks of values that HarmonyLite needs beyond their types: addresses, URLs, NATS names, metric names,
//! the HTTP path, and keys that must agree with each other. Each failure names the dotted key and the value as
//! written in TOML.

use super::{
    Config, ConfigError, HealthCheckConfig, NatsConfig, PrometheusConfig, invalid, quoted,
};

/// Checks the deserialised `config` (the type and range checks were done while deserialising).
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let db_path = config.db_path.to_string_lossy();
    if db_path.trim().is_empty() {
        return Err(invalid("db_path", quoted(&db_path), "must not be empty"));
    }
    if let Some(t) = config.exclude_tables.iter().find(|t| {
        config
            .include_tables
            .iter()
            .any(|i| i.eq_ignore_ascii_case(t))
    }) {
        return Err(invalid(
            "exclude_tables",
            quoted(t),
            "table is also listed in include_tables",
        ));
    }
    check_nats(config)?;
    check_prometheus(&config.prometheus)?;
    check_health_check(&config.health_check)
}

/// The `[nats]` keys, and `replication_log.max_message_bytes` against `nats.max_payload`.
fn check_nats(config: &Config) -> Result<(), ConfigError> {
    let n = &config.nats;
    for url in &n.urls {
        check_nats_url(url).map_err(|reason| invalid("nats.urls", quoted(url), reason))?;
    }
    check_subject_prefix(&n.subject_prefix)
        .map_err(|r| invalid("nats.subject_prefix", quoted(&n.subject_prefix), r))?;
    check_stream_prefix(&n.stream_prefix)
        .map_err(|r| invalid("nats.stream_prefix", quoted(&n.stream_prefix), r))?;
    if !n.jetstream_domain.is_empty()
        && !n
            .jetstream_domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            "nats.jetstream_domain",
            quoted(&n.jetstream_domain),
            "expected letters, digits, '_' or '-' (a JetStream domain is one subject token)",
        ));
    }
    check_host_port(&n.bind_address, true)
        .map_err(|r| invalid("nats.bind_address", quoted(&n.bind_address), r))?;
    check_cluster_tls(n)?;
    let most = n.max_payload.saturating_sub(super::HEADROOM);
    if config.replication_log.max_message_bytes > most {
        return Err(invalid(
            "replication_log.max_message_bytes",
            config.replication_log.max_message_bytes.to_string(),
            format!(
                "must be at most nats.max_payload ({}) - {} = {most}",
                n.max_payload,
                super::HEADROOM
            ),
        ));
    }
    Ok(())
}

/// The `[prometheus]` keys: its address, and its metric name parts when it is enabled.
fn check_prometheus(p: &PrometheusConfig) -> Result<(), ConfigError> {
    check_host_port(&p.bind, false).map_err(|r| invalid("prometheus.bind", quoted(&p.bind), r))?;
    if p.enable {
        // Metric names are `<namespace>_<subsystem>_<name>` and must match [a-zA-Z_:][a-zA-Z0-9_:]*.
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let starts_with_digit = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
        if !p.namespace.chars().all(name_char) || starts_with_digit(&p.namespace) {
            return Err(invalid(
                "prometheus.namespace",
                quoted(&p.namespace),
                "expected letters, digits, '_' or ':', not starting with a digit",
            ));
        }
        if !p.subsystem.chars().all(name_char)
            || (p.namespace.is_empty() && starts_with_digit(&p.subsystem))
        {
            return Err(invalid(
                "prometheus.subsystem",
                quoted(&p.subsystem),
                "expected letters, digits, '_' or ':'",
            ));
        }
    }
    Ok(())
}

/// The `[health_check]` keys: its address and its two paths.
fn check_health_check(h: &HealthCheckConfig) -> Result<(), ConfigError> {
    check_host_port(&h.bind, false)
        .map_err(|r| invalid("health_check.bind", quoted(&h.bind), r))?;
    // The health server also answers write confirmation, the change feed and the live page on fixed paths.
    let reserved = |p: &str| super::RESERVED_ROUTES.contains(&p);
    if !h.path.starts_with('/') || h.path.chars().any(char::is_whitespace) || reserved(&h.path) {
        return Err(invalid(
            "health_check.path",
            quoted(&h.path),
            "expected an HTTP path starting with \"/\", other than \"/\", \"/changes\" and \"/wait-replicated\"",
        ));
    }
    if !h.ready_path.starts_with('/')
        || h.ready_path.chars().any(char::is_whitespace)
        || h.ready_path == h.path
        || reserved(&h.ready_path)
    {
        return Err(invalid(
            "health_check.ready_path",
            quoted(&h.ready_path),
            "expected an HTTP path starting with \"/\", other than health_check.path, \"/\", \"/changes\" and \"/wait-replicated\"",
        ));
    }
    Ok(())
}

/// Route TLS: `nats.cluster_cert_file`, `cluster_key_file` and `cluster_ca_file` are set all three or none
/// (the peers' certificates are always verified, so the CA is needed), and each names an existing file.
fn check_cluster_tls(n: &NatsConfig) -> Result<(), ConfigError> {
    let keys = [
        ("nats.cluster_cert_file", &n.cluster_cert_file),
        ("nats.cluster_key_file", &n.cluster_key_file),
        ("nats.cluster_ca_file", &n.cluster_ca_file),
    ];
    if keys.iter().all(|(_, path)| path.is_none()) {
        return Ok(());
    }
    for (key, path) in keys {
        let Some(path) = path else {
            return Err(invalid(
                key,
                quoted(""),
                "route TLS needs nats.cluster_cert_file, nats.cluster_key_file and nats.cluster_ca_file \
                 together",
            ));
        };
        let shown = quoted(&path.to_string_lossy());
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(invalid(key, shown, "not a file")),
            Err(e) => return Err(invalid(key, shown, format!("cannot read the file: {e}"))),
        }
    }
    Ok(())
}

/// Checks a host: a name or an IPv4 address (as the `url` crate parses hosts), or a bracketed IPv6 address
/// (with an optional zone, `[fe80::1%eth0]`, which `url` does not know). Names are further limited to ASCII
/// letters, digits, `.`, `-` and `_`, where `url` would accept more (and IDNA-encode non-ASCII ones).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    let unzoned = match (host.strip_prefix('['), host.split_once('%')) {
        (Some(_), Some((addr, zone))) if zone.ends_with(']') => format!("{addr}]"),
        _ => host.to_string(),
    };
    match url::Host::parse(&unzoned) {
        Ok(url::Host::Domain(_)) => {
            if host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                Ok(())
            } else {
                Err(format!("{host:?} is not a host name or IP address"))
            }
        }
        Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => Ok(()),
        Err(_) => Err(format!("{host:?} is not a host name or IP address")),
    }
}

/// Checks `host:port` or `:port`; port 0-65535, or -1 (random) when `allow_random`.
pub(super) fn check_host_port(addr: &str, allow_random: bool) -> Result<(), String> {
    let expected = if allow_random {
        "expected \"host:port\" or \":port\" with a port from 0 to 65535, or -1 for a random port"
    } else {
        "expected \"host:port\" or \":port\" with a port from 0 to 65535"
    };
    // The port follows the last ':', or the ']' of an IPv6 host.
    let (host, port) = match addr.strip_prefix('[') {
        Some(inner) => {
            let end = inner.find(']').ok_or(expected)? + 1;
            let port = addr[end + 1..].strip_prefix(':').ok_or(expected)?;
            (&addr[..=end], port)
        }
        None => {
            let (host, port) = addr.rsplit_once(':').ok_or(expected)?;
            if host.contains(':') {
                return Err(format!("{expected}; put an IPv6 host in brackets"));
            }
            (host, port)
        }
    };
    // `u16::from_str` alone would take "+1" and any number of leading zeros.
    let port_ok = (allow_random && port == "-1")
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(expected.to_string());
    }
    if !host.is_empty() {
        check_host(host).map_err(|e| format!("{expected}: {e}"))?;
    }
    Ok(())
}

/// Checks one server URL as the NATS client reads it (`async_nats::ServerAddr`, on the `url` crate's parsing):
/// `nats://`, `tls://`, `ws://` or `wss://`, or a bare `host[:port]`, optionally with `user:password@`. On
/// top of that, the host must be a valid one (see `check_host`), and a ':' must be followed by a port of at
/// most five digits.
pub(super) fn check_nats_url(url: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected a nats://, tls://, ws:// or wss:// URL, or host:port";
    if url.is_empty() {
        return Err("entries must not be empty".to_string());
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!("{EXPECTED} without spaces"));
    }
    // Like `ServerAddr::from_str`: without a scheme, `nats://` is meant.
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    let parsed =
        url::Url::parse(&format!("{scheme}://{rest}")).map_err(|e| format!("{EXPECTED}: {e}"))?;
    let parsed = async_nats::ServerAddr::from_url(parsed)
        .map_err(|_| format!("{EXPECTED}; scheme {scheme:?} is not supported"))?
        .into_inner();
    check_host(parsed.host_str().unwrap_or_default()).map_err(|e| format!("{EXPECTED}: {e}"))?;
    // The URL standard reads "h:" as host h without a port, and "h:0001" as port 1; we call both typos.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = host_port
        .rfind(']')
        .map_or(host_port, |i| &host_port[i + 1..]);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && (port.is_empty() || port.len() > 5)
    {
        return Err(format!("{EXPECTED}: bad port {port:?}"));
    }
    Ok(())
}

/// Stream names may not contain whitespace, `.`, `*`, `>`, or path separators.
fn check_stream_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_string());
    }
    match prefix
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        Some(c) => Err(format!("a JetStream stream name may not contain {c:?}")),
        None => Ok(()),
    }
}

/// Subjects may not contain whitespace or wildcards, nor empty `.`-separated tokens.
fn check_subject_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_string());
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '*' | '>'))
    {
        return Err(format!("a NATS subject may not contain {c:?}"));
    }
    if prefix.split('.').any(str::is_empty) {
        return Err("a NATS subject may not have empty '.'-separated parts".to_string());
    }
    Ok(())
}
