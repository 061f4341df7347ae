//! The tenant policy of a provider (`providers[].policy`): which namespaces
//! may launch through it, and which instance profiles, subnets, security
//! groups and image owners their templates may use.
//!
//! Without a policy anyone who may create a MachineTemplate may use every
//! configured provider with anything its account holds (the single-tenant
//! default). With one, a template outside it is not Ready and its requests
//! launch nothing. A denial names the field and the value at fault, never
//! what is allowed: tenants must not learn each other's configuration.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::checks::check_dns_label;
use crate::api::MachineTemplateSpec;

/// The label a Secret must carry, with the value `"true"`, to be used as a
/// template's `spec.userData.secretRef`: creating a template must not turn
/// every Secret of its namespace (tokens, keys, passwords) into a machine's
/// user data. The HostFactory import writes it on the Secrets it makes.
pub const USER_DATA_LABEL: &str = "hostforge.io/user-data";

/// What a provider allows; every list that is absent allows anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    /// `namespaces`: the namespaces whose templates may use the provider.
    /// With neither this nor a selector, any namespace may.
    pub namespaces: Option<BTreeSet<String>>,
    /// `namespaceSelector.matchLabels`: namespaces carrying all these labels
    /// may use the provider too (the operator reads namespaces' labels).
    pub namespace_selector: Option<BTreeMap<String, String>>,
    /// `instanceProfiles`: the instance profiles (names or ARNs, compared
    /// exactly) a template may give its machines; a template with none passes.
    pub instance_profiles: Option<BTreeSet<String>>,
    /// `subnetIds`: the subnets a template may launch into; a template naming
    /// none (the default VPC's default subnet) is denied.
    pub subnet_ids: Option<BTreeSet<String>>,
    /// `securityGroupIds`: the security groups a template may attach; a
    /// template naming none (the VPC's default group) is denied.
    pub security_group_ids: Option<BTreeSet<String>>,
    /// `imageOwners`: the accounts (ids, or the aliases `amazon` and
    /// `aws-marketplace`) whose images a template may resolve to.
    pub image_owners: Option<BTreeSet<String>>,
}

/// Why a template is outside the policy: what a tenant reads in the
/// template's Ready condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// What a template asks of its provider, in plain types.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The template's namespace.
    pub namespace: &'a str,
    /// The provider's name (the template's or the default).
    pub provider: &'a str,
    /// The namespace's labels, when known (needed by a namespace selector;
    /// unknown labels match no selector).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    /// `spec.instanceProfile`.
    pub instance_profile: Option<&'a str>,
    /// `spec.subnetIds`.
    pub subnet_ids: &'a [String],
    /// `spec.securityGroupIds`.
    pub security_group_ids: &'a [String],
}

impl<'a> Asked<'a> {
    /// What the template with `spec` in `namespace` asks of `provider`.
    pub fn of(namespace: &'a str, provider: &'a str, spec: &'a MachineTemplateSpec) -> Self {
        Asked {
            namespace,
            provider,
            namespace_labels: None,
            instance_profile: spec.instance_profile.as_deref(),
            subnet_ids: &spec.subnet_ids,
            security_group_ids: &spec.security_group_ids,
        }
    }
}

impl TenantPolicy {
    /// Whether the template may use the provider as it asks (everything but
    /// the image, which is known once resolved: [`TenantPolicy::admits_image`]).
    pub fn admits(&self, asked: &Asked<'_>) -> Result<(), Denied> {
        self.admits_caller(asked)?;
        if let (Some(allowed), Some(profile)) = (&self.instance_profiles, asked.instance_profile) {
            if !allowed.contains(profile) {
                return Err(Denied(format!(
                    "spec.instanceProfile {profile:?} is not allowed for this namespace by the operator's tenant policy"
                )));
            }
        }
        check_list(
            "spec.subnetIds",
            "the default VPC's default subnet",
            &self.subnet_ids,
            asked.subnet_ids,
        )?;
        check_list(
            "spec.securityGroupIds",
            "the VPC's default security group",
            &self.security_group_ids,
            asked.security_group_ids,
        )
    }

