//! Offerings (instance type × subnet × capacity type) the cloud recently said it
//! has no capacity for. Launches skip them until the cooldown passes, so a
//! template's fallbacks are tried in order instead of the same failing launch
//! being repeated.
//!
//! Machines that die at launch (pending → terminated with a `stateReason` such
//! as `Server.InsufficientInstanceCapacity` or a KMS key the account cannot
//! use) are the same verdict given later: [`DEATHS_TO_COOL`] of them on one
//! offering within the cooldown cool it down like a capacity error, so the
//! request falls back instead of relaunching into the same death.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One place capacity is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Offering {
    /// Provider instance name.
    pub provider: String,
    /// Instance type.
    pub instance_type: String,
    /// Subnet id; empty for the account's default subnet.
    pub subnet: String,
    /// Whether it is spot capacity.
    pub spot: bool,
}

/// How many machines of one offering may die at launch within the cooldown
/// before the offering is cooled down: one may be bad luck (a host failing),
/// a second in a row is the offering (capacity, a volume limit, a key).
pub const DEATHS_TO_COOL: usize = 2;

/// Offerings without capacity, each until its cooldown ends.
#[derive(Debug)]
pub struct CapacityCache {
    cooldown: Duration,
    unavailable: Mutex<HashMap<Offering, Instant>>,
    deaths: Mutex<Deaths>,
}

/// Deaths at launch per offering: (instance id, when it was counted), and why
/// each cooled-down offering was cooled down.
#[derive(Debug, Default)]
struct Deaths {
    recent: HashMap<Offering, Vec<(String, Instant)>>,
    why: HashMap<Offering, String>,
}

/// What counting one death at launch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeathVerdict {
    /// This machine was counted before (a reconcile repeated); nothing changes.
    AlreadyCounted,
    /// Counted; `deaths` of the offering within the cooldown, not enough to cool it.
    Counted {
        /// Deaths within the window, this one included.
        deaths: usize,
    },
    /// This death made the offering cool down.
    CooledDown {
        /// Deaths within the window that did it.
        deaths: usize,
    },
}

/// The offering of a batch that a machine (one that died at launch) or a
/// launch error (a fleet's shortfall) names by instance type and subnet, as
/// the batch chose it (so it is the key [`CapacityCache::is_available`] is
/// asked with): the named type and subnet when the batch named several (a
/// fleet), the batch's own when it named one, the default subnet ("") when it
/// named none. `None` when the type or subnet named is not among the batch's
/// (nothing to blame).
pub fn batch_offering(
    provider: &str,
    batch_types: &[String],
    batch_subnets: &[String],
    spot: bool,
    machine_type: Option<&str>,
    machine_subnet: Option<&str>,
) -> Option<Offering> {
    let instance_type = match batch_types {
        [only] => only.clone(),
        _ => batch_types
            .iter()
            .find(|t| Some(t.as_str()) == machine_type)?
            .clone(),
    };
    let subnet = match batch_subnets {
        [] => String::new(),
        [only] => only.clone(),
        _ => batch_subnets
            .iter()
            .find(|s| Some(s.as_str()) == machine_subnet)?
            .clone(),
    };
    Some(Offering {
        provider: provider.to_string(),
        instance_type,
        subnet,
        spot,
    })
}

/// The pure rule behind [`CapacityCache::record_death`]: drop deaths older
/// than `window`, count `id` once, and say whether the offering cools down.
fn count_death(
    recent: &mut Vec<(String, Instant)>,
    id: &str,
    now: Instant,
    window: Duration,
) -> DeathVerdict {
    recent.retain(|(_, at)| now.saturating_duration_since(*at) < window);
    if recent.iter().any(|(seen, _)| seen == id) {
        return DeathVerdict::AlreadyCounted;
    }
    recent.push((id.to_string(), now));
    let deaths = recent.len();
    if deaths >= DEATHS_TO_COOL {
        // Counted from zero again after the cooldown: the next verdict on
        // this offering needs as many fresh deaths.
        recent.clear();
        DeathVerdict::CooledDown { deaths }
    } else {
        DeathVerdict::Counted { deaths }
    }
}

impl CapacityCache {
    /// Offerings marked unavailable stay so for `cooldown`.
    pub fn new(cooldown: Duration) -> CapacityCache {
        CapacityCache {
            cooldown,
            unavailable: Mutex::new(HashMap::new()),
            deaths: Mutex::new(Deaths::default()),
        }
    }

    /// Counts machine `id` of `offering` dying at launch for `why` (the
    /// cloud's stateReason); [`DEATHS_TO_COOL`] deaths within the cooldown mark
    /// the offering unavailable, exactly like a capacity error. Counting the
    /// same machine again (a reconcile repeated after a failed write) is a
    /// no-op.
    pub fn record_death(&self, offering: Offering, id: &str, why: &str) -> DeathVerdict {
        let verdict = {
            let mut deaths = self.deaths.lock().unwrap_or_else(|e| e.into_inner());
            let recent = deaths.recent.entry(offering.clone()).or_default();
            let verdict = count_death(recent, id, Instant::now(), self.cooldown);
            if matches!(verdict, DeathVerdict::CooledDown { .. }) {
                deaths.why.insert(offering.clone(), why.to_string());
            }
            verdict
        };
        if matches!(verdict, DeathVerdict::CooledDown { .. }) {
            self.mark_unavailable([offering]);
        }
        verdict
    }

