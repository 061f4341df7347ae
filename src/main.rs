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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen { out_dir, stdout } => crdgen(&out_dir, stdout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hostforge: {err}");
            ExitCode::FAILURE
        }
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
