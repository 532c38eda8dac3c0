//! The parts of a ZIP archive that reading a `torch.save` file needs: the end-of-central-
//! directory records (ZIP64 included), the central directory, and each entry's local
//! header. Every parser takes a byte slice plus the absolute file offset it starts at, and
//! says which bytes it is missing instead of reading them, so a memory map and a ranged
//! download drive the same code.

use std::collections::HashMap;

use crate::error::TorchError;

/// Bytes from the end of the file a ranged reader should fetch first. The directory of a
/// checkpoint with a few hundred tensors is tens of kilobytes, so one suffix request of this
/// size usually holds every record [`parse_tail`] needs.
pub const TAIL_GUESS: u64 = 64 * 1024;
/// A local header's fixed part; the entry name and an extra field follow it.
pub const LOCAL_HEADER_LEN: usize = 30;
/// Room for the extra field of a local header as torch writes it (ZIP64 sizes and offset,
/// and padding that aligns data to 64 bytes): fetching `LOCAL_HEADER_LEN + name + this`
/// bytes from a header's start covers the whole header in one request.
pub const LOCAL_EXTRA_ALLOWANCE: u64 = 128;

const EOCD_SIGNATURE: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const MAX_COMMENT_LEN: usize = 0xFFFF;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_SIGNATURE: u32 = 0x0606_4b50;
const ZIP64_EOCD_LEN: usize = 56;
const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
const CENTRAL_HEADER_LEN: usize = 46;
const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const FLAG_ENCRYPTED: u16 = 0x0001;
/// The first byte of a pickle stream (`PROTO`): how pre-1.6 `torch.save` files begin.
const PICKLE_PROTO: u8 = 0x80;

/// One file stored in the archive, as the central directory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// 0 is stored; anything else is compressed.
    pub method: u16,
    pub flags: u16,
    pub compressed_size: u64,
    pub size: u64,
    /// Absolute offset of the entry's local header.
    pub local_header_offset: u64,
}

impl Entry {
    /// The bytes to fetch to have the whole entry, header and data, in one request.
    pub fn span(&self) -> std::ops::Range<u64> {
        let header = self.header_span();
        header.start..header.end.saturating_add(self.compressed_size)
    }

    /// The bytes to fetch so that [`CentralDirectory::data_start`] sees the whole local
    /// header of this entry as torch writes it (a longer extra field asks for more).
    pub fn header_span(&self) -> std::ops::Range<u64> {
        let len = LOCAL_HEADER_LEN as u64 + self.name.len() as u64 + LOCAL_EXTRA_ALLOWANCE;
        self.local_header_offset..self.local_header_offset + len
    }

    fn is_stored(&self) -> Result<(), TorchError> {
        if self.flags & FLAG_ENCRYPTED != 0 {
            return Err(TorchError::Encrypted {
                entry: self.name.clone(),
            });
        }
        if self.method != 0 {
            return Err(TorchError::Compressed {
                entry: self.name.clone(),
                method: self.method,
            });
        }
        if self.size != self.compressed_size {
            return Err(TorchError::CorruptZip(format!(
                "entry `{}` is stored, yet {} bytes long unpacked and {} packed",
                self.name, self.size, self.compressed_size
            )));
        }
        Ok(())
    }
}

/// Every entry of an archive, and where their data must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralDirectory {
    pub entries: Vec<Entry>,
    /// Absolute offset of the central directory: entries' data lies before it.
    pub offset: u64,
    /// Each entry's index in `entries` by name: an archive holds a record per tensor
    /// storage, so lookups by name must not scan.
    by_name: HashMap<String, usize>,
}

/// What [`parse_tail`] made of the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    Directory(CentralDirectory),
    /// The records begin before the bytes given: call again with the file from this
    /// absolute offset to its end.
    NeedFrom(u64),
}

/// Where an entry's data begins, from its local header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStart {
    /// Absolute offset of the entry's first data byte.
    At(u64),
    /// The header is longer than the bytes given: call again with this many bytes from
    /// the header's start.
    NeedBytes(u64),
}

