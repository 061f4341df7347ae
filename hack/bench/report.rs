//! The bench's one table and its JSON twin.

use std::path::Path;

use serde_json::json;

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// A figure without a target (shown for context).
    Info,
}

impl Verdict {
    pub fn check(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "",
        }
    }
}

/// One row: a figure beside its target.
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
    pub note: String,
}

/// Everything a run found.
pub struct Report {
    pub rows: Vec<Row>,
    /// Raw figures per scenario, for the JSON.
    pub raw: serde_json::Map<String, serde_json::Value>,
    pub sizes: serde_json::Value,
    pub moto_cpu: Option<f64>,
    pub total_s: f64,
}

impl Report {
    pub fn new(sizes: &impl serde::Serialize) -> Report {
        Report {
            rows: Vec::new(),
            raw: serde_json::Map::new(),
            sizes: serde_json::to_value(sizes).unwrap_or_default(),
            moto_cpu: None,
            total_s: 0.0,
        }
    }

    pub fn add(
        &mut self,
        scenario: &str,
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            scenario: scenario.to_string(),
            metric: metric.into(),
            value: value.into(),
            target: target.into(),
            verdict,
            note: note.into(),
        });
    }

    /// The table, one row per figure; notes on an indented second line.
    pub fn print(&self) {
        let w =
            |f: fn(&Row) -> usize, min: usize| self.rows.iter().map(f).max().unwrap_or(0).max(min);
        let (ws, wm, wv, wt) = (
            w(|r| r.scenario.chars().count(), 8),
            w(|r| r.metric.chars().count(), 6),
            w(|r| r.value.chars().count().min(60), 5),
            w(|r| r.target.chars().count(), 6),
        );
        println!();
        println!("{}", machine_line());
        println!(
            "{:ws$}  {:wm$}  {:wv$}  {:wt$}  result",
            "scenario", "figure", "value", "target"
        );
        println!("{}", "-".repeat(ws + wm + wv + wt + 14));
        for r in &self.rows {
            println!(
                "{:ws$}  {:wm$}  {:wv$}  {:wt$}  {}",
                r.scenario,
                r.metric,
                r.value,
                r.target,
                r.verdict.as_str()
            );
            if !r.note.is_empty() {
                println!("{:ws$}    ↳ {}", "", r.note);
            }
        }
        let missed = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Miss)
            .count();
        let passed = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Pass)
            .count();
        println!(
            "{passed} targets met, {missed} missed; moto CPU {:.0} s over the run; bench took {:.0} s",
            self.moto_cpu.unwrap_or(f64::NAN),
            self.total_s
        );
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({"scenario": r.scenario, "figure": r.metric, "value": r.value,
                       "target": r.target, "result": r.verdict.as_str(), "note": r.note})
            })
            .collect();
        let doc = json!({
            "machine": machine_line(),
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "sizes": self.sizes,
            "rows": rows,
            "raw": self.raw,
            "moto_cpu_seconds": self.moto_cpu,
            "total_seconds": self.total_s,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
    }
}

/// `nproc` and the CPU model, for the table header and the README.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {cpus} CPUs, {model}; load average {}",
        load.join(" ")
    )
}
