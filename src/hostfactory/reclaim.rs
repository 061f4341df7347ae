//! getReturnRequests: of the hosts HostFactory holds from this provider, the
//! ones the cloud is taking back or has put at risk, read from machine status.
//!
//! Listed with `gracePeriod` 0: a machine the operator marked Lost (stopped or
//! terminated outside hostforge), any other machine stopping, stopped,
//! shutting down or terminated that the scheduler did not return itself
//! (e.g. scaled down), and every machine of a request being deleted (the
//! operator is terminating them). Returned machines are not listed: the
//! scheduler already let them go.
//!
//! A host no scheduler-owned request lists is *not* reported: unknown is not
//! reclaimed. A mistyped namespace, a removed owner label or a deleted request
//! would otherwise make the scheduler drain every host it holds; such hosts
//! are counted in the message instead. A host name several live machines
//! carry is not reported either (named as ambiguous in the message).
//!
//! The call also expires finished scheduler-owned requests ([`super::expire`]):
//! HostFactory makes it every few seconds and it lists them anyway.
//!
//! # Hosts at risk, and their `gracePeriod`
//!
//! IBM defines `gracePeriod` as the time remaining, in seconds, before the
//! provider reclaims the host: the scheduler drains the host within it and then
//! returns it. Besides the hosts already going (above, grace 0), a host still
//! running is listed when the cloud has said it is at risk:
//!
//! | reason | in status | `gracePeriod` |
//! |---|---|---|
//! | spot interruption notice | `interruptionNoticeTime` | 120 s minus the time since the notice |
//! | rebalance recommendation | `rebalanceRecommendationTime` | `rebalanceGracePeriod` (10 min by default; `off`: not listed) minus the time since the recommendation |
//! | scheduled retirement or maintenance | `scheduledEvent.time` | seconds until the event starts, minus `scheduledEventMargin` (5 min by default); 0 when the cloud gave no time |
//! | failed status check | `statusCheck.status: Impaired` | 0: drain it now (hostforge never replaces a scheduler's host itself) |
//! | drifted from its template | the request's `templateVersion` differs from the machine's `templateDigest` or `imageId` | `driftGracePeriod` (30 min by default; `off`: not listed) minus the time since the request saw that template version (`templateVersion.since`) |
//!
//! Every figure is clamped to `0..=` its own window (a clock behind the notice
//! never gives more than the window) except the scheduled one, whose window is
//! the time to the event. A host with several reasons gets the smallest
//! grace: the first deadline is the one that matters.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};

use super::protocol::{MachinesIn, ReclaimedHost, ReturnRequestsOut};
use super::returns::owned_requests;
use super::{HfConfig, HfError, MachineKey};
use crate::api::{
    Machine, MachineRequest, MachineState, StatusCheckStatus, TemplateVersion, TerminationReason,
};

/// How long EC2 warns before it takes a spot machine back, in seconds.
pub const SPOT_WARNING_SECONDS: i64 = 120;

/// Default grace of a host with a rebalance recommendation. EC2 gives no
/// deadline with it (the two-minute notice may follow at any time, or never);
/// ten minutes lets short jobs finish and checkpoints be written while the
/// replacement HostFactory asks for starts, without holding a host at
/// elevated risk for an hour.
pub const DEFAULT_REBALANCE_GRACE: Duration = Duration::from_secs(600);

/// Default margin kept before a scheduled retirement or maintenance starts:
/// EC2 may begin at its not-before time, and draining a host and returning it
/// takes HostFactory a few polling rounds.
pub const DEFAULT_SCHEDULED_MARGIN: Duration = Duration::from_secs(300);

/// Default grace of a host launched from an older version of its template.
/// Nothing takes the host away (hostforge never replaces a scheduler's host),
/// so there is no deadline to pass on: half an hour lets most jobs on it
/// finish while the scheduler moves new work to hosts of the new template,
/// and a template change still reaches the whole cluster within the hour.
pub const DEFAULT_DRIFT_GRACE: Duration = Duration::from_secs(1800);

