//! The `RvfMicroVm` custom resource: spec, status and the generated CRD.
