//! Addresses given on the command line and in `[nats]`: `-cluster-addr`, `-cluster-peers` (with `dns://`
//! discovery), `-leaf-servers` (with `?hub=true`) and `nats.bind_address`.
//!
//! A `dns://host:port/?min=N&interval_ms=M` entry is expanded into one `nats://ip:port/` per A/AAAA record
//! (std's resolver, so `/etc/hosts` and the system's DNS apply). Resolution is retried every `interval_ms`
//! (default 1000) until `min` records (default 1) were found or 10 s passed; then whatever was found is used.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::NatsError;

/// How long start-up waits for `dns://` entries to resolve.
pub(crate) const DNS_WAIT: Duration = Duration::from_secs(10);

/// One `-cluster-peers` or `-leaf-servers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seed {
    /// A URL used as given (minus a leaf's `hub` parameter).
    Url(String),
    /// `dns://host:port/`: expanded to the host's addresses.
    Dns {
        host: String,
        port: u16,
        scheme: &'static str,
        min: usize,
        interval: Duration,
    },
}

/// A leaf-node remote: one or more URLs (several when a `dns://` entry expanded) and the hub flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafRemote {
    pub urls: Vec<String>,
    pub hub: bool,
}

/// The parts of a `scheme://[user@]host[:port][/path][?query]` URL that we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlParts {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
    pub query: Vec<(String, String)>,
}

pub(crate) fn parse_url(url: &str) -> Result<UrlParts, String> {
    let (scheme, rest) = url.split_once("://").ok_or("expected scheme://host:port")?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let authority = rest.split('/').next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = split_host_port(hostport)?;
    if host.is_empty() {
        return Err("missing host".into());
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("invalid port `{p}`"))?,
        ),
        None => None,
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    Ok(UrlParts {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_string(),
        port,
        query,
    })
}

/// Splits `host:port`, `[v6]:port`, `host` or `:port` (empty host).
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed `[` in IPv6 address")?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected `{after}` after IPv6 address")),
        };
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Ok((s, None)), // bare IPv6 address
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

/// Parses `-cluster-addr` (`host:port`), keeping it as given.
pub(crate) fn parse_cluster_addr(addr: &str) -> Result<(String, u16), NatsError> {
    let invalid = |reason: String| NatsError::InvalidAddress {
        what: "-cluster-addr",
        value: addr.to_string(),
        reason,
    };
    let (host, port) = split_host_port(addr).map_err(invalid)?;
    let port = port.ok_or_else(|| invalid("expected host:port".into()))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| invalid(format!("invalid port `{port}`")))?;
    Ok((host.to_string(), port))
}

/// Parses `nats.bind_address` into (host, port) for nats-server's `listen`; an empty host means all
/// interfaces and port -1 a random port (`:-1`, the default).
pub(crate) fn parse_bind_address(addr: &str) -> Result<(String, i32), NatsError> {
    let invalid = |reason: String| NatsError::InvalidAddress {
        what: "nats.bind_address",
        value: addr.to_string(),
        reason,
    };
    let (host, port) = split_host_port(addr.trim()).map_err(invalid)?;
    let port = match port {
        None | Some("") => -1,
        Some(p) => match p.parse::<i32>() {
            Ok(p) if (-1..=65535).contains(&p) => p,
            _ => return Err(invalid(format!("invalid port `{p}`"))),
        },
    };
    // No host: loopback only. The node is its own server's only client, and anyone who can publish on the
    // change subjects writes into every node's database (see docs/SECURITY.md).
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    Ok((host.to_string(), port))
}

/// Parses a `-cluster-peers` entry.
pub(crate) fn parse_peer(entry: &str) -> Result<Seed, NatsError> {
    parse_seed(entry, "-cluster-peers entry", 6222).map(|(seed, _)| seed)
}

/// Parses a `-leaf-servers` entry: returns the seed (without `hub`) and whether it is a hub.
pub(crate) fn parse_leaf(entry: &str) -> Result<(Seed, bool), NatsError> {
    parse_seed(entry, "-leaf-servers entry", 7422)
}

