//! The operator under test, run as a child process exactly as it runs in a
//! cluster (`hostforge run --config …`), scoped to one test's namespace so
//! that its metrics describe that test alone.
//!
//! One type, [`OperatorProcess`], serves every use: a single operator per test
//! ([`OperatorProcess::start`]), several replicas with leader election, each
//! under its own name and log, optionally authenticated as a ServiceAccount
//! ([`OperatorProcess::replica`]), and the bench's release operator, whose pid
//! it samples and which it SIGKILLs ([`Launch`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::process::{self, free_port, Proc};
use super::TestEnv;

/// How long [`OperatorProcess::start`] waits for `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of the `hostforge` binary to run: `HOSTFORGE_OPERATOR_BIN` if set,
/// else the one cargo built beside the running test binary or example
/// (`<target>/<profile>/hostforge`, built for every integration test).
pub fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTFORGE_OPERATOR_BIN") {
        // Absolute, so it still names the binary from the HostFactory
        // scripts, which run in their own work directory (`make bench`
        // passes `target/release/hostforge`).
        let p = PathBuf::from(p);
        return std::path::absolute(&p).unwrap_or(p);
    }
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        // Test binaries live in `<profile>/deps`, examples in `<profile>/examples`.
        let profile = match dir.file_name()?.to_str()? {
            "deps" | "examples" => dir.parent()?,
            _ => dir,
        };
        Some(profile.join("hostforge"))
    });
    beside_exe.unwrap_or_else(|| super::repo_path("target/debug/hostforge"))
}

/// The operator config the tests use: one AWS provider instance on moto.
pub fn default_config(env: &TestEnv, image_cache_ttl: &str) -> String {
    format!(
        "clusterName: {ns}\nproviders:\n  - name: aws-default\n    type: aws\n    region: {region}\n    endpointUrl: {url}\nimageCacheTtl: {image_cache_ttl}\n",
        ns = env.namespace,
        region = super::REGION,
        url = env.bed.moto_url,
    )
}

/// [`default_config`] with EC2 behind `fwd` (moto's URL replaced by the
/// forwarder's), polling every 500 ms, sweeping every `sweep`, then `extra`
/// (more config lines, each ending in a newline).
pub fn config_via(
    env: &TestEnv,
    fwd: &crate::forwarder::Forwarder,
    sweep: &str,
    extra: &str,
) -> String {
    format!(
        "{}pollInterval: 500ms\nsweepInterval: {sweep}\n{extra}",
        default_config(env, "5m").replace(&env.bed.moto_url, fwd.endpoint())
    )
}

/// A namespace with the CRDs, a forwarder in front of moto and an operator
/// reaching EC2 through it (sweeping every 5 s): the bed of the tests that
/// assert the exact parameters a launch sends.
pub async fn launch_bed(name: &str) -> (TestEnv, crate::forwarder::Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = crate::forwarder::Forwarder::start(&env.bed.moto_url);
    let op = OperatorProcess::start(&env, &config_via(&env, &fwd, "5s", "")).await;
    (env, fwd, op)
}

/// [`default_config`] with quick loops (poll every 500 ms, sweep every 2 s),
/// for tests that wait on the poller or the sweep.
pub fn quick_config(env: &TestEnv) -> String {
    format!(
        "{}pollInterval: 500ms\nsweepInterval: 2s\n",
        default_config(env, "5m")
    )
}

/// The `hostforge run` command every test starts: scoped to the test's
/// namespace, metrics on `metrics_port`, the dummy credentials moto accepts (so
/// the SDK never waits on IMDS), text logs unless `extra_args` choose, and
/// `RUST_LOG` from `log_var` (when set) or `default_log`.
fn run_command(
    env: &TestEnv,
    config_path: &Path,
    metrics_port: u16,
    launch: &Launch<'_>,
) -> Command {
    let kubeconfig = launch.kubeconfig.unwrap_or(&env.bed.kubeconfig);
    let mut cmd = Command::new(operator_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(config_path)
        .args(["--namespace", &env.namespace])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(launch.extra_args)
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "RUST_LOG",
            std::env::var(launch.log_var).unwrap_or_else(|_| launch.default_log.into()),
        );
    if !launch.extra_args.contains(&"--log-format") {
        cmd.args(["--log-format", "text"]);
    }
    for (k, v) in launch.vars {
        cmd.env(k, v);
    }
    cmd
}

