//! Ranged reads over HTTP: one GET per range with the token `hf-hub` uses, only a `206`
//! whose `Content-Range` is exactly the range asked for accepted and its body exactly that
//! long; transient failures retried with backoff; a fetch's reads run on a thread with a
//! single-threaded runtime of their own, stopped when the fetch is dropped.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::reader::HeldBytes;
use crate::error::{error_chain, retry_after, FetchError};
use crate::fetch::{Cost, Remote, RemoteFile, MAX_ATTEMPTS};

/// First retry delay of a ranged read; doubled on each further attempt.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(250);

/// Why one attempt at a ranged read failed.
enum Failure {
    /// Worth another attempt (transport trouble, 5xx, a short answer).
    Retry(FetchError),
    Final(FetchError),
}

/// Reads `range` of `file` into a vector of exactly its length.
pub(crate) async fn read_to_vec(
    remote: &Remote,
    file: &RemoteFile,
    range: std::ops::Range<u64>,
    cost: &mut Cost,
) -> Result<Vec<u8>, FetchError> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    read_range(remote, file, range, cost, |offset, chunk| {
        buf[offset..offset + chunk.len()].copy_from_slice(chunk);
    })
    .await?;
    Ok(buf)
}

/// Reads `range` of `file`, handing each chunk of the body to `sink` with its offset in the
/// range (never past the range's end). Retries transient failures with backoff; a retry
/// hands the bytes again from offset 0, so `sink` must only place bytes by offset.
async fn read_range(
    remote: &Remote,
    file: &RemoteFile,
    range: std::ops::Range<u64>,
    cost: &mut Cost,
    mut sink: impl FnMut(usize, &[u8]),
) -> Result<(), FetchError> {
    let mut attempt = 1;
    loop {
        match read_range_once(remote, file, range.clone(), cost, &mut sink).await {
            Ok(()) => return Ok(()),
            Err(Failure::Retry(e)) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(
                    repo = %remote.names().repo(),
                    revision = %remote.names().revision(),
                    file = %file.name,
                    start = range.start,
                    end = range.end,
                    attempt,
                    error = %e,
                    "ranged read failed; retrying"
                );
                tokio::time::sleep(RETRY_BASE_DELAY * 2u32.pow(attempt - 1)).await;
                attempt += 1;
            }
            Err(Failure::Retry(e) | Failure::Final(e)) => return Err(e),
        }
    }
}

async fn read_range_once(
    remote: &Remote,
    file: &RemoteFile,
    range: std::ops::Range<u64>,
    cost: &mut Cost,
    sink: &mut impl FnMut(usize, &[u8]),
) -> Result<(), Failure> {
    let name = file.name.as_str();
    let names = remote.names();
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

    let got = if file.xet {
        // hf-hub reconstructs Xet ranges itself (after a paths-info call of its own).
        cost.requests += 2;
        let classify = |e| {
            let e = names.classify(name, e);
            if e.is_transient() {
                Failure::Retry(e)
            } else {
                Failure::Final(e)
            }
        };
        let (announced, body) = remote
            .xet_range(name, range.clone())
            .await
            .map_err(classify)?;
        check_announced(announced, want, file.size, &unsupported, &short)?;
        consume(
            body.map(|chunk| chunk.map_err(classify)),
            want,
            cost,
            sink,
            &unsupported,
        )
        .await?
    } else {
        cost.requests += 1;
        let response = ranged_get(remote, file, &range).await?;
        let announced = response.content_length();
        check_announced(announced, want, file.size, &unsupported, &short)?;
        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| Failure::Retry(names.transient(name, error_chain(&e)))));
        consume(body, want, cost, sink, &unsupported).await?
    };
    if got != want {
        return Err(short(got));
    }
    Ok(())
}

/// Refuses an answer whose announced length is not the range's before reading its body.
fn check_announced(
    announced: Option<u64>,
    want: u64,
    file_size: u64,
    unsupported: &impl Fn(String) -> Failure,
    short: &impl Fn(u64) -> Failure,
) -> Result<(), Failure> {
    match announced {
        None => Ok(()),
        Some(len) if len == want => Ok(()),
        // The whole file for part of it: the server ignored `Range`. Not read any further.
        Some(len) if len == file_size => Err(unsupported(format!(
            "and the answer is the whole file ({len} bytes)"
        ))),
        Some(len) if len > want => {
            Err(unsupported(format!("and the answer announces {len} bytes")))
        }
        Some(len) => Err(short(len)),
    }
}

