//! Kernel timestamps (CLOCK_BOOTTIME ns, which keeps counting in suspend and never jumps) to
//! wall-clock time, through an offset sampled at a known instant.

use std::time::{Duration, SystemTime};

/// Offset between CLOCK_BOOTTIME and the wall clock at one instant.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    wall_at_sample: SystemTime,
    boot_ns_at_sample: u64,
}

fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

impl BootClock {
    pub fn now() -> Self {
        BootClock {
            wall_at_sample: SystemTime::now(),
            boot_ns_at_sample: boot_ns(),
        }
    }

    /// Wall-clock time of a CLOCK_BOOTTIME timestamp.
    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        if boot_ns >= self.boot_ns_at_sample {
            self.wall_at_sample + Duration::from_nanos(boot_ns - self.boot_ns_at_sample)
        } else {
            self.wall_at_sample
                .checked_sub(Duration::from_nanos(self.boot_ns_at_sample - boot_ns))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways_around_the_sample() {
        let c = BootClock {
            wall_at_sample: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            boot_ns_at_sample: 5_000_000_000,
        };
        assert_eq!(
            c.wall(6_000_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1001)
        );
        assert_eq!(
            c.wall(4_000_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(999)
        );
        assert_eq!(c.wall(0), SystemTime::UNIX_EPOCH + Duration::from_secs(995));
        let live = BootClock::now();
        let now = live.wall(boot_ns());
        let diff = now
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1));
    }
}
