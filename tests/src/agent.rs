//! The real `triage-agent` binary run against a simulated node, and its CLI, as a user would
//! run them. Assertions are made on what `triage-agent query` prints.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::simnode::SimNode;

/// The static release binary `cargo xtask build` produces (the image's binary, built once for
/// every test); `TRIAGE_AGENT_BIN` overrides it.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIAGE_AGENT_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/triage-agent")
}

/// A TCP port free on loopback right now, for a process the test starts next to bind.
///
/// Ports come from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), never from it: a port picked by binding port 0
/// is released before the agent binds it, and in between any `bind(0)` or outgoing connection
/// on the host may take it ("Address already in use" in a parallel run; a client connecting
/// to a port nobody listens on can even connect to itself). Below the range only explicit
/// binds compete. Within this process no port is handed out twice; a port something else
/// holds is skipped.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // A window of up to 10,000 ports just below the range, above the well-known ones.
    let high = ephemeral_low.clamp(2048, 65536);
    let low = high.saturating_sub(10_000).max(1024);
    let span = high - low;
    // Processes started together begin at different places in the window.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low + (start + n) % span)?;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{high}")
}

/// A running node agent; SIGTERM and wait on drop.
pub struct AgentProcess {
    child: Option<Child>,
    pub addr: String,
    /// Where its /metrics listens (unless the caller chose with --metrics-listen).
    pub metrics: String,
    log: PathBuf,
    /// The binary this agent runs; its CLI is run from the same one.
    bin: PathBuf,
    /// `--timeout` for every CLI command (the CLI's own default when `None`).
    cli_timeout: Option<Duration>,
}

impl AgentProcess {
    /// Starts the agent for `node`. Does not wait for anything.
    pub fn start(node: &SimNode) -> anyhow::Result<AgentProcess> {
        Self::start_with(node, &[])
    }

    /// Starts the agent with extra flags.
    pub fn start_with(node: &SimNode, extra: &[&str]) -> anyhow::Result<AgentProcess> {
        Self::start_full(node, &node.name, extra, &[])
    }

    /// Starts an agent for the node named `node_name` on the simulated node's machine: with
    /// several names, one machine plays several nodes (each agent owns its node's pods).
    pub fn start_as(
        node: &SimNode,
        node_name: &str,
        extra: &[&str],
    ) -> anyhow::Result<AgentProcess> {
        Self::start_full(node, node_name, extra, &[])
    }

