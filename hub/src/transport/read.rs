//! Ranged reads of a file's location: one GET per range, only a `206` whose
//! `Content-Range` is exactly the range asked for accepted and its body exactly that long
//! (`hf-hub` accepts any 2xx); a `200` (the whole file) means the server ignores `Range`.

use std::ops::Range;
use std::time::Instant;

use futures_util::StreamExt as _;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};

use super::location::RemoteFile;
use super::{host_and_path, Failure, Retry, Scope, Timing, Transport};
use crate::error::FetchError;

impl Transport {
    /// `range` of `file` in a vector of exactly its length.
    pub(crate) async fn read_to_vec(
        &self,
        scope: &Scope,
        file: &RemoteFile,
        range: Range<u64>,
    ) -> Result<Vec<u8>, FetchError> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.read_range(scope, file, range, |offset, chunk| {
            buf[offset..offset + chunk.len()].copy_from_slice(chunk);
        })
        .await?;
        Ok(buf)
    }

    /// Reads `range` of `file`, handing each chunk of the body to `sink` with its offset in
    /// the range (never past the range's end). A retry hands the bytes again from offset
    /// 0, so `sink` must only place bytes by offset.
    pub(crate) async fn read_range(
        &self,
        scope: &Scope,
        file: &RemoteFile,
        range: Range<u64>,
        mut sink: impl FnMut(usize, &[u8]),
    ) -> Result<(), FetchError> {
        let mut retry = Retry::default();
        let mut refused = None;
        loop {
            let mut generation = 0;
            let once = self
                .read_range_once(
                    scope,
                    file,
                    &range,
                    &mut sink,
                    refused.take(),
                    &mut generation,
                )
                .await;
            match once {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    if let Failure::Expired(_) = failure {
                        refused = Some(generation);
                    }
                    retry.after(self, failure).await?;
                }
            }
        }
    }

    async fn read_range_once(
        &self,
        scope: &Scope,
        file: &RemoteFile,
        range: &Range<u64>,
        sink: &mut impl FnMut(usize, &[u8]),
        refused: Option<u64>,
        generation: &mut u64,
    ) -> Result<(), Failure> {
        let name = file.name.as_str();
        let names = &scope.names;
        let want = range.end - range.start;
        let unsupported = |what: String| {
            Failure::Final(FetchError::RangesUnsupported {
                at: names.at(name),
                detail: format!(
                    "asked for bytes {}..{} ({want} bytes) of a {}-byte file, {what}",
                    range.start, range.end, file.size
                ),
            })
        };
        let short = |got: u64| {
            Failure::Retry(FetchError::Integrity {
                at: names.at(name),
                check: "range length",
                expected: format!("{want} bytes ({}..{})", range.start, range.end),
                actual: format!("{got} bytes"),
            })
        };

        let (location, current) = file
            .location(self, scope, refused)
            .await
            .map_err(Failure::Final)?;
        *generation = current;
        let started = Instant::now();
        let request = self
            .request(Method::GET, &location.url)
            .header(RANGE, format!("bytes={}-{}", range.start, range.end - 1));
        let response = self
            .send(scope, name, (&location.url, true), request)
            .await?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => {
                return Err(unsupported(
                    "and the answer is 200 OK (the whole file)".to_string(),
                ))
            }
            // The CDN refuses a signature past its end: resolve again.
            StatusCode::FORBIDDEN if !location.own => {
                return Err(Failure::Expired(names.for_status(
                    name,
                    403,
                    None,
                    format!("HTTP 403 from {}", host_and_path(&location.url)),
                    None,
                )))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Failure::Final(names.invalid(
                    name,
                    format!(
                        "the Hub refused bytes {}..{} as out of range, though the file is {} bytes",
                        range.start, range.end, file.size
                    ),
                )))
            }
            _ => return Err(Self::unexpected(scope, name, &response, "a range of")),
        }
        let content_range = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let exact = crate::headers::content_range(content_range)
            .is_some_and(|answered| answered.is(range, file.size));
        if !exact {
            return Err(unsupported(format!(
                "and the answer's Content-Range is {content_range:?}"
            )));
        }
        match response.content_length() {
            None => {}
            Some(len) if len == want => {}
            Some(len) if len > want => {
                return Err(unsupported(format!("and the answer announces {len} bytes")))
            }
            Some(len) => return Err(short(len)),
        }
        let mut body = response.bytes_stream();
        let mut got = 0u64;
        let mut first_byte = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Failure::Retry(self.transport_error(scope, name, &e)))?;
            first_byte.get_or_insert_with(|| started.elapsed());
            scope.meter.bytes(chunk.len());
            let end = got + chunk.len() as u64;
            if end > want {
                return Err(unsupported(format!(
                    "and the answer runs past {want} bytes"
                )));
            }
            sink(got as usize, &chunk);
            got = end;
        }
        if got != want {
            return Err(short(got));
        }
        let total = started.elapsed();
        scope.timed(Timing {
            first_byte: first_byte.unwrap_or(total),
            total,
            bytes: want,
        });
        Ok(())
    }
}
