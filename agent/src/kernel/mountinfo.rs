//! `/proc/self/mountinfo`, one mount per line: where each filesystem is mounted, its type and
//! its super options (for cgroup v1: which controllers the hierarchy holds). Lines that do not
//! parse are skipped.

/// One mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    pub point: &'a str,
    pub fstype: &'a str,
    /// Super options, comma-separated ("rw,cpu,cpuacct").
    pub options: &'a str,
}

impl Mount<'_> {
    /// Whether the super options hold `option` ("memory").
    pub fn has_option(&self, option: &str) -> bool {
        self.options.split(',').any(|o| o == option)
    }
}

/// The mounts of a mountinfo text, in order.
pub fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let fstype = r.next()?;
        let options = r.nth(1).unwrap_or_default();
        Some(Mount {
            point: left.split_whitespace().nth(4)?,
            fstype,
            options,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_point_type_and_super_options() {
        let text = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                    garbage line\n\
                    38 25 0:33 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let m: Vec<Mount<'_>> = mounts(text).collect();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].point, m[0].fstype),
            ("/sys/fs/cgroup/unified", "cgroup2")
        );
        assert!(m[1].has_option("cpu") && !m[1].has_option("memory"));
    }
}