fn parse_seed(
    entry: &str,
    what: &'static str,
    default_port: u16,
) -> Result<(Seed, bool), NatsError> {
    let invalid = |reason: String| NatsError::InvalidAddress {
        what,
        value: entry.to_string(),
        reason,
    };
    let parts = parse_url(entry.trim()).map_err(invalid)?;
    let hub = parts
        .query
        .iter()
        .any(|(k, v)| k == "hub" && v.eq_ignore_ascii_case("true"));
    if parts.scheme != "dns" {
        let url = strip_query_param(entry.trim(), "hub");
        return Ok((Seed::Url(url), hub));
    }
    let param = |name: &str| {
        parts
            .query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let min = match param("min") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| invalid(format!("invalid min `{v}`")))?,
        None => 1,
    };
    let interval = match param("interval_ms") {
        Some(v) => Duration::from_millis(
            v.parse()
                .map_err(|_| invalid(format!("invalid interval_ms `{v}`")))?,
        ),
        None => Duration::from_secs(1),
    };
    let scheme = if param("scheme").is_some_and(|s| s.eq_ignore_ascii_case("tls")) {
        "tls"
    } else {
        "nats"
    };
    let seed = Seed::Dns {
        host: parts.host,
        port: parts.port.unwrap_or(default_port),
        scheme,
        min,
        interval: interval.max(Duration::from_millis(10)),
    };
    Ok((seed, hub))
}

fn strip_query_param(url: &str, name: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split('=').next() != Some(name) && !kv.is_empty())
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Expands seeds to URLs, resolving `dns://` entries (blocking; call off the async runtime).
pub(crate) fn expand(seeds: &[Seed], wait: Duration) -> Vec<String> {
    let mut urls = Vec::new();
    for seed in seeds {
        match seed {
            Seed::Url(url) => urls.push(url.clone()),
            Seed::Dns {
                host,
                port,
                scheme,
                min,
                interval,
            } => {
                let found = resolve_until(host, *port, (*min).max(1), *interval, wait);
                if found.is_empty() {
                    tracing::warn!(
                        host,
                        port,
                        "dns:// entry resolved to no address within {wait:?}; skipping it"
                    );
                } else {
                    tracing::info!(host, port, addresses = found.len(), "dns:// entry resolved");
                }
                urls.extend(found.into_iter().map(|ip| url_for(scheme, ip, *port)));
            }
        }
    }
    urls.dedup();
    urls
}

fn url_for(scheme: &str, ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}/"),
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}/"),
    }
}

fn resolve_until(
    host: &str,
    port: u16,
    min: usize,
    interval: Duration,
    wait: Duration,
) -> Vec<IpAddr> {
    let deadline = Instant::now() + wait;
    let mut best: Vec<IpAddr> = Vec::new();
    loop {
        match (host, port).to_socket_addrs() {
            Ok(addrs) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                if ips.len() > best.len() {
                    best = ips;
                }
            }
            Err(e) => tracing::debug!(host, error = %e, "dns:// lookup failed; retrying"),
        }
        if best.len() >= min || Instant::now() + interval > deadline {
            return best;
        }
        std::thread::sleep(interval);
    }
}

/// `host:port` of a route or leaf URL, for reachability probes.
pub(crate) fn probe_target(url: &str, default_port: u16) -> Option<String> {
    let parts = parse_url(url).ok()?;
    let port = parts.port.unwrap_or(default_port);
    Some(if parts.host.contains(':') {
        format!("[{}]:{port}", parts.host)
    } else {
        format!("{}:{port}", parts.host)
    })
}

