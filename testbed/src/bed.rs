//! One real control plane (etcd + kube-apiserver) and one EC2/SSM simulator
//! (moto) per test binary, started on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::certs;
use super::process::{self, free_port, port_open, Proc};

/// Admin bearer token written into the apiserver's token file (test-only).
const ADMIN_TOKEN: &str = "hostforge-testbed-admin";

/// The running peers of one test binary and where to reach them.
pub struct TestBed {
    /// The checkout (for `crds/`, `examples/`, `hack/`).
    pub root: PathBuf,
    /// Folder with kube-apiserver, kubectl, etcd and helm.
    pub bin_dir: PathBuf,
    /// Working directory (certs, etcd data, logs, kubeconfig); removed at exit.
    pub dir: PathBuf,
    /// Admin kubeconfig for kubectl, helm and kube::Client.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub apiserver_url: String,
    /// `http://127.0.0.1:<port>` of moto.
    pub moto_url: String,
    /// Kept so the children stay owned (they are killed at exit).
    _procs: Mutex<Vec<Proc>>,
}

impl TestBed {
    /// A kubectl command with this bed's kubeconfig.
    pub fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Runs kubectl to completion and returns its output, whatever the exit code.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running kubectl {args:?}: {e}"))
    }

    /// A helm command with this bed's kubeconfig and its own cache folders.
    pub fn helm_cmd(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("helm"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }
}

/// The bed of this test binary, started on first call. A failed start is
/// remembered, so every later test fails at once with the same message.
pub fn bed() -> Result<&'static TestBed, String> {
    static BED: OnceLock<Result<TestBed, String>> = OnceLock::new();
    BED.get_or_init(start).as_ref().map_err(Clone::clone)
}

fn start() -> Result<TestBed, String> {
    let root = super::repo_root();
    let bin_dir = std::env::var_os("HOSTFORGE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/bin"));
    for bin in ["kube-apiserver", "etcd", "kubectl"] {
        if !bin_dir.join(bin).exists() {
            return Err(format!(
                "{bin} not found in {}: run `make testbed` (hack/build-k8s.sh) first",
                bin_dir.display()
            ));
        }
    }
    let moto_python = std::env::var_os("HOSTFORGE_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/moto-venv/bin/python"));
    if !moto_python.exists() {
        return Err(format!(
            "moto's python not found at {}: run `make testbed` (hack/moto.sh install) first",
            moto_python.display()
        ));
    }

    // Integration tests get a tmp folder inside target/; the demo example does not.
    let base = target_tmpdir()
        .unwrap_or_else(std::env::temp_dir)
        .join("hostforge-testbed");
    sweep_stale(&base);
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    process::remove_at_exit(&dir);

    let mut procs = Vec::new();
    let moto_port = free_port()?;
    let mut moto_cmd = Command::new(&moto_python);
    moto_cmd.arg(root.join("hack/moto_launcher.py")).args([
        "-H",
        "127.0.0.1",
        "-p",
        &moto_port.to_string(),
    ]);
    procs.push(process::spawn("moto", moto_cmd, &dir)?);

    let plane = start_control_plane(&bin_dir, &dir)?;
    procs.extend(plane.procs);

    let moto = procs
        .first_mut()
        .ok_or_else(|| "moto process missing".to_string())?;
    process::wait_until(moto, "listening", Duration::from_secs(60), || {
        port_open(moto_port)
    })?;

    Ok(TestBed {
        root,
        bin_dir,
        dir,
        kubeconfig: plane.kubeconfig,
        apiserver_url: plane.apiserver_url,
        moto_url: format!("http://127.0.0.1:{moto_port}"),
        _procs: Mutex::new(procs),
    })
}

