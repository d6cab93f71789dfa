//! The engine processes of one run: `meltstream run [--instance ID] FILE` children, each with
//! its own log file, killed when the pool is dropped (a failing test must not leave an engine in
//! its consumer group).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One engine process.
pub struct Engine {
    child: Child,
    pub log: PathBuf,
    /// Paused with SIGSTOP.
    pub stopped: bool,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.stopped {
            let _ = signal(self.child.id(), "CONT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `kill -SIG pid`.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().is_ok_and(|s| s.success())
}

/// The processes of one run, by instance id.
pub struct Pool {
    pub dir: PathBuf,
    pub topology: PathBuf,
    /// The run's name: the prefix of its log files.
    pub run: String,
    /// Run every process with `--instance` (several processes); without, a single one.
    pub instances: bool,
    pub procs: BTreeMap<String, Engine>,
    spawned: usize,
    /// What happened to the processes that the test did not ask for (exits by themselves,
    /// failed stops), for the report.
    pub incidents: Vec<String>,
}

impl Pool {
    pub fn new(dir: &Path, topology: &Path, run: &str, instances: bool) -> Pool {
        Pool { dir: dir.to_owned(), topology: topology.to_owned(), run: run.to_owned(), instances, procs: BTreeMap::new(), spawned: 0, incidents: Vec::new() }
    }

    /// Starts instance `id`; its log is `<run>-<id>-<n>.log`, n counting every start of the run.
    pub fn spawn(&mut self, id: &str) {
        let log = self.dir.join(format!("{}-{id}-{}.log", self.run, self.spawned));
        self.spawned += 1;
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meltstream"));
        cmd.arg("run").arg("--quiet");
        if self.instances {
            cmd.arg("--instance").arg(id);
        }
        let child = cmd.arg(&self.topology).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(file).spawn().expect("spawn meltstream");
        self.procs.insert(id.to_owned(), Engine { child, log, stopped: false });
    }

    /// Instances running and not paused.
    pub fn live(&self) -> Vec<String> {
        self.procs.iter().filter(|(_, e)| !e.stopped).map(|(id, _)| id.clone()).collect()
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: &str) {
        if let Some(mut e) = self.procs.remove(id) {
            let _ = e.child.kill();
            let _ = e.child.wait();
        }
    }

    pub fn pause(&mut self, id: &str) {
        if let Some(e) = self.procs.get_mut(id) {
            e.stopped = signal(e.child.id(), "STOP");
        }
    }

    pub fn resume(&mut self, id: &str) {
        if let Some(e) = self.procs.get_mut(id) {
            signal(e.child.id(), "CONT");
            e.stopped = false;
        }
    }

    /// SIGTERM, then waits for the exit (a stop drains and stores the final progress); an exit
    /// other than 0, or none within `secs`, is an incident (then it is killed).
    pub async fn stop(&mut self, id: &str, secs: u64) {
        let Some(mut e) = self.procs.remove(id) else { return };
        signal(e.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match e.child.try_wait() {
                Ok(Some(st)) if st.code() == Some(0) => return,
                Ok(Some(st)) => {
                    self.incidents.push(format!("instance {id} exited with {st} after SIGTERM (log {})", e.log.display()));
                    return;
                }
                _ if Instant::now() > deadline => {
                    self.incidents.push(format!("instance {id} did not exit within {secs} s of SIGTERM; killed (log {})", e.log.display()));
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Processes that exited without being asked: recorded as incidents and started again (an
    /// engine that escalated or crashed is, to the group, a crash).
    pub fn restart_exited(&mut self) -> Vec<(String, ExitStatus)> {
        let mut gone = Vec::new();
        for (id, e) in &mut self.procs {
            if let Ok(Some(st)) = e.child.try_wait() {
                self.incidents.push(format!("instance {id} exited by itself with {st} (log {})", e.log.display()));
                gone.push((id.clone(), st));
            }
        }
        for (id, _) in &gone {
            self.procs.remove(id);
            self.spawn(id);
        }
        gone
    }
}