    /// Why machines last died at launch on an offering that is cooling down
    /// because of it, for the message that says no offering is left.
    pub fn death_reason(&self) -> Option<String> {
        self.death_reason_among(|_| true)
    }

    /// [`Self::death_reason`] limited to the offerings `mine` accepts (one
    /// template's), so a request never names another template's cause.
    pub fn death_reason_among(&self, mine: impl Fn(&Offering) -> bool) -> Option<String> {
        let deaths = self.deaths.lock().unwrap_or_else(|e| e.into_inner());
        let mut reasons: Vec<&String> = deaths
            .why
            .iter()
            .filter(|(o, _)| mine(o) && !self.is_available(o))
            .map(|(_, why)| why)
            .collect();
        reasons.sort();
        reasons.first().map(|s| s.to_string())
    }

    /// Records that the cloud had no capacity for these offerings.
    pub fn mark_unavailable(&self, offerings: impl IntoIterator<Item = Offering>) {
        let until = Instant::now() + self.cooldown;
        let mut map = self.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        for o in offerings {
            map.insert(o, until);
        }
    }

    /// Whether `offering` may be tried now.
    pub fn is_available(&self, offering: &Offering) -> bool {
        let mut map = self.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(offering) {
            Some(until) if *until > Instant::now() => false,
            Some(_) => {
                map.remove(offering);
                true
            }
            None => true,
        }
    }

    /// How long until the soonest unavailable offering may be tried again.
    pub fn next_expiry(&self) -> Option<Duration> {
        let now = Instant::now();
        let map = self.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|until| **until > now)
            .map(|until| *until - now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offering(t: &str) -> Offering {
        Offering {
            provider: "p".into(),
            instance_type: t.into(),
            subnet: String::new(),
            spot: false,
        }
    }

    #[test]
    fn unavailable_until_the_cooldown_passes() {
        let cache = CapacityCache::new(Duration::from_millis(50));
        cache.mark_unavailable([offering("a")]);
        assert!(!cache.is_available(&offering("a")));
        assert!(cache.is_available(&offering("b")));
        assert!(cache.next_expiry().is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.is_available(&offering("a")));
        assert!(cache.next_expiry().is_none());
    }

    #[test]
    fn deaths_at_launch_are_counted_once_per_machine_within_the_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let s = Duration::from_secs;
        // (machine, seconds after t0, expected verdict)
        let rows: &[(&str, u64, DeathVerdict)] = &[
            ("i-1", 0, DeathVerdict::Counted { deaths: 1 }),
            ("i-1", 1, DeathVerdict::AlreadyCounted),
            // i-1 is older than the window by then: this is a first death again.
            ("i-2", 61, DeathVerdict::Counted { deaths: 1 }),
            ("i-3", 70, DeathVerdict::CooledDown { deaths: 2 }),
            // Counting starts over after a cooldown.
            ("i-4", 71, DeathVerdict::Counted { deaths: 1 }),
        ];
        let mut recent = Vec::new();
        for (id, at, want) in rows {
            assert_eq!(
                &count_death(&mut recent, id, t0 + s(*at), w),
                want,
                "{id} at +{at}s"
            );
        }
    }

    #[test]
    fn a_death_is_blamed_on_the_offering_its_batch_chose() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = |t: &str, s: &str| {
            Some(Offering {
                provider: "p".into(),
                instance_type: t.into(),
                subnet: s.into(),
                spot: true,
            })
        };
        // (batch types, batch subnets, machine type, machine subnet, offering)
        let rows = [
            (v(&["a"]), v(&[]), Some("a"), Some("subnet-x"), o("a", "")),
            (v(&["a"]), v(&["s1"]), None, None, o("a", "s1")),
            (
                v(&["a", "b"]),
                v(&["s1", "s2"]),
                Some("b"),
                Some("s2"),
                o("b", "s2"),
            ),
            (v(&["a", "b"]), v(&[]), Some("b"), Some("s9"), o("b", "")),
            (v(&["a", "b"]), v(&["s1"]), Some("c"), Some("s1"), None),
            (v(&["a"]), v(&["s1", "s2"]), Some("a"), None, None),
        ];
        for (types, subnets, mt, ms, want) in rows {
            assert_eq!(
                batch_offering("p", &types, &subnets, true, mt, ms),
                want,
                "{types:?} {subnets:?} {mt:?} {ms:?}"
            );
        }
    }

    #[test]
    fn repeated_deaths_cool_the_offering_down_and_keep_the_reason() {
        let cache = CapacityCache::new(Duration::from_secs(60));
        let why = "Server.InsufficientInstanceCapacity: Insufficient capacity.";
        assert_eq!(
            cache.record_death(offering("a"), "i-1", why),
            DeathVerdict::Counted { deaths: 1 }
        );
        assert!(cache.is_available(&offering("a")));
        assert_eq!(cache.death_reason(), None);
        assert_eq!(
            cache.record_death(offering("a"), "i-2", why),
            DeathVerdict::CooledDown { deaths: 2 }
        );
        assert!(!cache.is_available(&offering("a")));
        assert!(
            cache.is_available(&offering("b")),
            "other offerings untouched"
        );
        assert_eq!(cache.death_reason().as_deref(), Some(why));
    }
}
