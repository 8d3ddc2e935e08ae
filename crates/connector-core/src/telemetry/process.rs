//! The standard `process_*` series (the names every Prometheus client library exports, so
//! existing dashboards and alerts work): CPU time, resident and virtual memory, open and maximum
//! file descriptors, start time. Read from `/proc` on each scrape; on a system without `/proc`
//! the series are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports CPU times and start times in `USER_HZ` ticks, which the kernel fixes at 100
/// for user space on every architecture (it is part of the ABI, unlike the kernel's `HZ`).
const USER_HZ: f64 = 100.0;

/// Collects the `process_*` series of this process at scrape time.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// One reading of `/proc/self`; a field is `None` where its file could not be read.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reading {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<f64>,
    pub(crate) virtual_bytes: Option<f64>,
    pub(crate) open_fds: Option<f64>,
    pub(crate) max_fds: Option<f64>,
    pub(crate) start_time_seconds: Option<f64>,
}

impl Reading {
    fn now() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat");
        let status = read("/proc/self/status");
        let limits = read("/proc/self/limits");
        let boot = read("/proc/stat").and_then(|s| boot_time(&s));
        let (cpu_seconds, start_ticks) = stat.as_deref().map_or((None, None), stat_fields);
        Self {
            cpu_seconds,
            resident_bytes: status.as_deref().and_then(|s| status_kib(s, "VmRSS:")),
            virtual_bytes: status.as_deref().and_then(|s| status_kib(s, "VmSize:")),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as f64),
            max_fds: limits.as_deref().and_then(max_open_files),
            start_time_seconds: boot.zip(start_ticks).map(|(b, t)| b + t / USER_HZ),
        }
    }
}

/// CPU seconds (user + system) and the start time in ticks after boot, from `/proc/self/stat`.
/// The command name (field 2) is in parentheses and may hold spaces, so fields are counted
/// from the last `)`.
fn stat_fields(stat: &str) -> (Option<f64>, Option<f64>) {
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return (None, None);
    };
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / USER_HZ);
    (cpu, field(22))
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024.0)
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Boot time in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = Reading::now();
        if let Some(v) = r.cpu_seconds {
            let counter = ConstCounter::new(v);
            // prometheus-client appends `_total` to counters.
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                r.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_command_name_s_closing_parenthesis() {
        // A command name with a space and a parenthesis, as a thread name can have.
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 150 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        let (cpu, start) = stat_fields(stat);
        assert_eq!(cpu, Some(4.0));
        assert_eq!(start, Some(12345.0));
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status = "Name:\tx\nVmSize:\t  20000 kB\nVmRSS:\t    1500 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1500.0 * 1024.0));
        assert_eq!(status_kib(status, "VmSize:"), Some(20000.0 * 1024.0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 4096                 files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_has_a_reading() {
        let r = Reading::now();
        assert!(r.resident_bytes.is_some_and(|b| b > 0.0), "{r:?}");
        assert!(r.open_fds.is_some_and(|n| n >= 1.0), "{r:?}");
        assert!(r.cpu_seconds.is_some(), "{r:?}");
        let start = r.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
