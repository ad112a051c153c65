//! `scout-holder`: the holder process on its own, a small binary with
//! nothing of the broker in it, so each held session costs little memory.
//! The broker starts it from beside its own binary (falling back to the
//! hidden `scout holder` when it is not there); see `scout::holder`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before anything is created: the holder's files are owner-only.
    scout::home::restrict_new_files();
    let mut args = std::env::args_os().skip(1);
    let dir = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--dir" => std::path::PathBuf::from(dir),
        _ => {
            eprintln!("usage: scout-holder --dir DIR (started by the broker)");
            return ExitCode::from(2);
        }
    };
    match scout::holder::serve::run(&dir) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("scout-holder: {err:#}");
            ExitCode::FAILURE
        }
    }
}
