//! The node's HTTP endpoints (axum): Prometheus metrics on `[prometheus] bind` (any path, as the original;
//! `/metrics` is the documented one) and health on `[health_check] bind` at `path`, readiness at
//! `ready_path`, and write confirmation at [`wait::ROUTE`] (`GET /wait-replicated?timeout=SECONDS`: 200
//! once every change committed on this node before the request is on every node, 504 naming the nodes behind
//! on timeout, 503 when the cluster cannot be read). When both sections name the same address, one server
//! answers both: the health paths first, metrics on every other path.
//!
//! The servers start before NATS, so that while the node waits for its cluster the endpoints already answer
//! (503), and they run until the node stops.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health;
use super::metrics::Exporter;
use super::observe::Observed;
use super::wait;
use crate::config::Config;

/// Why the endpoints cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {key} = {addr:?}: {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

#[derive(Clone)]
struct AppState {
    observed: Arc<Observed>,
    exporter: Option<Exporter>,
    detailed: bool,
}

/// The address to listen on for a `host:port` or `:port` key (empty host: every interface, as the original).
pub fn listen_addr(bind: &str) -> String {
    match bind.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => bind.to_string(),
    }
}

/// Start the configured endpoints. Returns the addresses actually listened on (for logs and tests).
pub async fn start(
    cfg: &Config,
    observed: Arc<Observed>,
    cancel: CancellationToken,
) -> Result<Vec<SocketAddr>, HttpError> {
    let p = &cfg.prometheus;
    let h = &cfg.health_check;
    if !p.enable && !h.enable {
        return Ok(Vec::new());
    }
    let exporter = if p.enable {
        Some(super::metrics::install(p, cfg.node_id).map_err(HttpError::Recorder)?)
    } else {
        None
    };
    let state = AppState {
        observed,
        exporter,
        detailed: h.detailed,
    };
    let health_router = || {
        Router::new()
            .route(&h.path, get(health_handler))
            .route(&h.ready_path, get(ready_handler))
            .route(wait::ROUTE, get(wait_replicated_handler))
    };
    let metrics_router = || Router::new().fallback(get(metrics_handler));
    let mut servers: Vec<(&'static str, String, Router<AppState>)> = Vec::new();
    let same = p.enable && h.enable && listen_addr(&p.bind) == listen_addr(&h.bind);
    if same {
        servers.push((
            "health_check.bind",
            h.bind.clone(),
            health_router().merge(metrics_router()),
        ));
    } else {
        if h.enable {
            servers.push(("health_check.bind", h.bind.clone(), health_router()));
        }
        if p.enable {
            servers.push(("prometheus.bind", p.bind.clone(), metrics_router()));
        }
    }
    let mut addrs = Vec::new();
    for (key, bind, router) in servers {
        let addr = listen_addr(&bind);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| HttpError::Bind {
                key,
                addr: bind.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| HttpError::Bind {
            key,
            addr: bind.clone(),
            source,
        })?;
        tracing::info!(key, addr = %local, "serving HTTP");
        addrs.push(local);
        let app = router.with_state(state.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(key, error = %e, "HTTP server stopped");
            }
        });
    }
    Ok(addrs)
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    match &s.exporter {
        Some(e) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            e.render(&s.observed),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn health_handler(State(s): State<AppState>) -> Response {
    let h = health::report(&s.observed);
    let code = if h.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    body(code, &h, s.detailed)
}

async fn ready_handler(State(s): State<AppState>) -> Response {
    let h = health::report(&s.observed);
    let code = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    body(code, &h, s.detailed)
}

/// `GET /wait-replicated?timeout=SECONDS`: each request waits in its own task, so the server and the node
/// go on meanwhile.
async fn wait_replicated_handler(State(s): State<AppState>, uri: Uri) -> Response {
    let json = |code: StatusCode, body: String| {
        (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let error = |code: StatusCode, e: &dyn std::fmt::Display| {
        let body = serde_json::json!({ "status": "error", "node_id": s.observed.cfg.node_id,
            "error": e.to_string() });
        json(code, body.to_string())
    };
    let timeout = match timeout_param(uri.query()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let Some(nats) = s.observed.nats() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, &"NATS is not up yet");
    };
    let cfg = s.observed.cfg.clone();
    let upto = match tokio::task::spawn_blocking(move || wait::log_upto(&cfg)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let outcome = wait::wait(
        &nats.jetstream,
        &s.observed.cfg,
        upto,
        wait::Progress::Counters(s.observed.counters.clone()),
        nats.expected_nodes,
        timeout,
    )
    .await;
    match outcome {
        Ok(o) if o.is_replicated() => json(StatusCode::OK, o.json()),
        Ok(o) => json(StatusCode::GATEWAY_TIMEOUT, o.json()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// The `timeout` query parameter in seconds (default [`wait::DEFAULT_TIMEOUT`], at most
/// [`wait::MAX_HTTP_TIMEOUT`]).
fn timeout_param(query: Option<&str>) -> Result<std::time::Duration, String> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == "timeout")
        .map(|(_, v)| v);
    match value {
        None => Ok(wait::DEFAULT_TIMEOUT),
        Some(v) => match v.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                Ok(std::time::Duration::from_secs_f64(secs).min(wait::MAX_HTTP_TIMEOUT))
            }
            _ => Err(format!("timeout={v:?} is not a number of seconds")),
        },
    }
}

/// The JSON body: the whole report when `detailed`, else the status alone.
fn body(code: StatusCode, h: &health::Health, detailed: bool) -> Response {
    let json = if detailed {
        serde_json::to_string(h)
    } else {
        serde_json::to_string(&serde_json::json!({ "status": h.status, "node_id": h.node_id }))
    }
    .unwrap_or_else(|e| format!("{{\"status\":\"unhealthy\",\"error\":{:?}}}", e.to_string()));
    (code, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_parameter() {
        use std::time::Duration;
        assert_eq!(timeout_param(None), Ok(wait::DEFAULT_TIMEOUT));
        assert_eq!(timeout_param(Some("x=1")), Ok(wait::DEFAULT_TIMEOUT));
        assert_eq!(
            timeout_param(Some("x=1&timeout=2.5")),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(
            timeout_param(Some("timeout=99999")),
            Ok(wait::MAX_HTTP_TIMEOUT)
        );
        assert!(timeout_param(Some("timeout=soon")).is_err());
        assert!(timeout_param(Some("timeout=-1")).is_err());
    }

    #[test]
    fn a_bare_port_listens_everywhere() {
        assert_eq!(listen_addr(":3010"), "0.0.0.0:3010");
        assert_eq!(listen_addr("127.0.0.1:8090"), "127.0.0.1:8090");
        assert_eq!(listen_addr("[::1]:8090"), "[::1]:8090");
    }
}
