//! Turning a template and a planned batch into the provider's [`LaunchSpec`]:
//! which offering to try (skipping those without capacity), the batch record
//! written to status before the launch, its ClientToken and pinned zone, the
//! digest that guards re-sending that token, and the backoff new batches wait
//! after launches the cloud refused.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};

use crate::api::request::LaunchFailure;
use crate::api::{
    CapacityType, HttpTokens, LaunchBatch, LaunchState, MachineTemplateSpec, ProviderApi,
};
use crate::controller::cloud::capacity::{CapacityCache, Offering};
use crate::controller::cloud::ownership::Owner;
use crate::controller::reason::refused_backoff;
use crate::provider::{
    BaseTemplate, InstanceTypeChoice, LaunchApi, LaunchCapacity, LaunchOptions, LaunchSpec,
    MetadataSpec, VolumeSpec,
};

/// Most machines one launch call asks for: EC2 refills its launched-instances
/// bucket at 2/s from a burst of 1,000, so one batch never takes the whole burst.
pub const MAX_BATCH: i32 = 500;

/// The instance types and subnets a new batch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Instance types (RunInstances: one).
    pub instance_types: Vec<String>,
    /// Subnets (RunInstances: at most one; empty: the default subnet).
    pub subnet_ids: Vec<String>,
}

fn is_spot(spec: &MachineTemplateSpec) -> bool {
    spec.capacity_type == CapacityType::Spot
}

fn offering(provider: &str, instance_type: &str, subnet: &str, spot: bool) -> Offering {
    Offering {
        provider: provider.to_string(),
        instance_type: instance_type.to_string(),
        subnet: subnet.to_string(),
        spot,
    }
}

fn subnets_or_default(spec: &MachineTemplateSpec) -> Vec<String> {
    if spec.subnet_ids.is_empty() {
        vec![String::new()]
    } else {
        spec.subnet_ids.clone()
    }
}

/// The instance type of an offering whose types EC2 picks from the
/// template's instance requirements: every type of that subnet at once.
pub const ANY_TYPE: &str = "*";

/// The instance types of `names` as offerings: `names`, or [`ANY_TYPE`]
/// when there are none (EC2 picks them from instance requirements).
fn offered_types(names: Vec<String>) -> Vec<String> {
    if names.is_empty() {
        vec![ANY_TYPE.to_string()]
    } else {
        names
    }
}

/// The first offerings with capacity, in the template's order of preference;
/// `None` when every one is cooling down after a capacity error.
pub fn choose(spec: &MachineTemplateSpec, provider: &str, cache: &CapacityCache) -> Option<Choice> {
    let spot = is_spot(spec);
    let subnets = subnets_or_default(spec);
    let available = |t: &str, s: &str| cache.is_available(&offering(provider, t, s, spot));
    let non_default = |s: &String| !s.is_empty();
    match spec.provider_api {
        ProviderApi::RunInstances => {
            for t in &spec.instance_types {
                for s in &subnets {
                    if available(&t.instance_type, s) {
                        return Some(Choice {
                            instance_types: vec![t.instance_type.clone()],
                            subnet_ids: [s.clone()].into_iter().filter(non_default).collect(),
                        });
                    }
                }
            }
            None
        }
        ProviderApi::Ec2Fleet if spec.instance_requirements.is_some() => {
            // EC2 picks the types: the subnets are the offerings, each
            // cooled down as a whole (type ANY_TYPE) after a capacity verdict.
            let subnet_ids: Vec<String> = subnets
                .iter()
                .filter(|s| available(ANY_TYPE, s))
                .cloned()
                .collect();
            if subnet_ids.is_empty() {
                return None;
            }
            Some(Choice {
                instance_types: Vec::new(),
                subnet_ids: subnet_ids.into_iter().filter(non_default).collect(),
            })
        }
        ProviderApi::Ec2Fleet => {
            let types: Vec<String> = spec
                .instance_types
                .iter()
                .map(|t| t.instance_type.clone())
                .filter(|t| subnets.iter().any(|s| available(t, s)))
                .collect();
            let subnet_ids: Vec<String> = subnets
                .iter()
                .filter(|s| types.iter().any(|t| available(t, s)))
                .cloned()
                .collect();
            if types.is_empty() {
                return None;
            }
            Some(Choice {
                instance_types: types,
                subnet_ids: subnet_ids.into_iter().filter(non_default).collect(),
            })
        }
    }
}

