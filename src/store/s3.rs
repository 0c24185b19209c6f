//! S3 and S3-compatible stores (MinIO, R2, Spaces, B2, Wasabi, GCS's S3 API) on aws-sdk-s3.
//!
//! A stream of unknown length is read one part at a time: if it ends within the first part
//! it goes up as one PutObject with a Content-Length; otherwise as a multipart upload with up
//! to `parts_in_flight` parts uploading at once, so memory stays at about
//! `part_size × parts_in_flight` whatever the object's size. Any failure, or the put future
//! being dropped, aborts the multipart upload: nothing partial is ever visible.
//!
//! The SHA-256 of the whole object is computed on the way and kept as user metadata `sha256`.
//! A multipart upload only knows it at the end, after its metadata was fixed, so the object
//! is then copied onto itself with the full metadata (server-side, no bytes move through us;
//! skipped above CopyObject's 5 GiB limit).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, MetadataDirective, ServerSideEncryption, StorageClass,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::{
    ByteRange, ByteStream, GetObject, ObjectInfo, PutOptions, Store, StoreError, encode_key,
    join_url, push_joined_url,
};
use crate::config::StoreConfig;

/// CopyObject's limit: above it the `sha256` metadata is not added after a multipart upload.
const MAX_COPY_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3 accepts at most 10 000 parts per upload.
const MAX_PARTS: i32 = 10_000;
/// The user-metadata key holding the object's hex SHA-256.
const SHA256_META: &str = "sha256";

/// Applies what every write request carries: headers, metadata, storage class, encryption.
/// (PutObject, CreateMultipartUpload and CopyObject have distinct builder types.)
macro_rules! with_object_options {
    ($req:expr, $store:expr, $opts:expr, $meta:expr) => {
        $req.set_content_type($opts.content_type.clone())
            .set_cache_control($opts.cache_control.clone())
            .set_content_disposition($opts.content_disposition.clone())
            .set_metadata(Some($meta))
            .set_storage_class($store.storage_class.clone())
            .set_server_side_encryption($store.sse.clone())
            .set_ssekms_key_id($store.sse_kms_key_id.clone())
    };
}

/// Builds [`ObjectInfo`] from a HeadObject or GetObject answer (same getters, distinct types).
macro_rules! info_from {
    ($key:expr, $size:expr, $out:expr) => {{
        let mut metadata: BTreeMap<String, String> = $out
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        ObjectInfo {
            key: $key.to_string(),
            size: $size,
            etag: $out.e_tag().map(str::to_string),
            sha256: metadata.remove(SHA256_META),
            content_type: $out.content_type().map(str::to_string),
            cache_control: $out.cache_control().map(str::to_string),
            content_disposition: $out.content_disposition().map(str::to_string),
            last_modified: $out.last_modified().and_then(to_system_time),
            metadata,
        }
    }};
}

/// An S3 bucket (or any S3-compatible one) as a [`Store`].
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    part_size: usize,
    parts_in_flight: usize,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    /// Public URLs are this + '/' + the encoded key.
    public_base: String,
    list_page_size: Option<i32>,
}

/// The SDK's own default for connecting (its behaviour version 2024-03-28 and later), kept
/// when the read timeout is set beside it.
const SDK_CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

impl S3Store {
    /// A store on `cfg.bucket`, with credentials from the standard AWS chain (environment,
    /// profile, web identity, container and instance roles). Nothing is sent until first use.
    pub async fn new(cfg: &StoreConfig) -> Result<S3Store, StoreError> {
        Self::build(cfg, None).await
    }

    /// Like [`S3Store::new`], with a fixed access key instead of the credential chain (tests,
    /// tools that take keys on their command line).
    pub async fn with_credentials(
        cfg: &StoreConfig,
        access_key: &str,
        secret_key: &str,
    ) -> Result<S3Store, StoreError> {
        let creds = Credentials::new(access_key, secret_key, None, None, "offload-static");
        Self::build(cfg, Some(creds)).await
    }

    /// Keys asked for per ListObjectsV2 page (default: the server's, 1000 on S3).
    pub fn with_list_page_size(mut self, keys: i32) -> Self {
        self.list_page_size = Some(keys);
        self
    }

