//! The Kafka cluster the harness runs (`scripts/kafka.sh run`, one JVM a node): one node, or three
//! as deployed — every node a broker and a voter of the controller quorum, topics with three
//! replicas and `min.insync.replicas` 2, so any one node may be gone without a write refused. The
//! harness kills, stalls and restarts nodes through it, and asks it who leads a partition and
//! which node is the active controller.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rustix::process::{Pid, Signal, kill_process};

/// One node: its ports, its log directory (kept across restarts), its process while it runs.
struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// How often it was started (names its log files).
    starts: usize,
}

pub(crate) struct Cluster {
    kafka_script: PathBuf,
    work_dir: PathBuf,
    nodes: Vec<Node>,
    /// `--voters` and `--cluster-id` for a cluster of several nodes.
    quorum: Option<(String, String)>,
}

impl Cluster {
    /// Starts `size` nodes (1 or 3) from `port` on — node k (from 1) on `port + 2(k-1)`, its
    /// controller on the next port — and waits until each serves.
    pub(crate) async fn start(
        kafka_script: &Path,
        work_dir: &Path,
        port: u16,
        size: u16,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(size == 1 || size == 3, "--brokers must be 1 or 3");
        let nodes: Vec<Node> = (0..size)
            .map(|k| Node {
                id: u32::from(k) + 1,
                port: port + 2 * k,
                controller_port: port + 2 * k + 1,
                dir: if size == 1 {
                    work_dir.join("kafka")
                } else {
                    work_dir.join(format!("kafka-{}", k + 1))
                },
                child: None,
                starts: 0,
            })
            .collect();
        let quorum = if size > 1 {
            let out = Command::new(kafka_script)
                .arg("cluster-id")
                .output()
                .context("scripts/kafka.sh cluster-id")?;
            let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            anyhow::ensure!(!id.is_empty(), "scripts/kafka.sh cluster-id printed nothing");
            let voters = nodes
                .iter()
                .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
                .collect::<Vec<_>>()
                .join(",");
            Some((voters, id))
        } else {
            None
        };
        let mut cluster = Self {
            kafka_script: kafka_script.to_owned(),
            work_dir: work_dir.to_owned(),
            nodes,
            quorum,
        };
        // A quorum of several forms only once a majority runs: start them all, then wait.
        for k in 0..cluster.nodes.len() {
            cluster.spawn(k)?;
        }
        for k in 0..cluster.nodes.len() {
            cluster.wait_started(k).await?;
        }
        Ok(cluster)
    }

    pub(crate) fn size(&self) -> usize {
        self.nodes.len()
    }

    /// The bootstrap list for clients.
    pub(crate) fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node with id `id`.
    pub(crate) fn index_of(&self, id: u32) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub(crate) fn id(&self, k: usize) -> u32 {
        self.nodes[k].id
    }

    fn spawn(&mut self, k: usize) -> anyhow::Result<()> {
        let replicas = self.nodes.len().to_string();
        let node = &mut self.nodes[k];
        node.starts += 1;
        let log_path = self
            .work_dir
            .join(format!("broker-{}-{}.log", node.id, node.starts));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(&self.kafka_script);
        cmd.args(["run", "--port", &node.port.to_string(), "--dir"])
            .arg(&node.dir)
            .args(["--node-id", &node.id.to_string()])
            .args(["--controller-port", &node.controller_port.to_string()]);
        if let Some((voters, cluster_id)) = &self.quorum {
            cmd.args(["--voters", voters, "--cluster-id", cluster_id]).args([
                "--replicas",
                &replicas,
                "--heap",
                "256m",
            ]);
        }
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting broker {}", node.id))?;
        node.child = Some(child);
        Ok(())
    }

    async fn wait_started(&self, k: usize) -> anyhow::Result<()> {
        let node = &self.nodes[k];
        let log_path = self
            .work_dir
            .join(format!("broker-{}-{}.log", node.id, node.starts));
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("Kafka Server started")
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "broker {} did not start; see {}",
                node.id,
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Starts node `k` again (its log kept) and waits until it serves.
    pub(crate) async fn restart(&mut self, k: usize) -> anyhow::Result<()> {
        self.spawn(k)?;
        self.wait_started(k).await
    }

    /// Sends `signal` to node `k` (SIGSTOP and SIGCONT stall and resume it).
    pub(crate) fn signal(&self, k: usize, signal: Signal) {
        if let Some(child) = &self.nodes[k].child {
            let _ = kill_process(Pid::from_child(child), signal);
        }
    }

    /// SIGKILLs node `k` and reaps it.
    pub(crate) fn kill(&mut self, k: usize) {
        if let Some(mut child) = self.nodes[k].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `k` (a controlled shutdown: it hands its leaderships over first) and waits
    /// up to a minute for it to exit, then SIGKILLs it.
    pub(crate) async fn stop(&mut self, k: usize) {
        self.signal(k, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(child) = self.nodes[k].child.as_mut() {
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill(k);
    }

    /// Every node SIGKILLed.
    pub(crate) fn kill_all(&mut self) {
        for k in 0..self.nodes.len() {
            self.kill(k);
        }
    }

    /// Every node that is down started again.
    pub(crate) async fn restart_all(&mut self) -> anyhow::Result<()> {
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|k| self.nodes[*k].child.is_none())
            .collect();
        for &k in &down {
            self.spawn(k)?;
        }
        for &k in &down {
            self.wait_started(k).await?;
        }
        Ok(())
    }

    fn metadata_client(&self) -> anyhow::Result<BaseConsumer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()?)
    }

    /// The leader (node id) of each partition of `topics`, as the cluster's metadata says now.
    pub(crate) fn leaders(&self, topics: &[&str]) -> anyhow::Result<Vec<(String, i32, i32)>> {
        let client = self.metadata_client()?;
        let mut leaders = Vec::new();
        for topic in topics {
            let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    leaders.push((t.name().to_owned(), p.id(), p.leader()));
                }
            }
        }
        Ok(leaders)
    }

    /// Waits (up to `patience`) until every partition of `topics` has all its replicas in sync
    /// again — what an operator waits for between two nodes of a rolling restart.
    pub(crate) async fn wait_in_sync(&self, topics: &[&str], patience: Duration) -> anyhow::Result<bool> {
        let client = self.metadata_client()?;
        let deadline = Instant::now() + patience;
        loop {
            let mut all = true;
            for topic in topics {
                let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
                all &= metadata
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions())
                    .all(|p| p.isr().len() == self.nodes.len());
            }
            if all {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The node id of the active controller (the quorum's leader), asked of the quorum itself
    /// with Kafka's own tool (`kafka-metadata-quorum describe --status`): clients' metadata
    /// names a random broker as "controller" in KRaft.
    pub(crate) fn active_controller(&self) -> anyhow::Result<u32> {
        let libs = Command::new(&self.kafka_script)
            .arg("install")
            .output()
            .context("scripts/kafka.sh install")?;
        let libs = String::from_utf8_lossy(&libs.stdout).trim().to_owned();
        let controllers = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("127.0.0.1:{}", n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new("java")
            .args(["-Xmx128m", "-cp", &format!("{libs}/*")])
            .arg("org.apache.kafka.tools.MetadataQuorumCommand")
            .args(["--bootstrap-controller", &controllers, "describe", "--status"])
            .output()
            .context("kafka-metadata-quorum describe --status")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("LeaderId:").map(str::trim))
            .and_then(|id| id.parse().ok())
            .with_context(|| {
                format!(
                    "no LeaderId in the quorum's status: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