/// A second control plane (its own etcd and kube-apiserver, so its own
/// `kube-system` namespace and cluster identity) sharing the first bed's
/// moto, started on first call: two clusters in one cloud account, for tests
/// of what one cluster may do to the other's machines.
pub fn second_bed() -> Result<&'static TestBed, String> {
    static SECOND: OnceLock<Result<TestBed, String>> = OnceLock::new();
    SECOND
        .get_or_init(|| {
            let first = bed()?;
            let dir = first.dir.join("second");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let plane = start_control_plane(&first.bin_dir, &dir)?;
            Ok(TestBed {
                root: first.root.clone(),
                bin_dir: first.bin_dir.clone(),
                dir,
                kubeconfig: plane.kubeconfig,
                apiserver_url: plane.apiserver_url,
                moto_url: first.moto_url.clone(),
                _procs: Mutex::new(plane.procs),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// One running etcd + kube-apiserver and how to reach it.
struct ControlPlane {
    procs: Vec<Proc>,
    kubeconfig: PathBuf,
    apiserver_url: String,
}

/// Starts etcd and a kube-apiserver on free ports with their state, certs
/// and kubeconfig under `dir`, and waits until the apiserver is ready.
fn start_control_plane(bin_dir: &Path, dir: &Path) -> Result<ControlPlane, String> {
    let mut procs = Vec::new();
    let etcd_client = free_port()?;
    let etcd_peer = free_port()?;
    let client_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let mut etcd_cmd = Command::new(bin_dir.join("etcd"));
    etcd_cmd
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .args(["--unsafe-no-fsync", "--log-level", "warn"]);
    let mut etcd = process::spawn("etcd", etcd_cmd, dir)?;
    process::wait_until(&mut etcd, "listening", Duration::from_secs(30), || {
        port_open(etcd_client)
    })?;
    procs.push(etcd);

    let certs = certs::generate(dir)?;
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
    )
    .map_err(|e| format!("writing token file: {e}"))?;
    let api_port = free_port()?;
    let mut api_cmd = Command::new(bin_dir.join("kube-apiserver"));
    api_cmd
        .args(["--etcd-servers", &client_url])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
        ])
        .args(["--secure-port", &api_port.to_string()])
        .arg("--cert-dir")
        .arg(dir.join("apiserver-certs"))
        .arg("--tls-cert-file")
        .arg(&certs.serving_cert)
        .arg("--tls-private-key-file")
        .arg(&certs.serving_key)
        .arg("--token-auth-file")
        .arg(&tokens)
        .args(["--authorization-mode", "RBAC"])
        .args(["--service-account-issuer", "https://kubernetes.default.svc"])
        .arg("--service-account-key-file")
        .arg(&certs.sa_pub)
        .arg("--service-account-signing-key-file")
        .arg(&certs.sa_key)
        .args(["--service-cluster-ip-range", "10.0.0.0/24"])
        .args(["--disable-admission-plugins", "ServiceAccount"])
        .args(["--profiling=false", "--v=1"]);
    let mut apiserver = process::spawn("kube-apiserver", api_cmd, dir)?;

    let apiserver_url = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &apiserver_url, &certs.ca_file)?;
    let kubectl = bin_dir.join("kubectl");
    process::wait_until(
        &mut apiserver,
        "ready (/readyz)",
        Duration::from_secs(90),
        || {
            Command::new(&kubectl)
                .env("KUBECONFIG", &kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .output()
                .map(|o| o.status.success() && o.stdout.starts_with(b"ok"))
                .unwrap_or(false)
        },
    )?;
    procs.push(apiserver);
    Ok(ControlPlane {
        procs,
        kubeconfig,
        apiserver_url,
    })
}

/// `<target>/tmp` (what cargo names `CARGO_TARGET_TMPDIR` for integration
/// tests) when this process is a test binary in `<target>/<profile>/deps/`;
/// `None` for examples and other programs.
fn target_tmpdir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    Some(deps.parent()?.parent()?.join("tmp"))
}

fn write_kubeconfig(path: &Path, server: &str, ca_file: &Path) -> Result<(), String> {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: admin\n    namespace: default\ncurrent-context: testbed\n",
        ca = ca_file.display()
    );
    std::fs::write(path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Removes working folders of earlier test processes that no longer run
/// (a SIGKILLed test binary cannot clean up after itself).
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
