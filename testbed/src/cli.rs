//! Helm and kubectl against the bed, for the tests that install the chart or
//! act as one of its ServiceAccounts.

use std::path::PathBuf;
use std::process::{Output, Stdio};

use super::TestEnv;

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
