//! How the dashboard writes numbers, durations, sizes, clock times and long names into narrow
//! terminal columns. Pure functions shared by the views (and by the filter in the app state).

/// `45s`, `3m12s`, `2h03m`, `4d02h`.
pub fn age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `812 MiB`, `41.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `HH:MM:SS` in UTC of a Unix time in milliseconds (no time-zone database needed).
pub fn clock_utc(time_ms: u64) -> String {
    let s = time_ms / 1000 % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// Keeps the end of a long string (paths, UIDs): `…/incoming/IM0004.dcm`.
pub fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max == 0 {
        return s.to_string();
    }
    let keep: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{keep}")
}

/// A number or `-`.
pub fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}

/// Case-insensitive substring match over several fields; an empty filter matches everything.
pub fn matches(filter: &str, fields: &[&str]) -> bool {
    if filter.is_empty() {
        return true;
    }
    let needle = filter.to_lowercase();
    fields.iter().any(|f| f.to_lowercase().contains(&needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ages_sizes_and_clocks() {
        assert_eq!(age(4.9), "4s");
        assert_eq!(age(192.0), "3m12s");
        assert_eq!(age(7380.0), "2h03m");
        assert_eq!(age(352_800.0), "4d02h");
        assert_eq!(age(-1.0), "-");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(44_238_471_168), "41.2 GiB");
        assert_eq!(bytes(150 << 20), "150 MiB");
        assert_eq!(clock_utc(1_700_000_000_000), "22:13:20");
    }

    #[test]
    fn trims_and_filters() {
        assert_eq!(tail("abcdef", 4), "…def");
        assert_eq!(tail("abc", 4), "abc");
        assert_eq!(opt(Some(1.256), 1), "1.3");
        assert_eq!(opt(None, 1), "-");
        assert!(matches("", &["x"]));
        assert!(matches("CoV", &["a", "covid"]));
        assert!(!matches("ggo", &["covid"]));
    }
}
