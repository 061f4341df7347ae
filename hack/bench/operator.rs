//! The release operator as the bench runs it: one AWS provider through the
//! forwarder, the default loop intervals, its log kept beside results.json.

use std::time::Duration;

use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::operator::Launch;
use hostforge_testbed::{OperatorProcess, TestEnv};

use crate::results_path;

/// Operator poll interval (its default): the baseline polls as often.
pub(crate) const POLL: Duration = Duration::from_secs(2);
/// Sweep interval (the operator's default).
pub(crate) const SWEEP: Duration = Duration::from_secs(60);
/// Full sweep interval: half the operator's default (10 min), so that the
/// steady hold (330 s from the end of the fill) always includes one.
pub(crate) const FULL_SWEEP: Duration = Duration::from_secs(300);

/// Starts `hostforge run` for `env`'s namespace and waits for /readyz; its
/// log is `logs/operator-<tag>.log` beside results.json, so a run's logs
/// outlive the bed for analysis. `RUST_LOG` comes from `HOSTFORGE_BENCH_LOG`
/// (default `info`).
pub(crate) async fn start_operator(env: &TestEnv, config: &str, tag: &str) -> OperatorProcess {
    OperatorProcess::start_launch(
        env,
        Launch {
            name: format!("operator-{tag}"),
            log_var: "HOSTFORGE_BENCH_LOG",
            default_log: "info",
            log_dir: Some(results_path().with_file_name("logs")),
            ..Launch::new(env, config)
        },
    )
    .await
}

/// Operator config: one AWS provider through the forwarder, rate limits as given.
/// `HOSTFORGE_BENCH_OPERATOR_CONFIG` (YAML lines, e.g. `coalesceLaunches:
/// false`) is appended, so one run can compare a setting side by side with
/// the last.
pub(crate) fn operator_config(env: &TestEnv, fwd: &Forwarder, rate_limits: &str) -> String {
    let extra = std::env::var("HOSTFORGE_BENCH_OPERATOR_CONFIG").unwrap_or_default();
    format!(
        "clusterName: {ns}\nproviders:\n  - name: aws-default\n    type: aws\n    region: {region}\n    \
         endpointUrl: {url}\n    rateLimits: {rate_limits}\npollInterval: {poll}s\nsweepInterval: {sweep}s\n\
         fullSweepInterval: {full}s\n{extra}\n",
        ns = env.namespace,
        region = hostforge_testbed::REGION,
        url = fwd.endpoint(),
        poll = POLL.as_secs(),
        sweep = SWEEP.as_secs(),
        full = FULL_SWEEP.as_secs(),
    )
}
