//! A real NATS JetStream cluster for integration tests: `nats-server` child processes on
//! loopback ports, each with its own throw-away store directory, killed and cleaned up on drop.
//!
//! Written against Debian's nats-server 2.9, so readiness is checked with raw JetStream API
//! requests: async-nats 0.52's `query_account()` (and `create_key_value()`, which calls it)
//! cannot decode 2.9's account info reply, which lacks `reserved_memory`/`reserved_storage`.
//! [`create_kv_bucket`] creates a key-value bucket without it.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bound on every readiness wait of this harness.
///
/// Generous: a 3-server cluster must first elect a meta leader, which takes a few seconds.
pub const NATS_READY_WAIT: Duration = Duration::from_secs(30);

/// Pause between two readiness probes.
const POLL: Duration = Duration::from_millis(100);

/// How many times `start` picks fresh ports when a server could not bind its own.
const PORT_ATTEMPTS: usize = 3;

/// Numbers the clusters of this process, so parallel tests get distinct directories.
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The `nats-server` binary: `$NATS_SERVER`, else the first on `PATH`, else Debian's
/// /usr/sbin (not on a normal user's `PATH`).
fn nats_server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Whether a `nats-server` binary can be found (`$NATS_SERVER`, `PATH`, /usr/sbin).
pub fn nats_server_available() -> bool {
    nats_server_bin().is_some()
}

/// One server of the cluster.
struct Server {
    /// n1, n2, ...: also its JetStream peer name, which must stay the same across restarts.
    name: String,
    /// Holds its config file, log file and store directory.
    dir: PathBuf,
    client_port: u16,
    cluster_port: u16,
    /// `None` once killed. A mutex so `is_running(&self)` can reap an exited child.
    child: Mutex<Option<Child>>,
}

