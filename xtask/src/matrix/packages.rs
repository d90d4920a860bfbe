//! Choosing Debian kernel packages from what apt reports, without touching apt: Debian version
//! ordering (deb-version(7)), `apt-cache madison` and `apt-cache show` parsing, and the
//! selection of the newest `linux-image-<release>-<flavour>` of each kernel series
//! (`cloud-amd64`, `cloud-arm64`). fetch.rs feeds it apt's output and downloads what it picks.

use std::cmp::Ordering;

const IMAGE_PREFIX: &str = "linux-image-";

/// One installable version of a kernel image package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub package: String,
    pub version: String,
    /// `uname -r` of the kernel inside, e.g. "6.1.0-57-cloud-amd64".
    pub release: String,
    /// The series, "major.minor" of the upstream version, e.g. "6.1".
    pub series: String,
}

/// Compares two Debian versions as dpkg does: epoch, then upstream version, then revision,
/// each part with `~` sorting before anything (even the end) and digits compared as numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split_version(a);
    let (eb, ub, rb) = split_version(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| compare_part(ra.as_bytes(), rb.as_bytes()))
}

fn split_version(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) => (e.parse().unwrap_or(0), rest),
        None => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// The weight of a non-digit character in dpkg's `verrevcmp`.
fn weight(c: Option<&u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(*c),
        Some(c) => i32::from(*c) + 256,
    }
}

fn compare_part(a: &[u8], b: &[u8]) -> Ordering {
    let is_digit = |s: &[u8], i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !is_digit(a, i)) || (j < b.len() && !is_digit(b, j)) {
            let (wa, wb) = (weight(a.get(i)), weight(b.get(j)));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while is_digit(a, i) && is_digit(b, j) {
            if first_difference == Ordering::Equal {
                first_difference = a.get(i).cmp(&b.get(j));
            }
            i += 1;
            j += 1;
        }
        if is_digit(a, i) {
            return Ordering::Greater;
        }
        if is_digit(b, j) {
            return Ordering::Less;
        }
        if first_difference != Ordering::Equal {
            return first_difference;
        }
    }
    Ordering::Equal
}

/// The kernel release a `linux-image-<release>` package holds, or `None` for what is not one
/// kernel of `flavour` (meta-packages such as `linux-image-6.1-cloud-amd64`, `-dbg`,
/// `-unsigned`).
pub fn release_of<'a>(package: &'a str, flavour: &str) -> Option<&'a str> {
    let release = package.strip_prefix(IMAGE_PREFIX)?;
    let abi = release.strip_suffix(flavour)?.strip_suffix('-')?;
    // A real kernel's release starts with a three-part version: 5.10.0, 6.12.117.
    let numeric: Vec<&str> = abi
        .split(['-', '+'])
        .next()?
        .split('.')
        .take_while(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        .collect();
    (numeric.len() >= 3).then_some(release)
}

/// "major.minor" of a package version's upstream part: "6.1.192-3" -> "6.1".
pub fn series_of(version: &str) -> Option<String> {
    let (_, upstream, _) = split_version(version);
    let mut parts = upstream.split(['.', '-', '+', '~']);
    let major = parts.next().filter(|p| p.parse::<u32>().is_ok())?;
    let minor = parts.next().filter(|p| p.parse::<u32>().is_ok())?;
    Some(format!("{major}.{minor}"))
}

/// Kernel image candidates of `flavour` from `apt-cache madison` output (`pkg | version |
/// source`).
pub fn parse_madison(text: &str, flavour: &str) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split('|').map(str::trim);
        let (Some(package), Some(version)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Some(release), Some(series)) = (release_of(package, flavour), series_of(version))
        else {
            continue;
        };
        let candidate = Candidate {
            package: package.to_owned(),
            version: version.to_owned(),
            release: release.to_owned(),
            series,
        };
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}

/// Whether a series matches what was asked for: "6.1" exactly, or "7" / "7.x" for any 7.y.
pub fn matches(wanted: &str, series: &str) -> bool {
    match wanted.strip_suffix(".x").unwrap_or(wanted) {
        major if !major.contains('.') => series
            .split_once('.')
            .is_some_and(|(have, _)| have == major),
        exact => exact == series,
    }
}

/// The candidates for `wanted`, newest first: try them in order (some listed versions are not
/// on the mirror any more).
pub fn select<'a>(candidates: &'a [Candidate], wanted: &str) -> Vec<&'a Candidate> {
    let mut chosen: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| matches(wanted, &c.series))
        .collect();
    chosen.sort_by(|a, b| compare_versions(&b.version, &a.version));
    chosen
}

