//! The launch group of a template: which instance types, through which API,
//! on which capacity (on-demand, spot or mixed), with which spot allocation
//! strategy and price. These fields decide each other (weights, mixed capacity
//! or a spot strategy need EC2 Fleet), so they are read together into a
//! [`Launch`] and written out once the API is known.

use serde_json::{json, Map, Value};

use super::cursor::{split, Cursor};
use crate::api::{AllocationStrategy, CapacityType, ProviderApi};

/// The launch fields of one template, read and reconciled with each other.
pub(super) struct Launch {
    /// Instance types in order, with their fleet weights.
    types: Vec<(String, Option<i64>)>,
    /// Whether the template launches through EC2 Fleet.
    fleet: bool,
    /// On-demand, spot or mixed.
    capacity: CapacityType,
    /// The on-demand share of mixed capacity.
    on_demand_percent: Option<i64>,
    /// The spot allocation strategy, when it applies.
    allocation: Option<AllocationStrategy>,
    /// The highest spot price, when it applies.
    max_price: Option<String>,
}

/// Reads vmType(s), priceType, percentOnDemand, providerApi/awshandler,
/// allocationStrategy and maxSpotPrice, noting what does not apply; an error
/// when the template names no instance type.
pub(super) fn read(c: &mut Cursor, template_id: &str) -> Result<Launch, String> {
    // Instance types first: weights and spot decide the API.
    let (types, weighted) = instance_types(c);
    if types.is_empty() {
        return Err(format!("{template_id}: no vmType or vmTypes"));
    }
    let (capacity, on_demand_percent) = capacity(c);
    let handler = c
        .string("providerApi")
        .map(|v| ("providerApi", v))
        .or_else(|| c.string("awshandler").map(|v| ("awshandler", v)));
    let allocation = c.string("allocationStrategy");
    let mut fleet = capacity == CapacityType::Mixed
        || (allocation.is_some() && capacity != CapacityType::OnDemand);
    if let Some((field, api)) = &handler {
        match api.as_str() {
            "RunInstances" if fleet => c.note(
                field,
                "RunInstances launches one capacity type without allocation strategies; EC2Fleet is used",
            ),
            "RunInstances" => {}
            "EC2Fleet" | "EC2FleetInstant" => fleet = true,
            other => {
                fleet = true;
                c.note(
                    field,
                    format!("{other} is launched as an EC2 Fleet of type instant; the operator keeps the count itself"),
                );
            }
        }
    }
    if weighted && !fleet {
        c.note(
            "vmTypes",
            "weights need EC2 Fleet; this template launches with RunInstances, so they are dropped",
        );
    }
    let allocation = allocation.and_then(|a| match allocation_strategy(&a) {
        Some(v) if fleet && capacity != CapacityType::OnDemand => Some(v),
        Some(_) => {
            c.note(
                "allocationStrategy",
                "only applies to spot capacity; on-demand capacity follows the order of vmTypes",
            );
            None
        }
        None => {
            c.note(
                "allocationStrategy",
                format!("{a:?} is not an EC2 Fleet spot strategy"),
            );
            None
        }
    });
    let max_price = max_price(c, capacity);
    Ok(Launch {
        types,
        fleet,
        capacity,
        on_demand_percent,
        allocation,
        max_price,
    })
}

impl Launch {
    /// Writes providerApi (only for a fleet), instanceTypes (weights only for
    /// a fleet), capacityType, onDemandPercent, allocationStrategy and maxPrice.
    pub(super) fn write(&self, spec: &mut Map<String, Value>) {
        if self.fleet {
            spec.insert("providerApi".into(), json!(ProviderApi::Ec2Fleet));
        }
        let types: Vec<Value> = self
            .types
            .iter()
            .map(|(t, w)| match w {
                Some(w) if self.fleet => json!({"type": t, "weight": w}),
                _ => json!({"type": t}),
            })
            .collect();
        spec.insert("instanceTypes".into(), Value::Array(types));
        spec.insert("capacityType".into(), json!(self.capacity));
        if let Some(pct) = self.on_demand_percent {
            spec.insert("onDemandPercent".into(), json!(pct));
        }
        if let Some(a) = self.allocation {
            spec.insert("allocationStrategy".into(), json!(a));
        }
        if let Some(p) = &self.max_price {
            spec.insert("maxPrice".into(), json!(p));
        }
    }
}

