//! Who can reach the embedded server, as configured: the warnings a node logs at start (and shows in its health
//! details) when a port it opens beyond loopback lets anyone in. See docs/SECURITY.md.

use super::ClusterFlags;
use crate::config::Config;

/// Whether `host` (as written in an address: a name, an IPv4 or a bracketless IPv6) is loopback only.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The warnings for the embedded server of `cfg` started with `flags` (none with `nats.urls`).
pub fn warnings(cfg: &Config, flags: &ClusterFlags) -> Vec<String> {
    let n = &cfg.nats;
    if !n.urls.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(addr) = flags.cluster_addr.as_deref().filter(|a| !a.is_empty())
        && let Ok((host, _)) = super::routes::parse_cluster_addr(addr)
        && !is_loopback_host(&host)
        && n.cluster_secret.is_empty()
        && n.cluster_cert_file.is_none()
    {
        out.push(format!(
            "the cluster port {addr} accepts routes from any server that can reach it: a stranger's \
             nats-server can join this JetStream cluster and read and write the change streams; set \
             nats.cluster_secret (or {}) on every node, or route TLS (nats.cluster_cert_file, \
             cluster_key_file, cluster_ca_file)",
            crate::config::CLUSTER_SECRET_ENV
        ));
    }
    if let Ok((host, port)) = super::routes::parse_bind_address(&n.bind_address)
        && !is_loopback_host(&host)
        && n.user_name.is_empty()
        && n.seed_file
            .as_ref()
            .is_none_or(|p| p.as_os_str().is_empty())
        && !(n.cert_file.is_some() && n.ca_file.is_some())
    {
        let port = if port < 0 {
            "a random port".to_string()
        } else {
            format!("port {port}")
        };
        out.push(format!(
            "the NATS client port ({host}, {port}) accepts any client that can reach it without credentials: \
             whoever connects can publish changes that every node writes into its database; bind it to \
             loopback (leave nats.bind_address out) or set nats.user_name/user_password, nats.seed_file, or \
             client TLS with nats.ca_file"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(addr: &str) -> ClusterFlags {
        ClusterFlags {
            cluster_addr: Some(addr.to_string()),
            ..ClusterFlags::default()
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.8.9.1",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["", "0.0.0.0", "::", "10.0.0.1", "node-2.example", "[::]"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn defaults_open_nothing_but_an_unprotected_cluster_address() {
        let mut cfg = Config::default();
        assert!(warnings(&cfg, &ClusterFlags::default()).is_empty());
        assert!(warnings(&cfg, &flags("127.0.0.1:4222")).is_empty());
        let w = warnings(&cfg, &flags("0.0.0.0:4222"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("cluster port 0.0.0.0:4222"), "{w:?}");
        cfg.nats.cluster_secret = "s3cret".into();
        assert!(warnings(&cfg, &flags("0.0.0.0:4222")).is_empty());
        cfg.nats.cluster_secret.clear();
        cfg.nats.cluster_cert_file = Some("/c.pem".into());
        assert!(warnings(&cfg, &flags("10.0.0.1:4222")).is_empty());
    }

    #[test]
    fn an_open_client_port_warns_until_clients_must_authenticate() {
        let mut cfg = Config::default();
        cfg.nats.bind_address = "0.0.0.0:4333".into();
        let w = warnings(&cfg, &ClusterFlags::default());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("client port (0.0.0.0, port 4333)"), "{w:?}");
        cfg.nats.user_name = "app".into();
        assert!(warnings(&cfg, &ClusterFlags::default()).is_empty());
        cfg.nats.user_name.clear();
        cfg.nats.cert_file = Some("/c.pem".into());
        assert_eq!(
            warnings(&cfg, &ClusterFlags::default()).len(),
            1,
            "TLS alone does not authenticate"
        );
        cfg.nats.ca_file = Some("/ca.pem".into());
        assert!(warnings(&cfg, &ClusterFlags::default()).is_empty());
        cfg.nats.urls = vec!["nats://x:4222".into()];
        cfg.nats.cert_file = None;
        assert!(
            warnings(&cfg, &flags("0.0.0.0:1")).is_empty(),
            "not with urls"
        );
    }
}
