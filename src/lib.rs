//! hostforge: a Kubernetes operator that provisions cloud machines on demand.

pub mod api;
pub mod config;
pub mod controller;
pub mod failpoint;
pub mod hostfactory;
pub mod http;
pub mod image;
pub mod kube_client;
#[cfg(test)]
mod layering;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod provider;
