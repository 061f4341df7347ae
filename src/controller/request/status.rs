//! The status step, pure: from the machines and launches in status, what the
//! request wants, and why it may be blocked, derive the counts, the three
//! conditions, the phase, which machines to poll and when to look again (after
//! refused launches: when their backoff lets the next batch go). No
//! client, no clock of its own, so every case is a row in the tables below.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::batch;
use super::drift;
use super::gate::Blocked;
use super::plan;
use crate::api::conditions::{self, DEGRADED, PROGRESSING, READY};
use crate::api::{
    LaunchState, Machine, MachineCounts, MachineRequestStatus, MachineState, RequestPhase,
    TerminationReason,
};
use crate::controller::reason::{Reason, RETRY_REFUSED};

/// A request with nothing in flight is still looked at this often.
pub const RESYNC: Duration = Duration::from_secs(5 * 60);
/// How soon a request with machines changing state looks again (the poller
/// wakes it sooner when they do).
pub const RETRY_BUSY: Duration = Duration::from_secs(60);
/// How soon a request with more to launch (batch cap, partial capacity) goes on.
pub const RETRY_MORE: Duration = Duration::from_millis(200);
/// How soon a request with a batch still Pending looks again: a batch held by
/// a settle by tag is looked up again by its tag (EC2's tag index catches up
/// within seconds), not only when a full sweep wakes it.
pub const RETRY_SETTLING: Duration = Duration::from_secs(5);
/// Looked again this long after a refusal backoff ends, so the new batch is
/// not held back by a few milliseconds.
pub const HOLD_MARGIN: Duration = Duration::from_millis(100);
/// Settled batches kept in status besides pending ones (the newest is always
/// kept so batch numbers only grow).
pub const KEEP_BATCHES: usize = 20;
/// Machines given back or lost that status keeps listing, oldest dropped first.
pub const KEEP_GONE: usize = 200;

/// What the request's spec says that the status step reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// spec.count.
    pub count: i32,
    /// spec.replaceLost.
    pub replace_lost: bool,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// Whether the operator reads the cloud's status checks
    /// (`statusCheckInterval` not 0): only then does the request carry a
    /// MachinesHealthy condition.
    pub status_checks: bool,
    /// Whether the request's provider was listed for status checks since
    /// the operator started: until then MachinesHealthy is Unknown.
    pub status_checks_listed: bool,
}

/// What the status step decided besides status itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Why the request is degraded, if it is.
    pub degraded: Option<Blocked>,
    /// Whether the Degraded condition's (status, reason) changed: a Warning
    /// Event is published once per change, not per reconcile.
    pub degraded_changed: bool,
    /// Machines to poll: launches not running yet, machines on their way out.
    pub watch: Vec<String>,
    /// When to look again, unless the capacity cooldown decides.
    pub next: Next,
}

/// When to look at the request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// After this long.
    After(Duration),
    /// When the capacity cooldown of some offering expires.
    CapacityExpiry,
}

impl Next {
    /// The delay, given when the next capacity cooldown expires.
    pub fn delay(self, capacity_expiry: Option<Duration>) -> Duration {
        match self {
            Next::After(d) => d,
            Next::CapacityExpiry => capacity_expiry
                .map(|d| d + Duration::from_millis(100))
                .unwrap_or(RETRY_REFUSED),
        }
    }
}