/// Little-endian reads from a slice, each checked, so no input can make them panic.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], at: usize) -> Self {
        Cursor { bytes, at }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TorchError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            TorchError::Truncated(format!("a record at byte {} runs past its bytes", self.at))
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, TorchError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, TorchError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, TorchError> {
        let b = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }
}

/// Where the central directory is and how many entries it holds, from the end records.
struct DirectoryBounds {
    offset: u64,
    size: u64,
    entries: u64,
    /// Absolute offset of the first end record: the directory must end before it.
    records_start: u64,
}

/// Parses the end of an archive: `bytes` is the file from absolute offset `start` to its
/// end (`file_len`). Finds the end-of-central-directory record (and the ZIP64 records
/// where present) and parses the central directory, or says from which offset it needs the
/// file instead. A file that begins with a pickle stream (given when `start` is 0) is a
/// legacy `torch.save` file and is refused as such.
pub fn parse_tail(bytes: &[u8], start: u64, file_len: u64) -> Result<Tail, TorchError> {
    if start.checked_add(bytes.len() as u64) != Some(file_len) {
        return Err(TorchError::Truncated(format!(
            "{} bytes from offset {start} do not end at the file's length {file_len}",
            bytes.len()
        )));
    }
    if start == 0 && bytes.first() == Some(&PICKLE_PROTO) {
        return Err(TorchError::Legacy);
    }
    let Some(eocd) = find_eocd(bytes) else {
        let earliest = file_len.saturating_sub((EOCD_LEN + MAX_COMMENT_LEN) as u64);
        if earliest < start {
            return Ok(Tail::NeedFrom(earliest));
        }
        return Err(TorchError::NotZip(
            "no end-of-central-directory record".to_string(),
        ));
    };
    let bounds = match directory_bounds(bytes, start, eocd)? {
        Ok(bounds) => bounds,
        Err(need) => return Ok(Tail::NeedFrom(need)),
    };
    let end = bounds.offset.checked_add(bounds.size);
    if end.is_none_or(|end| end > bounds.records_start) {
        return Err(TorchError::CorruptZip(format!(
            "the central directory ({} bytes at {}) overlaps the end records at {}",
            bounds.size, bounds.offset, bounds.records_start
        )));
    }
    if bounds.offset < start {
        return Ok(Tail::NeedFrom(bounds.offset));
    }
    let from = (bounds.offset - start) as usize;
    let directory = &bytes[from..from + bounds.size as usize];
    let (entries, by_name) = parse_entries(directory, bounds.entries, bounds.offset)?;
    Ok(Tail::Directory(CentralDirectory {
        entries,
        offset: bounds.offset,
        by_name,
    }))
}

/// Position in `bytes` of the end-of-central-directory record: the last signature whose
/// comment length makes the record end exactly at the end of the file.
fn find_eocd(bytes: &[u8]) -> Option<usize> {
    let last = bytes.len().checked_sub(EOCD_LEN)?;
    let first = last.saturating_sub(MAX_COMMENT_LEN);
    (first..=last).rev().find(|&at| {
        let mut c = Cursor::new(bytes, at);
        let signature = c.u32().ok();
        let comment_len = Cursor::new(bytes, at + 20).u16().ok();
        signature == Some(EOCD_SIGNATURE)
            && comment_len.is_some_and(|n| at + EOCD_LEN + n as usize == bytes.len())
    })
}

