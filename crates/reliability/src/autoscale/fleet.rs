//! The replicas: connector processes started and stopped the way a Deployment's pods are.
//! Each pod has a name of its own (`HOSTNAME`, which the Redis and Kinesis connectors use for
//! their processing list and lease owner) that never comes back once the pod is gone.

use connector_core::testkit::Process;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// One running replica.
#[derive(Debug)]
struct Replica {
    name: String,
    process: Process,
}

/// How a replica ended.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The pod name.
    pub name: String,
    /// From SIGTERM to exit.
    pub took: Duration,
    /// Whether the grace period ran out and it was killed.
    pub killed: bool,
    /// Its exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Its log when it did not exit 0 on SIGTERM, for the report.
    pub log: Option<String>,
}

/// The replicas of one connector.
#[derive(Debug)]
pub struct Fleet {
    binary: String,
    env: Vec<(&'static str, String)>,
    grace: Duration,
    running: Vec<Replica>,
    stopping: Vec<JoinHandle<Stopped>>,
    started: usize,
    peak: usize,
}

impl Fleet {
    /// No replicas yet of `binary` with `env`; stopped ones get `grace` after SIGTERM.
    pub fn new(binary: String, env: Vec<(&'static str, String)>, grace: Duration) -> Self {
        Self {
            binary,
            env,
            grace,
            running: Vec::new(),
            stopping: Vec::new(),
            started: 0,
            peak: 0,
        }
    }

    /// Replicas running (not counting those terminating).
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Replicas running or still terminating (SIGTERM sent, not exited): the pods that can
    /// still take messages.
    pub fn alive(&self) -> usize {
        self.running.len() + self.stopping.iter().filter(|h| !h.is_finished()).count()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Replicas started so far.
    pub fn started(&self) -> usize {
        self.started
    }

    /// The most that ran at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Starts one replica with a fresh pod name.
    pub fn start(&mut self) -> &Process {
        self.started += 1;
        let name = format!("replica-{}-{}", std::process::id(), self.started);
        let mut env = self.env.clone();
        env.push(("HOSTNAME", name.clone()));
        let process = Process::start(&self.binary, &env);
        self.running.push(Replica { name, process });
        self.peak = self.peak.max(self.running.len());
        &self.running.last().expect("just pushed").process
    }

    /// Starts or stops replicas until `n` run; the newest go first, as a ReplicaSet scaling
    /// down picks the youngest pods.
    pub fn scale_to(&mut self, n: usize) {
        while self.running.len() < n {
            self.start();
        }
        while self.running.len() > n {
            let newest = self.running.pop().expect("more than n");
            self.terminate(newest);
        }
    }

    /// Waits until every running replica has logged `needle`.
    pub async fn wait_all_log(&self, needle: &str) {
        for r in &self.running {
            r.process.wait_log(needle, 1).await;
        }
    }

    /// Replaces the oldest replica (a rolling update with one surge pod, or a node drained):
    /// the new one starts, then the old one gets SIGTERM.
    pub fn replace_oldest(&mut self) {
        if self.running.is_empty() {
            return;
        }
        self.start();
        let oldest = self.running.remove(0);
        self.terminate(oldest);
    }

    /// SIGTERM; SIGKILL when the grace period runs out; recorded when it has exited.
    fn terminate(&mut self, mut replica: Replica) {
        let grace = self.grace;
        self.stopping.push(tokio::spawn(async move {
            let sent = Instant::now();
            replica.process.signal("-TERM");
            let (status, killed) =
                match tokio::time::timeout(grace, replica.process.wait_exit()).await {
                    Ok(status) => (status, false),
                    Err(_) => {
                        replica.process.signal("-KILL");
                        (replica.process.wait_exit().await, true)
                    }
                };
            let code = status.code();
            keep_log(&replica);
            Stopped {
                name: replica.name,
                took: sent.elapsed(),
                killed,
                code,
                log: (killed || code != Some(0)).then(|| replica.process.logs()),
            }
        }));
    }

    /// Stops every replica and waits until all have exited; returns how each one stopped.
    pub async fn shut_down(mut self) -> Vec<Stopped> {
        self.scale_to(0);
        let mut stopped = Vec::new();
        for handle in std::mem::take(&mut self.stopping) {
            stopped.push(handle.await.expect("the stopping task"));
        }
        stopped
    }
}

/// For looking into a run: a replica's log, written to `$AUTOSCALE_LOG_DIR/<pod>.log` when
/// that is set.
fn keep_log(replica: &Replica) {
    if let Some(dir) = std::env::var_os("AUTOSCALE_LOG_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let path = std::path::Path::new(&dir).join(format!("{}.log", replica.name));
        let _ = std::fs::write(path, replica.process.logs());
    }
}

impl Drop for Fleet {
    /// Replicas still running when the run is abandoned (a failed wait) are killed with the
    /// fleet; their logs are kept first.
    fn drop(&mut self) {
        for r in &self.running {
            keep_log(r);
        }
    }
}