/// How the grace of a host at risk is computed; from hostforge.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraceRules {
    /// Grace of a host with a rebalance recommendation, counted from the
    /// recommendation; `None`: such hosts are not listed.
    pub rebalance: Option<Duration>,
    /// Kept before the start of a scheduled retirement or maintenance.
    pub scheduled_margin: Duration,
    /// Grace of a host launched from an older version of its template,
    /// counted from when its request saw the current version; `None`: such
    /// hosts are not listed.
    pub drift: Option<Duration>,
}

impl Default for GraceRules {
    fn default() -> Self {
        GraceRules {
            rebalance: Some(DEFAULT_REBALANCE_GRACE),
            scheduled_margin: DEFAULT_SCHEDULED_MARGIN,
            drift: Some(DEFAULT_DRIFT_GRACE),
        }
    }
}

/// Why a host is listed; the answer's message counts hosts by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AtRisk {
    /// Lost, stopping or gone, or its request is being deleted.
    Gone,
    /// A spot interruption notice.
    Interruption,
    /// A rebalance recommendation.
    Rebalance,
    /// A scheduled retirement or maintenance.
    Scheduled,
    /// A failed status check (see [`status_check_grace`]).
    Impaired,
    /// Launched from an older version of its template (see [`drift_grace`]).
    Drifted,
}

impl AtRisk {
    /// The reason as the message names it.
    pub fn as_str(self) -> &'static str {
        match self {
            AtRisk::Gone => "gone or going",
            AtRisk::Interruption => "spot interruption notice",
            AtRisk::Rebalance => "rebalance recommendation",
            AtRisk::Scheduled => "scheduled retirement or maintenance",
            AtRisk::Impaired => "failed status check",
            AtRisk::Drifted => "drifted from the template",
        }
    }
}

/// Whether the cloud (or someone other than the scheduler) is taking `m` away.
pub fn is_reclaimed(m: &Machine) -> bool {
    match m.termination_reason {
        Some(TerminationReason::Returned) => false,
        Some(TerminationReason::Lost) => true,
        _ => matches!(
            m.state,
            MachineState::Stopping
                | MachineState::Stopped
                | MachineState::ShuttingDown
                | MachineState::Terminated
        ),
    }
}

