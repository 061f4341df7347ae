//! The launch-template collector: every `sweepInterval`, lists the launch
//! templates tagged for this cluster in each provider and deletes those older
//! than `gcGracePeriod` that the provider no longer launches from and no
//! Pending batch needs.
//!
//! Instant fleets launch from a template per content that the provider keeps
//! while it is used ([`MachineProvider::launch_templates_in_use`], idle time
//! `gcGracePeriod`). What it stops keeping, what an earlier process (a crash,
//! a restart, a lost leadership) made, a creation whose answer was lost, and
//! the per-batch templates of releases before templates were shared are
//! deleted here; nothing else deletes them, and at the account's quota (5,000
//! per Region,
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/launch-template-restrictions.html>)
//! every fleet launch in the Region is refused. A Pending batch keeps a
//! per-batch template of an older release: its re-send may name it.
//!
//! [`MachineProvider::launch_templates_in_use`]: crate::provider::MachineProvider::launch_templates_in_use

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::{info, warn};

use super::ownership::{
    BATCH_TAG, CLUSTER_ID_TAG, CLUSTER_TAG, NAMESPACE_TAG, REQUEST_TAG, REQUEST_UID_TAG,
};
use super::ticker::every;
use crate::api::{LaunchState, MachineRequest};
use crate::controller::Context;
use crate::provider::OwnedLaunchTemplate;

/// A batch that may still launch: (request uid, batch id).
pub type BatchKey = (String, String);

/// What one collection did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CollectReport {
    /// Templates listed across providers.
    pub listed: usize,
    /// Templates deleted.
    pub deleted: usize,
    /// Providers whose listing or a delete failed (tried again next time).
    pub failures: usize,
}

/// Collects every `sweepInterval` until `shutdown` resolves; the first run
/// waits for the request watch's initial list, so no Pending batch of a live
/// request is missed.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let collect = async {
        if !ctx.requests_synced.wait().await {
            return;
        }
        every(
            ctx.config.sweep_interval,
            std::future::pending::<()>(),
            || async {
                let report = collect_once(&ctx).await;
                if report.deleted + report.failures > 0 {
                    info!(?report, "launch-template collection");
                }
            },
        )
        .await;
    };
    tokio::select! {
        _ = collect => {}
        _ = shutdown => {}
    }
}

/// One collection over every provider.
pub async fn collect_once(ctx: &Context) -> CollectReport {
    let mut report = CollectReport::default();
    // This cluster's name and identity: another cluster given the same
    // name never has its templates listed here, let alone deleted.
    let cluster = vec![
        (CLUSTER_TAG.to_string(), ctx.config.cluster_name.clone()),
        (CLUSTER_ID_TAG.to_string(), ctx.cluster_id.clone()),
    ];
    for name in ctx.providers.names() {
        let Some(provider) = ctx.providers.get(name) else {
            continue;
        };
        let templates = match provider.list_launch_templates(&cluster).await {
            Ok(t) => t,
            Err(e) => {
                warn!(provider = name, error = %e, "listing launch templates failed; trying again next time");
                report.failures += 1;
                continue;
            }
        };
        report.listed += templates.len();
        // Read after the listing: a batch Pending by now is seen, and one
        // recorded later made a template younger than anything listed here
        // could be taken for (the grace period).
        let requests = ctx.requests.state();
        let needed = pending_batches(requests.iter().map(|r| r.as_ref()));
        // Also after the listing: what the provider stops keeping now is
        // never launched from again.
        let in_use = provider.launch_templates_in_use(ctx.config.gc_grace_period);
        let doomed = to_collect(
            &templates,
            &Keep {
                batches: &needed,
                ids: &in_use,
            },
            ctx.namespace.as_deref(),
            Timestamp::now().as_second(),
            ctx.config.gc_grace_period,
        );
        let mut deleted = 0;
        for t in doomed {
            match provider.delete_launch_template(&t.id).await {
                Ok(()) => {
                    info!(provider = name, template = %t.name, id = %t.id, "deleted a leftover launch template");
                    deleted += 1;
                }
                Err(e) => {
                    warn!(provider = name, template = %t.name, error = %e, "deleting a leftover launch template failed; trying again next time");
                    report.failures += 1;
                }
            }
        }
        ctx.metrics.launch_templates_collected(name, deleted);
        report.deleted += deleted;
    }
    report
}

