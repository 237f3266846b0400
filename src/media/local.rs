//! Reading files from the local file system without trusting their type or size.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use super::reject::{ImageReject, RejectCode};

/// Opens `path` only if it is a regular file, returning it with its length. Anything else is refused before
/// opening: a FIFO would block the reader forever, a directory reads as an error on some platforms only.
pub(super) fn open_regular(path: &Path) -> Result<(File, u64), ImageReject> {
    let refuse = |err: io::Error| match err.kind() {
        io::ErrorKind::NotFound => ImageReject::new(
            RejectCode::Missing,
            format!("no such file: {}", path.display()),
        ),
        _ => ImageReject::new(
            RejectCode::Unreadable,
            format!("cannot read {}: {err}", path.display()),
        ),
    };
    let metadata = fs::metadata(path).map_err(refuse)?;
    if !metadata.is_file() {
        return Err(ImageReject::new(
            RejectCode::Unreadable,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let file = File::open(path).map_err(refuse)?;
    Ok((file, metadata.len()))
}

/// Reads a whole file of at most `max_bytes`.
pub(super) fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ImageReject> {
    let too_big = |size: u64| {
        ImageReject::new(
            RejectCode::TooManyBytes,
            format!(
                "{} is {size} bytes, over the cap of {max_bytes}",
                path.display()
            ),
        )
    };
    let (file, len) = open_regular(path)?;
    if len > max_bytes {
        return Err(too_big(len));
    }
    let bytes = read_capped(file, len, max_bytes).map_err(|err| {
        ImageReject::new(
            RejectCode::Unreadable,
            format!("cannot read {}: {err}", path.display()),
        )
    })?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads to the end but at most `max_bytes + 1` bytes, so that a size that lies (a growing file, a forged
/// archive header) cannot make us read without bound, while the caller still sees that the cap was passed.
pub(super) fn read_capped(
    reader: impl Read,
    size_hint: u64,
    max_bytes: u64,
) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size_hint.min(max_bytes) as usize);
    reader
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