/// maxSpotPrice (a number or its text) → maxPrice, unless the template is all
/// on-demand.
fn max_price(c: &mut Cursor, capacity: CapacityType) -> Option<String> {
    let price = c.take("maxSpotPrice")?;
    let text = match &price {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    match text {
        Some(p) if capacity != CapacityType::OnDemand => return Some(p),
        Some(_) => c.note(
            "maxSpotPrice",
            "ignored: the template launches on-demand capacity",
        ),
        None => c.note("maxSpotPrice", "not a number"),
    }
    None
}

/// vmType (a type or a comma list) then vmTypes (a list, or an object of type →
/// weight; JSON objects carry no order, so those come sorted by name). Returns
/// the types with weights and whether any weight is not 1.
fn instance_types(c: &mut Cursor) -> (Vec<(String, Option<i64>)>, bool) {
    let mut types: Vec<(String, Option<i64>)> =
        c.list("vmType").into_iter().map(|t| (t, None)).collect();
    let mut weighted = false;
    match c.take("vmTypes") {
        None => {}
        Some(Value::Object(map)) => {
            for (t, w) in map {
                let weight = w.as_i64().filter(|w| (1..=1000).contains(w));
                if weight.is_none() {
                    c.note(
                        "vmTypes",
                        format!("weight of {t} ({w}) is not 1..1000; dropped"),
                    );
                }
                weighted |= weight.is_some_and(|w| w != 1);
                match types.iter_mut().find(|(x, _)| *x == t) {
                    Some(entry) => entry.1 = weight,
                    None => types.push((t, weight)),
                }
            }
        }
        Some(Value::Array(items)) => {
            for t in items.iter().filter_map(|v| v.as_str()) {
                if !types.iter().any(|(x, _)| x == t) {
                    types.push((t.to_string(), None));
                }
            }
        }
        Some(Value::String(s)) => {
            for t in split(&s, ',') {
                if !types.iter().any(|(x, _)| *x == t) {
                    types.push((t, None));
                }
            }
        }
        Some(other) => c.note(
            "vmTypes",
            format!("expected an object or list, got {other}"),
        ),
    }
    if types.len() > 20 {
        c.note(
            "vmTypes",
            format!("{} types; only the first 20 are kept", types.len()),
        );
        types.truncate(20);
    }
    for extra in ["vmTypesOnDemand", "vmTypesPriority"] {
        if c.take(extra).is_some() {
            c.note(extra, "not mapped: hostforge uses one list of types (vmType/vmTypes) for both capacity types");
        }
    }
    (types, weighted)
}

/// priceType and percentOnDemand → capacityType and onDemandPercent (the
/// percentage only for mixed capacity).
fn capacity(c: &mut Cursor) -> (CapacityType, Option<i64>) {
    let price = c.string("priceType");
    let pct = c.take("percentOnDemand");
    let kind = match price.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("ondemand") | Some("on-demand") => CapacityType::OnDemand,
        Some("spot") => CapacityType::Spot,
        Some("heterogeneous") | Some("mixed") => CapacityType::Mixed,
        Some(other) => {
            c.note(
                "priceType",
                format!("{other:?} is not ondemand, spot or heterogeneous; on-demand used"),
            );
            CapacityType::OnDemand
        }
    };
    let pct = match (kind, pct) {
        (CapacityType::Mixed, Some(v)) => match v.as_i64().filter(|p| (0..=100).contains(p)) {
            Some(p) => Some(p),
            None => {
                c.note("percentOnDemand", format!("{v} is not 0..100; 0 used"));
                Some(0)
            }
        },
        (CapacityType::Mixed, None) => {
            c.note(
                "percentOnDemand",
                "missing with priceType heterogeneous; 0 (all spot) used",
            );
            Some(0)
        }
        (_, Some(_)) => {
            c.note(
                "percentOnDemand",
                "ignored: only used with priceType heterogeneous",
            );
            None
        }
        (_, None) => None,
    };
    (kind, pct)
}

/// IBM's camelCase strategies → the API's strategies.
fn allocation_strategy(s: &str) -> Option<AllocationStrategy> {
    Some(match s {
        "priceCapacityOptimized" | "price-capacity-optimized" => {
            AllocationStrategy::PriceCapacityOptimized
        }
        "capacityOptimized" | "capacity-optimized" => AllocationStrategy::CapacityOptimized,
        "capacityOptimizedPrioritized" | "capacity-optimized-prioritized" => {
            AllocationStrategy::CapacityOptimizedPrioritized
        }
        "lowestPrice" | "lowest-price" => AllocationStrategy::LowestPrice,
        "diversified" => AllocationStrategy::Diversified,
        _ => return None,
    })
}