/// Every batch some request's status has Pending: it may be re-sent, and
/// its re-send launches from its template.
pub fn pending_batches<'a>(
    requests: impl IntoIterator<Item = &'a MachineRequest>,
) -> HashSet<BatchKey> {
    let mut out = HashSet::new();
    for r in requests {
        let (Some(uid), Some(st)) = (r.uid(), r.status.as_ref()) else {
            continue;
        };
        for b in st
            .launches
            .iter()
            .filter(|b| b.state == LaunchState::Pending)
        {
            out.insert((uid.clone(), b.id.clone()));
        }
    }
    out
}

/// What must not be deleted whatever its age.
#[derive(Debug, Clone, Copy)]
pub struct Keep<'a> {
    /// Batches a per-batch template may be needed by.
    pub batches: &'a HashSet<BatchKey>,
    /// Template ids the provider still launches from.
    pub ids: &'a HashSet<String>,
}

/// The templates to delete (a pure decision): older than `grace` at `now`
/// (seconds since the epoch), neither kept by the provider nor needed by a
/// Pending batch, and, for an operator scoped to `namespace`, of that
/// namespace (its namespace tag, or a request in it: another namespace's
/// operator owns the rest). A template without a creation time is kept: its
/// age is unknown.
pub fn to_collect<'a>(
    templates: &'a [OwnedLaunchTemplate],
    keep: &Keep<'_>,
    namespace: Option<&str>,
    now: i64,
    grace: Duration,
) -> Vec<&'a OwnedLaunchTemplate> {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    templates
        .iter()
        .filter(|t| t.created_at.is_some_and(|c| now.saturating_sub(c) >= grace))
        .filter(|t| {
            namespace.is_none_or(|ns| {
                t.tags.get(NAMESPACE_TAG).is_some_and(|n| n == ns)
                    || t.tags
                        .get(REQUEST_TAG)
                        .and_then(|r| r.split_once('/'))
                        .is_some_and(|(n, _)| n == ns)
            })
        })
        .filter(|t| !keep.ids.contains(&t.id))
        .filter(|t| {
            let key = (
                t.tags.get(REQUEST_UID_TAG).cloned().unwrap_or_default(),
                t.tags.get(BATCH_TAG).cloned().unwrap_or_default(),
            );
            !keep.batches.contains(&key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, created_at: Option<i64>, tags: &[(&str, &str)]) -> OwnedLaunchTemplate {
        OwnedLaunchTemplate {
            id: format!("lt-{name}"),
            name: format!("hostforge-{name}"),
            created_at,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn batch_tags<'a>(ns: &'a str, uid: &'a str, batch: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            (CLUSTER_TAG, "c1"),
            (REQUEST_TAG, ns),
            (REQUEST_UID_TAG, uid),
            (BATCH_TAG, batch),
        ]
    }

    fn names(v: Vec<&OwnedLaunchTemplate>) -> Vec<String> {
        v.into_iter().map(|t| t.name.clone()).collect()
    }

    const NOW: i64 = 1_000_000;
    const GRACE: Duration = Duration::from_secs(120);

    #[test]
    fn old_templates_no_pending_batch_needs_are_collected() {
        let templates = vec![
            template("old", Some(NOW - 121), &batch_tags("ns/a", "u1", "b-1")),
            template(
                "at-grace",
                Some(NOW - 120),
                &batch_tags("ns/a", "u1", "b-2"),
            ),
            template("young", Some(NOW - 119), &batch_tags("ns/a", "u1", "b-3")),
            template("undated", None, &batch_tags("ns/a", "u1", "b-4")),
            template(
                "pending",
                Some(NOW - 9999),
                &batch_tags("ns/a", "u1", "b-5"),
            ),
            // The same batch id under another request is not protected.
            template(
                "other-uid",
                Some(NOW - 9999),
                &batch_tags("ns/b", "u2", "b-5"),
            ),
            // No ownership tags beyond the cluster: nothing can need it.
            template("bare", Some(NOW - 9999), &[(CLUSTER_TAG, "c1")]),
            // A shared fleet template the provider still launches from.
            template(
                "in-use",
                Some(NOW - 9999),
                &[(CLUSTER_TAG, "c1"), (NAMESPACE_TAG, "ns")],
            ),
            // One it no longer keeps.
            template(
                "idle",
                Some(NOW - 9999),
                &[(CLUSTER_TAG, "c1"), (NAMESPACE_TAG, "ns")],
            ),
        ];
        let needed: HashSet<BatchKey> = [("u1".to_string(), "b-5".to_string())].into();
        let in_use: HashSet<String> = ["lt-in-use".to_string()].into();
        let keep = Keep {
            batches: &needed,
            ids: &in_use,
        };
        assert_eq!(
            names(to_collect(&templates, &keep, None, NOW, GRACE)),
            [
                "hostforge-old",
                "hostforge-at-grace",
                "hostforge-other-uid",
                "hostforge-bare",
                "hostforge-idle"
            ]
        );
        // A zero grace takes everything dated and not kept at once.
        assert_eq!(
            to_collect(&templates, &keep, None, NOW, Duration::ZERO).len(),
            6
        );
    }

    #[test]
    fn a_namespaced_operator_collects_only_its_namespaces_templates() {
        let templates = vec![
            template("mine", Some(NOW - 999), &batch_tags("ns/a", "u1", "b-1")),
            template(
                "theirs",
                Some(NOW - 999),
                &batch_tags("other/a", "u2", "b-1"),
            ),
            template("prefix", Some(NOW - 999), &batch_tags("nsx/a", "u3", "b-1")),
            template("untagged", Some(NOW - 999), &[(CLUSTER_TAG, "c1")]),
            template(
                "shared",
                Some(NOW - 999),
                &[(CLUSTER_TAG, "c1"), (NAMESPACE_TAG, "ns")],
            ),
            template(
                "shared-theirs",
                Some(NOW - 999),
                &[(CLUSTER_TAG, "c1"), (NAMESPACE_TAG, "other")],
            ),
        ];
        let keep = Keep {
            batches: &HashSet::new(),
            ids: &HashSet::new(),
        };
        assert_eq!(
            names(to_collect(&templates, &keep, Some("ns"), NOW, GRACE)),
            ["hostforge-mine", "hostforge-shared"]
        );
    }

    fn request(uid: &str, launches: &[(&str, LaunchState)]) -> MachineRequest {
        let launches: Vec<serde_json::Value> = launches
            .iter()
            .map(|(id, state)| {
                serde_json::json!({
                    "id": id, "token": format!("{uid}-{id}"), "count": 1,
                    "paramsDigest": "", "state": state,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineRequest",
            "metadata": {"name": "r", "namespace": "ns", "uid": uid},
            "spec": {"templateRef": {"name": "t"}, "count": 1},
            "status": {"launches": launches},
        }))
        .expect("a MachineRequest")
    }

    #[test]
    fn only_pending_batches_are_needed() {
        let a = request(
            "u1",
            &[
                ("b-1", LaunchState::Launched),
                ("b-2", LaunchState::Pending),
                ("b-3", LaunchState::Failed),
            ],
        );
        let b = request("u2", &[("b-1", LaunchState::Pending)]);
        let mut no_status = request("u3", &[]);
        no_status.status = None;
        let got = pending_batches([&a, &b, &no_status]);
        let want: HashSet<BatchKey> = [
            ("u1".to_string(), "b-2".to_string()),
            ("u2".to_string(), "b-1".to_string()),
        ]
        .into();
        assert_eq!(got, want);
    }

    #[test]
    fn the_adapters_tag_names_are_the_controllers() {
        use crate::provider::aws::launch_templates as lt;
        assert_eq!(lt::CLUSTER_TAG, CLUSTER_TAG);
        assert_eq!(lt::CLUSTER_ID_TAG, CLUSTER_ID_TAG);
        assert_eq!(lt::REQUEST_UID_TAG, REQUEST_UID_TAG);
        assert_eq!(lt::BATCH_TAG, BATCH_TAG);
    }
}
