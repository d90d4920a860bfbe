//! What each signal can do on this node, from the facts the agent found at startup: which
//! kernel programs run (and which in a degraded form) and where the cgroup samplers read.
//! One answer for Status, `/readyz`'s neighbours, `doctor` and the kernel matrix: `full`,
//! `degraded` (with what is lost) or `off` (with why).

use serde::Serialize;

use crate::{
    evidence::Kind,
    probes::{PROGRAMS, ProbeStatus, Role},
    samplers::SignalSource,
};

/// How much of a signal works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Full,
    /// Evidence comes, in a documented reduced form.
    Degraded,
    /// No evidence of this signal on this node.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Degraded => "degraded",
            Mode::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Full, Mode::Degraded, Mode::Off]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// One signal's state on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignalState {
    /// The evidence kind's stable name (`connection_refused`, ...).
    pub signal: &'static str,
    pub mode: Mode,
    /// What is lost (degraded) or why there is nothing (off); empty when full.
    pub detail: String,
    /// Off only because the configuration switched it off (e.g. `--dns-ports none`): not a
    /// fault for readiness.
    #[serde(skip)]
    pub switched_off: bool,
}

/// Collects the reasons a signal is reduced or off.
struct Judge<'a> {
    probes: &'a [ProbeStatus],
    mode: Mode,
    details: Vec<String>,
    /// Every reason it is off is the configuration's.
    switched_off: Option<bool>,
}

impl<'a> Judge<'a> {
    fn new(probes: &'a [ProbeStatus]) -> Self {
        Judge {
            probes,
            mode: Mode::Full,
            details: Vec::new(),
            switched_off: None,
        }
    }

    fn probe(&self, name: &str) -> Option<&'a ProbeStatus> {
        self.probes.iter().find(|p| p.name == name)
    }

    fn worse(&mut self, mode: Mode, detail: String) {
        self.worse_by(mode, detail, false);
    }

    fn worse_by(&mut self, mode: Mode, detail: String, configured: bool) {
        self.mode = self.mode.max(mode);
        if !self.details.contains(&detail) {
            self.details.push(detail);
        }
        if mode == Mode::Off {
            self.switched_off = Some(self.switched_off.unwrap_or(true) && configured);
        }
    }

    /// A program runs degraded: "name: what is lost (why)", one entry for several programs
    /// degraded the same way ("dns_egress, dns_ingress: ...").
    fn degraded_program(&mut self, name: &str, text: &str) {
        self.mode = self.mode.max(Mode::Degraded);
        let tail = format!(": {text}");
        match self.details.iter_mut().find(|d| d.ends_with(&tail)) {
            Some(d) => {
                let names = d[..d.len() - tail.len()].to_owned();
                *d = format!("{names}, {name}{tail}");
            }
            None => self.details.push(format!("{name}{tail}")),
        }
    }

    /// The signal needs this program: off without it, degraded when it runs degraded.
    fn needs(&mut self, name: &str) {
        match self.probe(name) {
            Some(p) if p.attached => {
                if let Some(d) = &p.degraded {
                    self.degraded_program(name, &format!("{} ({})", d.loses, d.rejected));
                }
            }
            Some(p) => {
                let why = p.error.as_deref().unwrap_or("not attached");
                self.worse_by(
                    Mode::Off,
                    format!("{name} is not attached: {why}"),
                    p.switched_off,
                );
            }
            None => self.worse(Mode::Off, format!("{name} is not loaded")),
        }
    }

    /// Without this program the signal loses `loses`.
    fn wants(&mut self, name: &str, loses: &str) {
        match self.probe(name) {
            Some(p) if p.attached => {
                if let Some(d) = &p.degraded {
                    self.degraded_program(name, &format!("{} ({})", d.loses, d.rejected));
                }
            }
            Some(p) => {
                let why = p.error.as_deref().unwrap_or("not attached");
                self.worse(Mode::Degraded, format!("{loses} ({name}: {why})"));
            }
            None => self.worse(Mode::Degraded, format!("{loses} ({name} is not loaded)")),
        }
    }

    fn done(self, signal: &'static str) -> SignalState {
        SignalState {
            signal,
            mode: self.mode,
            detail: self.details.join("; "),
            switched_off: self.switched_off == Some(true),
        }
    }
}

