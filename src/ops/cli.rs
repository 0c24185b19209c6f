//! The `sync`, `backup` and `restore` subcommands: arguments, and the thin glue from them to
//! the library functions. `main.rs` only matches on the subcommand and calls these.

use std::path::{Path, PathBuf};

use anyhow::Context;
use url::Url;

use super::{BackupOptions, RestoreOptions, SyncOptions};
use crate::config::{Config, StoreConfig, StoreKind};
use crate::store::{self, Store};

/// `offload sync DIR`: bulk-offload an existing uploads folder.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// The folder to offload, e.g. /var/www/html/wp-content/uploads
    pub dir: PathBuf,
    /// The config file (the store to offload to)
    #[arg(long, short = 'c', env = "OFFLOAD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// URL path the folder is served under, e.g. /wp-content/uploads/
    /// [default: the first `assets.prefixes` entry, else none]
    #[arg(long)]
    pub prefix: Option<String>,
    /// List what would be uploaded; upload nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Files uploaded at once
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub jobs: u16,
    /// Delete each local file once its object is verified in the store (size and SHA-256)
    #[arg(long)]
    pub delete_local: bool,
}

/// Where the other side of a backup or restore is, besides the configured store.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// S3 targets: endpoint of the backup bucket's store [default: store.endpoint]
    #[arg(long, env = "OFFLOAD_BACKUP_ENDPOINT")]
    pub endpoint: Option<Url>,
    /// S3 targets: region of the backup bucket [default: store.region]
    #[arg(long, env = "OFFLOAD_BACKUP_REGION")]
    pub region: Option<String>,
    /// S3 targets: path-style addressing [default: store.path_style]
    #[arg(long, env = "OFFLOAD_BACKUP_PATH_STYLE")]
    pub path_style: Option<bool>,
    /// S3 targets: access key for the backup bucket [default: the AWS credential chain]
    #[arg(
        long,
        env = "OFFLOAD_BACKUP_ACCESS_KEY_ID",
        requires = "secret_access_key"
    )]
    pub access_key_id: Option<String>,
    /// S3 targets: its secret (prefer the environment variable to the flag)
    #[arg(
        long,
        env = "OFFLOAD_BACKUP_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "access_key_id"
    )]
    pub secret_access_key: Option<String>,
    /// Objects copied at once
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub jobs: u16,
}

