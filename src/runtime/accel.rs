//! Choosing the accelerator: KVM when `/dev/kvm` really works, TCG otherwise.
//!
//! Mode bits say nothing about whether this process may use KVM, so the probe opens
//! the device read-write and asks its API version, as QEMU itself will.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::Accelerator;

/// The KVM API version every Linux kernel since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

nix::ioctl_none!(kvm_get_api_version, 0xAE, 0x00);

/// What the user asked for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, ValueEnum,
)]
pub enum KvmMode {
    /// KVM when it works, else TCG (unless the kernel header requires KVM).
    #[default]
    Auto,
    /// KVM or nothing.
    Required,
    /// Always TCG.
    Disabled,
}

/// Result of probing the KVM device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    Usable,
    Unusable(String),
}

/// Opens `device` read-write and checks `KVM_GET_API_VERSION`.
pub fn probe_kvm(device: &Path) -> KvmProbe {
    let file = match OpenOptions::new().read(true).write(true).open(device) {
        Ok(f) => f,
        Err(e) => {
            return KvmProbe::Unusable(format!("cannot open {} read-write: {e}", device.display()))
        }
    };
    // SAFETY: the ioctl takes no argument and the descriptor is a valid open file.
    match unsafe { kvm_get_api_version(file.as_raw_fd()) } {
        Ok(KVM_API_VERSION) => KvmProbe::Usable,
        Ok(v) => KvmProbe::Unusable(format!(
            "{} reports KVM API version {v}, expected {KVM_API_VERSION}",
            device.display()
        )),
        Err(e) => KvmProbe::Unusable(format!("{} is not a KVM device: {e}", device.display())),
    }
}

/// Why no accelerator can be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccelError {
    #[error("KVM is required ({why}) but unusable: {probe}")]
    KvmUnavailable { why: &'static str, probe: String },
    #[error("the kernel header requires KVM but kvm mode is Disabled")]
    RequiredButDisabled,
}

/// Picks the accelerator for a first boot attempt.
pub fn choose(
    mode: KvmMode,
    kernel_requires_kvm: bool,
    probe: &KvmProbe,
) -> Result<Accelerator, AccelError> {
    let unusable = |why| match probe {
        KvmProbe::Usable => None,
        KvmProbe::Unusable(p) => Some(AccelError::KvmUnavailable {
            why,
            probe: p.clone(),
        }),
    };
    match mode {
        KvmMode::Disabled if kernel_requires_kvm => Err(AccelError::RequiredButDisabled),
        KvmMode::Disabled => Ok(Accelerator::Tcg),
        KvmMode::Required => unusable("kvm: Required").map_or(Ok(Accelerator::Kvm), Err),
        KvmMode::Auto if kernel_requires_kvm => {
            unusable("the kernel header sets REQUIRES_KVM").map_or(Ok(Accelerator::Kvm), Err)
        }
        KvmMode::Auto => Ok(match probe {
            KvmProbe::Usable => Accelerator::Kvm,
            KvmProbe::Unusable(_) => Accelerator::Tcg,
        }),
    }
}

/// True when a failed KVM boot may be retried under TCG.
pub fn may_fall_back(mode: KvmMode, kernel_requires_kvm: bool) -> bool {
    mode == KvmMode::Auto && !kernel_requires_kvm
}

/// The host TSC frequency in kHz, for `tsc_early_khz=` under TCG.
///
/// TCG guests sometimes hang calibrating the TSC against the PIT; telling the kernel
/// the frequency skips that calibration. The exact value matters little.
pub fn host_tsc_khz() -> u64 {
    if let Some(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return khz;
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| parse_cpuinfo_mhz(&info))
        .map_or(2_000_000, |mhz| (mhz * 1000.0).round() as u64)
}

fn parse_cpuinfo_mhz(info: &str) -> Option<f64> {
    info.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unusable() -> KvmProbe {
        KvmProbe::Unusable("cannot open /dev/kvm read-write: Permission denied".into())
    }

    #[test]
    fn auto_uses_kvm_when_it_opens() {
        assert_eq!(
            choose(KvmMode::Auto, false, &KvmProbe::Usable),
            Ok(Accelerator::Kvm)
        );
    }

    #[test]
    fn auto_falls_to_tcg_when_kvm_is_unusable() {
        assert_eq!(
            choose(KvmMode::Auto, false, &unusable()),
            Ok(Accelerator::Tcg)
        );
    }

    #[test]
    fn auto_refuses_tcg_when_header_requires_kvm() {
        let err = choose(KvmMode::Auto, true, &unusable()).unwrap_err();
        assert!(err.to_string().contains("REQUIRES_KVM"), "{err}");
        assert!(!may_fall_back(KvmMode::Auto, true));
    }

    #[test]
    fn required_without_kvm_names_the_probe_failure() {
        let err = choose(KvmMode::Required, false, &unusable()).unwrap_err();
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }

    #[test]
    fn disabled_always_means_tcg_unless_header_requires_kvm() {
        assert_eq!(
            choose(KvmMode::Disabled, false, &KvmProbe::Usable),
            Ok(Accelerator::Tcg)
        );
        assert_eq!(
            choose(KvmMode::Disabled, true, &KvmProbe::Usable),
            Err(AccelError::RequiredButDisabled)
        );
    }

    #[test]
    fn probe_of_a_regular_file_is_unusable() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(probe_kvm(f.path()), KvmProbe::Unusable(m) if m.contains("not a KVM")));
    }

    #[test]
    fn probe_of_a_missing_device_is_unusable() {
        let p = Path::new("/nonexistent/kvm");
        assert!(matches!(probe_kvm(p), KvmProbe::Unusable(m) if m.contains("cannot open")));
    }

    #[test]
    fn cpuinfo_mhz_is_parsed() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2994.374\n";
        assert_eq!(parse_cpuinfo_mhz(info), Some(2994.374));
    }
}
