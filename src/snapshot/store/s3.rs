//! Snapshots in an S3-compatible bucket (AWS S3, MinIO, Ceph, …): `[snapshot.s3]`. Object `name` is the key
//! `<path>/<name>` in `bucket` at `endpoint`, addressed path-style (`http[s]://endpoint/bucket/key`), signed
//! with SigV4 by `object_store`. The bucket is created at open when missing.
//!
//! An upload smaller than [`PART_SIZE`] is one PUT; a larger one is a multipart upload of `PART_SIZE` parts
//! with at most [`PARTS_IN_FLIGHT`] of them uploading while the next is read. S3 shows an object only once its
//! PUT or its multipart upload is complete, so a reader sees the old object or the whole new one.
//!
//! Credentials: `access_key` + `secret` (+ `session_token`); when both are empty, `AWS_ACCESS_KEY_ID` +
//! `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), then `MINIO_ACCESS_KEY` + `MINIO_SECRET_KEY`, else
//! anonymous requests. The region is `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`, corrected at
//! open by the bucket's own region when the server reports it (`x-amz-bucket-region`).

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use super::{PART_SIZE, Reader, Store, StoreError};
use crate::config::SnapshotS3Config;

/// Multipart parts uploading at once (each holds [`PART_SIZE`] bytes).
const PARTS_IN_FLIGHT: usize = 2;
const DEFAULT_REGION: &str = "us-east-1";

pub struct S3Store {
    store: AmazonS3,
    bucket: String,
    /// The key prefix without leading or trailing `/` (may be empty).
    prefix: String,
    /// `http[s]://endpoint`.
    base: String,
}

/// Where the request signatures come from.
#[derive(Debug, PartialEq)]
enum Credentials {
    Static {
        key: String,
        secret: String,
        token: Option<String>,
    },
    Anonymous,
}

/// The credentials `cfg` calls for, reading the environment through `env` (see the module doc).
fn credentials(
    cfg: &SnapshotS3Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Credentials, StoreError> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match (non_empty(&cfg.access_key), non_empty(&cfg.secret)) {
        (Some(key), Some(secret)) => {
            return Ok(Credentials::Static {
                key,
                secret,
                token: non_empty(&cfg.session_token),
            });
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Config(
                "[snapshot.s3] access_key and secret must be given together".into(),
            ));
        }
    }
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    if let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials::Static {
            key,
            secret,
            token: env("AWS_SESSION_TOKEN"),
        });
    }
    if let (Some(key), Some(secret)) = (env("MINIO_ACCESS_KEY"), env("MINIO_SECRET_KEY")) {
        return Ok(Credentials::Static {
            key,
            secret,
            token: None,
        });
    }
    Ok(Credentials::Anonymous)
}

/// Checks `endpoint` and `bucket`; returns the base URL `http[s]://endpoint`.
fn base_url(cfg: &SnapshotS3Config) -> Result<String, StoreError> {
    let endpoint = cfg.endpoint.trim();
    if endpoint.is_empty() {
        return Err(StoreError::Config(
            "[snapshot.s3] endpoint is empty (host[:port])".into(),
        ));
    }
    if endpoint.contains("://") || endpoint.contains('/') || endpoint.contains('@') {
        return Err(StoreError::Config(format!(
            "[snapshot.s3] endpoint `{endpoint}` must be host[:port], with no scheme or path (use_ssl picks https)"
        )));
    }
    if cfg.bucket.trim().is_empty() {
        return Err(StoreError::Config("[snapshot.s3] bucket is empty".into()));
    }
    let scheme = if cfg.use_ssl { "https" } else { "http" };
    Ok(format!("{scheme}://{endpoint}"))
}

