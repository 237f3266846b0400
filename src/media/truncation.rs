//! Telling a truncated image from a corrupt one by walking the container structure.
//!
//! Decoders report a file that stops early in different ways (an I/O error, a "corrupt bitstream", or, for JPEG,
//! no error at all: the missing rows are filled in). A download cut short or a partial copy is the most common
//! damage in practice and the one a rerun can fix, so it gets its own reject code, decided here from the structure
//! each format declares rather than from decoder messages. The walks only look for the declared end; anything else
//! odd is left for the decoder to judge.

use super::validate::Format;

/// Where the data stops short of what the format declares, or `None` if the declared end is present.
pub fn find_truncation(format: Format, bytes: &[u8]) -> Option<String> {
    match format {
        Format::Png => png(bytes),
        Format::Jpeg => jpeg(bytes),
        Format::Gif => gif(bytes),
        Format::WebP => webp(bytes),
        // BMP declares no end marker; its decoder reports a short pixel array as an end-of-file I/O error.
        Format::Bmp => None,
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// PNG: chunks (length, type, data, CRC) follow the 8-byte signature until the IEND chunk.
fn png(bytes: &[u8]) -> Option<String> {
    let mut at = 8;
    loop {
        let Some(length) = be_u32(bytes, at) else {
            return Some(format!(
                "PNG data ends at byte {} before the IEND chunk",
                bytes.len()
            ));
        };
        let kind = bytes.get(at + 4..at + 8).map(String::from_utf8_lossy);
        let end = at as u64 + 12 + u64::from(length);
        if end > bytes.len() as u64 {
            let kind = kind.unwrap_or_default();
            return Some(format!(
                "PNG chunk '{kind}' at byte {at} needs {length} data bytes but the file ends at byte {}",
                bytes.len()
            ));
        }
        if kind.as_deref() == Some("IEND") {
            return None;
        }
        at = end as usize;
    }
}

/// JPEG: marker segments up to each start-of-scan, entropy-coded data after it, and the end-of-image marker.
/// Walking the structure (instead of searching for the last end marker) tolerates data appended after the image,
/// such as the video of a motion photo.
fn jpeg(bytes: &[u8]) -> Option<String> {
    const END_OF_IMAGE: u8 = 0xD9;
    const START_OF_SCAN: u8 = 0xDA;
    let short = || {
        Some(format!(
            "JPEG data ends at byte {} before the end-of-image marker",
            bytes.len()
        ))
    };
    let mut at = 2;
    loop {
        match bytes.get(at) {
            None => return short(),
            Some(0xFF) => {}
            // Not a marker where one must be: damage the decoder will describe better.
            Some(_) => return None,
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = bytes.get(at) else {
            return short();
        };
        at += 1;
        match marker {
            END_OF_IMAGE => return None,
            // Standalone markers: restart intervals, TEM.
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let Some(length) = bytes
            .get(at..at + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return short();
        };
        at += length;
        if at > bytes.len() {
            return short();
        }
        if marker == START_OF_SCAN {
            match next_marker_after_scan(bytes, at) {
                Some(next) => at = next,
                None => return short(),
            }
        }
    }
}

/// In entropy-coded data a 0xFF byte is followed by 0x00 (stuffing) or a restart marker; anything else is the
/// next marker segment.
fn next_marker_after_scan(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        at += bytes.get(at..)?.iter().position(|&b| b == 0xFF)?;
        match bytes.get(at + 1) {
            Some(0x00) | Some(0xD0..=0xD7) | Some(0xFF) => at += 1,
            Some(_) => return Some(at),
            None => return None,
        }
    }
}

/// GIF: a header, an optional global colour table, then extension and image blocks (each made of length-prefixed
/// sub-blocks) until the trailer byte. Walking every block also catches damage in later frames, which decoding the
/// first frame would not see.
fn gif(bytes: &[u8]) -> Option<String> {
    const EXTENSION: u8 = 0x21;
    const IMAGE: u8 = 0x2C;
    const TRAILER: u8 = 0x3B;
    let short = || {
        Some(format!(
            "GIF data ends at byte {} before the trailer",
            bytes.len()
        ))
    };
    let Some(&screen_flags) = bytes.get(10) else {
        return short();
    };
    let mut at = 13 + colour_table_len(screen_flags);
    loop {
        let Some(&block) = bytes.get(at) else {
            return short();
        };
        let next = match block {
            TRAILER => return None,
            // Introducer and label, then sub-blocks.
            EXTENSION => skip_sub_blocks(bytes, at + 2),
            // Descriptor, local colour table, LZW minimum code size, then sub-blocks.
            IMAGE => bytes
                .get(at + 9)
                .and_then(|&flags| skip_sub_blocks(bytes, at + 10 + colour_table_len(flags) + 1)),
            _ => return None,
        };
        match next {
            Some(next) => at = next,
            None => return short(),
        }
    }
}

/// The size of the colour table that a GIF flags byte announces (bit 7: present, bits 0-2: size exponent).
fn colour_table_len(flags: u8) -> usize {
    if flags & 0x80 == 0 {
        0
    } else {
        3 << ((flags & 0x07) + 1)
    }
}

/// Skips length-prefixed sub-blocks up to and including the zero-length terminator; `None` if the data ends first.
fn skip_sub_blocks(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let length = usize::from(*bytes.get(at)?);
        at += 1;
        if length == 0 {
            return Some(at);
        }
        at += length;
    }
}

/// WebP: a RIFF container whose header declares the size of everything after its first 8 bytes.
fn webp(bytes: &[u8]) -> Option<String> {
    let Some(declared) = le_u32(bytes, 4) else {
        return Some(format!(
            "WebP data ends at byte {} inside the RIFF header",
            bytes.len()
        ));
    };
    let expected = 8 + u64::from(declared);
    (expected > bytes.len() as u64).then(|| {
        format!(
            "WebP RIFF header declares {expected} bytes but the file has {}",
            bytes.len()
        )
    })
}