/// How to start one operator process; [`Launch::new`] gives the defaults
/// of a test's single operator.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// Its name in logs and the stem of its log and config files.
    pub name: String,
    /// The operator config (YAML).
    pub config: &'a str,
    /// Kubeconfig to run with; the bed's admin one when `None`.
    pub kubeconfig: Option<&'a Path>,
    /// Arguments after `run --config … --namespace … --metrics-addr …`.
    pub extra_args: &'a [&'a str],
    /// Extra environment variables (e.g. failpoints).
    pub vars: &'a [(&'a str, &'a str)],
    /// Environment variable that overrides `RUST_LOG`.
    pub log_var: &'a str,
    /// `RUST_LOG` when `log_var` is unset.
    pub default_log: &'a str,
    /// Folder of the log file; the bed's working folder when `None`.
    pub log_dir: Option<PathBuf>,
}

impl<'a> Launch<'a> {
    /// The single operator of `env`'s test: named after the namespace, admin
    /// kubeconfig, `RUST_LOG` from `HOSTFORGE_TEST_LOG` or `info,hostforge=debug`.
    pub fn new(env: &TestEnv, config: &'a str) -> Launch<'a> {
        Launch {
            name: format!("operator-{}", env.namespace),
            config,
            kubeconfig: None,
            extra_args: &[],
            vars: &[],
            log_var: "HOSTFORGE_TEST_LOG",
            default_log: "info,hostforge=debug",
            log_dir: None,
        }
    }
}

/// A running `hostforge run` child; killed when dropped, and its log printed
/// when that happens during a panic.
pub struct OperatorProcess {
    proc: Proc,
    /// Its name in logs (unique per test bed).
    pub name: String,
    /// Port of its /healthz, /readyz and /metrics server.
    pub metrics_port: u16,
}

impl OperatorProcess {
    /// Starts the operator for `env`'s namespace with `config` (YAML) and waits
    /// until `/readyz` answers 200.
    pub async fn start(env: &TestEnv, config: &str) -> OperatorProcess {
        Self::start_with_env(env, config, &[]).await
    }

    /// Starts the operator with extra environment variables (e.g. failpoints)
    /// and waits until `/readyz` answers 200.
    pub async fn start_with_env(
        env: &TestEnv,
        config: &str,
        vars: &[(&str, &str)],
    ) -> OperatorProcess {
        Self::start_launch(
            env,
            Launch {
                vars,
                ..Launch::new(env, config)
            },
        )
        .await
    }

    /// Starts `launch` and waits until `/readyz` answers 200; panics with the
    /// operator's log when it exits or is not ready within a minute.
    pub async fn start_launch(env: &TestEnv, launch: Launch<'_>) -> OperatorProcess {
        let mut op = Self::launch(env, launch);
        let port = op.metrics_port;
        let ready = tokio::task::spawn_blocking(move || {
            process::wait_until(&mut op.proc, "ready (/readyz)", READY_TIMEOUT, || {
                http_get(port, "/readyz").is_some_and(|(code, _)| code == 200)
            })
            .map(|()| op)
        })
        .await
        .expect("operator start task");
        ready.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the operator without waiting for it (for start-up failure tests).
    pub fn spawn(env: &TestEnv, config: &str, extra_args: &[&str]) -> OperatorProcess {
        Self::spawn_with_env(env, config, extra_args, &[])
    }

    /// [`OperatorProcess::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        env: &TestEnv,
        config: &str,
        extra_args: &[&str],
        vars: &[(&str, &str)],
    ) -> OperatorProcess {
        Self::launch(
            env,
            Launch {
                extra_args,
                vars,
                ..Launch::new(env, config)
            },
        )
    }

    /// Runs the operator with failpoint `point` enabled (a build with the
    /// `failpoints` feature) until it aborts there, within `timeout`; panics
    /// with its log when it exits otherwise or never does.
    pub async fn crash_at(env: &TestEnv, config: &str, point: &str, timeout: Duration) {
        let mut op = Self::spawn_with_env(env, config, &[], &[("HOSTFORGE_FAILPOINTS", point)]);
        let status = op.wait_exit(timeout).await;
        let log = op.log();
        assert!(
            status.is_some_and(|s| !s.success()),
            "operator did not abort at {point}: {status:?}\n{log}"
        );
        assert!(
            log.contains(&format!("failpoint {point}: aborting")),
            "{log}"
        );
    }