/// The directory's place and size from the end record at `eocd` (an index into `bytes`),
/// following the ZIP64 locator when there is one; `Err(offset)` when the ZIP64 record
/// lies before `start`.
fn directory_bounds(
    bytes: &[u8],
    start: u64,
    eocd: usize,
) -> Result<Result<DirectoryBounds, u64>, TorchError> {
    let mut c = Cursor::new(bytes, eocd + 4);
    let (disk, directory_disk) = (c.u16()?, c.u16()?);
    let (_entries_here, entries) = (c.u16()?, c.u16()?);
    let (size, offset) = (c.u32()?, c.u32()?);
    let eocd_at = start + eocd as u64;
    if eocd < ZIP64_LOCATOR_LEN && start > 0 {
        // A ZIP64 locator, if there is one, lies before the bytes given.
        return Ok(Err(eocd_at.saturating_sub(ZIP64_LOCATOR_LEN as u64)));
    }
    let locator = eocd
        .checked_sub(ZIP64_LOCATOR_LEN)
        .filter(|&at| Cursor::new(bytes, at).u32().ok() == Some(ZIP64_LOCATOR_SIGNATURE));
    let Some(locator) = locator else {
        if disk != 0 || directory_disk != 0 {
            return Err(TorchError::CorruptZip(
                "a multi-disk archive (split zip)".to_string(),
            ));
        }
        return Ok(Ok(DirectoryBounds {
            offset: u64::from(offset),
            size: u64::from(size),
            entries: u64::from(entries),
            records_start: eocd_at,
        }));
    };
    let record_at = Cursor::new(bytes, locator + 8).u64()?;
    let record_end = record_at.checked_add(ZIP64_EOCD_LEN as u64);
    let locator_at = start + locator as u64;
    if record_end.is_none_or(|end| end > locator_at) {
        return Err(TorchError::CorruptZip(format!(
            "the ZIP64 end record at {record_at} overlaps its locator at {locator_at}"
        )));
    }
    if record_at < start {
        return Ok(Err(record_at));
    }
    let mut c = Cursor::new(bytes, (record_at - start) as usize);
    if c.u32()? != ZIP64_EOCD_SIGNATURE {
        return Err(TorchError::CorruptZip(format!(
            "no ZIP64 end record at {record_at}, where the locator points"
        )));
    }
    let _record_size = c.u64()?;
    let _versions = c.u32()?;
    let (disk, directory_disk) = (c.u32()?, c.u32()?);
    let (_entries_here, entries) = (c.u64()?, c.u64()?);
    let (size, offset) = (c.u64()?, c.u64()?);
    if disk != 0 || directory_disk != 0 {
        return Err(TorchError::CorruptZip(
            "a multi-disk archive (split zip)".to_string(),
        ));
    }
    Ok(Ok(DirectoryBounds {
        offset,
        size,
        entries,
        records_start: record_at,
    }))
}

/// The `count` entries of a central directory that starts at absolute `offset`, and each
/// one's index by name.
fn parse_entries(
    directory: &[u8],
    count: u64,
    offset: u64,
) -> Result<(Vec<Entry>, HashMap<String, usize>), TorchError> {
    // Each entry takes at least a fixed header: a larger count is a corrupt record, and
    // must not size an allocation.
    if count > (directory.len() / CENTRAL_HEADER_LEN) as u64 {
        return Err(TorchError::CorruptZip(format!(
            "{count} entries cannot fit in a {}-byte central directory",
            directory.len()
        )));
    }
    let mut c = Cursor::new(directory, 0);
    let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
    let mut by_name = HashMap::with_capacity(count as usize);
    for index in 0..count {
        let entry = parse_entry(&mut c, index)?;
        if entry.local_header_offset >= offset {
            return Err(TorchError::CorruptZip(format!(
                "entry `{}` starts at {} inside or after the central directory at {offset}",
                entry.name, entry.local_header_offset
            )));
        }
        if by_name.insert(entry.name.clone(), entries.len()).is_some() {
            return Err(TorchError::CorruptZip(format!(
                "entry `{}` appears twice",
                entry.name
            )));
        }
        entries.push(entry);
    }
    Ok((entries, by_name))
}