impl Server {
    fn config_path(&self) -> PathBuf {
        self.dir.join("server.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn store_path(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// SIGKILL and reap, so the process is gone (and its ports free) when this returns.
    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the child has exited by itself (e.g. it could not bind a port).
    fn exited(&self) -> bool {
        match self.child.lock().unwrap().as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// Why `start` gave up on one attempt.
enum NotReady {
    /// Server `i` exited; `port_taken` when it could not bind a port (worth new ports).
    Exited { i: usize, port_taken: bool },
    /// The deadline passed; the last probe error.
    TimedOut(String),
}

/// A running NATS server (n = 1) or JetStream cluster (n > 1) on 127.0.0.1.
///
/// Every server is killed when this is dropped, and also (through `PR_SET_PDEATHSIG`) when
/// the thread that started it exits: keep a cluster within the test that started it.
pub struct NatsCluster {
    /// Per-cluster temporary directory, one subdirectory per server; removed on drop.
    root: PathBuf,
    /// Unique per cluster so two clusters of parallel tests can never merge, even if one
    /// picked a port another just released.
    cluster_name: String,
    servers: Vec<Server>,
    /// Servers keep the other servers' URLs to themselves (`no_advertise`).
    no_advertise: bool,
}

impl NatsCluster {
    /// Starts `n` servers (1 or 3) and waits until JetStream is ready; panics otherwise.
    ///
    /// Ready: JetStream answers through every server and (n > 1) can place a stream with
    /// `n` replicas, i.e. a meta leader was elected and knows every peer.
    pub async fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, false).await
    }

    /// [`NatsCluster::start`], with `no_advertise` set on every server when asked.
    async fn start_with(n: usize, no_advertise: bool) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one server");
        assert!(
            nats_server_available(),
            "nats-server not found: apt install nats-server"
        );
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let pid = std::process::id();
        let root = std::env::temp_dir().join(format!("nats-harness-{pid}-{seq}-{nanos}"));
        // Built before anything is spawned, so a panic below still kills and cleans up.
        let mut cluster = NatsCluster {
            root,
            cluster_name: format!("c-{pid}-{seq}"),
            servers: Vec::new(),
            no_advertise,
        };
        let started = Instant::now();
        for attempt in 1..=PORT_ATTEMPTS {
            cluster.stop_all();
            cluster.prepare(n);
            for i in 0..n {
                cluster.spawn(i);
            }
            match cluster.wait_ready(Instant::now() + NATS_READY_WAIT).await {
                Ok(()) => {
                    eprintln!(
                        "nats harness: {n} server(s) ready in {:.1?} (attempt {attempt})",
                        started.elapsed()
                    );
                    return cluster;
                }
                // Another process took a port between our pick and the server's bind.
                Err(NotReady::Exited {
                    port_taken: true, ..
                }) if attempt < PORT_ATTEMPTS => continue,
                Err(NotReady::Exited { i, .. }) => {
                    panic!(
                        "nats-server {} exited during start:\n{}",
                        cluster.servers[i].name,
                        cluster.all_logs(40)
                    )
                }
                Err(NotReady::TimedOut(last)) => panic!(
                    "JetStream not ready within {NATS_READY_WAIT:?} (last probe: {last}):\n{}",
                    cluster.all_logs(40)
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Fresh ports, empty directories and config files for `n` servers.
    fn prepare(&mut self, n: usize) {
        let _ = fs::remove_dir_all(&self.root);
        let ports = free_ports(2 * n);
        self.servers = (0..n)
            .map(|i| Server {
                name: format!("n{}", i + 1),
                dir: self.root.join(format!("n{}", i + 1)),
                client_port: ports[2 * i],
                cluster_port: ports[2 * i + 1],
                child: Mutex::new(None),
            })
            .collect();
        for i in 0..n {
            let s = &self.servers[i];
            fs::create_dir_all(s.store_path()).expect("create the NATS store directory");
            fs::write(s.config_path(), self.config(i)).expect("write the nats-server config");
        }
    }

    /// The nats-server config of server `i`.
    fn config(&self, i: usize) -> String {
        let s = &self.servers[i];
        let mut conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
             jetstream {{\n  store_dir: {store}\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}}\n",
            name = s.name,
            port = s.client_port,
            store = quoted(&s.store_path().to_string_lossy()),
        );
        if self.servers.len() > 1 {
            let routes: Vec<String> = self
                .servers
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| format!("    nats-route://127.0.0.1:{}", o.cluster_port))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n{advertise}  name: {name}\n  listen: 127.0.0.1:{port}\n  routes: [\n{routes}\n  ]\n}}\n",
                advertise = if self.no_advertise {
                    "  no_advertise: true\n"
                } else {
                    ""
                },
                name = quoted(&self.cluster_name),
                port = s.cluster_port,
                routes = routes.join("\n"),
            ));
        }
        conf
    }

    /// Spawns server `i` from its config; output is appended to its log (kept across restarts).
    fn spawn(&self, i: usize) {
        use std::os::unix::process::CommandExt;
        let s = &self.servers[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.log_path())
            .expect("open the nats-server log");
        let mut cmd = Command::new(nats_server_bin().expect("nats-server binary"));
        cmd.arg("-c")
            .arg(s.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. A test
        // process killed by a timeout runs no destructors; the kernel then kills the server.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn nats-server");
        *s.child.lock().unwrap() = Some(child);
    }

    /// Polls until every server answers a JetStream request, and (n > 1) a stream with n
    /// replicas can be created: that needs a meta leader that knows all peers.
    async fn wait_ready(&self, deadline: Instant) -> Result<(), NotReady> {
        let mut clients: Vec<Option<async_nats::Client>> = vec![None; self.servers.len()];
        let mut last = String::from("no probe yet");
        loop {
            if let Some(i) = self.servers.iter().position(Server::exited) {
                let log = fs::read_to_string(self.servers[i].log_path()).unwrap_or_default();
                let port_taken = log.contains("address already in use");
                return Err(NotReady::Exited { i, port_taken });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.probe(&mut clients)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("probe still running at the deadline; before: {last}"),
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut(last));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One readiness probe; `clients` caches connections between probes.
    async fn probe(&self, clients: &mut [Option<async_nats::Client>]) -> Result<(), String> {
        for (i, slot) in clients.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = Some(connect(&self.url(i)).await?);
            }
            let client = slot.as_ref().unwrap();
            // Account info: in a cluster only the meta leader answers it.
            js_api(client, "$JS.API.INFO", "")
                .await
                .map_err(|e| format!("{}: {e}", self.servers[i].name))?;
        }
        let n = self.servers.len();
        if n > 1 {
            let client = clients[0].as_ref().unwrap();
            let config = serde_json::json!({
                "name": "HARNESS_READY",
                "subjects": ["_harness.ready"],
                "storage": "memory",
                "num_replicas": n,
            });
            match js_api(
                client,
                "$JS.API.STREAM.CREATE.HARNESS_READY",
                &config.to_string(),
            )
            .await
            {
                Ok(_) => {}
                // Left over from a probe whose delete failed.
                Err(e) if e.contains("10058") => {}
                Err(e) => return Err(format!("R{n} probe stream: {e}")),
            }
            js_api(client, "$JS.API.STREAM.DELETE.HARNESS_READY", "")
                .await
                .map_err(|e| format!("deleting the probe stream: {e}"))?;
        }
        Ok(())
    }

    /// The client URL of server `i`, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// The client URLs of all servers, in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Kills server `i` with SIGKILL (no clean shutdown) and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again (same ports, store, name) and waits until it accepts clients.
    ///
    /// Kills it first if it still runs. JetStream may need longer (a meta leader election if
    /// the killed server led the meta group): see [`NatsCluster::wait_jetstream`].
    pub async fn restart(&mut self, i: usize) {
        self.servers[i].kill();
        self.spawn(i);
        let deadline = Instant::now() + NATS_READY_WAIT;
        loop {
            if self.servers[i].exited() {
                panic!(
                    "nats-server {} exited on restart (a port may have been taken):\n{}",
                    self.servers[i].name,
                    self.log_tail(i, 40)
                );
            }
            let last = match connect(&self.url(i)).await {
                Ok(_) => return,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "nats-server {} does not accept connections {NATS_READY_WAIT:?} after a restart \
                 ({last}):\n{}",
                self.servers[i].name,
                self.log_tail(i, 40)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until JetStream answers through server `i`; panics after [`NATS_READY_WAIT`].
    ///
    /// In a cluster that means a meta leader is reachable from it, e.g. after a restart.
    pub async fn wait_jetstream(&self, i: usize) {
        let deadline = Instant::now() + NATS_READY_WAIT;
        loop {
            let probe = async {
                let client = connect(&self.url(i)).await?;
                js_api(&client, "$JS.API.INFO", "").await.map(|_| ())
            };
            let last = match tokio::time::timeout(Duration::from_secs(3), probe).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(_) => "probe timed out".to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "JetStream not ready through {} within {NATS_READY_WAIT:?} ({last}):\n{}",
                self.servers[i].name,
                self.log_tail(i, 40)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether server `i` is running (false once killed or exited by itself).
    pub fn is_running(&self, i: usize) -> bool {
        match self.servers[i].child.lock().unwrap().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills every server (SIGKILL); the directories and logs stay until drop.
    pub fn stop_all(&mut self) {
        for s in &self.servers {
            s.kill();
        }
    }

    /// The last `lines` lines of server `i`'s log (stdout and stderr, all its runs).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let bytes = fs::read(self.servers[i].log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log tails of all servers, headed by their names.
    fn all_logs(&self, lines: usize) -> String {
        (0..self.servers.len())
            .map(|i| {
                format!(
                    "--- {} ({}) ---\n{}",
                    self.servers[i].name,
                    self.url(i),
                    self.log_tail(i, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop_all();
        // A failing test shows the servers' side in its captured output.
        if std::thread::panicking() && !self.servers.is_empty() {
            eprintln!("nats harness: server logs\n{}", self.all_logs(20));
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Creates a key-value bucket like async-nats' `create_key_value`, but working on 2.9.
///
/// Same backing stream config; `create_key_value` first calls `query_account`, whose reply
/// async-nats 0.52 cannot decode from nats-server 2.9.
pub async fn create_kv_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    history: i64,
    replicas: usize,
) -> async_nats::jetstream::kv::Store {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    js.create_stream(Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create the stream of KV bucket {bucket}: {e}"));
    js.get_key_value(bucket)
        .await
        .unwrap_or_else(|e| panic!("open KV bucket {bucket}: {e}"))
}

/// `count` distinct free loopback ports: all listeners are held until every port is picked,
/// so the kernel cannot hand out the same port twice.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A config-file string literal (JSON escaping is valid in the NATS config format).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Connects one client, failing fast: for probes, which retry.
async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))
}

/// A raw JetStream API request; `Err` carries the API error (with its code) or the transport
/// error. Raw so that fields async-nats expects but 2.9 does not send cannot break a probe.
async fn js_api(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .map_err(|_| format!("{subject}: no reply within 2 s"))?
    .map_err(|e| format!("{subject}: {e}"))?;
    let value: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("{subject}: undecodable reply: {e}"))?;
    match value.get("error") {
        Some(error) => Err(format!("{subject}: {error}")),
        None => Ok(value),
    }
}

impl NatsCluster {
    /// Like [`NatsCluster::start`] (n > 1), each server with `no_advertise` in its cluster
    /// block: clients are not told the other servers' URLs, so a client only ever
    /// (re)connects to the URLs it was given, as across a network partition (by default a
    /// NATS client that loses its server reconnects to any server the cluster advertised).
    /// Restarts keep the setting.
    pub async fn start_without_advertising(n: usize) -> NatsCluster {
        assert!(n > 1, "a lone server advertises nothing");
        let cluster = NatsCluster::start_with(n, true).await;
        for i in 0..n {
            let client = connect(&cluster.url(i))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let own = format!(":{}", cluster.servers[i].client_port);
            let urls = client.server_info().connect_urls;
            assert!(
                urls.iter().all(|u| u.ends_with(&own)),
                "{} advertises {urls:?} despite no_advertise",
                cluster.servers[i].name
            );
        }
        cluster
    }
}

/// A `cluster:` section parsed as the config file's would be; `extra` adds YAML lines.
pub fn cluster_config(
    servers: &[String],
    prefix: &str,
    replicas: usize,
    extra: &str,
) -> mqtt_broker::config::ClusterConfig {
    let yaml = format!(
        "servers: {}\nprefix: {prefix}\nreplicas: {replicas}\nconnect_timeout: 20s\n{extra}",
        serde_json::to_string(servers).expect("URLs as a YAML list")
    );
    serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("cluster section {yaml:?}: {e}"))
}

/// A broker node named `name` of `cluster` in this process, its admin API on a free
/// loopback port, after `adjust` changed its config.
pub async fn start_node(
    name: &str,
    cluster: mqtt_broker::config::ClusterConfig,
    adjust: impl FnOnce(&mut mqtt_broker::config::Config),
) -> mqtt_broker::BrokerHandle {
    super::log_buffer();
    let node = super::start_broker(|c| {
        c.node_name = Some(name.into());
        c.cluster = Some(cluster);
        c.admin.bind = "127.0.0.1:0".parse().expect("loopback address");
        adjust(c);
    })
    .await;
    assert!(node.is_ready(), "node {name} is not ready after start");
    node
}