/// The zone a new batch is pinned to: without a subnet (RunInstances or an
/// EC2 Fleet alike), one of the provider's default zones, taken in turn by
/// batch number so batches spread over zones as EC2 would spread them; `None`
/// with a subnet (it names the zone) or when the provider pins no zones.
/// EC2's ClientToken is zonal, so the zone is recorded with the batch and every
/// send of it goes to the same zone (RunInstances as `Placement`, a fleet as
/// each override's `AvailabilityZone`).
pub fn pinned_zone(
    api: ProviderApi,
    choice: &Choice,
    zones: &[String],
    seq: u32,
) -> Option<String> {
    let pins = matches!(api, ProviderApi::RunInstances | ProviderApi::Ec2Fleet);
    if !pins || !choice.subnet_ids.is_empty() || zones.is_empty() {
        return None;
    }
    let turn = usize::try_from(seq.saturating_sub(1)).unwrap_or(0) % zones.len();
    zones.get(turn).cloned()
}

/// The backoff new batches are under after launches refused in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalHold {
    /// The newest refused batch.
    pub batch_id: String,
    /// What the cloud said about it (its code and message).
    pub cause: String,
    /// Launches refused in a row.
    pub refusals: u32,
    /// The wait after that many refusals.
    pub backoff: Duration,
    /// What is left of the wait now; zero once a new batch may go.
    pub remaining: Duration,
}

impl RefusalHold {
    /// Whether a new batch must still wait.
    pub fn is_holding(&self) -> bool {
        !self.remaining.is_zero()
    }

    /// What the request's conditions say while the hold lasts: the cloud's
    /// code and message, and the wait (the same text for the whole wait, so
    /// the condition is not rewritten on every look).
    pub fn describe(&self) -> String {
        format!(
            "batch {} was refused, nothing was launched: {} ({} refused in a row; the next batch waits {}s)",
            self.batch_id,
            self.cause,
            self.refusals,
            self.backoff.as_secs()
        )
    }
}

/// The backoff after the refused launches at the end of `launches`: batches
/// Failed as [`LaunchFailure::Refused`] count, newest first; capacity
/// refusals (which cool their offering down instead) and Pending batches are
/// passed over; a Launched batch or one failed without a refusal (not
/// re-sent after a template change) ends the run. The wait runs from when the
/// newest refused batch was recorded. `None` without a refusal.
pub fn refusal_hold(launches: &[LaunchBatch], now: &Time) -> Option<RefusalHold> {
    let mut refused = launches
        .iter()
        .rev()
        .filter(|b| b.state != LaunchState::Pending)
        .take_while(|b| b.state == LaunchState::Failed && b.failure.is_some())
        .filter(|b| b.failure == Some(LaunchFailure::Refused));
    let newest = refused.next()?;
    let refusals = u32::try_from(refused.count() + 1).unwrap_or(u32::MAX);
    let backoff = refused_backoff(refusals);
    let elapsed = newest.created_at.as_ref().map_or(backoff, |at| {
        let ms = now.0.as_millisecond().saturating_sub(at.0.as_millisecond());
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    });
    Some(RefusalHold {
        batch_id: newest.id.clone(),
        cause: newest.message.clone().unwrap_or_default(),
        refusals,
        backoff,
        remaining: backoff.saturating_sub(elapsed),
    })
}

/// Every offering a template can launch on (types × subnets, or the
/// default subnet), to tell its causes from other templates'.
pub fn offerings_of_template(spec: &MachineTemplateSpec, provider: &str) -> Vec<Offering> {
    let spot = is_spot(spec);
    let subnets = subnets_or_default(spec);
    let types = offered_types(
        spec.instance_types
            .iter()
            .map(|t| t.instance_type.clone())
            .collect(),
    );
    types
        .iter()
        .flat_map(|t| subnets.iter().map(move |s| offering(provider, t, s, spot)))
        .collect()
}

