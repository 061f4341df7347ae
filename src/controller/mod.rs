//! The controllers: each reconcile is load → validate → resolve → status.
//! Controllers translate between the CRD types and the provider's plain types,
//! so adapters never see Kubernetes.

pub mod backoff;
pub mod capacity;
pub mod context;
pub mod error;
pub mod gc;
pub mod interruptions;
pub mod launch;
pub mod ownership;
pub mod plan;
pub mod request;
pub mod settle;
pub mod template;
pub mod tracker;
pub mod translate;
pub mod watch;

pub use context::{Context, Watches};
pub use error::Error;
