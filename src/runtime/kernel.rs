//! Reading the KERNEL_SEG of an RVF file and writing what QEMU needs into a directory.
//!
//! This module owns the on-disk layouts of the kernel segment; it never starts a VM.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rvf_runtime::RvfStore;
use rvf_types::kernel::{
    KernelHeader, KERNEL_FLAG_HAS_NETWORKING, KERNEL_FLAG_HAS_QUERY_API,
    KERNEL_FLAG_HAS_VIRTIO_BLK, KERNEL_FLAG_HAS_VIRTIO_NET, KERNEL_FLAG_REQUIRES_KVM,
    KERNEL_FLAG_SIGNED, KERNEL_MAGIC,
};
use rvf_types::KernelBinding;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Size of the `KernelHeader` at the start of every KERNEL_SEG payload.
pub const HEADER_LEN: usize = 128;
/// Size of the optional `KernelBinding` that `embed_kernel_with_binding` writes.
pub const BINDING_LEN: usize = 128;
/// Magic that ends a segment image carrying an initramfs (see [`InitramfsTrailer`]).
pub const INITRAMFS_MAGIC: &[u8; 8] = b"RVFINITR";
/// Size of the initramfs trailer.
pub const TRAILER_LEN: usize = 32;

/// File names written by [`KernelSegment::write_to`].
pub const KERNEL_FILE: &str = "kernel";
/// The initramfs, when the segment (or the caller) supplied one.
pub const INITRAMFS_FILE: &str = "initramfs";
/// The RVF's own kernel command line, verbatim.
pub const CMDLINE_FILE: &str = "cmdline";
/// JSON description of what was extracted ([`KernelFacts`]).
pub const FACTS_FILE: &str = "kernel.json";

/// Everything that can be wrong with an RVF file or its kernel segment.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("RVF file {0} does not exist")]
    Missing(PathBuf),
    #[error("kernel directory {dir} is not usable: {reason}")]
    NotExtracted { dir: PathBuf, reason: String },
    #[error("{path} is not a readable RVF file: {reason}")]
    NotRvf { path: PathBuf, reason: String },
    #[error(
        "RVF file {0} has no KERNEL_SEG: it carries no kernel to boot (or the file is truncated \
         and its last complete manifest predates the kernel)"
    )]
    NoKernelSegment(PathBuf),
    #[error("kernel segment of {path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("kernel header of {path} has wrong magic {got:#010x} (expected {KERNEL_MAGIC:#010x})")]
    BadMagic { path: PathBuf, got: u32 },
    #[error("kernel in {path} is built for {arch}, but this host runs {host}")]
    WrongArch {
        path: PathBuf,
        arch: String,
        host: &'static str,
    },
    #[error("initramfs {path} cannot be read: {source}")]
    Initramfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write extracted kernel into {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the payload of a KERNEL_SEG is laid out; `rvf-runtime` writes both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SegmentLayout {
    /// `embed_kernel`: header, image, command line (its `cmdline_offset` of 128 is wrong).
    Plain,
    /// `embed_kernel_with_binding`: header, binding, command line, image.
    WithBinding,
}

/// Facts about an extracted kernel; the same shape as the resource's `status.kernel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelFacts {
    pub arch: String,
    pub kernel_type: u8,
    pub flags: u32,
    pub flag_names: Vec<String>,
    pub api_port: u16,
    pub image_bytes: u64,
    pub sha256: String,
    pub initramfs_bytes: Option<u64>,
    pub initramfs_sha256: Option<String>,
    pub cmdline: String,
    pub layout: SegmentLayout,
    pub min_memory_mib: u32,
    pub vcpu_count: u32,
}

impl KernelFacts {
    /// True when the header says the kernel cannot run without KVM.
    pub fn requires_kvm(&self) -> bool {
        self.flags & KERNEL_FLAG_REQUIRES_KVM != 0
    }
}

/// Paths of an extracted kernel, as [`KernelSegment::write_to`] leaves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedKernel {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub facts: KernelFacts,
}

