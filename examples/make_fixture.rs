//! Builds the hello.rvf demo fixture (plain layout):
//! `cargo run --example make_fixture -- OUT_DIR`.
//! Needs the host inputs that `scripts/guest-inputs.sh` prepares.

#[path = "../tests/support/fixture.rs"]
mod fixture;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out_dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: make_fixture OUT_DIR");
        return ExitCode::from(2);
    };
    let inputs = match fixture::GuestInputs::locate() {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("guest inputs missing ({e}); run scripts/guest-inputs.sh first");
            return ExitCode::FAILURE;
        }
    };
    match fixture::build(&out_dir, &inputs, fixture::Layout::Plain) {
        Ok(f) => {
            println!("rvf={}", f.rvf.display());
            println!("kernel={}", f.kernel.display());
            println!("initramfs={}", f.initramfs.display());
            println!("cmdline={}", f.cmdline);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("building the fixture failed: {e}");
            ExitCode::FAILURE
        }
    }
}