    /// Whether the template's namespace may use the provider at all: checked
    /// before anything is looked up in the provider on the template's behalf
    /// (its subnet and security group selectors).
    pub fn admits_caller(&self, asked: &Asked<'_>) -> Result<(), Denied> {
        if !self.admits_namespace(asked.namespace, asked.namespace_labels) {
            return Err(Denied(format!(
                "namespace {:?} may not use provider {:?} (the operator's tenant policy)",
                asked.namespace, asked.provider
            )));
        }
        Ok(())
    }

    /// Whether the policy needs the namespace's labels (it has a selector).
    pub fn needs_namespace_labels(&self) -> bool {
        self.namespace_selector.is_some()
    }

    /// Whether the namespace is listed or its labels match the selector;
    /// with neither configured, every namespace is.
    fn admits_namespace(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.namespaces.is_none() && self.namespace_selector.is_none() {
            return true;
        }
        let listed = self
            .namespaces
            .as_ref()
            .is_some_and(|names| names.contains(namespace));
        let selected = match (&self.namespace_selector, labels) {
            (Some(wanted), Some(labels)) => wanted.iter().all(|(k, v)| labels.get(k) == Some(v)),
            _ => false,
        };
        listed || selected
    }

    /// Whether an image with this owner (account id, and the alias EC2
    /// reports for AWS-owned images) may be launched.
    pub fn admits_image(
        &self,
        image_id: &str,
        owner_id: Option<&str>,
        owner_alias: Option<&str>,
    ) -> Result<(), Denied> {
        let Some(allowed) = &self.image_owners else {
            return Ok(());
        };
        let listed = |o: Option<&str>| o.is_some_and(|o| allowed.contains(o));
        if listed(owner_id) || listed(owner_alias) {
            return Ok(());
        }
        Err(Denied(format!(
            "image {image_id} (owner {}) is not allowed for this namespace by the operator's tenant policy: its owner is not one the policy allows",
            owner_id.unwrap_or("unknown")
        )))
    }
}

/// Checks a list field: every value listed, and the empty list (the cloud's
/// default) denied when the policy restricts the field.
fn check_list(
    field: &str,
    default: &str,
    allowed: &Option<BTreeSet<String>>,
    asked: &[String],
) -> Result<(), Denied> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    if asked.is_empty() {
        return Err(Denied(format!(
            "{field} is empty ({default}), which the operator's tenant policy does not allow; name one allowed for this namespace"
        )));
    }
    match asked.iter().find(|v| !allowed.contains(*v)) {
        Some(v) => Err(Denied(format!(
            "{field}: {v} is not allowed for this namespace by the operator's tenant policy"
        ))),
        None => Ok(()),
    }
}

/// `providers[].policy` as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    namespace_selector: Option<RawSelector>,
    #[serde(default)]
    instance_profiles: Option<Vec<String>>,
    #[serde(default)]
    subnet_ids: Option<Vec<String>>,
    #[serde(default)]
    security_group_ids: Option<Vec<String>>,
    #[serde(default)]
    image_owners: Option<Vec<String>>,
}

/// `namespaceSelector` as written: equality on labels only.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    match_labels: BTreeMap<String, String>,
}

/// Image owner aliases EC2 reports (`ImageOwnerAlias`).
const OWNER_ALIASES: [&str; 2] = ["amazon", "aws-marketplace"];

impl RawPolicy {
    /// Checks every value; problems come back as (key, message) under `key`.
    pub(super) fn validate(self, key: &str) -> Result<TenantPolicy, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let namespace_selector = self.namespace_selector.map(|sel| sel.match_labels);
        if namespace_selector.as_ref().is_some_and(|labels| {
            labels.is_empty() || labels.keys().any(|k| k.is_empty() || k.len() > 317)
        }) {
            problems.push((
                format!("{key}.namespaceSelector.matchLabels"),
                "must name at least one label, each with a key of 1 to 317 characters".into(),
            ));
        }
        let mut list = |field: &str,
                        values: Option<Vec<String>>,
                        check: &dyn Fn(&str) -> Result<(), String>| {
            values.map(|values| {
                for (i, v) in values.iter().enumerate() {
                    if let Err(msg) = check(v) {
                        problems.push((format!("{key}.{field}[{i}]"), msg));
                    }
                }
                values.into_iter().collect::<BTreeSet<_>>()
            })
        };
        let policy = TenantPolicy {
            namespace_selector,
            namespaces: list("namespaces", self.namespaces, &check_dns_label),
            instance_profiles: list(
                "instanceProfiles",
                self.instance_profiles,
                &check_instance_profile,
            ),
            subnet_ids: list("subnetIds", self.subnet_ids, &|v| check_id("subnet-", v)),
            security_group_ids: list("securityGroupIds", self.security_group_ids, &|v| {
                check_id("sg-", v)
            }),
            image_owners: list("imageOwners", self.image_owners, &check_owner),
        };
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }
}

