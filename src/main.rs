//! The `rvf-operator` binary: one CLI over the controller and the VM runtime.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