    async fn build(cfg: &StoreConfig, creds: Option<Credentials>) -> Result<S3Store, StoreError> {
        let part_size = usize::try_from(cfg.part_size.as_u64())
            .map_err(|_| StoreError::Refused("store.part_size: too large".into()))?;
        // The SDK's own hyper-1 client with rustls on ring: no aws-lc, no legacy hyper 0.14.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(cfg.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(cfg.max_attempts))
            // The SDK bounds connecting alone by default: a store that took a request and
            // never answered held the request (an upload, an asset served from it) forever.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(SDK_CONNECT_TIMEOUT)
                    .read_timeout(cfg.request_timeout)
                    .build(),
            );
        if let Some(creds) = creds {
            loader = loader.credentials_provider(creds);
        }
        let sdk = loader.load().await;
        // Since 2025 the SDK adds CRC32 trailers to streaming bodies by default; many
        // S3-compatible stores reject or mis-store them. Checksums only where S3 requires one.
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &cfg.endpoint {
            s3 = s3.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        Ok(S3Store {
            client: Client::from_conf(s3.build()),
            bucket: cfg.bucket.clone(),
            part_size,
            parts_in_flight: cfg.parts_in_flight.max(1),
            storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
            sse: cfg.sse.as_deref().map(ServerSideEncryption::from),
            sse_kms_key_id: cfg.sse_kms_key_id.clone(),
            public_base: public_base(cfg),
            list_page_size: None,
        })
    }

    /// The user metadata stored with an object: the caller's, plus `sha256` when known.
    fn metadata(opts: &PutOptions, sha256: Option<&str>) -> HashMap<String, String> {
        let mut meta: HashMap<String, String> = opts.metadata.clone().into_iter().collect();
        if let Some(sha) = sha256 {
            meta.insert(SHA256_META.into(), sha.into());
        }
        meta
    }

    async fn put_single(
        &self,
        key: &str,
        data: Bytes,
        sha256: String,
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let size = data.len() as u64;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(size as i64)
            .body(SdkByteStream::from(data));
        let out = with_object_options!(req, self, opts, Self::metadata(opts, Some(&sha256)))
            .send()
            .await
            .map_err(|e| sdk_error("PutObject", e))?;
        Ok(put_info(key, size, out.e_tag, sha256, opts))
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Bytes,
        reader: &mut PartReader,
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        let created = with_object_options!(req, self, opts, Self::metadata(opts, None))
            .send()
            .await
            .map_err(|e| sdk_error("CreateMultipartUpload", e))?;
        let upload_id = created.upload_id.ok_or_else(|| {
            StoreError::Refused("CreateMultipartUpload: the answer has no upload id".into())
        })?;
        let mut upload = Multipart::new(self.client.clone(), &self.bucket, key, upload_id);
        if let Err(err) = self.upload_parts(&mut upload, first, reader).await {
            upload.abort().await;
            return Err(err);
        }
        let etag = upload.complete().await?;
        let sha256 = reader.sha256_hex();
        if reader.size > MAX_COPY_SIZE {
            return Ok(put_info(key, reader.size, etag, sha256, opts));
        }
        match self.set_full_metadata(key, &sha256, opts).await {
            Ok(etag) => Ok(put_info(key, reader.size, etag, sha256, opts)),
            Err(err) => {
                // Whole or not at all: an object without its checksum is not acknowledged.
                let _ = self.delete(key).await;
                Err(err)
            }
        }
    }

    /// Feeds parts to `upload`, keeping at most `parts_in_flight` part buffers alive (the
    /// one being filled counts), until the stream ends.
    async fn upload_parts(
        &self,
        upload: &mut Multipart,
        first: Bytes,
        reader: &mut PartReader,
    ) -> Result<(), StoreError> {
        let mut part = first;
        loop {
            upload.start_part(part)?;
            if reader.finished {
                break;
            }
            while upload.in_flight() >= self.parts_in_flight {
                upload.join_one().await?;
            }
            part = reader.next_part().await?;
            if part.is_empty() {
                break;
            }
        }
        while upload.in_flight() > 0 {
            upload.join_one().await?;
        }
        Ok(())
    }

    /// Copies the object onto itself with its full metadata, `sha256` included.
    async fn set_full_metadata(
        &self,
        key: &str,
        sha256: &str,
        opts: &PutOptions,
    ) -> Result<Option<String>, StoreError> {
        let source = format!("{}/{}", self.bucket, encode_key(key));
        let req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .copy_source(source)
            .metadata_directive(MetadataDirective::Replace);
        let out = with_object_options!(req, self, opts, Self::metadata(opts, Some(sha256)))
            .send()
            .await
            .map_err(|e| sdk_error("CopyObject", e))?;
        Ok(out.copy_object_result.and_then(|r| r.e_tag))
    }
}

