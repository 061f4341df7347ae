//! `make demo`: the test bed as a playground. Starts a real kube-apiserver +
//! etcd and the EC2/SSM simulator, installs the CRDs, applies `examples/`, and
//! shows what the cluster holds. With a terminal attached it keeps everything
//! running until Ctrl-C, and prints how to point kubectl at it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::IsTerminal;

#[tokio::main]
async fn main() {
    println!("==> starting kube-apiserver + etcd + moto (the same bed the tests use)");
    let env = support::TestEnv::new("demo").await;
    let bed = env.bed;
    println!("    apiserver  {}", bed.apiserver_url);
    println!("    simulator  {}", bed.moto_url);
    println!("    kubeconfig {}", bed.kubeconfig.display());

    println!("==> installing CRDs from crds/");
    env.install_crds().await;

    let examples = support::repo_path("examples");
    println!("==> applying examples/ into namespace {}", env.namespace);
    print!(
        "{}",
        env.kubectl_ok(&[
            "apply",
            "-n",
            &env.namespace,
            "-f",
            examples.to_str().unwrap_or("examples"),
        ])
    );

    println!(
        "==> the operator is not wired yet (MachineTemplate/MachineRequest controllers land in the \
         next issues); the objects are stored and validated by the real apiserver:"
    );
    print!(
        "{}",
        env.kubectl_ok(&["get", "hostforge", "-n", &env.namespace, "-o", "wide"])
    );

    if std::io::stdin().is_terminal() {
        println!(
            "\nThe bed keeps running. In another shell:\n  export KUBECONFIG={}\n  \
             kubectl get hostforge -n {}\nPress Ctrl-C to stop and clean up.",
            bed.kubeconfig.display(),
            env.namespace
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    println!("==> stopping the bed");
}
