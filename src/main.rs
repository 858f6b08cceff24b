use std::process::ExitCode;

use clap::Parser;
use scheduled_jobs::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(&cli);
    let format = cli.log_format;
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", cli::fatal_line(format, &f));
            ExitCode::from(f.code)
        }
    }
}
