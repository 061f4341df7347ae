//! Offerings (instance type × subnet × capacity type) the cloud recently said it
//! has no capacity for. Launches skip them until the cooldown passes, so a
//! template's fallbacks are tried in order instead of the same failing launch
//! being repeated.

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

/// Offerings without capacity, each until its cooldown ends.
#[derive(Debug)]
pub struct CapacityCache {
    cooldown: Duration,
    unavailable: Mutex<HashMap<Offering, Instant>>,
}

impl CapacityCache {
    /// Offerings marked unavailable stay so for `cooldown`.
    pub fn new(cooldown: Duration) -> CapacityCache {
        CapacityCache {
            cooldown,
            unavailable: Mutex::new(HashMap::new()),
        }
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
}
