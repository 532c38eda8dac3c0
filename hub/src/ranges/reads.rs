//! The planned reads: every request of a plan, many in flight, each filling its stretch of
//! the file's arena with the needed runs only. They run on a thread with a single-threaded
//! runtime and connections of their own: a ranged fetch is tens of thousands of small
//! requests, and on the worker's multi-threaded runtime every answer wakes a task across
//! threads. Dropping the fetch stops the reads.

use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::reader::HeldBytes;
use crate::error::FetchError;
use crate::transport::{RemoteFile, Scope, Transport};

/// Runs [`fetch_plan`] on a thread of its own (see the module docs), `concurrency`
/// requests at a time. Dropping the returned future stops the reads.
pub(crate) async fn fetch_plan_apart(
    transport: &Transport,
    scope: &Scope,
    files: Vec<Arc<RemoteFile>>,
    plan: Plan,
    concurrency: usize,
) -> Result<Vec<HeldBytes>, FetchError> {
    let repo = scope.names.repo().to_string();
    let apart = |detail: String| FetchError::Setup {
        detail: format!("ranged reads of {repo}: {detail}"),
    };
    let transport = transport.with_own_connections().map_err(apart)?;
    let scope = scope.clone();
    let stop = CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ranged-reads".to_string())
        .spawn(move || {
            let reads = async {
                let fetch = fetch_plan(&transport, &scope, &files, plan, concurrency);
                tokio::select! {
                    fetched = fetch => Some(fetched),
                    () = stop.cancelled() => None,
                }
            };
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(reads),
                Err(e) => Some(Err(FetchError::Setup {
                    detail: format!("cannot start a runtime for ranged reads: {e}"),
                })),
            };
            // Nobody to tell when the fetch was abandoned.
            let _ = done.send(outcome);
        })
        .map_err(|e| apart(format!("cannot start a thread: {e}")))?;
    match outcome.await {
        Ok(Some(fetched)) => fetched,
        // Only this future stops the reads, and it is still here: the thread died.
        Ok(None) | Err(_) => Err(apart("the reading thread stopped unexpectedly".to_string())),
    }
}

/// Downloads every request of `plan`, `concurrency` at a time, keeping only the needed runs.
async fn fetch_plan(
    transport: &Transport,
    scope: &Scope,
    files: &[Arc<RemoteFile>],
    plan: Plan,
    concurrency: usize,
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
                    return Ok(());
                };
                transport
                    .read_range(
                        scope,
                        &files[request.file],
                        request.start..request.end,
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
                    .await
            })
            .buffer_unordered(concurrency);
        while let Some(result) = fetches.next().await {
            result?;
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let timings = scope.timings();
        let planned = &timings[timings.len().saturating_sub(requests.len())..];
        let quantiles = |pick: fn(&crate::transport::Timing) -> std::time::Duration| {
            let mut v: Vec<f64> = planned
                .iter()
                .map(|t| pick(t).as_secs_f64() * 1e3)
                .collect();
            v.sort_by(f64::total_cmp);
            let at = |q: f64| {
                v.get(((v.len() as f64 - 1.0) * q) as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            format!(
                "{:.1}/{:.1}/{:.1}/{:.1}",
                at(0.1),
                at(0.5),
                at(0.9),
                at(1.0)
            )
        };
        tracing::debug!(
            first_byte_ms = quantiles(|t| t.first_byte),
            total_ms = quantiles(|t| t.total),
            "planned reads done (p10/p50/p90/max)"
        );
    }
    Ok(runs
        .into_iter()
        .zip(arenas)
        .map(|(runs, arena)| HeldBytes { runs, arena })
        .collect())
}
