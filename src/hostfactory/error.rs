//! What can go wrong in a HostFactory operation. Every variant's message is
//! what HostFactory shows its administrator (one line on stdout, exit 1), so
//! each names the file, field or object at fault.

use std::path::PathBuf;

/// A failed HostFactory operation.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// The operation needs `-f FILE` and got none.
    #[error("no input file: {operation} needs -f FILE")]
    NoInputFile {
        /// The operation run.
        operation: &'static str,
    },
    /// The input file could not be read.
    #[error("cannot read input file {path}: {source}")]
    ReadInput {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The input file is not something the plugin reads (a FIFO, a device, too
    /// large, or too slow).
    #[error("input file {path} refused: {reason}")]
    InputRefused {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The input is not the JSON the operation expects.
    #[error("invalid input in {path}: {source}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The parser's complaint, with line and column.
        source: serde_json::Error,
    },
    /// The input is JSON of the right shape with a value that cannot be served.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A requestMachines names a template that is not offered.
    #[error("unknown templateId {template_id:?}: offered templates are [{offered}]")]
    UnknownTemplate {
        /// The id asked for.
        template_id: String,
        /// What getAvailableTemplates lists.
        offered: String,
    },
    /// getRequestStatus was asked only about ids that do not exist.
    #[error("unknown requestId: {0}")]
    UnknownRequest(String),
    /// requestReturnMachines named only machines no scheduler-owned request holds.
    #[error("no scheduler-owned MachineRequest holds these machines: {0}")]
    UnknownMachines(String),
    /// No hostforge.yaml was found.
    #[error("no plugin configuration: {0}")]
    ConfigMissing(String),
    /// hostforge.yaml could not be read or parsed.
    #[error("invalid plugin configuration {path}: {message}")]
    ConfigInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The Kubernetes client could not be configured.
    #[error("cannot configure the Kubernetes client: {0}")]
    KubeConfig(String),
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, e.g. "list MachineTemplates".
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// Optimistic concurrency kept failing (other writers changed the object).
    #[error("{0} kept changing while being patched; try again")]
    Contended(String),
    /// A request stopped being scheduler-owned while it was being patched.
    #[error(
        "MachineRequest {0} is no longer labelled hostforge.io/owner=hostfactory; not touched"
    )]
    NotOwned(String),
    /// The apiserver refused a patch for a reason other than a concurrent change.
    #[error("MachineRequest {request} refused the change: {message}")]
    Rejected {
        /// The request.
        request: String,
        /// The apiserver's reason.
        message: String,
    },
    /// A request's return records reached their size budget.
    #[error("{0}")]
    RecordsFull(String),
    /// No request of a return could be patched.
    #[error("nothing was returned: {0}")]
    ReturnFailed(String),
    /// The operation did not finish within the configured timeout.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Writing the answer failed.
    #[error("cannot write the answer: {0}")]
    Output(String),
}

impl HfError {
    /// Builds a [`HfError::Kube`] for `action`.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> HfError {
        HfError::Kube {
            action: action.into(),
            source,
        }
    }

    /// The message on one line, as the protocol wants it on stdout.
    pub fn one_line(&self) -> String {
        self.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fit_on_one_line() {
        let err = HfError::InvalidInput("machineCount must be\nat least 1".into());
        assert_eq!(
            err.one_line(),
            "invalid input: machineCount must be at least 1"
        );
    }
}
