//! The Grafana dashboard the chart ships (charts/hostforge/dashboards): off by
//! default, rendered into a ConfigMap with the sidecar's label when enabled,
//! and every metric its queries name is one the operator exports, read from
//! the operator's own registry (so a renamed or removed family fails here,
//! not on someone's empty panel).

use std::collections::BTreeSet;

use super::*;

/// The names a PromQL expression selects: identifiers in a selector's place
/// (followed by `{` or `[`) and any identifier with the operator's prefix,
/// after quoted label values and `$variables` are taken out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Label values ("Throttled", "$namespace") are not names.
    let mut code = String::new();
    let mut quoted = false;
    for c in expr.chars() {
        if c == '"' {
            quoted = !quoted;
            code.push(' ');
        } else if !quoted {
            code.push(c);
        }
    }
    let chars: Vec<char> = code.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = c.is_ascii_alphabetic() || c == '_' || c == ':';
        if !starts {
            i += 1;
            continue;
        }
        let variable = i > 0 && chars[i - 1] == '$';
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        if variable {
            continue;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        if word.starts_with("hostforge_") || matches!(next, Some('{') | Some('[')) {
            names.insert(word);
        }
    }
    names
}

/// Every PromQL expression of a dashboard: panel targets (rows' nested
/// panels too) and query variables.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(p) = panels.pop() {
        if let Some(nested) = p["panels"].as_array() {
            panels.extend(nested);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    expr.to_string(),
                ));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["query"]["query"].as_str().or(v["definition"].as_str()) {
            if v["type"] == "query" {
                out.push((format!("variable {}", v["name"]), q.to_string()));
            }
        }
    }
    out
}

/// The names of `exprs` the operator does not export, with where they are.
fn unknown_metrics(exprs: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    exprs
        .iter()
        .flat_map(|(panel, expr)| {
            metric_names(expr)
                .into_iter()
                .filter(|n| !exported.contains(n))
                .map(move |n| format!("{panel}: {n}"))
        })
        .collect()
}

#[test]
fn the_name_extraction_sees_selectors_and_skips_labels() {
    let expr = r#"histogram_quantile(0.95, sum by (le, operation) (rate(hostforge_aws_call_duration_seconds_bucket{provider=~"$provider",outcome="Throttled"}[$__rate_interval]))) / up"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from(["hostforge_aws_call_duration_seconds_bucket".to_string()])
    );
    assert_eq!(
        metric_names("sum(rate(node_cpu_seconds_total[5m])) + hostforge_x"),
        BTreeSet::from([
            "node_cpu_seconds_total".to_string(),
            "hostforge_x".to_string()
        ])
    );
    assert_eq!(
        metric_names(r#"label_values(hostforge_machines{namespace=~"$namespace"}, template)"#),
        BTreeSet::from(["hostforge_machines".to_string()])
    );
}

#[test]
fn every_metric_the_dashboard_queries_is_exported_by_the_operator() {
    let exported = hostforge::metrics::Metrics::names().expect("the registry encodes");
    let text = std::fs::read_to_string(repo_path("charts/hostforge/dashboards/hostforge.json"))
        .expect("charts/hostforge/dashboards/hostforge.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    for (panel, expr) in &exprs {
        assert!(
            !metric_names(expr).is_empty(),
            "{panel}: no metric in {expr}"
        );
    }
    let missing = unknown_metrics(&exprs, &exported);
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the operator does not export:\n{}\nexported: {exported:?}",
        missing.join("\n")
    );
    // The check bites: a panel naming a metric that does not exist fails it.
    let typo = vec![(
        "typo".to_string(),
        "sum(rate(hostforge_machines_launch_total[5m]))".to_string(),
    )];
    assert_eq!(
        unknown_metrics(&typo, &exported),
        ["typo: hostforge_machines_launch_total"]
    );
    // Each figure the dashboard is for has its panel.
    let all: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
    for needed in [
        "hostforge_machines{",
        "hostforge_machines_launched_total",
        "hostforge_machines_terminated_total",
        "hostforge_request_ready_seconds_bucket",
        "hostforge_aws_calls_total",
        "outcome=\"Throttled\"",
        "hostforge_aws_rate_limit_wait_seconds_bucket",
        "hostforge_interruption_queue_messages_total",
        "hostforge_reconcile_errors_total",
    ] {
        assert!(all.contains(needed), "no panel queries {needed}");
    }
}

#[tokio::test]
async fn the_dashboard_configmap_is_rendered_only_when_enabled() {
    let env = TestEnv::new("chart-dashboard").await;
    let c = chart();
    let render = |extra: &[&str]| {
        let mut args = vec!["template", "demo", c.as_str(), "--namespace", "ops"];
        args.extend(["--set", "config.clusterName=demo"]);
        args.extend(extra);
        documents(&helm_ok(&env, &args))
    };
    let dashboards = |docs: &[Value]| -> Vec<Value> {
        find(docs, "ConfigMap")
            .into_iter()
            .filter(|cm| cm["data"]["hostforge.json"].is_string())
            .cloned()
            .collect()
    };
    assert!(
        dashboards(&render(&[])).is_empty(),
        "the dashboard is off by default"
    );

    let on = render(&["--set", "grafanaDashboard.enabled=true"]);
    let cms = dashboards(&on);
    assert_eq!(cms.len(), 1, "{cms:#?}");
    let cm = &cms[0];
    assert_eq!(cm["metadata"]["namespace"], "ops");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let text = cm["data"]["hostforge.json"].as_str().expect("the JSON");
    let rendered: Value = serde_json::from_str(text).expect("the rendered dashboard is JSON");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("charts/hostforge/dashboards/hostforge.json"))
            .expect("the dashboard file"),
    )
    .expect("JSON");
    assert_eq!(
        rendered, file,
        "the ConfigMap carries the chart's file as is"
    );
    let exported = hostforge::metrics::Metrics::names().expect("names");
    let missing = unknown_metrics(&expressions(&rendered), &exported);
    assert!(missing.is_empty(), "{missing:?}");

    // The sidecar's label, the namespace and a folder annotation are the
    // user's to choose.
    let custom = render(&[
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.label=dashboards",
        "--set",
        "grafanaDashboard.labelValue=hostforge",
        "--set",
        "grafanaDashboard.namespace=monitoring",
        "--set",
        "grafanaDashboard.annotations.grafana_folder=Operators",
    ]);
    let cm = &dashboards(&custom)[0];
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["dashboards"], "hostforge");
    assert!(cm["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Operators");

    // An unknown key under grafanaDashboard is refused by the schema.
    let out = helm(
        &env,
        &[
            "template",
            "demo",
            &c,
            "--set",
            "config.clusterName=demo",
            "--set",
            "grafanaDashboard.enable=true",
        ],
    );
    assert!(!out.status.success(), "a misspelt key is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("enable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
