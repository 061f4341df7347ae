//! The hostforge binary: one executable for the operator and its tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// hostforge: a Kubernetes operator that provisions cloud machines on demand.
#[derive(Debug, Parser)]
#[command(name = "hostforge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator until SIGTERM/SIGINT.
    Run {
        /// The operator config file (YAML: clusterName, providers, imageCacheTtl).
        #[arg(long, env = "HOSTFORGE_CONFIG")]
        config: PathBuf,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "HOSTFORGE_NAMESPACE")]
        namespace: Option<String>,
        /// Address of the /healthz, /readyz and /metrics server.
        #[arg(long, env = "HOSTFORGE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
        metrics_addr: std::net::SocketAddr,
        /// Log format: json (for containers) or text (for terminals).
        #[arg(long, env = "HOSTFORGE_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Reconcile only while holding a coordination.k8s.io Lease, so several
        /// replicas can run with one active (15 s lease, renewed every 5 s).
        #[arg(long, env = "HOSTFORGE_LEADER_ELECTION")]
        leader_election: bool,
        /// Name of the leader-election Lease.
        #[arg(long, env = "HOSTFORGE_LEASE_NAME", default_value = "hostforge")]
        lease_name: String,
        /// Namespace of the Lease (default: POD_NAMESPACE, the in-cluster
        /// service-account namespace, --namespace, then "default").
        #[arg(long, env = "HOSTFORGE_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
    },
    /// IBM Spectrum Symphony HostFactory / LSF resource connector provider
    /// operations, answered from the Kubernetes objects (see docs/hostfactory.md).
    Hf(hostforge::hostfactory::cli::HfArgs),
    /// Write the CustomResourceDefinitions generated from the API types.
    Crdgen {
        /// Directory to write machinetemplates.yaml and machinerequests.yaml into.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
        /// Print all CRDs as one YAML stream to stdout instead of writing files.
        #[arg(long)]
        stdout: bool,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        // The HostFactory protocol owns stdout and the exit code.
        Command::Hf(args) => return hostforge::hostfactory::cli::main(args),
        Command::Crdgen { out_dir, stdout } => crdgen(&out_dir, stdout),
        Command::Run {
            config,
            namespace,
            metrics_addr,
            log_format,
            leader_election,
            lease_name,
            lease_namespace,
        } => {
            let leader_election = leader_election.then(|| {
                let ns = lease_namespace
                    .or_else(own_namespace)
                    .or_else(|| namespace.clone())
                    .unwrap_or_else(|| "default".into());
                hostforge::leader::LeaseSettings::new(
                    lease_name,
                    ns,
                    hostforge::leader::LeaseSettings::default_identity(),
                )
            });
            run(
                hostforge::operator::RunOptions {
                    config_path: config,
                    namespace,
                    metrics_addr,
                    leader_election,
                },
                log_format,
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `eprintln!` would panic on a closed stderr; nobody is left to tell.
            let _ = writeln!(std::io::stderr(), "hostforge: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    opts: hostforge::operator::RunOptions,
    log_format: LogFormat,
) -> Result<(), Box<dyn std::error::Error>> {
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(hostforge::operator::run(opts));
    // After a lost lease `run` returns without waiting for its tasks; do not
    // wait for them here either (they were aborted), exit now.
    runtime.shutdown_background();
    result?;
    Ok(())
}

/// The Pod's namespace: POD_NAMESPACE (Downward API) or the mounted service
/// account's namespace file.
fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;

    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_ansi(format, std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Whether log lines carry ANSI colour codes: only text lines written to a
/// terminal. A log file or a pipe (a container runtime, the tests' operator
/// log) gets plain text that grep and diff can read; JSON lines never have any.
fn use_ansi(format: LogFormat, stderr_is_terminal: bool) -> bool {
    match format {
        LogFormat::Text => stderr_is_terminal,
        LogFormat::Json => false,
    }
}

/// Writes the CRDs; a closed stdout (`crdgen --stdout | head`) is an error
/// to report, not a panic as `print!` would make it.
fn crdgen(out_dir: &std::path::Path, stdout: bool) -> Result<(), Box<dyn std::error::Error>> {
    if stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(hostforge::api::crd_yaml_stream()?.as_bytes())?;
        out.flush()?;
    } else {
        for path in hostforge::api::write_crd_files(out_dir)? {
            let _ = writeln!(std::io::stderr(), "wrote {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{use_ansi, LogFormat};

    #[test]
    fn colour_codes_only_for_text_on_a_terminal() {
        for (format, terminal, ansi) in [
            (LogFormat::Text, true, true),
            (LogFormat::Text, false, false),
            (LogFormat::Json, true, false),
            (LogFormat::Json, false, false),
        ] {
            assert_eq!(
                use_ansi(format, terminal),
                ansi,
                "{format:?}, terminal: {terminal}"
            );
        }
    }
}
