//! The `scout` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    // Before anything is created: the home's files are owner-only.
    scout::home::restrict_new_files();
    scout::cli::main()
}
