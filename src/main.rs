//! The `offload` command line: parse, load config, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use offload::config::{Config, LogConfig, LogFormat};
use offload::ops::cli as ops;
use url::Url;

/// A reverse proxy that shares a web app's uploaded assets across servers through S3.
#[derive(Debug, Parser)]
#[command(
    name = "offload",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options for `serve`, the default subcommand.
    #[command(flatten)]
    serve: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default when no subcommand is given).
    Serve(ConfigArgs),
    /// Validate the config and the files a start reads (TLS certificates, a folder store's
    /// root), and print the effective config as TOML; exits 1 naming the bad key and the
    /// reason.
    CheckConfig(ConfigArgs),
    /// Offload an existing uploads folder to the store (resumable; --dry-run lists only).
    Sync(ops::SyncArgs),
    /// Copy everything under the store's prefix to a folder or s3://bucket/prefix,
    /// incrementally, checksums verified.
    Backup(ops::BackupArgs),
    /// Copy a backup (folder or s3://bucket/prefix) back into the configured store.
    Restore(ops::RestoreArgs),
    /// The one-command tour: a sample site on a loopback port and offload in front of it,
    /// storing to a local folder (no cloud account needed).
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Args)]
struct DemoArgs {
    /// Where offload listens.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,
    /// The filesystem store's folder.
    #[arg(long, default_value = "./offload-data", value_name = "DIR")]
    data: PathBuf,
    /// The sample site's own folder (its local disk).
    #[arg(long, default_value = "./offload-demo-site", value_name = "DIR")]
    site_dir: PathBuf,
}

/// Where the config comes from, and the flags that override it.
#[derive(Debug, Clone, Args)]
struct ConfigArgs {
    /// The TOML config file; without one, defaults and `OFFLOAD_*` variables apply.
    #[arg(long, short, env = "OFFLOAD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Public listen address, overriding `server.listen` (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The app's URL, overriding `upstream.url` (e.g. http://127.0.0.1:8000).
    #[arg(long, value_name = "URL", value_parser = UpstreamUrl)]
    upstream: Option<Url>,
    /// Admin listen address for /healthz, /readyz, /metrics, or "off"; overrides
    /// `server.admin_listen`.
    #[arg(long, value_name = "ADDR|off", value_parser = admin_address)]
    admin_listen: Option<AdminListen>,
    /// Log format, overriding `log.format`.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
}

/// `--upstream`'s parser: clap quotes a bad value whole in its usage error, and a URL may
/// carry a password; this one quotes it with the password as `***`.
#[derive(Debug, Clone, Copy)]
struct UpstreamUrl;

impl clap::builder::TypedValueParser for UpstreamUrl {
    type Value = Url;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Url, clap::Error> {
        let Some(text) = value.to_str() else {
            return Err(clap::Error::new(clap::error::ErrorKind::InvalidUtf8).with_cmd(cmd));
        };
        Url::parse(text).map_err(|e| {
            let shown = offload::config::mask_passwords_in_text(text);
            let message = format!("invalid value '{shown}' for '--upstream <URL>': {e}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        })
    }
}

/// `--admin-listen`: an address, or off.
#[derive(Debug, Clone, Copy)]
struct AdminListen(Option<SocketAddr>);

/// Parsed by clap, so that a bad address is a usage error (exit 2) like `--listen`'s.
fn admin_address(text: &str) -> Result<AdminListen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(AdminListen(None));
    }
    text.parse()
        .map(|addr| AdminListen(Some(addr)))
        .map_err(|e| format!("{e} (an address and port, as 127.0.0.1:9090, or \"off\")"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    offload::memory::tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::CheckConfig(args)) => check_config(args),
        Some(Command::Sync(args)) => block_on(ops::run_sync(args)),
        Some(Command::Backup(args)) => block_on(ops::run_backup(args)),
        Some(Command::Restore(args)) => block_on(ops::run_restore(args)),
        Some(Command::Demo(args)) => demo(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("offload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config file and the environment, then lays the flags over them.
fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    let config = Config::load_with(args.config.as_deref(), |config| {
        if let Some(listen) = args.listen {
            config.server.listen = listen;
        }
        if let Some(url) = &args.upstream {
            config.upstream.url = url.clone();
        }
        if let Some(AdminListen(admin)) = args.admin_listen {
            config.server.admin_listen = admin;
        }
        if let Some(format) = args.log_format {
            config.log.format = match format {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            };
        }
    })?;
    config.validate()?;
    Ok(config)
}

fn check_config(args: ConfigArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let warnings = offload::server::check_files(&config).map_err(|e| config.name_variable(e))?;
    for warning in warnings {
        eprintln!("offload: warning: {warning}");
    }
    print!("{}", config.to_redacted_toml()?);
    Ok(())
}

fn serve(args: ConfigArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    offload::logging::init(&config.log)?;
    offload::server::raise_open_files_limit();
    offload::memory::start_trimming();
    let log_buffer = config.log.buffer_bytes();
    // Start-up's errors (a certificate that cannot be read, a store that cannot be opened)
    // name the variable that set their key.
    let names = config.clone();
    with_log_buffer(log_buffer, || {
        server_runtime()?.block_on(offload::server::run(config, move || load_config(&args)))
    })
    .map_err(|e| names.name_variable(e))
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let log = LogConfig::default();
    offload::logging::init(&log)?;
    offload::memory::start_trimming();
    with_log_buffer(log.buffer_bytes(), || {
        server_runtime()?.block_on(offload::demo::run(offload::demo::DemoOptions {
            listen: args.listen,
            data: args.data,
            site_dir: args.site_dir,
        }))
    })
}

/// Runs a server with this thread's log lines buffered (`log.buffer`), then writes out
/// what every worker still holds.
fn with_log_buffer(bytes: usize, run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let buffered = offload::logging::buffer_this_thread(bytes);
    let result = run();
    drop(buffered);
    offload::logging::flush_all();
    result
}

/// The runtime a server runs on: worker 0 of `server::workers`, single-threaded (the server
/// starts the other workers' threads itself). Writes out its buffered log lines whenever it
/// runs out of work.
fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(offload::logging::flush_this_thread)
        .build()
        .context("starting the async runtime")
}

/// Runs an operation (sync, backup, restore) on a fresh runtime, one thread per core.
fn block_on(op: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(op)
}
