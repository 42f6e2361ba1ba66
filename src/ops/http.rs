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
            .route(CHANGES, get(changes_handler))
            .route(PAGE, get(page_handler))
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
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
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

/// The live page's path.
pub const PAGE: &str = crate::config::RESERVED_ROUTES[2];

/// The live page: one file, no asset from anywhere else.
const PAGE_HTML: &str = include_str!("page.html");

/// `GET /`: the live page (HTML), or, asked with `Accept: application/json` (as the page does every 2 s), what
/// it shows: this node's health, the cluster's status (every node's reachability, positions, lag, pauses, held
/// tables and counters), whether the nodes' schemas agree, and whether the feed is on.
async fn page_handler(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let cfg = &s.observed.cfg;
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if !json {
        let html = PAGE_HTML
            .replace("__NODE_ID__", &cfg.node_id.to_string())
            .replace("__FEED__", if cfg.feed.enabled { "true" } else { "false" });
        return (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            html,
        )
            .into_response();
    }
    let within = std::time::Duration::from_secs(2);
    let (cluster, schema) = match s.observed.nats() {
        None => (
            serde_json::json!({ "error": "NATS is not up yet" }),
            serde_json::Value::Null,
        ),
        Some(nats) => {
            let js = &nats.jetstream;
            let (status, entries) = tokio::join!(
                super::status::command(js, cfg, within),
                tokio::time::timeout(within, super::schema::read_entries(js))
            );
            let cluster = match status {
                Ok(r) => serde_json::to_value(&r).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            let schema = match entries {
                Ok(Ok(entries)) => {
                    let (text, consistent) = super::schema::cluster_report(&entries);
                    serde_json::json!({ "consistent": consistent, "text": text })
                }
                _ => serde_json::Value::Null,
            };
            (cluster, schema)
        }
    };
    let body = serde_json::json!({
        "node_id": cfg.node_id,
        "feed": cfg.feed.enabled,
        "health": health::report(&s.observed),
        "cluster": cluster,
        "schema": schema,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The change feed's path (`docs/FEED.md`).
pub const CHANGES: &str = crate::config::RESERVED_ROUTES[1];

/// Records queued for a `/changes` reader at most.
const CHANGES_BUFFER: usize = 256;

/// How long a full queue waits for its `/changes` reader before the reader is cut off.
const SLOW_READER: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /changes?from=CURSOR&tables=a,b`: the change feed as NDJSON, or as Server-Sent Events when the request
/// accepts `text/event-stream`, kept open for new changes (without `from`: new changes only; an event
/// stream's `Last-Event-ID` stands for `from`). Only loopback clients, or those presenting `[feed] http_token`
/// as a bearer token. A reader that lets [`CHANGES_BUFFER`] records wait for [`SLOW_READER`] is sent a last
/// error record and cut off, so a slow reader never grows the node's memory.
async fn changes_handler(
    State(s): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    uri: Uri,
) -> Response {
    use crate::feed::read::{ReadError, Reader, Start};
    let cfg = s.observed.cfg.clone();
    let error = |code: StatusCode, e: &dyn std::fmt::Display| {
        let body = serde_json::json!({ "error": e.to_string() });
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    };
    if !cfg.feed.enabled {
        return error(StatusCode::NOT_FOUND, &ReadError::NotEnabled);
    }
    if let Err((code, why)) = may_read_changes(&cfg.feed.http_token, peer, &headers) {
        let mut r = error(code, &why);
        if code == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a header value"),
            );
        }
        return r;
    }
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let from = query_param(uri.query(), "from").or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let start = match from.as_deref().map(str::parse::<Start>) {
        None => Start::Now,
        Some(Ok(s)) => s,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("from: {e}")),
    };
    let tables: Vec<String> = query_param(uri.query(), "tables")
        .map(|t| {
            t.split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let Some(nats) = s.observed.nats() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, &"NATS is not up yet");
    };
    let mut reader = match Reader::open(&nats.jetstream, &cfg, start, &tables, true).await {
        Ok(r) => r,
        Err(e @ ReadError::Expired { .. }) => return error(StatusCode::GONE, &e),
        Err(e @ (ReadError::NotEnabled | ReadError::NotWritten(_))) => {
            return error(StatusCode::NOT_FOUND, &e);
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHANGES_BUFFER);
    tokio::spawn(async move {
        loop {
            let record = tokio::select! {
                _ = tx.closed() => return,
                r = reader.next() => r,
            };
            let last = match record {
                Some(Ok((line, cursor))) => {
                    match tokio::time::timeout(
                        SLOW_READER,
                        tx.send(frame(&line, sse, Some(cursor))),
                    )
                    .await
                    {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::info!(
                                %peer,
                                "a /changes reader fell behind: {CHANGES_BUFFER} records waited for it for \
                                 {SLOW_READER:?}; it is cut off"
                            );
                            format!(
                                "this reader fell behind the feed ({CHANGES_BUFFER} records waited for it for \
                                 {SLOW_READER:?}) and was cut off; read again from the last cursor received"
                            )
                        }
                    }
                }
                Some(Err(e)) => e.to_string(),
                None => return,
            };
            let line = serde_json::json!({ "error": last }).to_string();
            // The records already queued go first; a reader that takes none of them in a minute is left.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                tx.send(frame(line.as_bytes(), sse, None)),
            )
            .await;
            return;
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Whether `peer` may read `/changes`: loopback always; others only with the configured token as a bearer
/// token (401 when it is missing or wrong, 403 when none is configured).
fn may_read_changes(
    token: &str,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Result<(), (StatusCode, String)> {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(peer.ip()),
        ip => ip,
    };
    if ip.is_loopback() {
        return Ok(());
    }
    if token.is_empty() {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "the change feed is served to loopback clients only ({ip} is not one); set [feed] http_token to serve others"
            ),
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            "the change feed needs \"Authorization: Bearer <[feed] http_token>\" from this address"
                .into(),
        )),
    }
}

/// Equal bytes, compared in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One record (or, without a cursor, the last error) as a line of NDJSON or a Server-Sent Event (the record's
/// cursor as its id, the error as an `error` event).
fn frame(line: &[u8], sse: bool, cursor: Option<crate::feed::Cursor>) -> bytes::Bytes {
    if !sse {
        let mut b = Vec::with_capacity(line.len() + 1);
        b.extend_from_slice(line);
        b.push(b'\n');
        return b.into();
    }
    let mut b = Vec::with_capacity(line.len() + 64);
    match cursor {
        None => b.extend_from_slice(b"event: error\n"),
        Some(c) => {
            b.extend_from_slice(b"id: ");
            b.extend_from_slice(c.to_string().as_bytes());
            b.push(b'\n');
        }
    }
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(line);
    b.extend_from_slice(b"\n\n");
    b.into()
}

/// The value of query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
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
    fn changes_go_to_loopback_or_to_the_token_bearer() {
        use axum::http::HeaderMap;
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let far: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let none = HeaderMap::new();
        let mut good = HeaderMap::new();
        good.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        let mut bad = HeaderMap::new();
        bad.insert(header::AUTHORIZATION, "Bearer s3creT".parse().unwrap());
        assert!(may_read_changes("", local, &none).is_ok());
        assert!(may_read_changes("", mapped, &none).is_ok());
        assert_eq!(
            may_read_changes("", far, &good).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert!(may_read_changes("s3cret", far, &good).is_ok());
        assert_eq!(
            may_read_changes("s3cret", far, &bad).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            may_read_changes("s3cret", far, &none).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_record_as_a_line_or_an_event() {
        let c = Some(crate::feed::Cursor::after_message(7));
        assert_eq!(&frame(b"{}", false, c)[..], b"{}\n");
        assert_eq!(&frame(b"{}", true, c)[..], b"id: 1.7\ndata: {}\n\n");
        let c = Some(crate::feed::Cursor {
            seq: 7,
            line: Some(2),
        });
        assert_eq!(&frame(b"{}", true, c)[..], b"id: 1.7.2\ndata: {}\n\n");
        assert_eq!(&frame(b"{}", true, None)[..], b"event: error\ndata: {}\n\n");
        assert_eq!(
            query_param(Some("a=1&from=1.5&tables=x%2Cy"), "tables").as_deref(),
            Some("x,y")
        );
        assert_eq!(query_param(Some("a=1"), "from"), None);
    }

    #[test]
    fn a_bare_port_listens_everywhere() {
        assert_eq!(listen_addr(":3010"), "0.0.0.0:3010");
        assert_eq!(listen_addr("127.0.0.1:8090"), "127.0.0.1:8090");
        assert_eq!(listen_addr("[::1]:8090"), "[::1]:8090");
    }
}
