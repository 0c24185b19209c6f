//! The process's own figures under the names every Prometheus client library gives them
//! (prometheus.io, "Writing client libraries", process metrics): resident and virtual
//! memory, open and most file descriptors, CPU seconds, threads and start time, read from
//! `/proc/self` at each scrape. What memory idle connections hold, and whether offload
//! nears its file descriptor limit, are then on the same dashboard as its requests.
//! Linux only; elsewhere the collector shows nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Encodes the process metrics from `/proc/self` when scraped.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        #[cfg(target_os = "linux")]
        if let Some(stat) = linux::Stat::read() {
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                stat.resident_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(Unit::Bytes),
                stat.virtual_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                None,
                stat.threads,
            )?;
            let cpu = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            ConstCounter::new(stat.cpu_seconds).encode(cpu)?;
            if let Some(started) = stat.start_time_seconds {
                gauge(
                    &mut encoder,
                    "process_start_time",
                    "Start time of the process since unix epoch in seconds",
                    Some(Unit::Seconds),
                    started,
                )?;
            }
        }
        #[cfg(target_os = "linux")]
        {
            if let Some(open) = linux::open_fds() {
                gauge(
                    &mut encoder,
                    "process_open_fds",
                    "Number of open file descriptors",
                    None,
                    open,
                )?;
            }
            if let Some(most) = crate::server::open_files_limit() {
                gauge(
                    &mut encoder,
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    None,
                    most,
                )?;
            }
        }
        Ok(())
    }
}

/// One gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: impl EncodeGaugeValue,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

#[cfg(target_os = "linux")]
mod linux {
    /// What `/proc/self/stat` says, in the units the metrics use.
    pub(super) struct Stat {
        pub(super) resident_bytes: u64,
        pub(super) virtual_bytes: u64,
        pub(super) threads: u64,
        pub(super) cpu_seconds: f64,
        /// From the start in clock ticks after boot and `/proc/stat`'s `btime`.
        pub(super) start_time_seconds: Option<f64>,
    }

    impl Stat {
        pub(super) fn read() -> Option<Stat> {
            let text = std::fs::read_to_string("/proc/self/stat").ok()?;
            Stat::parse(
                &text,
                clock_ticks()?,
                crate::memory::page_size()?,
                boot_time(),
            )
        }

        /// Parses `stat(5)`'s line. The command name, in parentheses, may itself hold spaces
        /// and parentheses: the fields are counted after its last `)`.
        fn parse(text: &str, ticks: f64, page: u64, boot: Option<u64>) -> Option<Stat> {
            let after_name = &text[text.rfind(')')? + 1..];
            // Field 3 (state) is the first after the name; stat(5) numbers from 1.
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
            let cpu_ticks = field(14)?.saturating_add(field(15)?);
            Some(Stat {
                threads: field(20)?,
                virtual_bytes: field(23)?,
                resident_bytes: field(24)?.saturating_mul(page),
                cpu_seconds: cpu_ticks as f64 / ticks,
                start_time_seconds: boot
                    .zip(field(22))
                    .map(|(boot, start)| boot as f64 + start as f64 / ticks),
            })
        }
    }

    /// Entries of `/proc/self/fd` (the one opened to list them among them, as every
    /// client library counts).
    pub(super) fn open_fds() -> Option<u64> {
        let entries = std::fs::read_dir("/proc/self/fd").ok()?;
        u64::try_from(entries.count()).ok()
    }

    /// System boot time (`btime` of `/proc/stat`), seconds since the epoch; where
    /// `/proc/stat` cannot be read (the systemd unit's `ProcSubset=pid` hides it), the wall
    /// clock less the time since boot.
    fn boot_time() -> Option<u64> {
        let from_stat = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()
        });
        from_stat.or_else(boot_time_from_clocks)
    }

    fn boot_time_from_clocks() -> Option<u64> {
        let since_boot = clock_seconds(libc::CLOCK_BOOTTIME)?;
        let now = clock_seconds(libc::CLOCK_REALTIME)?;
        Some(now.saturating_sub(since_boot))
    }

    /// Whole seconds on `clock`.
    fn clock_seconds(clock: libc::clockid_t) -> Option<u64> {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec passed, which lives on this stack.
        let rc = unsafe { libc::clock_gettime(clock, &mut time) };
        (rc == 0).then(|| u64::try_from(time.tv_sec).ok()).flatten()
    }

    fn clock_ticks() -> Option<f64> {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then_some(ticks as f64)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Where `/proc/stat` is hidden, the boot time from the clocks is the same (to the
        /// second, as the two clocks are read a moment apart).
        #[test]
        fn the_clocks_give_the_boot_time_proc_stat_does() {
            let btime = boot_time().expect("/proc/stat here");
            let clocks = boot_time_from_clocks().expect("clocks");
            assert!(btime.abs_diff(clocks) <= 2, "{btime} against {clocks}");
        }

        #[test]
        fn a_stat_line_is_read_after_the_last_parenthesis() {
            // A command name with a space and a parenthesis, as a process may name itself.
            let line = "4242 (off load) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 0 0 20 0 \
                        3 0 1000 123456789 500 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1";
            let stat = Stat::parse(line, 100.0, 4096, Some(1_700_000_000)).unwrap();
            assert_eq!(stat.threads, 3);
            assert_eq!(stat.virtual_bytes, 123_456_789);
            assert_eq!(stat.resident_bytes, 500 * 4096);
            assert_eq!(stat.cpu_seconds, 2.0);
            assert_eq!(stat.start_time_seconds, Some(1_700_000_010.0));
            assert!(Stat::parse("4242 (offload) S 1 2", 100.0, 4096, None).is_none());
        }
    }
}