impl ExtractedKernel {
    /// Reads what an earlier `extract` (for example the init container) left in `dir`.
    pub fn load(dir: &Path) -> Result<Self, KernelError> {
        let unusable = |reason: String| KernelError::NotExtracted {
            dir: dir.to_path_buf(),
            reason,
        };
        let text = fs::read_to_string(dir.join(FACTS_FILE)).map_err(|e| {
            unusable(format!(
                "cannot read {FACTS_FILE} ({e}); run `rvf-operator extract` into it first"
            ))
        })?;
        let facts: KernelFacts = serde_json::from_str(&text)
            .map_err(|e| unusable(format!("{FACTS_FILE} is not valid: {e}")))?;
        if !dir.join(KERNEL_FILE).is_file() {
            return Err(unusable(format!(
                "it has {FACTS_FILE} but no {KERNEL_FILE} file"
            )));
        }
        let initramfs = dir.join(INITRAMFS_FILE);
        Ok(Self {
            dir: dir.to_path_buf(),
            kernel: dir.join(KERNEL_FILE),
            initramfs: initramfs.exists().then_some(initramfs),
            facts,
        })
    }
}

/// The kernel segment of one RVF file, split into its parts.
#[derive(Debug)]
pub struct KernelSegment {
    header: KernelHeader,
    layout: SegmentLayout,
    payload: Vec<u8>,
    kernel: std::ops::Range<usize>,
    initramfs: Option<std::ops::Range<usize>>,
    cmdline: String,
}

