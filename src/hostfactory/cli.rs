//! `hostforge hf <operation> -f FILE`: the process HostFactory's scripts exec.
//!
//! The protocol's rules live here: the answer (JSON) is the only thing written
//! to stdout, exit 0; a failure is one line on stdout, exit 1. Logs go to
//! `hostforge-hf.log` in `HF_PROVIDER_LOGDIR` (Symphony) or `PRO_LSF_LOGDIR`
//! (LSF), else to stderr. Input is parsed before Kubernetes is contacted, so
//! bad input never creates anything.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::protocol::{self, MachinesIn, RequestMachinesIn, RequestStatusIn};
use super::{import, machines, reclaim, returns, status, templates, HfConfig, HfError};

/// Arguments of `hostforge hf`.
#[derive(Debug, clap::Args)]
pub struct HfArgs {
    /// The plugin configuration (default: hostforge.yaml in $HF_PROVIDER_CONFDIR
    /// or $PRO_CONF_DIR, or their conf/ folder).
    #[arg(long, global = true, env = "HOSTFORGE_HF_CONFIG")]
    pub config: Option<PathBuf>,
    /// The operation.
    #[command(subcommand)]
    pub operation: Operation,
}

/// The HostFactory operations, named as HostFactory names its scripts.
#[derive(Debug, Subcommand)]
pub enum Operation {
    /// List the offered MachineTemplates with their attributes.
    #[command(name = "getAvailableTemplates")]
    GetAvailableTemplates(Input),
    /// Create a MachineRequest; answers its requestId.
    #[command(name = "requestMachines")]
    RequestMachines(Input),
    /// Report on create (MachineRequest) and return (ret-…) requests.
    #[command(name = "getRequestStatus")]
    GetRequestStatus(Input),
    /// Give machines back; answers a ret-… requestId.
    #[command(name = "requestReturnMachines")]
    RequestReturnMachines(Input),
    /// Of the hosts held, list those the cloud is taking back.
    #[command(name = "getReturnRequests")]
    GetReturnRequests(Input),
    /// Convert awsprov_templates.json files into MachineTemplate manifests.
    #[command(name = "import-templates")]
    ImportTemplates(import::ImportArgs),
}

/// The input file of an operation.
#[derive(Debug, clap::Args)]
pub struct Input {
    /// The JSON input HostFactory wrote.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
}

/// Runs `hostforge hf …` and returns the process exit code.
pub fn main(args: HfArgs) -> ExitCode {
    if let Operation::ImportTemplates(import_args) = args.operation {
        return import::main(import_args);
    }
    init_logging();
    match run(args.config.as_deref(), args.operation) {
        Ok(answer) => match write_stdout(&answer) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %err, "writing the answer failed");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            tracing::error!(error = %err, "operation failed");
            // If even this write fails there is nobody left to tell.
            let _ = write_stdout(&err.one_line());
            ExitCode::FAILURE
        }
    }
}

fn write_stdout(text: &str) -> Result<(), HfError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| HfError::Output(e.to_string()))
}

/// Reads and parses the operation's input, then answers it within the
/// configured timeout; returns the JSON text of the answer.
fn run(config_path: Option<&Path>, operation: Operation) -> Result<String, HfError> {
    let provider = std::env::var("HF_PROVIDER_NAME")
        .or_else(|_| std::env::var("PROVIDER_NAME"))
        .ok();
    match operation {
        Operation::GetAvailableTemplates(_) => execute(config_path, |client, config| async move {
            templates::get_available_templates(&client, &config).await
        }),
        Operation::RequestMachines(input) => {
            let input: RequestMachinesIn = read_input("requestMachines", &input)?;
            execute(config_path, |client, config| async move {
                machines::request_machines(&client, &config, &input, provider.as_deref()).await
            })
        }
        Operation::GetRequestStatus(input) => {
            let input: RequestStatusIn = read_input("getRequestStatus", &input)?;
            execute(config_path, |client, config| async move {
                status::get_request_status(&client, &config, input).await
            })
        }
        Operation::RequestReturnMachines(input) => {
            let input: MachinesIn = read_input("requestReturnMachines", &input)?;
            execute(config_path, |client, config| async move {
                returns::request_return_machines(&client, &config, input).await
            })
        }
        Operation::GetReturnRequests(input) => {
            let input: MachinesIn = read_input("getReturnRequests", &input)?;
            execute(config_path, |client, config| async move {
                reclaim::get_return_requests(&client, &config, input).await
            })
        }
        Operation::ImportTemplates(_) => Err(HfError::InvalidInput(
            "import-templates is not a HostFactory operation".into(),
        )),
    }
}

fn read_input<T: DeserializeOwned>(operation: &'static str, input: &Input) -> Result<T, HfError> {
    let path = input
        .file
        .as_ref()
        .ok_or(HfError::NoInputFile { operation })?;
    let text = std::fs::read_to_string(path).map_err(|source| HfError::ReadInput {
        path: path.clone(),
        source,
    })?;
    protocol::parse(path, &text)
}

/// Loads the configuration, connects, and runs `op` on a small runtime.
fn execute<T, F, Fut>(config_path: Option<&Path>, op: F) -> Result<String, HfError>
where
    T: Serialize,
    F: FnOnce(kube::Client, HfConfig) -> Fut,
    Fut: Future<Output = Result<T, HfError>>,
{
    let (path, config) = HfConfig::locate(config_path)?;
    tracing::debug!(config = %path.display(), namespace = %config.namespace, "configuration loaded");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HfError::Output(format!("starting the runtime: {e}")))?;
    let timeout = config.timeout;
    let answer = runtime.block_on(async move {
        let work = async {
            let client = config.client().await?;
            op(client, config).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| HfError::Timeout(timeout))?
    })?;
    serde_json::to_string_pretty(&answer).map_err(|e| HfError::Output(e.to_string()))
}

/// Logs to the scheduler's log directory when it names one, else to stderr;
/// never to stdout, which carries the answer.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let dir = std::env::var_os("HF_PROVIDER_LOGDIR").or_else(|| std::env::var_os("PRO_LSF_LOGDIR"));
    let file = dir.and_then(|d| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&d).join("hostforge-hf.log"))
            .ok()
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
