//! cgroupfs file formats (v1 and v2) and a reader that keeps a file open and re-reads it at
//! offset 0 (cgroup files are seq_files: a read at offset 0 regenerates them), so a sample is
//! one `pread` into a caller's buffer and allocates nothing. Parsers take bytes and never
//! panic: a malformed file is `None`, which the sampler counts.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

/// Size of the buffer a file is read into: every file read here is far shorter (cpu.stat with
/// every v2 field is ~200 bytes).
pub const READ_BUF: usize = 4096;

/// A cgroup file kept open between samples: its cgroup's directory (shared with the other
/// files of the cgroup) and its name.
#[derive(Debug)]
pub struct CgroupFile {
    dir: Arc<Path>,
    name: &'static str,
    file: Option<File>,
}

impl CgroupFile {
    pub fn new(dir: Arc<Path>, name: &'static str) -> CgroupFile {
        CgroupFile {
            dir,
            name,
            file: None,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    /// Reads the whole file into `buf` (opened on first use); returns the bytes read.
    pub fn read<'b>(&mut self, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        if self.file.is_none() {
            self.file = Some(File::open(self.path())?);
        }
        let Some(file) = self.file.as_ref() else {
            return Err(io::ErrorKind::NotFound.into());
        };
        match file.read_at(buf, 0) {
            Ok(n) => Ok(buf.get(..n).unwrap_or_default()),
            Err(e) => {
                // Re-open next time: the cgroup may have been replaced.
                self.file = None;
                Err(e)
            }
        }
    }

    /// Whether the file was opened (and so holds a descriptor).
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }
}

/// Whether an error means "the cgroup is gone" (removed directory: ENOENT on open, ENODEV on
/// a read of a file whose cgroup was removed).
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(19)
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end.max(start)).unwrap_or_default()
}

/// The value of `key` in a flat keyed file ("key value" lines: cpu.stat, memory.events,
/// memory.oom_control).
pub fn keyed(text: &[u8], key: &str) -> Option<u64> {
    text.split(|c| *c == b'\n').find_map(|line| {
        let mut parts = line.split(|c| *c == b' ').filter(|p| !p.is_empty());
        (parts.next()? == key.as_bytes()).then(|| parts.next().and_then(parse_u64))?
    })
}

/// CFS bandwidth counters of a cgroup (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub periods: u64,
    pub throttled: u64,
    pub throttled_us: u64,
}

/// `cpu.stat`: v2 `nr_periods`, `nr_throttled`, `throttled_usec`; v1 `nr_periods`,
/// `nr_throttled`, `throttled_time` (nanoseconds).
pub fn cpu_stat(text: &[u8], v2: bool) -> Option<CpuStat> {
    Some(CpuStat {
        periods: keyed(text, "nr_periods")?,
        throttled: keyed(text, "nr_throttled")?,
        throttled_us: if v2 {
            keyed(text, "throttled_usec")?
        } else {
            keyed(text, "throttled_time")? / 1000
        },
    })
}

/// v2 `cpu.max` ("max 100000" or "10000 100000"): the limit in thousandths of a core, `None`
/// inside when unlimited; outer `None` when malformed.
pub fn cpu_max(text: &[u8]) -> Option<Option<u64>> {
    let mut parts = trim(text).split(|c| *c == b' ').filter(|p| !p.is_empty());
    let quota = parts.next()?;
    let period = parse_u64(parts.next()?)?;
    if quota == b"max" {
        return Some(None);
    }
    millicores(parse_u64(quota)?, period).map(Some)
}

/// v1 `cpu.cfs_quota_us` ("-1" when unlimited) and `cpu.cfs_period_us`.
pub fn cfs_quota(quota: &[u8], period: &[u8]) -> Option<Option<u64>> {
    let quota = trim(quota);
    if quota == b"-1" {
        return Some(None);
    }
    millicores(parse_u64(quota)?, parse_u64(trim(period))?).map(Some)
}

fn millicores(quota_us: u64, period_us: u64) -> Option<u64> {
    (period_us > 0).then(|| quota_us.saturating_mul(1000) / period_us)
}

/// OOM kill counters: v2 `memory.events` (`oom_kill`, `oom_group_kill`), v1
/// `memory.oom_control` (`oom_kill`, no group kills). `(kills, group_kills)`.
pub fn oom_counts(text: &[u8], v2: bool) -> Option<(u64, u64)> {
    let kills = keyed(text, "oom_kill")?;
    // oom_group_kill appeared in Linux 5.17; older v2 kernels lack it.
    let group = if v2 {
        keyed(text, "oom_group_kill").unwrap_or(0)
    } else {
        0
    };
    Some((kills, group))
}

/// A memory size file: v2 `memory.max` ("max" or bytes), v1 `memory.limit_in_bytes` (bytes,
/// near 2^63 when unlimited), usage files. `Some(None)` when unlimited.
pub fn bytes_or_max(text: &[u8]) -> Option<Option<u64>> {
    let t = trim(text);
    if t == b"max" {
        return Some(None);
    }
    let v = parse_u64(t)?;
    // v1's "unlimited" is PAGE_COUNTER_MAX pages: LONG_MAX rounded down to a page.
    Some((v < (1 << 62)).then_some(v))
}