impl KernelSegment {
    /// Opens `path` read-only with `rvf-runtime` and splits its KERNEL_SEG.
    ///
    /// Fails when the file is missing, is not an RVF, has no kernel segment, or the
    /// segment's lengths do not add up (truncated or written by an unknown tool).
    pub fn open(path: &Path) -> Result<Self, KernelError> {
        if !path.exists() {
            return Err(KernelError::Missing(path.to_path_buf()));
        }
        if path.is_dir() {
            return Err(KernelError::NotRvf {
                path: path.to_path_buf(),
                reason: "it is a directory, not a file".into(),
            });
        }
        let store = RvfStore::open_readonly(path).map_err(|e| KernelError::NotRvf {
            path: path.to_path_buf(),
            reason: match e {
                rvf_types::RvfError::Code(rvf_types::ErrorCode::ManifestNotFound) => {
                    "no RVF manifest found (not an RVF file, or truncated before its first \
                     manifest)"
                        .into()
                }
                other => format!("{other:?}"),
            },
        })?;
        let (header, rest) = store
            .extract_kernel()
            .map_err(|e| KernelError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("{e:?}"),
            })?
            .ok_or_else(|| KernelError::NoKernelSegment(path.to_path_buf()))?;
        drop(store);
        Self::from_parts(path, &header, rest)
    }

    /// Splits a raw KERNEL_SEG payload (header included); `path` names it in errors.
    pub fn from_payload(path: &Path, mut payload: Vec<u8>) -> Result<Self, KernelError> {
        let body = payload.split_off(payload.len().min(HEADER_LEN));
        Self::from_parts(path, &payload, body)
    }

    /// Splits a payload given as its header bytes and the rest (`body`), without
    /// copying the body: memory stays near the segment size.
    fn from_parts(path: &Path, head: &[u8], payload: Vec<u8>) -> Result<Self, KernelError> {
        let corrupt = |reason: String| KernelError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let head: &[u8; HEADER_LEN] = head
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                corrupt(format!(
                    "payload is {} bytes, shorter than the {HEADER_LEN}-byte kernel header",
                    head.len()
                ))
            })?;
        let header = KernelHeader::from_bytes(head).map_err(|_| KernelError::BadMagic {
            path: path.to_path_buf(),
            got: u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        })?;

        let image_len = usize::try_from(header.image_size)
            .map_err(|_| corrupt(format!("image size {} is absurd", header.image_size)))?;
        let cmdline_len = header.cmdline_length as usize;
        let total = HEADER_LEN + payload.len();
        let plain_len = HEADER_LEN
            .checked_add(image_len)
            .and_then(|n| n.checked_add(cmdline_len));
        let bound_len = plain_len.and_then(|n| n.checked_add(BINDING_LEN));

        // The two layouts differ in length by exactly the binding, so the length alone
        // tells them apart: `cmdline_offset` cannot be trusted, `embed_kernel` writes 128
        // although its command line follows the image. Offsets below are into the body.
        let (layout, image_start, cmdline_start) = if Some(total) == plain_len {
            (SegmentLayout::Plain, 0, image_len)
        } else if Some(total) == bound_len && looks_like_binding(&payload) {
            (
                SegmentLayout::WithBinding,
                BINDING_LEN + cmdline_len,
                BINDING_LEN,
            )
        } else {
            return Err(corrupt(format!(
                "payload is {total} bytes but the header promises a {image_len}-byte image and a \
                 {cmdline_len}-byte command line (truncated file?)"
            )));
        };

        let cmdline_bytes = &payload[cmdline_start..cmdline_start + cmdline_len];
        let cmdline = String::from_utf8(cmdline_bytes.to_vec())
            .map_err(|_| corrupt("kernel command line is not UTF-8".into()))?
            .trim_end_matches('\0')
            .to_string();
        let image = image_start..image_start + image_len;
        let (kernel, initramfs) = split_initramfs(&payload[image.clone()])
            .map_err(corrupt)?
            .map_or((image.clone(), None), |(k, i)| {
                (
                    image.start + k.start..image.start + k.end,
                    Some(image.start + i.start..image.start + i.end),
                )
            });

        Ok(Self {
            header,
            layout,
            payload,
            kernel,
            initramfs,
            cmdline,
        })
    }

    /// The kernel image QEMU boots (without any initramfs that travelled with it).
    pub fn kernel_image(&self) -> &[u8] {
        &self.payload[self.kernel.clone()]
    }

    /// The initramfs carried inside the segment, if any.
    pub fn initramfs(&self) -> Option<&[u8]> {
        self.initramfs.clone().map(|r| &self.payload[r])
    }

    /// The command line stored in the RVF.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Facts for status and `kernel.json`; `initramfs` overrides the carried one.
    pub fn facts(&self, initramfs: Option<&[u8]>) -> KernelFacts {
        let initramfs = initramfs.or(self.initramfs());
        KernelFacts {
            arch: arch_name(self.header.arch),
            kernel_type: self.header.kernel_type,
            flags: self.header.kernel_flags,
            flag_names: flag_names(self.header.kernel_flags),
            api_port: self.header.api_port,
            image_bytes: self.kernel_image().len() as u64,
            sha256: sha256_hex(self.kernel_image()),
            initramfs_bytes: initramfs.map(|i| i.len() as u64),
            initramfs_sha256: initramfs.map(sha256_hex),
            cmdline: self.cmdline.clone(),
            layout: self.layout,
            min_memory_mib: self.header.min_memory_mb,
            vcpu_count: self.header.vcpu_count,
        }
    }

    /// Fails unless this host can run the kernel's architecture.
    pub fn check_arch(&self, path: &Path) -> Result<(), KernelError> {
        let arch = arch_name(self.header.arch);
        if arch == host_arch() {
            Ok(())
        } else {
            Err(KernelError::WrongArch {
                path: path.to_path_buf(),
                arch,
                host: host_arch(),
            })
        }
    }

    /// Writes kernel, initramfs, command line and `kernel.json` into `dir`.
    ///
    /// A separate `initramfs_override` wins over one carried in the segment, as with
    /// the upstream launcher. Files are written under temporary names and renamed, so
    /// a crash never leaves a half-written kernel that looks complete.
    pub fn write_to(
        &self,
        dir: &Path,
        initramfs_override: Option<&Path>,
    ) -> Result<ExtractedKernel, KernelError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KernelError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(write_err(dir))?;

        let override_bytes = match initramfs_override {
            Some(p) => Some(fs::read(p).map_err(|source| KernelError::Initramfs {
                path: p.to_path_buf(),
                source,
            })?),
            None => None,
        };
        let initramfs = override_bytes.as_deref().or(self.initramfs());
        let facts = self.facts(initramfs);

        write_atomic(&dir.join(KERNEL_FILE), self.kernel_image()).map_err(write_err(dir))?;
        let initramfs_path = dir.join(INITRAMFS_FILE);
        match initramfs {
            Some(bytes) => write_atomic(&initramfs_path, bytes).map_err(write_err(dir))?,
            None => match fs::remove_file(&initramfs_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(write_err(dir)(e))
                }
                _ => {}
            },
        }
        write_atomic(&dir.join(CMDLINE_FILE), self.cmdline.as_bytes()).map_err(write_err(dir))?;
        let json = serde_json::to_vec_pretty(&facts).expect("kernel facts serialize");
        // kernel.json last: its presence means the rest is complete.
        write_atomic(&dir.join(FACTS_FILE), &json).map_err(write_err(dir))?;

        Ok(ExtractedKernel {
            dir: dir.to_path_buf(),
            kernel: dir.join(KERNEL_FILE),
            initramfs: initramfs.map(|_| initramfs_path),
            facts,
        })
    }
}

