//! Subnets and security groups a template chooses by tags
//! (`spec.subnetSelector`, `spec.securityGroupSelector`): listed through the
//! provider, kept in a TTL cache shared by all templates
//! (`selectorRefreshInterval`, so an unchanged template costs one listing per
//! selector per interval however often it is reconciled), and checked for
//! what a launch needs: at least one match, and groups in one VPC with the
//! subnets. The controller writes the answer into status, and launches read
//! it as ids ([`crate::api::MachineTemplate::with_selections`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{MachineTemplate, SelectedSecurityGroup, SelectedSubnet, TagSelector};
use crate::controller::reason::Reason;
use crate::image::cache::TtlCache;
use crate::provider::{
    ErrorDetail, MachineProvider, ProviderError, SecurityGroupFacts, SubnetFacts, TagQuery,
};

use super::evaluate::{NotReady, RETRY_MISSING};

type Key = (String, TagQuery);

/// The shared caches of tag selections, one entry per provider and selector.
pub struct Selections {
    ttl: Duration,
    subnets: Arc<TtlCache<Key, Vec<SubnetFacts>, ProviderError>>,
    groups: Arc<TtlCache<Key, Vec<SecurityGroupFacts>, ProviderError>>,
}

/// What a template's selectors chose, and how soon to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    /// The selected subnets, by zone then id; empty without a subnet selector.
    pub subnets: Vec<SelectedSubnet>,
    /// The selected groups, by id; empty without a group selector.
    pub security_groups: Vec<SelectedSecurityGroup>,
    /// When the first cached answer expires (the template's next look).
    pub refresh_in: Duration,
}

impl Selected {
    /// `mt` as launches see it with this selection: see
    /// [`MachineTemplate::with_selections`].
    pub fn apply(&self, mt: &MachineTemplate) -> Option<MachineTemplate> {
        let mut with = mt.clone();
        let status = with.status.get_or_insert_with(Default::default);
        status.selected_subnets = self.subnets.clone();
        status.selected_security_groups = self.security_groups.clone();
        with.with_selections()
    }
}

impl Selections {
    /// Empty caches whose answers live `ttl` (`selectorRefreshInterval`).
    pub fn new(ttl: Duration) -> Selections {
        Selections {
            ttl,
            subnets: TtlCache::new(ttl),
            groups: TtlCache::new(ttl),
        }
    }

    /// What `mt`'s selectors choose in `provider`; `None` when it has none.
    /// An empty answer is an error (and is not cached, so a resource tagged
    /// later is seen at the next look).
    pub async fn resolve(
        &self,
        mt: &MachineTemplate,
        provider: &Arc<dyn MachineProvider>,
    ) -> Result<Option<Selected>, NotReady> {
        if !mt.selects_network() {
            return Ok(None);
        }
        let mut refresh_in = Duration::MAX;
        let subnets = match &mt.spec.subnet_selector {
            None => Vec::new(),
            Some(selector) => {
                let kind = Kind {
                    field: "spec.subnetSelector",
                    operation: "DescribeSubnets",
                    what: "subnet",
                    reason: Reason::SubnetNotFound,
                };
                let (found, expires) = self
                    .pick(
                        &self.subnets,
                        provider,
                        selector,
                        kind,
                        |p, tags| async move { p.select_subnets(&tags).await },
                    )
                    .await?;
                refresh_in = refresh_in.min(expires);
                found
            }
        };
        let groups = match &mt.spec.security_group_selector {
            None => Vec::new(),
            Some(selector) => {
                let kind = Kind {
                    field: "spec.securityGroupSelector",
                    operation: "DescribeSecurityGroups",
                    what: "security group",
                    reason: Reason::SecurityGroupNotFound,
                };
                let (found, expires) = self
                    .pick(
                        &self.groups,
                        provider,
                        selector,
                        kind,
                        |p, tags| async move { p.select_security_groups(&tags).await },
                    )
                    .await?;
                refresh_in = refresh_in.min(expires);
                found
            }
        };
        one_vpc(&subnets, &groups, mt.spec.subnet_selector.is_some())?;
        Ok(Some(Selected {
            subnets: subnets
                .into_iter()
                .map(|s| SelectedSubnet {
                    id: s.id,
                    zone: s.zone,
                    vpc_id: s.vpc_id,
                })
                .collect(),
            security_groups: groups
                .into_iter()
                .map(|g| SelectedSecurityGroup {
                    id: g.id,
                    name: g.name,
                    vpc_id: g.vpc_id,
                })
                .collect(),
            refresh_in: refresh_in + Duration::from_secs(1),
        }))
    }

    /// One selector's answer, from `cache` or `list`ed now, and how long it
    /// stays fresh.
    async fn pick<T, F, Fut>(
        &self,
        cache: &Arc<TtlCache<Key, Vec<T>, ProviderError>>,
        provider: &Arc<dyn MachineProvider>,
        selector: &TagSelector,
        kind: Kind,
        list: F,
    ) -> Result<(Vec<T>, Duration), NotReady>
    where
        T: Clone + Send + Sync + 'static,
        F: FnOnce(Arc<dyn MachineProvider>, TagQuery) -> Fut,
        Fut: Future<Output = Result<Vec<T>, ProviderError>> + Send + 'static,
    {
        let key = (provider.name().to_string(), selector.tags.clone());
        let tags = selector.tags.clone();
        let fetch = list(provider.clone(), tags.clone());
        let (found, _) = cache
            .get_or_fetch(&key, move || async move {
                non_empty(fetch.await?, kind.operation, kind.what, &tags)
            })
            .await;
        let found =
            found.map_err(|e| not_ready(kind.field, kind.reason, provider, &e, self.ttl))?;
        Ok((found, cache.expires_in(&key).unwrap_or(RETRY_MISSING)))
    }
}

