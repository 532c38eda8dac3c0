//! Where a file's bytes come from, and file bodies: read in one go when small, streamed
//! otherwise, paced by the server's and the connection's bandwidth. The Hub's own answers
//! and the CDN's use the same bodies.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::throttle::{throttled, Throttle};
use crate::virtual_hub::VirtualFile;
use crate::{SMALL_BODY, STREAM_CHUNK, THROTTLED_CHUNK};

/// The source of a file's bytes.
#[derive(Clone)]
pub(crate) enum Content {
    /// A file on disk.
    Disk(PathBuf),
    /// A file of the virtual hub, generated when read.
    Virtual(Arc<VirtualFile>),
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Disk(path) => write!(f, "{}", path.display()),
            Content::Virtual(file) => write!(f, "virtual {}", file.label),
        }
    }
}

impl Content {
    /// `count` bytes from `start`, read in one go (blocking).
    pub(crate) fn read(&self, start: u64, count: u64) -> io::Result<Bytes> {
        match self {
            Content::Disk(path) => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(path)?;
                let mut buf = vec![0u8; count as usize];
                f.read_exact_at(&mut buf, start)?;
                Ok(buf.into())
            }
            Content::Virtual(file) => {
                if start + count > file.size() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} has {} bytes", file.label, file.size()),
                    ));
                }
                Ok(file.read(start, count).into())
            }
        }
    }

    /// `count` bytes from `start`, in chunks of `chunk` bytes.
    async fn stream(
        &self,
        start: u64,
        count: u64,
        chunk: usize,
    ) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        match self {
            Content::Disk(path) => {
                let mut f = tokio::fs::File::open(path).await?;
                if start > 0 {
                    f.seek(io::SeekFrom::Start(start)).await?;
                }
                Ok(ReaderStream::with_capacity(f.take(count), chunk).boxed())
            }
            Content::Virtual(_) => {
                // Generated a piece at a time on the blocking pool.
                let (content, end) = (self.clone(), start + count);
                let pieces = futures_util::stream::unfold(start, move |at| {
                    let content = content.clone();
                    async move {
                        if at >= end {
                            return None;
                        }
                        let n = (chunk as u64).min(end - at);
                        let piece = tokio::task::spawn_blocking(move || content.read(at, n))
                            .await
                            .map_err(io::Error::other)
                            .and_then(|r| r);
                        Some((piece, at + n))
                    }
                });
                Ok(pieces.boxed())
            }
        }
    }
}

/// The bandwidth limits one body is paced by: the server's total, the connection's.
#[derive(Clone, Default)]
pub(crate) struct Pacing(pub(crate) Vec<Arc<Throttle>>);

impl Pacing {
    fn is_free(&self) -> bool {
        self.0.is_empty()
    }
}

/// A body already read.
pub(crate) fn bytes_body(bytes: Bytes, pacing: &Pacing) -> Body {
    if pacing.is_free() {
        return Body::from(bytes);
    }
    let chunks: Vec<io::Result<Bytes>> = (0..bytes.len())
        .step_by(THROTTLED_CHUNK)
        .map(|at| Ok(bytes.slice(at..(at + THROTTLED_CHUNK).min(bytes.len()))))
        .collect();
    throttled(futures_util::stream::iter(chunks), pacing.0.clone())
}

/// `count` bytes of `content` from `start`: read at once (on the blocking pool) when
/// small, streamed otherwise.
pub(crate) async fn content_body(
    content: &Content,
    start: u64,
    count: u64,
    pacing: &Pacing,
) -> io::Result<Body> {
    if count <= SMALL_BODY {
        let content = content.clone();
        let bytes = tokio::task::spawn_blocking(move || content.read(start, count))
            .await
            .map_err(io::Error::other)??;
        return Ok(bytes_body(bytes, pacing));
    }
    streamed_body(content, start, count, pacing).await
}

/// `count` bytes of `content` from `start`, streamed.
pub(crate) async fn streamed_body(
    content: &Content,
    start: u64,
    count: u64,
    pacing: &Pacing,
) -> io::Result<Body> {
    if pacing.is_free() {
        let chunks = content.stream(start, count, STREAM_CHUNK).await?;
        return Ok(Body::from_stream(chunks));
    }
    let chunks = content.stream(start, count, THROTTLED_CHUNK).await?;
    Ok(throttled(chunks, pacing.0.clone()))
}