/// What else a kernel package needs from the same kernel build: its `Depends` pinned with `=`
/// to packages named after `release` (6.19 and later split the image into linux-binary-,
/// linux-modules- and linux-base-<release>). Alternatives (`a | b`) are never ours.
pub fn release_depends(show: &str, release: &str) -> Vec<(String, String)> {
    let Some(depends) = show.lines().find_map(|l| l.strip_prefix("Depends:")) else {
        return Vec::new();
    };
    depends
        .split(',')
        .map(str::trim)
        .filter(|d| !d.contains('|'))
        .filter_map(|d| {
            let (name, rest) = d.split_once(' ')?;
            let version = rest
                .trim()
                .strip_prefix("(=")?
                .strip_suffix(')')?
                .trim()
                .to_owned();
            name.contains(release).then(|| (name.to_owned(), version))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_dpkg_orders_them() {
        let ascending = [
            "6.1.180-1~deb11u1",
            "6.1.180-1",
            "6.1.192-3",
            "6.12.117-1",
            "6.12.118-1~deb12u1",
            "6.18.15-1~bpo13+1",
            "7.0.4-1~bpo13+1",
            "7.3.4-1~bpo13+1",
            "1:0.1-1",
        ];
        for pair in ascending.windows(2) {
            assert_eq!(
                compare_versions(pair[0], pair[1]),
                Ordering::Less,
                "{pair:?}"
            );
            assert_eq!(
                compare_versions(pair[1], pair[0]),
                Ordering::Greater,
                "{pair:?}"
            );
        }
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0a", "1.0"), Ordering::Greater);
        assert_eq!(compare_versions("1.0+b1", "1.0a"), Ordering::Greater);
        assert_eq!(compare_versions("1.01", "1.1"), Ordering::Equal);
    }

    #[test]
    fn only_real_kernels_have_a_release() {
        assert_eq!(
            release_of("linux-image-5.10.0-46-cloud-amd64", "cloud-amd64"),
            Some("5.10.0-46-cloud-amd64")
        );
        assert_eq!(
            release_of("linux-image-6.12.117+deb13-cloud-amd64", "cloud-amd64"),
            Some("6.12.117+deb13-cloud-amd64")
        );
        assert_eq!(
            release_of("linux-image-6.1.0-0.deb11.52-cloud-amd64", "cloud-amd64"),
            Some("6.1.0-0.deb11.52-cloud-amd64")
        );
        assert_eq!(
            release_of("linux-image-6.1-cloud-amd64", "cloud-amd64"),
            None
        );
        assert_eq!(release_of("linux-image-cloud-amd64", "cloud-amd64"), None);
        assert_eq!(
            release_of("linux-image-6.1.0-57-cloud-amd64-dbg", "cloud-amd64"),
            None
        );
        assert_eq!(
            release_of("linux-image-6.1.0-57-amd64", "cloud-amd64"),
            None
        );
        assert_eq!(
            release_of("linux-image-6.1.0-57-cloud-arm64", "cloud-arm64"),
            Some("6.1.0-57-cloud-arm64")
        );
        assert_eq!(
            release_of("linux-image-6.1.0-57-cloud-arm64", "cloud-amd64"),
            None
        );
    }

    const MADISON: &str = "\
linux-image-6.1.0-57-cloud-amd64 |  6.1.192-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-6.1.0-0.deb11.52-cloud-amd64 | 6.1.180-1~deb11u1 | http://security.debian.org/debian-security bullseye-security/main amd64 Packages
linux-image-6.1-cloud-amd64 |  6.1.192-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-6.12.117+deb13-cloud-amd64 | 6.12.117-1 | http://deb.debian.org/debian trixie/main amd64 Packages
linux-image-6.12.118+deb12-cloud-amd64 | 6.12.118-1~deb12u1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-7.0.13+deb13-cloud-amd64 | 7.0.13-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-7.3.4+deb13-cloud-amd64 | 7.3.4-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-7.2.12+deb13-cloud-amd64 | 7.2.12-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-5.10.0-45-cloud-amd64 | 5.10.251-1 | http://security.debian.org/debian-security bullseye-security/main amd64 Packages
linux-image-5.10.0-46-cloud-amd64 | 5.10.262-1 | http://security.debian.org/debian-security bullseye-security/main amd64 Packages
";

    fn picks(wanted: &str) -> Vec<String> {
        let candidates = parse_madison(MADISON, "cloud-amd64");
        select(&candidates, wanted)
            .into_iter()
            .map(|c| c.package.clone())
            .collect()
    }

    #[test]
    fn the_newest_of_each_series_comes_first() {
        assert_eq!(
            picks("6.1"),
            [
                "linux-image-6.1.0-57-cloud-amd64",
                "linux-image-6.1.0-0.deb11.52-cloud-amd64"
            ]
        );
        assert_eq!(
            picks("6.12"),
            [
                "linux-image-6.12.118+deb12-cloud-amd64",
                "linux-image-6.12.117+deb13-cloud-amd64"
            ]
        );
        assert_eq!(picks("5.10")[0], "linux-image-5.10.0-46-cloud-amd64");
        assert_eq!(
            picks("7"),
            [
                "linux-image-7.3.4+deb13-cloud-amd64",
                "linux-image-7.2.12+deb13-cloud-amd64",
                "linux-image-7.0.13+deb13-cloud-amd64"
            ]
        );
        assert_eq!(picks("7.x"), picks("7"));
        assert_eq!(picks("7.2"), ["linux-image-7.2.12+deb13-cloud-amd64"]);
        assert!(picks("6.18").is_empty());
    }

    #[test]
    fn split_kernels_pull_their_binary_and_modules() {
        let show = "\
Package: linux-image-7.3.4+deb13-cloud-amd64
Version: 7.3.4-1~bpo13+1
Pre-Depends: linux-base (>= 4.17~)
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod, linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)
Recommends: apparmor
";
        let deps = release_depends(show, "7.3.4+deb13-cloud-amd64");
        let names: Vec<&str> = deps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-base-7.3.4+deb13-cloud-amd64",
                "linux-binary-7.3.4+deb13-cloud-amd64",
                "linux-modules-7.3.4+deb13-cloud-amd64"
            ]
        );
        assert!(deps.iter().all(|(_, v)| v == "7.3.4-1~bpo13+1"));
        let monolithic = "Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n";
        assert!(release_depends(monolithic, "5.10.0-46-cloud-amd64").is_empty());
    }
}
