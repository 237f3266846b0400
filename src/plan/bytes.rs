//! Byte sizes as people write them (`80GiB`, `80 GB`, `512MiB`, `1.5TB`, a plain number of bytes) and as the plan
//! prints them.

/// The units a size may carry: binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB), any case.
const UNITS: [(&str, f64); 9] = [
    ("kib", 1024.0),
    ("mib", 1024.0 * 1024.0),
    ("gib", 1024.0 * 1024.0 * 1024.0),
    ("tib", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("kb", 1e3),
    ("mb", 1e6),
    ("gb", 1e9),
    ("tb", 1e12),
    ("b", 1.0),
];

/// Parses a size: a number, optionally followed by a unit.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, scale) = UNITS
        .iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n.trim(), *scale)))
        .unwrap_or((lower.as_str(), 1.0));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 80GiB, 512MiB, 1e9)"))?;
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 0.0) {
        return Err(format!("`{text}` is not a size of zero or more bytes"));
    }
    Ok(bytes.round() as u64)
}

/// A size in the largest binary unit that keeps it at 1 or more, with one decimal.
pub fn format_bytes(bytes: u64) -> String {
    const NAMES: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < NAMES.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", NAMES[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_bytes("80GiB").unwrap(), 80 << 30);
        assert_eq!(parse_bytes("80 gib").unwrap(), 80 << 30);
        assert_eq!(parse_bytes("80GB").unwrap(), 80_000_000_000);
        assert_eq!(parse_bytes("1.5MiB").unwrap(), 1_572_864);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("12B").unwrap(), 12);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1GiB").is_err());
    }

    #[test]
    fn sizes_print_in_the_largest_fitting_unit() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(80 << 30), "80.0 GiB");
        assert_eq!(format_bytes(1_572_864), "1.5 MiB");
    }
}