    /// Starts the agent with extra flags and environment variables.
    pub fn start_with_env(
        node: &SimNode,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<AgentProcess> {
        Self::start_full(node, &node.name, extra, env)
    }

    /// Starts an agent for `node_name` with extra flags and environment variables.
    pub fn start_full(
        node: &SimNode,
        node_name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<AgentProcess> {
        Self::start_binary(agent_binary(), node, node_name, extra, env)
    }

    /// Starts the agent binary `bin` (not [`agent_binary`]) for `node_name` with extra flags
    /// and environment variables; its CLI runs from `bin` too.
    pub fn start_binary(
        bin: PathBuf,
        node: &SimNode,
        node_name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<AgentProcess> {
        anyhow::ensure!(
            bin.exists(),
            "{} missing: build it with `cargo xtask build` (cargo xtask test does)",
            bin.display()
        );
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        // Agents of parallel tests each get their own metrics port.
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let metrics_args: Vec<&str> = if extra.contains(&"--metrics-listen") {
            Vec::new()
        } else {
            vec!["--metrics-listen", &metrics]
        };
        let log = std::env::temp_dir().join(format!("{node_name}-agent.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bin);
        // Exactly the DaemonSet's capabilities, as in production.
        crate::caps::restrict_to_daemonset(&mut cmd)?;
        let child = cmd
            .args([
                "agent",
                "--node-name",
                node_name,
                "--listen",
                &addr,
                "--log",
                "info,triage_agent=debug",
            ])
            .args(&metrics_args)
            .args(extra)
            .env("KUBECONFIG", node.kubeconfig())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting the agent")?;
        // Spawning returned after the exec: the agent runs with what it will have.
        let held = crate::caps::effective(child.id())?;
        let want = crate::caps::expected_mask()?;
        anyhow::ensure!(
            held == want,
            "the agent holds capabilities {held:#x}, not the DaemonSet's {want:#x} (as far as \
             this machine grants them)"
        );
        Ok(AgentProcess {
            child: Some(child),
            addr,
            metrics,
            log,
            bin,
            cli_timeout: None,
        })
    }

    /// Gives every later CLI command `--timeout` (for a slow machine: software emulation).
    pub fn set_cli_timeout(&mut self, timeout: Duration) {
        self.cli_timeout = Some(timeout);
    }

    /// The agent's exit status once it has exited (`None` while it runs).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Publishes this agent as the DaemonSet's pod `pod` on `node_name` to the API server,
    /// whose pods/portforward to its gRPC port (9742) reaches this process.
    pub fn publish(&self, api: &crate::apiserver::ApiServer, pod: &str, node_name: &str) {
        api.apply_pod(crate::apiserver::agent_pod_object(pod, node_name));
        match self.addr.parse() {
            Ok(addr) => api.forward_port("triage-agent", pod, 9742, addr),
            Err(e) => eprintln!("agent address {}: {e}", self.addr),
        }
    }

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).args(["--agent", &self.addr]);
        if let Some(t) = self.cli_timeout {
            cmd.arg("--timeout").arg(format!("{}ms", t.as_millis()));
        }
        cmd.output().context("running the CLI")
    }

    /// `triage-agent status -o json` for this agent.
    pub fn status(&self) -> anyhow::Result<Value> {
        let out = self.cli(&["status", "-o", "json"])?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        v.get(0).cloned().context("empty status")
    }

    /// Waits until the agent answers Status with its probes attached (and metadata in sync if
    /// asked), failing with its log after `timeout`.
    pub fn wait_ready(&mut self, synced: bool, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("agent exited with {status}:\n{}", self.log());
            }
            if let Ok(s) = self.status()
                && (!synced || s["metadata"]["synced"] == true)
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("agent not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls Status until `accept` holds on it, failing with the last Status and the log.
    pub fn status_until(
        &self,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if accept(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "status never matched; last:\n{}\nagent log:\n{}",
                    serde_json::to_string_pretty(&s)?,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many times the agent has made the periodic read `which` so far (Status).
    pub fn drains(&self, which: Drains) -> anyhow::Result<u64> {
        let s = self.status()?;
        which.of(&s)
    }

    /// Waits until the agent's count of `which` is at least `from + n`: `n` reads made after
    /// `from` was read. Fails with the last Status and the log after `timeout`.
    pub fn wait_drains_past(
        &self,
        which: Drains,
        from: u64,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let field = which.field();
        // An agent that does not count them fails here, not after the timeout.
        which.of(&self.status()?)?;
        self.status_until(timeout, |s| {
            which.of(s).is_ok_and(|now| now >= from.saturating_add(n))
        })
        .with_context(|| format!("waiting for {n} more {field} past {from}"))
    }

    /// Waits for `n` more of the agent's periodic reads `which` than it has made now: the wait
    /// for "a drain later" before a negative check (nothing changed, nothing counted twice),
    /// instead of a sleep. Call it after the action; `n` = 2 lets the first drain, which may
    /// have begun before, finish and what it handed on reach the store. Bounded by
    /// [`DRAIN_WAIT`].
    pub fn wait_more_drains(&self, which: Drains, n: u64) -> anyhow::Result<Value> {
        let from = self.drains(which)?;
        self.wait_drains_past(which, from, n, DRAIN_WAIT)
    }

    /// Waits until the agent knows exactly `pods` live pods of its node.
    pub fn wait_pods(&self, pods: u64, timeout: Duration) -> anyhow::Result<Value> {
        self.status_until(timeout, |s| s["metadata"]["pods"] == pods)
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `triage-agent query --pod NAME -n NS -o json`.
    pub fn query(&self, namespace: &str, pod: &str) -> anyhow::Result<Value> {
        let out = self.cli(&["query", "--pod", pod, "-n", namespace, "-o", "json"])?;
        if !out.status.success() {
            bail!("query failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("query output is not JSON")
    }

    /// Polls `query` until `accept` holds, failing with the last answer and the agent log.
    pub fn query_until(
        &self,
        namespace: &str,
        pod: &str,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.query(namespace, pod)?;
            if accept(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "query for {namespace}/{pod} never matched; last answer:\n{}\nagent log:\n{}",
                    serde_json::to_string_pretty(&v)?,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGKILL (no chance to flush or detach) and waits.
    pub fn kill9(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill().context("SIGKILL")?;
        Ok(child.wait()?)
    }

    /// `GET path` on the agent's metrics listener: (status code, body).
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&self.metrics).context("metrics listener")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("not an HTTP response")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status code")?;
        Ok((code, body.to_owned()))
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("agent did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The longest wait for a few more of the agent's periodic reads: far more than a handful of
/// them take on a busy machine (flow tables every 500 ms, DNS tables every second, cgroups every
/// `--sample-interval`).
pub const DRAIN_WAIT: Duration = Duration::from_secs(60);

/// A periodic read the agent counts in Status, which a test can wait on instead of sleeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drains {
    /// Drains of the kernel's flow tables (`flow_table_drains`, every 500 ms): repeats of
    /// refusals, timeouts and drops, and pods' kernel losses.
    FlowTables,
    /// Drains of the kernel's DNS tables by the DNS task (`dns_table_drains`, once a second),
    /// with the pods' lookup counters.
    DnsTables,
    /// Sweeps of the cgroup sampler over every sampled container (`cgroup_sweeps`, once per
    /// `--sample-interval`): OOM and throttling counters.
    CgroupSweeps,
}

impl Drains {
    /// Its field in `triage-agent status -o json`.
    pub fn field(self) -> &'static str {
        match self {
            Drains::FlowTables => "flow_table_drains",
            Drains::DnsTables => "dns_table_drains",
            Drains::CgroupSweeps => "cgroup_sweeps",
        }
    }

    /// Its count in a Status; an error when the agent does not report it (an older binary).
    pub fn of(self, status: &Value) -> anyhow::Result<u64> {
        status[self.field()].as_u64().with_context(|| {
            format!(
                "Status has no {}: the agent binary predates it (rebuild it: cargo xtask build)",
                self.field()
            )
        })
    }
}

/// Records of a `query -o json` answer matching a kind and direction.
pub fn records<'a>(answer: &'a Value, kind: &str, direction: &str) -> Vec<&'a Value> {
    answer["evidence"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind && e["direction"] == direction)
                .collect()
        })
        .unwrap_or_default()
}

/// Records of a `query -o json` answer of a kind (OOM kills, throttling: no direction).
pub fn of_kind<'a>(answer: &'a Value, kind: &str) -> Vec<&'a Value> {
    answer["evidence"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).collect())
        .unwrap_or_default()
}

/// Runs the CLI as a user with only a kubeconfig would: no `--agent`, `KUBECONFIG` set.
pub fn cli_with_kubeconfig(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(agent_binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("TRIAGE_AGENTS")
        .env_remove("NO_COLOR")
        .output()
        .context("running the CLI")
}

/// Runs the CLI with this kubeconfig in the background (a `watch`), its stdout's lines on a
/// channel as they come; stderr is discarded. Kill the child when done.
pub fn cli_lines_with_kubeconfig(
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(Child, std::sync::mpsc::Receiver<String>)> {
    use std::io::BufRead as _;
    let mut child = Command::new(agent_binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("TRIAGE_AGENTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running the CLI")?;
    let stdout = child.stdout.take().context("the CLI's stdout")?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((child, lines))
}

/// The summed `count` of records (as [`records`] selects them).
pub fn count_of(records: &[&Value]) -> u64 {
    records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}

/// A process's resident memory in MiB (0 when it cannot be read).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
