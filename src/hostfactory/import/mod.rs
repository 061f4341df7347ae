//! `hostforge hf import-templates FILE… [--out DIR]`: moves a site's existing
//! `awsprov_templates.json` files (IBM's AWS provider, open-hostfactory-plugin)
//! to MachineTemplate manifests, with a Secret for each user data script.
//!
//! File priority follows the plugin: `{provider}inst_templates` over
//! `{provider}type_templates` over `{provider}prov_templates` over
//! `templates`, JSON or YAML; a templateId defined in several files is taken
//! from the highest-priority one and the others are reported as overridden. A
//! directory argument stands for the template files in it. Every field that is
//! not mapped is reported on stderr and in a comment at the top of the
//! manifest; `--strict` makes any such field fail the import.
//!
//! User data scripts are read only from the template file's directory (and
//! below) unless `--allow-outside`, and only up to EC2's 16 KiB. Files written
//! with `--out` are created new (an existing file or a symlink in the way is
//! an error, never overwritten or followed), mode 0600 when they hold a
//! Secret. A closed stdout (`| head`) ends the import with an error, not a
//! panic.

pub mod fields;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value};

pub use fields::{convert, convert_with, Converted, Note, OFFERED_LABEL};

/// Arguments of `hostforge hf import-templates`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Template files (JSON or YAML) or directories holding them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write one `<name>.yaml` per template into this directory (created if
    /// missing) instead of one YAML stream on stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Namespace to put into the manifests.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Fail (exit 1) when any field could not be mapped.
    #[arg(long)]
    pub strict: bool,
    /// Read userDataScript files outside the template file's directory too.
    #[arg(long)]
    pub allow_outside: bool,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not JSON/YAML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A template could not be converted at all.
    #[error("{path}: {message}")]
    Template {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `--strict` and some fields were not mapped.
    #[error("{0} fields were not mapped (see above) and --strict is set")]
    Strict(usize),
    /// Writing the output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One template definition and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its priority (higher wins).
    pub priority: u8,
    /// The template object.
    pub template: Map<String, Value>,
}

/// A converted template with its origin and everything to report about it.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The file it was taken from.
    pub path: PathBuf,
    /// The conversion.
    pub converted: Converted,
    /// Files whose definition of the same templateId lost to this one.
    pub overridden: Vec<PathBuf>,
}

/// The priority of a template file by its name (without extension): `…inst_templates`
/// 3, `…type_templates` 2, `…prov_templates` 1, anything else 0.
pub fn priority(path: &Path) -> u8 {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if stem.ends_with("inst_templates") {
        3
    } else if stem.ends_with("type_templates") {
        2
    } else if stem.ends_with("prov_templates") {
        1
    } else {
        0
    }
}

/// The template files a path stands for: itself, or the `*templates.{json,yaml,yml}`
/// files of a directory, sorted.
pub fn expand(path: &Path) -> Result<Vec<PathBuf>, ImportError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read = std::fs::read_dir(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            ["json", "yaml", "yml"]
                .iter()
                .any(|ext| name.ends_with(&format!("templates.{ext}")))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The template objects of one file's text: `{"templates": [...]}` or a bare list.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Map<String, Value>>, ImportError> {
    let parse_err = |message: String| ImportError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let value: Value = if yaml {
        serde_yaml::from_str(text).map_err(|e| parse_err(e.to_string()))?
    } else {
        serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?
    };
    let list = match value {
        Value::Object(mut top) => top
            .remove("templates")
            .ok_or_else(|| parse_err("no \"templates\" list at the top level".into()))?,
        other => other,
    };
    let Value::Array(items) = list else {
        return Err(parse_err("\"templates\" is not a list".into()));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(m) => Ok(m),
            other => Err(parse_err(format!(
                "templates[{i}] is not an object: {other}"
            ))),
        })
        .collect()
}

/// Reads every file, keeps the highest-priority definition of each templateId
/// (a later file wins a tie) and converts them, in templateId order.
pub fn import(files: &[PathBuf], namespace: Option<&str>) -> Result<Vec<Imported>, ImportError> {
    import_with(files, namespace, false)
}

