//! The VM's side of the conversation, read back from its serial console: the markers /init
//! prints (initramfs.rs writes them) and the payload's result lines, `TA-MATRIX ` followed by
//! one JSON object each.

use serde_json::Value;

/// /init has started (the line carries the guest's uptime and `uname -r`).
pub const INIT: &str = "TA-MATRIX-INIT";
/// The controllers enabled in the root cgroup's subtree_control.
pub const CGROUP: &str = "TA-MATRIX-CGROUP";
/// `TA-MATRIX-MODULE <name> loaded|failed|builtin|absent [insmod's message]`.
pub const MODULE: &str = "TA-MATRIX-MODULE";
/// `TA-MATRIX-EXIT <code>`: the payload command's exit code.
pub const EXIT: &str = "TA-MATRIX-EXIT";
/// `TA-MATRIX-DMESG-BEGIN` / `-END` around the kernel log, printed when the payload failed.
pub const DMESG: &str = "TA-MATRIX-DMESG";
/// A payload result: this prefix, then one JSON object.
pub const RESULT: &str = "TA-MATRIX ";

/// What a module did in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleStatus {
    pub name: String,
    /// "loaded", "failed", "builtin" or "absent".
    pub status: String,
    pub detail: String,
}

/// Everything the console said that matters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Console {
    pub init_started: bool,
    /// Guest uptime when /init started, seconds.
    pub init_uptime: Option<f64>,
    pub cgroup_controllers: Option<String>,
    pub modules: Vec<ModuleStatus>,
    /// The payload's result lines.
    pub lines: Vec<Value>,
    /// Result lines whose JSON did not parse (with the error).
    pub bad_lines: Vec<String>,
    pub exit: Option<i32>,
}

/// Reads a whole console log. Lines end in `\r\n` on a serial console; a kernel message may
/// share a line with other output, so markers count only at a line's start.
pub fn parse(text: &str) -> Console {
    let mut c = Console::default();
    for line in text
        .lines()
        .map(|l| l.trim_matches(|ch: char| ch == '\r' || ch.is_whitespace()))
    {
        if let Some(json) = line.strip_prefix(RESULT) {
            match serde_json::from_str::<Value>(json) {
                Ok(v) if v.is_object() => c.lines.push(v),
                Ok(_) => c.bad_lines.push(format!("not a JSON object: {line}")),
                Err(e) => c.bad_lines.push(format!("{e}: {line}")),
            }
        } else if let Some(rest) = marker(line, INIT) {
            c.init_started = true;
            c.init_uptime = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("uptime="))
                .and_then(|u| u.parse().ok());
        } else if let Some(rest) = marker(line, CGROUP) {
            c.cgroup_controllers = Some(rest.to_owned());
        } else if let Some(rest) = marker(line, MODULE) {
            let mut words = rest.splitn(3, ' ');
            if let (Some(name), Some(status)) = (words.next(), words.next()) {
                c.modules.push(ModuleStatus {
                    name: name.to_owned(),
                    status: status.to_owned(),
                    detail: words.next().unwrap_or_default().trim().to_owned(),
                });
            }
        } else if let Some(rest) = marker(line, EXIT) {
            c.exit = rest.trim().parse().ok();
        }
    }
    c
}

/// The rest of `line` after `name` when `name` is the whole first word.
fn marker<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?;
    (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim_start())
}

impl Console {
    /// Names of the modules with this status.
    pub fn modules_with(&self, status: &str) -> Vec<&str> {
        self.modules
            .iter()
            .filter(|m| m.status == status)
            .map(|m| m.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_run_reads_back() {
        let log = "\
SeaBIOS (version 1.16.2-debian-1.16.2-1)\r
[    0.000000] Linux version 6.1.0-57-cloud-amd64\r
TA-MATRIX-INIT uptime=1.87 release=6.1.0-57-cloud-amd64\r
TA-MATRIX-CGROUP cpuset cpu memory pids\r
TA-MATRIX-MODULE ipv6 builtin\r
TA-MATRIX-MODULE llc loaded\r
TA-MATRIX-MODULE nft_ct failed insmod: can't insert 'x': unknown symbol in module\r
triage-agent 0.1.0\r
TA-MATRIX {\"check\":\"smoke\",\"ok\":true}\r
TA-MATRIX {\"check\": broken\r
TA-MATRIX [1,2]\r
[   3.1] TA-MATRIX {\"not\":\"at the start\"}\r
TA-MATRIX-EXIT 0\r
";
        let c = parse(log);
        assert!(c.init_started);
        assert_eq!(c.init_uptime, Some(1.87));
        assert_eq!(
            c.cgroup_controllers.as_deref(),
            Some("cpuset cpu memory pids")
        );
        assert_eq!(c.modules_with("loaded"), ["llc"]);
        assert_eq!(c.modules_with("builtin"), ["ipv6"]);
        assert_eq!(
            c.modules[2].detail,
            "insmod: can't insert 'x': unknown symbol in module"
        );
        assert_eq!(c.lines, [serde_json::json!({"check": "smoke", "ok": true})]);
        assert_eq!(c.bad_lines.len(), 2);
        assert_eq!(c.exit, Some(0));
    }

    #[test]
    fn a_vm_that_never_finished_has_no_exit() {
        let c = parse("TA-MATRIX-INIT uptime=2.0 release=x\nTA-MATRIX-EXITED 3\n");
        assert!(c.init_started);
        assert_eq!(c.exit, None);
        assert!(!parse("").init_started);
    }
}
