//! Helpers for `metav1.Condition` lists in status.
//!
//! Controllers build the conditions they want on every reconcile; these helpers merge
//! them into the stored list so that `lastTransitionTime` only moves when a condition's
//! status actually changes, and report whether anything but time changed, so that a
//! reconcile that found nothing new sends no status patch (no write storms, no
//! self-triggered reconciles).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the object is usable (template) or has all its machines (request).
pub const READY: &str = "Ready";
/// Condition type: the operator is working towards the desired state.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the operator cannot make progress without outside help.
pub const DEGRADED: &str = "Degraded";

/// Condition type (templates): a dry run of the template's launch, made when
/// its spec or image changed, says EC2 would launch it.
pub const LAUNCH_VALIDATED: &str = "LaunchValidated";

/// Condition status value "True".
pub const TRUE: &str = "True";
/// Condition status value "False".
pub const FALSE: &str = "False";
/// Condition status value "Unknown".
pub const UNKNOWN: &str = "Unknown";

/// Builds a condition; `now` becomes its lastTransitionTime unless [`set_condition`]
/// keeps an older one. Taking the time as an argument keeps these helpers pure.
pub fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { TRUE } else { FALSE }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Puts `new` into `conditions`, replacing the condition of the same type.
///
/// When the status is unchanged, the stored lastTransitionTime is kept. Returns true
/// when anything other than lastTransitionTime changed (status, reason, message or
/// observedGeneration, or the condition is new): only then is a status write needed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            let changed = old.status != new.status
                || old.reason != new.reason
                || old.message != new.message
                || old.observed_generation != new.observed_generation;
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Merges every condition of `desired` into `conditions` (see [`set_condition`]);
/// returns true when any of them changed.
pub fn set_conditions(
    conditions: &mut Vec<Condition>,
    desired: impl IntoIterator<Item = Condition>,
) -> bool {
    desired
        .into_iter()
        .fold(false, |changed, c| set_condition(conditions, c) | changed)
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A condition with status Unknown: the operator could not tell (e.g. the
/// cloud did not answer the check); see [`new_condition`].
pub fn unknown_condition(
    type_: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        status: UNKNOWN.to_string(),
        ..new_condition(type_, false, reason, message, observed_generation, now)
    }
}

/// Whether the condition of the given type is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn new_condition_is_added() {
        let mut cs = vec![];
        assert!(set_condition(
            &mut cs,
            new_condition(READY, false, "Launching", "0/3", Some(1), at(10))
        ));
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].status, FALSE);
        assert_eq!(cs[0].last_transition_time, at(10));
    }

    #[test]
    fn same_status_keeps_transition_time_and_reports_no_change() {
        let mut cs = vec![new_condition(
            READY,
            true,
            "AllRunning",
            "3/3",
            Some(2),
            at(10),
        )];
        let changed = set_condition(
            &mut cs,
            new_condition(READY, true, "AllRunning", "3/3", Some(2), at(99)),
        );
        assert!(!changed, "only time differs: no write needed");
        assert_eq!(cs[0].last_transition_time, at(10));
    }

    #[test]
    fn same_status_new_message_keeps_time_but_reports_change() {
        let mut cs = vec![new_condition(
            READY,
            false,
            "Launching",
            "1/3",
            Some(2),
            at(10),
        )];
        assert!(set_condition(
            &mut cs,
            new_condition(READY, false, "Launching", "2/3", Some(2), at(20))
        ));
        assert_eq!(cs[0].message, "2/3");
        assert_eq!(cs[0].last_transition_time, at(10));
    }

    #[test]
    fn new_generation_is_a_change() {
        let mut cs = vec![new_condition(
            READY,
            true,
            "AllRunning",
            "",
            Some(2),
            at(10),
        )];
        assert!(set_condition(
            &mut cs,
            new_condition(READY, true, "AllRunning", "", Some(3), at(20))
        ));
        assert_eq!(cs[0].observed_generation, Some(3));
        assert_eq!(cs[0].last_transition_time, at(10));
    }

    #[test]
    fn status_flip_moves_transition_time() {
        let mut cs = vec![new_condition(
            READY,
            false,
            "Launching",
            "",
            Some(1),
            at(10),
        )];
        assert!(set_condition(
            &mut cs,
            new_condition(READY, true, "AllRunning", "", Some(1), at(30))
        ));
        assert_eq!(cs[0].status, TRUE);
        assert_eq!(cs[0].last_transition_time, at(30));
    }

    #[test]
    fn other_types_are_untouched_and_order_is_stable() {
        let mut cs = vec![
            new_condition(READY, false, "Launching", "", Some(1), at(1)),
            new_condition(DEGRADED, false, "AsExpected", "", Some(1), at(2)),
        ];
        let changed = set_conditions(
            &mut cs,
            [
                new_condition(DEGRADED, false, "AsExpected", "", Some(1), at(50)),
                new_condition(PROGRESSING, true, "Launching", "", Some(1), at(50)),
            ],
        );
        assert!(changed, "Progressing is new");
        let types: Vec<_> = cs.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, DEGRADED, PROGRESSING]);
        assert_eq!(cs[1].last_transition_time, at(2));
        assert!(!is_true(&cs, READY));
        assert!(is_true(&cs, PROGRESSING));
        assert!(find_condition(&cs, "Missing").is_none());
    }

    #[test]
    fn set_conditions_without_news_reports_no_change() {
        let mut cs = vec![new_condition(READY, true, "AllRunning", "", Some(1), at(1))];
        let before = cs.clone();
        assert!(!set_conditions(
            &mut cs,
            [new_condition(READY, true, "AllRunning", "", Some(1), at(9))]
        ));
        assert_eq!(cs, before);
    }
}