/// [`import`], reading user data scripts outside the template files'
/// directories too when `allow_outside`.
pub fn import_with(
    files: &[PathBuf],
    namespace: Option<&str>,
    allow_outside: bool,
) -> Result<Vec<Imported>, ImportError> {
    let mut sources: Vec<Source> = vec![];
    for arg in files {
        for path in expand(arg)? {
            let text = std::fs::read_to_string(&path).map_err(|source| ImportError::Read {
                path: path.clone(),
                source,
            })?;
            let priority = priority(&path);
            for template in parse_file(&path, &text)? {
                sources.push(Source {
                    path: path.clone(),
                    priority,
                    template,
                });
            }
        }
    }
    let id_of = |s: &Source| {
        s.template
            .get("templateId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut ids: Vec<String> = sources.iter().map(id_of).collect();
    ids.sort();
    ids.dedup();
    let mut out = vec![];
    for id in ids {
        let defs: Vec<&Source> = sources.iter().filter(|s| id_of(s) == id).collect();
        let Some(winner) = defs
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (s.priority, *i))
            .map(|(_, s)| *s)
        else {
            continue;
        };
        let dir = winner.path.parent().unwrap_or(Path::new("."));
        let converted =
            convert_with(&winner.template, dir, namespace, allow_outside).map_err(|message| {
                ImportError::Template {
                    path: winner.path.clone(),
                    message,
                }
            })?;
        let overridden = defs
            .iter()
            .filter(|s| !std::ptr::eq(**s, winner))
            .map(|s| s.path.clone())
            .collect();
        out.push(Imported {
            path: winner.path.clone(),
            converted,
            overridden,
        });
    }
    let mut names: Vec<&str> = out.iter().map(|i| i.converted.name.as_str()).collect();
    names.sort();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ImportError::Template {
            path: PathBuf::from(pair[0]),
            message: format!(
                "two templateIds map to the same name {:?}; rename one",
                pair[0]
            ),
        });
    }
    Ok(out)
}

/// The report lines of one template: its unmapped fields and overridden copies.
pub fn report(imported: &Imported) -> Vec<String> {
    let c = &imported.converted;
    let mut lines: Vec<String> = c
        .notes
        .iter()
        .map(|n| {
            format!(
                "{}: {}: {}: {}",
                imported.path.display(),
                c.template_id,
                n.field,
                n.message
            )
        })
        .collect();
    for p in &imported.overridden {
        lines.push(format!(
            "{}: {}: overridden by {} (higher file priority)",
            p.display(),
            c.template_id,
            imported.path.display()
        ));
    }
    lines
}

/// The YAML of one template's manifests, headed by a comment with its report.
pub fn render(imported: &Imported) -> String {
    let c = &imported.converted;
    let mut text = format!(
        "# Imported by `hostforge hf import-templates` from {} (templateId {}).\n",
        imported.path.display(),
        c.template_id
    );
    let notes: Vec<&Note> = c.notes.iter().collect();
    if notes.is_empty() {
        text.push_str("# Every field was mapped.\n");
    } else {
        text.push_str("# Not mapped or changed:\n");
        for n in notes {
            text.push_str(&format!("#   {}: {}\n", n.field, n.message));
        }
    }
    let docs: Vec<&Value> = c
        .secret
        .iter()
        .chain(std::iter::once(&c.template))
        .collect();
    let rendered: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap_or_default())
        .collect();
    text.push_str(&rendered.join("---\n"));
    text
}

/// Runs the import and returns the exit code; manifests go to `--out` or
/// stdout, the report to stderr.
pub fn main(args: ImportArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // With stderr closed too there is nobody left to tell.
            let _ = writeln!(std::io::stderr(), "hostforge hf import-templates: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one report line to stderr; a closed stderr is not worth a panic.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Writes `text` into the new file `path` (never over an existing file or
/// through a symlink), mode 0600 when `secret` (it holds user data).
pub fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), ImportError> {
    let err = |source: std::io::Error| ImportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                err(std::io::Error::new(
                    e.kind(),
                    "exists already; not overwritten (remove it or choose another --out)",
                ))
            } else {
                err(e)
            }
        })?;
    file.write_all(text.as_bytes()).map_err(err)
}

