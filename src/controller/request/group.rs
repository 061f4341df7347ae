//! Coalesced launches, the pure part: what a group of batches sends as one
//! call, how its members are told apart, and how the instances of its answer
//! are shared out.
//!
//! Every member's batch is recorded in its own request's status first, as for
//! a batch sent alone. When several of them can share a call (same provider,
//! template, image, offering, zone and every other parameter but their own
//! ownership tags: [`Built::shared_digest`]), a LaunchGroup naming them, their
//! counts and the group's token is created before the one call is made, and
//! a member's own token is then never sent. The split is derived from EC2's
//! authoritative answer to the group's token (the same token returns the same
//! instances, <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>):
//! the instance ids sorted, handed out in member order ([`split`]), so every
//! member that asks again after a crash gets the same share without anyone
//! having written it down.
//!
//! [`Built::shared_digest`]: super::batch::Built::shared_digest

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::api::{LaunchGroupMember, LaunchGroupSpec};
use crate::controller::cloud::ownership::{
    BATCH_TAG, GROUP_TAG, NAME_TAG, REQUEST_TAG, REQUEST_UID_TAG,
};
use crate::provider::{
    CapacityType, ErrorDetail, LaunchAnswer, LaunchSpec, Machine, ProviderError,
};

/// Most members one call carries: the LaunchGroup stays small, and a refused
/// call sets back no more than this many requests at once.
pub const MAX_MEMBERS: usize = 50;

/// The tags a member's own spec has and the group's does not: one call's
/// tags are the same for every instance. A request's `spec.tags` are not
/// among them: they stay in the shared part, so only batches asking for the
/// same request tags share a call, and the call carries exactly those.
const OWN_TAGS: [&str; 4] = [REQUEST_TAG, REQUEST_UID_TAG, BATCH_TAG, NAME_TAG];

/// A member's spec with everything that is its own cleared: what two batches
/// must agree on to share a call.
pub fn shared_part(spec: &LaunchSpec) -> LaunchSpec {
    let mut shared = spec.clone();
    shared.batch_id.clear();
    shared.client_token.clear();
    shared.count = 0;
    for tag in OWN_TAGS {
        shared.tags.remove(tag);
    }
    shared
}

/// The LaunchGroup object name and token for these members: derived from the
/// members' own tokens, so it is the same whoever computes it.
pub fn name_and_token(members: &[LaunchGroupMember]) -> (String, String) {
    let mut hash = Sha256::new();
    for m in members {
        hash.update(m.uid.as_bytes());
        hash.update(b"/");
        hash.update(m.batch.as_bytes());
        hash.update(b"\0");
    }
    let hex = super::batch::hex_prefix(hash, 12);
    (format!("lg-{hex}"), format!("hostforge-lg-{hex}"))
}

/// What the group's call sends: any member's spec (they share everything but
/// their own tags) with the group's token and count, and the group's tags in
/// place of the member's: `Name` from the template's tags (or the template's
/// name) and [`GROUP_TAG`] naming the LaunchGroup.
pub fn group_spec(
    member_spec: &LaunchSpec,
    group: &LaunchGroupSpec,
    namespace: &str,
    name: &str,
    template_tags: &BTreeMap<String, String>,
) -> LaunchSpec {
    let mut spec = shared_part(member_spec);
    spec.batch_id = name.to_string();
    spec.client_token = group.token.clone();
    spec.count = group.count;
    let display = template_tags
        .get(NAME_TAG)
        .cloned()
        .unwrap_or_else(|| group.template.clone());
    spec.tags.insert(NAME_TAG.into(), display);
    spec.tags
        .insert(GROUP_TAG.into(), format!("{namespace}/{name}"));
    if group.members.iter().any(|m| m.on_demand.is_some()) {
        spec.capacity.on_demand_units =
            Some(group.members.iter().filter_map(|m| m.on_demand).sum());
    }
    spec
}

/// A member's on-demand share when its launch mixes on-demand and spot in
/// one fleet (what it would ask for alone); `None` for one capacity type.
pub fn mixed_on_demand(spec: &LaunchSpec) -> Option<i32> {
    let pct = spec.capacity.on_demand_percent;
    (spec.api == crate::provider::LaunchApi::Fleet && pct > 0 && pct < 100)
        .then(|| spec.capacity.on_demand_count(spec.count))
}

/// Shares the machines of the group's answer out to its members: sorted by
/// id, the first member takes its count, then the next, so a short answer
/// leaves the last members short. The same answer always splits the same
/// way, whoever splits it. In a mixed fleet (members with an on-demand
/// share) the on-demand and the spot machines are shared out separately the
/// same way, each member taking its on-demand share from the first and the
/// rest of its count from the second.
pub fn split(machines: &[Machine], members: &[LaunchGroupMember]) -> Vec<Vec<Machine>> {
    let mut sorted: Vec<&Machine> = machines.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted.dedup_by(|a, b| a.id == b.id);
    let take = |n: i32| usize::try_from(n.max(0)).unwrap_or(0);
    if members.iter().any(|m| m.on_demand.is_some()) {
        let (on_demand, spot): (Vec<&Machine>, Vec<&Machine>) = sorted
            .into_iter()
            .partition(|m| m.capacity_type == CapacityType::OnDemand);
        let (mut on_demand, mut spot) = (on_demand.into_iter(), spot.into_iter());
        return members
            .iter()
            .map(|m| {
                let od = m.on_demand.unwrap_or(0).clamp(0, m.count.max(0));
                let mut share: Vec<Machine> = on_demand.by_ref().take(take(od)).cloned().collect();
                share.extend(spot.by_ref().take(take(m.count - od)).cloned());
                share
            })
            .collect();
    }
    let mut rest = sorted.into_iter();
    members
        .iter()
        .map(|m| rest.by_ref().take(take(m.count)).cloned().collect())
        .collect()
}

