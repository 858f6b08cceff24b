//! CPU time of the local stack's processes, for the benchmarks (included with `#[path]`).

/// CPU time (user + system, seconds) of the processes that do a run's work: this process
/// (the processor, or a floor's client), PostgreSQL (every backend), Redis and the Kafka
/// broker. Read from `/proc/*/stat`; a process that exits within a phase takes its share
/// with it (the pools here keep their connections, so it is small).
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub bench: f64,
    pub postgres: f64,
    pub redis: f64,
    pub kafka: f64,
    /// Every process of the machine (`/proc/stat`), those that exited within the phase
    /// included: what the others leave out is mostly PostgreSQL backends of closed pools.
    pub machine: f64,
}

impl Cpu {
    pub fn now() -> Cpu {
        // `/proc` counts in USER_HZ, which Linux fixes at 100 for user space.
        let tick = 100.0;
        let me = std::process::id().to_string();
        let mut cpu = Cpu { machine: machine(tick), ..Cpu::default() };
        let Ok(dir) = std::fs::read_dir("/proc") else { return cpu };
        for entry in dir.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let (Ok(stat), Ok(cmd)) = (std::fs::read_to_string(format!("/proc/{pid}/stat")), std::fs::read(format!("/proc/{pid}/cmdline")))
            else {
                continue;
            };
            // Fields after the command name (which may hold spaces): utime and stime are the
            // 12th and 13th.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let secs = match (f.get(11).and_then(|v| v.parse::<f64>().ok()), f.get(12).and_then(|v| v.parse::<f64>().ok())) {
                (Some(u), Some(s)) => (u + s) / tick,
                _ => continue,
            };
            let cmd = String::from_utf8_lossy(&cmd);
            let slot = if pid == me {
                &mut cpu.bench
            } else if cmd.starts_with("postgres") || cmd.contains("/postgres ") || cmd.contains("bin/postgres") {
                &mut cpu.postgres
            } else if cmd.contains("redis-server") {
                &mut cpu.redis
            } else if cmd.contains("kafka.Kafka") {
                &mut cpu.kafka
            } else {
                continue;
            };
            *slot += secs;
        }
        cpu
    }

    pub fn since(self, start: Cpu) -> Cpu {
        Cpu {
            bench: self.bench - start.bench,
            postgres: self.postgres - start.postgres,
            redis: self.redis - start.redis,
            kafka: self.kafka - start.kafka,
            machine: self.machine - start.machine,
        }
    }

    pub fn total(&self) -> f64 {
        self.bench + self.postgres + self.redis + self.kafka
    }

    pub fn describe(&self) -> String {
        format!(
            "{:.1} core-s (this process {:.1}, PostgreSQL {:.1}, Redis {:.1}, Kafka {:.1})",
            self.total(),
            self.bench,
            self.postgres,
            self.redis,
            self.kafka
        )
    }
}

/// User + system time of every CPU since boot, in seconds (the first line of `/proc/stat`:
/// user, nice, system, ...).
fn machine(tick: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = stat.lines().next() else { return 0.0 };
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    f.iter().take(3).sum::<f64>() / tick
}