    /// One of several replicas in `env`'s namespace, named `<name>-<unique>`
    /// so each has its own log, run with `kubeconfig` (e.g. a
    /// ServiceAccount's) and `extra_args`, without waiting for it.
    pub fn replica(
        env: &TestEnv,
        name: &str,
        config: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> OperatorProcess {
        Self::launch(
            env,
            Launch {
                name: format!("{name}-{}", super::unique_name("r")),
                kubeconfig: Some(kubeconfig),
                extra_args,
                vars: &[("NO_COLOR", "1")],
                default_log: "info",
                ..Launch::new(env, config)
            },
        )
    }

    /// Starts `launch` without waiting for it.
    pub fn launch(env: &TestEnv, launch: Launch<'_>) -> OperatorProcess {
        let config_path = env.bed.dir.join(format!("{}.yaml", launch.name));
        std::fs::write(&config_path, launch.config).expect("writing operator config");
        let metrics_port = free_port().expect("free port");
        let cmd = run_command(env, &config_path, metrics_port, &launch);
        let log_dir = launch.log_dir.as_deref().unwrap_or(&env.bed.dir);
        std::fs::create_dir_all(log_dir).expect("creating the operator's log folder");
        let proc = process::spawn(&launch.name, cmd, log_dir).expect("starting the operator");
        OperatorProcess {
            proc,
            name: launch.name,
            metrics_port,
        }
    }

    /// Its process id, for /proc sampling.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Everything it logged so far (up to the last 4 MiB).
    pub fn log(&self) -> String {
        self.proc.log_tail(1 << 22)
    }

    /// Where its log is written.
    pub fn log_path(&self) -> &Path {
        &self.proc.log
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

    /// Waits until `/readyz` answers 200; false on timeout or exit.
    pub async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.exited().is_none() {
            if self.get("/readyz").await.map(|(c, _)| c) == Some(200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// GET `path` on its metrics server without blocking the runtime.
    async fn get(&self, path: &'static str) -> Option<(u16, String)> {
        let port = self.metrics_port;
        tokio::task::spawn_blocking(move || http_get(port, path))
            .await
            .ok()
            .flatten()
    }

    /// The `/metrics` text; panics with the operator's log when it does not answer.
    pub fn metrics(&self) -> String {
        match http_get(self.metrics_port, "/metrics") {
            Some((200, body)) => body,
            other => panic!(
                "GET /metrics failed: {other:?}\noperator log:\n{}",
                self.proc.log_tail(4000)
            ),
        }
    }

    /// Sum of every sample of `name` whose labels contain all of `labels`
    /// (`key="value"` strings), e.g. `metric("hostforge_aws_calls_total",
    /// &["operation=\"GetParameter\""])`; panics when it does not answer.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics(), name, labels)
    }

    /// [`OperatorProcess::metric`], `None` when the process does not answer.
    pub fn try_metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        match http_get(self.metrics_port, "/metrics") {
            Some((200, body)) => Some(sum_metric(&body, name, labels)),
            _ => None,
        }
    }

    /// [`OperatorProcess::metric`] off the runtime's thread, 0 when the
    /// process does not answer (for the bench, which must not stop).
    pub async fn metric_async(&self, name: &str, labels: &[&str]) -> f64 {
        let body = self.get("/metrics").await.map(|(_, b)| b);
        sum_metric(&body.unwrap_or_default(), name, labels)
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

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the
    /// status (None on timeout) and how long the shutdown took.
    pub async fn terminate(&mut self, timeout: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        // SAFETY: kill(2) with the pid of our own child has no memory-safety
        // preconditions; at worst the pid is already reaped and it fails.
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
        let status = self.wait_exit(timeout).await;
        (status, started.elapsed())
    }

    /// SIGKILL, as a node failure or OOM kill would: the process gets no
    /// chance to release anything.
    pub fn kill9(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Peak resident memory (VmHWM) in KiB and CPU time used so far, from /proc.
    pub fn usage(&self) -> Option<(u64, Duration)> {
        let pid = self.pid();
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
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.proc.log_tail(16000));
        }
        self.kill9();
    }
}

/// Sums the samples of a Prometheus text exposition that match `name` and `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            if series_name != name || !labels.iter().all(|lab| series.contains(lab)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 (no client crate needed).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
