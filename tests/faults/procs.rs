//! The real processes under test (`scheduled-jobs run` and `scheduled-jobs tick`), and the
//! fault injector that kills, freezes, stops and bounces them and the services beneath them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common;
use crate::common::Cluster;

/// The processor's consumer session timeout (`session.timeout.ms` set by the processor).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Every job's run timeout in the suite (`timeout_secs`): short, so a broker outage outlasts
/// it, yet long enough for a chunk held across the broker's shutdown to finish before it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL a processor, restart it.
    Kill,
    /// SIGSTOP a processor past its session timeout (a zombie), then SIGCONT.
    Freeze,
    /// SIGTERM a processor (clean bounce), restart it.
    Term,
    /// `scripts/services.sh restart <svc>`.
    Restart(&'static str),
    /// `scripts/services.sh stop <svc>`, down longer than a run's timeout, then `start`: runs
    /// in flight lose their Kafka transactions and are retried past their deadline.
    Outage(&'static str),
    /// Cluster profile: SIGKILL one broker (node `target + 1`), start it again.
    BrokerKill,
    /// Cluster profile: clean stop of one broker, start it again.
    BrokerStop,
    /// Cluster profile: SIGKILL the active controller (found when the fault begins).
    ControllerKill,
    /// Cluster profile: restart every broker one after the other, with a burst of orders placed
    /// just before, so a large order-expiration run is in flight.
    Rolling,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Kill,
        Kind::Freeze,
        Kind::Term,
        Kind::Restart("kafka"),
        Kind::Restart("redis"),
        Kind::Restart("postgres"),
        Kind::Outage("kafka"),
    ];

    /// The cluster profile's faults: brokers one at a time (the controller included), a rolling
    /// restart, and the processor and store faults of the single-broker profiles.
    pub const CLUSTER: [Kind; 9] = [
        Kind::BrokerKill,
        Kind::BrokerStop,
        Kind::ControllerKill,
        Kind::Rolling,
        Kind::Kill,
        Kind::Freeze,
        Kind::Term,
        Kind::Restart("redis"),
        Kind::Restart("postgres"),
    ];

    /// Faults of one processor (what the recovery bound is about).
    pub fn on_processor(self) -> bool {
        matches!(self, Kind::Kill | Kind::Freeze | Kind::Term)
    }

    pub fn name(self) -> String {
        match self {
            Kind::BrokerKill => "SIGKILL broker".into(),
            Kind::BrokerStop => "clean stop of a broker".into(),
            Kind::ControllerKill => "SIGKILL active controller".into(),
            Kind::Rolling => "rolling restart of every broker".into(),
            Kind::Kill => "SIGKILL processor".into(),
            Kind::Freeze => "SIGSTOP processor > session timeout".into(),
            Kind::Term => "SIGTERM processor".into(),
            Kind::Restart(svc) => format!("restart {svc}"),
            Kind::Outage(svc) => format!("{svc} down > run timeout"),
        }
    }
}

/// One planned fault: when (after the start of traffic), what, on which processor.
#[derive(Debug, Clone)]
pub struct Fault {
    pub at: Duration,
    pub kind: Kind,
    pub target: usize,
    /// Kill: down time before the restart; Freeze: how long frozen.
    pub hold: Duration,
}

