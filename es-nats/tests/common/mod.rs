//! NATS for the tests: the server (`NATS_URL`, else nats://127.0.0.1:4222
//! if it answers, else a throwaway one started for this test binary), and
//! private servers for tests that kill or restart theirs.
#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The default server.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The NATS server of this test binary.
pub fn nats_url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    match URL.get_or_init(choose_url) {
        Ok(url) => url.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn choose_url() -> Result<String, String> {
    if let Some(url) = std::env::var("NATS_URL").ok().filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    if answers(4222) {
        return Ok(DEFAULT_URL.to_owned());
    }
    let server = NatsServer::try_start(true)?;
    let url = server.url();
    // Never dropped: its watchdog stops it when this process ends.
    Box::leak(Box::new(server));
    Ok(url)
}

fn answers(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok()
}

fn missing() -> String {
    "\n\nThe NATS tests need nats-server with JetStream: nothing answers at nats://127.0.0.1:4222 \
     and NATS_URL is not set, and no nats-server program was found to start a throwaway one.\n\
     Install it (Debian: `apt-get install nats-server`), start one (`nats-server -js -sd /tmp/nats`), \
     run `.ci/run` (which does both), or point NATS_URL at a server with JetStream, e.g. \
     NATS_URL=nats://host:4222 cargo test --workspace --all-features\n"
        .to_owned()
}

/// Connects, saying what to do when nothing answers.
pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "\n\nThe NATS tests could not reach nats-server at {url}: {e}\n\
                 Start it with JetStream (`nats-server -js -sd /tmp/nats`, or `.ci/run`), \
                 or point NATS_URL at one.\n"
            )
        })
}

/// Connects to a server that may not be up yet (a private one being
/// restarted): retries until it is.
pub async fn connect_retrying(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .expect("connect")
}

fn program() -> Option<PathBuf> {
    let candidates = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ];
    if let Some(found) = candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
        return Some(found);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.exists())
    })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A nats-server of its own, in a temporary directory on a free port,
/// killed and removed when dropped (and, for the shared throwaway one,
/// when the test process ends).
pub struct NatsServer {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    jetstream: bool,
    child: Option<Child>,
    watchdog: Option<Child>,
}

impl NatsServer {
    /// A private server with JetStream, started.
    pub fn start() -> NatsServer {
        Self::try_start(true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A private server without JetStream, started.
    pub fn without_jetstream() -> NatsServer {
        Self::try_start(false).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(jetstream: bool) -> Result<NatsServer, String> {
        let program = program().ok_or_else(missing)?;
        let dir =
            std::env::temp_dir().join(format!("es-nats-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = NatsServer {
            program,
            dir,
            port: free_port(),
            jetstream,
            child: None,
            watchdog: None,
        };
        server.spawn()?;
        // Stops the server and removes its directory when this process
        // ends, however it ends.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
                 kill -KILL \"$(cat '{dir}/pid')\" 2>/dev/null; rm -rf '{dir}'",
                parent = std::process::id(),
                dir = server.dir.display(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("watchdog: {e}"))?;
        server.watchdog = Some(watchdog);
        Ok(server)
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join("js")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.program);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            command.arg("-js");
        }
        command.arg("-sd").arg(self.store_dir());
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", self.program.display()))?;
        // the watchdog kills it by this pid
        std::fs::write(self.dir.join("pid"), child.id().to_string()).map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers(self.port) {
            if Instant::now() > deadline {
                return Err(format!("nats-server did not come up: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// nats://127.0.0.1:<port>.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server the way a restart does (SIGTERM: it finishes
    /// writing what it acknowledged) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            child.wait().expect("wait for nats-server");
        }
    }

    /// Starts it again, on the same port and store.
    pub fn restart(&mut self) {
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A name no other test (or engineer) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple()).to_uppercase()
}
