//! Subnets and security groups found by their tags, in plain types: what a
//! template's subnetSelector / securityGroupSelector resolve to.

use std::collections::BTreeMap;

/// A subnet a tag selection found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubnetFacts {
    /// Its Availability Zone (first: the order selections are kept in).
    pub zone: Option<String>,
    /// Subnet id.
    pub id: String,
    /// Its VPC.
    pub vpc_id: Option<String>,
}

/// A security group a tag selection found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecurityGroupFacts {
    /// Group id.
    pub id: String,
    /// Group name.
    pub name: Option<String>,
    /// Its VPC.
    pub vpc_id: Option<String>,
}

/// What a selection asks for: every tag, with `*` for "this key, any value".
pub type TagQuery = BTreeMap<String, String>;

/// The value of a selector tag that matches any value of its key.
pub const ANY_VALUE: &str = "*";
