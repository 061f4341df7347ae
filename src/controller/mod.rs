//! The controllers: each reconcile is load → validate → resolve → status.
//! Controllers translate between the CRD types and the provider's plain types,
//! so adapters never see Kubernetes.

pub mod context;
pub mod error;
pub mod template;

pub use context::Context;
pub use error::Error;
