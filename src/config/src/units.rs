//! Value syntaxes shared by both files: durations, sizes, CIDR addresses, names, and the
//! "did you mean" suggestion for unknown keys. Each parser returns a message meant for the
//! operator (without the file position, which the caller adds).

use std::net::IpAddr;
use std::time::Duration;

const DURATION_FORMS: &str =
    "expected an integer followed by a unit: ms, s, m or h (e.g. \"500ms\", \"1s\", \"2m\", \"24h\")";
const SIZE_FORMS: &str =
    "expected an integer followed by a unit: B, KiB, MiB or GiB (e.g. \"4096B\", \"64KiB\", \"1MiB\", \"2GiB\")";

/// Splits `"123abc"` into (`"123"`, `"abc"`).
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Parses a duration written as an integer and a unit: `ms`, `s`, `m` or `h` (`"500ms"`, `"1s"`,
/// `"2m"`, `"24h"`). Fractions (`"1.5s"`), negative values, missing or unknown units are rejected
/// with a message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("empty duration: {DURATION_FORMS}"));
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration \"{s}\": negative durations are not allowed; {DURATION_FORMS}"));
    }
    let (digits, rest) = split_number(s);
    if digits.is_empty() {
        return Err(format!("invalid duration \"{s}\": {DURATION_FORMS}"));
    }
    if let Some(frac) = rest.strip_prefix('.') {
        let (fdigits, unit) = split_number(frac);
        let hint = fraction_hint(digits, fdigits, unit);
        return Err(format!("invalid duration \"{s}\": fractions are not accepted{hint}; {DURATION_FORMS}"));
    }
    let millis_per_unit: u64 = match rest {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!("invalid duration \"{s}\": missing unit; {DURATION_FORMS}"));
        }
        other => {
            return Err(format!("invalid duration \"{s}\": unknown unit \"{other}\"; {DURATION_FORMS}"));
        }
    };
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration \"{s}\": number too large"))?;
    let ms = n.checked_mul(millis_per_unit).ok_or_else(|| format!("invalid duration \"{s}\": number too large"))?;
    Ok(Duration::from_millis(ms))
}

/// For `"1.5s"`, returns ` (write "1500ms")` when the value is a whole number of milliseconds.
fn fraction_hint(int: &str, frac: &str, unit: &str) -> String {
    let per_unit: u128 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return String::new(),
    };
    if frac.is_empty() || frac.len() > 9 || int.len() > 12 {
        return String::new();
    }
    let (Ok(i), Ok(f)) = (int.parse::<u128>(), frac.parse::<u128>()) else {
        return String::new();
    };
    let scale = 10u128.pow(frac.len() as u32);
    let total = i * scale + f; // value * scale, in `unit`
    let ms_scaled = total * per_unit;
    if ms_scaled % scale == 0 {
        format!(" (write \"{}ms\")", ms_scaled / scale)
    } else {
        String::new()
    }
}

/// Formats a duration the way the files write it: the largest unit that divides it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0ms".into();
    }
    for (unit, per) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// Parses a size written as an integer and a binary unit: `B`, `KiB`, `MiB`, `GiB`
/// (`"4096B"`, `"64KiB"`, `"1MiB"`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err(format!("empty size: {SIZE_FORMS}"));
    }
    if s.starts_with('-') {
        return Err(format!("invalid size \"{s}\": negative sizes are not allowed; {SIZE_FORMS}"));
    }
    let (digits, rest) = split_number(s);
    if digits.is_empty() {
        return Err(format!("invalid size \"{s}\": {SIZE_FORMS}"));
    }
    if rest.starts_with('.') {
        return Err(format!("invalid size \"{s}\": fractions are not accepted; {SIZE_FORMS}"));
    }
    let mult: u64 = match rest {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "" => return Err(format!("invalid size \"{s}\": missing unit; {SIZE_FORMS}")),
        "K" | "KB" | "kB" | "k" | "M" | "MB" | "G" | "GB" | "Ki" | "Mi" | "Gi" | "kiB" | "mib" | "MIB" | "gib"
        | "GIB" | "kib" | "KIB" => {
            return Err(format!(
                "invalid size \"{s}\": unit \"{rest}\" is ambiguous; use the binary units B, KiB, MiB or GiB (e.g. \"1MiB\")"
            ))
        }
        other => return Err(format!("invalid size \"{s}\": unknown unit \"{other}\"; {SIZE_FORMS}")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("invalid size \"{s}\": number too large"))?;
    n.checked_mul(mult).ok_or_else(|| format!("invalid size \"{s}\": number too large"))
}

/// Parses a bandwidth: a size per second, written `"100MiB"` or `"100MiB/s"` (both mean the same).
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let base = s.strip_suffix("/s").unwrap_or(s);
    parse_size(base).map_err(|e| format!("{e} (a bandwidth is a size per second, e.g. \"100MiB/s\")"))
}

/// Formats a byte count with the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, per) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= per && bytes % per == 0 {
            return format!("{}{unit}", bytes / per);
        }
    }
    format!("{bytes}B")
}

