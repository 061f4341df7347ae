//! `hostforge hf <operation> -f FILE`: the process HostFactory's scripts exec.
//!
//! The protocol's rules live here: the answer (JSON) is the only thing written
//! to stdout, exit 0; a failure is one line on stdout (and the same line on
//! stderr), exit 1. Logs go to `hostforge-hf.log` in `HF_PROVIDER_LOGDIR`
//! (Symphony) or `PRO_LSF_LOGDIR` (LSF), else to stderr. Input is parsed before
//! Kubernetes is contacted, so bad input never creates anything; it must be a
//! regular file of at most [`MAX_INPUT_BYTES`], read within [`READ_DEADLINE`]
//! (a FIFO, a device or a stalled network file is refused, not waited on).

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::protocol::{self, MachinesIn, RequestMachinesIn, RequestStatusIn};
use super::{import, machines, reclaim, returns, status, templates, HfConfig, HfError};

/// Largest input file read: HostFactory's inputs are a few KiB even for
/// thousands of hosts, and the file is held in memory whole.
pub const MAX_INPUT_BYTES: u64 = 4 << 20;
/// How long reading the input may take (a file on a stalled network mount).
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

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
            let line = err.one_line();
            // If even these writes fail there is nobody left to tell.
            let _ = write_stdout(&line);
            let _ = writeln!(std::io::stderr(), "hostforge hf: {line}");
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
        Operation::GetAvailableTemplates(_) => {
            execute(config_path, 1, |client, config| async move {
                templates::get_available_templates(&client, &config).await
            })
        }
        Operation::RequestMachines(input) => {
            let (input, identity): (RequestMachinesIn, _) = read_input("requestMachines", &input)?;
            let key = machines::request_key(&input, &identity);
            // Three steps of one timeout each (templates, create, look-up), so
            // a create that was sent is always waited for or looked up.
            execute(config_path, 3, |client, config| async move {
                machines::request_machines(&client, &config, &input, provider.as_deref(), &key)
                    .await
            })
        }
        Operation::GetRequestStatus(input) => {
            let (input, _): (RequestStatusIn, _) = read_input("getRequestStatus", &input)?;
            execute(config_path, 1, |client, config| async move {
                status::get_request_status(&client, &config, input).await
            })
        }
        Operation::RequestReturnMachines(input) => {
            let (input, _): (MachinesIn, _) = read_input("requestReturnMachines", &input)?;
            execute(config_path, 1, |client, config| async move {
                returns::request_return_machines(&client, &config, input).await
            })
        }
        Operation::GetReturnRequests(input) => {
            let (input, _): (MachinesIn, _) = read_input("getReturnRequests", &input)?;
            execute(config_path, 1, |client, config| async move {
                reclaim::get_return_requests(&client, &config, input).await
            })
        }
        Operation::ImportTemplates(_) => Err(HfError::InvalidInput(
            "import-templates is not a HostFactory operation".into(),
        )),
    }
}

/// Reads and parses the input file; also returns the file's identity (path,
/// device, inode, modification time, size, then the content), which tells one
/// HostFactory request from another (see [`machines::request_key`]).
fn read_input<T: DeserializeOwned>(
    operation: &'static str,
    input: &Input,
) -> Result<(T, Vec<u8>), HfError> {
    let path = input
        .file
        .as_ref()
        .ok_or(HfError::NoInputFile { operation })?;
    let (text, mut identity) = read_bounded(path, MAX_INPUT_BYTES, READ_DEADLINE)?;
    let parsed = protocol::parse(path, &text)?;
    identity.extend_from_slice(text.as_bytes());
    Ok((parsed, identity))
}

/// The text of the regular file `path` when it has at most `max` bytes and
/// can be read within `deadline`, with the file's identity.
pub fn read_bounded(
    path: &Path,
    max: u64,
    deadline: Duration,
) -> Result<(String, Vec<u8>), HfError> {
    let refused = |reason: String| HfError::InputRefused {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| HfError::ReadInput {
        path: path.to_path_buf(),
        source,
    };
    // Checked before opening: opening a FIFO blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(refused("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(refused(format!("larger than {max} bytes")));
    }
    let owned = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    // A read that stalls (a hung network mount) is left behind in its thread;
    // the process answers and exits without it.
    std::thread::spawn(move || {
        let read = (|| {
            let file = std::fs::File::open(&owned)?;
            let meta = file.metadata()?;
            let mut bytes = Vec::new();
            file.take(max + 1).read_to_end(&mut bytes)?;
            Ok::<_, std::io::Error>((meta, bytes))
        })();
        let _ = tx.send(read);
    });
    let (meta, bytes) = match rx.recv_timeout(deadline) {
        Ok(read) => read.map_err(io)?,
        Err(_) => return Err(refused(format!("not read within {deadline:?}"))),
    };
    if !meta.is_file() {
        return Err(refused("not a regular file".into()));
    }
    if bytes.len() as u64 > max {
        return Err(refused(format!("larger than {max} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.utf8_error(),
        ))
    })?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let identity = format!(
        "{}\0{}\0{}\0{}.{}\0{}\0",
        canonical.display(),
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len()
    );
    Ok((text, identity.into_bytes()))
}

/// Loads the configuration, connects, and runs `op` on a small runtime within
/// `steps` times the configured timeout.
fn execute<T, F, Fut>(config_path: Option<&Path>, steps: u32, op: F) -> Result<String, HfError>
where
    T: Serialize,
    F: FnOnce(kube::Client, HfConfig) -> Fut,
    Fut: Future<Output = Result<T, HfError>>,
{
    let (path, config) = HfConfig::locate(config_path)?;
    super::tls::install_provider();
    tracing::debug!(config = %path.display(), namespace = %config.namespace, "configuration loaded");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HfError::Output(format!("starting the runtime: {e}")))?;
    let timeout = config.timeout * steps;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("in.json");
        std::fs::write(&small, "{}").expect("write");
        let (text, identity) =
            read_bounded(&small, 16, Duration::from_secs(5)).expect("a small file");
        assert_eq!(text, "{}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, " ".repeat(17)).expect("write");
        let err = read_bounded(&big, 16, Duration::from_secs(5)).expect_err("too big");
        assert!(err.to_string().contains("larger than 16 bytes"), "{err}");
        let err = read_bounded(dir.path(), 16, Duration::from_secs(5)).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // The same file read again is the same input; another file is another.
        let (_, again) = read_bounded(&small, 16, Duration::from_secs(5)).expect("again");
        assert_eq!(identity, again);
        let copy = dir.path().join("in-2.json");
        std::fs::copy(&small, &copy).expect("copy");
        let (_, other) = read_bounded(&copy, 16, Duration::from_secs(5)).expect("copy");
        assert_ne!(identity, other);
    }
}