/// Every offering a batch asked for, to mark after a capacity error.
pub fn offerings_of(batch: &LaunchBatch, provider: &str) -> Vec<Offering> {
    let spot = batch.capacity_type == Some(CapacityType::Spot);
    let subnets = if batch.subnet_ids.is_empty() {
        vec![String::new()]
    } else {
        batch.subnet_ids.clone()
    };
    offered_types(batch.instance_types.clone())
        .iter()
        .flat_map(|t| subnets.iter().map(move |s| offering(provider, t, s, spot)))
        .collect()
}

/// The batch id: the first 8 characters of the request uid and a sequence
/// number, unique per request and short enough for tags and template names.
pub fn batch_id(uid: &str, seq: u32) -> String {
    let prefix: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{prefix}-{seq}")
}

/// The next free sequence number given the batches status remembers (the last
/// batch is never pruned, so numbers only grow).
pub fn next_seq(launches: &[LaunchBatch]) -> u32 {
    launches
        .iter()
        .filter_map(|b| b.id.rsplit('-').next()?.parse::<u32>().ok())
        .max()
        .map_or(1, |n| n + 1)
}

/// The ClientToken of one attempt of one batch: derived only from the request
/// uid, batch id and attempt, so it is the same after any restart. 36 + at most
/// 22 characters, within EC2's 64.
pub fn client_token(uid: &str, batch: &str, attempt: i32) -> String {
    let seq = batch.rsplit('-').next().unwrap_or(batch);
    format!("{uid}-{seq}-{attempt}")
}

/// A new batch record (state Pending) for `count` machines of `choice`.
pub fn new_batch(
    uid: &str,
    seq: u32,
    count: i32,
    choice: &Choice,
    spec: &MachineTemplateSpec,
    image_id: &str,
    now: Time,
) -> LaunchBatch {
    let id = batch_id(uid, seq);
    LaunchBatch {
        token: client_token(uid, &id, 0),
        id,
        attempt: 0,
        count,
        params_digest: String::new(),
        state: LaunchState::Pending,
        image_id: Some(image_id.to_string()),
        instance_types: choice.instance_types.clone(),
        subnet_ids: choice.subnet_ids.clone(),
        capacity_type: Some(spec.capacity_type),
        created_at: Some(now),
        message: None,
        availability_zone: None,
        failure: None,
        group: None,
        launch_template: None,
        template_digest: None,
    }
}

/// What the launch needs besides the template and the batch record.
pub struct Extras<'a> {
    /// Who owns the machines (tags).
    pub owner: &'a Owner,
    /// The request's own `spec.tags`, put over the template's. They are part
    /// of what batches must share to go out in one call
    /// ([`super::group::shared_part`] keeps them), so a coalesced call only
    /// ever carries tags every one of its requests asked for.
    pub request_tags: &'a BTreeMap<String, String>,
    /// The image's root device, where rootVolume applies.
    pub root_device_name: Option<String>,
    /// User data read from the template's Secret.
    pub user_data: Option<UserData>,
}

/// User data as read from the template's Secret, with the key of its share
/// of the batch's digest.
pub struct UserData {
    /// The bytes the machines get.
    pub bytes: Vec<u8>,
    /// The Secret's `metadata.uid`: keys the user data's HMAC in [`digest`],
    /// so the digest in status confirms no guess of the bytes.
    pub secret_uid: String,
}

/// A batch's launch spec and the digest recorded with (or compared against)
/// its token, built together so launching and settling digest alike.
pub struct Built {
    /// What the provider is asked to launch.
    pub spec: LaunchSpec,
    /// [`digest`] of `spec`, keyed by the user data's Secret.
    pub digest: String,
    /// [`digest`] of what `spec` shares with the batches of other requests
    /// of the template ([`super::group::shared_part`]): batches with equal
    /// shared digests may go out in one coalesced call.
    pub shared_digest: String,
}

/// The launch spec of `batch` with the template as it is now, and its digest.
pub fn build(batch: &LaunchBatch, template: &MachineTemplateSpec, extras: &Extras) -> Built {
    let spec = spec_for(batch, template, extras);
    let key = extras.user_data.as_ref().map(|u| u.secret_uid.as_str());
    let digest = digest(&spec, key.unwrap_or_default());
    let shared_digest = self::digest(&super::group::shared_part(&spec), key.unwrap_or_default());
    Built {
        spec,
        digest,
        shared_digest,
    }
}

