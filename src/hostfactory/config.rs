//! The plugin's configuration, `hostforge.yaml` in the provider's configuration
//! directory, and the Kubernetes client built from it.
//!
//! HostFactory (Symphony) names that directory `HF_PROVIDER_CONFDIR`; LSF's
//! resource connector names it `PRO_CONF_DIR` (its files usually sit in a
//! `conf/` folder below it, which is looked at too). `--config` overrides both.
//!
//! ```yaml
//! namespace: hpc                                   # where templates and requests live
//! kubeconfig: /opt/hostforge/kubeconfig            # optional; default $KUBECONFIG, ~/.kube/config, in-cluster
//! context: prod                                    # optional kubeconfig context
//! templateSelector: hostforge.io/hf-offered=true   # optional; default every template in the namespace
//! timeout: 30s                                     # optional; each operation's deadline
//! finishedRetention: 1h                            # optional; "off" keeps finished requests
//! rebalanceGracePeriod: 10m                        # optional; "off": rebalance recommendations not reported
//! scheduledEventMargin: 5m                         # optional; kept before a scheduled retirement/maintenance
//! driftGracePeriod: 30m                            # optional; "off": hosts drifted from their template not reported
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Deserialize;

use super::reclaim::GraceRules;
use super::HfError;

/// The configuration file's name inside the configuration directory.
pub const FILE_NAME: &str = "hostforge.yaml";
/// Default deadline of one operation: HostFactory kills slow scripts itself,
/// and an answer after that is wasted.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The plugin's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// Namespace of the offered MachineTemplates and the scheduler's requests.
    pub namespace: String,
    /// Kubeconfig file; `None`: the standard inference ($KUBECONFIG,
    /// ~/.kube/config, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig; `None`: its current context.
    pub context: Option<String>,
    /// Label selector choosing the offered templates; `None`: all of them.
    pub template_selector: Option<String>,
    /// Deadline of one operation.
    pub timeout: Duration,
    /// How long a finished scheduler-owned request is kept before it is
    /// deleted (see [`super::expire`]); `None`: never.
    pub finished_retention: Option<Duration>,
    /// How getReturnRequests computes the grace of hosts at risk (see
    /// [`super::reclaim`]).
    pub grace: GraceRules,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    namespace: String,
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    template_selector: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    finished_retention: Option<String>,
    #[serde(default)]
    rebalance_grace_period: Option<String>,
    #[serde(default)]
    scheduled_event_margin: Option<String>,
    #[serde(default)]
    drift_grace_period: Option<String>,
}

impl HfConfig {
    /// Finds and reads the configuration: `explicit` if given, else
    /// `hostforge.yaml` (or `conf/hostforge.yaml`) in `HF_PROVIDER_CONFDIR` or
    /// `PRO_CONF_DIR`.
    pub fn locate(explicit: Option<&Path>) -> Result<(PathBuf, HfConfig), HfError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => find_in_env(|k| std::env::var_os(k).map(PathBuf::from))?,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| HfError::ConfigInvalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config = HfConfig::from_yaml(&path, &text)?;
        Ok((path, config))
    }

    /// Parses the YAML text of `path`.
    pub fn from_yaml(path: &Path, text: &str) -> Result<HfConfig, HfError> {
        let invalid = |message: String| HfError::ConfigInvalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if raw.namespace.trim().is_empty() {
            return Err(invalid("namespace: must not be empty".into()));
        }
        let timeout = match raw.timeout.as_deref() {
            None => DEFAULT_TIMEOUT,
            Some(t) => crate::config::duration::parse_duration(t)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| invalid(format!("timeout: {t:?} is not a duration like 30s")))?,
        };
        let finished_retention = match raw.finished_retention.as_deref().map(str::trim) {
            None => Some(super::expire::DEFAULT_RETENTION),
            Some("off") => None,
            Some(t) => Some(crate::config::duration::parse_duration(t).ok_or_else(|| {
                invalid(format!(
                    "finishedRetention: {t:?} is not a duration like 1h (or off)"
                ))
            })?),
        };
        let defaults = GraceRules::default();
        let rebalance = match raw.rebalance_grace_period.as_deref().map(str::trim) {
            None => defaults.rebalance,
            Some("off") => None,
            Some(t) => Some(crate::config::duration::parse_duration(t).ok_or_else(|| {
                invalid(format!(
                    "rebalanceGracePeriod: {t:?} is not a duration like 10m (or off)"
                ))
            })?),
        };
        let scheduled_margin = match raw.scheduled_event_margin.as_deref() {
            None => defaults.scheduled_margin,
            Some(t) => crate::config::duration::parse_duration(t).ok_or_else(|| {
                invalid(format!(
                    "scheduledEventMargin: {t:?} is not a duration like 5m"
                ))
            })?,
        };
        let drift = match raw.drift_grace_period.as_deref().map(str::trim) {
            None => defaults.drift,
            Some("off") => None,
            Some(t) => Some(crate::config::duration::parse_duration(t).ok_or_else(|| {
                invalid(format!(
                    "driftGracePeriod: {t:?} is not a duration like 30m (or off)"
                ))
            })?),
        };
        // A relative kubeconfig is relative to the configuration file, so the
        // plugin folder can be moved as a whole.
        let kubeconfig = raw.kubeconfig.map(|k| match path.parent() {
            Some(dir) if k.is_relative() => dir.join(k),
            _ => k,
        });
        Ok(HfConfig {
            namespace: raw.namespace,
            kubeconfig,
            context: raw.context,
            template_selector: raw.template_selector.filter(|s| !s.trim().is_empty()),
            timeout,
            finished_retention,
            grace: GraceRules {
                rebalance,
                scheduled_margin,
                drift,
            },
        })
    }

    /// A client for the configured cluster.
    pub async fn client(&self) -> Result<Client, HfError> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| HfError::KubeConfig(format!("{}: {e}", path.display())))?;
                let options = KubeConfigOptions {
                    context: self.context.clone(),
                    ..Default::default()
                };
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| HfError::KubeConfig(format!("{}: {e}", path.display())))?
            }
            None if self.context.is_some() => {
                let options = KubeConfigOptions {
                    context: self.context.clone(),
                    ..Default::default()
                };
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| HfError::KubeConfig(e.to_string()))?
            }
            None => Config::infer()
                .await
                .map_err(|e| HfError::KubeConfig(e.to_string()))?,
        };
        crate::kube_client::one_shot_client(config).map_err(|e| HfError::KubeConfig(e.to_string()))
    }
}

