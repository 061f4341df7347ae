//! The gate: whether a request may launch now. Its template must exist, be
//! Ready for its current spec with an image resolved, and name a configured
//! provider; and the template's `maxMachines` bounds how many it may add. The
//! decisions are pure functions of the objects, table-tested below; `check`
//! only looks the objects up.
//!
//! A request that holds machines is pinned to the provider its status
//! records: if its template now names another one, it keeps observing and
//! terminating its machines where they are, launches nothing (no replacement
//! in the new provider while the old machines run on), and says so, until it
//! has no machines left; then it follows the template again.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::api::conditions::{self, READY};
use crate::api::{LaunchState, MachineRequest, MachineRequestStatus, MachineTemplate};
use crate::config::policy::{Asked, Denied, TenantPolicy};
use crate::controller::reason::Reason;
use crate::controller::Context;
use crate::provider::MachineProvider;

/// Why a request cannot launch now: the condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The typed reason (also decides how soon to look again).
    pub reason: Reason,
    /// What a user reads in the condition.
    pub message: String,
}

impl Blocked {
    /// A cause with its message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Blocked {
        Blocked {
            reason,
            message: message.into(),
        }
    }
}

/// A request that may launch: its usable template and its provider.
pub struct Open<P> {
    /// The template, Ready for its current spec, with an image.
    pub template: Arc<MachineTemplate>,
    /// The provider the template names (or the default).
    pub provider: P,
    /// That provider's name.
    pub provider_name: String,
    /// Set when the request is pinned to the provider its machines are in
    /// while the template names another: it must launch nothing, and this is
    /// what it says (Degraded).
    pub pinned: Option<Blocked>,
}

/// A request that may not launch now, and the provider its machines are
/// polled through if one is known.
pub struct Closed<P> {
    /// Why.
    pub blocked: Blocked,
    /// The provider, if it is configured (its machines are still watched).
    pub provider: Option<P>,
}

/// The gate's answer for a live request.
pub type Gate = Result<Open<Arc<dyn MachineProvider>>, Closed<Arc<dyn MachineProvider>>>;

/// Looks up the request's template and provider and decides.
pub fn check(ctx: &Context, mr: &MachineRequest, status: &MachineRequestStatus) -> Gate {
    let namespace = mr.namespace().unwrap_or_default();
    let name = &mr.spec.template_ref.name;
    let template = ctx
        .templates
        .get(&ObjectRef::new(name).within(&namespace))
        // Launches read subnets and groups chosen by tags as ids.
        .map(|t| t.with_selections().map(Arc::new).unwrap_or(t));
    let choice = choose_provider(template.as_deref(), status, ctx.providers.default_name());
    let provider = ctx.providers.get(&choice.name);
    let open = match (choice.pinned, template, provider) {
        // Pinned: observe and terminate in the recorded provider whether or
        // not the template is usable; nothing is launched.
        (Some(pinned), Some(template), Some(provider)) => {
            return Ok(Open {
                template,
                provider,
                provider_name: choice.name,
                pinned: Some(pinned),
            })
        }
        (_, template, provider) => decide(template, &namespace, name, provider, choice.name)?,
    };
    // The template controller reports a denial as Ready=False; this holds
    // requests back too while a template's Ready predates the policy (the
    // operator restarted with a new config and has not re-evaluated it yet).
    let Some(policy) = ctx.config.tenant_policy(&open.provider_name) else {
        return Ok(open);
    };
    let labels = ctx.namespace_labels.last_known(&namespace);
    match recheck(
        policy,
        &namespace,
        &open.provider_name,
        &open.template,
        labels.as_ref(),
    ) {
        Err(denied) => Err(Closed {
            blocked: Blocked::new(
                Reason::TemplateNotReady,
                format!(
                    "MachineTemplate {name} is not Ready ({}: {denied}); waiting for it",
                    Reason::PolicyDenied
                ),
            ),
            provider: Some(open.provider),
        }),
        Ok(()) => Ok(open),
    }
}