/// The whole fault schedule, decided by the seed alone: every kind once in a random order,
/// then random kinds, one fault at a time with random gaps, until `span`.
pub fn schedule(seed: u64, span: Duration, processors: usize, gap: (u64, u64), all: &[Kind]) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds = all.to_vec();
    kinds.shuffle(&mut rng);
    // The broker outage among the first three faults, so even the short profile has it.
    if let Some(i) = kinds.iter().position(|k| matches!(k, Kind::Outage(_))) {
        let j = rng.random_range(0..3);
        kinds.swap(i, j);
    }
    let mut out = Vec::new();
    // A broker restart is slow (every partition of the local broker is reloaded): beyond the
    // first, only long profiles draw more of them (restarts and outages alike).
    let extra: Vec<Kind> = all
        .iter()
        .copied()
        .filter(|k| span > Duration::from_secs(600) || !matches!(k, Kind::Restart("kafka") | Kind::Outage(_)))
        .collect();
    let mut at = Duration::from_secs(rng.random_range(gap.0..=gap.1));
    loop {
        let kind = if out.len() < kinds.len() { kinds[out.len()] } else { extra[rng.random_range(0..extra.len())] };
        let hold = match kind {
            Kind::Freeze => SESSION_TIMEOUT + Duration::from_millis(rng.random_range(3000..7000)),
            Kind::Outage(_) => RUN_TIMEOUT + Duration::from_millis(rng.random_range(2000..8000)),
            Kind::BrokerKill | Kind::BrokerStop | Kind::ControllerKill => Duration::from_millis(rng.random_range(2000..8000)),
            _ => Duration::from_millis(rng.random_range(500..3000)),
        };
        if at + hold > span {
            break;
        }
        out.push(Fault { at, kind, target: rng.random_range(0..processors), hold });
        // Room for the fault itself (a broker restart takes a while) before the next one.
        let busy = match kind {
            Kind::Restart("kafka") => 20,
            Kind::Outage(_) => hold.as_secs() + 20,
            Kind::BrokerKill | Kind::BrokerStop | Kind::ControllerKill => hold.as_secs() + 15,
            Kind::Rolling => 60,
            Kind::Restart(_) => 5,
            _ => hold.as_secs() + 2,
        };
        at += Duration::from_secs(busy + rng.random_range(gap.0..=gap.1));
    }
    out
}

/// A supervised child: restarted when it exits outside a fault.
pub struct Managed {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pub unexpected_exits: usize,
    pub starts: usize,
}

impl Managed {
    pub fn new(name: &str, args: &[&str], env: Vec<(String, String)>, logs: &Path) -> Managed {
        Managed {
            name: name.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
            log: logs.join(format!("{name}.log")),
            child: None,
            unexpected_exits: 0,
            starts: 0,
        }
    }

    pub fn start(&mut self) {
        let log = File::options().create(true).append(true).open(&self.log).expect("process log");
        let mut cmd = Command::new(common::binary());
        cmd.current_dir(common::repo_root())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn scheduled-jobs"));
        self.starts += 1;
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        }
    }

    /// Waits for the child to exit, at most `within`; true if it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                self.child = None;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Restarts the child if it exited on its own.
    pub fn supervise(&mut self) {
        let exited = match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        };
        if exited {
            self.unexpected_exits += 1;
            eprintln!("[faults] {} exited unexpectedly; restarting (see {})", self.name, self.log.display());
            self.start();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> bool {
        self.signal("CONT");
        self.signal("TERM");
        if self.wait_exit(grace) {
            return true;
        }
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(5));
        false
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the injector did, for the summary.
#[derive(Debug, Default)]
pub struct Injected {
    pub by_kind: BTreeMap<String, usize>,
    /// Every fault as injected: what, when it began (wall clock, comparable with run results'
    /// timestamps) and how long it was held.
    pub log: Vec<(Kind, chrono::DateTime<chrono::Utc>, Duration)>,
    /// Clean stops (SIGTERM) that did not finish within their grace period.
    pub slow_clean_stops: usize,
    /// Service restarts that failed.
    pub failed_restarts: usize,
}

/// Injects one fault (blocking; run on a blocking thread). `outage` is called for an outage:
/// before the service stops (it returns what to do once it has stopped).
pub fn inject(
    f: &Fault,
    processors: &mut [Managed],
    injected: &mut Injected,
    outage: &mut dyn FnMut() -> Box<dyn FnOnce()>,
    cluster: Option<&Cluster>,
    burst: &dyn Fn(),
) {
    let p = &mut processors[f.target];
    injected.log.push((f.kind, chrono::Utc::now(), f.hold));
    eprintln!(
        "[faults] t+{:>4}s {} {}",
        f.at.as_secs(),
        f.kind.name(),
        if f.kind.on_processor() {
            p.name.clone()
        } else if matches!(f.kind, Kind::BrokerKill | Kind::BrokerStop) {
            format!("kafka-{}", f.target + 1)
        } else {
            String::new()
        }
    );
    match f.kind {
        Kind::Kill => {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(10));
            std::thread::sleep(f.hold);
            p.start();
        }
        Kind::Freeze => {
            p.signal("STOP");
            std::thread::sleep(f.hold);
            p.signal("CONT");
        }
        Kind::Term => {
            p.signal("TERM");
            if !p.wait_exit(Duration::from_secs(40)) {
                injected.slow_clean_stops += 1;
                p.signal("KILL");
                p.wait_exit(Duration::from_secs(5));
            }
            p.start();
        }
        Kind::Restart(svc) => services(&["restart", svc], injected),
        Kind::BrokerKill | Kind::BrokerStop | Kind::ControllerKill | Kind::Rolling => {
            let Some(c) = cluster else {
                injected.failed_restarts += 1;
                eprintln!("[faults] {} needs the cluster profile", f.kind.name());
                return;
            };
            broker_fault(c, f, injected, burst);
        }
        Kind::Outage(svc) => {
            let stopped = outage();
            services(&["stop", svc], injected);
            stopped();
            std::thread::sleep(f.hold);
            services(&["start", svc], injected);
        }
    }
    *injected.by_kind.entry(f.kind.name()).or_default() += 1;
}

