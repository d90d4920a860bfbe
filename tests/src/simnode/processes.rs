//! Real processes in a pod: the `sim-workload` binary or any other program, started inside the
//! container's cgroups (every hierarchy) and the pod's network namespace, with the pod's own
//! resolv.conf when it has one. Processes the pod owns are killed when it goes.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use super::SimNode;

impl SimNode {
    fn command(&self, index: usize, args: &[&str]) -> anyhow::Result<Command> {
        self.command_of(index, &self.workload, args)
    }

    pub(super) fn command_of(
        &self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<Command> {
        let pod = &self.pods[index];
        ensure!(!pod.netns.is_empty(), "pod was deleted");
        let netns =
            fs::File::open(format!("/run/netns/{}", pod.netns)).context("opening pod netns")?;
        let mut procs = Vec::new();
        for root in &self.hierarchies {
            let path = root.join(&pod.container_cgroup).join("cgroup.procs");
            procs.push(
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?,
            );
        }
        let resolv = pod.resolv_conf.clone();
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls (write, setns, unshare, mount) on fds and
        // strings made before fork.
        unsafe {
            cmd.pre_exec(move || {
                // Join the container's cgroups first, then its network namespace ("0" = self).
                for f in &procs {
                    if libc::write(f.as_raw_fd(), c"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(resolv) = &resolv {
                    // The pod's own resolv.conf in a mount namespace of its own.
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            resolv.as_ptr(),
                            c"/etc/resolv.conf".as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Starts another program (iperf3, ...) in a pod's container, owned by the pod.
    pub fn start_program(
        &mut self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let child = self
            .command_of(index, program, args)?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.pods[index].children.push(child);
        Ok(())
    }

    /// Starts another program in a pod's container with its output piped, owned by the caller.
    pub fn spawn_program_piped(
        &self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<Child> {
        self.command_of(index, program, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))
    }

    /// Runs another program in a pod's container to completion.
    pub fn run_program(
        &self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let out = self
            .command_of(index, program, args)?
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{} {args:?} in pod failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Starts a process in a pod's container (kept until the pod goes).
    pub fn spawn(&self, index: usize, args: &[&str]) -> anyhow::Result<Child> {
        self.command(index, args)?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pod process")
    }

    /// Like [`SimNode::spawn`], with its output piped (for `wait_with_output`).
    pub fn spawn_piped(&self, index: usize, args: &[&str]) -> anyhow::Result<Child> {
        self.command(index, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pod process")
    }

    /// Starts a long-running process in a pod, owned by the pod.
    pub fn start_process(&mut self, index: usize, args: &[&str]) -> anyhow::Result<()> {
        let child = self.spawn(index, args)?;
        self.pods[index].children.push(child);
        Ok(())
    }

    /// Runs a process in a pod's container to completion.
    pub fn run(&self, index: usize, args: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command(index, args)?
            .output()
            .context("running pod process")?;
        if !out.status.success() {
            bail!(
                "{args:?} in pod failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}