/// The tenant policy checked again on a template its controller found Ready:
/// what it asks (namespace, instance profile, subnets, security groups) and
/// the owner of the image its status records. A record without an owner
/// (written by an earlier version of the operator) passes no `imageOwners`:
/// the template controller writes the owner when it evaluates the template
/// again, and the request waits for that.
pub fn recheck(
    policy: &TenantPolicy,
    namespace: &str,
    provider: &str,
    template: &MachineTemplate,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Result<(), Denied> {
    let mut asked = Asked::of(namespace, provider, &template.spec);
    asked.namespace_labels = namespace_labels;
    policy.admits(&asked)?;
    if policy.image_owners.is_none() {
        return Ok(());
    }
    let image = template
        .status
        .as_ref()
        .and_then(|st| st.resolved_image.as_ref());
    match image {
        Some(image) if image.owner_id.is_some() || image.owner_alias.is_some() => policy
            .admits_image(
                &image.id,
                image.owner_id.as_deref(),
                image.owner_alias.as_deref(),
            ),
        Some(image) => Err(Denied(format!(
            "status.resolvedImage does not record who owns image {}, and the operator's tenant \
             policy allows images by owner; the template is evaluated again shortly",
            image.id
        ))),
        None => Err(Denied(
            "status.resolvedImage is not recorded yet, and the operator's tenant policy allows \
             images by owner"
                .into(),
        )),
    }
}

/// The decision of [`check`], on what it looked up.
pub fn decide<P>(
    template: Option<Arc<MachineTemplate>>,
    namespace: &str,
    name: &str,
    provider: Option<P>,
    provider_name: String,
) -> Result<Open<P>, Closed<P>> {
    let Some(provider) = provider else {
        return Err(Closed {
            blocked: Blocked::new(
                Reason::ProviderUnknown,
                format!("provider {provider_name:?} is not configured"),
            ),
            provider: None,
        });
    };
    match usable(template.as_deref(), namespace, name) {
        Ok(()) => match template {
            Some(template) => Ok(Open {
                template,
                provider,
                provider_name,
                pinned: None,
            }),
            None => Err(Closed {
                blocked: not_found(namespace, name),
                provider: Some(provider),
            }),
        },
        Err(blocked) => Err(Closed {
            blocked,
            provider: Some(provider),
        }),
    }
}

/// Whether the template is usable: it exists, is Ready for its current spec,
/// and has an image.
pub fn usable(
    template: Option<&MachineTemplate>,
    namespace: &str,
    name: &str,
) -> Result<(), Blocked> {
    let Some(mt) = template else {
        return Err(not_found(namespace, name));
    };
    let status = mt.status.clone().unwrap_or_default();
    if !conditions::is_true(&status.conditions, READY) {
        let why = conditions::find_condition(&status.conditions, READY)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "not reconciled yet".into());
        return Err(Blocked::new(
            Reason::TemplateNotReady,
            format!("MachineTemplate {name} is not Ready ({why}); waiting for it"),
        ));
    }
    if status.observed_generation != mt.metadata.generation || status.resolved_image.is_none() {
        return Err(Blocked::new(
            Reason::TemplateNotReady,
            format!("MachineTemplate {name} changed; waiting for its image to be resolved"),
        ));
    }
    // Never the default subnet or group for want of a selection.
    let unselected = (mt.spec.subnet_selector.is_some() && status.selected_subnets.is_empty())
        || (mt.spec.security_group_selector.is_some()
            && status.selected_security_groups.is_empty());
    if unselected {
        return Err(Blocked::new(
            Reason::TemplateNotReady,
            format!("MachineTemplate {name} has no subnets or security groups selected yet; waiting for them"),
        ));
    }
    Ok(())
}

fn not_found(namespace: &str, name: &str) -> Blocked {
    Blocked::new(
        Reason::TemplateNotFound,
        format!("MachineTemplate {namespace}/{name} does not exist; waiting for it"),
    )
}

/// Whether the request has machines (live or being terminated) or launches
/// that may have made some, in the provider its status records.
pub fn holds_machines(status: &MachineRequestStatus) -> bool {
    status
        .machines
        .iter()
        .any(|m| m.is_live() || m.is_leaving())
        || status
            .launches
            .iter()
            .any(|b| b.state == LaunchState::Pending)
}

/// The provider a live request works with, and whether it is pinned there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderChoice {
    /// The provider's name.
    pub name: String,
    /// Set when the request holds machines in the provider its status records
    /// and its template now names another: the recorded one wins.
    pub pinned: Option<Blocked>,
}