/// What one selector selects, for its messages.
#[derive(Clone, Copy)]
struct Kind {
    field: &'static str,
    operation: &'static str,
    what: &'static str,
    reason: Reason,
}

/// `found`, or a not-found error naming the tags when it is empty (an error,
/// so that the cache does not keep it).
fn non_empty<T>(
    found: Vec<T>,
    operation: &'static str,
    what: &str,
    tags: &TagQuery,
) -> Result<Vec<T>, ProviderError> {
    if found.is_empty() {
        return Err(ProviderError::NotFound(ErrorDetail {
            operation,
            code: "NoMatch".into(),
            message: format!(
                "no {what} carries the tags {}",
                describe(&TagSelector { tags: tags.clone() })
            ),
        }));
    }
    Ok(found)
}

/// The NotReady of a failed selection: an empty one says what matched
/// nothing where, and is looked at again within `ttl` (a resource tagged
/// later is seen as soon as a kept answer would be); a failed call says what
/// the cloud said.
fn not_ready(
    field: &str,
    reason: Reason,
    provider: &Arc<dyn MachineProvider>,
    err: &ProviderError,
    ttl: Duration,
) -> NotReady {
    match err {
        ProviderError::NotFound(d) if d.code == "NoMatch" => NotReady::new(
            reason,
            format!("{field}: {} in provider {}", d.message, provider.name()),
            Some(RETRY_MISSING.min(ttl)),
        ),
        _ => NotReady::from_provider(field, reason, err),
    }
}

fn describe(selector: &TagSelector) -> String {
    selector
        .tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A machine's security groups must all be in its subnet's VPC: selected
/// groups spanning several VPCs, or selected subnets outside the groups' VPC,
/// could never launch. (Ids written in the spec are the user's to match.)
fn one_vpc(
    subnets: &[SubnetFacts],
    groups: &[SecurityGroupFacts],
    subnets_selected: bool,
) -> Result<(), NotReady> {
    let group_vpcs: BTreeSet<&str> = groups.iter().filter_map(|g| g.vpc_id.as_deref()).collect();
    if group_vpcs.len() > 1 {
        let listed: Vec<String> = groups
            .iter()
            .map(|g| format!("{} ({})", g.id, g.vpc_id.as_deref().unwrap_or("no VPC")))
            .collect();
        return Err(NotReady::new(
            Reason::InvalidSpec,
            format!(
                "spec.securityGroupSelector selects groups in several VPCs: {}; a machine's groups must all be in its subnet's VPC, so narrow the selector",
                listed.join(", ")
            ),
            Some(RETRY_MISSING),
        ));
    }
    let Some(vpc) = group_vpcs.first() else {
        return Ok(());
    };
    if !subnets_selected {
        return Ok(());
    }
    let outside: Vec<&str> = subnets
        .iter()
        .filter(|s| s.vpc_id.as_deref().is_some_and(|v| v != *vpc))
        .map(|s| s.id.as_str())
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    Err(NotReady::new(
        Reason::InvalidSpec,
        format!(
            "spec.subnetSelector selects subnets outside {vpc}, the VPC of the selected security groups: {}; narrow one of the selectors",
            outside.join(", ")
        ),
        Some(RETRY_MISSING),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, vpc: &str) -> SubnetFacts {
        SubnetFacts {
            zone: Some("us-east-1a".into()),
            id: id.into(),
            vpc_id: Some(vpc.into()),
        }
    }

    fn group(id: &str, vpc: &str) -> SecurityGroupFacts {
        SecurityGroupFacts {
            id: id.into(),
            name: None,
            vpc_id: Some(vpc.into()),
        }
    }

    #[test]
    fn groups_must_share_one_vpc_with_the_selected_subnets() {
        let subnets = [subnet("subnet-1", "vpc-a"), subnet("subnet-2", "vpc-a")];
        assert!(one_vpc(&subnets, &[group("sg-1", "vpc-a")], true).is_ok());
        assert!(
            one_vpc(&subnets, &[], true).is_ok(),
            "no groups: each VPC's default"
        );

        let split = one_vpc(
            &[],
            &[group("sg-1", "vpc-a"), group("sg-2", "vpc-b")],
            false,
        )
        .expect_err("groups in two VPCs");
        assert_eq!(split.reason, Reason::InvalidSpec);
        assert!(
            split.message.contains("sg-1 (vpc-a), sg-2 (vpc-b)"),
            "{}",
            split.message
        );

        let outside = one_vpc(&subnets, &[group("sg-1", "vpc-b")], true)
            .expect_err("subnets outside the groups' VPC");
        assert!(
            outside.message.contains("subnet-1, subnet-2"),
            "{}",
            outside.message
        );
        // Subnets written as ids are not the selector's to judge.
        assert!(one_vpc(&subnets, &[group("sg-1", "vpc-b")], false).is_ok());
    }

    #[test]
    fn an_empty_answer_names_the_tags_and_is_an_error() {
        let tags: TagQuery = [("tier".to_string(), "hpc".to_string())].into();
        let err = non_empty(
            Vec::<SubnetFacts>::new(),
            "DescribeSubnets",
            "subnet",
            &tags,
        )
        .expect_err("empty");
        let ProviderError::NotFound(detail) = err else {
            panic!("not a NotFound: {err:?}");
        };
        assert_eq!(detail.message, "no subnet carries the tags tier=hpc");
        assert_eq!(
            non_empty(vec![1], "DescribeSubnets", "subnet", &tags),
            Ok(vec![1])
        );
    }
}