/// Every signal's state, in the order docs/kernels.md lists them.
pub fn states(probes: &[ProbeStatus], sources: &[SignalSource]) -> Vec<SignalState> {
    let by_programs = |kind: Kind| {
        let mut judge = Judge::new(probes);
        for program in PROGRAMS {
            for (_, role) in program.serves.iter().filter(|(k, _)| *k == kind) {
                match role {
                    Role::Needed => judge.needs(program.name),
                    Role::Wanted { loses } => judge.wants(program.name, loses),
                }
            }
        }
        judge
    };
    let refused = by_programs(Kind::ConnectionRefused);
    let timeout = by_programs(Kind::ConnectionTimeout);
    let drop = by_programs(Kind::PacketDrop);
    let dns = by_programs(Kind::Dns);

    // OOM kills have two sources: the kernel's event (programs) and memory.events (samplers).
    let source = |signal: &str| sources.iter().find(|s| s.signal == signal);
    let memory = source("oom_kill").filter(|s| s.hierarchy != "unavailable");
    let kernel_event = PROGRAMS
        .iter()
        .filter(|p| p.serves.iter().any(|(k, _)| *k == Kind::OomKill))
        .all(|p| probes.iter().any(|s| s.name == p.name && s.attached));
    let mut oom = Judge::new(probes);
    match (kernel_event, memory) {
        (true, Some(_)) => oom = by_programs(Kind::OomKill),
        (true, None) => oom.worse(
            Mode::Degraded,
            "no cgroup hierarchy has the memory controller: kills carry no limit or usage".into(),
        ),
        (false, Some(_)) => oom = by_programs(Kind::OomKill),
        (false, None) => oom.worse(
            Mode::Off,
            "neither the kernel's OOM event nor a memory controller is available".into(),
        ),
    }

    let mut cpu = Judge::new(probes);
    if source("cpu_throttling").is_none_or(|s| s.hierarchy == "unavailable") {
        cpu.worse(
            Mode::Off,
            "no cgroup hierarchy has the cpu controller".to_owned(),
        );
    }

    vec![
        refused.done("connection_refused"),
        timeout.done("connection_timeout"),
        drop.done("packet_drop"),
        dns.done("dns"),
        oom.done("oom_kill"),
        cpu.done("cpu_throttling"),
    ]
}

#[cfg(test)]
mod tests {
    use super::{Mode, states};
    use crate::probes::{Degraded, PROGRAMS, ProbeStatus};
    use crate::samplers::SignalSource;

    fn all_attached() -> Vec<ProbeStatus> {
        PROGRAMS
            .iter()
            .map(|p| ProbeStatus {
                name: p.name.to_owned(),
                hook: p.hook.to_string(),
                attached: true,
                error: None,
                degraded: None,
                switched_off: false,
            })
            .collect()
    }

    fn sources() -> Vec<SignalSource> {
        ["oom_kill", "cpu_throttling"]
            .into_iter()
            .map(|signal| SignalSource {
                signal,
                hierarchy: "v2",
                ..SignalSource::default()
            })
            .collect()
    }

    fn mode_of(probes: &[ProbeStatus], sources: &[SignalSource], signal: &str) -> (Mode, String) {
        let s = states(probes, sources)
            .into_iter()
            .find(|s| s.signal == signal)
            .expect("signal listed");
        (s.mode, s.detail)
    }

    fn set(probes: &mut [ProbeStatus], name: &str, f: impl Fn(&mut ProbeStatus)) {
        f(probes.iter_mut().find(|p| p.name == name).expect("program"));
    }

