//! `herald`: the command line on top of the `herald` library.

mod settings;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// jemalloc keeps an idle stream smaller and a publish cheaper than glibc's
/// malloc (docs/BENCHMARKS.md, "jemalloc for the binary").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "A real-time push hub on Server-Sent Events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the hub.
    Serve(ServeArgs),
    /// Print the effective configuration (defaults, file, environment and
    /// flags merged) as TOML, and exit.
    Config(settings::Sources),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    sources: settings::Sources,
    /// Log format.
    #[arg(long, value_enum, default_value = "human", env = "HERALD_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `herald=debug`.
    #[arg(long, default_value = "info", env = "HERALD_LOG")]
    log: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(sources) => sources.load().and_then(|config| {
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log)?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let config = args.sources.load()?;
    ignore_file_size_signal();
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if config.dev_mode() {
            tracing::warn!(
                "DEV MODE: no auth key is configured. Anyone who can reach {} may read every topic; \
                 publish and admin calls are accepted from loopback only. Configure [auth] before \
                 exposing this hub.",
                config.listen
            );
        }
        if config.memory {
            tracing::warn!("--memory: history is kept in memory only and lost on restart");
        }
        let hub = herald::Hub::connect(config).await?;
        let server = herald::Server::bind(hub.clone()).await?;
        let addr = server.local_addr()?;
        tracing::info!(log = hub.log().kind(), "listening on http://{addr}");
        server.run(herald::shutdown_signal()).await?;
        Ok(())
    })
}

/// A write past the process's file size limit (`ulimit -f`) raises SIGXFSZ,
/// which would kill the hub mid-write. Ignored, the write fails with EFBIG
/// instead: the publish is refused with 503, `/readyz` says why, and the
/// hub keeps serving subscribers.
/// Every stream is a socket: the soft limit on open files (1024 under many
/// service managers) would cap a hub far below `limits.max_connections`.
/// It is raised to the hard limit, as far as the system allows.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(
                from = before,
                to = limit.rlim_max,
                "raised the open file limit"
            );
        }
    }
}

fn ignore_file_size_signal() {
    // SAFETY: installs the predefined SIG_IGN disposition before any other
    // thread exists; no handler code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
