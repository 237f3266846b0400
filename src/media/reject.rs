//! Why an image reference could not become an image record.
//!
//! Ingest writes `code` and `detail` into its rejects dataset, so the code strings are a stable contract (they are
//! grouped and counted downstream) and the detail must let a person find the file and the cause without rerunning.

use std::fmt;

/// The reason class of a reject; [`RejectCode::as_str`] is the stable snake_case name written to datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectCode {
    /// The reference string cannot be parsed (empty, invalid URL, malformed archive member syntax).
    BadReference,
    /// A URL with a scheme other than http or https.
    UnsupportedScheme,
    /// A path that leaves the dataset root lexically (`..`, absolute elsewhere) or through a symlink.
    PathEscapesRoot,
    /// The file does not exist.
    Missing,
    /// The file or archive exists but cannot be read (permissions, not a regular file, damaged archive).
    Unreadable,
    /// The archive exists but has no regular file member of that name.
    ArchiveMemberMissing,
    /// More bytes than the configured cap, for a file, an archive member or a download.
    TooManyBytes,
    /// The bytes are not any image format we recognise.
    NotAnImage,
    /// A recognised image format that umrank does not decode.
    UnsupportedFormat,
    /// The image data stops before its format says it ends.
    Truncated,
    /// The image data is complete but does not decode.
    Corrupt,
    /// The header declares a width or height of zero.
    ZeroSize,
    /// The header declares more pixels than the cap (decompression-bomb guard).
    TooManyPixels,
    /// The server could not be reached or the transfer broke off.
    FetchFailed,
    /// The server answered with a non-success HTTP status.
    HttpStatus,
    /// Connecting or the whole request took longer than configured.
    Timeout,
}

impl RejectCode {
    /// Every code, for documentation and schema checks.
    pub const ALL: [RejectCode; 16] = [
        RejectCode::BadReference,
        RejectCode::UnsupportedScheme,
        RejectCode::PathEscapesRoot,
        RejectCode::Missing,
        RejectCode::Unreadable,
        RejectCode::ArchiveMemberMissing,
        RejectCode::TooManyBytes,
        RejectCode::NotAnImage,
        RejectCode::UnsupportedFormat,
        RejectCode::Truncated,
        RejectCode::Corrupt,
        RejectCode::ZeroSize,
        RejectCode::TooManyPixels,
        RejectCode::FetchFailed,
        RejectCode::HttpStatus,
        RejectCode::Timeout,
    ];

    /// The stable name stored in rejects datasets.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::BadReference => "bad_reference",
            RejectCode::UnsupportedScheme => "unsupported_scheme",
            RejectCode::PathEscapesRoot => "path_escapes_root",
            RejectCode::Missing => "missing",
            RejectCode::Unreadable => "unreadable",
            RejectCode::ArchiveMemberMissing => "archive_member_missing",
            RejectCode::TooManyBytes => "too_many_bytes",
            RejectCode::NotAnImage => "not_an_image",
            RejectCode::UnsupportedFormat => "unsupported_format",
            RejectCode::Truncated => "truncated",
            RejectCode::Corrupt => "corrupt",
            RejectCode::ZeroSize => "zero_size",
            RejectCode::TooManyPixels => "too_many_pixels",
            RejectCode::FetchFailed => "fetch_failed",
            RejectCode::HttpStatus => "http_status",
            RejectCode::Timeout => "timeout",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One image reference that could not be used, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ImageReject {
    pub code: RejectCode,
    pub detail: String,
}

impl ImageReject {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        ImageReject {
            code,
            detail: detail.into(),
        }
    }

    /// Prefixes the detail with the reference the caller was loading, so that causes found deep in a reader
    /// still name the path or URL they belong to.
    pub fn for_reference(self, reference: &str) -> Self {
        ImageReject {
            code: self.code,
            detail: format!("{reference}: {}", self.detail),
        }
    }
}
