//! Instance type facts (vCPUs, cores, memory, architecture, EFA support and
//! network cards) from
//! DescribeInstanceTypes, cached per adapter (that is, per provider instance):
//! a type's hardware never changes, so each type costs one call per process.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_ec2::types::{Filter, InstanceTypeInfo as Ec2TypeInfo};

use super::calls::Calls;
use super::clients::AwsClients;
use crate::provider::{InstanceTypeInfo, ProviderError};

/// Facts already fetched, by instance type. Unknown types are not cached, so a
/// type the region starts offering later is found.
#[derive(Default)]
pub(super) struct InfoCache(Mutex<HashMap<String, InstanceTypeInfo>>);

impl InfoCache {
    fn get(&self, instance_type: &str) -> Option<InstanceTypeInfo> {
        self.0
            .lock()
            .ok()
            .and_then(|map| map.get(instance_type).cloned())
    }

    fn put(&self, info: InstanceTypeInfo) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(info.instance_type.clone(), info);
        }
    }
}

/// The facts of `instance_type`, from the cache or one DescribeInstanceTypes
/// call. The type goes into a filter, so an unknown type answers `None`
/// instead of failing the call.
pub(super) async fn info(
    clients: &AwsClients,
    calls: &Calls,
    cache: &InfoCache,
    instance_type: &str,
) -> Result<Option<InstanceTypeInfo>, ProviderError> {
    if let Some(hit) = cache.get(instance_type) {
        return Ok(Some(hit));
    }
    if instance_type.contains(['*', '?']) {
        return Ok(None);
    }
    let request = clients.ec2.describe_instance_types().filters(
        Filter::builder()
            .name("instance-type")
            .values(instance_type)
            .build(),
    );
    let out = calls
        .run("DescribeInstanceTypes", || request.send())
        .await?;
    let found = out
        .instance_types()
        .iter()
        .find(|t| t.instance_type().map(|n| n.as_str()) == Some(instance_type))
        .map(|t| from_ec2(instance_type, t));
    if let Some(info) = &found {
        cache.put(info.clone());
    }
    Ok(found)
}

/// EC2's description in the port's plain type; missing numbers become 0 and the
/// caller decides whether that is usable.
fn from_ec2(instance_type: &str, t: &Ec2TypeInfo) -> InstanceTypeInfo {
    let cpu = t.v_cpu_info();
    let vcpus = cpu.and_then(|c| c.default_v_cpus()).unwrap_or(0);
    InstanceTypeInfo {
        instance_type: instance_type.to_string(),
        vcpus,
        // Types that do not report cores (some bare metal) count one per vCPU.
        cores: cpu.and_then(|c| c.default_cores()).unwrap_or(vcpus),
        memory_mib: t.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0),
        architecture: t
            .processor_info()
            .and_then(|p| p.supported_architectures().first())
            .map(|a| a.as_str().to_string()),
        efa_supported: t.network_info().and_then(|n| n.efa_supported()),
        max_network_cards: t.network_info().and_then(|n| n.maximum_network_cards()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{
        ArchitectureType, InstanceType, MemoryInfo, NetworkInfo, ProcessorInfo, VCpuInfo,
    };

    #[test]
    fn maps_cpu_memory_and_first_architecture() {
        let t = Ec2TypeInfo::builder()
            .instance_type(InstanceType::T3Micro)
            .v_cpu_info(
                VCpuInfo::builder()
                    .default_v_cpus(2)
                    .default_cores(1)
                    .build(),
            )
            .memory_info(MemoryInfo::builder().size_in_mib(1024).build())
            .network_info(
                NetworkInfo::builder()
                    .efa_supported(false)
                    .maximum_network_cards(1)
                    .build(),
            )
            .processor_info(
                ProcessorInfo::builder()
                    .supported_architectures(ArchitectureType::X8664)
                    .supported_architectures(ArchitectureType::I386)
                    .build(),
            )
            .build();
        let info = from_ec2("t3.micro", &t);
        assert_eq!(
            info,
            InstanceTypeInfo {
                instance_type: "t3.micro".into(),
                vcpus: 2,
                cores: 1,
                memory_mib: 1024,
                architecture: Some("x86_64".into()),
                efa_supported: Some(false),
                max_network_cards: Some(1),
            }
        );
    }

    #[test]
    fn missing_cores_count_one_per_vcpu() {
        let t = Ec2TypeInfo::builder()
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(96).build())
            .build();
        let info = from_ec2("m5.metal", &t);
        assert_eq!((info.vcpus, info.cores, info.memory_mib), (96, 96, 0));
        assert_eq!(info.architecture, None);
        assert_eq!((info.efa_supported, info.max_network_cards), (None, None));
    }

    #[test]
    fn cache_returns_what_was_put() {
        let cache = InfoCache::default();
        assert!(cache.get("t3.micro").is_none());
        let info = InstanceTypeInfo {
            instance_type: "t3.micro".into(),
            vcpus: 2,
            cores: 1,
            memory_mib: 1024,
            architecture: None,
            efa_supported: None,
            max_network_cards: None,
        };
        cache.put(info.clone());
        assert_eq!(cache.get("t3.micro"), Some(info));
    }
}
