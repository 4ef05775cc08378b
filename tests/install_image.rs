//! The Dockerfile keeps the properties the deployment relies on: two stages, the Debian
//! bookworm runtime with QEMU for each architecture, the binary, and a non-root default user.

use std::path::PathBuf;

fn dockerfile() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap()
}

/// Instructions with their arguments, continuation lines joined, comments dropped.
fn instructions() -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile().lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            joined.push(std::mem::take(&mut current));
        }
    }
    joined
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (op, rest) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (op.to_uppercase(), rest.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_image_is_built_in_a_rust_stage_and_runs_on_bookworm_slim() {
    let text = dockerfile();
    let froms: Vec<String> = instructions()
        .into_iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();

    assert_eq!(froms.len(), 2, "builder and runtime stages: {froms:?}");
    assert!(froms[0].ends_with("AS builder"), "{froms:?}");
    assert!(text.contains("ARG RUST_IMAGE=rust:1-bookworm"));
    assert!(text.contains("ARG RUNTIME_IMAGE=debian:bookworm-slim"));
    assert!(text.contains("COPY --from=builder /out/rvf-operator /usr/local/bin/rvf-operator"));
}

#[test]
fn qemu_matches_the_target_architecture() {
    let run = instructions()
        .into_iter()
        .find(|(op, args)| op == "RUN" && args.contains("qemu_pkg"))
        .expect("the RUN that installs QEMU")
        .1;

    assert!(run.contains("amd64) qemu_pkg=qemu-system-x86"), "{run}");
    assert!(run.contains("arm64) qemu_pkg=qemu-system-arm"), "{run}");
    assert!(run.contains("--no-install-recommends"), "{run}");
    assert!(run.contains("rm -rf /var/lib/apt/lists/*"), "{run}");
}

#[test]
fn the_default_user_is_the_unprivileged_uid_of_the_deployment() {
    let users: Vec<String> = instructions()
        .into_iter()
        .filter(|(op, _)| op == "USER")
        .map(|(_, a)| a)
        .collect();

    assert_eq!(
        users,
        vec!["65532:65532".to_owned()],
        "one USER, the last stage's"
    );
    let deployment = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/deployment.yaml"),
    )
    .unwrap();
    assert!(
        deployment.contains("runAsUser: 65532"),
        "deploy/ runs as the image's user"
    );
}

#[test]
fn the_build_context_keeps_what_the_build_copies() {
    let ignored =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .unwrap();
    let ignored: Vec<&str> = ignored
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();

    for (op, args) in instructions() {
        if op != "COPY" || args.starts_with("--from") {
            continue;
        }
        let sources: Vec<&str> = args.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            assert!(
                !ignored.contains(source),
                ".dockerignore drops {source}, which the Dockerfile copies"
            );
        }
    }
}
