//! Leader election on a `coordination.k8s.io/v1` Lease, so that two controller replicas are safe.
//!
//! This module owns the Lease and nothing else: it never reads or writes `RvfMicroVm` objects.

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

/// Field manager the elector writes the Lease with (server-side apply).
pub const LEASE_FIELD_MANAGER: &str = "rvf-operator-leader-election";

/// Command-line options of leader election, flattened into `ControllerArgs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderElectionArgs {
    /// Hold a Lease before reconciling, so only one replica acts at a time. Turn off only when
    /// exactly one replica can ever run.
    #[arg(
        long = "leader-election",
        env = "RVF_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,

    /// Name of the Lease the replicas compete for.
    #[arg(long = "leader-election-lease-name", default_value = "rvf-operator")]
    pub lease_name: String,

    /// Namespace of the Lease. Defaults to the pod's own namespace (the client's default).
    #[arg(long = "leader-election-namespace", env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Identity written into the Lease. Defaults to the pod name, then the hostname and pid.
    #[arg(long = "leader-election-identity", env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a leader may go without renewing before another replica may take over.
    #[arg(long = "leader-election-lease-duration", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Seconds before expiry at which the leader renews; also the clock skew tolerated between nodes.
    #[arg(long = "leader-election-renew-grace", default_value_t = 5)]
    pub renew_grace_seconds: u64,
}

impl Default for LeaderElectionArgs {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: "rvf-operator".to_owned(),
            namespace: None,
            identity: None,
            lease_duration_seconds: 15,
            renew_grace_seconds: 5,
        }
    }
}

/// Failures of leader election; each names the Lease it is about.
#[derive(Debug, thiserror::Error)]
pub enum LeaderElectionError {
    /// The timing flags cannot give a safe election.
    #[error(
        "invalid leader election timing: lease duration {duration}s must be greater than the \
         renew grace {grace}s, and both greater than zero"
    )]
    InvalidTiming {
        /// `--leader-election-lease-duration`.
        duration: u64,
        /// `--leader-election-renew-grace`.
        grace: u64,
    },

    /// The Lease could not be read or created (RBAC on `coordination.k8s.io/leases`, API down).
    #[error("failed to set up leader election Lease {namespace}/{name}")]
    Setup {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What the Lease manager reported.
        #[source]
        source: LeaseManagerError,
    },

    /// The election task stopped before this replica became leader.
    #[error("leader election on Lease {namespace}/{name} stopped before this replica was elected")]
    Stopped {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
    },

    /// Releasing the Lease on shutdown failed; the standby takes over when it expires instead.
    #[error("failed to release leader election Lease {namespace}/{name}")]
    Release {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What the Lease manager reported.
        #[source]
        source: LeaseManagerError,
    },
}

/// Where the Lease lives and who this replica is, resolved from flags and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTarget {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Identity this replica writes as holder.
    pub identity: String,
}

impl LeaseTarget {
    /// Resolves the Lease namespace (flag, else `default_namespace`) and identity (flag, else
    /// hostname and process id, which is unique per container).
    pub fn resolve(args: &LeaderElectionArgs, default_namespace: &str) -> Self {
        let identity = args.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "rvf-operator".to_owned());
            format!("{host}-{}", std::process::id())
        });
        Self {
            namespace: args
                .namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned()),
            name: args.lease_name.clone(),
            identity,
        }
    }
}

/// Leadership held by this replica, from election until it is lost or released.
///
/// While it exists and [`Leadership::lost`] has not resolved, no other replica holds the Lease.
/// During an API outage the Lease cannot be renewed and may expire, but then this replica cannot
/// write anything either, so two replicas never act on the cluster at once.
pub struct Leadership {
    inner: Option<Elected>,
}

