//! Reading image members out of zip and tar archives.
//!
//! Requests are grouped by archive so that each archive is opened once per call: a zip's central directory is
//! parsed once and a plain tar's headers are scanned once into a name -> (offset, size) index, after which members
//! are read by position from any number of threads. A gzip-compressed tar cannot be read by position, so it gets
//! one sequential pass that keeps only the members asked for.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use rayon::prelude::*;
use zip::result::ZipError;
use zip::ZipArchive;

use super::local::{open_regular, read_capped};
use super::reject::{ImageReject, RejectCode};

/// A member's contents, or why they could not be read.
pub type MemberBytes = Result<Vec<u8>, ImageReject>;

/// The archive formats a reference may point into, told apart by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    Zip,
    Tar,
    TarGz,
}

impl ArchiveKind {
    pub fn from_file_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".zip") {
            Some(ArchiveKind::Zip)
        } else if lower.ends_with(".tar") {
            Some(ArchiveKind::Tar)
        } else if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(ArchiveKind::TarGz)
        } else {
            None
        }
    }
}

/// One member to read: the archive's resolved path, its kind, and the member name inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveMember {
    pub archive: PathBuf,
    pub kind: ArchiveKind,
    pub member: String,
}

/// Reads every requested member, in request order, refusing any larger than `max_bytes`.
///
/// Runs on the current rayon pool: archives in parallel, and members of a random-access archive in parallel too.
pub fn read_members(requests: &[ArchiveMember], max_bytes: u64) -> Vec<MemberBytes> {
    let mut groups: HashMap<(&Path, ArchiveKind), Vec<usize>> = HashMap::new();
    for (index, request) in requests.iter().enumerate() {
        groups
            .entry((request.archive.as_path(), request.kind))
            .or_default()
            .push(index);
    }
    let mut read: Vec<(usize, MemberBytes)> = groups
        .into_par_iter()
        .flat_map_iter(|((archive, kind), indices)| {
            let members: Vec<&str> = indices
                .iter()
                .map(|&i| member_key(&requests[i].member))
                .collect();
            let bytes = read_group(archive, kind, &members, max_bytes);
            indices.into_iter().zip(bytes)
        })
        .collect();
    // Every request index sits in exactly one group, so sorting restores request order one to one.
    read.sort_unstable_by_key(|(index, _)| *index);
    read.into_iter().map(|(_, result)| result).collect()
}

/// Reads `members` (already normalised) from one archive, in order.
fn read_group(
    archive: &Path,
    kind: ArchiveKind,
    members: &[&str],
    max_bytes: u64,
) -> Vec<MemberBytes> {
    match kind {
        ArchiveKind::Zip => match open_zip(archive) {
            Ok(zip) => members
                .par_iter()
                .map(|m| read_zip_member(archive, &zip, m, max_bytes))
                .collect(),
            Err(reject) => vec![Err(reject); members.len()],
        },
        ArchiveKind::Tar => match TarIndex::scan(archive) {
            Ok(index) => members
                .par_iter()
                .map(|m| index.read(m, max_bytes))
                .collect(),
            Err(reject) => vec![Err(reject); members.len()],
        },
        ArchiveKind::TarGz => extract_compressed(archive, members, max_bytes),
    }
}

/// Tar writers prefix names with `./` or `/` inconsistently; a reference means the same member either way.
fn member_key(name: &str) -> &str {
    let mut key = name;
    loop {
        let trimmed = key.trim_start_matches('/');
        let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
        if trimmed.len() == key.len() {
            return key;
        }
        key = trimmed;
    }
}

fn damaged(archive: &Path, err: impl std::fmt::Display) -> ImageReject {
    ImageReject::new(
        RejectCode::Unreadable,
        format!("archive {} is damaged: {err}", archive.display()),
    )
}

/// A member that is not in the index: missing, or perhaps in a part of the archive that could not be read.
fn not_found(archive: &Path, member: &str, damage: Option<&str>) -> ImageReject {
    match damage {
        Some(err) => damaged(
            archive,
            format!("member '{member}' not found before the damage: {err}"),
        ),
        None => member_missing(archive, member),
    }
}

fn member_missing(archive: &Path, member: &str) -> ImageReject {
    ImageReject::new(
        RejectCode::ArchiveMemberMissing,
        format!(
            "archive {} has no file member '{member}'",
            archive.display()
        ),
    )
}

fn member_too_big(archive: &Path, member: &str, size: u64, max_bytes: u64) -> ImageReject {
    ImageReject::new(
        RejectCode::TooManyBytes,
        format!(
            "member '{member}' of {} is {size} bytes, over the cap of {max_bytes}",
            archive.display()
        ),
    )
}

fn open_zip(archive: &Path) -> Result<ZipArchive<SharedFile>, ImageReject> {
    let file = SharedFile::new(open_regular(archive)?);
    ZipArchive::new(file).map_err(|err| damaged(archive, err))
}

