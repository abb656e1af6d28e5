//! distc's binary: wrapper mode or a command (see `distc::cli`).
//!
//! Wrapper mode (`distc gcc …`, `distc /usr/bin/cc …`, or a `gcc -> distc` symlink) is decided
//! here from argv alone, before clap or any runtime starts: it is the hot path of every build.

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(invocation) = distc::wrapper::detect(&argv) {
        return distc::wrapper::main(invocation);
    }
    match distc::cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("distc: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