/// Opens `rvf`, checks the architecture, and extracts into `dir`: the `extract` subcommand.
pub fn extract(
    rvf: &Path,
    dir: &Path,
    initramfs_override: Option<&Path>,
) -> Result<ExtractedKernel, KernelError> {
    let segment = KernelSegment::open(rvf)?;
    segment.check_arch(rvf)?;
    segment.write_to(dir, initramfs_override)
}

/// The segment-image encoding of a kernel with an initramfs behind it.
///
/// RVF has no initramfs slot, so the initramfs rides inside the segment's image:
/// `kernel || initramfs || trailer`, where the 32-byte trailer is the magic
/// `RVFINITR`, a little-endian u32 version (1), a u32 of zero, and the u64 lengths of
/// kernel and initramfs. A bzImage ignores trailing bytes, so a launcher that knows
/// nothing of the trailer still boots the kernel.
pub struct InitramfsTrailer;

impl InitramfsTrailer {
    /// Builds the segment image for `kernel` with `initramfs` behind it.
    pub fn encode(kernel: &[u8], initramfs: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(kernel.len() + initramfs.len() + TRAILER_LEN);
        out.extend_from_slice(kernel);
        out.extend_from_slice(initramfs);
        out.extend_from_slice(INITRAMFS_MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(kernel.len() as u64).to_le_bytes());
        out.extend_from_slice(&(initramfs.len() as u64).to_le_bytes());
        out
    }

    /// Splits a segment image into kernel and initramfs; `Ok(None)` when it has no trailer,
    /// an error when a trailer is there but its lengths or version do not fit.
    pub fn decode(image: &[u8]) -> Result<Option<KernelAndInitramfs<'_>>, String> {
        Ok(split_initramfs(image)?.map(|(k, i)| (&image[k], &image[i])))
    }
}

type Split = (std::ops::Range<usize>, std::ops::Range<usize>);

/// A kernel image and the initramfs that travelled behind it.
pub type KernelAndInitramfs<'a> = (&'a [u8], &'a [u8]);

/// Finds the kernel and initramfs ranges inside a segment image, if a trailer is there.
fn split_initramfs(image: &[u8]) -> Result<Option<Split>, String> {
    let Some(trailer) = image.len().checked_sub(TRAILER_LEN).map(|at| &image[at..]) else {
        return Ok(None);
    };
    if &trailer[..8] != INITRAMFS_MAGIC {
        return Ok(None);
    }
    let version = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
    if version != 1 {
        return Err(format!(
            "initramfs trailer version {version} is not supported"
        ));
    }
    let kernel_len = u64::from_le_bytes(trailer[16..24].try_into().expect("8 bytes"));
    let initramfs_len = u64::from_le_bytes(trailer[24..32].try_into().expect("8 bytes"));
    let expected = kernel_len
        .checked_add(initramfs_len)
        .and_then(|n| n.checked_add(TRAILER_LEN as u64));
    if expected != Some(image.len() as u64) {
        return Err(format!(
            "initramfs trailer promises {kernel_len} + {initramfs_len} bytes, image holds {}",
            image.len() - TRAILER_LEN
        ));
    }
    let k = kernel_len as usize;
    Ok(Some((0..k, k..k + initramfs_len as usize)))
}

