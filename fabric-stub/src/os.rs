//! Process helpers over `/proc` and the `kill` command (Linux), so the crate needs no `unsafe`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether `pid` is a live process (present and not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match stat_fields(pid) {
        Some(fields) => !matches!(fields.first().map(String::as_str), Some("Z" | "X" | "x")),
        None => false,
    }
}

/// The start time of `pid` in clock ticks since boot (`/proc/<pid>/stat`
/// field 22). Stored with a pid so a re-adopting fabric never mistakes a
/// recycled pid for its agent.
pub fn start_ticks(pid: u32) -> Option<u64> {
    // Fields after the command name start at field 3 (state): 22 is index 19.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` after the `(comm)` one, which may hold spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Sends `signal` (`"TERM"`, `"KILL"`) to one process. Errors (it is gone) are ignored.
pub fn signal_pid(pid: u32, signal: &str) {
    run_kill(&["-s", signal, "--", &pid.to_string()]);
}

/// Sends `signal` to every process of the process group `pgid`: a guest agent
/// leads its own group, and its role process (with its children) stays in it.
pub fn signal_group(pgid: u32, signal: &str) {
    if pgid <= 1 {
        return;
    }
    run_kill(&["-s", signal, "--", &format!("-{pgid}")]);
}

fn run_kill(args: &[&str]) {
    let _ = Command::new("kill")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed, then renamed over the target, so readers see the old or the new
/// content, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// `t` as RFC 3339 UTC with second precision, e.g. `2024-05-01T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Proleptic Gregorian date of a day count since 1970-01-01. The calendar
/// repeats every 400 years (146 097 days); eras start on 1 March so the leap
/// day falls at the end of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A free loopback port for an instance, chosen below the kernel's ephemeral
/// range. The role binds it moments later; an ephemeral port could be taken in
/// between as the local end of any outgoing connection on the machine, and the
/// role would then crash-loop on "address in use". Ports below the range are
/// only ever taken by an explicit bind, which the check here sees. The search
/// starts at a place that differs per process and per call, so two fabrics on
/// one machine do not walk the same ports.
pub fn free_port() -> std::io::Result<u16> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Some((low, high)) = instance_port_range() {
        let span = u64::from(high - low) + 1;
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            h.finish()
        };
        for i in 0..span.min(4096) {
            let port = low + (seed.wrapping_add(i) % span) as u16;
            if port_free(port) {
                return Ok(port);
            }
        }
    }
    // No room outside the ephemeral range, or all of it taken: the kernel's choice.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Instance ports: from 10000 up to just below the ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default), or above it when
/// the range starts too low; `None` when the range leaves no room.
fn instance_port_range() -> Option<(u16, u16)> {
    const LOW: u16 = 10000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut bounds = range
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(|v| v.parse::<u16>().ok());
    let (lo, hi) = match (bounds.next().flatten(), bounds.next().flatten()) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (32768, 60999),
    };
    if lo > LOW + 1000 {
        Some((LOW, lo - 1))
    } else if hi < u16::MAX - 1000 {
        Some((hi + 1, u16::MAX))
    } else {
        None
    }
}

/// Whether 127.0.0.1:`port` can be bound now.
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_714_564_800)),
            "2024-05-01T12:00:00Z"
        );
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let me = std::process::id();
        assert!(pid_alive(me));
        assert!(start_ticks(me).is_some());
        assert!(!pid_alive(u32::MAX - 1));
    }

    #[test]
    fn instance_ports_are_free_and_outside_the_ephemeral_range() {
        let (low, high) = instance_port_range().expect("room outside the ephemeral range");
        let ports: std::collections::BTreeSet<u16> =
            (0..20).map(|_| free_port().unwrap()).collect();
        for &port in &ports {
            assert!((low..=high).contains(&port), "{port} not in {low}..={high}");
            assert!(port_free(port), "{port} was handed out but is taken");
        }
        // The search starts somewhere new each call.
        assert!(ports.len() > 1, "every call gave the same port: {ports:?}");
    }
}