/// The provider of a live request: the one recorded in status while the
/// request holds machines there (pinned if the template names another),
/// else the template's (or the default), else, without a template, the
/// recorded one (or the default).
pub fn choose_provider(
    template: Option<&MachineTemplate>,
    status: &MachineRequestStatus,
    default: &str,
) -> ProviderChoice {
    let named = template.map(|t| t.spec.provider.as_deref().unwrap_or(default));
    let recorded = status.provider.as_deref();
    let follow = |name: &str| ProviderChoice {
        name: name.to_string(),
        pinned: None,
    };
    match (named, recorded) {
        (Some(named), Some(recorded)) if named != recorded && holds_machines(status) => {
            let name = template.map(|t| t.name_any()).unwrap_or_default();
            ProviderChoice {
                name: recorded.to_string(),
                pinned: Some(Blocked::new(
                    Reason::ProviderChanged,
                    format!(
                        "MachineTemplate {name} now names provider {named:?}; this request's \
                         machines are in provider {recorded:?}, where they are still watched and \
                         terminated, and nothing is launched: scale the request to 0 and \
                         recreate it, or restore the template's provider"
                    ),
                )),
            }
        }
        (Some(named), _) => follow(named),
        (None, Some(recorded)) => follow(recorded),
        (None, None) => follow(default),
    }
}

/// The provider a request being deleted terminates its machines in: the one
/// its status records (where they were launched), else the template's, else
/// the default.
pub fn cleanup_provider(
    template: Option<&MachineTemplate>,
    status: &MachineRequestStatus,
    default: &str,
) -> String {
    status
        .provider
        .clone()
        .or_else(|| template.and_then(|t| t.spec.provider.clone()))
        .unwrap_or_else(|| default.to_string())
}