/// An instance profile name or ARN, as templates may write it.
fn check_instance_profile(v: &str) -> Result<(), String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    };
    if v.starts_with("arn:") {
        if v.contains(":instance-profile/") && v.len() <= 2048 {
            return Ok(());
        }
        return Err(format!("{v:?} is not an instance profile ARN"));
    }
    if name_ok(v) {
        Ok(())
    } else {
        Err(format!("{v:?} is not an instance profile name or ARN"))
    }
}

/// A cloud id: the prefix and lower-case hex digits.
fn check_id(prefix: &str, v: &str) -> Result<(), String> {
    let ok = v.strip_prefix(prefix).is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{v:?} is not an id of the form {prefix}…"))
    }
}

/// An image owner: a 12-digit account id or an alias EC2 reports.
fn check_owner(v: &str) -> Result<(), String> {
    if v == "self" {
        return Err(
            "\"self\" cannot be checked against a resolved image; give the account id".into(),
        );
    }
    if OWNER_ALIASES.contains(&v) || (v.len() == 12 && v.bytes().all(|b| b.is_ascii_digit())) {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not an account id (12 digits), \"amazon\" or \"aws-marketplace\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Option<BTreeSet<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    fn asked<'a>(ns: &'a str, subnets: &'a [String], sgs: &'a [String]) -> Asked<'a> {
        Asked {
            namespace: ns,
            provider: "aws-a",
            namespace_labels: None,
            instance_profile: None,
            subnet_ids: subnets,
            security_group_ids: sgs,
        }
    }

    #[test]
    fn no_policy_admits_anything() {
        let p = TenantPolicy::default();
        assert_eq!(p.admits(&asked("any", &[], &[])), Ok(()));
        assert_eq!(p.admits_image("ami-1", Some("999999999999"), None), Ok(()));
    }

    #[test]
    fn a_namespace_outside_the_list_is_denied_without_naming_the_list() {
        let p = TenantPolicy {
            namespaces: set(&["team-a"]),
            ..Default::default()
        };
        assert_eq!(p.admits(&asked("team-a", &[], &[])), Ok(()));
        let err = p.admits(&asked("team-b", &[], &[])).expect_err("denied");
        assert_eq!(
            err.0,
            "namespace \"team-b\" may not use provider \"aws-a\" (the operator's tenant policy)"
        );
        assert!(!err.0.contains("team-a"), "{err}");
    }

    #[test]
    fn a_namespace_is_admitted_by_name_or_by_its_labels() {
        let p = TenantPolicy {
            namespaces: set(&["team-a"]),
            namespace_selector: Some([("tenant".to_string(), "gold".to_string())].into()),
            ..Default::default()
        };
        assert!(p.needs_namespace_labels());
        assert_eq!(p.admits(&asked("team-a", &[], &[])), Ok(()));
        let mut a = asked("team-b", &[], &[]);
        assert!(p.admits(&a).is_err(), "unknown labels match no selector");
        let gold: BTreeMap<String, String> = [
            ("tenant".to_string(), "gold".to_string()),
            ("x".to_string(), "y".to_string()),
        ]
        .into();
        a.namespace_labels = Some(&gold);
        assert_eq!(p.admits(&a), Ok(()));
        let silver: BTreeMap<String, String> =
            [("tenant".to_string(), "silver".to_string())].into();
        a.namespace_labels = Some(&silver);
        assert!(p.admits(&a).is_err());
        let selector_only = TenantPolicy {
            namespace_selector: p.namespace_selector.clone(),
            ..Default::default()
        };
        assert!(selector_only.admits(&a).is_err());
        a.namespace_labels = Some(&gold);
        assert_eq!(selector_only.admits(&a), Ok(()));
        assert!(!TenantPolicy::default().needs_namespace_labels());
    }

    #[test]
    fn subnets_groups_and_profiles_outside_the_lists_are_denied_by_value() {
        let p = TenantPolicy {
            subnet_ids: set(&["subnet-0000000a"]),
            security_group_ids: set(&["sg-0000000a"]),
            instance_profiles: set(&["hpc-node"]),
            ..Default::default()
        };
        let good_subnets = vec!["subnet-0000000a".to_string()];
        let good_sgs = vec!["sg-0000000a".to_string()];
        assert_eq!(p.admits(&asked("x", &good_subnets, &good_sgs)), Ok(()));

        let bad = vec!["subnet-0000000a".to_string(), "subnet-0000000b".to_string()];
        let err = p.admits(&asked("x", &bad, &good_sgs)).expect_err("denied");
        assert_eq!(
            err.0,
            "spec.subnetIds: subnet-0000000b is not allowed for this namespace by the operator's tenant policy"
        );
        let err = p.admits(&asked("x", &[], &good_sgs)).expect_err("denied");
        assert!(err.0.starts_with("spec.subnetIds is empty"), "{err}");
        let err = p
            .admits(&asked("x", &good_subnets, &["sg-0000000b".to_string()]))
            .expect_err("denied");
        assert!(
            err.0.starts_with("spec.securityGroupIds: sg-0000000b"),
            "{err}"
        );
        let err = p
            .admits(&asked("x", &good_subnets, &[]))
            .expect_err("denied");
        assert!(err.0.starts_with("spec.securityGroupIds is empty"), "{err}");

        let mut a = asked("x", &good_subnets, &good_sgs);
        a.instance_profile = Some("admin");
        let err = p.admits(&a).expect_err("denied");
        assert_eq!(
            err.0,
            "spec.instanceProfile \"admin\" is not allowed for this namespace by the operator's tenant policy"
        );
        assert!(!err.0.contains("hpc-node"));
        a.instance_profile = Some("hpc-node");
        assert_eq!(p.admits(&a), Ok(()));
    }

    #[test]
    fn image_owners_match_the_account_id_or_the_alias() {
        let p = TenantPolicy {
            image_owners: set(&["123456789012", "amazon"]),
            ..Default::default()
        };
        assert_eq!(p.admits_image("ami-1", Some("123456789012"), None), Ok(()));
        assert_eq!(
            p.admits_image("ami-2", Some("137112412989"), Some("amazon")),
            Ok(())
        );
        let err = p
            .admits_image("ami-3", Some("210987654321"), None)
            .expect_err("denied");
        assert!(
            err.0.starts_with("image ami-3 (owner 210987654321)"),
            "{err}"
        );
        assert!(!err.0.contains("123456789012"), "{err}");
        assert!(p.admits_image("ami-4", None, None).is_err());
    }

    #[test]
    fn values_are_checked_with_their_key() {
        let raw: RawPolicy = serde_yaml::from_str(
            "{namespaces: [Team_A], subnetIds: [subnet-xyz], securityGroupIds: [sg-0000000a], \
             imageOwners: [self, '12345'], instanceProfiles: ['a b']}",
        )
        .expect("parses");
        let problems = raw.validate("providers[0].policy").expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "providers[0].policy.namespaces[0]",
                "providers[0].policy.instanceProfiles[0]",
                "providers[0].policy.subnetIds[0]",
                "providers[0].policy.imageOwners[0]",
                "providers[0].policy.imageOwners[1]",
            ]
        );
        assert!(serde_yaml::from_str::<RawPolicy>("{namespace: [a]}").is_err());
        let raw: RawPolicy =
            serde_yaml::from_str("{namespaceSelector: {matchLabels: {}}}").expect("parses");
        let problems = raw
            .validate("p")
            .expect_err("an empty selector selects everything");
        assert_eq!(problems[0].0, "p.namespaceSelector.matchLabels");
        assert!(serde_yaml::from_str::<RawPolicy>(
            "{namespaceSelector: {matchExpressions: [{key: a, operator: Exists}]}}"
        )
        .is_err());
    }
}