/// A broker fault of the cluster profile, through the cluster's own `scripts/services.sh`.
fn broker_fault(c: &Cluster, f: &Fault, injected: &mut Injected, burst: &dyn Fn()) {
    let node_services = |args: &[&str], injected: &mut Injected| {
        let out = c.services(args);
        if !out.status.success() {
            injected.failed_restarts += 1;
            eprintln!("[faults] services.sh {} failed:\n{}", args.join(" "), crate::common::text(&out));
        }
    };
    let kill = |n: usize, injected: &mut Injected| match c.pid(n) {
        Some(pid) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        None => {
            injected.failed_restarts += 1;
            eprintln!("[faults] kafka-{n} has no pid to kill");
        }
    };
    match f.kind {
        Kind::BrokerKill => {
            let n = f.target + 1;
            kill(n, injected);
            std::thread::sleep(f.hold);
            node_services(&["start", &format!("kafka-{n}")], injected);
        }
        Kind::BrokerStop => {
            let n = f.target + 1;
            node_services(&["stop", &format!("kafka-{n}")], injected);
            std::thread::sleep(f.hold);
            node_services(&["start", &format!("kafka-{n}")], injected);
        }
        Kind::ControllerKill => {
            let Some(n) = active_controller(c) else {
                injected.failed_restarts += 1;
                eprintln!("[faults] the active controller could not be found");
                return;
            };
            eprintln!("[faults]   the active controller is kafka-{n}");
            kill(n, injected);
            std::thread::sleep(f.hold);
            node_services(&["start", &format!("kafka-{n}")], injected);
        }
        Kind::Rolling => {
            burst();
            // The burst's orders expire PAYMENT_TIMEOUT_SECS later, in one large run.
            std::thread::sleep(Duration::from_secs(8));
            for n in 1..=3 {
                node_services(&["restart", &format!("kafka-{n}")], injected);
            }
        }
        _ => {}
    }
}

/// The node id of the KRaft quorum's leader, asked through the brokers with Kafka's own Admin
/// client (`scripts/kafka/QuorumLeader.java`, run with the brokers' classpath).
fn active_controller(c: &Cluster) -> Option<usize> {
    let cp = std::fs::read_to_string(c.dir.join("kafka-1").join("classpath.txt")).ok()?;
    let bootstrap: Vec<String> = (1..=3).map(|n| format!("127.0.0.1:{}", c.controller_port(n) - 1)).collect();
    let out = Command::new("java")
        .arg("-cp")
        .arg(cp.trim())
        .arg(common::repo_root().join("scripts/kafka/QuorumLeader.java"))
        .arg(bootstrap.join(","))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.lines().find_map(|l| l.strip_prefix("LeaderId:").map(|v| v.trim().parse::<usize>()));
    if id.is_none() {
        eprintln!("[faults] QuorumLeader.java: {}{}", text, String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.contains("SLF4J")).take(5).collect::<Vec<_>>().join("\n"));
    }
    id?.ok()
}

/// `scripts/services.sh <args>`; a failure is counted and logged.
fn services(args: &[&str], injected: &mut Injected) {
    let out = Command::new("bash").arg(common::repo_root().join("scripts/services.sh")).args(args).output();
    let what = args.join(" ");
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            injected.failed_restarts += 1;
            eprintln!("[faults] services.sh {what} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
        Err(e) => {
            injected.failed_restarts += 1;
            eprintln!("[faults] services.sh {what}: {e}");
        }
    }
}