/// `offload backup --to DIR|s3://bucket/prefix`
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The config file (the store to back up)
    #[arg(long, short = 'c', env = "OFFLOAD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A folder, or s3://bucket/prefix (same credentials chain as the store)
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `offload restore --from DIR|s3://bucket/prefix`
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The config file (the store to restore into)
    #[arg(long, short = 'c', env = "OFFLOAD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A folder, or s3://bucket/prefix, holding a backup
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// The other side of a backup: a folder, or a bucket and key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// `s3://bucket/some/prefix` or a path.
    pub fn parse(text: &str) -> anyhow::Result<Location> {
        let Some(rest) = text.strip_prefix("s3://") else {
            return Ok(Location::Dir(PathBuf::from(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            anyhow::bail!("{text}: no bucket in s3://bucket/prefix");
        }
        let prefix = prefix.trim_start_matches('/');
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The store of this location, built from the configured store's settings, and the key
    /// prefix inside it.
    async fn open(
        &self,
        base: &StoreConfig,
        remote: &RemoteArgs,
    ) -> anyhow::Result<(std::sync::Arc<dyn Store>, String)> {
        let mut cfg = base.clone();
        cfg.prefix = String::new();
        let prefix = match self {
            Location::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                cfg.kind = StoreKind::Fs;
                cfg.root = dir.clone();
                cfg.public_url = None;
                String::new()
            }
            Location::S3 { bucket, prefix } => {
                cfg.kind = StoreKind::S3;
                cfg.bucket = bucket.clone();
                cfg.public_url = None;
                cfg.endpoint = remote.endpoint.clone().or(cfg.endpoint);
                cfg.region = remote.region.clone().unwrap_or(cfg.region);
                cfg.path_style = remote.path_style.unwrap_or(cfg.path_style);
                prefix.clone()
            }
        };
        let store = match (self, &remote.access_key_id, &remote.secret_access_key) {
            (Location::S3 { .. }, Some(key), Some(secret)) => {
                let s3 = store::S3Store::with_credentials(&cfg, key, secret).await;
                s3.map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn Store>)
            }
            _ => store::open(&cfg).await,
        };
        let store = store.with_context(|| format!("opening {self}"))?;
        Ok((store, prefix))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| match path {
        Some(p) => format!("loading {}", p.display()),
        None => "loading the default config".to_string(),
    })
}

/// The summary is printed either way; failures also make the command fail (exit 1).
fn finish(summary: &dyn std::fmt::Display, failed: usize, what: &str) -> anyhow::Result<()> {
    println!("{summary}");
    if failed > 0 {
        anyhow::bail!("{failed} {what} failed (listed above)");
    }
    Ok(())
}

/// `offload sync`: prints the summary; fails (exit 1) when any file failed.
pub async fn run_sync(args: SyncArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let store = store::open(&config.store)
        .await
        .context("opening the store")?;
    let url_prefix = args
        .prefix
        .or_else(|| config.assets.prefixes.first().cloned())
        .unwrap_or_default();
    let opts = SyncOptions {
        dir: args.dir,
        url_prefix,
        dry_run: args.dry_run,
        jobs: usize::from(args.jobs),
        delete_local: args.delete_local,
        cache_control: config.store.cache_control.clone(),
        progress: true,
    };
    let report = super::sync(opts, store, &config.store.prefix).await?;
    finish(&report, report.failed.len(), "files")
}

/// `offload backup`: prints the summary; fails (exit 1) when any object failed.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let source = store::open(&config.store)
        .await
        .context("opening the store")?;
    let target = Location::parse(&args.to)?;
    let (target_store, target_prefix) = target.open(&config.store, &args.remote).await?;
    let opts = BackupOptions {
        jobs: usize::from(args.remote.jobs),
        progress: true,
        source_name: source_name(&config.store),
    };
    let report = super::backup(
        source,
        &config.store.prefix,
        target_store,
        &target_prefix,
        opts,
    )
    .await?;
    finish(&report, report.failed.len(), "objects")
}

/// `offload restore`: prints the summary; fails (exit 1) when any object failed.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let target = store::open(&config.store)
        .await
        .context("opening the store")?;
    let source = Location::parse(&args.from)?;
    if let Location::Dir(dir) = &source
        && !dir.is_dir()
    {
        anyhow::bail!("{}: no such folder", dir.display());
    }
    let (source_store, source_prefix) = source.open(&config.store, &args.remote).await?;
    let opts = RestoreOptions {
        jobs: usize::from(args.remote.jobs),
        progress: true,
    };
    let report = super::restore(
        source_store,
        &source_prefix,
        target,
        &config.store.prefix,
        opts,
    )
    .await?;
    finish(&report, report.failed.len(), "objects")
}

fn source_name(cfg: &StoreConfig) -> String {
    match cfg.kind {
        StoreKind::Fs => format!("fs:{}/{}", cfg.root.display(), cfg.prefix),
        StoreKind::S3 => format!("s3://{}/{}", cfg.bucket, cfg.prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("/backups/site").unwrap(),
            Location::Dir("/backups/site".into())
        );
        assert_eq!(
            Location::parse("s3://bk/site-a").unwrap(),
            Location::S3 {
                bucket: "bk".into(),
                prefix: "site-a/".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bk").unwrap(),
            Location::S3 {
                bucket: "bk".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("s3://bk/").unwrap(),
            Location::S3 {
                bucket: "bk".into(),
                prefix: String::new()
            }
        );
        assert!(Location::parse("s3:///x").is_err());
    }
}
