//! `make demo`: the test bed as a playground. Starts a real kube-apiserver +
//! etcd and the EC2/SSM simulator, installs the CRDs, runs the operator,
//! applies `examples/`, waits until every MachineRequest is Ready and shows
//! the machines. With a terminal attached it keeps everything
//! running until Ctrl-C, and prints how to point kubectl at it.

use std::io::IsTerminal;

#[tokio::main]
async fn main() {
    println!("==> starting kube-apiserver + etcd + moto (the same bed the tests use)");
    let env = hostforge_testbed::TestEnv::new("demo").await;
    let bed = env.bed;
    println!("    apiserver  {}", bed.apiserver_url);
    println!("    simulator  {}", bed.moto_url);
    println!("    kubeconfig {}", bed.kubeconfig.display());

    println!("==> installing CRDs from crds/");
    env.install_crds().await;

    println!("==> running the operator (hostforge run) against the bed");
    let config = format!(
        "{}pollInterval: 1s\nsweepInterval: 10s\n",
        hostforge_testbed::operator::default_config(&env, "5m")
    );
    let operator = hostforge_testbed::OperatorProcess::start(&env, &config).await;
    println!(
        "    metrics    http://127.0.0.1:{}/metrics",
        operator.metrics_port
    );

    let examples = hostforge_testbed::repo_path("examples");
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

    println!("==> kubectl wait --for=condition=Ready mreq --all");
    let started = std::time::Instant::now();
    print!(
        "{}",
        env.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "machinerequests",
            "--all",
            "-n",
            &env.namespace,
            "--timeout=180s",
        ])
    );
    println!(
        "    all requests Ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("==> kubectl get mt,mreq -o wide");
    print!(
        "{}",
        env.kubectl_ok(&["get", "mt,mreq", "-n", &env.namespace, "-o", "wide"])
    );
    println!("==> the machines, from each request's status");
    for request in ["compute", "burst"] {
        print!(
            "{}",
            env.kubectl_ok(&[
                "get",
                "machinerequest",
                request,
                "-n",
                &env.namespace,
                "-o",
                "jsonpath={range .status.machines[*]}{.id}{\"\\t\"}{.state}{\"\\t\"}{.result}{\"\\t\"}{.instanceType}{\"\\t\"}{.capacityType}{\"\\t\"}{.availabilityZone}{\"\\t\"}{.privateIp}{\"\\t\"}{.name}{\"\\n\"}{end}",
            ])
        );
    }

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
