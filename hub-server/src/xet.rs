//! Xet storage as a client meets it: a file hash, a read token, a reconstruction (the
//! file as terms: ranges of chunks in xorbs) and xorb byte ranges behind signed URLs.
//!
//! Simplified from the real CAS: chunks are a fixed 64 KiB (not content-defined), a xorb
//! holds 1,024 consecutive chunks of one file (no deduplication across files), chunks are
//! stored uncompressed, and the file and xorb hashes are derived from the file's sha256
//! rather than being Merkle hashes of chunk hashes. The serialized chunk format (an 8-byte
//! header: version, compressed length, scheme, uncompressed length) is the real one.

use std::io;

use neuromfa_hub::hashing::hex;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::content::Content;

/// Bytes of file content per chunk.
pub(crate) const CHUNK: u64 = 64 * 1024;
/// Chunks per xorb.
pub(crate) const XORB_CHUNKS: u64 = 1024;
/// The serialized chunk header.
const HEADER: u64 = 8;
/// Chunk headers say "no compression".
const SCHEME_NONE: u8 = 0;

/// The Xet file hash of content with sha256 `sha256`.
pub(crate) fn file_hash(sha256: &str) -> String {
    derived(&["neuromfa xet file", sha256])
}

/// The hash of xorb `index` of the file with Xet hash `file_hash`.
pub(crate) fn xorb_hash(file_hash: &str, index: u64) -> String {
    derived(&["neuromfa xet xorb", file_hash, &index.to_string()])
}

fn derived(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    hex(&h.finalize())
}

/// How a file of `size` bytes is cut into chunks and xorbs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XetLayout {
    pub(crate) size: u64,
    /// Bytes per chunk and chunks per xorb ([`CHUNK`] and [`XORB_CHUNKS`] but in tests).
    chunk: u64,
    xorb_chunks: u64,
}

impl XetLayout {
    pub(crate) fn new(size: u64) -> Self {
        XetLayout {
            size,
            chunk: CHUNK,
            xorb_chunks: XORB_CHUNKS,
        }
    }

    fn chunks(self) -> u64 {
        self.size.div_ceil(self.chunk)
    }

    #[cfg(test)]
    fn xorbs(self) -> u64 {
        self.chunks().div_ceil(self.xorb_chunks)
    }

    fn chunk_len(self, chunk: u64) -> u64 {
        (self.size - chunk * self.chunk).min(self.chunk)
    }

    /// Chunks `[first, end)` of xorb `xorb`, as file chunk numbers.
    fn xorb_chunks(self, xorb: u64) -> (u64, u64) {
        let first = xorb * self.xorb_chunks;
        (first, (first + self.xorb_chunks).min(self.chunks()))
    }

    /// Where local chunk `local` of a xorb starts in the serialized xorb (every chunk
    /// but the file's last is whole, so the ones before it are).
    fn serialized_offset(self, local: u64) -> u64 {
        local * (HEADER + self.chunk)
    }

    /// Bytes of serialized xorb `xorb`.
    pub(crate) fn xorb_len(self, xorb: u64) -> u64 {
        let (first, end) = self.xorb_chunks(xorb);
        (first..end).map(|c| HEADER + self.chunk_len(c)).sum()
    }

    /// The v1 reconstruction of file bytes `[start, end]` (inclusive): terms and fetch
    /// info, the URL of each xorb (by hash and index) given by `url_of`.
    pub(crate) fn reconstruction(
        self,
        file_hash: &str,
        start: u64,
        end: u64,
        mut url_of: impl FnMut(&str, u64) -> String,
    ) -> Value {
        let (first_chunk, last_chunk) = (start / self.chunk, end / self.chunk);
        let mut terms = Vec::new();
        let mut fetch_info = Map::new();
        for xorb in first_chunk / self.xorb_chunks..=last_chunk / self.xorb_chunks {
            let (xorb_first, xorb_end) = self.xorb_chunks(xorb);
            let (from, to) = (first_chunk.max(xorb_first), (last_chunk + 1).min(xorb_end));
            let unpacked: u64 = (from..to).map(|c| self.chunk_len(c)).sum();
            let (local_from, local_to) = (from - xorb_first, to - xorb_first);
            let hash = xorb_hash(file_hash, xorb);
            let serialized_end =
                self.serialized_offset(local_to - 1) + HEADER + self.chunk_len(to - 1);
            terms.push(json!({
                "hash": hash,
                "unpacked_length": unpacked,
                "range": { "start": local_from, "end": local_to },
            }));
            fetch_info.insert(
                hash.clone(),
                json!([{
                    "range": { "start": local_from, "end": local_to },
                    "url": url_of(&hash, xorb),
                    "url_range": {
                        "start": self.serialized_offset(local_from),
                        "end": serialized_end - 1,
                    },
                }]),
            );
        }
        json!({
            "offset_into_first_range": start - first_chunk * self.chunk,
            "terms": terms,
            "fetch_info": fetch_info,
        })
    }

