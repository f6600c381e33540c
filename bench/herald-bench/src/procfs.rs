//! What a server process costs, read from /proc: resident memory and CPU
//! time of a process and all its descendants (nginx workers, uvicorn).

use std::collections::HashMap;

/// Clock ticks per second for /proc's CPU times.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `pid` and every process below it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = stat_fields(p) {
                if let Some(ppid) = stat.get(1).and_then(|s| s.parse().ok()) {
                    parent_of.insert(p, ppid);
                }
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| **pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Fields of /proc/PID/stat after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Resident memory of the process tree, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// CPU time of a process tree, user space and kernel apart, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    /// utime: the process's own code.
    pub user: f64,
    /// stime: the kernel on its behalf (for a push server mostly socket writes).
    pub system: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// What was spent from `before` to `self`.
    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            system: self.system - before.system,
        }
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;

    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// CPU time of one process (its threads, not its children).
fn process_cpu(pid: u32) -> Option<Cpu> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15: 12 and 13 here.
    let ticks = |i: usize| f.get(i)?.parse::<u64>().ok();
    let tick = ticks_per_sec();
    Some(Cpu {
        user: ticks(11)? as f64 / tick,
        system: ticks(12)? as f64 / tick,
    })
}

/// CPU time of the process tree.
pub fn cpu(pid: u32) -> Cpu {
    tree(pid)
        .into_iter()
        .filter_map(process_cpu)
        .fold(Cpu::default(), std::ops::Add::add)
}

/// User plus system CPU seconds of the process tree.
pub fn cpu_secs(pid: u32) -> f64 {
    cpu(pid).total()
}

/// CPU time of several process trees; `None` when no pid is given.
pub fn cpu_of(pids: &[u32]) -> Option<Cpu> {
    (!pids.is_empty()).then(|| {
        pids.iter()
            .map(|p| cpu(*p))
            .fold(Cpu::default(), std::ops::Add::add)
    })
}

/// CPU seconds of several process trees; `None` when no pid is given.
pub fn cpu_secs_of(pids: &[u32]) -> Option<f64> {
    cpu_of(pids).map(Cpu::total)
}

/// Resident KiB of several process trees; `None` when no pid is given.
pub fn rss_kib_of(pids: &[u32]) -> Option<u64> {
    (!pids.is_empty()).then(|| pids.iter().map(|p| rss_kib(*p)).sum())
}

/// CPU seconds of this process.
pub fn own_cpu_secs() -> f64 {
    process_cpu(std::process::id()).map_or(0.0, Cpu::total)
}

/// Raises the open-file limit to its hard maximum; returns the new limit.
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        assert!(tree(me).contains(&me));
        let spin = std::time::Instant::now();
        while spin.elapsed().as_millis() < 50 {}
        assert!(cpu_secs(me) > 0.0 || own_cpu_secs() >= 0.0);
    }

    #[test]
    fn user_and_system_time_are_apart() {
        let me = std::process::id();
        let before = cpu(me);
        // User space: a loop without system calls, until it has had 0.1 s
        // of CPU (looked at every 20 ms: reading /proc is kernel time).
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        let mut spent = Cpu::default();
        while spent.user < 0.1 && wall.elapsed().as_secs() < 20 {
            let slice = std::time::Instant::now();
            while slice.elapsed().as_millis() < 20 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            spent = cpu(me).since(before);
        }
        assert!(spent.user >= 0.1, "{spent:?}");
        assert!(spent.system < spent.user, "{spent:?}");
        assert_eq!(cpu_of(&[]), None);
        assert!((cpu_secs(me) - cpu(me).total()).abs() < 0.05);
    }
}
