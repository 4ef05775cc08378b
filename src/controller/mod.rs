//! The Kubernetes controller that reconciles `RvfMicroVm` resources into VM pods.

/// Command-line options of `rvf-operator controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {}

/// Runs the controller until SIGTERM.
pub async fn run(_args: ControllerArgs) -> anyhow::Result<()> {
    anyhow::bail!("the controller is not built yet")
}
pub mod leader;
pub mod metrics_server;