/// Prunes status and fills in counts, conditions and phase.
pub fn summarize(
    want: Wanted,
    st: &mut MachineRequestStatus,
    blocked: Option<Blocked>,
    held_back: i32,
    now: Time,
) -> Summary {
    drift::stamp(st);
    prune(st);
    let generation = want.generation;
    let count = want.count;
    let live = st.live_machines();
    let running = i32::try_from(
        st.machines
            .iter()
            .filter(|m| m.is_live() && m.state == MachineState::Running)
            .count(),
    )
    .unwrap_or(i32::MAX);
    let pending_batches = st.launches.iter().any(|b| b.state == LaunchState::Pending);
    let leaving = st.machines.iter().filter(|m| m.is_leaving()).count();
    let with_reason = |r: TerminationReason| {
        i32::try_from(
            st.machines
                .iter()
                .filter(|m| m.termination_reason == Some(r))
                .count(),
        )
        .unwrap_or(i32::MAX)
    };
    st.counts = MachineCounts {
        desired: count,
        pending: st.pending_machines(),
        running,
        returned: with_reason(TerminationReason::Returned),
        failed: with_reason(TerminationReason::Lost),
        drifted: i32::try_from(drift::tally(st).0).unwrap_or(i32::MAX),
    };
    st.observed_generation = generation;
    // While machines are being replaced the request holds one more live
    // machine per replacement (`with_spares`) and running may exceed count;
    // it stays Ready as long as count machines run and nothing is missing.
    let target = plan::target(count, want.replace_lost, &st.machines);
    let with_spares = plan::target_with_replacements(count, want.replace_lost, &st.machines);
    let replacing = st
        .machines
        .iter()
        .filter(|m| plan::is_being_replaced(m))
        .count();
    let ready = running >= target
        && live >= target
        && running <= live
        && live <= with_spares
        && !pending_batches;
    let degraded = blocked.or_else(|| {
        (held_back > 0).then(|| {
            Blocked::new(
                Reason::MaxMachinesReached,
                format!("{held_back} machines wait: the template's maxMachines is reached"),
            )
        })
    });
    let condition = |type_: &str, status: bool, reason: Reason, message: String| {
        conditions::new_condition(
            type_,
            status,
            reason.as_str(),
            message,
            generation,
            now.clone(),
        )
    };
    let ready_cond = if ready {
        condition(
            READY,
            true,
            Reason::AllRunning,
            format!("{running}/{count} machines running"),
        )
    } else if let Some(d) = &degraded {
        condition(READY, false, d.reason, d.message.clone())
    } else {
        condition(
            READY,
            false,
            Reason::Provisioning,
            format!("{running}/{count} machines running"),
        )
    };
    let progressing = !ready && (live != target || running != live || pending_batches)
        || leaving > 0
        || replacing > 0;
    let progressing_cond = if !progressing {
        condition(
            PROGRESSING,
            false,
            Reason::Stable,
            "nothing in flight".into(),
        )
    } else if replacing > 0 {
        condition(
            PROGRESSING,
            true,
            Reason::Replacing,
            format!(
                "replacing {replacing} machines (each terminated once its replacement runs); {running} running"
            ),
        )
    } else if leaving > 0 && live <= target {
        condition(
            PROGRESSING,
            true,
            Reason::Terminating,
            format!("{leaving} machines terminating"),
        )
    } else {
        condition(
            PROGRESSING,
            true,
            Reason::Launching,
            format!("{live}/{count} machines launched, {running} running"),
        )
    };
    let degraded_cond = match &degraded {
        Some(d) => condition(DEGRADED, true, d.reason, d.message.clone()),
        None => condition(DEGRADED, false, Reason::AsExpected, String::new()),
    };
    let was_degraded = degraded_key(st);
    conditions::set_condition(&mut st.conditions, ready_cond);
    conditions::set_condition(&mut st.conditions, progressing_cond);
    conditions::set_condition(&mut st.conditions, degraded_cond);
    let (drifted, message) = drift::condition_message(st);
    let drifted_reason = if drifted {
        Reason::Drifted
    } else {
        Reason::UpToDate
    };
    conditions::set_condition(
        &mut st.conditions,
        condition(DRIFTED, drifted, drifted_reason, message),
    );
    if want.status_checks {
        let healthy = healthy_condition(
            &st.machines,
            want.status_checks_listed,
            generation,
            now.clone(),
        );
        conditions::set_condition(&mut st.conditions, healthy);
    } else {
        st.conditions.retain(|c| c.type_ != MACHINES_HEALTHY);
    }
    st.phase = Some(if ready {
        RequestPhase::Ready
    } else if degraded.is_some() {
        RequestPhase::Degraded
    } else if st.machines.is_empty() && st.launches.is_empty() {
        RequestPhase::Pending
    } else {
        RequestPhase::Provisioning
    });
    let degraded_changed = was_degraded != degraded_key(st);
    let watch: Vec<String> = st
        .machines
        .iter()
        .filter(|m| (m.is_live() && m.state != MachineState::Running) || m.is_leaving())
        .map(|m| m.id.clone())
        .collect();
    // After refused launches, the next batch may go when the backoff ends:
    // look again then (the reason's own retry may be sooner, never later).
    let hold = batch::refusal_hold(&st.launches, &now).filter(|h| h.is_holding());
    let next = match &degraded {
        Some(d) => match (d.reason.retry_after(), hold) {
            (None, _) => Next::CapacityExpiry,
            (Some(after), None) => Next::After(after),
            (Some(after), Some(hold)) => Next::After(after.min(hold.remaining + HOLD_MARGIN)),
        },
        // More to launch (batch cap, partial capacity): go on at once.
        None if live < with_spares && !pending_batches => Next::After(RETRY_MORE),
        None if pending_batches => Next::After(RETRY_SETTLING),
        None if !watch.is_empty() => Next::After(RETRY_BUSY),
        None => Next::After(RESYNC),
    };
    Summary {
        degraded,
        degraded_changed,
        watch,
        next,
    }
}

