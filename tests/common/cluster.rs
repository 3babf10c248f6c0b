//! Several appliances on one machine as the nodes of one cluster: each its
//! own settings file, state directory (its quarantine and spool), ports
//! and `node.name`; all of them one database and one Redis. A node is its
//! master's whole process group, so a test can kill one as a power cut
//! would (SIGKILL to every process at once) or freeze one (SIGSTOP).
//!
//! `Spec::shared` is appended to every node's settings, so what a
//! scenario adds to all nodes is one string. The shared object store of
//! issue 21 goes there: with `tests/common/s3.rs`'s Garage harness, a
//! scenario passes `Garage::storage_toml` as `shared` and `Garage::env`
//! (the credentials, as the environment file holds them) as `env`, and
//! every node reads and writes the one bucket (`tests/cluster.rs`'s
//! `with_s3_` tests). Without it each node keeps its samples on its own
//! disk (the local backend).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::db::TestDb;
use super::redis::Redis;
use super::Appliance;

/// What every node of a cluster is started with.
#[derive(Default, Clone)]
pub struct Spec {
    /// Appended to each node's `[server]` section.
    pub server: String,
    /// Appended to each node's `[proxy]` section.
    pub proxy: String,
    /// Whole sections every node gets (not `[node]`, `[database]` or
    /// `[redis]`, which the cluster writes; not `[paths]`: a node's state
    /// directory is its own).
    pub shared: String,
    /// Added to every node's environment (the unit's environment file):
    /// `s3::Garage::env` for an S3 store named in `shared`
    /// (`s3::Garage::storage_toml`).
    pub env: Vec<(String, String)>,
}

/// Dropped nodes first (fields drop in order), then the database and
/// Redis they used.
pub struct Cluster {
    pub nodes: Vec<Appliance>,
    pub tag: String,
    pub db: TestDb,
    pub redis: Redis,
    pub spec: Spec,
}

impl Cluster {
    /// A database, a Redis and `count` nodes, started one after the other
    /// (the first migrates the database; the others find it current).
    /// None when there is no `redis-server` here.
    pub fn start(tag: &str, count: usize, spec: Spec) -> Option<Cluster> {
        let redis = Redis::start()?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            tag: tag.to_string(),
            db: TestDb::create(tag),
            redis,
            spec,
        };
        for _ in 0..count {
            cluster.add_node();
        }
        Some(cluster)
    }

    /// The name of the `i`th node: the tag and a letter (`tag-a`, `tag-b`).
    pub fn name(&self, i: usize) -> String {
        format!(
            "{}-{}",
            self.tag.replace('_', "-"),
            (b'a' + i as u8) as char
        )
    }

    /// Starts one more node; returns its index once it is ready.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let sections = format!(
            "[node]\nname = \"{}\"\n[database]\nurl = \"{}\"\n[redis]\nurl = \"{}\"\n{}",
            self.name(i),
            self.db.url(),
            self.redis.url(),
            self.spec.shared,
        );
        let tag = format!("{}-{}", self.tag, i);
        let node = Appliance::start_with_env(
            &tag,
            &self.spec.server,
            &self.spec.proxy,
            &sections,
            &mut super::free_port,
            &self.spec.env,
        );
        self.nodes.push(node);
        i
    }

    pub fn node(&self, i: usize) -> &Appliance {
        &self.nodes[i]
    }

    /// Every process of node `i` killed at once, as a power cut would:
    /// none of them gets to close anything itself.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        signal_group(node, libc::SIGKILL);
        let _ = node.child.wait();
    }

    /// Every process of node `i` stopped where it is: its sockets stay
    /// open and say nothing, as a frozen machine's do.
    pub fn freeze(&self, i: usize) {
        signal_group(&self.nodes[i], libc::SIGSTOP);
    }

    pub fn thaw(&self, i: usize) {
        signal_group(&self.nodes[i], libc::SIGCONT);
    }

    /// The node that holds the cluster's lead (`sandgnat_cluster_lead`),
    /// once exactly one live node says it does.
    pub fn leader(&self, live: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let leading: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| self.nodes[i].metric("sandgnat_cluster_lead") == Some(1.0))
                .collect();
            if let [one] = leading.as_slice() {
                return *one;
            }
            assert!(
                Instant::now() < deadline,
                "no single leader among {live:?} within {within:?}: {leading:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One value from the shared database, as text.
    pub fn scalar(&self, sql: &str) -> String {
        self.db.scalar(sql)
    }
}

fn signal_group(node: &Appliance, sig: i32) {
    // SAFETY: kill(2) on the process group the test started.
    unsafe { libc::kill(-node.pid(), sig) };
}