/// Member `uid`/`batch`'s share of the group's answer: its machines, and the
/// answer's shortfall reasons when it got fewer than its count.
pub fn share_of(
    answer: &LaunchAnswer,
    members: &[LaunchGroupMember],
    uid: &str,
    batch: &str,
) -> Option<LaunchAnswer> {
    let at = members
        .iter()
        .position(|m| m.uid == uid && m.batch == batch)?;
    let machines = split(&answer.machines, members).swap_remove(at);
    let short = i32::try_from(machines.len()).unwrap_or(i32::MAX) < members[at].count;
    Some(LaunchAnswer {
        machines,
        shortfall: if short {
            answer.shortfall.clone()
        } else {
            Vec::new()
        },
    })
}

/// The error of an answer that cannot be shared out to `uid`/`batch` because
/// group `name` does not list it: nothing to adopt, and unclear, so the batch
/// stays Pending.
pub fn not_a_member(name: &str) -> ProviderError {
    ProviderError::Unknown(ErrorDetail {
        operation: "RunInstances",
        code: "NotAMember".into(),
        message: format!("launch group {name} does not list this batch"),
    })
}

/// Whether `group` names member `uid`/`batch`.
pub fn has_member(group: &LaunchGroupSpec, uid: &str, batch: &str) -> bool {
    group
        .members
        .iter()
        .any(|m| m.uid == uid && m.batch == batch)
}

