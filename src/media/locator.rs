//! Turning an image reference string from a dataset row into a place to read bytes from.
//!
//! Three shapes are accepted:
//! - a path, relative to the dataset root or absolute inside it: `images/cat.png`;
//! - a member of a zip or tar archive: `shards/part-0.tar!/images/cat.png` (the archive path follows the path rule,
//!   the member is looked up by name inside it);
//! - an http(s) URL, recognised by a `scheme://` prefix.
//!
//! Paths are confined to the root twice: lexically (so that `../x` is refused even when `x` does not exist) and
//! after resolving symlinks (so that a link inside the root cannot point the reader elsewhere).

use std::io;
use std::path::{Component, Path, PathBuf};

use reqwest::Url;

use super::archive::{ArchiveKind, ArchiveMember};
use super::reject::{ImageReject, RejectCode};

/// Separates an archive path from the member name inside it.
const MEMBER_SEPARATOR: &str = "!/";

/// Where the bytes of one image live, after validation of the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// A regular file, as a canonical path inside the root.
    File(PathBuf),
    /// A member of an archive whose canonical path is inside the root.
    Member(ArchiveMember),
    /// An http or https URL.
    Url(Url),
}

/// The directory that every local reference must stay inside.
#[derive(Debug, Clone)]
pub struct DatasetRoot {
    /// Symlink-free form, compared against canonicalised references.
    canonical: PathBuf,
    /// The root as the user wrote it (made absolute), so absolute references spelled through it are recognised.
    spelled: PathBuf,
}

impl DatasetRoot {
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(DatasetRoot {
            canonical: root.canonicalize()?,
            spelled: std::path::absolute(root)?,
        })
    }

    /// The root with symlinks resolved.
    pub fn path(&self) -> &Path {
        &self.canonical
    }

    pub fn locate(&self, reference: &str) -> Result<Locator, ImageReject> {
        if reference.trim().is_empty() {
            return Err(ImageReject::new(
                RejectCode::BadReference,
                "empty image reference",
            ));
        }
        if let Some(scheme) = url_scheme(reference) {
            return parse_url(reference, scheme);
        }
        match split_member(reference) {
            Some((_, _, member)) if member.trim_matches('/').is_empty() => Err(ImageReject::new(
                RejectCode::BadReference,
                "archive reference names no member after '!/'",
            )),
            Some((archive, kind, member)) => Ok(Locator::Member(ArchiveMember {
                archive: self.resolve(archive)?,
                kind,
                member: member.to_string(),
            })),
            None => Ok(Locator::File(self.resolve(reference)?)),
        }
    }

    /// Resolves a path reference to its canonical form, refusing anything outside the root.
    fn resolve(&self, reference: &str) -> Result<PathBuf, ImageReject> {
        if reference.contains('\0') {
            return Err(ImageReject::new(
                RejectCode::BadReference,
                "path contains a NUL byte",
            ));
        }
        let joined = self.canonical.join(reference);
        let lexical = normalize_lexically(&joined);
        if !lexical.starts_with(&self.canonical) && !lexical.starts_with(&self.spelled) {
            return Err(ImageReject::new(
                RejectCode::PathEscapesRoot,
                format!(
                    "path resolves to {}, outside the dataset root {}",
                    lexical.display(),
                    self.canonical.display()
                ),
            ));
        }
        let resolved = joined.canonicalize().map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => ImageReject::new(
                RejectCode::Missing,
                format!("no such file: {}", joined.display()),
            ),
            _ => ImageReject::new(
                RejectCode::Unreadable,
                format!("cannot resolve {}: {err}", joined.display()),
            ),
        })?;
        if !resolved.starts_with(&self.canonical) {
            return Err(ImageReject::new(
                RejectCode::PathEscapesRoot,
                format!(
                    "path resolves through a symlink to {}, outside the dataset root {}",
                    resolved.display(),
                    self.canonical.display()
                ),
            ));
        }
        Ok(resolved)
    }
}

/// The scheme of a `scheme://...` reference. Only this shape counts as a URL: a local file name may contain a
/// colon, but not followed by two slashes after a scheme-like prefix.
fn url_scheme(reference: &str) -> Option<&str> {
    let (scheme, _) = reference.split_once("://")?;
    let mut chars = scheme.chars();
    let starts_alpha = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_valid = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (starts_alpha && rest_valid).then_some(scheme)
}

fn parse_url(reference: &str, scheme: &str) -> Result<Locator, ImageReject> {
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(ImageReject::new(
            RejectCode::UnsupportedScheme,
            format!("URL scheme '{scheme}' is not allowed, only http and https"),
        ));
    }
    Url::parse(reference)
        .map(Locator::Url)
        .map_err(|err| ImageReject::new(RejectCode::BadReference, format!("invalid URL: {err}")))
}

/// Splits `archive!/member` at the first separator whose left side names a known archive type. A `!/` after any
/// other name is an ordinary part of a path.
fn split_member(reference: &str) -> Option<(&str, ArchiveKind, &str)> {
    reference
        .match_indices(MEMBER_SEPARATOR)
        .find_map(|(at, _)| {
            let archive = &reference[..at];
            ArchiveKind::from_file_name(archive)
                .map(|kind| (archive, kind, &reference[at + MEMBER_SEPARATOR.len()..]))
        })
}

/// Applies `.` and `..` without touching the file system, the way the reference reads to a person.
fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
