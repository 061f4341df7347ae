//! The integration-test bed shared by `tests/`, `hack/` and this crate's own
//! tests: a crate of its own so it is compiled once, not into every test
//! binary.
//!
//! One real control plane (etcd + kube-apiserver built from the Go module
//! proxy) and one moto server per process; each test gets its own namespace
//! through [`TestEnv::new`]. The operator runs as a child process
//! ([`OperatorProcess`]), and calls to moto can go through the
//! fault-injecting [`forwarder`].

mod bed;
mod certs;
pub mod cli;
pub mod cloud_events;
pub mod fixtures;
pub mod forwarder;
pub mod hf;
pub mod hostile;
pub mod machines;
pub mod operator;
mod process;
pub mod wait;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

pub use bed::{bed, second_bed, TestBed};
pub use operator::OperatorProcess;
pub use process::free_port;
pub use wait::wait_for;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Region the simulator and the AWS clients agree on.
pub const REGION: &str = "us-east-1";

/// The public parameter that Amazon Linux 2023 images are published under;
/// moto preloads it with an image its DescribeImages knows.
pub const AL2023_PARAM: &str =
    "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

/// What one test gets: clients for the shared peers and a namespace of its own.
pub struct TestEnv {
    pub bed: &'static TestBed,
    pub client: Client,
    pub namespace: String,
}

impl TestEnv {
    /// Starts the bed if needed and creates a fresh namespace named after the test.
    pub async fn new(name: &str) -> TestEnv {
        TestEnv::on(bed, name).await
    }

    /// [`TestEnv::new`] on the control plane `start` returns (e.g.
    /// [`second_bed`], another cluster sharing the first one's moto).
    pub async fn on(start: fn() -> Result<&'static TestBed, String>, name: &str) -> TestEnv {
        TestEnv::named(start, unique_name(name), name).await
    }

    /// A namespace of the same name as this one on the control plane `start`
    /// returns: the same objects applied to a second cluster (a blue/green
    /// pair, a restore), with their own uids.
    pub async fn twin(&self, start: fn() -> Result<&'static TestBed, String>) -> TestEnv {
        TestEnv::named(start, self.namespace.clone(), "twin").await
    }

    async fn named(
        start: fn() -> Result<&'static TestBed, String>,
        namespace: String,
        label: &str,
    ) -> TestEnv {
        let bed = tokio::task::spawn_blocking(start)
            .await
            .expect("test bed start task")
            .unwrap_or_else(|e| panic!("test bed did not start:\n{e}"));
        let client = kube_client(bed).await;
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some([("hostforge.io/test".to_string(), label.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
        TestEnv {
            bed,
            client,
            namespace,
        }
    }

    /// This control plane's cluster identity as the operator derives it:
    /// the uid of its `kube-system` namespace.
    pub async fn cluster_id(&self) -> String {
        Api::<Namespace>::all(self.client.clone())
            .get("kube-system")
            .await
            .expect("get namespace kube-system")
            .metadata
            .uid
            .expect("kube-system has a uid")
    }

    /// Runs kubectl against the bed (no namespace implied; pass `-n`).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.bed.kubectl(args)
    }

    /// Runs kubectl and returns stdout, panicking with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies `crds/` (server-side) and waits until every CRD is Established.
    /// Safe to call from many tests: the work is done once per test binary.
    pub async fn install_crds(&self) {
        let bed = self.bed;
        tokio::task::spawn_blocking(move || install_crds_once(bed))
            .await
            .expect("install_crds task")
    }

    /// An EC2 client pointed at the simulator with static dummy credentials.
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        ec2_client(&self.bed.moto_url)
    }

    /// An SSM client pointed at the simulator with static dummy credentials.
    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        ssm_client(&self.bed.moto_url)
    }

