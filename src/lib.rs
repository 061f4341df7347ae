//! hostforge: a Kubernetes operator that provisions cloud machines on demand.

pub mod api;
pub mod config;
pub mod image;
pub mod provider;