fn put_info(
    key: &str,
    size: u64,
    etag: Option<String>,
    sha256: String,
    opts: &PutOptions,
) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size,
        etag,
        sha256: Some(sha256),
        content_type: opts.content_type.clone(),
        cache_control: opts.cache_control.clone(),
        content_disposition: opts.content_disposition.clone(),
        last_modified: Some(SystemTime::now()),
        metadata: opts.metadata.clone(),
    }
}

fn to_system_time(t: &DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

#[async_trait]
impl Store for S3Store {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let mut reader = PartReader::new(body, self.part_size, opts.size_hint);
        let first = reader.next_part().await?;
        if reader.finished {
            let sha256 = reader.sha256_hex();
            return self.put_single(key, first, sha256, &opts).await;
        }
        self.put_multipart(key, first, &mut reader, &opts).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let req = self.client.head_object().bucket(&self.bucket).key(key);
        match req.send().await {
            Ok(out) => {
                let size = out.content_length().unwrap_or(0).max(0) as u64;
                Ok(Some(info_from!(key, size, out)))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(sdk_error("HeadObject", e)),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<GetObject>, StoreError> {
        let req = self.client.get_object().bucket(&self.bucket).key(key);
        let req = req.set_range(range.map(ByteRange::header_value));
        let mut out = match req.send().await {
            Ok(out) => out,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) if status_of(&e) == Some(416) => return Err(StoreError::RangeNotSatisfiable),
            Err(e) => return Err(sdk_error("GetObject", e)),
        };
        let length = out.content_length().unwrap_or(0).max(0) as u64;
        let served = match out.content_range() {
            None => None,
            // Served as told, a range that is no part of the object would send a wrong
            // Content-Length (or overflow computing it).
            Some(value) => Some(parse_content_range(value).ok_or_else(|| {
                StoreError::Refused(format!("GetObject: a bad Content-Range: {value:?}"))
            })?),
        };
        let size = served.map_or(length, |r| r.total);
        let info = info_from!(key, size, out);
        let body = std::mem::take(&mut out.body);
        Ok(Some(GetObject {
            info,
            range: served.map(|r| (r.start, r.end)),
            body: sdk_body_stream(body),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let req = self.client.delete_object().bucket(&self.bucket).key(key);
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(sdk_error("DeleteObject", e)),
        }
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        let pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_max_keys(self.list_page_size)
            .into_paginator()
            .send();
        stream::unfold(pages, |mut pages| async move {
            let page = pages.next().await?;
            Some((page, pages))
        })
        .flat_map(|page| match page {
            Ok(out) => {
                let objects = out.contents.unwrap_or_default();
                stream::iter(objects.into_iter().map(|o| Ok(listed_info(o)))).boxed()
            }
            Err(e) => stream::once(async move { Err(sdk_error("ListObjectsV2", e)) }).boxed(),
        })
        .boxed()
    }

    fn public_url(&self, key: &str) -> String {
        join_url(&self.public_base, key)
    }

    fn push_public_url(&self, key: &str, url: &mut String) {
        push_joined_url(url, &self.public_base, key);
    }
}

fn listed_info(o: aws_sdk_s3::types::Object) -> ObjectInfo {
    ObjectInfo {
        size: o.size().unwrap_or(0).max(0) as u64,
        etag: o.e_tag().map(str::to_string),
        last_modified: o.last_modified().and_then(to_system_time),
        key: o.key.unwrap_or_default(),
        ..ObjectInfo::default()
    }
}

/// The SDK's body as offload's [`ByteStream`].
fn sdk_body_stream(body: SdkByteStream) -> ByteStream {
    stream::unfold(body, |mut body| async move {
        let chunk = body.next().await?;
        Some((chunk.map_err(io::Error::other), body))
    })
    .boxed()
}

/// A `Content-Range: bytes start-end/total` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: u64,
}

/// `bytes start-end/total`, a range within the object; `None` for anything else.
fn parse_content_range(value: &str) -> Option<ContentRange> {
    let (span, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let range = ContentRange {
        start: start.trim().parse().ok()?,
        end: end.trim().parse().ok()?,
        total: total.trim().parse().ok()?,
    };
    (range.start <= range.end && range.end < range.total).then_some(range)
}

/// The public base URL: `store.public_url`, else the bucket's own URL.
fn public_base(cfg: &StoreConfig) -> String {
    if let Some(url) = &cfg.public_url {
        return url.as_str().to_string();
    }
    let bucket = encode_key(&cfg.bucket);
    match &cfg.endpoint {
        Some(endpoint) if cfg.path_style => {
            format!("{}/{bucket}", endpoint.as_str().trim_end_matches('/'))
        }
        Some(endpoint) => {
            let host = endpoint.host_str().unwrap_or_default();
            let port = endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
            let path = endpoint.path().trim_end_matches('/');
            format!("{}://{bucket}.{host}{port}{path}", endpoint.scheme())
        }
        None if cfg.path_style => format!("https://s3.{}.amazonaws.com/{bucket}", cfg.region),
        None => format!("https://{bucket}.s3.{}.amazonaws.com", cfg.region),
    }
}

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Sorts an SDK failure by who is to blame: no answer (connect, timeout, broken answer) or a
/// 5xx is `Unavailable` (try later); any other answer is `Refused`, with the service's code
/// and message (never credentials).
fn sdk_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            // Answers to HEAD have no body, hence no code: name the status instead.
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            let code = err.code().unwrap_or(reason);
            let text = match err.message() {
                Some(message) => format!("{op}: {code} (HTTP {status}): {message}"),
                None => format!("{op}: {code} (HTTP {status})"),
            };
            if status >= 500 || code == "SlowDown" {
                StoreError::Unavailable(text)
            } else {
                StoreError::Refused(text)
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        _ => StoreError::Refused(format!("{op}: {}", DisplayErrorContext(&err))),
    }
}

/// Cuts a body stream into parts of `part_size` bytes, hashing everything on the way.
struct PartReader {
    body: ByteStream,
    part_size: usize,
    /// What the last chunk held beyond the part it completed (already hashed).
    carry: Option<Bytes>,
    hasher: Sha256,
    size: u64,
    size_hint: Option<u64>,
    /// The stream has ended: the part last returned is the last one.
    finished: bool,
}

impl PartReader {
    fn new(body: ByteStream, part_size: usize, size_hint: Option<u64>) -> Self {
        PartReader {
            body,
            part_size,
            carry: None,
            hasher: Sha256::new(),
            size: 0,
            size_hint,
            finished: false,
        }
    }

    fn sha256_hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// The next non-empty chunk from the stream, hashed and counted.
    async fn pull(&mut self) -> Result<Option<Bytes>, StoreError> {
        while let Some(chunk) = self.body.next().await {
            let chunk = chunk.map_err(StoreError::Body)?;
            if !chunk.is_empty() {
                self.hasher.update(&chunk);
                self.size += chunk.len() as u64;
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }

    /// Reads one chunk ahead after a full part, so that a stream ending exactly on a part
    /// boundary is known to have ended (and a one-part object stays a single PutObject).
    async fn look_ahead(&mut self) -> Result<(), StoreError> {
        match self.pull().await? {
            Some(chunk) => self.carry = Some(chunk),
            None => self.finished = true,
        }
        Ok(())
    }

    /// The next part: exactly `part_size` bytes, or fewer when the stream ended (then
    /// `finished` is set).
    async fn next_part(&mut self) -> Result<Bytes, StoreError> {
        let first = match self.carry.take() {
            Some(chunk) => Some(chunk),
            None => self.pull().await?,
        };
        let Some(mut chunk) = first else {
            self.finished = true;
            return Ok(Bytes::new());
        };
        if chunk.len() >= self.part_size {
            // A whole part inside one chunk: slice it, no copy.
            let part = chunk.split_to(self.part_size);
            match chunk.is_empty() {
                true => self.look_ahead().await?,
                false => self.carry = Some(chunk),
            }
            return Ok(part);
        }
        let capacity = self.size_hint.map_or(self.part_size, |hint| {
            usize::try_from(hint.saturating_sub(self.size - chunk.len() as u64))
                .map_or(self.part_size, |left| {
                    left.clamp(chunk.len(), self.part_size)
                })
        });
        let mut part = BytesMut::with_capacity(capacity);
        part.extend_from_slice(&chunk);
        while part.len() < self.part_size {
            let Some(mut chunk) = self.pull().await? else {
                self.finished = true;
                return Ok(part.freeze());
            };
            let room = self.part_size - part.len();
            if chunk.len() > room {
                part.extend_from_slice(&chunk.split_to(room));
                self.carry = Some(chunk);
            } else {
                part.extend_from_slice(&chunk);
            }
        }
        if self.carry.is_none() {
            self.look_ahead().await?;
        }
        Ok(part.freeze())
    }
}

/// One multipart upload in progress. Until it is completed or aborted, dropping it (the put
/// future dropped: the client went away) spawns its abort.
struct Multipart {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    tasks: JoinSet<Result<CompletedPart, StoreError>>,
    parts: Vec<CompletedPart>,
    next_number: i32,
    settled: bool,
}

impl Multipart {
    fn new(client: Client, bucket: &str, key: &str, upload_id: String) -> Self {
        Multipart {
            client,
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id,
            tasks: JoinSet::new(),
            parts: Vec::new(),
            next_number: 1,
            settled: false,
        }
    }

    fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Starts uploading `data` as the next part, on its own task (its SigV4 payload hash
    /// then runs on another core than the stream's own hashing).
    fn start_part(&mut self, data: Bytes) -> Result<(), StoreError> {
        if self.next_number > MAX_PARTS {
            return Err(StoreError::Refused(format!(
                "object needs more than {MAX_PARTS} parts: raise store.part_size"
            )));
        }
        let number = self.next_number;
        self.next_number += 1;
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(data.len() as i64)
            .body(SdkByteStream::from(data));
        self.tasks.spawn(async move {
            let out = req.send().await.map_err(|e| sdk_error("UploadPart", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build())
        });
        Ok(())
    }

    /// Waits for one part upload to end; its failure is the upload's.
    async fn join_one(&mut self) -> Result<(), StoreError> {
        match self.tasks.join_next().await {
            None => Ok(()),
            Some(Ok(Ok(part))) => {
                self.parts.push(part);
                Ok(())
            }
            Some(Ok(Err(err))) => Err(err),
            Some(Err(join)) => Err(StoreError::Unavailable(format!("UploadPart: {join}"))),
        }
    }

    async fn complete(&mut self) -> Result<Option<String>, StoreError> {
        self.parts.sort_by_key(|p| p.part_number);
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.parts)))
            .build();
        let result = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(parts)
            .send()
            .await;
        match result {
            Ok(out) => {
                self.settled = true;
                Ok(out.e_tag)
            }
            Err(e) => {
                let err = sdk_error("CompleteMultipartUpload", e);
                self.abort().await;
                Err(err)
            }
        }
    }

    async fn abort(&mut self) {
        self.settled = true;
        self.abort_task().await;
    }

    fn abort_task(&mut self) -> impl Future<Output = ()> + Send + 'static {
        abort_upload(
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
            std::mem::take(&mut self.tasks),
        )
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let abort = self.abort_task();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(abort);
            }
            Err(_) => tracing::warn!(
                key = %self.key,
                upload_id = %self.upload_id,
                "multipart upload dropped outside a runtime: not aborted"
            ),
        }
    }
}

/// How long an abort keeps being retried while the store is unreachable.
const ABORT_RETRY_FOR: Duration = Duration::from_secs(15 * 60);
/// The longest pause between two abort attempts.
const ABORT_RETRY_MAX_PAUSE: Duration = Duration::from_secs(30);

/// Aborts a multipart upload once its part uploads have ended: a part still arriving after
/// the abort would be kept by some stores (and billed). The first attempt is awaited; when
/// the store is unreachable (the usual reason the upload failed), the abort is retried in
/// the background, with backoff, for up to [`ABORT_RETRY_FOR`]: an upload abandoned while
/// the store was down would otherwise stay open (and billed) forever.
async fn abort_upload(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    mut tasks: JoinSet<Result<CompletedPart, StoreError>>,
) {
    while tasks.join_next().await.is_some() {}
    let abort = PendingAbort {
        client,
        bucket,
        key,
        upload_id,
    };
    if abort.attempt().await.is_settled() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(abort.retry());
        }
        Err(_) => tracing::warn!(
            key = %abort.key,
            upload_id = %abort.upload_id,
            "could not abort multipart upload, and cannot retry outside a runtime"
        ),
    }
}

