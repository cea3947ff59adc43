//! Byte sizes written for people: `"8GiB"`, `"512MiB"`, `"8GB"`, `"1.5GiB"`, `"123456"`.

/// Parses a byte size.
///
/// A number (integer or decimal) followed by an optional unit, with optional spaces between.
/// Units, case-insensitive: `B`; decimal `KB`, `MB`, `GB`, `TB` (powers of 1000); binary
/// `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024), with the short forms `K`, `M`, `G`, `T`
/// read as binary. A bare number is bytes. Fractions are rounded to the nearest byte.
///
/// ```
/// assert_eq!(oomph_recipe::parse_bytes("8GiB"), Ok(8 << 30));
/// assert_eq!(oomph_recipe::parse_bytes("1.5 GiB"), Ok(3 << 29));
/// assert_eq!(oomph_recipe::parse_bytes("8GB"), Ok(8_000_000_000));
/// assert!(oomph_recipe::parse_bytes("eight").is_err());
/// ```
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: String = num.chars().filter(|&c| c != '_').collect();
    let unit = unit.trim();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(format!("`{unit}` is not a size unit in {s:?} (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"))
        }
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(format!("{s:?} does not start with a number (write for example \"8GiB\" or \"512MiB\")"));
    }
    if !num.contains('.') {
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large for a byte count"))?;
        return n.checked_mul(multiplier).ok_or_else(|| format!("{s:?} is too large for a byte count"));
    }
    let x: f64 = num.parse().map_err(|_| format!("{s:?} is not a number followed by a unit"))?;
    let bytes = (x * multiplier as f64).round();
    // 2^64 as f64; anything at or above it does not fit.
    if !bytes.is_finite() || bytes >= 18_446_744_073_709_551_616.0 {
        return Err(format!("{s:?} is too large for a byte count"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn accepts_common_spellings() {
        assert_eq!(parse_bytes("8GiB"), Ok(8 * (1 << 30)));
        assert_eq!(parse_bytes("512MiB"), Ok(512 * (1 << 20)));
        assert_eq!(parse_bytes("8GB"), Ok(8_000_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("123456"), Ok(123_456));
        assert_eq!(parse_bytes(" 4 gib "), Ok(4 << 30));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("100B"), Ok(100));
        assert_eq!(parse_bytes("1_000KB"), Ok(1_000_000));
        assert_eq!(parse_bytes("0"), Ok(0));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "GiB",
            "eight",
            "8XB",
            "-1GiB",
            "1.2.3GiB",
            ".5GiB",
            "5.GiB",
            "99999999999999999999",
            "20000000TiB",
            "1e3",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_bytes("17000000TiB").is_err());
        assert!(parse_bytes("16777215.9TiB").is_ok());
    }
}
