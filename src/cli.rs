//! Command-line wiring: parses arguments and hands each subcommand to its module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rvf-operator",
    version,
    about = "Run RVF kernels as QEMU microVMs, locally or on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes controller.
    Controller(rvf_operator::controller::ControllerArgs),
    /// Print the RvfMicroVm CustomResourceDefinition as YAML (what crds/rvfmicrovm.yaml holds).
    Crd,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Command::Crd => {
            print!("{}", rvf_operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Controller(args) => match rt.block_on(rvf_operator::controller::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