/// The provider's launch spec for `batch` with the template as it is now.
pub fn spec_for(
    batch: &LaunchBatch,
    template: &MachineTemplateSpec,
    extras: &Extras,
) -> LaunchSpec {
    let capacity = match batch.capacity_type.unwrap_or(template.capacity_type) {
        CapacityType::OnDemand => LaunchCapacity::on_demand(),
        CapacityType::Spot => LaunchCapacity {
            on_demand_percent: 0,
            max_price: template.max_price.clone(),
            allocation_strategy: allocation_strategy(template),
            on_demand_units: None,
        },
        CapacityType::Mixed => LaunchCapacity {
            on_demand_percent: template.on_demand_percent.unwrap_or(0),
            max_price: template.max_price.clone(),
            allocation_strategy: allocation_strategy(template),
            on_demand_units: None,
        },
    };
    LaunchSpec {
        batch_id: batch.id.clone(),
        client_token: batch.token.clone(),
        count: batch.count,
        api: match template.provider_api {
            ProviderApi::RunInstances => LaunchApi::RunInstances,
            ProviderApi::Ec2Fleet => LaunchApi::Fleet,
        },
        image_id: batch.image_id.clone().unwrap_or_default(),
        root_device_name: extras.root_device_name.clone(),
        instance_types: batch
            .instance_types
            .iter()
            // Weights are not sent: a request counts machines, and a weighted
            // fleet would fill `count` capacity units with fewer, larger machines.
            .map(|t| InstanceTypeChoice {
                name: t.clone(),
                weight: None,
            })
            .collect(),
        subnet_ids: batch.subnet_ids.clone(),
        availability_zone: batch.availability_zone.clone(),
        capacity,
        security_group_ids: template.security_group_ids.clone(),
        key_name: template.key_name.clone(),
        instance_profile: template.instance_profile.clone(),
        user_data: extras.user_data.as_ref().map(|u| u.bytes.clone()),
        root_volume: template.root_volume.as_ref().map(|v| VolumeSpec {
            size_gib: v.size_gib,
            volume_type: enum_str(&v.volume_type),
            iops: v.iops,
            throughput: v.throughput,
            encrypted: v.encrypted,
            kms_key_id: v.kms_key_id.clone(),
        }),
        metadata: MetadataSpec {
            http_tokens_required: template.metadata_options.http_tokens == HttpTokens::Required,
            hop_limit: template.metadata_options.hop_limit,
        },
        tags: extras.owner.tags(&batch.id, &merged_tags(template, extras)),
        options: LaunchOptions {
            base_template: batch.launch_template.as_ref().map(|b| BaseTemplate {
                id: b.id.clone(),
                version: b.version,
            }),
            ..LaunchOptions::of_template(template)
        },
    }
}

/// The template's tags with the request's over them (a key in both takes the
/// request's value); ownership tags are added after both by [`Owner::tags`].
fn merged_tags(template: &MachineTemplateSpec, extras: &Extras) -> BTreeMap<String, String> {
    let mut tags = template.tags.clone();
    tags.extend(extras.request_tags.clone());
    tags
}

fn allocation_strategy(template: &MachineTemplateSpec) -> Option<String> {
    template.allocation_strategy.as_ref().map(enum_str)
}

/// The wire spelling of a serde enum (e.g. `price-capacity-optimized`).
fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A digest of every launch parameter, so a token is re-sent only with exactly
/// the parameters it was first sent with; it is written to status, which
/// anyone who may read the request reads.
///
/// Every parameter but the user data is in status or the template already,
/// so a plain hash over them all would let a reader confirm guesses of the
/// user data (a password in an otherwise known bootstrap script) offline.
/// The user data enters only as HMAC-SHA256 keyed by `user_data_key`, the
/// uid of the Secret it was read from: whoever can read that uid can read
/// the Secret's bytes anyway, and nobody else can check a guess. The HMAC
/// is over the bytes, not the Secret's `resourceVersion`, so the digest
/// changes exactly when the user data does (or the Secret is recreated) and
/// a label or annotation added to the Secret does not turn a re-send of a
/// pending batch into an adoption by tag.
pub fn digest(spec: &LaunchSpec, user_data_key: &str) -> String {
    let mut public = spec.clone();
    let user_data = public.user_data.take();
    let mut hash = Sha256::new();
    hash.update(format!("{public:?}").as_bytes());
    if let Some(bytes) = &user_data {
        hash.update(b"\0user-data-hmac-sha256\0");
        hash.update(hmac_sha256(user_data_key.as_bytes(), bytes));
    }
    format!("sha256:{}", hex_prefix(hash, 12))
}

