//! The direction of imports, checked: api → config → provider → (image,
//! metrics) → controller → operator, with the HostFactory plugin on api and
//! config only. A module may import only from the modules its row allows; a
//! test reads every source file and fails on an import against the flow, so
//! "adapters never see Kubernetes" and "the plugin never reaches into a
//! controller" stay true without anyone remembering them.

use std::collections::BTreeSet;

/// Which top-level modules each top-level module may import from (besides
/// itself). Leaves with no crate imports (`failpoint`, `kube_client`,
/// `leader`) may be used from anywhere.
pub const ALLOWED: &[(&str, &[&str])] = &[
    ("api", &[]),
    ("config", &["api", "kube_client"]),
    ("provider", &["api", "config", "failpoint"]),
    ("image", &["api", "config", "provider"]),
    ("metrics", &["api", "config", "provider", "image"]),
    ("http", &["metrics"]),
    (
        "controller",
        &[
            "api",
            "config",
            "provider",
            "image",
            "metrics",
            "failpoint",
            "kube_client",
        ],
    ),
    ("hostfactory", &["api", "config", "kube_client"]),
    (
        "operator",
        &[
            "api",
            "config",
            "provider",
            "image",
            "metrics",
            "controller",
            "http",
            "kube_client",
            "leader",
            "failpoint",
        ],
    ),
    ("failpoint", &[]),
    ("kube_client", &[]),
    ("leader", &[]),
];

/// The top-level modules `source` (a file of module `module`) imports from
/// that its row of [`ALLOWED`] does not allow; `crate::x` anywhere in code
/// counts, comments do not.
pub fn upward_imports(module: &str, source: &str) -> BTreeSet<String> {
    let allowed: BTreeSet<&str> = ALLOWED
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, a)| a.iter().copied().collect())
        .unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module && !allowed.contains(name.as_str()) {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).expect("src/ is readable");
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_module_imports_against_the_flow() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut violations = Vec::new();
        let mut checked = 0;
        for file in files {
            let rel = file.strip_prefix(&src).expect("under src/");
            let first = rel.components().next().expect("a path");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if !ALLOWED.iter().any(|(m, _)| *m == module) {
                continue; // lib.rs, main.rs and this file
            }
            checked += 1;
            let text = std::fs::read_to_string(&file).expect("a source file");
            for up in upward_imports(&module, &text) {
                violations.push(format!("{} imports crate::{up}", rel.display()));
            }
        }
        assert!(checked > 50, "found only {checked} files to check");
        assert!(
            violations.is_empty(),
            "imports against the flow:\n{}",
            violations.join("\n")
        );
    }

    #[test]
    fn a_deliberate_upward_import_is_caught() {
        let provider_file = "use crate::api::Machine;\nuse crate::controller::Context; // upward\n";
        assert_eq!(
            upward_imports("provider", provider_file),
            BTreeSet::from(["controller".to_string()])
        );
        let plugin = "use crate::controller::request::plan;\n// crate::operator in a comment\n";
        assert_eq!(
            upward_imports("hostfactory", plugin),
            BTreeSet::from(["controller".to_string()])
        );
        assert!(upward_imports("controller", "use crate::provider::MachineProvider;").is_empty());
        assert!(upward_imports("api", "use crate::config::OperatorConfig;").contains("config"));
    }
}
