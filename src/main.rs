//! The `scout` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    scout::cli::main()
}