/// The first `bytes` bytes of `hash`'s digest in lowercase hex: enough to
/// tell parameters (or groups) apart without writing all 32 bytes.
pub fn hex_prefix(hash: Sha256, bytes: usize) -> String {
    hash.finalize()
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// HMAC-SHA256 (RFC 2104) over `message` with `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut padded = [0u8; BLOCK];
    if key.len() > BLOCK {
        padded[..32].copy_from_slice(Sha256::digest(key).as_slice());
    } else {
        padded[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(padded.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(padded.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    let mut out = [0u8; 32];
    out.copy_from_slice(outer.finalize().as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_TAGS: BTreeMap<String, String> = BTreeMap::new();
    use crate::api::{ImageSource, InstanceTypeOption, MetadataOptions};
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn template(api: ProviderApi, types: &[&str], subnets: &[&str]) -> MachineTemplateSpec {
        MachineTemplateSpec {
            provider: None,
            provider_api: api,
            image: ImageSource::default(),
            instance_types: types
                .iter()
                .map(|t| InstanceTypeOption {
                    instance_type: t.to_string(),
                    weight: None,
                })
                .collect(),
            capacity_type: CapacityType::OnDemand,
            on_demand_percent: None,
            allocation_strategy: None,
            max_price: None,
            subnet_ids: subnets.iter().map(|s| s.to_string()).collect(),
            security_group_ids: vec![],
            key_name: None,
            instance_profile: None,
            user_data: None,
            root_volume: None,
            metadata_options: MetadataOptions::default(),
            tags: BTreeMap::new(),
            max_machines: None,
            ..MachineTemplateSpec::default()
        }
    }

    #[test]
    fn run_instances_falls_back_type_by_type_and_subnet_by_subnet() {
        let t = template(ProviderApi::RunInstances, &["a", "b"], &["s1", "s2"]);
        let cache = CapacityCache::new(Duration::from_secs(60));
        let first = choose(&t, "p", &cache).expect("available");
        assert_eq!(first.instance_types, ["a"]);
        assert_eq!(first.subnet_ids, ["s1"]);
        cache.mark_unavailable([offering("p", "a", "s1", false)]);
        assert_eq!(choose(&t, "p", &cache).expect("s2").subnet_ids, ["s2"]);
        cache.mark_unavailable([offering("p", "a", "s2", false)]);
        let next = choose(&t, "p", &cache).expect("b");
        assert_eq!(
            (next.instance_types, next.subnet_ids),
            (vec!["b".to_string()], vec!["s1".to_string()])
        );
        cache.mark_unavailable([
            offering("p", "b", "s1", false),
            offering("p", "b", "s2", false),
        ]);
        assert_eq!(choose(&t, "p", &cache), None);
    }

    #[test]
    fn fleet_uses_every_offering_with_capacity_and_default_subnet_is_empty() {
        let t = template(ProviderApi::Ec2Fleet, &["a", "b"], &[]);
        let cache = CapacityCache::new(Duration::from_secs(60));
        let c = choose(&t, "p", &cache).expect("available");
        assert_eq!(c.instance_types, ["a", "b"]);
        assert!(c.subnet_ids.is_empty());
        cache.mark_unavailable([offering("p", "a", "", false)]);
        assert_eq!(choose(&t, "p", &cache).expect("b").instance_types, ["b"]);
    }

    #[test]
    fn ids_tokens_and_sequence_are_stable() {
        let uid = "3f2a9c1e-aaaa-bbbb-cccc-0123456789ab";
        assert_eq!(batch_id(uid, 7), "3f2a9c1e-7");
        let token = client_token(uid, "3f2a9c1e-7", 2);
        assert_eq!(token, format!("{uid}-7-2"));
        assert!(token.len() <= 64);
        let choice = Choice {
            instance_types: vec!["a".into()],
            subnet_ids: vec![],
        };
        let t = template(ProviderApi::RunInstances, &["a"], &[]);
        let now = Time(Timestamp::from_second(1_700_000_000).expect("time"));
        let b = new_batch(uid, 7, 3, &choice, &t, "ami-1", now);
        assert_eq!(next_seq(&[]), 1);
        assert_eq!(next_seq(std::slice::from_ref(&b)), 8);
        assert_eq!(b.token, format!("{uid}-7-0"));
        assert_eq!(offerings_of(&b, "p"), vec![offering("p", "a", "", false)]);
    }

    #[test]
    fn a_batch_without_a_subnet_pins_a_zone_taken_in_turn() {
        let zones: Vec<String> = ["us-east-1a", "us-east-1b"].map(String::from).to_vec();
        let default = Choice {
            instance_types: vec!["a".into()],
            subnet_ids: vec![],
        };
        let subnet = Choice {
            subnet_ids: vec!["s1".into()],
            ..default.clone()
        };
        let run = ProviderApi::RunInstances;
        let fleet = ProviderApi::Ec2Fleet;
        type Row<'a> = (ProviderApi, &'a Choice, &'a [String], u32, Option<&'a str>);
        let table: [Row; 10] = [
            (run, &default, &zones, 1, Some("us-east-1a")),
            (run, &default, &zones, 2, Some("us-east-1b")),
            (run, &default, &zones, 3, Some("us-east-1a")),
            (run, &default, &zones, 0, Some("us-east-1a")),
            (run, &default, &[], 1, None),
            (run, &subnet, &zones, 1, None),
            (fleet, &default, &zones, 1, Some("us-east-1a")),
            (fleet, &default, &zones, 2, Some("us-east-1b")),
            (fleet, &default, &[], 1, None),
            (fleet, &subnet, &zones, 1, None),
        ];
        for (api, choice, zones, seq, want) in table {
            assert_eq!(
                pinned_zone(api, choice, zones, seq).as_deref(),
                want,
                "{api:?} {choice:?} {zones:?} {seq}"
            );
        }
    }

    /// Batches as status lists them, oldest first, and what the backoff is
    /// now: (batches, refusals in a row, remaining seconds), `None`: no hold.
    #[test]
    fn refused_batches_in_a_row_hold_the_next_one_back() {
        use crate::api::request::LaunchFailure::{Capacity, Refused};
        let now = Time(Timestamp::from_second(1_700_000_000).expect("time"));
        let b = |state: LaunchState, failure: Option<LaunchFailure>, ago: i64| LaunchBatch {
            failure,
            message: Some(format!("{failure:?}")),
            created_at: Some(Time(
                Timestamp::from_second(1_700_000_000 - ago).expect("time"),
            )),
            ..LaunchBatch::test("x", state)
        };
        let failed = LaunchState::Failed;
        let refused = |ago| b(failed, Some(Refused), ago);
        let capacity = |ago| b(failed, Some(Capacity), ago);
        let launched = |ago| b(LaunchState::Launched, None, ago);
        let pending = |ago| b(LaunchState::Pending, None, ago);
        let not_resent = |ago| b(failed, None, ago);
        type Row = (&'static str, Vec<LaunchBatch>, Option<(u32, u64)>);
        let table: Vec<Row> = vec![
            ("nothing yet", vec![], None),
            ("launched", vec![launched(1)], None),
            ("capacity only", vec![capacity(1)], None),
            ("one refusal just now", vec![refused(0)], Some((1, 5))),
            ("one refusal 3 s ago", vec![refused(3)], Some((1, 2))),
            ("one refusal, backoff over", vec![refused(5)], Some((1, 0))),
            ("two in a row", vec![refused(20), refused(1)], Some((2, 9))),
            (
                "three in a row",
                vec![refused(60), refused(40), refused(0)],
                Some((3, 20)),
            ),
            (
                "a launch ends the run",
                vec![refused(60), launched(30), refused(0)],
                Some((1, 5)),
            ),
            (
                "a batch not re-sent ends the run",
                vec![refused(60), not_resent(30), refused(0)],
                Some((1, 5)),
            ),
            (
                "capacity refusals neither count nor end the run",
                vec![refused(60), capacity(30), refused(0)],
                Some((2, 10)),
            ),
            (
                "a pending batch is passed over",
                vec![refused(2), pending(1)],
                Some((1, 3)),
            ),
            (
                "eight in a row: the ceiling",
                (0..8).map(|i| refused(100 - i)).collect(),
                Some((8, 207)),
            ),
            (
                "a refusal from the future waits the whole backoff",
                vec![refused(-50)],
                Some((1, 5)),
            ),
        ];
        for (what, launches, want) in table {
            let got = refusal_hold(&launches, &now).map(|h| (h.refusals, h.remaining.as_secs()));
            assert_eq!(got, want, "{what}");
        }
        let hold = refusal_hold(&[refused(1)], &now).expect("hold");
        assert!(hold.is_holding());
        assert!(hold.describe().contains("Some(Refused)"), "names the cause");
        assert!(!refusal_hold(&[refused(9)], &now)
            .expect("hold")
            .is_holding());
        let undated = LaunchBatch {
            created_at: None,
            ..refused(0)
        };
        assert!(!refusal_hold(&[undated], &now).expect("hold").is_holding());
    }

    /// The owner of request `ns/r` (uid `u`) of template `t`.
    fn owner() -> Owner {
        Owner {
            cluster: "c".into(),
            cluster_id: "id".into(),
            namespace: "ns".into(),
            name: "r".into(),
            uid: "u".into(),
            template: "t".into(),
        }
    }

    #[test]
    fn the_digest_changes_with_any_parameter() {
        let uid = "u";
        let t = template(ProviderApi::RunInstances, &["a"], &["s1"]);
        let now = Time(Timestamp::from_second(1_700_000_000).expect("time"));
        let choice = choose(&t, "p", &CapacityCache::new(Duration::ZERO)).expect("choice");
        let b = new_batch(uid, 1, 2, &choice, &t, "ami-1", now);
        let owner = owner();
        let extras = Extras {
            owner: &owner,
            request_tags: &NO_TAGS,
            root_device_name: None,
            user_data: Some(UserData {
                bytes: b"#!/bin/sh".to_vec(),
                secret_uid: "secret-uid".into(),
            }),
        };
        let spec = spec_for(&b, &t, &extras);
        assert_eq!(spec.instance_types[0].name, "a");
        assert_eq!(spec.subnet_ids, ["s1"]);
        assert_eq!(spec.tags["hostforge.io/batch"], "u-1");
        assert!(spec.metadata.http_tokens_required);
        let d = build(&b, &t, &extras).digest;
        assert_eq!(d, build(&b, &t, &extras).digest);
        let mut t2 = t.clone();
        t2.key_name = Some("ops".into());
        assert_ne!(d, build(&b, &t2, &extras).digest);
        let mut zoned = b.clone();
        zoned.availability_zone = Some("us-east-1a".into());
        let zoned_spec = spec_for(&zoned, &t, &extras);
        assert_eq!(zoned_spec.availability_zone.as_deref(), Some("us-east-1a"));
        assert_ne!(
            d,
            build(&zoned, &t, &extras).digest,
            "the pinned zone is a parameter"
        );
        // The user data is a parameter: other bytes from the same Secret, no
        // user data, or the same bytes from a recreated Secret all differ.
        let with = |bytes: &[u8], uid: &str| Extras {
            owner: &owner,
            request_tags: &NO_TAGS,
            root_device_name: None,
            user_data: Some(UserData {
                bytes: bytes.to_vec(),
                secret_uid: uid.into(),
            }),
        };
        assert_eq!(d, build(&b, &t, &with(b"#!/bin/sh", "secret-uid")).digest);
        assert_ne!(d, build(&b, &t, &with(b"#!/bin/bash", "secret-uid")).digest);
        assert_ne!(d, build(&b, &t, &with(b"#!/bin/sh", "other-uid")).digest);
        let none = Extras {
            owner: &owner,
            request_tags: &NO_TAGS,
            root_device_name: None,
            user_data: None,
        };
        assert_ne!(d, build(&b, &t, &none).digest);
        assert_eq!(
            build(&b, &t, &with(b"#!/bin/sh", "secret-uid"))
                .spec
                .user_data,
            Some(b"#!/bin/sh".to_vec()),
            "the machines still get the bytes"
        );
    }

    #[test]
    fn hmac_matches_the_rfc_4231_vectors() {
        let hex = |b: [u8; 32]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (test case 6).
        assert_eq!(
            hex(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// What anyone who reads the request's status and the template (but not
    /// the user-data Secret) can compute for a guess of the user data: the
    /// digest's public algorithm over the spec with the guess in it.
    fn observer_digest(spec: &LaunchSpec) -> String {
        let hash = Sha256::digest(format!("{spec:?}").as_bytes());
        let hex: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    #[test]
    fn the_digest_does_not_confirm_a_guess_of_the_user_data() {
        let t = template(ProviderApi::RunInstances, &["a"], &["s1"]);
        let now = Time(Timestamp::from_second(1_700_000_000).expect("time"));
        let choice = choose(&t, "p", &CapacityCache::new(Duration::ZERO)).expect("choice");
        let b = new_batch("u", 1, 2, &choice, &t, "ami-1", now);
        let owner = owner();
        let secret = b"#!/bin/sh\nexport DB_PASSWORD=hunter2\n".to_vec();
        let extras = Extras {
            owner: &owner,
            request_tags: &NO_TAGS,
            root_device_name: None,
            user_data: Some(UserData {
                bytes: secret.clone(),
                secret_uid: "0b4e7c1a-6f2d-4c1e-9a57-3d8f2b6e1c90".into(),
            }),
        };
        let recorded = build(&b, &t, &extras).digest;
        // The right guess, with every other parameter as status shows it.
        let guess = spec_for(&b, &t, &extras);
        assert_ne!(
            recorded,
            observer_digest(&guess),
            "the right guess is confirmed"
        );
        // Nor with this code and any key the observer can read: none, the
        // request's uid, the template's or the Secret's name.
        for key in ["", "u", "t", "bootstrap"] {
            assert_ne!(recorded, digest(&guess, key), "confirmed with key {key:?}");
        }
    }

    #[test]
    fn request_tags_go_over_the_template_tags_and_part_the_shared_digest() {
        let mut t = template(ProviderApi::RunInstances, &["a"], &["s1"]);
        t.tags = [
            ("team".to_string(), "hpc".to_string()),
            ("RC_ACCOUNT".to_string(), "t".to_string()),
        ]
        .into();
        let now = Time(Timestamp::from_second(1_700_000_000).expect("time"));
        let choice = choose(&t, "p", &CapacityCache::new(Duration::ZERO)).expect("choice");
        let b = new_batch("u", 1, 2, &choice, &t, "ami-1", now);
        let owner = owner();
        let tags = |account: &str| -> BTreeMap<String, String> {
            [("RC_ACCOUNT".to_string(), account.to_string())].into()
        };
        let (a, a2, other) = (tags("proj-a"), tags("proj-a"), tags("proj-b"));
        let with = |request_tags| Extras {
            owner: &owner,
            request_tags,
            root_device_name: None,
            user_data: None,
        };
        let built = build(&b, &t, &with(&a));
        assert_eq!(built.spec.tags["RC_ACCOUNT"], "proj-a");
        assert_eq!(built.spec.tags["team"], "hpc");
        assert_eq!(built.spec.tags["hostforge.io/request"], "ns/r");
        assert_eq!(build(&b, &t, &with(&NO_TAGS)).spec.tags["RC_ACCOUNT"], "t");
        // Batches share a call only with batches asking for the same tags.
        assert_eq!(built.shared_digest, build(&b, &t, &with(&a2)).shared_digest);
        assert_ne!(
            built.shared_digest,
            build(&b, &t, &with(&other)).shared_digest
        );
        assert_ne!(
            built.shared_digest,
            build(&b, &t, &with(&NO_TAGS)).shared_digest
        );
    }
}
