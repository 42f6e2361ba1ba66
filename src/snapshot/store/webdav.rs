//! Snapshots on a WebDAV server: `[snapshot.webdav] url` =
//! `http[s]://host[:port]/path?dir=/snap/dir&login=USER&secret=PASS`. Object `name` is the resource
//! `/path/snap/dir/<name>`; `dir` defaults to `/`. `login` and `secret` (HTTP basic authentication, sent with
//! every request) are required; other query parameters are kept on every request.
//!
//! An upload is a streamed PUT (chunked) of a temporary resource `<name>.tmp-<hex>` in the same collection,
//! then a MOVE onto `<name>` with `Overwrite: T`, so a reader never sees a partial object. Missing collections
//! of `dir` are created with MKCOL, at open and before each upload.

use std::time::Duration;

use futures::TryStreamExt;
use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use url::Url;

use super::{Reader, Store, StoreError};
use crate::config::SnapshotWebdavConfig;

/// The read buffer of an upload (the bytes of one chunk of the PUT body).
const UPLOAD_CHUNK: usize = 256 * 1024;

pub struct WebdavStore {
    client: reqwest::Client,
    /// The server's URL without credentials, query or trailing `/` (e.g. `https://host/path`).
    base: Url,
    /// The segments of `dir` (none for `/`).
    dir: Vec<String>,
    /// The query parameters other than `dir`, `login` and `secret`, put on every request.
    query: Option<String>,
    login: String,
    secret: String,
}

impl WebdavStore {
    pub async fn open(cfg: &SnapshotWebdavConfig) -> Result<WebdavStore, StoreError> {
        let store = WebdavStore::parse(&cfg.url)?;
        store
            .ensure_dir()
            .await
            .map_err(|reason| StoreError::failed(&store.describe(), reason))?;
        Ok(store)
    }

    /// Checks and splits the configured URL (no request).
    fn parse(raw: &str) -> Result<WebdavStore, StoreError> {
        let config = |msg: String| StoreError::Config(format!("[snapshot.webdav] url: {msg}"));
        if raw.trim().is_empty() {
            return Err(config(
                "empty (https://host/path?dir=/dir&login=USER&secret=PASS)".into(),
            ));
        }
        // The error text of a bad URL never repeats the URL: it may hold the password.
        let mut url = Url::parse(raw.trim()).map_err(|e| config(format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(config(
                "must be an http:// or https:// URL with a host".into(),
            ));
        }
        let (mut login, mut secret, mut dir) = (None, None, None);
        let mut rest = url::form_urlencoded::Serializer::new(String::new());
        let mut kept = 0;
        for (k, v) in url.query_pairs() {
            match &*k {
                "login" => login = Some(v.into_owned()),
                "secret" => secret = Some(v.into_owned()),
                "dir" => dir = Some(v.into_owned()),
                _ => {
                    rest.append_pair(&k, &v);
                    kept += 1;
                }
            }
        }
        let login = login
            .filter(|l| !l.is_empty())
            .ok_or_else(|| config("the query parameter `login` is required".into()))?;
        let secret = secret
            .filter(|s| !s.is_empty())
            .ok_or_else(|| config("the query parameter `secret` is required".into()))?;
        let dir = dir.unwrap_or_default();
        let dir: Vec<String> = dir
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .map(str::to_string)
            .collect();
        if dir.iter().any(|s| s == "..") {
            return Err(config("`dir` must not contain `..`".into()));
        }
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
        }
        super::ensure_tls_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // No overall limit: a snapshot streams for as long as it takes; a stalled read still fails.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StoreError::failed("webdav", format!("HTTP client: {e}")))?;
        Ok(WebdavStore {
            client,
            base: url,
            dir,
            query: (kept > 0).then(|| rest.finish()),
            login,
            secret,
        })
    }

    /// The URL of the collection made of the first `depth` segments of `dir`, or of object `name` in `dir`.
    fn url(&self, depth: usize, name: Option<&str>, with_query: bool) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(&self.dir[..depth]);
            // A collection's URL ends with `/`.
            segments.push(name.unwrap_or(""));
        }
        if with_query {
            url.set_query(self.query.as_deref());
        }
        url
    }

    fn object_url(&self, name: &str) -> Url {
        self.url(self.dir.len(), Some(name), true)
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .basic_auth(&self.login, Some(&self.secret))
    }

    /// Creates the missing collections of `dir`, parent first, then checks the last one is there.
    async fn ensure_dir(&self) -> Result<(), String> {
        let mkcol = Method::from_bytes(b"MKCOL").expect("method name");
        for depth in 1..=self.dir.len() {
            let url = self.url(depth, None, true);
            let resp = self
                .request(mkcol.clone(), url.clone())
                .send()
                .await
                .map_err(|e| unsent("MKCOL", &url, e))?;
            match resp.status() {
                s if s.is_success() => {}
                // 405: the collection exists; 409 is tolerated too (some servers answer it for an existing one).
                StatusCode::METHOD_NOT_ALLOWED | StatusCode::CONFLICT => {}
                s => return Err(refused("MKCOL", &url, s)),
            }
        }
        let url = self.url(self.dir.len(), None, true);
        let resp = self
            .request(
                Method::from_bytes(b"PROPFIND").expect("method name"),
                url.clone(),
            )
            .header("Depth", "0")
            .send()
            .await
            .map_err(|e| unsent("PROPFIND", &url, e))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(refused("PROPFIND", &url, s)),
        }
    }

    async fn put_inner(&self, name: &str, body: Reader) -> Result<(), String> {
        self.ensure_dir().await?;
        let temp_name = format!("{name}.{}", super::temp_suffix());
        let temp = self.object_url(&temp_name);
        let stream = tokio_util::io::ReaderStream::with_capacity(body, UPLOAD_CHUNK);
        let resp = self
            .request(Method::PUT, temp.clone())
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| unsent("PUT", &temp, e));
        let moved = match resp {
            Ok(r) if r.status().is_success() => self.move_onto(&temp, name).await,
            Ok(r) => Err(refused("PUT", &temp, r.status())),
            Err(e) => Err(e),
        };
        if moved.is_err() {
            let _ = self.request(Method::DELETE, temp).send().await;
        }
        moved
    }

    async fn move_onto(&self, temp: &Url, name: &str) -> Result<(), String> {
        let dest = self.url(self.dir.len(), Some(name), false);
        let resp = self
            .request(
                Method::from_bytes(b"MOVE").expect("method name"),
                temp.clone(),
            )
            .header("Destination", dest.as_str())
            .header("Overwrite", "T")
            .send()
            .await
            .map_err(|e| unsent("MOVE", temp, e))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(refused("MOVE", temp, s)),
        }
    }
}