/// Condition type: whether live machines of the request were launched from an
/// older version of its template (True naming how many and why; False,
/// UpToDate, when none). Machines without a launch record are not compared.
pub const DRIFTED: &str = "Drifted";

/// Condition type: whether the request's live machines pass the cloud's
/// status checks (True: none fails; False names those that do). Present
/// only while the operator reads status checks.
pub const MACHINES_HEALTHY: &str = "MachinesHealthy";

/// How many impaired machines a MachinesHealthy message names before it
/// only counts the rest (a condition message stays short).
const NAMED_IMPAIRED: usize = 10;

/// The MachinesHealthy condition for `machines`: False naming the live
/// machines whose status check fails (and which checks), True when none,
/// Unknown when none is known to fail but the provider was not `listed` yet.
pub fn healthy_condition(
    machines: &[Machine],
    listed: bool,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let impaired: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.is_live() && m.status_check.is_some())
        .collect();
    if impaired.is_empty() && !listed {
        return conditions::unknown_condition(
            MACHINES_HEALTHY,
            Reason::NotCheckedYet.as_str(),
            "the cloud's status checks were not read yet (every statusCheckInterval)",
            generation,
            now,
        );
    }
    let (status, reason, message) = if impaired.is_empty() {
        (
            true,
            Reason::AllHealthy,
            "no machine fails a status check".to_string(),
        )
    } else {
        let named: Vec<String> = impaired
            .iter()
            .take(NAMED_IMPAIRED)
            .map(|m| {
                let checks: Vec<&str> = m
                    .status_check
                    .iter()
                    .flat_map(|c| c.failing.iter())
                    .map(|k| match k {
                        crate::api::StatusCheckKind::Instance => "instance",
                        crate::api::StatusCheckKind::System => "system",
                    })
                    .collect();
                format!("{} ({})", m.id, checks.join("+"))
            })
            .collect();
        let more = impaired.len().saturating_sub(NAMED_IMPAIRED);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        (
            false,
            Reason::MachineImpaired,
            format!(
                "{} machines fail a status check: {}{tail}",
                impaired.len(),
                named.join(", ")
            ),
        )
    };
    conditions::new_condition(
        MACHINES_HEALTHY,
        status,
        reason.as_str(),
        message,
        generation,
        now,
    )
}

fn degraded_key(st: &MachineRequestStatus) -> Option<(String, String)> {
    conditions::find_condition(&st.conditions, DEGRADED)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Drops old settled batches and old gone machines, so status stays small:
/// keeps every pending batch plus the [`KEEP_BATCHES`] newest settled ones
/// (the newest batch always among them), and the [`KEEP_GONE`] newest gone
/// machines besides every live one. The counts to drop are taken from the
/// settled and gone lists themselves, never from the whole list, so how many
/// are pending or live does not shrink what stays.
pub fn prune(st: &mut MachineRequestStatus) {
    let settled: Vec<usize> = (0..st.launches.len())
        .filter(|i| st.launches[*i].state != LaunchState::Pending)
        .collect();
    if settled.len() > KEEP_BATCHES {
        // Oldest first, so the newest batch (batch numbers only grow) is
        // never reached; the filter says so outright.
        let last = st.launches.len() - 1;
        let drop: BTreeSet<usize> = settled
            .iter()
            .copied()
            .filter(|i| *i != last)
            .take(settled.len() - KEEP_BATCHES)
            .collect();
        retain_indices(&mut st.launches, &drop);
    }
    let gone: Vec<usize> = (0..st.machines.len())
        .filter(|i| {
            let m = &st.machines[*i];
            m.termination_reason.is_some() && m.state == MachineState::Terminated
        })
        .collect();
    if gone.len() > KEEP_GONE {
        let drop: BTreeSet<usize> = gone.iter().copied().take(gone.len() - KEEP_GONE).collect();
        retain_indices(&mut st.machines, &drop);
    }
}

fn retain_indices<T>(items: &mut Vec<T>, drop: &BTreeSet<usize>) {
    let mut i = 0;
    items.retain(|_| {
        let keep = !drop.contains(&i);
        i += 1;
        keep
    });
}

#[cfg(test)]
mod tests;
