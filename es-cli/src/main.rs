//! `es`: the event store's command line (see the `es_cli` library docs,
//! or `es --help`).

fn main() -> std::process::ExitCode {
    es_cli::Cli::new().main()
}