    /// The value of SSM parameter `name` in the simulator.
    pub async fn ssm_value(&self, name: &str) -> String {
        self.ssm()
            .get_parameter()
            .name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetParameter {name}: {e}"))
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_else(|| panic!("parameter {name} has no value"))
            .to_string()
    }

    /// The AMI id [`AL2023_PARAM`] holds in the simulator.
    pub async fn al2023_ami(&self) -> String {
        self.ssm_value(AL2023_PARAM).await
    }

    /// A subnet id and a security group id of the simulator's default VPC.
    pub async fn default_subnet_and_group(&self) -> (String, String) {
        let ec2 = self.ec2();
        let subnets = ec2
            .describe_subnets()
            .send()
            .await
            .expect("DescribeSubnets");
        let subnet = subnets.subnets()[0].subnet_id().expect("subnet id");
        let groups = ec2
            .describe_security_groups()
            .send()
            .await
            .expect("DescribeSecurityGroups");
        let group = groups.security_groups()[0].group_id().expect("group id");
        (subnet.to_string(), group.to_string())
    }

    /// Registers images `<prefix>-0` … `<prefix>-<n-1>` one second apart (moto
    /// stamps CreationDate with the current second) and returns their ids,
    /// oldest first.
    pub async fn register_images_a_second_apart(&self, prefix: &str, n: usize) -> Vec<String> {
        let ec2 = self.ec2();
        let mut ids = Vec::new();
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            }
            let out = ec2
                .register_image()
                .name(format!("{prefix}-{i}"))
                .send()
                .await
                .expect("RegisterImage");
            ids.push(out.image_id().expect("image id").to_string());
        }
        ids
    }
}

impl Drop for TestEnv {
    /// On a failing test, prints what the namespace held, so the failure can be
    /// understood from the log alone.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.bed.kubectl(&[
                "get",
                "-n",
                &self.namespace,
                "all,events,machinetemplates,machinerequests",
                "-o",
                "yaml",
                "--ignore-not-found",
            ]);
            eprintln!(
                "--- objects in namespace {} ---\n{}{}",
                self.namespace,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A kube client for the bed's admin user.
pub async fn kube_client(bed: &TestBed) -> Client {
    Client::try_from(kube_config(bed).await).expect("building kube client")
}

/// The client config of the bed's admin user, for tests that build their own client.
pub async fn kube_config(bed: &TestBed) -> Config {
    let kubeconfig = Kubeconfig::read_from(&bed.kubeconfig).expect("reading test kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("loading test kubeconfig")
}

fn aws_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "testbed"),
        ))
        .build()
}

/// An EC2 client for `endpoint` (the simulator or a forwarder in front of it).
pub fn ec2_client(endpoint: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&aws_config(endpoint))
}

/// An SSM client for `endpoint`.
pub fn ssm_client(endpoint: &str) -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&aws_config(endpoint))
}

/// A DNS-1123 label unique within this run: `<name>-<pid>-<n>`.
pub fn unique_name(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut base: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(40);
    format!("{}-{}-{n}", base.trim_matches('-'), std::process::id())
}

fn install_crds_once(bed: &TestBed) {
    // Once per control plane (a test may use a second one).
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(&bed.kubeconfig) {
        return;
    }
    let crds = bed.root.join("crds");
    let crds = crds.to_str().expect("utf-8 path");
    let apply = bed.kubectl(&["apply", "--server-side", "-f", crds]);
    assert!(
        apply.status.success(),
        "kubectl apply -f crds/ failed: {}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let wait = bed.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        crds,
    ]);
    assert!(
        wait.status.success(),
        "CRDs did not become Established: {}",
        String::from_utf8_lossy(&wait.stderr)
    );
    done.push(bed.kubeconfig.clone());
}

/// The hostforge checkout (this crate lives in its `testbed/` folder), for
/// `crds/`, `examples/`, `hack/` and `hf/`.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Path of a file in the checkout.
pub fn repo_path(rel: &str) -> PathBuf {
    repo_root().join(rel)
}