    #[test]
    fn every_signal_is_full_when_everything_runs() {
        let s = states(&all_attached(), &sources());
        assert_eq!(s.len(), 6);
        assert!(
            s.iter()
                .all(|s| s.mode == Mode::Full && s.detail.is_empty()),
            "{s:?}"
        );
    }

    #[test]
    fn a_missing_optional_program_degrades_and_says_what_is_lost() {
        let mut p = all_attached();
        set(&mut p, "tcp_send_reset", |p| {
            p.attached = false;
            p.error = Some("no packet addresses (added in Linux 6.10)".into());
        });
        let (mode, detail) = mode_of(&p, &sources(), "connection_refused");
        assert_eq!(mode, Mode::Degraded);
        assert!(detail.contains("connecting side only"), "{detail}");
        assert!(detail.contains("Linux 6.10"), "{detail}");
        assert_eq!(mode_of(&p, &sources(), "connection_timeout").0, Mode::Full);
    }

    #[test]
    fn a_missing_required_program_turns_the_signal_off() {
        let mut p = all_attached();
        set(&mut p, "dns_ingress", |p| {
            p.attached = false;
            p.error = Some("the verifier rejects it: R4 invalid zero-sized read".into());
        });
        let (mode, detail) = mode_of(&p, &sources(), "dns");
        assert_eq!(mode, Mode::Off);
        assert!(detail.contains("zero-sized read"), "{detail}");
        assert!(
            !states(&p, &sources())[3].switched_off,
            "a fault, not configuration"
        );
        // Switched off by configuration (--dns-ports none): off, and not a fault.
        for name in ["dns_egress", "dns_ingress"] {
            set(&mut p, name, |p| {
                p.attached = false;
                p.switched_off = true;
                p.error = Some("DNS capture switched off (no --dns-port)".into());
            });
        }
        let dns = &states(&p, &sources())[3];
        assert_eq!(
            (dns.signal, dns.mode, dns.switched_off),
            ("dns", Mode::Off, true)
        );
    }

    #[test]
    fn a_fallback_program_degrades_with_its_loss_and_the_rejection() {
        let mut p = all_attached();
        set(&mut p, "kfree_skb", |p| {
            p.degraded = Some(Degraded {
                program: "kfree_skb".into(),
                rejected: "no drop reason (added in Linux 5.17)".into(),
                loses: "drops carry a location instead of a reason".into(),
            });
        });
        let (mode, detail) = mode_of(&p, &sources(), "packet_drop");
        assert_eq!(mode, Mode::Degraded);
        assert!(
            detail.contains("location") && detail.contains("5.17"),
            "{detail}"
        );
    }

    #[test]
    fn programs_degraded_the_same_way_are_one_entry() {
        let mut p = all_attached();
        for name in ["dns_egress", "dns_ingress"] {
            set(&mut p, name, |p| {
                p.degraded = Some(Degraded {
                    program: format!("{name}_all"),
                    rejected: "BPF_STX uses reserved fields".into(),
                    loses: "every DNS packet goes to the agent".into(),
                });
            });
        }
        let (mode, detail) = mode_of(&p, &sources(), "dns");
        assert_eq!(mode, Mode::Degraded);
        assert_eq!(
            detail,
            "dns_egress, dns_ingress: every DNS packet goes to the agent (BPF_STX uses reserved fields)"
        );
    }

    #[test]
    fn oom_kills_need_the_event_or_the_controller() {
        let mut p = all_attached();
        set(&mut p, "mark_victim", |p| {
            p.attached = false;
            p.error = Some("gone".into());
        });
        assert_eq!(mode_of(&p, &sources(), "oom_kill").0, Mode::Degraded);
        assert_eq!(mode_of(&p, &[], "oom_kill").0, Mode::Off);
        assert_eq!(mode_of(&all_attached(), &[], "oom_kill").0, Mode::Degraded);
        assert_eq!(mode_of(&all_attached(), &[], "cpu_throttling").0, Mode::Off);
    }
}
