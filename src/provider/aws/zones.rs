//! The Availability Zones a launch without subnets is pinned to: those where
//! the account has a default subnet (DescribeSubnets, `default-for-az=true`).
//! EC2's ClientToken is zonal — "a retry in a different Availability Zone" is
//! a new request, not a replay
//! (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>) —
//! so a batch records one zone before it is sent and sends it every time.
//! The answer changes only when someone adds or deletes a default subnet, so it
//! is cached for a while instead of asked before every batch.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;

use super::calls::Calls;
use super::clients::AwsClients;
use crate::provider::ProviderError;

/// How long one DescribeSubnets answer is used.
const CACHE_FOR: Duration = Duration::from_secs(10 * 60);

/// The last answer and when it was fetched.
#[derive(Default)]
pub(super) struct ZoneCache(Mutex<Option<(Instant, Vec<String>)>>);

impl ZoneCache {
    fn fresh(&self) -> Option<Vec<String>> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, zones)| zones.clone())
    }

    fn store(&self, zones: Vec<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), zones));
    }
}

/// The zones with a default subnet, sorted and without repeats (cached).
pub(super) async fn default_zones(
    clients: &AwsClients,
    calls: &Calls,
    cache: &ZoneCache,
) -> Result<Vec<String>, ProviderError> {
    if let Some(zones) = cache.fresh() {
        return Ok(zones);
    }
    // One default subnet per zone, so a region's answer fits one page.
    let request = clients.ec2.describe_subnets().filters(
        Filter::builder()
            .name("default-for-az")
            .values("true")
            .build(),
    );
    let out = calls.run("DescribeSubnets", || request.send()).await?;
    let zones = zones_of(
        out.subnets()
            .iter()
            .filter_map(|s| s.availability_zone().map(str::to_string)),
    );
    cache.store(zones.clone());
    Ok(zones)
}

/// Sorted, without repeats or empty names.
fn zones_of(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut zones: Vec<String> = names.filter(|z| !z.is_empty()).collect();
    zones.sort();
    zones.dedup();
    zones
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_sorted_unique_and_named() {
        let names = ["us-east-1b", "us-east-1a", "", "us-east-1b"].map(String::from);
        assert_eq!(zones_of(names.into_iter()), ["us-east-1a", "us-east-1b"]);
    }

    #[test]
    fn the_cache_answers_until_it_expires() {
        let cache = ZoneCache::default();
        assert_eq!(cache.fresh(), None);
        cache.store(vec!["us-east-1a".into()]);
        assert_eq!(cache.fresh(), Some(vec!["us-east-1a".to_string()]));
        *cache.0.lock().expect("lock") =
            Some((Instant::now() - CACHE_FOR - Duration::from_secs(1), vec![]));
        assert_eq!(cache.fresh(), None);
    }
}
