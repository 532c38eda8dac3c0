//! A whole file from its location into a local file, hashed as it arrives. A connection
//! reset or a refused signature mid-body resumes from the bytes already written (one range
//! to the end), so a multi-gigabyte download is not started over for a blip.

use std::path::Path;

use futures_util::StreamExt as _;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use super::location::RemoteFile;
use super::{host_and_path, Failure, Retry, Scope, Transport};
use crate::error::FetchError;
use crate::hashing::hex;

/// What a download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Downloaded {
    /// Bytes in the local file.
    pub(crate) len: u64,
    /// Their sha256.
    pub(crate) sha256: String,
}

/// The local file being written and what it holds so far.
struct Sink<'a> {
    path: &'a Path,
    out: tokio::fs::File,
    hasher: Sha256,
    len: u64,
}

impl Sink<'_> {
    /// Starts over: the server sent the whole file where the rest was asked for.
    async fn restart(&mut self) -> std::io::Result<()> {
        self.out.set_len(0).await?;
        self.out.rewind().await?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }
}

impl Transport {
    /// Downloads `file` into `path` (created or emptied first). Stops reading once the
    /// file's size is reached, so a server sending more cannot fill the disk; the caller
    /// checks the length and hash it returns.
    pub(crate) async fn download(
        &self,
        scope: &Scope,
        file: &RemoteFile,
        path: &Path,
    ) -> Result<Downloaded, FetchError> {
        let cache_error = |e: std::io::Error| scope.names.cache(&file.name, path, &e);
        let out = tokio::fs::File::create(path).await.map_err(cache_error)?;
        let mut sink = Sink {
            path,
            out,
            hasher: Sha256::new(),
            len: 0,
        };
        let mut retry = Retry::default();
        let mut refused = None;
        loop {
            let mut generation = 0;
            let once = self
                .download_once(scope, file, &mut sink, refused.take(), &mut generation)
                .await;
            match once {
                Ok(()) => break,
                Err(failure) => {
                    if let Failure::Expired(_) = failure {
                        refused = Some(generation);
                    }
                    retry.after(self, failure).await?;
                }
            }
        }
        sink.out.flush().await.map_err(cache_error)?;
        sink.out.sync_all().await.map_err(cache_error)?;
        Ok(Downloaded {
            len: sink.len,
            sha256: hex(&sink.hasher.finalize()),
        })
    }

    async fn download_once(
        &self,
        scope: &Scope,
        file: &RemoteFile,
        sink: &mut Sink<'_>,
        refused: Option<u64>,
        generation: &mut u64,
    ) -> Result<(), Failure> {
        let name = file.name.as_str();
        let cache_error =
            |e: std::io::Error| Failure::Final(scope.names.cache(name, sink.path, &e));
        let (location, current) = file
            .location(self, scope, refused)
            .await
            .map_err(Failure::Final)?;
        *generation = current;
        let mut request = self.request(Method::GET, &location.url);
        let resuming = sink.len > 0 && sink.len < file.size;
        if resuming {
            request = request.header(RANGE, format!("bytes={}-", sink.len));
        }
        let response = self
            .send(scope, name, (&location.url, true), request)
            .await?;
        match response.status() {
            StatusCode::OK => {
                if sink.len > 0 {
                    sink.restart().await.map_err(cache_error)?;
                }
            }
            StatusCode::PARTIAL_CONTENT if resuming => {
                let from = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(start, _)| start.parse::<u64>().ok());
                if from != Some(sink.len) {
                    // Not the rest we asked for: start over on the next attempt.
                    sink.restart().await.map_err(cache_error)?;
                    return Err(Failure::Retry(scope.names.transient(
                        name,
                        format!(
                            "resuming at byte {} got Content-Range from {from:?}",
                            sink.len
                        ),
                    )));
                }
            }
            StatusCode::FORBIDDEN if !location.own => {
                return Err(Failure::Expired(scope.names.for_status(
                    name,
                    403,
                    None,
                    format!("HTTP 403 from {}", host_and_path(&location.url)),
                    None,
                )))
            }
            _ => return Err(Self::unexpected(scope, name, &response, "downloading")),
        }
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Failure::Retry(self.transport_error(scope, name, &e)))?;
            scope.meter.bytes(chunk.len());
            sink.out.write_all(&chunk).await.map_err(cache_error)?;
            sink.hasher.update(&chunk);
            sink.len += chunk.len() as u64;
            if sink.len > file.size {
                break;
            }
        }
        Ok(())
    }
}