/// A multipart upload to abort.
struct PendingAbort {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
}

/// What one abort attempt achieved.
enum AbortOutcome {
    Done,
    /// The store refused it (the upload is gone, permissions…): retrying will not help.
    Refused,
    /// The store could not be reached: worth trying again.
    Unreachable,
}

impl AbortOutcome {
    fn is_settled(&self) -> bool {
        !matches!(self, AbortOutcome::Unreachable)
    }
}

impl PendingAbort {
    async fn attempt(&self) -> AbortOutcome {
        let (key, upload_id) = (&self.key, &self.upload_id);
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::debug!(%key, %upload_id, "multipart upload aborted");
                AbortOutcome::Done
            }
            Err(e) => match sdk_error("AbortMultipartUpload", e) {
                err @ StoreError::Unavailable(_) => {
                    tracing::warn!(%key, %upload_id, error = %err, "could not abort multipart upload yet; retrying");
                    AbortOutcome::Unreachable
                }
                err => {
                    tracing::warn!(%key, %upload_id, error = %err, "could not abort multipart upload");
                    AbortOutcome::Refused
                }
            },
        }
    }

    /// Tries again with a doubling pause until the abort settles or time runs out.
    async fn retry(self) {
        let give_up = tokio::time::Instant::now() + ABORT_RETRY_FOR;
        let mut pause = Duration::from_millis(500);
        while tokio::time::Instant::now() + pause < give_up {
            tokio::time::sleep(pause).await;
            if self.attempt().await.is_settled() {
                return;
            }
            pause = (pause * 2).min(ABORT_RETRY_MAX_PAUSE);
        }
        tracing::error!(
            key = %self.key,
            upload_id = %self.upload_id,
            "gave up aborting a multipart upload: remove it with a lifecycle rule"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Ok(Bytes::from(vec![i as u8; *n])))
            .collect();
        stream::iter(chunks).boxed()
    }

    async fn parts(sizes: &[usize], part_size: usize) -> (Vec<usize>, bool) {
        let mut reader = PartReader::new(chunks(sizes), part_size, None);
        let mut out = Vec::new();
        loop {
            let part = reader.next_part().await.unwrap();
            out.push(part.len());
            if reader.finished {
                return (out, reader.size == sizes.iter().sum::<usize>() as u64);
            }
        }
    }

    #[tokio::test]
    async fn parts_are_cut_exactly() {
        assert_eq!(parts(&[], 4).await, (vec![0], true));
        assert_eq!(parts(&[3], 4).await, (vec![3], true));
        assert_eq!(parts(&[4], 4).await, (vec![4], true));
        assert_eq!(parts(&[2, 2], 4).await, (vec![4], true));
        assert_eq!(parts(&[2, 0, 3], 4).await, (vec![4, 1], true));
        assert_eq!(parts(&[9], 4).await, (vec![4, 4, 1], true));
        assert_eq!(parts(&[8], 4).await, (vec![4, 4], true));
        assert_eq!(parts(&[3, 3, 3, 3], 4).await, (vec![4, 4, 4], true));
    }

    #[test]
    fn content_range_parses() {
        let r = parse_content_range("bytes 2-5/10").unwrap();
        assert_eq!((r.start, r.end, r.total), (2, 5, 10));
        assert!(parse_content_range("bytes */10").is_none());
        // Not a part of the object: serving it would compute a wrong Content-Length.
        assert!(parse_content_range("bytes 10-5/100").is_none());
        assert!(parse_content_range("bytes 0-18446744073709551615/100").is_none());
        assert!(parse_content_range("bytes 0-10/10").is_none());
        let last = parse_content_range("bytes 9-9/10").unwrap();
        assert_eq!((last.start, last.end, last.total), (9, 9, 10));
    }

    #[test]
    fn public_urls_follow_addressing_style() {
        let mut cfg = StoreConfig {
            bucket: "assets".into(),
            region: "eu-west-1".into(),
            ..StoreConfig::default()
        };
        assert_eq!(
            public_base(&cfg),
            "https://assets.s3.eu-west-1.amazonaws.com"
        );
        cfg.endpoint = Some("http://127.0.0.1:9000/".parse().unwrap());
        cfg.path_style = true;
        assert_eq!(public_base(&cfg), "http://127.0.0.1:9000/assets");
        cfg.path_style = false;
        assert_eq!(public_base(&cfg), "http://assets.127.0.0.1:9000");
        cfg.public_url = Some("https://cdn.example.com/a/".parse().unwrap());
        assert_eq!(public_base(&cfg), "https://cdn.example.com/a/");
    }
}