/// The path of `url` (for errors: no query, which may hold tokens).
fn path_of(url: &Url) -> &str {
    url.path()
}

/// A request that got no answer: the error with its causes, without the URL (its query may hold tokens).
fn unsent(method: &str, url: &Url, e: reqwest::Error) -> String {
    format!(
        "{method} {}: {}",
        path_of(url),
        super::error_chain(&e.without_url())
    )
}

fn refused(method: &str, url: &Url, status: StatusCode) -> String {
    let hint = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => " (check login and secret)",
        _ => "",
    };
    format!("{method} {} answered {status}{hint}", path_of(url))
}

impl Store for WebdavStore {
    fn describe(&self) -> String {
        format!("webdav {}", self.url(self.dir.len(), None, false))
    }

    fn put<'a>(&'a self, name: &'a str, body: Reader) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.put_inner(name, body)
                .await
                .map_err(|reason| StoreError::failed(&self.describe(), reason))
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Reader>, StoreError>> {
        Box::pin(async move {
            let url = self.object_url(name);
            let resp = self
                .request(Method::GET, url.clone())
                .send()
                .await
                .map_err(|e| StoreError::failed(&self.describe(), unsent("GET", &url, e)))?;
            match resp.status() {
                StatusCode::NOT_FOUND => Ok(None),
                s if s.is_success() => {
                    let stream = resp.bytes_stream().map_err(std::io::Error::other);
                    Ok(Some(
                        Box::pin(tokio_util::io::StreamReader::new(stream)) as Reader
                    ))
                }
                s => Err(StoreError::failed(
                    &self.describe(),
                    refused("GET", &url, s),
                )),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let url = self.object_url(name);
            let resp = self
                .request(Method::DELETE, url.clone())
                .send()
                .await
                .map_err(|e| StoreError::failed(&self.describe(), unsent("DELETE", &url, e)))?;
            match resp.status() {
                StatusCode::NOT_FOUND => Ok(()),
                s if s.is_success() => Ok(()),
                s => Err(StoreError::failed(
                    &self.describe(),
                    refused("DELETE", &url, s),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_splits_into_base_dir_credentials_and_kept_query() {
        let s = WebdavStore::parse(
            "https://u:p@dav.example:8443/remote.php/?dir=/snap/my%20dir/&login=alice&secret=s%26cret&x=1",
        )
        .unwrap();
        assert_eq!(s.login, "alice");
        assert_eq!(s.secret, "s&cret");
        assert_eq!(s.dir, ["snap", "my dir"]);
        assert_eq!(s.query.as_deref(), Some("x=1"));
        assert_eq!(
            s.object_url("snapshot.db").as_str(),
            "https://dav.example:8443/remote.php/snap/my%20dir/snapshot.db?x=1"
        );
        assert_eq!(
            s.url(1, None, false).as_str(),
            "https://dav.example:8443/remote.php/snap/"
        );
        let d = s.describe();
        assert_eq!(
            d,
            "webdav https://dav.example:8443/remote.php/snap/my%20dir/"
        );
        assert!(!d.contains("cret") && !d.contains("alice") && !d.contains("u:p"));
    }

    #[test]
    fn dir_defaults_to_the_root_of_the_url() {
        let s = WebdavStore::parse("http://h/dav?login=a&secret=b").unwrap();
        assert!(s.dir.is_empty());
        assert_eq!(s.query, None);
        assert_eq!(s.object_url("o").as_str(), "http://h/dav/o");
    }

    #[test]
    fn login_and_secret_are_required() {
        for bad in [
            "",
            "http://h/dav?secret=b",
            "http://h/dav?login=a",
            "http://h/dav?login=a&secret=",
            "ftp://h/dav?login=a&secret=b",
            "http://h/dav?login=a&secret=b&dir=/x/../y",
            "not a url",
        ] {
            match WebdavStore::parse(bad) {
                Err(StoreError::Config(msg)) => assert!(!msg.contains("secret=b"), "{msg}"),
                Err(e) => panic!("{bad}: {e}"),
                Ok(_) => panic!("{bad} accepted"),
            }
        }
    }
}