/// How many more machines the template's `maxMachines` allows this request:
/// the maximum less what the template's other requests hold and what this one
/// holds live (None: no limit).
pub fn headroom(ctx: &Context, mr: &MachineRequest, template: &MachineTemplate) -> Option<i32> {
    let max = template.spec.max_machines?;
    let namespace = mr.namespace();
    let uid = mr.uid();
    let others: i32 = ctx
        .requests
        .state()
        .iter()
        .filter(|r| {
            r.namespace() == namespace
                && r.spec.template_ref.name == mr.spec.template_ref.name
                && r.uid() != uid
        })
        .map(|r| r.status.as_ref().map_or(0, |st| st.machines_in_use()))
        .sum();
    let mine = mr.status.as_ref().map_or(0, |st| st.live_machines());
    Some(max - others - mine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::new_condition;
    use crate::api::{MachineTemplateStatus, ResolvedImage};

    fn template(
        generation: i64,
        ready: Option<bool>,
        observed: i64,
        image: bool,
        provider: Option<&str>,
    ) -> Arc<MachineTemplate> {
        let mut mt: MachineTemplate = serde_json::from_value(serde_json::json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineTemplate",
            "metadata": {"name": "t", "namespace": "ns", "generation": generation},
            "spec": {"image": {"id": "ami-12345678"},
                     "instanceTypes": [{"type": "t3.micro"}]},
        }))
        .expect("a template");
        mt.spec.provider = provider.map(str::to_string);
        let conditions = ready
            .map(|r| {
                let reason = if r { "Resolved" } else { "ImageNotFound" };
                vec![new_condition(
                    READY,
                    r,
                    reason,
                    "m",
                    Some(observed),
                    super::super::session::now(),
                )]
            })
            .unwrap_or_default();
        mt.status = Some(MachineTemplateStatus {
            observed_generation: Some(observed),
            conditions,
            resolved_image: image.then(|| ResolvedImage {
                id: "ami-12345678".into(),
                name: None,
                source: crate::api::ImageSourceKind::Id,
                creation_date: None,
                owner_id: None,
                owner_alias: None,
                resolved_at: super::super::session::now(),
            }),
            ..Default::default()
        });
        Arc::new(mt)
    }

    #[test]
    fn the_gate_opens_only_for_a_ready_resolved_template_and_a_known_provider() {
        let ready = || Some(template(2, Some(true), 2, true, None));
        type Row = (
            &'static str,
            Option<Arc<MachineTemplate>>,
            Option<&'static str>,
            Result<(), Reason>,
        );
        let cases: Vec<Row> = vec![
            ("usable", ready(), Some("aws"), Ok(())),
            (
                "provider not configured",
                ready(),
                None,
                Err(Reason::ProviderUnknown),
            ),
            (
                "no template",
                None,
                Some("aws"),
                Err(Reason::TemplateNotFound),
            ),
            (
                "not reconciled",
                Some(template(1, None, 0, false, None)),
                Some("aws"),
                Err(Reason::TemplateNotReady),
            ),
            (
                "not ready",
                Some(template(1, Some(false), 1, false, None)),
                Some("aws"),
                Err(Reason::TemplateNotReady),
            ),
            (
                "spec changed since",
                Some(template(3, Some(true), 2, true, None)),
                Some("aws"),
                Err(Reason::TemplateNotReady),
            ),
            (
                "no image yet",
                Some(template(2, Some(true), 2, false, None)),
                Some("aws"),
                Err(Reason::TemplateNotReady),
            ),
        ];
        for (what, template, provider, want) in cases {
            let got = decide(template, "ns", "t", provider, "aws".into());
            let got = got.map(|_| ()).map_err(|c| c.blocked.reason);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_closed_gate_keeps_the_provider_when_it_is_configured() {
        let closed = decide(None, "ns", "t", Some("p"), "aws".into())
            .err()
            .expect("closed");
        assert_eq!(closed.provider, Some("p"));
        assert!(
            closed.blocked.message.contains("ns/t does not exist"),
            "{}",
            closed.blocked.message
        );
        let closed = decide::<&str>(None, "ns", "t", None, "other".into())
            .err()
            .expect("closed");
        assert_eq!(
            closed.blocked.message,
            "provider \"other\" is not configured"
        );
    }

    fn holding(provider: &str, machines: serde_json::Value) -> MachineRequestStatus {
        serde_json::from_value(serde_json::json!({"provider": provider, "machines": machines}))
            .expect("a status")
    }

    #[test]
    fn the_provider_follows_the_template_while_the_request_holds_nothing() {
        let named = template(1, Some(true), 1, true, Some("eu"));
        let unnamed = template(1, Some(true), 1, true, None);
        let recorded = MachineRequestStatus {
            provider: Some("us".into()),
            ..Default::default()
        };
        let none = MachineRequestStatus::default();
        let name = |t, st| choose_provider(t, st, "aws").name;
        assert_eq!(name(Some(&named), &recorded), "eu");
        assert_eq!(name(Some(&unnamed), &recorded), "aws");
        assert_eq!(name(None, &recorded), "us");
        assert_eq!(name(None, &none), "aws");
        assert_eq!(choose_provider(Some(&named), &recorded, "aws").pinned, None);
        // Only gone machines (terminated, or stopped and given up): free.
        let gone = holding(
            "us",
            serde_json::json!([
                {"id": "i-1", "state": "terminated", "result": "fail", "terminationReason": "Lost"},
                {"id": "i-2", "state": "stopped", "result": "fail", "terminationReason": "Lost"}
            ]),
        );
        assert_eq!(choose_provider(Some(&named), &gone, "aws").name, "eu");
    }

    #[test]
    fn a_request_holding_machines_is_pinned_to_the_recorded_provider() {
        let named = template(1, Some(true), 1, true, Some("eu"));
        let unnamed = template(1, Some(true), 1, true, None);
        let cases = [
            serde_json::json!([{"id": "i-1", "state": "running", "result": "succeed"}]),
            serde_json::json!([{"id": "i-1", "state": "running", "result": "succeed",
                "terminationReason": "ScaledDown"}]),
            serde_json::json!([{"id": "i-1", "state": "unknown", "result": "executing"}]),
        ];
        for machines in cases {
            let st = holding("us", machines.clone());
            let choice = choose_provider(Some(&named), &st, "aws");
            assert_eq!(choice.name, "us", "{machines}");
            let pinned = choice.pinned.expect("pinned");
            assert_eq!(pinned.reason, Reason::ProviderChanged);
            assert!(
                pinned.message.contains("now names provider \"eu\"")
                    && pinned.message.contains("are in provider \"us\""),
                "{}",
                pinned.message
            );
            // The default counts as what the template names.
            let choice = choose_provider(Some(&unnamed), &st, "aws");
            assert_eq!(
                (choice.name.as_str(), choice.pinned.is_some()),
                ("us", true)
            );
            // The same provider: not pinned.
            assert_eq!(
                choose_provider(Some(&named), &holding("eu", machines), "aws").pinned,
                None
            );
        }
        // A Pending batch may have launched machines not listed yet.
        let mut st = holding("us", serde_json::json!([]));
        st.launches = serde_json::from_value(serde_json::json!([
            {"id": "b-0", "token": "t", "count": 1, "paramsDigest": "", "state": "Pending"}
        ]))
        .expect("launches");
        assert_eq!(choose_provider(Some(&named), &st, "aws").name, "us");
    }

    /// A Ready template whose status records an image of `owner` (id, alias).
    fn owned_by(owner: Option<(&str, Option<&str>)>) -> MachineTemplate {
        let mut mt = (*template(1, Some(true), 1, true, None)).clone();
        if let Some(image) = mt.status.as_mut().and_then(|st| st.resolved_image.as_mut()) {
            image.owner_id = owner.map(|(id, _)| id.to_string());
            image.owner_alias = owner.and_then(|(_, alias)| alias.map(str::to_string));
        }
        mt
    }

    #[test]
    fn the_recheck_holds_an_image_whose_recorded_owner_the_policy_does_not_allow() {
        let policy = TenantPolicy {
            image_owners: Some(["123456789012".to_string(), "amazon".to_string()].into()),
            ..Default::default()
        };
        let check = |mt: &MachineTemplate| recheck(&policy, "ns", "aws", mt, None);
        assert_eq!(check(&owned_by(Some(("123456789012", None)))), Ok(()));
        assert_eq!(
            check(&owned_by(Some(("137112412989", Some("amazon"))))),
            Ok(())
        );
        let denied = check(&owned_by(Some(("210987654321", None)))).expect_err("denied");
        assert!(
            denied
                .0
                .starts_with("image ami-12345678 (owner 210987654321)"),
            "{denied}"
        );
        assert!(
            !denied.0.contains("123456789012"),
            "the policy leaks: {denied}"
        );
        // A status an earlier operator wrote, without the owner: held until
        // the template is evaluated again.
        let denied = check(&owned_by(None)).expect_err("denied");
        assert!(
            denied
                .0
                .starts_with("status.resolvedImage does not record who owns image ami-12345678"),
            "{denied}"
        );
        let mut unresolved = owned_by(None);
        if let Some(st) = unresolved.status.as_mut() {
            st.resolved_image = None;
        }
        assert!(check(&unresolved).is_err());
        // Without imageOwners the owner is not needed.
        assert_eq!(
            recheck(&TenantPolicy::default(), "ns", "aws", &owned_by(None), None),
            Ok(())
        );
    }

    #[test]
    fn the_recheck_holds_what_the_template_asks_outside_the_policy() {
        let policy = TenantPolicy {
            namespaces: Some(["team-a".to_string()].into()),
            instance_profiles: Some(["hpc-node".to_string()].into()),
            ..Default::default()
        };
        let mut mt = owned_by(None);
        assert_eq!(recheck(&policy, "team-a", "aws", &mt, None), Ok(()));
        let denied = recheck(&policy, "team-b", "aws", &mt, None).expect_err("denied");
        assert!(denied
            .0
            .starts_with("namespace \"team-b\" may not use provider \"aws\""));
        mt.spec.instance_profile = Some("admin".into());
        let denied = recheck(&policy, "team-a", "aws", &mt, None).expect_err("denied");
        assert!(
            denied.0.starts_with("spec.instanceProfile \"admin\""),
            "{denied}"
        );
        // A selector matches on the labels last read for the namespace.
        let selector = TenantPolicy {
            namespace_selector: Some([("tier".to_string(), "gold".to_string())].into()),
            ..Default::default()
        };
        let gold: BTreeMap<String, String> = [("tier".to_string(), "gold".to_string())].into();
        assert!(recheck(&selector, "team-b", "aws", &mt, None).is_err());
        assert_eq!(
            recheck(&selector, "team-b", "aws", &mt, Some(&gold)),
            Ok(())
        );
    }

    #[test]
    fn deletion_uses_the_recorded_provider_first() {
        let named = template(1, Some(true), 1, true, Some("eu"));
        let recorded = holding("us", serde_json::json!([]));
        let none = MachineRequestStatus::default();
        assert_eq!(cleanup_provider(Some(&named), &recorded, "aws"), "us");
        assert_eq!(cleanup_provider(Some(&named), &none, "aws"), "eu");
        assert_eq!(cleanup_provider(None, &none, "aws"), "aws");
    }
}
