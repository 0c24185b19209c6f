//! offload's real binary as a subprocess: JSON logs captured to files (to grep them), the
//! public address read from the `serving` log line, RSS read from /proc, signals sent.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct OffloadProcess {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl OffloadProcess {
    /// Starts `offload serve` on 127.0.0.1:0 in front of `upstream` (admin off, JSON logs
    /// unless `args` or the config says otherwise), with `args` and `env` added, and waits
    /// (up to 30 s) until it serves.
    pub async fn start(
        upstream: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> OffloadProcess {
        OffloadProcess::start_with_config(upstream, None, args, env).await
    }

    /// As [`OffloadProcess::start`], with `config` (TOML) as `--config`.
    pub async fn start_with_config(
        upstream: SocketAddr,
        config: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> OffloadProcess {
        OffloadProcess::launch(upstream, config, args, env, None).await
    }

    /// As [`OffloadProcess::start`], socket-activated the way systemd does it: `listener`
    /// passed as descriptor 3, `LISTEN_FDS=1` and `LISTEN_PID` set to offload's own pid;
    /// `--listen` is the listener's address.
    pub async fn start_activated(
        upstream: SocketAddr,
        listener: &std::net::TcpListener,
        args: &[&str],
    ) -> OffloadProcess {
        OffloadProcess::launch(upstream, None, args, &[], Some(listener)).await
    }

    async fn launch(
        upstream: SocketAddr,
        config: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
        passed: Option<&std::net::TcpListener>,
    ) -> OffloadProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("proxy.toml");
        if let Some(text) = config {
            std::fs::write(&config_path, text).expect("write config");
        }
        let stdout = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        // The passed listener's address, else a free port; unless `args` names one.
        let listen = match passed {
            _ if args.contains(&"--listen") => None,
            Some(l) => Some(
                l.local_addr()
                    .expect("passed listener's address")
                    .to_string(),
            ),
            None => Some("127.0.0.1:0".to_string()),
        };
        let mut command = match passed {
            Some(listener) => activated(listener.as_fd()),
            None => Command::new(env!("CARGO_BIN_EXE_offload")),
        };
        command
            .arg("serve")
            .args(listen.iter().flat_map(|addr| ["--listen", addr]))
            // Unless the config names the app itself (a test reloading it).
            .args(
                match config.is_some_and(|c| c.contains("[upstream]\nurl =")) {
                    true => vec![],
                    false => vec!["--upstream".to_string(), format!("http://{upstream}")],
                },
            )
            .args(match args.contains(&"--admin-listen") {
                true => &[][..],
                false => &["--admin-listen", "off"][..],
            })
            .args(if args.contains(&"--log-format") {
                &[][..]
            } else {
                &["--log-format", "json"][..]
            })
            .args(args)
            .args(
                config
                    .map(|_| vec!["--config".to_string(), config_path.display().to_string()])
                    .unwrap_or_default(),
            )
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env_remove("OFFLOAD_CONFIG")
            // Credentials only from what the test passes: no profile files, no IMDS.
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn offload");
        let mut process = OffloadProcess {
            addr: "127.0.0.1:0".parse().expect("literal"),
            child,
            dir,
        };
        process.addr = process.wait_serving().await;
        process
    }

    async fn wait_serving(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = self.logs().lines().find_map(serving_address) {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("offload exited early ({status}): {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "offload not serving: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin listener's address, as its "serving" line (JSON logs) names it: with
    /// `--admin-listen 127.0.0.1:0` in `args`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|json| json["message"] == "serving")
            .and_then(|json| json["admin_listen"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no admin listener: {}", self.logs()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.path(name)).unwrap_or_default();
        format!("{}{}", read("stdout"), read("stderr"))
    }

    /// Waits (up to 10 s) until the logs contain `needle` (lines are written as requests
    /// end, after the response), and returns them.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_logs(needle, 1).await
    }

    /// Waits (up to 10 s) until `needle` occurs `times` times in the logs, and returns them.
    pub async fn wait_for_logs(&self, needle: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= times {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "not {times} {needle:?} in the logs: {logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `config` into the `--config` file, sends SIGHUP and waits for the next
    /// `expected` in the logs (one more than there was before); returns the logs.
    pub async fn reload(&self, config: &str, expected: &str) -> String {
        let before = self.logs().matches(expected).count();
        std::fs::write(self.config_file(), config).expect("edit the config file");
        self.signal(libc::SIGHUP);
        self.wait_for_logs(expected, before + 1).await
    }

    /// The `--config` file (when started with one): a test may edit it, then send SIGHUP.
    pub fn config_file(&self) -> PathBuf {
        self.path("proxy.toml")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A command starting offload as systemd starts a socket-activated service: `listener` (open
/// as long as the command is run) as descriptor 3 (without close-on-exec), `LISTEN_FDS=1`, and `LISTEN_PID` set by the shell
/// to its own pid, which `exec` hands on to offload.
pub fn activated(listener: BorrowedFd<'_>) -> Command {
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut command = Command::new("sh");
    command.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_offload"),
    ]);
    // SAFETY: between fork and exec only dup2 and fcntl run, both async-signal-safe, on
    // descriptors of the child's own; no memory is allocated or shared.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it either way.
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// The address in a `serving` line, JSON (`"listen":"…"`) or text (`listen=…`).
fn serving_address(line: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return (json["message"] == "serving")
            .then(|| json["listen"].as_str()?.parse().ok())
            .flatten();
    }
    line.contains(" serving ")
        .then(|| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("listen="))?
                .parse()
                .ok()
        })
        .flatten()
}

impl Drop for OffloadProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A config for offload on the s3s-fs `server`: three upload routes (`/respond`,
/// `/replace`, `/mirror`) and `/wp-content/uploads/` managed.
pub fn s3_config(server: &super::s3::S3Server) -> String {
    format!(
        r#"[server]
shutdown_grace = "2s"

[store]
kind = "s3"
bucket = "{bucket}"
region = "us-east-1"
endpoint = "{endpoint}"
path_style = true
part_size = "5MiB"
max_attempts = 1

[assets]
prefixes = ["/wp-content/uploads/"]

[[uploads]]
path = "/respond"
mode = "respond"

[[uploads]]
path = "/replace"
mode = "replace"

[[uploads]]
path = "/mirror"
mode = "mirror"
"#,
        bucket = server.bucket,
        endpoint = server.endpoint(),
    )
}

/// The environment giving offload `server`'s credentials.
pub fn s3_env(server: &super::s3::S3Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", server.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key.clone()),
    ]
}
