//! Kernel timestamps (CLOCK_BOOTTIME ns, which keeps counting in suspend and never jumps) to
//! wall-clock time, through offsets sampled at known instants.
//!
//! A sample reads the boot clock on both sides of the wall clock and keeps the midpoint of the
//! tightest of a few tries, so a preemption between the two reads cannot skew it. The reader
//! refreshes the sample periodically (NTP slews and steps the wall clock); an event is converted
//! with the sample in effect when it happened, so events still in the ring when a new sample is
//! taken keep the offset of their time.

use std::time::{Duration, SystemTime};

/// Tries per sample; the one with the narrowest bracket wins.
const SAMPLE_TRIES: usize = 3;

fn boot_ns() -> std::io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).map_err(std::io::Error::other)?;
    let nanos = u64::try_from(ts.tv_nsec).map_err(std::io::Error::other)?;
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Wall-clock time and boot time at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    wall: SystemTime,
    boot_ns: u64,
}

impl Sample {
    fn take() -> std::io::Result<Sample> {
        let mut best: Option<(u64, Sample)> = None;
        for _ in 0..SAMPLE_TRIES {
            let before = boot_ns()?;
            let wall = SystemTime::now();
            let after = boot_ns()?;
            let width = after.saturating_sub(before);
            let sample = Sample {
                wall,
                boot_ns: before + width / 2,
            };
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, sample));
            }
        }
        best.map(|(_, s)| s)
            .ok_or_else(|| std::io::Error::other("no clock sample"))
    }

    fn wall(&self, boot_ns: u64) -> SystemTime {
        if boot_ns >= self.boot_ns {
            self.wall + Duration::from_nanos(boot_ns - self.boot_ns)
        } else {
            self.wall
                .checked_sub(Duration::from_nanos(self.boot_ns - boot_ns))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

/// Converts CLOCK_BOOTTIME timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    current: Sample,
    previous: Option<Sample>,
}

impl BootClock {
    /// Samples the clocks; fails (rather than returning a zero that would put every event in the
    /// future) when CLOCK_BOOTTIME cannot be read.
    pub fn new() -> std::io::Result<Self> {
        Ok(BootClock {
            current: Sample::take()?,
            previous: None,
        })
    }

    /// Takes a fresh sample; events from before it keep the previous one.
    pub fn refresh(&mut self) -> std::io::Result<()> {
        let fresh = Sample::take()?;
        self.previous = Some(self.current);
        self.current = fresh;
        Ok(())
    }

    /// CLOCK_BOOTTIME now, in nanoseconds (0 if it cannot be read, which [`BootClock::new`]
    /// already ruled out).
    pub fn boot_now(&self) -> u64 {
        boot_ns().unwrap_or(0)
    }

    /// Wall-clock time of a CLOCK_BOOTTIME timestamp.
    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        match self.previous {
            Some(previous) if boot_ns < self.current.boot_ns => previous.wall(boot_ns),
            _ => self.current.wall(boot_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(wall_secs: u64, boot_secs: u64) -> Sample {
        Sample {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(wall_secs),
            boot_ns: boot_secs * 1_000_000_000,
        }
    }

    #[test]
    fn converts_both_ways_around_the_sample() {
        let c = BootClock {
            current: at(1000, 5),
            previous: None,
        };
        let secs = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(c.wall(6_000_000_000), secs(1001));
        assert_eq!(c.wall(4_000_000_000), secs(999));
        assert_eq!(c.wall(0), secs(995));
    }

    #[test]
    fn events_before_a_refresh_keep_their_offset() {
        // The wall clock was stepped 100 s forward between the two samples.
        let c = BootClock {
            current: at(1110, 10),
            previous: Some(at(1000, 0)),
        };
        let secs = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(c.wall(9_000_000_000), secs(1009), "old offset");
        assert_eq!(c.wall(11_000_000_000), secs(1111), "new offset");
    }

    #[test]
    fn live_sample_is_close_to_now() {
        let mut live = BootClock::new().unwrap();
        live.refresh().unwrap();
        let now = live.wall(boot_ns().unwrap());
        let diff = now
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(100), "{diff:?}");
    }
}
