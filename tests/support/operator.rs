//! The operator under test, run as a child process exactly as it runs in a
//! cluster (`hostforge run --config …`), scoped to one test's namespace so
//! that its metrics describe that test alone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::process::{self, free_port, Proc};
use super::TestEnv;

/// Path of the `hostforge` binary built by cargo for this test run.
pub fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTFORGE_OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_hostforge") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/hostforge"),
    }
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

/// The `hostforge run` command every test starts: scoped to the test's
/// namespace, metrics on `metrics_port`, the dummy credentials moto accepts (so
/// the SDK never waits on IMDS), text logs unless `extra_args` choose, and
/// `RUST_LOG` from `HOSTFORGE_TEST_LOG` or `default_log`.
pub fn run_command(
    env: &TestEnv,
    config_path: &Path,
    metrics_port: u16,
    kubeconfig: &Path,
    extra_args: &[&str],
    default_log: &str,
) -> Command {
    let mut cmd = Command::new(operator_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(config_path)
        .args(["--namespace", &env.namespace])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(extra_args)
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "RUST_LOG",
            std::env::var("HOSTFORGE_TEST_LOG").unwrap_or_else(|_| default_log.into()),
        );
    if !extra_args.contains(&"--log-format") {
        cmd.args(["--log-format", "text"]);
    }
    cmd
}

/// A running `hostforge run` child.
pub struct Operator {
    proc: Proc,
    /// Port of its /healthz, /readyz and /metrics server.
    pub metrics_port: u16,
}

impl Operator {
    /// Starts the operator for `env`'s namespace with `config` (YAML) and waits
    /// until `/readyz` answers 200.
    pub async fn start(env: &TestEnv, config: &str) -> Operator {
        Self::start_with_env(env, config, &[]).await
    }

    /// Starts the operator with extra environment variables (e.g. failpoints)
    /// and waits until `/readyz` answers 200.
    pub async fn start_with_env(env: &TestEnv, config: &str, vars: &[(&str, &str)]) -> Operator {
        let mut op = Self::spawn_with_env(env, config, &[], vars);
        let port = op.metrics_port;
        let ready = tokio::task::spawn_blocking(move || {
            process::wait_until(
                &mut op.proc,
                "ready (/readyz)",
                Duration::from_secs(60),
                || http_get(port, "/readyz").is_some_and(|(code, _)| code == 200),
            )
            .map(|()| op)
        })
        .await
        .expect("operator start task");
        ready.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the operator without waiting for it (for start-up failure tests).
    pub fn spawn(env: &TestEnv, config: &str, extra_args: &[&str]) -> Operator {
        Self::spawn_with_env(env, config, extra_args, &[])
    }

    /// [`Operator::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        env: &TestEnv,
        config: &str,
        extra_args: &[&str],
        vars: &[(&str, &str)],
    ) -> Operator {
        let config_path = env.bed.dir.join(format!("operator-{}.yaml", env.namespace));
        std::fs::write(&config_path, config).expect("writing operator config");
        let metrics_port = free_port().expect("free port");
        let mut cmd = run_command(
            env,
            &config_path,
            metrics_port,
            &env.bed.kubeconfig,
            extra_args,
            "info,hostforge=debug",
        );
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let name = format!("operator-{}", env.namespace);
        let proc = process::spawn(&name, cmd, &env.bed.dir).expect("starting the operator");
        Operator { proc, metrics_port }
    }

    /// The `/metrics` text.
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
    /// (`key="value"` strings), e.g. `metric("hostforge_aws_calls_total", &["operation=\"GetParameter\""])`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics(), name, labels)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.proc.child.id() as i32, libc::SIGTERM);
        }
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return (Some(status), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (None, started.elapsed())
    }

    /// Waits for the process to exit by itself (start-up failures).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Everything the operator logged so far.
    pub fn log(&self) -> String {
        self.proc.log_tail(1 << 20)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- operator log ---\n{}", self.proc.log_tail(16000));
        }
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
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