/// `memory.oom.group` ("0"/"1").
pub fn flag(text: &[u8]) -> Option<bool> {
    match trim(text) {
        b"0" => Some(false),
        b"1" => Some(true),
        _ => None,
    }
}

/// PSI ("some avg10=1.23 avg60=... total=..."): the `some` line's avg10, hundredths of a
/// percent.
pub fn psi_some_avg10(text: &[u8]) -> Option<u32> {
    let line = text
        .split(|c| *c == b'\n')
        .find(|l| l.starts_with(b"some "))?;
    let field = line
        .split(|c| *c == b' ')
        .find_map(|f| f.strip_prefix(b"avg10="))?;
    let (int, frac) = match field.iter().position(|c| *c == b'.') {
        Some(dot) => (field.get(..dot)?, field.get(dot + 1..)?),
        None => (field, &b""[..]),
    };
    let int = u32::try_from(parse_u64(int)?).ok()?;
    let frac2 = match frac.len() {
        0 => 0,
        1 => u32::try_from(parse_u64(frac)?).ok()? * 10,
        _ => u32::try_from(parse_u64(frac.get(..2)?)?).ok()?,
    };
    int.checked_mul(100)?.checked_add(frac2)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real file contents, captured from Linux 6.18 (v1 on this project's hosts) and from a
    // pure cgroup v2 node (6.1, containerd, systemd driver).
    pub const V2_CPU_STAT: &[u8] = b"usage_usec 912345\nuser_usec 812345\nsystem_usec 100000\ncore_sched.force_idle_usec 0\nnr_periods 1520\nnr_throttled 1311\nthrottled_usec 118930211\nnr_bursts 0\nburst_usec 0\n";
    pub const V1_CPU_STAT: &[u8] =
        b"nr_periods 52\nnr_throttled 49\nthrottled_time 4402812345\nnr_bursts 0\nburst_time 0\n";
    pub const V2_MEMORY_EVENTS: &[u8] =
        b"low 0\nhigh 0\nmax 412\noom 3\noom_kill 2\noom_group_kill 1\n";
    pub const V1_OOM_CONTROL: &[u8] = b"oom_kill_disable 0\nunder_oom 0\noom_kill 4\n";
    pub const PSI: &[u8] = b"some avg10=85.12 avg60=40.03 avg300=10.00 total=123456789\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

    #[test]
    fn cpu_stat_both_versions() {
        assert_eq!(
            cpu_stat(V2_CPU_STAT, true),
            Some(CpuStat {
                periods: 1520,
                throttled: 1311,
                throttled_us: 118_930_211
            })
        );
        assert_eq!(
            cpu_stat(V1_CPU_STAT, false),
            Some(CpuStat {
                periods: 52,
                throttled: 49,
                throttled_us: 4_402_812
            })
        );
        // v2 cpu.stat without the cpu controller (hybrid hosts): no throttle counters.
        assert_eq!(
            cpu_stat(b"usage_usec 5\nuser_usec 3\nsystem_usec 2\n", true),
            None
        );
    }

    #[test]
    fn limits() {
        assert_eq!(cpu_max(b"max 100000\n"), Some(None));
        assert_eq!(cpu_max(b"10000 100000\n"), Some(Some(100)));
        assert_eq!(cpu_max(b"250000 100000\n"), Some(Some(2500)));
        assert_eq!(cpu_max(b"garbage"), None);
        assert_eq!(cpu_max(b"10000 0\n"), None);
        assert_eq!(cfs_quota(b"-1\n", b"100000\n"), Some(None));
        assert_eq!(cfs_quota(b"10000\n", b"100000\n"), Some(Some(100)));
        assert_eq!(bytes_or_max(b"max\n"), Some(None));
        assert_eq!(bytes_or_max(b"67108864\n"), Some(Some(64 << 20)));
        assert_eq!(bytes_or_max(b"9223372036854771712\n"), Some(None));
        assert_eq!(bytes_or_max(b"-5\n"), None);
        assert_eq!(flag(b"1\n"), Some(true));
        assert_eq!(flag(b"x"), None);
    }

    #[test]
    fn oom_counters_and_psi() {
        assert_eq!(oom_counts(V2_MEMORY_EVENTS, true), Some((2, 1)));
        assert_eq!(oom_counts(V1_OOM_CONTROL, false), Some((4, 0)));
        assert_eq!(oom_counts(b"low 0\n", true), None);
        assert_eq!(psi_some_avg10(PSI), Some(8512));
        assert_eq!(psi_some_avg10(b"some avg10=0.5 x\n"), Some(50));
        assert_eq!(psi_some_avg10(b"full avg10=1.00\n"), None);
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\n\n\n",
            b"nr_periods",
            b"nr_periods 99999999999999999999999",
            b"some avg10=",
            b"some avg10=.",
            &[0xff, 0xfe, b' ', b'\n'],
            b"max",
        ];
        for i in inputs {
            let _ = (cpu_stat(i, true), cpu_stat(i, false), cpu_max(i));
            let _ = (
                oom_counts(i, true),
                bytes_or_max(i),
                psi_some_avg10(i),
                flag(i),
            );
        }
    }
}