/// One central-directory header at the cursor.
fn parse_entry(c: &mut Cursor<'_>, index: u64) -> Result<Entry, TorchError> {
    let at = c.at;
    if c.u32()? != CENTRAL_HEADER_SIGNATURE {
        return Err(TorchError::CorruptZip(format!(
            "central directory entry {index} (byte {at} of the directory) has no signature"
        )));
    }
    let _versions = c.u32()?;
    let flags = c.u16()?;
    let method = c.u16()?;
    let _time_date_crc = c.take(8)?;
    let compressed_size = c.u32()?;
    let size = c.u32()?;
    let (name_len, extra_len, comment_len) = (c.u16()?, c.u16()?, c.u16()?);
    let _disk_attributes = c.take(8)?;
    let local_header_offset = c.u32()?;
    let name = std::str::from_utf8(c.take(name_len.into())?)
        .map_err(|_| TorchError::CorruptZip(format!("entry {index} has a name that is not UTF-8")))?
        .to_string();
    let extra = c.take(extra_len.into())?;
    c.take(comment_len.into())?;
    let mut entry = Entry {
        name,
        method,
        flags,
        compressed_size: compressed_size.into(),
        size: size.into(),
        local_header_offset: local_header_offset.into(),
    };
    apply_zip64_extra(&mut entry, extra)?;
    Ok(entry)
}

/// Replaces the 32-bit fields an entry marks as 0xFFFFFFFF with their 64-bit values from
/// its ZIP64 extra field, which holds exactly those, in this order.
fn apply_zip64_extra(entry: &mut Entry, extra: &[u8]) -> Result<(), TorchError> {
    const MARK: u64 = 0xFFFF_FFFF;
    let wanted = [entry.size, entry.compressed_size, entry.local_header_offset]
        .iter()
        .filter(|&&v| v == MARK)
        .count();
    if wanted == 0 {
        return Ok(());
    }
    let name = entry.name.clone();
    let mut c = Cursor::new(extra, 0);
    while c.at + 4 <= extra.len() {
        let (id, len) = (c.u16()?, c.u16()?);
        let field = c.take(len.into())?;
        if id != ZIP64_EXTRA_ID {
            continue;
        }
        let mut f = Cursor::new(field, 0);
        let missing = || {
            TorchError::CorruptZip(format!(
                "entry `{name}`: its ZIP64 extra field lacks a size or offset"
            ))
        };
        for value in [
            &mut entry.size,
            &mut entry.compressed_size,
            &mut entry.local_header_offset,
        ] {
            if *value == MARK {
                *value = f.u64().map_err(|_| missing())?;
            }
        }
        return Ok(());
    }
    Err(TorchError::CorruptZip(format!(
        "entry `{name}` marks sizes or offset as ZIP64 but has no ZIP64 extra field"
    )))
}

/// An entry's data, from bytes that begin at its local header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryData<'a> {
    Bytes(&'a [u8]),
    /// Call again with this many bytes from the local header's start.
    NeedBytes(u64),
}

impl CentralDirectory {
    /// The entry named `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Where `entry`'s data begins, from `header`: the file's bytes from the entry's
    /// local header on (at least [`LOCAL_HEADER_LEN`], ideally [`Entry::header_span`]).
    /// Refuses compressed and encrypted entries, headers that do not match the directory,
    /// and data that would run into the directory.
    pub fn data_start(&self, entry: &Entry, header: &[u8]) -> Result<DataStart, TorchError> {
        entry.is_stored()?;
        if header.len() < LOCAL_HEADER_LEN {
            return Ok(DataStart::NeedBytes(LOCAL_HEADER_LEN as u64));
        }
        let mut c = Cursor::new(header, 0);
        let corrupt = |what: &str| {
            TorchError::CorruptZip(format!(
                "entry `{}`: the local header at {} {what}",
                entry.name, entry.local_header_offset
            ))
        };
        if c.u32()? != LOCAL_HEADER_SIGNATURE {
            return Err(corrupt("has no signature"));
        }
        let _version_flags = c.u32()?;
        if c.u16()? != entry.method {
            return Err(corrupt(
                "names another compression method than the directory",
            ));
        }
        let _time_date_crc_sizes = c.take(16)?;
        let (name_len, extra_len) = (usize::from(c.u16()?), usize::from(c.u16()?));
        let header_len = LOCAL_HEADER_LEN + name_len + extra_len;
        if header.len() < header_len {
            return Ok(DataStart::NeedBytes(header_len as u64));
        }
        if c.take(name_len)? != entry.name.as_bytes() {
            return Err(corrupt("names another entry"));
        }
        let start = entry.local_header_offset + header_len as u64;
        if start
            .checked_add(entry.compressed_size)
            .is_none_or(|end| end > self.offset)
        {
            return Err(TorchError::CorruptZip(format!(
                "entry `{}` ({} bytes from {start}) runs into the central directory at {}",
                entry.name, entry.compressed_size, self.offset
            )));
        }
        Ok(DataStart::At(start))
    }