/// Hands a body to `sink` chunk by chunk; returns how many bytes came, refusing more than
/// `want`.
async fn consume<B: AsRef<[u8]>>(
    body: impl futures_util::Stream<Item = Result<B, Failure>>,
    want: u64,
    cost: &mut Cost,
    sink: &mut impl FnMut(usize, &[u8]),
    unsupported: &impl Fn(String) -> Failure,
) -> Result<u64, Failure> {
    let mut body = std::pin::pin!(body);
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let chunk = chunk.as_ref();
        cost.bytes += chunk.len() as u64;
        let end = got + chunk.len() as u64;
        if end > want {
            return Err(unsupported(format!(
                "and the answer runs past {want} bytes"
            )));
        }
        sink(got as usize, chunk);
        got = end;
    }
    Ok(got)
}

/// One plain ranged GET of the file at the pinned revision, through the client `hf-hub`
/// uses, with its token. (`hf-hub`'s own ranged download asks the paths-info API before
/// every GET whether the file is in Xet; we know that from the one call per file.) Only a
/// `206` whose `Content-Range` is exactly the range asked for is accepted.
async fn ranged_get(
    remote: &Remote,
    file: &RemoteFile,
    range: &std::ops::Range<u64>,
) -> Result<reqwest::Response, Failure> {
    let names = remote.names();
    let name = file.name.as_str();
    let response = remote
        .get(&file.url)
        .header(
            reqwest::header::RANGE,
            format!("bytes={}-{}", range.start, range.end - 1),
        )
        .send()
        .await
        .map_err(|e| Failure::Retry(names.transient(name, error_chain(&e))))?;
    let status = response.status();
    let detail = || format!("HTTP {status} for bytes {}..{}", range.start, range.end);
    match status.as_u16() {
        206 => {}
        200 => {
            return Err(Failure::Final(FetchError::RangesUnsupported {
                at: names.at(name),
                detail: format!(
                    "asked for bytes {}..{} and the answer is 200 OK (the whole file)",
                    range.start, range.end
                ),
            }))
        }
        404 => {
            return Err(Failure::Final(FetchError::FileNotFound {
                at: names.at(name),
            }))
        }
        code @ (401 | 403) => {
            return Err(Failure::Final(FetchError::AccessDenied {
                at: names.at(name),
                status: code,
                detail: detail(),
            }))
        }
        416 => {
            return Err(Failure::Final(names.invalid(
                name,
                format!(
                    "the Hub refused bytes {}..{} as out of range, though the file is {} bytes",
                    range.start, range.end, file.size
                ),
            )))
        }
        408 | 429 | 500..=599 => {
            let wait = retry_after(response.headers());
            return Err(Failure::Retry(names.transient_after(name, detail(), wait)));
        }
        code => {
            return Err(Failure::Final(FetchError::Hub {
                at: names.at(name),
                detail: detail(),
                status: Some(code),
            }))
        }
    }
    let content_range = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let exact =
        crate::headers::content_range(content_range).is_some_and(|r| r.is(range, file.size));
    if !exact {
        return Err(Failure::Final(FetchError::RangesUnsupported {
            at: names.at(name),
            detail: format!(
                "asked for bytes {}..{} of a {}-byte file and the answer's Content-Range is {content_range:?}",
                range.start, range.end, file.size
            ),
        }));
    }
    Ok(response)
}