fn run(args: &ImportArgs) -> Result<(), ImportError> {
    let imported = import_with(&args.files, args.namespace.as_deref(), args.allow_outside)?;
    let mut unmapped = 0;
    for i in &imported {
        for line in report(i) {
            say(&line);
        }
        unmapped += i.converted.notes.len();
    }
    if args.strict && unmapped > 0 {
        return Err(ImportError::Strict(unmapped));
    }
    match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| ImportError::Write {
                path: dir.clone(),
                source,
            })?;
            for i in &imported {
                let path = dir.join(format!("{}.yaml", i.converted.name));
                write_new(&path, &render(i), i.converted.secret.is_some())?;
                say(&format!("wrote {}", path.display()));
            }
        }
        None => {
            let stream: Vec<String> = imported.iter().map(render).collect();
            let mut out = std::io::stdout().lock();
            out.write_all(stream.join("---\n").as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| ImportError::Write {
                    path: PathBuf::from("<stdout>"),
                    source,
                })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_give_priorities() {
        assert_eq!(priority(Path::new("/c/awsinst_templates.json")), 3);
        assert_eq!(priority(Path::new("awstype_templates.yaml")), 2);
        assert_eq!(priority(Path::new("awsprov_templates.json")), 1);
        assert_eq!(priority(Path::new("templates.yml")), 0);
    }

    #[test]
    fn the_highest_priority_definition_wins_and_the_rest_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = |vm: &str| {
            format!(
                r#"{{"templates":[{{"templateId":"a","imageId":"ami-12345678","vmType":"{vm}"}}]}}"#
            )
        };
        std::fs::write(dir.path().join("awsprov_templates.json"), t("t3.micro")).expect("w");
        std::fs::write(
            dir.path().join("awsinst_templates.yaml"),
            "templates:\n  - templateId: a\n    imageId: ami-12345678\n    vmType: t3.large\n  - templateId: b\n    imageId: ami-12345678\n    vmType: t3.small\n",
        )
        .expect("w");
        std::fs::write(dir.path().join("templates.json"), t("t3.nano")).expect("w");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("w");
        let out = import(&[dir.path().to_path_buf()], Some("hpc")).expect("imports");
        assert_eq!(out.len(), 2);
        let a = &out[0];
        assert_eq!(
            a.converted.template["spec"]["instanceTypes"][0]["type"],
            "t3.large"
        );
        assert_eq!(a.overridden.len(), 2);
        let lines = report(a);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("templates.json: a: overridden by")),
            "{lines:?}"
        );
        let yaml = render(a);
        assert!(yaml.starts_with("# Imported by"));
        assert!(yaml.contains("kind: MachineTemplate") && yaml.contains("namespace: hpc"));
    }

    #[test]
    fn out_files_are_new_private_when_secret_and_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("a.yaml");
        write_new(&secret, "kind: Secret\n", true).expect("written");
        let mode = std::fs::metadata(&secret)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = write_new(&secret, "other", true).expect_err("exists");
        assert!(again.to_string().contains("not overwritten"), "{again}");
        assert_eq!(
            std::fs::read_to_string(&secret).expect("read"),
            "kind: Secret\n"
        );
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").expect("write");
        let link = dir.path().join("b.yaml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_new(&link, "through the link", false).expect_err("a symlink is in the way");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
    }

    #[test]
    fn bad_files_name_themselves() {
        let p = Path::new("x.json");
        assert!(parse_file(p, "{").is_err());
        let e = parse_file(p, r#"{"other": []}"#).expect_err("no templates");
        assert!(e.to_string().contains("templates"));
        let e = parse_file(p, r#"{"templates": [1]}"#).expect_err("not objects");
        assert!(e.to_string().contains("templates[0]"));
        assert_eq!(
            parse_file(p, r#"[{"templateId": "a"}]"#)
                .expect("bare list")
                .len(),
            1
        );
    }
}
