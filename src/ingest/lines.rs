//! Line-oriented input files, read with their line numbers so every reject can point at its line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::IngestError;

/// One line of a text file: its 1-based number and its text, or the reason it is not text.
pub struct Line {
    pub number: u64,
    pub text: Result<String, String>,
}

/// The UTF-8 byte-order mark some editors (and Windows tools) put at the start of a text file.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Reads `path` line by line. A byte-order mark at the start of the file is the encoding mark it is, not part of
/// the first record. Blank lines are skipped (they are not records); a line that is not UTF-8 is returned as an
/// error for the caller to reject, and the rest of the file is still read.
pub fn read_lines(path: &Path) -> Result<Vec<Line>, IngestError> {
    let file = File::open(path).map_err(IngestError::io(path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(IngestError::io(path))?;
        if n == 0 {
            break;
        }
        number += 1;
        if number == 1 && buf.starts_with(BOM) {
            buf.drain(..BOM.len());
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text =
            String::from_utf8(std::mem::take(&mut buf)).map_err(|e| format!("not UTF-8: {e}"));
        lines.push(Line { number, text });
    }
    Ok(lines)
}
