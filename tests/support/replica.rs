//! Operator processes run the way a Deployment runs them: several replicas
//! with leader election, each under its own name and log, optionally with a
//! ServiceAccount token instead of the admin kubeconfig (to prove RBAC).
//!
//! [`super::Operator`] keys its log by namespace, so two of them in one
//! namespace would share a log; a [`Replica`] has a name of its own.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::operator::{http_get, run_command, sum_metric};
use super::process::{self, free_port, Proc};
use super::TestEnv;

/// One `hostforge run` child.
pub struct Replica {
    proc: Proc,
    /// Its name in logs (unique per test bed).
    pub name: String,
    /// Port of its /healthz, /readyz and /metrics server.
    pub metrics_port: u16,
}

impl Replica {
    /// Starts `hostforge run` for `env`'s namespace with `config` (YAML),
    /// `kubeconfig` and `extra_args`, without waiting for it.
    pub fn spawn(
        env: &TestEnv,
        name: &str,
        config: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Replica {
        let name = format!("{name}-{}", super::unique_name("r"));
        let config_path = env.bed.dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config).expect("writing operator config");
        let metrics_port = free_port().expect("free port");
        let mut cmd = run_command(
            env,
            &config_path,
            metrics_port,
            kubeconfig,
            extra_args,
            "info",
        );
        cmd.env("NO_COLOR", "1");
        let proc = process::spawn(&name, cmd, &env.bed.dir).expect("starting the operator");
        Replica {
            proc,
            name,
            metrics_port,
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.proc.log_tail(1 << 22)
    }

    /// Waits until its log contains `needle`; false on timeout or exit.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline || self.exited().is_some() {
                return self.log().contains(needle);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.exited().is_none() {
            let port = self.metrics_port;
            let code = tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
                .await
                .ok()
                .flatten()
                .map(|(c, _)| c);
            if code == Some(200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Sum of the samples of metric `name` matching `labels`; None when the
    /// process does not answer.
    pub fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        match http_get(self.metrics_port, "/metrics") {
            Some((200, body)) => Some(sum_metric(&body, name, labels)),
            _ => None,
        }
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory (VmHWM) in KiB and CPU time used so far, from /proc.
    pub fn usage(&self) -> Option<(u64, Duration)> {
        let pid = self.proc.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): utime is the
        // 12th and stime the 13th of them, in clock ticks (100 Hz on Linux).
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((hwm, Duration::from_millis(ticks * 10)))
    }

    /// SIGKILL: the process gets no chance to release anything.
    pub fn kill9(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.proc.child.id() as i32, libc::SIGTERM);
        }
        self.wait_exit(timeout).await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.proc.log_tail(12000));
        }
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// Helm against the bed (`helm_cmd` has the kubeconfig and private cache dirs).
pub fn helm(env: &TestEnv, args: &[&str]) -> Output {
    env.bed
        .helm_cmd()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running helm {args:?}: {e}"))
}

/// Helm that must succeed; returns stdout.
pub fn helm_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = helm(env, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubeconfig that authenticates as ServiceAccount `namespace/name` with a
/// token from the TokenRequest API (`kubectl create token`), so what the
/// operator may do is exactly what that account's RBAC grants.
pub fn service_account_kubeconfig(env: &TestEnv, namespace: &str, name: &str) -> PathBuf {
    let token = env.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=2h"]);
    let token = token.trim();
    assert!(!token.is_empty(), "TokenRequest returned no token");
    let path = env
        .bed
        .dir
        .join(format!("kubeconfig-sa-{namespace}-{name}"));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context:\n    cluster: testbed\n    user: sa\n    namespace: {namespace}\ncurrent-context: sa\n",
        server = env.bed.apiserver_url,
        ca = env.bed.dir.join("ca.crt").display(),
    );
    std::fs::write(&path, yaml).expect("writing the service-account kubeconfig");
    path
}

/// `kubectl replace -f -` with `json` on stdin (a whole object); panics on failure.
pub fn kubectl_replace(env: &TestEnv, json: &serde_json::Value) {
    use std::io::Write;
    let mut child = env
        .bed
        .kubectl_cmd()
        .args(["replace", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl replace");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(json.to_string().as_bytes())
        .expect("writing to kubectl");
    let out = child.wait_with_output().expect("kubectl replace");
    assert!(
        out.status.success(),
        "kubectl replace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
