//! A real NATS server with JetStream (Debian's `nats-server`, 2.9) on 127.0.0.1 for the fleet
//! audit tests, and reading a stream back. Tests that need it fail, not skip, when the binary
//! is missing: `bash .ci/run` installs it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `nats-server` on the PATH (or in /usr/sbin, where Debian puts it).
pub fn binary() -> Result<PathBuf, String> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    from_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            "nats-server is missing: apt-get install nats-server (bash .ci/run installs it)".into()
        })
}

/// One `nats-server -js` process, killed (by its pid) when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    log: PathBuf,
    /// Its cluster's arguments, kept for a restart.
    extra: Vec<String>,
}

impl NatsServer {
    /// Start on a free port with JetStream storing under `store`.
    pub fn start(store: &Path) -> Result<Self, String> {
        Self::start_on(store, crate::envoy::free_port())
    }

    /// Start on `port` (a restart keeps the port and the store).
    pub fn start_on(store: &Path, port: u16) -> Result<Self, String> {
        Self::spawn(store, port, Vec::new())
    }

    /// Start on `port` with more command-line arguments (a cluster's).
    fn spawn(store: &Path, port: u16, extra: Vec<String>) -> Result<Self, String> {
        std::fs::create_dir_all(store).map_err(|e| e.to_string())?;
        let log = store.join(format!("nats-{port}.log"));
        let child = Command::new(binary()?)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .arg("-l")
            .arg(&log)
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nats-server: {e}"))?;
        let mut server = NatsServer {
            child: Some(child),
            port,
            store: store.to_path_buf(),
            log,
            extra,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(c) = server.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!(
                    "nats-server exited ({status}):\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                ));
            }
            if Instant::now() > until {
                return Err("nats-server did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL) and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and store.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let again = Self::spawn(&self.store, self.port, self.extra.clone())?;
        *self = again;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of `nats-server` processes on 127.0.0.1 (each with its own store and
/// routes to the others), as a fleet runs one: streams with several replicas, RAFT between the
/// nodes, a node that dies leaving the others serving.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// `size` nodes storing under `dir/node-N`; returns once each listens for clients (the
    /// cluster elects its JetStream leader soon after: clients retry until it has).
    pub fn start(dir: &Path, size: usize) -> Result<Self, String> {
        let client_ports: Vec<u16> = (0..size).map(|_| crate::envoy::free_port()).collect();
        let route_ports: Vec<u16> = (0..size).map(|_| crate::envoy::free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(size);
        for (i, (&port, &route)) in client_ports.iter().zip(&route_ports).enumerate() {
            let extra = vec![
                "-n".to_string(),
                format!("node-{i}"),
                "--cluster_name".to_string(),
                "arbiter-fleet".to_string(),
                "--cluster".to_string(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_string(),
                routes.clone(),
            ];
            nodes.push(NatsServer::spawn(
                &dir.join(format!("node-{i}")),
                port,
                extra,
            )?);
        }
        Ok(NatsCluster { nodes })
    }

    /// The URLs of the nodes running, comma-separated (as `--decision-log-nats` takes them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub use arbiter_ext_authz::decision_log::nats::Stored;

/// Every message of `stream`, in sequence order.
pub async fn read_stream(url: &str, stream: &str) -> Result<Vec<Stored>, String> {
    let config = arbiter_ext_authz::decision_log::NatsConfig::new(url, "unused");
    arbiter_ext_authz::decision_log::nats::read_stream_async(&config, stream).await
}