/// True if `url` names this server's own cluster listener (same resolved address and port, or a loopback
/// address on the same port when listening on all interfaces).
pub(crate) fn is_self(url: &str, cluster_host: &str, cluster_port: u16) -> bool {
    let Some(target) = probe_target(url, 6222) else {
        return false;
    };
    let Ok(theirs) = target
        .to_socket_addrs()
        .map(|a| a.collect::<Vec<SocketAddr>>())
    else {
        return false;
    };
    let ours: Vec<SocketAddr> = (cluster_host, cluster_port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    theirs.iter().any(|t| {
        t.port() == cluster_port
            && (ours.contains(t)
                || (t.ip().is_loopback() && ours.iter().any(|o| o.ip().is_unspecified())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_host_ports() {
        let p = parse_url("nats://user:pw@host.example:4222/?a=1&b").unwrap();
        assert_eq!(
            (p.scheme.as_str(), p.host.as_str(), p.port),
            ("nats", "host.example", Some(4222))
        );
        assert_eq!(
            p.query,
            vec![("a".into(), "1".into()), ("b".into(), String::new())]
        );
        let p = parse_url("nats://[::1]:6222").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", Some(6222)));
        assert!(parse_url("localhost:4222").is_err());
        assert!(parse_url("nats://:4222").is_err());
    }

    #[test]
    fn bind_address_forms() {
        assert_eq!(parse_bind_address(":-1").unwrap(), ("127.0.0.1".into(), -1));
        assert_eq!(
            parse_bind_address(":4222").unwrap(),
            ("127.0.0.1".into(), 4222)
        );
        assert_eq!(
            parse_bind_address("0.0.0.0:4222").unwrap(),
            ("0.0.0.0".into(), 4222)
        );
        assert_eq!(
            parse_bind_address("127.0.0.1:-1").unwrap(),
            ("127.0.0.1".into(), -1)
        );
        assert_eq!(
            parse_bind_address("[::]:4222").unwrap(),
            ("::".into(), 4222)
        );
        assert!(parse_bind_address("host:99999").is_err());
        assert_eq!(
            parse_cluster_addr("localhost:4221").unwrap(),
            ("localhost".into(), 4221)
        );
        assert!(parse_cluster_addr("localhost").is_err());
    }

    #[test]
    fn peers_and_leaf_hub_flag() {
        assert_eq!(
            parse_peer("nats://localhost:4222/").unwrap(),
            Seed::Url("nats://localhost:4222/".into())
        );
        let (seed, hub) = parse_leaf("nats://hub.example:7422/?hub=true").unwrap();
        assert!(hub);
        assert_eq!(seed, Seed::Url("nats://hub.example:7422/".into()));
        let (seed, hub) = parse_leaf("nats://a:7422/?x=1&hub=false").unwrap();
        assert!(!hub);
        assert_eq!(seed, Seed::Url("nats://a:7422/?x=1".into()));
        match parse_peer("dns://localhost:6222/?min=3&interval_ms=50").unwrap() {
            Seed::Dns {
                host,
                port,
                min,
                interval,
                ..
            } => {
                assert_eq!(
                    (host.as_str(), port, min, interval),
                    ("localhost", 6222, 3, Duration::from_millis(50))
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_peer("dns://localhost:6222/?min=x").is_err());
    }

    #[test]
    fn dns_entries_expand_to_one_url_per_address() {
        let seeds = [
            parse_peer("dns://localhost:6222/?interval_ms=10").unwrap(),
            Seed::Url("nats://a:1/".into()),
        ];
        let urls = expand(&seeds, Duration::from_secs(2));
        assert!(
            urls.iter()
                .any(|u| u == "nats://127.0.0.1:6222/" || u == "nats://[::1]:6222/"),
            "{urls:?}"
        );
        assert_eq!(urls.last().unwrap(), "nats://a:1/");
        // Asking for more records than exist waits for the deadline, then proceeds with what was found.
        let started = Instant::now();
        let some = expand(
            &[parse_peer("dns://localhost:6222/?min=9&interval_ms=50").unwrap()],
            Duration::from_millis(300),
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(!some.is_empty() && some.len() < 9, "{some:?}");
    }

    #[test]
    fn recognises_its_own_cluster_address() {
        assert!(is_self("nats://127.0.0.1:4221/", "127.0.0.1", 4221));
        assert!(is_self("nats://127.0.0.1:4221/", "0.0.0.0", 4221));
        assert!(!is_self("nats://127.0.0.1:4222/", "127.0.0.1", 4221));
    }
}
