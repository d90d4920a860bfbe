//! Booting one kernel under qemu with software emulation (KVM does not work on these
//! machines): the console captured to a file and watched for /init's first line (boot time),
//! a hard timeout that kills qemu, and the console read back into a [`VmResult`].

use std::{
    fs,
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Arch, VmResult, console};

/// The emulator of an architecture, and the Debian package it comes in.
fn qemu(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
    }
}

/// The machine and CPU of an architecture. arm64: qemu's `virt` board; `max` has every
/// feature qemu emulates (LSE atomics among them, as on Neoverse servers), with pointer
/// authentication computed by qemu's own cheap function instead of QARMA (which made a boot
/// 3 to 5 times slower).
fn machine(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Amd64 => &["-cpu", "max"],
        Arch::Arm64 => &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
    }
}
/// Guest memory. The payload allocates 300 MiB in an OOM test, and the initramfs (unpacked
/// into RAM) carries several static binaries of about 30 MB.
pub const MEMORY_MIB: u32 = 1536;
/// `panic=-1`: a panic reboots at once, which `-no-reboot` turns into qemu exiting. `quiet`:
/// kernel messages below error level stay off the console (slow under emulation, and they
/// would interleave with the payload's lines; a failed payload prints dmesg instead).
/// `cgroup_no_v1=all`: cgroup2 is the only hierarchy, as on a modern node.
const CMDLINE: &str = "panic=-1 quiet rdinit=/init cgroup_no_v1=all";

/// The serial console: the PC's UART, the `virt` board's PL011.
fn console_device(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "ttyS0",
        Arch::Arm64 => "ttyAMA0",
    }
}
/// How often a running VM is checked for having exited.
const POLL: Duration = Duration::from_millis(50);

/// One VM to run.
pub struct Vm<'a> {
    pub name: &'a str,
    pub arch: Arch,
    pub release: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Where console.log and qemu's stderr (qemu.log) go.
    pub dir: &'a Path,
    pub timeout: Duration,
}

/// What the console watcher saw and when, relative to qemu's start.
#[derive(Default)]
struct Capture {
    text: Vec<u8>,
    init_at: Option<Duration>,
    exit_at: Option<Duration>,
    error: Option<String>,
}

/// Boots `vm`, waits for it to power off (or kills it at the timeout) and reads its console.
pub fn run(vm: &Vm<'_>) -> VmResult {
    let start = Instant::now();
    let console_log = vm.dir.join("console.log");
    let mut result = VmResult::new(vm.name, vm.release, console_log.clone());
    let stderr_log = vm.dir.join("qemu.log");
    let spawned = fs::File::create(&stderr_log)
        .with_context(|| format!("creating {}", stderr_log.display()))
        .and_then(|stderr| {
            let (program, package) = qemu(vm.arch);
            command(vm).stderr(stderr).spawn().with_context(|| {
                format!("starting {program} (cargo xtask setup installs {package})")
            })
        });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    let watcher = child
        .stdout
        .take()
        .map(|stdout| thread::spawn(move || watch(stdout, &console_log, start)));
    let (status, timed_out) = wait(&mut child, start + vm.timeout);
    result.elapsed = start.elapsed();
    result.timed_out = timed_out;
    let capture = watcher.and_then(|w| w.join().ok()).unwrap_or_default();
    result.boot_to_init = capture.init_at;
    result.payload_time = capture
        .init_at
        .zip(capture.exit_at)
        .map(|(i, e)| e.saturating_sub(i));
    let parsed = console::parse(&String::from_utf8_lossy(&capture.text));
    let program = qemu(vm.arch).0;
    result.error = capture.error.or_else(|| match status {
        Some(Ok(s)) if !s.success() && parsed.exit.is_none() => Some(format!(
            "{program} exited with {s}: {}",
            fs::read_to_string(&stderr_log).unwrap_or_default().trim()
        )),
        Some(Err(e)) => Some(format!("waiting for {program}: {e}")),
        _ => None,
    });
    result.exit = parsed.exit;
    result.lines = parsed.lines.clone();
    result.console = parsed;
    result
}

fn command(vm: &Vm<'_>) -> Command {
    let mut cmd = Command::new(qemu(vm.arch).0);
    cmd.args(["-accel", "tcg"])
        .args(machine(vm.arch))
        .args(["-smp", "1", "-nic", "none", "-nographic", "-no-reboot"])
        .args(["-m", &MEMORY_MIB.to_string()])
        .arg("-kernel")
        .arg(vm.vmlinuz)
        .arg("-initrd")
        .arg(vm.initramfs)
        .args([
            "-append",
            &format!("console={} {CMDLINE}", console_device(vm.arch)),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

/// Waits for `child` until `deadline`, then kills it. Returns its status (none when killed)
/// and whether it was killed.
fn wait(
    child: &mut Child,
    deadline: Instant,
) -> (Option<std::io::Result<std::process::ExitStatus>>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Some(Ok(status)), false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return (None, true);
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return (Some(Err(e)), false);
            }
        }
    }
}

/// Copies the console to `log` as it arrives, noting when /init's first line and the exit line
/// appear.
fn watch(mut stdout: impl std::io::Read, log: &Path, start: Instant) -> Capture {
    let mut capture = Capture::default();
    let mut file = match fs::File::create(log) {
        Ok(f) => Some(f),
        Err(e) => {
            capture.error = Some(format!("creating {}: {e}", log.display()));
            None
        }
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                capture.error = Some(format!("reading the console: {e}"));
                break;
            }
        };
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(chunk);
        }
        // Search only what can hold a marker that ends in this chunk.
        let from = capture.text.len().saturating_sub(32);
        capture.text.extend_from_slice(chunk);
        let tail = capture.text.get(from..).unwrap_or_default();
        if capture.init_at.is_none() && contains(tail, console::INIT.as_bytes()) {
            capture.init_at = Some(start.elapsed());
        }
        if capture.exit_at.is_none() && contains(tail, console::EXIT.as_bytes()) {
            capture.exit_at = Some(start.elapsed());
        }
    }
    capture
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