/// `window` seconds counted down from `since` at `now`, within `0..=window`.
fn countdown(window: i64, since: Timestamp, now: Timestamp) -> i64 {
    let elapsed = now.as_second() - since.as_second();
    window.saturating_sub(elapsed).clamp(0, window.max(0))
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The grace of a spot machine with an interruption notice.
fn interruption_grace(m: &Machine, now: Timestamp) -> Option<i64> {
    let noticed = m.interruption_notice_time.as_ref()?.0;
    Some(countdown(SPOT_WARNING_SECONDS, noticed, now))
}

/// The grace of a machine with a rebalance recommendation.
fn rebalance_grace(m: &Machine, now: Timestamp, rules: &GraceRules) -> Option<i64> {
    let window = seconds(rules.rebalance?);
    let recommended = m.rebalance_recommendation_time.as_ref()?.0;
    Some(countdown(window, recommended, now))
}

/// The grace of a machine with a scheduled retirement or maintenance: the
/// seconds until it starts less the margin; 0 when the cloud gave no time.
fn scheduled_grace(m: &Machine, now: Timestamp, rules: &GraceRules) -> Option<i64> {
    let event = m.scheduled_event.as_ref()?;
    let Some(starts) = &event.time else {
        return Some(0);
    };
    let left = starts.0.as_second() - now.as_second();
    Some(left.saturating_sub(seconds(rules.scheduled_margin)).max(0))
}

/// The grace of a machine whose cloud status check says impaired
/// (`statusCheck`, read every `statusCheckInterval`): 0. An impaired host runs
/// jobs badly or not at all, and hostforge never replaces a scheduler's host
/// behind its back, so the scheduler is asked to drain it now and request
/// another.
fn status_check_grace(m: &Machine, _now: Timestamp, _rules: &GraceRules) -> Option<i64> {
    m.status_check
        .as_ref()
        .filter(|c| c.status == StatusCheckStatus::Impaired)
        .map(|_| 0)
}

/// The grace of a live machine that drifted from `version`, the template
/// version its request last saw: `driftGracePeriod` counted down from when
/// the request saw that version. The operator never replaces a scheduler's
/// host; the scheduler drains it and asks for a new one, launched from the
/// current template.
pub fn drift_grace(
    m: &Machine,
    version: Option<&TemplateVersion>,
    now: Timestamp,
    rules: &GraceRules,
) -> Option<i64> {
    let window = seconds(rules.drift?);
    let version = version.filter(|v| v.drift_of(m).any())?;
    Some(countdown(window, version.since.0, now))
}

/// The seconds the scheduler has left to drain `m` at `now`, and the reason
/// with the smallest grace; `None` when it is not at risk.
pub fn grace_period(m: &Machine, now: Timestamp, rules: &GraceRules) -> Option<(i64, AtRisk)> {
    if m.termination_reason == Some(TerminationReason::Returned) {
        return None;
    }
    if is_reclaimed(m) {
        return Some((0, AtRisk::Gone));
    }
    [
        interruption_grace(m, now).map(|g| (g, AtRisk::Interruption)),
        rebalance_grace(m, now, rules).map(|g| (g, AtRisk::Rebalance)),
        scheduled_grace(m, now, rules).map(|g| (g, AtRisk::Scheduled)),
        status_check_grace(m, now, rules).map(|g| (g, AtRisk::Impaired)),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// What getReturnRequests found for the hosts HostFactory holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reclaim {
    /// The hosts to give back, in input order.
    pub hosts: Vec<ReclaimedHost>,
    /// Hosts no scheduler-owned request lists: not reported as reclaimed.
    pub unknown: Vec<MachineKey>,
    /// Host names several live machines carry: not reported.
    pub ambiguous: Vec<MachineKey>,
    /// How many listed hosts each reason (the one with the smallest grace)
    /// accounts for.
    pub reasons: BTreeMap<AtRisk, usize>,
}

/// The hosts of `held` to give back at `now` under `rules`, in input order,
/// and the hosts that could not be judged.
pub fn reclaimed(
    held: &[MachineKey],
    requests: &[MachineRequest],
    now: Timestamp,
    rules: &GraceRules,
) -> Reclaim {
    // Each machine with whether its request is being deleted: the operator is
    // terminating those, so they are taken back even while still running.
    type Held<'a> = ((bool, Option<&'a TemplateVersion>), &'a Machine);
    let machines: Vec<Held> = requests
        .iter()
        .filter(|mr| super::is_owned(mr))
        .filter_map(|mr| {
            Some((
                mr.metadata.deletion_timestamp.is_some(),
                mr.status.as_ref()?,
            ))
        })
        .flat_map(|(deleting, st)| {
            st.machines
                .iter()
                .map(move |m| ((deleting, st.template_version.as_ref()), m))
        })
        .collect();
    let mut out = Reclaim::default();
    for key in held {
        let Some(((deleting, version), m)) = key.resolve(machines.iter().copied()).or_note(
            key,
            &mut out.unknown,
            &mut out.ambiguous,
        ) else {
            continue;
        };
        // The operator terminates the machines of a deleting request now,
        // whatever warning the cloud gave.
        let doomed = deleting && m.termination_reason != Some(TerminationReason::Returned);
        let drifted = drift_grace(m, version, now, rules).map(|g| (g, AtRisk::Drifted));
        let (grace, reason) = match grace_period(m, now, rules).into_iter().chain(drifted).min() {
            _ if doomed => (0, AtRisk::Gone),
            Some(found) => found,
            None => continue,
        };
        *out.reasons.entry(reason).or_default() += 1;
        out.hosts.push(ReclaimedHost {
            machine: key
                .name
                .clone()
                .or_else(|| m.name.clone())
                .unwrap_or_default(),
            machine_id: key.id.clone().unwrap_or_else(|| m.id.clone()),
            grace_period: grace,
        });
    }
    out
}

/// The answer's message: how many hosts are taken back, and which could not
/// be judged.
pub fn message(held: usize, r: &Reclaim) -> String {
    let mut text = format!("{} of {held} hosts are being taken back", r.hosts.len());
    if !r.reasons.is_empty() {
        let counts: Vec<String> = r
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {}", reason.as_str()))
            .collect();
        text.push_str(&format!(" ({})", counts.join(", ")));
    }
    let names = |keys: &[MachineKey]| {
        keys.iter()
            .map(MachineKey::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.unknown.is_empty() {
        text.push_str(&format!(
            "; {} not found in any scheduler-owned MachineRequest (not reported as reclaimed; \
             check the namespace and the hostforge.io/owner label): {}",
            r.unknown.len(),
            names(&r.unknown)
        ));
    }
    if !r.ambiguous.is_empty() {
        text.push_str(&format!(
            "; ambiguous, several live machines have this name: {}",
            names(&r.ambiguous)
        ));
    }
    text
}

/// The operation.
pub async fn get_return_requests(
    client: &Client,
    config: &HfConfig,
    input: MachinesIn,
) -> Result<ReturnRequestsOut, HfError> {
    let held: Vec<MachineKey> = input
        .machines
        .into_vec()
        .iter()
        .map(|m| m.key())
        .filter(|k| k.id.is_some() || k.name.is_some())
        .collect();
    let api: Api<MachineRequest> = Api::namespaced(client.clone(), &config.namespace);
    let requests = owned_requests(&api, &config.namespace).await?;
    let found = reclaimed(&held, &requests, Timestamp::now(), &config.grace);
    if let Some(retention) = config.finished_retention {
        super::expire::expire(&api, &requests, retention).await;
    }
    if !found.unknown.is_empty() {
        tracing::warn!(
            hosts = found.unknown.len(),
            "held hosts not found in any scheduler-owned MachineRequest; not reported as reclaimed"
        );
    }
    Ok(ReturnRequestsOut {
        status: "complete".into(),
        message: message(held.len(), &found),
        requests: found.hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::request::{ScheduledEvent, ScheduledEventKind};
    use crate::hostfactory::{OWNER_LABEL, OWNER_VALUE};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff;
    use serde_json::json;

    fn requests() -> Vec<MachineRequest> {
        let m = |id: &str, state: &str, reason: Option<&str>| {
            json!({"id": id, "name": format!("host-{id}"), "state": state, "result": "succeed",
                   "terminationReason": reason})
        };
        vec![serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineRequest",
            "metadata": {"name": "hf-a", "namespace": "hpc", "labels": {OWNER_LABEL: OWNER_VALUE}},
            "spec": {"templateRef": {"name": "compute"}, "count": 4},
            "status": {"machines": [
                m("i-ok", "running", None),
                m("i-lost", "stopped", Some("Lost")),
                m("i-ret", "terminated", Some("Returned")),
                m("i-down", "shutting-down", Some("ScaledDown")),
                m("i-new", "pending", None),
            ]}
        }))
        .expect("request")]
    }

    /// [`reclaimed`] with the default rules.
    fn reclaim_at(held: &[MachineKey], mrs: &[MachineRequest], now: Timestamp) -> Reclaim {
        reclaimed(held, mrs, now, &GraceRules::default())
    }

    fn key(id: &str) -> MachineKey {
        MachineKey {
            id: Some(id.into()),
            name: Some(format!("host-{id}")),
        }
    }

    #[test]
    fn lost_and_taken_hosts_are_listed_with_no_grace() {
        let held: Vec<MachineKey> = ["i-ok", "i-lost", "i-ret", "i-down", "i-new", "i-gone"]
            .into_iter()
            .map(key)
            .collect();
        let found = reclaim_at(&held, &requests(), Timestamp::now());
        let out = &found.hosts;
        let names: Vec<_> = out.iter().map(|h| h.machine.as_str()).collect();
        assert_eq!(names, ["host-i-lost", "host-i-down"]);
        assert_eq!(found.unknown, [key("i-gone")]);
        assert!(message(held.len(), &found).contains("1 not found"));
        assert!(out.iter().all(|h| h.grace_period == 0));
        assert_eq!(out[0].machine_id, "i-lost");
    }

    #[test]
    fn a_host_named_only_by_id_gets_its_name_from_status() {
        let out = reclaim_at(
            &[MachineKey {
                id: Some("i-lost".into()),
                name: None,
            }],
            &requests(),
            Timestamp::now(),
        )
        .hosts;
        assert_eq!(out[0].machine, "host-i-lost");
    }

    #[test]
    fn a_noticed_spot_host_gets_the_rest_of_the_warning() {
        let mut mrs = requests();
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        let noticed: Timestamp = "2026-11-25T10:00:00Z".parse().expect("time");
        machines[0].interruption_notice_time = Some(Time(noticed));
        let at = |secs: i64| noticed + jiff::SignedDuration::from_secs(secs);
        let held = [key("i-ok"), key("i-new")];
        let out = reclaim_at(&held, &mrs, at(30)).hosts;
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].machine_id, "i-ok");
        assert_eq!(out[0].grace_period, 90);
        assert_eq!(reclaim_at(&held, &mrs, at(500)).hosts[0].grace_period, 0);
        assert_eq!(
            reclaim_at(&held, &mrs, at(-5)).hosts[0].grace_period,
            120,
            "a clock behind the notice never gives more than the warning"
        );
        // Once the scheduler returned it, it is no longer announced.
        machines_returned(&mut mrs, "i-ok");
        assert!(reclaim_at(&held, &mrs, at(30)).hosts.is_empty());
    }

    #[test]
    fn a_host_no_request_lists_is_not_reported_as_reclaimed() {
        let out = reclaim_at(&[key("i-gone")], &requests(), Timestamp::now());
        assert!(out.hosts.is_empty(), "unknown is not reclaimed: {out:?}");
    }

    #[test]
    fn a_reused_host_name_is_judged_by_its_live_holder() {
        let mut mrs = requests();
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        // i-lost's name now belongs to a healthy new machine.
        let mut heir = machines[0].clone();
        heir.id = "i-heir".into();
        heir.name = Some("host-i-lost".into());
        machines.push(heir);
        let by_name = MachineKey {
            id: None,
            name: Some("host-i-lost".into()),
        };
        let out = reclaim_at(&[by_name], &mrs, Timestamp::now());
        assert!(
            out.hosts.is_empty(),
            "the healthy holder is not drained: {out:?}"
        );
    }

    #[test]
    fn the_machines_of_a_request_being_deleted_are_taken_back() {
        let mut mrs = requests();
        mrs[0].metadata.deletion_timestamp =
            Some(Time("2026-01-01T00:00:00Z".parse().expect("time")));
        let held = [key("i-ok"), key("i-ret")];
        let out = reclaim_at(&held, &mrs, Timestamp::now()).hosts;
        let ids: Vec<_> = out.iter().map(|h| h.machine_id.as_str()).collect();
        assert_eq!(ids, ["i-ok"], "running, but its request is going");
        assert_eq!(out[0].grace_period, 0);
    }

    fn at(base: &str, secs: i64) -> Timestamp {
        let t: Timestamp = base.parse().expect("time");
        t + jiff::SignedDuration::from_secs(secs)
    }

    fn running() -> Machine {
        let mut m = Machine::unknown("i-risk");
        m.state = MachineState::Running;
        m
    }

    const T0: &str = "2026-11-25T10:00:00Z";

    #[test]
    fn a_rebalance_recommendation_counts_down_the_configured_grace() {
        let mut m = running();
        m.rebalance_recommendation_time = Some(Time(at(T0, 0)));
        let rules = GraceRules::default();
        let g = |secs| grace_period(&m, at(T0, secs), &rules);
        assert_eq!(g(0), Some((600, AtRisk::Rebalance)));
        assert_eq!(g(45), Some((555, AtRisk::Rebalance)));
        assert_eq!(g(600), Some((0, AtRisk::Rebalance)));
        assert_eq!(g(86_400), Some((0, AtRisk::Rebalance)), "never below 0");
        assert_eq!(
            g(-30),
            Some((600, AtRisk::Rebalance)),
            "a clock behind never gives more than the grace"
        );
        let short = GraceRules {
            rebalance: Some(Duration::from_secs(60)),
            ..rules
        };
        assert_eq!(
            grace_period(&m, at(T0, 15), &short),
            Some((45, AtRisk::Rebalance))
        );
        let off = GraceRules {
            rebalance: None,
            ..rules
        };
        assert_eq!(grace_period(&m, at(T0, 15), &off), None, "off: not listed");
    }

    #[test]
    fn an_impaired_host_is_to_be_drained_now() {
        use crate::api::{StatusCheck, StatusCheckKind};
        let mut m = running();
        let rules = GraceRules::default();
        assert_eq!(grace_period(&m, at(T0, 0), &rules), None);
        m.status_check = Some(StatusCheck {
            status: StatusCheckStatus::Impaired,
            failing: vec![StatusCheckKind::System],
            since: Some(Time(at(T0, 0))),
        });
        assert_eq!(
            grace_period(&m, at(T0, 30), &rules),
            Some((0, AtRisk::Impaired))
        );
    }

    #[test]
    fn a_scheduled_event_leaves_the_time_to_its_start_less_the_margin() {
        let mut m = running();
        m.scheduled_event = Some(ScheduledEvent {
            kind: ScheduledEventKind::Retirement,
            time: Some(Time(at(T0, 3600))),
        });
        let rules = GraceRules::default();
        let g = |secs| grace_period(&m, at(T0, secs), &rules);
        assert_eq!(g(0), Some((3300, AtRisk::Scheduled)));
        assert_eq!(g(3000), Some((300, AtRisk::Scheduled)));
        assert_eq!(g(3300), Some((0, AtRisk::Scheduled)));
        assert_eq!(g(3500), Some((0, AtRisk::Scheduled)), "inside the margin");
        assert_eq!(g(7200), Some((0, AtRisk::Scheduled)), "past the start");
        let no_margin = GraceRules {
            scheduled_margin: Duration::ZERO,
            ..rules
        };
        assert_eq!(
            grace_period(&m, at(T0, 0), &no_margin),
            Some((3600, AtRisk::Scheduled))
        );
        // A maintenance (a reboot) ends jobs too.
        m.scheduled_event = Some(ScheduledEvent {
            kind: ScheduledEventKind::Maintenance,
            time: Some(Time(at(T0, 900))),
        });
        assert_eq!(
            grace_period(&m, at(T0, 0), &rules),
            Some((600, AtRisk::Scheduled))
        );
        // The cloud did not say when: due now.
        m.scheduled_event = Some(ScheduledEvent {
            kind: ScheduledEventKind::Retirement,
            time: None,
        });
        assert_eq!(
            grace_period(&m, at(T0, 0), &rules),
            Some((0, AtRisk::Scheduled))
        );
    }

    #[test]
    fn several_reasons_give_the_smallest_grace() {
        let mut m = running();
        m.rebalance_recommendation_time = Some(Time(at(T0, 0)));
        m.scheduled_event = Some(ScheduledEvent {
            kind: ScheduledEventKind::Retirement,
            time: Some(Time(at(T0, 1000))),
        });
        let rules = GraceRules::default();
        // rebalance 600 - 100 = 500, scheduled 1000 - 100 - 300 = 600.
        assert_eq!(
            grace_period(&m, at(T0, 100), &rules),
            Some((500, AtRisk::Rebalance))
        );
        // The notice comes: 120 s at most.
        m.interruption_notice_time = Some(Time(at(T0, 100)));
        assert_eq!(
            grace_period(&m, at(T0, 110), &rules),
            Some((110, AtRisk::Interruption))
        );
        // The machine goes down: 0, whatever else was said.
        m.state = MachineState::ShuttingDown;
        assert_eq!(
            grace_period(&m, at(T0, 110), &rules),
            Some((0, AtRisk::Gone))
        );
        // Returned by the scheduler: never listed.
        m.termination_reason = Some(TerminationReason::Returned);
        assert_eq!(grace_period(&m, at(T0, 110), &rules), None);
    }

    #[test]
    fn hosts_at_risk_are_listed_and_counted_by_reason() {
        let mut mrs = requests();
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        machines[0].rebalance_recommendation_time = Some(Time(at(T0, 0)));
        machines[4].state = MachineState::Running;
        machines[4].scheduled_event = Some(ScheduledEvent {
            kind: ScheduledEventKind::Maintenance,
            time: Some(Time(at(T0, 86_400))),
        });
        let held: Vec<MachineKey> = ["i-ok", "i-lost", "i-new"].into_iter().map(key).collect();
        let found = reclaim_at(&held, &mrs, at(T0, 60));
        let got: Vec<(&str, i64)> = found
            .hosts
            .iter()
            .map(|h| (h.machine_id.as_str(), h.grace_period))
            .collect();
        assert_eq!(got, [("i-ok", 540), ("i-lost", 0), ("i-new", 86_040)]);
        assert_eq!(
            message(held.len(), &found),
            "3 of 3 hosts are being taken back (1 gone or going, 1 rebalance recommendation, \
             1 scheduled retirement or maintenance)"
        );
        // A request being deleted takes them all now.
        mrs[0].metadata.deletion_timestamp = Some(Time(at(T0, 0)));
        let found = reclaim_at(&held, &mrs, at(T0, 60));
        assert!(found.hosts.iter().all(|h| h.grace_period == 0), "{found:?}");
    }

    #[test]
    fn drifted_hosts_get_the_drift_grace_from_the_template_version_and_the_smallest_wins() {
        let mut mrs = requests();
        let st = mrs[0].status.as_mut().expect("status");
        st.template_version = Some(TemplateVersion {
            generation: Some(2),
            digest: "new".into(),
            image_id: Some("ami-2".into()),
            since: Time(at(T0, 0)),
        });
        // i-ok drifted (spec), i-new carries the current digest and image,
        // i-lost drifted but is gone anyway.
        st.machines[0].template_digest = Some("old".into());
        st.machines[4].template_digest = Some("new".into());
        st.machines[4].image_id = Some("ami-2".into());
        st.machines[4].state = MachineState::Running;
        st.machines[1].template_digest = Some("old".into());
        let held: Vec<MachineKey> = ["i-ok", "i-lost", "i-new"].into_iter().map(key).collect();
        let found = reclaim_at(&held, &mrs, at(T0, 100));
        let got: Vec<(&str, i64)> = found
            .hosts
            .iter()
            .map(|h| (h.machine_id.as_str(), h.grace_period))
            .collect();
        assert_eq!(got, [("i-ok", 1700), ("i-lost", 0)]);
        assert_eq!(
            message(held.len(), &found),
            "2 of 3 hosts are being taken back (1 gone or going, 1 drifted from the template)"
        );
        // A rebalance recommendation's shorter grace wins.
        let st = mrs[0].status.as_mut().expect("status");
        st.machines[0].rebalance_recommendation_time = Some(Time(at(T0, 0)));
        let found = reclaim_at(&held[..1], &mrs, at(T0, 100));
        assert_eq!(found.hosts[0].grace_period, 500);
        // off: drifted hosts are not listed.
        let st = mrs[0].status.as_mut().expect("status");
        st.machines[0].rebalance_recommendation_time = None;
        let off = GraceRules {
            drift: None,
            ..GraceRules::default()
        };
        assert!(reclaimed(&held[..1], &mrs, at(T0, 100), &off)
            .hosts
            .is_empty());
        // Past the window: 0, never negative.
        let found = reclaim_at(&held[..1], &mrs, at(T0, 99_999));
        assert_eq!(found.hosts[0].grace_period, 0);
    }

    fn machines_returned(mrs: &mut [MachineRequest], id: &str) {
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        for m in machines.iter_mut().filter(|m| m.id == id) {
            m.termination_reason = Some(TerminationReason::Returned);
        }
    }
}
