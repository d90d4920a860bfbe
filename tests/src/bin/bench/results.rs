//! The results table: every scenario adds its rows as it finishes; the run ends by writing one
//! Markdown table (scenario, ours, peers, goal, spread) to the results file, which the README
//! links. A scenario that fails leaves no row, so a missing row is visible.

use std::{fmt::Write as _, path::Path, sync::Mutex};

/// One line of the table.
pub struct Row {
    pub scenario: String,
    /// What the agent reached (a ratio to detached, a latency, a size).
    pub ours: String,
    /// The same job done by other tools in the same run, or "-".
    pub peers: String,
    pub goal: String,
    /// Median's spread over the rounds (min-max), and the counts behind it.
    pub spread: String,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// Adds a row (and prints it, so a run's output has the table's content as it goes).
pub fn add(row: Row) {
    println!(
        "  => {} | ours {} | peers {} | goal {} | {}",
        row.scenario, row.ours, row.peers, row.goal, row.spread
    );
    if let Ok(mut rows) = ROWS.lock() {
        rows.push(row);
    }
}

/// `n` with thousands separators, as the README prints figures.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// "0.912 (goal met)" or "0.912 (below goal)".
pub fn against(ratio: f64, goal: f64) -> String {
    format!(
        "{ratio:.3}{}",
        if ratio >= goal { "" } else { " (below goal)" }
    )
}

/// "612,345 events/s" or "412,345 events/s (below goal)": a rate against the least it should
/// reach.
pub fn at_least(value: f64, goal: f64, unit: &str) -> String {
    format!(
        "{} {unit}{}",
        thousands(value),
        if value >= goal { "" } else { " (below goal)" }
    )
}

/// Writes the table to `path` (creating its directory), with what the run was.
pub fn write(path: &Path, header: &str) -> anyhow::Result<()> {
    let rows = ROWS
        .lock()
        .map_err(|_| anyhow::anyhow!("results poisoned by a failed scenario"))?;
    let mut out = String::new();
    let _ = writeln!(out, "# triage-agent bench results\n\n{header}\n");
    let _ = writeln!(out, "| scenario | ours | peers | goal | spread |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for r in rows.iter() {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&r.scenario),
            cell(&r.ours),
            cell(&r.peers),
            cell(&r.goal),
            cell(&r.spread)
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, out)?;
    println!("\nresults table: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(272_776.4), "272,776");
        assert_eq!(thousands(-1_234_567.0), "-1,234,567");
    }

    #[test]
    fn a_rate_below_its_goal_says_so() {
        assert_eq!(
            at_least(612_345.4, 500_000.0, "events/s"),
            "612,345 events/s"
        );
        assert_eq!(
            at_least(499_999.0, 500_000.0, "events/s"),
            "499,999 events/s (below goal)"
        );
    }
}
