//! distc's binary: wrapper mode or a command (see `distc::cli`).
//!
//! Wrapper mode (`distc gcc …`, `distc /usr/bin/cc …`, or a `gcc -> distc` symlink) is decided
//! here from argv alone, before clap or any runtime starts: it is the hot path of every build.

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(invocation) = distc::pipeline::detect(&argv) {
        return distc::pipeline::main(invocation);
    }
    match distc::cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("distc: error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause that an outer message already
/// quotes (many errors here say "cannot read X: <os error>" and also carry that error).
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