impl S3Store {
    pub async fn open(cfg: &SnapshotS3Config) -> Result<S3Store, StoreError> {
        let base = base_url(cfg)?;
        let bucket = cfg.bucket.trim().to_string();
        let creds = credentials(cfg, |name| std::env::var(name).ok())?;
        let prefix = cfg.path.trim_matches('/').to_string();
        super::ensure_tls_provider();
        let describe = describe(&bucket, &prefix, &base);

        let region = std::env::var("AWS_REGION")
            .ok()
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let region = ensure_bucket(&base, &bucket, &creds, region)
            .await
            .map_err(|reason| StoreError::failed(&describe, reason))?;

        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&base)
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_allow_http(!cfg.use_ssl)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(!cfg.use_ssl)
                    .with_connect_timeout(Duration::from_secs(10))
                    // Downloads stream for as long as the object takes; a stalled read still fails.
                    .with_timeout_disabled()
                    .with_read_timeout(Duration::from_secs(60)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
            });
        builder = match creds {
            Credentials::Static { key, secret, token } => {
                let builder = builder
                    .with_access_key_id(key)
                    .with_secret_access_key(secret);
                match token {
                    Some(t) => builder.with_token(t),
                    None => builder,
                }
            }
            // Never look for credentials elsewhere (instance metadata and such): unsigned requests.
            Credentials::Anonymous => builder.with_skip_signature(true),
        };
        let store = builder
            .build()
            .map_err(|e| StoreError::Config(format!("[snapshot.s3]: {e}")))?;
        Ok(S3Store {
            store,
            bucket,
            prefix,
            base,
        })
    }

    fn key(&self, name: &str) -> Result<Path, StoreError> {
        let key = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        };
        Path::parse(&key)
            .map_err(|e| StoreError::failed(&self.describe(), format!("object name `{name}`: {e}")))
    }

    async fn put_inner(&self, path: &Path, mut body: Reader) -> Result<(), String> {
        let mut part = vec![0u8; PART_SIZE];
        let n = read_full(&mut body, &mut part)
            .await
            .map_err(|e| format!("reading the upload: {e}"))?;
        if n < PART_SIZE {
            part.truncate(n);
            self.store
                .put(path, PutPayload::from(part))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| e.to_string())?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.put(Bytes::from(part));
        let result: Result<(), String> = async {
            loop {
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut part = vec![0u8; PART_SIZE];
                let n = read_full(&mut body, &mut part)
                    .await
                    .map_err(|e| format!("reading the upload: {e}"))?;
                part.truncate(n);
                if n > 0 {
                    writer.put(Bytes::from(part));
                }
                if n < PART_SIZE {
                    return Ok(());
                }
            }
        }
        .await;
        match result {
            Ok(()) => writer.finish().await.map(drop).map_err(|e| e.to_string()),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

fn describe(bucket: &str, prefix: &str, base: &str) -> String {
    format!("s3://{bucket}/{prefix} at {base}")
}

impl Store for S3Store {
    fn describe(&self) -> String {
        describe(&self.bucket, &self.prefix, &self.base)
    }

    fn put<'a>(&'a self, name: &'a str, body: Reader) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let path = self.key(name)?;
            self.put_inner(&path, body).await.map_err(|reason| {
                StoreError::failed(&self.describe(), format!("put {path}: {reason}"))
            })
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Reader>, StoreError>> {
        Box::pin(async move {
            let path = self.key(name)?;
            match self.store.get(&path).await {
                Ok(result) => {
                    let stream = result.into_stream().map_err(std::io::Error::other);
                    Ok(Some(
                        Box::pin(tokio_util::io::StreamReader::new(stream)) as Reader
                    ))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(StoreError::failed(
                    &self.describe(),
                    format!("get {path}: {e}"),
                )),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let path = self.key(name)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StoreError::failed(
                    &self.describe(),
                    format!("delete {path}: {e}"),
                )),
            }
        })
    }
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
async fn read_full(r: &mut Reader, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Makes sure `bucket` exists, creating it when the server says it does not; returns the region to sign with
/// (the server's `x-amz-bucket-region` when it names one).
async fn ensure_bucket(
    base: &str,
    bucket: &str,
    creds: &Credentials,
    mut region: String,
) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let url = format!("{base}/{bucket}");
    for _ in 0..2 {
        let resp = send(
            &client,
            creds,
            &region,
            http::Method::HEAD,
            &url,
            Bytes::new(),
        )
        .await?;
        let status = resp.status();
        let server_region = resp
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        if status.is_success() {
            return Ok(server_region.unwrap_or(region));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            break;
        }
        match server_region {
            // Signed for the wrong region (301, 400): once more with the bucket's own.
            Some(r) if r != region => region = r,
            _ => return Err(format!("bucket {bucket}: HEAD answered {status}")),
        }
    }
    let body = if region == DEFAULT_REGION {
        Bytes::new()
    } else {
        Bytes::from(format!(
            "<CreateBucketConfiguration><LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        ))
    };
    let resp = send(&client, creds, &region, http::Method::PUT, &url, body).await?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    // 409 BucketAlreadyOwnedByYou: another node created it meanwhile.
    if status.is_success() || (status.as_u16() == 409 && text.contains("AlreadyOwnedByYou")) {
        tracing::info!(bucket, "created the snapshot bucket");
        return Ok(region);
    }
    Err(format!(
        "creating bucket {bucket}: {status} {}",
        text.chars().take(300).collect::<String>()
    ))
}

/// One request to the bucket, signed with SigV4 unless anonymous.
async fn send(
    client: &reqwest::Client,
    creds: &Credentials,
    region: &str,
    method: http::Method,
    url: &str,
    body: Bytes,
) -> Result<reqwest::Response, String> {
    let mut req = HttpRequest::new(HttpRequestBody::from(body.clone()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = url.parse().map_err(|e| format!("URL {url}: {e}"))?;
    if let Credentials::Static { key, secret, token } = creds {
        let credential = AwsCredential {
            key_id: key.clone(),
            secret_key: secret.clone(),
            token: token.clone(),
        };
        AwsAuthorizer::new(&credential, "s3", region)
            .try_authorize(&mut req, None)
            .map_err(|e| format!("signing: {e}"))?;
    }
    client
        .request(method, url)
        .headers(req.headers().clone())
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let e = e.without_url();
            format!("{} {url}: {}", req.method(), super::error_chain(&e))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(key: &str, secret: &str, token: &str) -> SnapshotS3Config {
        SnapshotS3Config {
            endpoint: "localhost:9000".into(),
            bucket: "b".into(),
            access_key: key.into(),
            secret: secret.into(),
            session_token: token.into(),
            ..Default::default()
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn static_keys_win_over_the_environment() {
        let vars = [
            ("AWS_ACCESS_KEY_ID", "envkey"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ];
        assert_eq!(
            credentials(&cfg("k", "s", "t"), env(&vars)).unwrap(),
            Credentials::Static {
                key: "k".into(),
                secret: "s".into(),
                token: Some("t".into())
            }
        );
    }

    #[test]
    fn environment_aws_then_minio_then_anonymous() {
        let aws = [
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("AWS_SESSION_TOKEN", "c"),
            ("MINIO_ACCESS_KEY", "m"),
            ("MINIO_SECRET_KEY", "n"),
        ];
        assert_eq!(
            credentials(&cfg("", "", ""), env(&aws)).unwrap(),
            Credentials::Static {
                key: "a".into(),
                secret: "b".into(),
                token: Some("c".into())
            }
        );
        let minio = [
            ("AWS_ACCESS_KEY_ID", "a"),
            ("MINIO_ACCESS_KEY", "m"),
            ("MINIO_SECRET_KEY", "n"),
        ];
        assert_eq!(
            credentials(&cfg("", "", ""), env(&minio)).unwrap(),
            Credentials::Static {
                key: "m".into(),
                secret: "n".into(),
                token: None
            }
        );
        assert_eq!(
            credentials(&cfg("", "", ""), env(&[])).unwrap(),
            Credentials::Anonymous
        );
    }

    #[test]
    fn half_a_key_pair_is_a_configuration_error() {
        assert!(matches!(
            credentials(&cfg("k", "", ""), env(&[])),
            Err(StoreError::Config(_))
        ));
    }

    #[test]
    fn endpoint_is_host_and_port_only() {
        let mut c = cfg("", "", "");
        assert_eq!(base_url(&c).unwrap(), "http://localhost:9000");
        c.use_ssl = true;
        assert_eq!(base_url(&c).unwrap(), "https://localhost:9000");
        for bad in ["", "http://localhost:9000", "localhost:9000/x"] {
            c.endpoint = bad.into();
            assert!(matches!(base_url(&c), Err(StoreError::Config(_))), "{bad}");
        }
        c.endpoint = "localhost".into();
        c.bucket = String::new();
        assert!(matches!(base_url(&c), Err(StoreError::Config(_))));
    }
}