    /// Bytes `[start, start + count)` of serialized xorb `xorb` of `content` (blocking).
    pub(crate) fn read_xorb(
        self,
        content: &Content,
        xorb: u64,
        start: u64,
        count: u64,
    ) -> io::Result<Vec<u8>> {
        let (first, end) = self.xorb_chunks(xorb);
        let stop = start + count;
        let local_first = start / (HEADER + self.chunk);
        let local_last = (stop - 1) / (HEADER + self.chunk);
        let (from, to) = (first + local_first, (first + local_last + 1).min(end));
        // The content under every chunk touched, read at once.
        let data_len: u64 = (from..to).map(|c| self.chunk_len(c)).sum();
        let data = content.read(from * self.chunk, data_len)?;
        let mut out = Vec::with_capacity(count as usize);
        let mut at = self.serialized_offset(local_first);
        let mut data_at = 0usize;
        for chunk in from..to {
            let len = self.chunk_len(chunk);
            let mut piece = Vec::with_capacity((HEADER + len) as usize);
            let len_bytes = (len as u32).to_le_bytes();
            piece.push(0); // version
            piece.extend_from_slice(&len_bytes[..3]);
            piece.push(SCHEME_NONE);
            piece.extend_from_slice(&len_bytes[..3]);
            piece.extend_from_slice(&data[data_at..data_at + len as usize]);
            data_at += len as usize;
            // The part of this chunk's serialized bytes inside [start, stop).
            let lo = start.saturating_sub(at).min(piece.len() as u64) as usize;
            let hi = (stop.saturating_sub(at)).min(piece.len() as u64) as usize;
            out.extend_from_slice(&piece[lo..hi]);
            at += HEADER + len;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reassembles file bytes `[start, end]` from a reconstruction, as a client does.
    fn reassemble(content: &Content, layout: XetLayout, start: u64, end: u64) -> Vec<u8> {
        let file_hash = "f";
        let rec = layout.reconstruction(file_hash, start, end, |h, _| h.to_string());
        let mut out = Vec::new();
        for term in rec["terms"].as_array().unwrap() {
            let hash = term["hash"].as_str().unwrap();
            let info = &rec["fetch_info"][hash][0];
            let xorb = (0..layout.xorbs())
                .find(|&x| xorb_hash(file_hash, x) == hash)
                .unwrap();
            let (a, b) = (
                info["url_range"]["start"].as_u64().unwrap(),
                info["url_range"]["end"].as_u64().unwrap(),
            );
            let mut bytes = layout.read_xorb(content, xorb, a, b - a + 1).unwrap();
            let mut unpacked = Vec::new();
            while !bytes.is_empty() {
                let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], 0]) as usize;
                assert_eq!(bytes[0], 0);
                assert_eq!(bytes[4], SCHEME_NONE);
                assert_eq!(&bytes[1..4], &bytes[5..8]);
                unpacked.extend_from_slice(&bytes[8..8 + len]);
                bytes.drain(..8 + len);
            }
            assert_eq!(
                unpacked.len() as u64,
                term["unpacked_length"].as_u64().unwrap()
            );
            out.extend(unpacked);
        }
        let skip = rec["offset_into_first_range"].as_u64().unwrap() as usize;
        out.drain(..skip);
        out.truncate((end - start + 1) as usize);
        out
    }

    #[test]
    fn reconstructions_reassemble_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Small chunks and xorbs: two xorbs and a short last chunk.
        let (chunk, xorb_chunks) = (1000, 8);
        let size = xorb_chunks * chunk + 3 * chunk + 17;
        let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let content = Content::Disk(path);
        let layout = XetLayout {
            size,
            chunk,
            xorb_chunks,
        };
        assert_eq!(layout.xorbs(), 2);
        assert_eq!(layout.xorb_len(1), 3 * (HEADER + chunk) + HEADER + 17);
        for (start, end) in [
            (0, size - 1),
            (5, 9),
            (chunk - 1, chunk),
            (xorb_chunks * chunk - 3, xorb_chunks * chunk + 2),
            (size - 20, size - 1),
        ] {
            assert_eq!(
                reassemble(&content, layout, start, end),
                &bytes[start as usize..=end as usize],
                "{start}..={end}"
            );
        }
        // Partial xorb ranges (a client's retry) start and end mid-chunk. A 1000-byte
        // chunk's header is [0, e8 03 00, scheme, e8 03 00]; bytes 3..8 are these.
        let part = layout.read_xorb(&content, 0, 3, 10).unwrap();
        assert_eq!(&part[..5], &[0, SCHEME_NONE, 0xe8, 0x03, 0]);
        assert_eq!(&part[5..], &bytes[..5]);
    }
}