fn read_zip_member(
    archive: &Path,
    zip: &ZipArchive<SharedFile>,
    member: &str,
    max_bytes: u64,
) -> MemberBytes {
    // Cloning shares the parsed central directory and only copies the file handle's position.
    let mut zip = zip.clone();
    let entry = match zip.by_name(member) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Err(member_missing(archive, member)),
        Err(err) => return Err(damaged(archive, format!("member '{member}': {err}"))),
    };
    if !entry.is_file() {
        return Err(member_missing(archive, member));
    }
    let size = entry.size();
    if size > max_bytes {
        return Err(member_too_big(archive, member, size, max_bytes));
    }
    let bytes = read_capped(entry, size, max_bytes)
        .map_err(|err| damaged(archive, format!("member '{member}': {err}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(member_too_big(
            archive,
            member,
            bytes.len() as u64,
            max_bytes,
        ));
    }
    Ok(bytes)
}

/// A plain tar's regular-file members by name, found by one pass over the headers.
struct TarIndex<'a> {
    archive: &'a Path,
    file: SharedFile,
    /// Member name -> (offset of the data, size). A name stored twice resolves to the later copy, as when
    /// extracting with tar.
    members: HashMap<String, (u64, u64)>,
    /// Why the scan stopped early, if it did: a member not found may then be in the unreadable part.
    damage: Option<String>,
}

impl<'a> TarIndex<'a> {
    fn scan(archive: &'a Path) -> Result<Self, ImageReject> {
        let file = SharedFile::new(open_regular(archive)?);
        let mut members = HashMap::new();
        let mut damage = None;
        let mut tar = tar::Archive::new(file.clone());
        let entries = tar
            .entries_with_seek()
            .map_err(|err| damaged(archive, err))?;
        for entry in entries {
            match entry {
                Ok(entry) if entry.header().entry_type().is_file() => {
                    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                    members.insert(
                        member_key(&name).to_string(),
                        (entry.raw_file_position(), entry.size()),
                    );
                }
                Ok(_) => {}
                Err(err) => {
                    damage = Some(err.to_string());
                    break;
                }
            }
        }
        Ok(TarIndex {
            archive,
            file,
            members,
            damage,
        })
    }

    fn read(&self, member: &str, max_bytes: u64) -> MemberBytes {
        let Some(&(offset, size)) = self.members.get(member) else {
            return Err(not_found(self.archive, member, self.damage.as_deref()));
        };
        if size > max_bytes {
            return Err(member_too_big(self.archive, member, size, max_bytes));
        }
        // Headers are seeked past, not read through, so a tar cut short still indexes members it lacks the data of.
        if offset.saturating_add(size) > self.file.len {
            return Err(ImageReject::new(
                RejectCode::Truncated,
                format!(
                    "archive {} ends at byte {} inside member '{member}' ({size} bytes at offset {offset})",
                    self.archive.display(),
                    self.file.len
                ),
            ));
        }
        let mut bytes = vec![0; size as usize];
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(|err| damaged(self.archive, format!("member '{member}': {err}")))?;
        Ok(bytes)
    }
}

/// One sequential pass over a gzip-compressed tar, keeping only the wanted members, returned in `members` order.
fn extract_compressed(archive: &Path, members: &[&str], max_bytes: u64) -> Vec<MemberBytes> {
    let file = match open_regular(archive) {
        Ok((file, _)) => file,
        Err(reject) => return vec![Err(reject); members.len()],
    };
    let wanted: HashSet<&str> = members.iter().copied().collect();
    let mut found: HashMap<String, MemberBytes> = HashMap::new();
    let mut tar = tar::Archive::new(MultiGzDecoder::new(BufReader::new(file)));
    let damage = tar.entries().and_then(|entries| {
        for entry in entries {
            if let Some((name, bytes)) = extract_wanted(archive, entry?, &wanted, max_bytes)? {
                found.insert(name, bytes);
            }
        }
        Ok(())
    });
    let damage = damage.err().map(|err| err.to_string());
    members
        .iter()
        .map(|member| match found.get(*member) {
            Some(result) => result.clone(),
            None => Err(not_found(archive, member, damage.as_deref())),
        })
        .collect()
}

/// The name and contents of `entry` if it is a wanted regular file; an I/O error means the stream is broken.
fn extract_wanted(
    archive: &Path,
    entry: tar::Entry<'_, impl Read>,
    wanted: &HashSet<&str>,
    max_bytes: u64,
) -> io::Result<Option<(String, MemberBytes)>> {
    if !entry.header().entry_type().is_file() {
        return Ok(None);
    }
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let key = member_key(&name);
    if !wanted.contains(key) {
        return Ok(None);
    }
    let size = entry.size();
    let bytes = if size > max_bytes {
        Err(member_too_big(archive, key, size, max_bytes))
    } else {
        Ok(read_capped(entry, size, max_bytes)?)
    };
    Ok(Some((key.to_string(), bytes)))
}

/// A file handle that many readers share, each with its own position, reading with positional I/O so that no
/// reader disturbs another's offset and no lock is held across reads.
#[derive(Clone)]
struct SharedFile {
    file: Arc<File>,
    len: u64,
    position: u64,
}

impl SharedFile {
    fn new((file, len): (File, u64)) -> Self {
        SharedFile {
            file: Arc::new(file),
            len,
            position: 0,
        }
    }

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match read_at(&self.file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_at(&self.file, buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for SharedFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before start of file")
        })?;
        Ok(self.position)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}