/// A real binding has a non-zero version; guards against a plain payload whose
/// image happens to make the lengths match.
fn looks_like_binding(bytes: &[u8]) -> bool {
    let Some(b) = bytes
        .get(..BINDING_LEN)
        .and_then(|b| <&[u8; 128]>::try_from(b).ok())
    else {
        return false;
    };
    KernelBinding::from_bytes(b).binding_version != 0
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The RVF architecture code as the name QEMU and Kubernetes use.
pub fn arch_name(code: u8) -> String {
    match code {
        0 => "x86_64".into(),
        1 => "aarch64".into(),
        2 => "riscv64".into(),
        0xFE => "universal".into(),
        other => format!("unknown({other:#04x})"),
    }
}

/// The architecture this binary runs on, in the same spelling as [`arch_name`].
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

fn flag_names(flags: u32) -> Vec<String> {
    const NAMES: &[(u32, &str)] = &[
        (KERNEL_FLAG_REQUIRES_KVM, "REQUIRES_KVM"),
        (KERNEL_FLAG_HAS_NETWORKING, "HAS_NETWORKING"),
        (KERNEL_FLAG_HAS_QUERY_API, "HAS_QUERY_API"),
        (KERNEL_FLAG_SIGNED, "SIGNED"),
        (KERNEL_FLAG_HAS_VIRTIO_NET, "HAS_VIRTIO_NET"),
        (KERNEL_FLAG_HAS_VIRTIO_BLK, "HAS_VIRTIO_BLK"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(image_size: u64, cmdline_len: u32, cmdline_offset: u64) -> [u8; 128] {
        KernelHeader {
            kernel_magic: KERNEL_MAGIC,
            header_version: 1,
            arch: 0,
            kernel_type: 1,
            kernel_flags: KERNEL_FLAG_HAS_NETWORKING,
            min_memory_mb: 0,
            entry_point: 0,
            image_size,
            compressed_size: image_size,
            compression: 0,
            api_transport: 0,
            api_port: 8080,
            api_version: 1,
            image_hash: [0; 32],
            build_id: [0; 16],
            build_timestamp: 0,
            vcpu_count: 0,
            reserved_0: 0,
            cmdline_offset,
            cmdline_length: cmdline_len,
            reserved_1: 0,
        }
        .to_bytes()
    }

    fn plain(image: &[u8], cmdline: &str) -> Vec<u8> {
        let mut p = header(image.len() as u64, cmdline.len() as u32, 128).to_vec();
        p.extend_from_slice(image);
        p.extend_from_slice(cmdline.as_bytes());
        p
    }

    fn bound(image: &[u8], cmdline: &str) -> Vec<u8> {
        let binding = KernelBinding {
            manifest_root_hash: [7; 32],
            policy_hash: [9; 32],
            binding_version: 1,
            min_runtime_version: 0,
            _pad0: 0,
            allowed_segment_mask: 0,
            _reserved: [0; 48],
        };
        let mut p = header(image.len() as u64, cmdline.len() as u32, 256).to_vec();
        p.extend_from_slice(&binding.to_bytes());
        p.extend_from_slice(cmdline.as_bytes());
        p.extend_from_slice(image);
        p
    }

    #[test]
    fn plain_layout_takes_cmdline_from_after_the_image() {
        let seg =
            KernelSegment::from_payload(Path::new("t.rvf"), plain(b"KERNEL", "console=ttyS0"))
                .unwrap();
        assert_eq!(seg.kernel_image(), b"KERNEL");
        assert_eq!(seg.cmdline(), "console=ttyS0");
        assert_eq!(seg.facts(None).layout, SegmentLayout::Plain);
        assert_eq!(seg.facts(None).api_port, 8080);
    }

    #[test]
    fn binding_layout_takes_image_from_after_the_cmdline() {
        let seg =
            KernelSegment::from_payload(Path::new("t.rvf"), bound(b"KERNEL", "quiet")).unwrap();
        assert_eq!(seg.kernel_image(), b"KERNEL");
        assert_eq!(seg.cmdline(), "quiet");
        assert_eq!(seg.facts(None).layout, SegmentLayout::WithBinding);
    }

    #[test]
    fn trailer_splits_kernel_and_initramfs() {
        let image = InitramfsTrailer::encode(b"BZIMAGE", b"CPIO!");
        let seg = KernelSegment::from_payload(Path::new("t.rvf"), plain(&image, "x")).unwrap();
        assert_eq!(seg.kernel_image(), b"BZIMAGE");
        assert_eq!(seg.initramfs(), Some(&b"CPIO!"[..]));
        let facts = seg.facts(None);
        assert_eq!(facts.image_bytes, 7);
        assert_eq!(facts.initramfs_bytes, Some(5));
        assert_eq!(facts.sha256, sha256_hex(b"BZIMAGE"));
    }

    #[test]
    fn trailer_with_wrong_lengths_is_corrupt() {
        let mut image = InitramfsTrailer::encode(b"BZIMAGE", b"CPIO!");
        let n = image.len();
        image[n - 8] = 99;
        let err = KernelSegment::from_payload(Path::new("t.rvf"), plain(&image, "")).unwrap_err();
        assert!(matches!(err, KernelError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("initramfs trailer"), "{err}");
    }

    #[test]
    fn truncated_payload_names_the_missing_bytes() {
        let mut p = plain(b"KERNELIMAGE", "console=ttyS0");
        p.truncate(p.len() - 5);
        let err = KernelSegment::from_payload(Path::new("short.rvf"), p).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("short.rvf") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn header_shorter_than_128_bytes_is_reported() {
        let err = KernelSegment::from_payload(Path::new("h.rvf"), vec![0; 100]).unwrap_err();
        assert!(
            err.to_string().contains("shorter than the 128-byte"),
            "{err}"
        );
    }

    #[test]
    fn wrong_magic_is_reported_with_the_value_found() {
        let mut p = plain(b"K", "");
        p[..4].copy_from_slice(&0xDEADBEEFu32.to_le_bytes());
        let err = KernelSegment::from_payload(Path::new("m.rvf"), p).unwrap_err();
        assert!(err.to_string().contains("0xdeadbeef"), "{err}");
    }

    #[test]
    fn foreign_architecture_is_refused() {
        let mut p = plain(b"K", "");
        p[6] = if host_arch() == "aarch64" { 0 } else { 1 };
        let seg = KernelSegment::from_payload(Path::new("a.rvf"), p).unwrap();
        let err = seg.check_arch(Path::new("a.rvf")).unwrap_err();
        assert!(matches!(err, KernelError::WrongArch { .. }), "{err}");
    }

    #[test]
    fn write_to_leaves_all_files_and_override_wins() {
        let image = InitramfsTrailer::encode(b"BZIMAGE", b"INNER");
        let seg = KernelSegment::from_payload(Path::new("t.rvf"), plain(&image, "ro")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("outer.cpio");
        fs::write(&outer, b"OUTER").unwrap();
        let out = seg.write_to(&dir.path().join("k"), Some(&outer)).unwrap();
        assert_eq!(fs::read(&out.kernel).unwrap(), b"BZIMAGE");
        assert_eq!(fs::read(out.initramfs.as_ref().unwrap()).unwrap(), b"OUTER");
        let loaded = ExtractedKernel::load(&out.dir).unwrap();
        assert_eq!(loaded.facts, out.facts);
        assert_eq!(loaded.facts.initramfs_sha256, Some(sha256_hex(b"OUTER")));
        assert_eq!(
            fs::read_to_string(out.dir.join(CMDLINE_FILE)).unwrap(),
            "ro"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let err = KernelSegment::open(Path::new("/nonexistent/x.rvf")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "RVF file /nonexistent/x.rvf does not exist"
        );
    }

    #[test]
    fn a_directory_is_not_an_rvf_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = KernelSegment::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn loading_a_kernel_dir_without_kernel_file_names_the_directory() {
        let image = InitramfsTrailer::encode(b"BZIMAGE", b"CPIO!");
        let seg = KernelSegment::from_payload(Path::new("t.rvf"), plain(&image, "x")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        seg.write_to(dir.path(), None).unwrap();
        fs::remove_file(dir.path().join(KERNEL_FILE)).unwrap();
        let err = ExtractedKernel::load(dir.path()).unwrap_err();
        assert!(matches!(err, KernelError::NotExtracted { .. }), "{err}");
        assert!(err.to_string().contains("no kernel file"), "{err}");
        let err = ExtractedKernel::load(&dir.path().join("nope")).unwrap_err();
        assert!(
            err.to_string().contains("run `rvf-operator extract`"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_rvf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.rvf");
        fs::write(&p, b"this is not an rvf file at all").unwrap();
        let err = KernelSegment::open(&p).unwrap_err();
        assert!(matches!(err, KernelError::NotRvf { .. }), "{err}");
    }
}
