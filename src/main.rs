//! The hostforge binary: one executable for the operator and its tools.

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
    },
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
        Command::Crdgen { out_dir, stdout } => crdgen(&out_dir, stdout).map_err(Into::into),
        Command::Run {
            config,
            namespace,
            metrics_addr,
            log_format,
        } => run(
            hostforge::operator::RunOptions {
                config_path: config,
                namespace,
                metrics_addr,
            },
            log_format,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hostforge: {err}");
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
    runtime.block_on(hostforge::operator::run(opts))?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn crdgen(out_dir: &std::path::Path, stdout: bool) -> Result<(), hostforge::api::CrdGenError> {
    if stdout {
        print!("{}", hostforge::api::crd_yaml_stream()?);
    } else {
        for path in hostforge::api::write_crd_files(out_dir)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