/// The configuration file named by the environment `var` lookup.
fn find_in_env(var: impl Fn(&str) -> Option<PathBuf>) -> Result<PathBuf, HfError> {
    let dirs: Vec<PathBuf> = ["HF_PROVIDER_CONFDIR", "PRO_CONF_DIR"]
        .iter()
        .filter_map(|k| var(k))
        .collect();
    if dirs.is_empty() {
        return Err(HfError::ConfigMissing(
            "neither HF_PROVIDER_CONFDIR nor PRO_CONF_DIR is set; pass --config FILE".into(),
        ));
    }
    let candidates: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| [d.join(FILE_NAME), d.join("conf").join(FILE_NAME)])
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            HfError::ConfigMissing(format!(
                "{FILE_NAME} not found (tried {})",
                tried.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses_and_relative_kubeconfig_follows_the_file() {
        let c = HfConfig::from_yaml(
            Path::new("/etc/hf/hostforge.yaml"),
            "namespace: hpc\nkubeconfig: kube.yaml\ncontext: prod\ntemplateSelector: a=b\ntimeout: 5s\n",
        )
        .expect("valid");
        assert_eq!(c.namespace, "hpc");
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/hf/kube.yaml")));
        assert_eq!(c.context.as_deref(), Some("prod"));
        assert_eq!(c.template_selector.as_deref(), Some("a=b"));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.finished_retention, Some(Duration::from_secs(3600)));
        let off = HfConfig::from_yaml(
            Path::new("h.yaml"),
            "namespace: a\nfinishedRetention: off\n",
        )
        .expect("valid");
        assert_eq!(off.finished_retention, None);
        let short = HfConfig::from_yaml(
            Path::new("h.yaml"),
            "namespace: a\nfinishedRetention: 10m\n",
        )
        .expect("valid");
        assert_eq!(short.finished_retention, Some(Duration::from_secs(600)));
    }

    #[test]
    fn grace_rules_are_read_with_defaults_and_off() {
        let read = |y: &str| {
            HfConfig::from_yaml(Path::new("h.yaml"), y)
                .expect("valid")
                .grace
        };
        assert_eq!(read("namespace: a\n"), GraceRules::default());
        assert_eq!(
            GraceRules::default(),
            GraceRules {
                rebalance: Some(Duration::from_secs(600)),
                scheduled_margin: Duration::from_secs(300),
                drift: Some(Duration::from_secs(1800)),
            }
        );
        let set = read("namespace: a\nrebalanceGracePeriod: 2m\nscheduledEventMargin: 0s\n");
        assert_eq!(set.rebalance, Some(Duration::from_secs(120)));
        assert_eq!(set.scheduled_margin, Duration::ZERO);
        assert_eq!(
            read("namespace: a\nrebalanceGracePeriod: off\n").rebalance,
            None
        );
        assert_eq!(
            read("namespace: a\ndriftGracePeriod: 5m\n").drift,
            Some(Duration::from_secs(300))
        );
        assert_eq!(read("namespace: a\ndriftGracePeriod: off\n").drift, None);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = HfConfig::from_yaml(Path::new("h.yaml"), "namespace: hpc\n").expect("valid");
        assert_eq!((c.kubeconfig, c.template_selector), (None, None));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let err = |y: &str| {
            HfConfig::from_yaml(Path::new("h.yaml"), y)
                .expect_err("invalid")
                .to_string()
        };
        assert!(err("namespace: a\nnamespaces: b\n").contains("namespaces"));
        assert!(err("kubeconfig: x\n").contains("namespace"));
        assert!(err("namespace: ''\n").contains("namespace"));
        assert!(err("namespace: a\ntimeout: soon\n").contains("timeout"));
        assert!(err("namespace: a\nfinishedRetention: never\n").contains("finishedRetention"));
        assert!(err("namespace: a\nrebalanceGracePeriod: soon\n").contains("rebalanceGracePeriod"));
        assert!(err("namespace: a\ndriftGracePeriod: later\n").contains("driftGracePeriod"));
        assert!(err("namespace: a\nscheduledEventMargin: off\n").contains("scheduledEventMargin"));
    }

    #[test]
    fn the_file_is_found_in_either_directory_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join(FILE_NAME), "namespace: a\n").expect("write");
        let lsf = |k: &str| (k == "PRO_CONF_DIR").then(|| dir.path().to_path_buf());
        assert_eq!(find_in_env(lsf).expect("found"), conf.join(FILE_NAME));
        let none = find_in_env(|_| None).expect_err("unset");
        assert!(none.to_string().contains("HF_PROVIDER_CONFDIR"));
        let empty = tempfile::tempdir().expect("tempdir");
        let missing = find_in_env(|_| Some(empty.path().to_path_buf())).expect_err("missing");
        assert!(missing.to_string().contains(FILE_NAME));
    }
}