/// Parses an address with a prefix length, `"198.18.0.100/24"` or `"fd00::10/64"`. Host bits may
/// be set (it is an address on a subnet, not a network).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, prefix)) = s.split_once('/') else {
        let hint = match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => format!(" (e.g. \"{s}/24\")"),
            Ok(IpAddr::V6(_)) => format!(" (e.g. \"{s}/64\")"),
            Err(_) => String::new(),
        };
        return Err(format!("invalid CIDR \"{s}\": missing prefix length; expected ADDRESS/PREFIX{hint}"));
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("invalid CIDR \"{s}\": \"{addr}\" is not an IPv4 or IPv6 address; expected ADDRESS/PREFIX (e.g. \"198.18.0.100/24\")")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match prefix.parse::<u8>() {
        Ok(n) if prefix.chars().all(|c| c.is_ascii_digit()) && (1..=max).contains(&n) => n,
        _ => {
            return Err(format!(
            "invalid CIDR \"{s}\": prefix length \"{prefix}\" must be an integer from 1 to {max} for an IPv{} address",
            if ip.is_ipv4() { 4 } else { 6 }
        ))
        }
    };
    Ok((ip, len))
}

/// Checks a node, module, network, cluster or checker name: `[a-z0-9][a-z0-9-]*`, at most 32
/// characters.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty name: names use lowercase letters, digits and '-' (e.g. \"n1\")".into());
    }
    if s.len() > 32 {
        return Err(format!("name \"{s}\" is {} characters long; at most 32 are allowed", s.len()));
    }
    let first_ok = s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !first_ok || !rest_ok {
        return Err(format!(
            "invalid name \"{s}\": names use lowercase letters, digits and '-', and start with a letter or digit"
        ));
    }
    Ok(())
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[n][m]
}

/// The candidate closest to `word`, if close enough to be a plausible typo (case is ignored).
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let limit = (1 + lower.chars().count() / 4).min(3);
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("0ms").unwrap(), Duration::ZERO);
        let e = parse_duration("2x").unwrap_err();
        assert!(e.contains("unknown unit \"x\""), "{e}");
        assert!(e.contains("ms, s, m or h"), "{e}");
        assert!(parse_duration("").unwrap_err().contains("empty duration"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("s").unwrap_err().contains("expected an integer"));
        assert!(parse_duration("1 s").unwrap_err().contains("unknown unit"));
        let e = parse_duration("1.5s").unwrap_err();
        assert!(e.contains("fractions are not accepted (write \"1500ms\")"), "{e}");
        assert!(parse_duration("99999999999999999999s").unwrap_err().contains("too large"));
        assert!(parse_duration("18446744073709551615h").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations_format() {
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("1MB").unwrap_err().contains("ambiguous"));
        assert!(parse_size("1").unwrap_err().contains("missing unit"));
        assert!(parse_size("1.5MiB").unwrap_err().contains("fractions"));
        assert!(parse_size("-1MiB").unwrap_err().contains("negative"));
        assert!(parse_size("1TB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999GiB").unwrap_err().contains("too large"));
        assert_eq!(parse_bandwidth("100MiB/s").unwrap(), 100 << 20);
        assert_eq!(parse_bandwidth("100MiB").unwrap(), 100 << 20);
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("198.18.0.100/24").unwrap(), ("198.18.0.100".parse().unwrap(), 24));
        assert_eq!(parse_cidr("fd00::10/64").unwrap(), ("fd00::10".parse().unwrap(), 64));
        assert_eq!(parse_cidr("10.0.0.1/32").unwrap().1, 32);
        assert!(parse_cidr("198.18.0.100").unwrap_err().contains("missing prefix length"));
        assert!(parse_cidr("198.18.0.100").unwrap_err().contains("198.18.0.100/24"));
        assert!(parse_cidr("198.18.0.300/24").unwrap_err().contains("not an IPv4 or IPv6"));
        assert!(parse_cidr("198.18.0.1/33").unwrap_err().contains("from 1 to 32"));
        assert!(parse_cidr("198.18.0.1/0").unwrap_err().contains("from 1 to 32"));
        assert!(parse_cidr("fd00::1/129").unwrap_err().contains("from 1 to 128"));
        assert!(parse_cidr("198.18.0.1/+4").is_err());
        assert!(parse_cidr("198.18.0.1/").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("n1").is_ok());
        assert!(check_name("web-01").is_ok());
        assert!(check_name("1a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-a").is_err());
        assert!(check_name("N1").is_err());
        assert!(check_name("a_b").is_err());
        assert!(check_name(&"a".repeat(32)).is_ok());
        assert!(check_name(&"a".repeat(33)).unwrap_err().contains("at most 32"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("puls", "pulse"), 1);
        assert_eq!(edit_distance("pluse", "pulse"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        let keys = ["pulse", "timeout"];
        assert_eq!(suggest("puls", &keys), Some("pulse"));
        assert_eq!(suggest("timout", &keys), Some("timeout"));
        assert_eq!(suggest("Pulse", &keys), Some("pulse"));
        assert_eq!(suggest("zzz", &keys), None);
        assert_eq!(suggest("nodes", &["node", "name", "network"]), Some("node"));
        assert_eq!(suggest("adresses", &["name", "addresses"]), Some("addresses"));
    }
}