struct Elected {
    target: LeaseTarget,
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Campaigns for the Lease and returns once this replica holds it.
    ///
    /// With election disabled it returns at once with a leadership that is never lost. Dropping
    /// the returned future while it waits stops the campaign and frees the Lease if it was won.
    pub async fn acquire(
        client: Client,
        args: &LeaderElectionArgs,
    ) -> Result<Self, LeaderElectionError> {
        if !args.enabled {
            info!("leader election is disabled: this replica reconciles without a Lease");
            return Ok(Self { inner: None });
        }

        let target = LeaseTarget::resolve(args, client.default_namespace());
        let params = lease_params(args, &target.identity)?;
        let manager = LeaseManager::new(
            client,
            target.name.clone(),
            target.namespace.clone(),
            params,
            LeaseCreateMode::AutoCreate,
        )
        .await
        .map_err(|source| LeaderElectionError::Setup {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            source,
        })?;

        info!(
            lease = %format!("{}/{}", target.namespace, target.name),
            identity = %target.identity,
            "waiting to become leader"
        );
        let (mut state, task) = manager.watch().await;
        while !*state.borrow_and_update() {
            if state.changed().await.is_err() {
                return Err(LeaderElectionError::Stopped {
                    namespace: target.namespace,
                    name: target.name,
                });
            }
        }

        info!(
            lease = %format!("{}/{}", target.namespace, target.name),
            identity = %target.identity,
            "became leader"
        );
        Ok(Self {
            inner: Some(Elected {
                target,
                state,
                task,
            }),
        })
    }

    /// The Lease this leadership is on, or `None` when election is disabled.
    pub fn target(&self) -> Option<&LeaseTarget> {
        self.inner.as_ref().map(|e| &e.target)
    }

    /// Resolves when another replica has taken the Lease or the election task has stopped.
    ///
    /// The caller must stop reconciling when this resolves; never resolves when election is
    /// disabled. Cancel-safe: it can be polled again from a `select!` loop.
    pub async fn lost(&mut self) {
        let Some(elected) = self.inner.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if !*elected.state.borrow_and_update() {
                break;
            }
            if elected.state.changed().await.is_err() {
                break;
            }
        }
        warn!(
            lease = %format!("{}/{}", elected.target.namespace, elected.target.name),
            identity = %elected.target.identity,
            "lost leadership: stopping reconciliation"
        );
    }

    /// Frees the Lease, so that a standby takes it at its next check (within one lease
    /// duration) without having to force an expired lock first.
    ///
    /// Call on graceful shutdown, after reconciliation has stopped. A no-op when disabled.
    pub async fn release(self) -> Result<(), LeaderElectionError> {
        let Some(Elected {
            target,
            state,
            task,
        }) = self.inner
        else {
            return Ok(());
        };

        // Closing the channel is the Lease manager's signal to release the lock and return.
        drop(state);
        let released = match task.await {
            Ok(result) => result.map(drop),
            Err(join) => {
                warn!(error = %join, "leader election task ended abnormally; the Lease will expire");
                Ok(())
            }
        };
        released.map_err(|source| LeaderElectionError::Release {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            source,
        })?;
        info!(
            lease = %format!("{}/{}", target.namespace, target.name),
            "released leadership"
        );
        Ok(())
    }
}

fn lease_params(
    args: &LeaderElectionArgs,
    identity: &str,
) -> Result<LeaseParams, LeaderElectionError> {
    let (duration, grace) = (args.lease_duration_seconds, args.renew_grace_seconds);
    // LeaseParams::new panics on these; report them as a flag error instead.
    if duration == 0 || grace == 0 || grace >= duration {
        return Err(LeaderElectionError::InvalidTiming { duration, grace });
    }
    Ok(LeaseParams::new(identity, duration, grace).with_field_manager(LEASE_FIELD_MANAGER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_not_below_duration_is_rejected() {
        let args = LeaderElectionArgs {
            lease_duration_seconds: 5,
            renew_grace_seconds: 5,
            ..Default::default()
        };
        let err = lease_params(&args, "me").expect_err("must be rejected");
        assert!(err.to_string().contains("lease duration 5s"), "{err}");
    }

    #[test]
    fn zero_timings_are_rejected() {
        let args = LeaderElectionArgs {
            lease_duration_seconds: 0,
            renew_grace_seconds: 0,
            ..Default::default()
        };
        assert!(lease_params(&args, "me").is_err());
    }

    #[test]
    fn namespace_and_identity_flags_win_over_defaults() {
        let args = LeaderElectionArgs {
            namespace: Some("ops".into()),
            identity: Some("pod-a".into()),
            ..Default::default()
        };
        let target = LeaseTarget::resolve(&args, "default");
        assert_eq!(
            target,
            LeaseTarget {
                namespace: "ops".into(),
                name: "rvf-operator".into(),
                identity: "pod-a".into()
            }
        );
    }

    #[test]
    fn identity_defaults_to_host_and_pid() {
        let target = LeaseTarget::resolve(&LeaderElectionArgs::default(), "rvf-system");
        assert_eq!(target.namespace, "rvf-system");
        assert!(target
            .identity
            .ends_with(&format!("-{}", std::process::id())));
    }
}