/// Runs [`fetch_plan`] on a thread of its own. Plain GETs run there on a single-threaded
/// runtime with connections of its own: a ranged fetch is tens of thousands of small
/// requests, and on the worker's multi-threaded runtime every answer wakes a task across
/// threads. Files in Xet are read through `hf-hub`'s Xet client, on the caller's runtime.
/// Dropping the returned future stops the reads.
pub(crate) async fn fetch_plan_apart(
    remote: Remote,
    files: Vec<RemoteFile>,
    plan: Plan,
    concurrency: usize,
    cost: &mut Cost,
) -> Result<Vec<HeldBytes>, FetchError> {
    let repo = remote.names().repo().to_string();
    let apart = |detail: String| FetchError::Setup {
        detail: format!("ranged reads of {repo}: {detail}"),
    };
    let callers_runtime = files
        .iter()
        .any(|f| f.xet)
        .then(tokio::runtime::Handle::current);
    let remote = match callers_runtime {
        Some(_) => remote,
        None => remote.with_own_connections().map_err(apart)?,
    };
    let stop = CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ranged-reads".to_string())
        .spawn(move || {
            let reads = async {
                let mut cost = Cost::default();
                let fetched = {
                    let fetch = fetch_plan(&remote, &files, plan, concurrency, &mut cost);
                    tokio::select! {
                        fetched = fetch => Some(fetched),
                        () = stop.cancelled() => None,
                    }
                };
                fetched.map(|fetched| (fetched, cost))
            };
            let outcome = match callers_runtime {
                Some(handle) => handle.block_on(reads),
                None => match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(reads),
                    Err(e) => Some((
                        Err(FetchError::Setup {
                            detail: format!("cannot start a runtime for ranged reads: {e}"),
                        }),
                        Cost::default(),
                    )),
                },
            };
            // Nobody to tell when the fetch was abandoned.
            let _ = done.send(outcome);
        })
        .map_err(|e| apart(format!("cannot start a thread: {e}")))?;
    match outcome.await {
        Ok(Some((fetched, spent))) => {
            *cost += spent;
            fetched
        }
        // Only this future stops the reads, and it is still here: the thread died.
        Ok(None) | Err(_) => Err(apart("the reading thread stopped unexpectedly".to_string())),
    }
}

/// Downloads every request of `plan`, `concurrency` at a time, keeping only the needed runs.
async fn fetch_plan(
    remote: &Remote,
    files: &[RemoteFile],
    plan: Plan,
    concurrency: usize,
    cost: &mut Cost,
) -> Result<Vec<HeldBytes>, FetchError> {
    let Plan {
        runs,
        arena_len,
        requests,
        ..
    } = plan;
    let mut arenas: Vec<Vec<u8>> = arena_len.iter().map(|&n| vec![0u8; n]).collect();
    {
        // The requests of a file cover its runs in order, so each request fills the next
        // stretch of the file's arena: hand every request its own stretch.
        let mut unfilled: Vec<&mut [u8]> = arenas.iter_mut().map(Vec::as_mut_slice).collect();
        let mut work = Vec::with_capacity(requests.len());
        for request in &requests {
            let file_runs = &runs[request.file][request.runs.clone()];
            let len = match (file_runs.first(), file_runs.last()) {
                (Some(first), Some(last)) => last.at + (last.end - last.start) as usize - first.at,
                _ => 0,
            };
            let (segment, rest) = std::mem::take(&mut unfilled[request.file]).split_at_mut(len);
            unfilled[request.file] = rest;
            work.push((request, file_runs, segment));
        }
        let mut fetches = futures_util::stream::iter(work)
            .map(|(request, file_runs, segment)| async move {
                let Some(first) = file_runs.first() else {
                    return (Ok(()), Cost::default());
                };
                let mut cost = Cost::default();
                let result = read_range(
                    remote,
                    &files[request.file],
                    request.start..request.end,
                    &mut cost,
                    |offset, chunk| {
                        let (lo, hi) = (
                            request.start + offset as u64,
                            request.start + (offset + chunk.len()) as u64,
                        );
                        let from = file_runs.partition_point(|r| r.end <= lo);
                        for r in &file_runs[from..] {
                            if r.start >= hi {
                                break;
                            }
                            let (s, e) = (r.start.max(lo), r.end.min(hi));
                            let dst = r.at - first.at + (s - r.start) as usize;
                            let src = (s - lo) as usize;
                            let len = (e - s) as usize;
                            segment[dst..dst + len].copy_from_slice(&chunk[src..src + len]);
                        }
                    },
                )
                .await;
                (result, cost)
            })
            .buffer_unordered(concurrency);
        while let Some((result, spent)) = fetches.next().await {
            *cost += spent;
            result?;
        }
    }
    Ok(runs
        .into_iter()
        .zip(arenas)
        .map(|(runs, arena)| HeldBytes { runs, arena })
        .collect())
}
