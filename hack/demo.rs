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

    println!("==> running the operator (hostforge run) against the bed");
    let operator =
        support::Operator::start(&env, &support::operator::default_config(&env, "5m")).await;
    println!(
        "    metrics    http://127.0.0.1:{}/metrics",
        operator.metrics_port
    );
    // Give the template controller a moment to resolve images.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    println!(
        "==> templates: images resolved from the simulator; the examples name subnets and \
         security groups that the simulator does not have, and say so in READY/Reason. \
         The MachineRequest controller (machines coming up) is the next issue."
    );
    print!(
        "{}",
        env.kubectl_ok(&["get", "hostforge", "-n", &env.namespace, "-o", "wide"])
    );
    print!(
        "{}",
        env.kubectl_ok(&[
            "get",
            "machinetemplates",
            "-n",
            &env.namespace,
            "-o",
            "custom-columns=NAME:.metadata.name,READY:.status.conditions[0].status,REASON:.status.conditions[0].reason,IMAGE:.status.resolvedImage.id",
        ])
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