    /// The data of `entry` from `bytes`, the file from the entry's local header on (ideally
    /// [`Entry::span`]).
    pub fn entry_data<'a>(
        &self,
        entry: &Entry,
        bytes: &'a [u8],
    ) -> Result<EntryData<'a>, TorchError> {
        let start = match self.data_start(entry, bytes)? {
            DataStart::At(start) => start - entry.local_header_offset,
            DataStart::NeedBytes(n) => return Ok(EntryData::NeedBytes(n)),
        };
        let end = start + entry.compressed_size;
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) if e <= bytes.len() => Ok(EntryData::Bytes(&bytes[s..e])),
            _ => Ok(EntryData::NeedBytes(end)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive holding `a/data.pkl` (stored), with a comment after its end record.
    fn archive(comment: &[u8]) -> (Vec<u8>, u64) {
        let (name, data) = (b"a/data.pkl", b"payload");
        let mut out = Vec::new();
        out.extend(LOCAL_HEADER_SIGNATURE.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name);
        out.extend(data);
        let directory_at = out.len() as u64;
        out.extend(CENTRAL_HEADER_SIGNATURE.to_le_bytes());
        out.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend([0; 12]);
        out.extend(0u32.to_le_bytes());
        out.extend(name);
        let directory_len = out.len() as u64 - directory_at;
        out.extend(EOCD_SIGNATURE.to_le_bytes());
        out.extend([0, 0, 0, 0, 1, 0, 1, 0]);
        out.extend((directory_len as u32).to_le_bytes());
        out.extend((directory_at as u32).to_le_bytes());
        out.extend((comment.len() as u16).to_le_bytes());
        out.extend(comment);
        (out, directory_at)
    }

    #[test]
    fn the_directory_is_found_behind_a_comment_and_asked_for_when_not_given() {
        let (bytes, directory_at) = archive(b"a comment");
        let len = bytes.len() as u64;
        let Ok(Tail::Directory(directory)) = parse_tail(&bytes, 0, len) else {
            panic!("a whole archive holds its directory")
        };
        assert_eq!(directory.offset, directory_at);
        let entry = &directory.entries[0];
        assert_eq!((entry.name.as_str(), entry.size), ("a/data.pkl", 7));
        let Ok(EntryData::Bytes(data)) = directory.entry_data(entry, &bytes) else {
            panic!("the data follows the header")
        };
        assert_eq!(data, b"payload");
        let from = directory_at as usize + 4;
        assert_eq!(
            parse_tail(&bytes[from..], from as u64, len),
            Ok(Tail::NeedFrom(directory_at))
        );
    }

    #[test]
    fn bytes_that_are_no_zip_tail_are_refused() {
        let (bytes, directory_at) = archive(b"");
        let len = bytes.len() as u64;
        assert!(matches!(
            parse_tail(&bytes[1..], 0, len),
            Err(TorchError::Truncated(_))
        ));
        assert_eq!(parse_tail(&[0x80, 2, b'.'], 0, 3), Err(TorchError::Legacy));
        assert!(matches!(
            parse_tail(&[0; 100], 0, 100),
            Err(TorchError::NotZip(_))
        ));
        let mut compressed = bytes.clone();
        // The directory entry's method field.
        compressed[directory_at as usize + 10] = 8;
        let Ok(Tail::Directory(directory)) = parse_tail(&compressed, 0, len) else {
            panic!("the directory itself is intact")
        };
        assert_eq!(
            directory.data_start(&directory.entries[0], &compressed),
            Err(TorchError::Compressed {
                entry: "a/data.pkl".into(),
                method: 8
            })
        );
    }
}
