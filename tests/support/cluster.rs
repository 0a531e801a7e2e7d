//! A private Redis Cluster on loopback: three primaries, and a replica of each when a test
//! needs failover. Each node is a `redis-server --cluster-enabled yes` on free ports with
//! no persistence, its files in one temp dir; all are killed on drop, and their logs are
//! printed if the cluster never comes up.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;
use tempfile::TempDir;

use super::free_port;

/// Primaries in every test cluster.
pub const PRIMARIES: usize = 3;

/// How long a node may be unreachable before the others fail it over: short, so a
/// failover takes a few seconds in tests rather than the default's thirty.
const NODE_TIMEOUT_MS: &str = "1000";

/// How long the cluster may take to form, or to settle after a failover.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A Redis Cluster of the test's own.
pub struct RedisCluster {
    dir: TempDir,
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Three primaries, no replicas.
    pub fn start() -> RedisCluster {
        RedisCluster::launch(0)
    }

    /// Three primaries with a replica each, for failover.
    pub fn start_with_replicas() -> RedisCluster {
        RedisCluster::launch(1)
    }

    fn launch(replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let nodes = (0..PRIMARIES * (1 + replicas))
            .map(|_| start_node(&dir))
            .collect();
        let cluster = RedisCluster { dir, nodes };
        cluster.create(replicas);
        cluster.wait_until_settled();
        cluster
    }

    /// Joins the nodes with `redis-cli --cluster create`.
    fn create(&self, replicas: usize) {
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-server)");
        if !output.status.success() {
            self.fail(&format!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }

    /// Waits until every live node says `cluster_state:ok`, knows every node, and every
    /// live replica is in sync with its primary.
    pub fn wait_until_settled(&self) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < deadline {
            if self.live_ports().iter().all(|&port| settled(port)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail("the cluster never reached cluster_state:ok");
    }

    fn fail(&self, why: &str) -> ! {
        let mut logs = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            logs.push_str(&format!("--- node {} ---\n{text}\n", node.port));
        }
        panic!("{why}; the nodes' logs:\n{logs}");
    }

    /// The URL the service takes: every primary and replica as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// A cluster connection, opened as the service opens it.
    pub fn connection(&self) -> ClusterConnection {
        let seeds = presence::redis_conn::cluster_seeds(&self.url())
            .unwrap()
            .unwrap();
        presence::redis_conn::connect_cluster_lazy(seeds).unwrap()
    }

    /// A plain connection to one node, for inspecting it.
    pub fn node(&self, port: u16) -> redis::Connection {
        node_client(port).get_connection().unwrap()
    }

    /// The ports of the nodes that are primaries now.
    pub fn primary_ports(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|&port| info(port, "replication").contains("role:master"))
            .collect()
    }

    /// Blocks until every primary's writes so far reached its replica, so a failover
    /// loses none of them.
    pub fn wait_replicated(&self) {
        for port in self.primary_ports() {
            let acked: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(5000)
                .query(&mut self.node(port))
                .unwrap();
            assert_eq!(acked, 1, "the replica of {port} did not acknowledge");
        }
    }

    /// The port of the primary that holds `key` now.
    pub fn primary_of(&self, key: &str) -> u16 {
        self.primary_ports()
            .into_iter()
            .find(|&port| {
                let owned: redis::RedisResult<i64> =
                    redis::cmd("EXISTS").arg(key).query(&mut self.node(port));
                owned.is_ok()
            })
            .unwrap_or_else(|| panic!("no primary holds {key}"))
    }

    /// Kills the node on `port`, as a crash would.
    pub fn kill(&self, port: u16) {
        let node = self.nodes.iter().find(|n| n.port == port).unwrap();
        if let Some(mut child) = node.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.lock().unwrap().is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Where the cluster keeps its files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            self.kill(node.port);
        }
    }
}

fn start_node(dir: &TempDir) -> Node {
    let (port, bus) = (free_port(), free_port());
    let log = dir.path().join(format!("node-{port}.log"));
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
        ])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(&log)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    let node = Node {
        port,
        log,
        child: Mutex::new(Some(child)),
    };
    wait_for_ping(&node);
    node
}

fn wait_for_ping(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut con) = node_client(node.port).get_connection()
            && redis::cmd("PING").query::<String>(&mut con).is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&node.log).unwrap_or_default();
    panic!(
        "cluster node on port {} never came up; its log:\n{text}",
        node.port
    );
}

fn node_client(port: u16) -> redis::Client {
    redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap()
}

/// One node's INFO section, or nothing when it does not answer.
fn info(port: u16, section: &str) -> String {
    node_client(port)
        .get_connection_with_timeout(Duration::from_millis(500))
        .and_then(|mut con| redis::cmd("INFO").arg(section).query(&mut con))
        .unwrap_or_default()
}

fn settled(port: u16) -> bool {
    let cluster: String = node_client(port)
        .get_connection_with_timeout(Duration::from_millis(500))
        .and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query(&mut con))
        .unwrap_or_default();
    let replication = info(port, "replication");
    let in_sync =
        replication.contains("role:master") || replication.contains("master_link_status:up");
    cluster.contains("cluster_state:ok") && in_sync
}