/// A RunInstances spec for unit tests of coalescing.
#[cfg(test)]
pub(crate) fn test_spec(batch: &str) -> LaunchSpec {
    LaunchSpec {
        batch_id: batch.into(),
        client_token: String::new(),
        count: 3,
        api: crate::provider::LaunchApi::RunInstances,
        image_id: "ami-1".into(),
        root_device_name: None,
        instance_types: Vec::new(),
        subnet_ids: Vec::new(),
        availability_zone: Some("us-east-1a".into()),
        capacity: crate::provider::LaunchCapacity::on_demand(),
        security_group_ids: Vec::new(),
        key_name: None,
        instance_profile: None,
        user_data: None,
        root_volume: None,
        metadata: crate::provider::MetadataSpec {
            http_tokens_required: true,
            hop_limit: None,
        },
        tags: BTreeMap::new(),
        options: crate::provider::LaunchOptions::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::MachineState;

    fn member(uid: &str, count: i32) -> LaunchGroupMember {
        LaunchGroupMember {
            request: format!("r-{uid}"),
            uid: uid.into(),
            batch: format!("{uid}-1"),
            count,
            on_demand: None,
        }
    }

    fn machine(id: &str) -> Machine {
        Machine::bare(id, MachineState::Pending)
    }

    #[test]
    fn the_same_answer_in_any_order_splits_the_same_way() {
        let members = [member("a", 2), member("b", 1), member("c", 2)];
        let ids = ["i-05", "i-01", "i-04", "i-02", "i-03"];
        let forward: Vec<Machine> = ids.iter().map(|i| machine(i)).collect();
        let backward: Vec<Machine> = ids.iter().rev().map(|i| machine(i)).collect();
        let ids_of = |shares: Vec<Vec<Machine>>| -> Vec<Vec<String>> {
            shares
                .into_iter()
                .map(|s| s.into_iter().map(|m| m.id).collect())
                .collect()
        };
        let want = vec![
            vec!["i-01".to_string(), "i-02".into()],
            vec!["i-03".into()],
            vec!["i-04".into(), "i-05".into()],
        ];
        assert_eq!(ids_of(split(&forward, &members)), want);
        assert_eq!(ids_of(split(&backward, &members)), want);
    }

    #[test]
    fn a_short_answer_leaves_the_last_members_short_and_says_why() {
        let members = [member("a", 2), member("b", 2)];
        let answer = LaunchAnswer {
            machines: vec![machine("i-2"), machine("i-1"), machine("i-3")],
            shortfall: vec![crate::provider::Shortfall {
                code: "InsufficientInstanceCapacity".into(),
                message: "none left".into(),
                capacity: true,
                instance_type: None,
                subnet_id: None,
                spot: None,
            }],
        };
        let a = share_of(&answer, &members, "a", "a-1").expect("a is a member");
        assert_eq!(a.machines.len(), 2);
        assert!(a.shortfall.is_empty(), "a got all it asked for");
        let b = share_of(&answer, &members, "b", "b-1").expect("b is a member");
        assert_eq!(
            b.machines.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["i-3"]
        );
        assert_eq!(b.shortfall.len(), 1, "b is short and learns why");
        assert!(share_of(&answer, &members, "c", "c-1").is_none());
        // A duplicate id in an answer is one machine, never two shares.
        let twice = [machine("i-1"), machine("i-1")];
        assert_eq!(split(&twice, &members)[0].len(), 1);
    }

    #[test]
    fn a_mixed_fleet_gives_each_member_its_own_on_demand_share() {
        // 50 % on-demand: alone, 3 machines would be 2 on-demand + 1 spot and
        // 1 machine 1 on-demand; together the call asks for 5 of 7.
        let mut fleet = test_spec("a-1");
        fleet.api = crate::provider::LaunchApi::Fleet;
        fleet.capacity.on_demand_percent = 50;
        let with = |uid: &str, count: i32| {
            let mut s = fleet.clone();
            s.count = count;
            LaunchGroupMember {
                on_demand: mixed_on_demand(&s),
                ..member(uid, count)
            }
        };
        let members = vec![with("a", 3), with("b", 3), with("c", 1)];
        assert_eq!(
            members.iter().map(|m| m.on_demand).collect::<Vec<_>>(),
            [Some(2), Some(2), Some(1)]
        );
        let group = LaunchGroupSpec {
            template: "t".into(),
            provider: "aws".into(),
            token: "tok".into(),
            count: 7,
            params_digest: "d".into(),
            members: members.clone(),
        };
        let sent = group_spec(&fleet, &group, "ns", "lg-1", &BTreeMap::new());
        assert_eq!(sent.capacity.on_demand_count(sent.count), 5);
        assert_eq!(
            sent.capacity.on_demand_count(7),
            5,
            "not 50 % of 7 rounded up"
        );

        let spot = |id: &str| Machine {
            capacity_type: CapacityType::Spot,
            ..machine(id)
        };
        let answer = [
            machine("i-7"),
            spot("i-1"),
            machine("i-3"),
            spot("i-6"),
            machine("i-2"),
            machine("i-5"),
            machine("i-4"),
        ];
        let shares: Vec<Vec<(String, CapacityType)>> = split(&answer, &members)
            .into_iter()
            .map(|s| s.into_iter().map(|m| (m.id, m.capacity_type)).collect())
            .collect();
        let od = CapacityType::OnDemand;
        let sp = CapacityType::Spot;
        assert_eq!(
            shares,
            [
                vec![("i-2".into(), od), ("i-3".into(), od), ("i-1".into(), sp)],
                vec![("i-4".into(), od), ("i-5".into(), od), ("i-6".into(), sp)],
                vec![("i-7".into(), od)],
            ]
        );
        // One capacity type, or RunInstances: no on-demand share is kept.
        let mut all_spot = fleet.clone();
        all_spot.capacity.on_demand_percent = 0;
        assert_eq!(mixed_on_demand(&all_spot), None);
        let mut run = fleet.clone();
        run.api = crate::provider::LaunchApi::RunInstances;
        assert_eq!(mixed_on_demand(&run), None);
    }

    #[test]
    fn members_that_differ_only_in_their_own_tags_share_a_call() {
        let spec = |uid: &str, batch: &str| {
            let mut s = test_spec(batch);
            s.client_token = format!("tok-{batch}");
            s.tags.insert(REQUEST_UID_TAG.into(), uid.into());
            s.tags.insert(BATCH_TAG.into(), batch.into());
            s.tags.insert(REQUEST_TAG.into(), format!("ns/{uid}"));
            s.tags.insert(NAME_TAG.into(), uid.into());
            s
        };
        let (a, b) = (spec("a", "a-1"), spec("b", "b-1"));
        assert_ne!(a, b);
        assert_eq!(shared_part(&a), shared_part(&b));
        let mut other_type = spec("c", "c-1");
        other_type.image_id = "ami-other".into();
        assert_ne!(shared_part(&a), shared_part(&other_type));

        let members = vec![member("a", 3), member("b", 3)];
        let (name, token) = name_and_token(&members);
        assert_eq!((name.clone(), token.clone()), name_and_token(&members));
        assert!(token.len() <= 64, "{token}");
        let group = LaunchGroupSpec {
            template: "web".into(),
            provider: "aws".into(),
            token: token.clone(),
            count: 6,
            params_digest: String::new(),
            members,
        };
        let sent = group_spec(&a, &group, "ns", &name, &BTreeMap::new());
        assert_eq!(sent.count, 6);
        assert_eq!(sent.client_token, token);
        assert_eq!(sent.tags.get(GROUP_TAG), Some(&format!("ns/{name}")));
        assert_eq!(sent.tags.get(NAME_TAG).map(String::as_str), Some("web"));
        for own in [REQUEST_TAG, REQUEST_UID_TAG, BATCH_TAG] {
            assert!(!sent.tags.contains_key(own), "{own} is a member's own");
        }
        assert_eq!(sent, group_spec(&b, &group, "ns", &name, &BTreeMap::new()));
    }
}
