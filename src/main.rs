//! distc's binary: wrapper mode or a command (see `distc::cli`).

fn main() -> std::process::ExitCode {
    match distc::cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("distc: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
