//! Database servers for the tests.
//!
//! [`postgres_url`] and [`mysql_url`] give every test of a test binary the
//! same server: the one the environment names (`DATABASE_URL`,
//! `MYSQL_URL`), else the local default if it answers, else a throwaway
//! server started from the installed binaries once per test binary, in a
//! temporary directory on a free port. A watchdog shell stops that server
//! and removes its directory when the test process ends (statics are never
//! dropped, so nothing in the process could).
//!
//! [`TestServer`] is a private server for one test that must stop, crash or
//! restart it; it is stopped and removed when dropped.
//!
//! Set `ES_TEST_NO_LOCAL_SERVER=1` to skip the local defaults and always
//! start throwaway servers (unless the URL variables are set).

use std::fmt::Write as _;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// Set to `1` to skip the local default servers and start throwaway ones.
pub const NO_LOCAL_SERVER: &str = "ES_TEST_NO_LOCAL_SERVER";

/// How long a server may take to start or stop.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The kinds of server the tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    /// MariaDB (or MySQL through the same URL).
    MySql,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MariaDB",
        }
    }

    /// The variable that names a server to use instead.
    pub fn env_var(self) -> &'static str {
        match self {
            Backend::Postgres => "DATABASE_URL",
            Backend::MySql => "MYSQL_URL",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Backend::Postgres => 5432,
            Backend::MySql => 3306,
        }
    }

    /// The local server used when the variable is not set.
    pub fn default_url(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Backend::MySql => "mysql://root@127.0.0.1:3306/test",
        }
    }

    fn debian_package(self) -> &'static str {
        match self {
            Backend::Postgres => "postgresql",
            Backend::MySql => "mariadb-server",
        }
    }

    fn example_url(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres://user:password@host:5432/database",
            Backend::MySql => "mysql://user:password@host:3306/database",
        }
    }
}

/// The PostgreSQL server of this test binary: `DATABASE_URL`, else
/// postgres://postgres@127.0.0.1:5432/test if it answers, else a throwaway
/// server started for this process.
pub fn postgres_url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    shared_url(&URL, Backend::Postgres)
}

/// The MariaDB/MySQL server of this test binary: `MYSQL_URL`, else
/// mysql://root@127.0.0.1:3306/test if it answers, else a throwaway server
/// started for this process.
pub fn mysql_url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    shared_url(&URL, Backend::MySql)
}

/// Decides once per process; a failure is kept too, so that every test
/// reports it instead of each trying to start a server again.
fn shared_url(cell: &OnceLock<Result<String, String>>, backend: Backend) -> String {
    match cell.get_or_init(|| choose_url(backend)) {
        Ok(url) => url.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn choose_url(backend: Backend) -> Result<String, String> {
    if let Some(url) = std::env::var(backend.env_var())
        .ok()
        .filter(|url| !url.is_empty())
    {
        return Ok(url);
    }
    if !local_probe_disabled() && answers(backend.default_port()) {
        return Ok(backend.default_url().to_owned());
    }
    let server = TestServer::try_new(backend)?;
    let url = server.url();
    // Never dropped: its watchdog stops it when this process ends.
    Box::leak(Box::new(server));
    Ok(url)
}

fn local_probe_disabled() -> bool {
    std::env::var(NO_LOCAL_SERVER).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn answers(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok()
}

/// Panics with what to do when the server at `url` (from [`postgres_url`]
/// or [`mysql_url`]) refused a connection.
pub fn unreachable(backend: Backend, url: &str, error: &dyn std::fmt::Display) -> ! {
    let var = backend.env_var();
    panic!(
        "\n\nThe tests need {name} and could not reach it at {url}: {error}\n\
         Start it, or point {var} at a running server, e.g. {var}={example}\n\
         Without {var}, the tests use {default} if it answers, else start a throwaway server from \
         the installed programs (Debian package `{package}`; {NO_LOCAL_SERVER}=1 skips the local one).\n",
        name = backend.name(),
        example = backend.example_url(),
        default = backend.default_url(),
        package = backend.debian_package(),
    )
}

/// Where the server's programs are.
enum Binaries {
    Postgres {
        bindir: PathBuf,
    },
    MySql {
        install_db: PathBuf,
        server: PathBuf,
    },
}

fn missing(backend: Backend, what: &str) -> String {
    let probe = if local_probe_disabled() {
        format!("{NO_LOCAL_SERVER} is set, so the local default was not tried")
    } else {
        format!("nothing answers at 127.0.0.1:{}", backend.default_port())
    };
    format!(
        "\n\nThe tests need {name}: {var} is not set, {probe}, and {what} is not installed, \
         so no throwaway server can be started.\n\
         Install the server (Debian: `apt-get install {package}`), start one at {default}, \
         or point {var} at one, e.g. {var}={example}\n",
        name = backend.name(),
        var = backend.env_var(),
        package = backend.debian_package(),
        default = backend.default_url(),
        example = backend.example_url(),
    )
}

/// `name` in PATH or in the usual places of server programs (sbin is not
/// in a normal user's PATH).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

fn find_binaries(backend: Backend) -> Result<Binaries, String> {
    match backend {
        Backend::Postgres => {
            let has_server = |dir: &Path| {
                ["initdb", "pg_ctl", "postgres"]
                    .iter()
                    .all(|p| dir.join(p).is_file())
            };
            let from_pg_config = Command::new("pg_config")
                .arg("--bindir")
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            // Debian keeps each major version's programs apart.
            let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    Some((version, entry.path().join("bin")))
                })
                .collect();
            versions.sort();
            let in_path = find_program(&["initdb"]).and_then(|p| p.parent().map(Path::to_owned));
            from_pg_config
                .into_iter()
                .chain(versions.into_iter().rev().map(|(_, dir)| dir))
                .chain(in_path)
                .find(|dir| has_server(dir))
                .map(|bindir| Binaries::Postgres { bindir })
                .ok_or_else(|| missing(backend, "PostgreSQL's server (initdb, pg_ctl, postgres)"))
        }
        Backend::MySql => {
            let install_db = find_program(&["mariadb-install-db", "mysql_install_db"]);
            let server = find_program(&["mariadbd", "mysqld"]);
            match (install_db, server) {
                (Some(install_db), Some(server)) => Ok(Binaries::MySql { install_db, server }),
                _ => Err(missing(
                    backend,
                    "MariaDB's server (mariadb-install-db, mariadbd)",
                )),
            }
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs `future` to completion on a runtime of its own, on a thread of its
/// own, so that blocking code can use sqlx from inside a test's runtime.
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the server helper")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port on 127.0.0.1 for a test server: {e}"))
}

fn process_exists(target: &str) -> bool {
    Command::new("kill")
        .args(["-0", "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn signal(signal: &str, target: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Polls until `done` or the deadline.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {TIMEOUT:?} waiting until {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops the server and removes its directory once the test process is
/// gone. It finds the server's processes, whatever their number and ids
/// (restarts, or `initdb` and `pg_ctl` caught half-way), by the directory in
/// their command lines; it has the directory in its environment, not in its
/// own command line. PostgreSQL gets SIGQUIT (an immediate shutdown that
/// takes down every backend), MariaDB and stragglers after 5 s SIGKILL.
const WATCHDOG: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 1; done
dir=$ES_TEST_SERVER_DIR
signal=$2
sweep() {
    hit=1
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" = "$$" ] && continue
        case $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) in
            *"$dir"*) kill -"$signal" "$pid" 2>/dev/null; hit=0 ;;
        esac
    done
    return $hit
}
rounds=0
while sweep; do
    rounds=$((rounds + 1))
    [ "$rounds" -gt 50 ] && signal=KILL
    sleep 0.1
done
rm -rf "$dir"
"#;

/// A server of its own in a temporary directory, on a free port of
/// 127.0.0.1, with a database `test`. Dropping it stops the server and
/// removes the directory.
pub struct TestServer {
    backend: Backend,
    binaries: Binaries,
    dir: PathBuf,
    port: u16,
    /// The OS user that runs PostgreSQL when the tests run as root (it
    /// refuses to run as root).
    run_as: Option<&'static str>,
    /// The MariaDB server process (PostgreSQL's runs detached, under
    /// `pg_ctl`).
    mysqld: Option<Child>,
    /// More options for the server's command line (MariaDB's `mariadbd`).
    server_args: Vec<String>,
    running: bool,
    watchdog: Option<Child>,
}

impl TestServer {
    /// A private PostgreSQL server, started.
    pub fn postgres() -> TestServer {
        Self::try_new(Backend::Postgres).unwrap_or_else(|message| panic!("{message}"))
    }

    /// A private MariaDB server, started.
    pub fn mysql() -> TestServer {
        Self::try_new(Backend::MySql).unwrap_or_else(|message| panic!("{message}"))
    }

    /// A private MariaDB server started with more options, such as
    /// `--max-allowed-packet=1M`.
    pub fn mysql_with(args: &[&str]) -> TestServer {
        Self::try_new_with(Backend::MySql, args).unwrap_or_else(|message| panic!("{message}"))
    }

    fn try_new(backend: Backend) -> Result<TestServer, String> {
        Self::try_new_with(backend, &[])
    }

    fn try_new_with(backend: Backend, server_args: &[&str]) -> Result<TestServer, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let binaries = find_binaries(backend)?;
        let run_as = (backend == Backend::Postgres && running_as_root()).then_some("postgres");
        if let Some(user) = run_as {
            let exists = Command::new("id")
                .arg(user)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !exists {
                return Err(format!(
                    "\n\nThe tests run as root, PostgreSQL refuses to run as root, and there is no \
                     `{user}` OS user to run a throwaway server as.\n\
                     Install Debian's `postgresql` package (it creates the user), run the tests \
                     as a normal user, or set DATABASE_URL to a running server.\n"
                ));
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = match backend {
            Backend::Postgres => "pg",
            Backend::MySql => "mysql",
        };
        let dir = std::env::temp_dir().join(format!(
            "es-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let port = free_port()?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut server = TestServer {
            backend,
            binaries,
            dir,
            port,
            run_as,
            mysqld: None,
            server_args: server_args.iter().map(|arg| (*arg).to_owned()).collect(),
            running: false,
            watchdog: None,
        };
        // From here on, dropping `server` cleans up.
        if let Some(user) = run_as {
            server.run(
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(&server.dir),
                "chown",
            )?;
        }
        server.spawn_watchdog()?;
        server.initialize()?;
        server.try_start()?;
        server.create_test_database()?;
        Ok(server)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL of its `test` database.
    pub fn url(&self) -> String {
        format!("{}/test", self.server_url())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory: data, socket and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts it again after a stop or a kill, on the same port and data;
    /// returns once it accepts connections.
    pub fn start(&mut self) {
        assert!(!self.running, "the test server is already running");
        self.try_start()
            .unwrap_or_else(|message| panic!("{message}"));
    }

    /// A clean shutdown: PostgreSQL's fast mode (roll back sessions,
    /// checkpoint), MariaDB's normal shutdown (SIGTERM).
    pub fn stop_fast(&mut self) {
        self.try_stop_fast()
            .unwrap_or_else(|message| panic!("{message}"));
    }

    /// A shutdown that writes nothing back, so that the next start recovers
    /// from the log as after a crash: PostgreSQL's immediate mode,
    /// MariaDB's `innodb_fast_shutdown = 2`.
    pub fn stop_immediate(&mut self) {
        self.try_stop_immediate()
            .unwrap_or_else(|message| panic!("{message}"));
    }

    /// SIGKILL to every process of the server; returns when they are gone.
    pub fn kill(&mut self) {
        self.try_kill()
            .unwrap_or_else(|message| panic!("{message}"));
    }

    fn server_url(&self) -> String {
        match self.backend {
            Backend::Postgres => format!("postgres://postgres@127.0.0.1:{}", self.port),
            Backend::MySql => format!("mysql://root@127.0.0.1:{}", self.port),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        match self.backend {
            Backend::Postgres => self.dir.join("postgres.log"),
            Backend::MySql => self.dir.join("mariadbd.log"),
        }
    }

    fn pid_file(&self) -> PathBuf {
        match self.backend {
            Backend::Postgres => self.data_dir().join("postmaster.pid"),
            Backend::MySql => self.dir.join("mariadbd.pid"),
        }
    }

    fn pg_program(&self, name: &str) -> Command {
        let Binaries::Postgres { bindir } = &self.binaries else {
            unreachable!("a PostgreSQL program for a {:?} server", self.backend)
        };
        let mut command = match self.run_as {
            Some(user) => {
                let mut runuser = Command::new("runuser");
                runuser.args(["-u", user, "--"]).arg(bindir.join(name));
                runuser
            }
            None => Command::new(bindir.join(name)),
        };
        // The test's own directory may be closed to the postgres user.
        command.current_dir(&self.dir);
        command
    }

    /// Runs a command to its end; the error has its output and the log's
    /// tail.
    fn run(&self, command: &mut Command, what: &str) -> Result<(), String> {
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.failure(&format!("could not run {what}: {e}")))?;
        if output.status.success() {
            return Ok(());
        }
        Err(self.failure(&format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }

    /// A failure message with the end of the server's log.
    fn failure(&self, what: &str) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let mut message = format!(
            "\n\nThe throwaway {} server in {} (port {}): {what}\n",
            self.backend.name(),
            self.dir.display(),
            self.port
        );
        if !lines.is_empty() {
            let _ = writeln!(message, "The end of {}:", self.log_file().display());
            for line in &lines[lines.len().saturating_sub(20)..] {
                let _ = writeln!(message, "    {line}");
            }
        }
        let _ = writeln!(
            message,
            "Fix the installation, or set {} to a running server.",
            self.backend.env_var()
        );
        message
    }

    fn spawn_watchdog(&mut self) -> Result<(), String> {
        let signal = match self.backend {
            // immediate shutdown: it takes every server process down
            Backend::Postgres => "QUIT",
            Backend::MySql => "KILL",
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("es-test-server-watchdog")
            .arg(std::process::id().to_string())
            .arg(signal)
            .env("ES_TEST_SERVER_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| self.failure(&format!("could not start its watchdog (sh): {e}")))?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn initialize(&mut self) -> Result<(), String> {
        match &self.binaries {
            Binaries::Postgres { .. } => {
                let mut initdb = self.pg_program("initdb");
                initdb
                    .arg("-D")
                    .arg(self.data_dir())
                    .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
                    .args(["--locale=C", "--no-sync", "--no-instructions"]);
                self.run(&mut initdb, "initdb")
            }
            Binaries::MySql { install_db, .. } => {
                let mut install = Command::new(install_db);
                install
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data_dir().display()))
                    .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
                if running_as_root() {
                    install.arg("--user=root");
                }
                self.run(&mut install, "mariadb-install-db")
            }
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        match &self.binaries {
            Binaries::Postgres { .. } => {
                let options = format!(
                    "-p {} -k '{}' -c listen_addresses=127.0.0.1",
                    self.port,
                    self.dir.display()
                );
                let mut pg_ctl = self.pg_program("pg_ctl");
                pg_ctl
                    .arg("-D")
                    .arg(self.data_dir())
                    .arg("-l")
                    .arg(self.log_file())
                    .args(["-w", "-t", &TIMEOUT.as_secs().to_string(), "-o", &options])
                    .arg("start");
                self.run(&mut pg_ctl, "pg_ctl start")?;
            }
            Binaries::MySql { server, .. } => {
                let mut mysqld = Command::new(server);
                mysqld
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data_dir().display()))
                    .arg(format!(
                        "--socket={}",
                        self.dir.join("mariadbd.sock").display()
                    ))
                    .arg(format!("--pid-file={}", self.pid_file().display()))
                    .arg(format!("--log-error={}", self.log_file().display()))
                    .arg(format!("--tmpdir={}", self.dir.display()))
                    .arg(format!("--port={}", self.port))
                    .arg("--bind-address=127.0.0.1")
                    .args(&self.server_args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if running_as_root() {
                    mysqld.arg("--user=root");
                }
                let child = mysqld.spawn().map_err(|e| {
                    self.failure(&format!("could not run {}: {e}", server.display()))
                })?;
                self.mysqld = Some(child);
            }
        }
        self.running = true;
        self.wait_until_accepting()
    }

    /// Polls a real connection until one succeeds, the server process dies
    /// or the deadline passes.
    fn wait_until_accepting(&mut self) -> Result<(), String> {
        let backend = self.backend;
        let url = match backend {
            Backend::Postgres => format!("{}/postgres", self.server_url()),
            Backend::MySql => self.server_url(),
        };
        let mysqld = &mut self.mysqld;
        let outcome = block_on(async move {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let error = match connect_and_run(backend, &url, "SELECT 1").await {
                    Ok(()) => return Ok(()),
                    Err(error) => error,
                };
                if let Some(child) = mysqld.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!("the server exited ({status}) while starting"));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "it did not accept connections within {TIMEOUT:?}: {error}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        outcome.map_err(|what| {
            if let Some(child) = self.mysqld.as_mut()
                && !child.try_wait().is_ok_and(|status| status.is_none())
            {
                self.mysqld = None;
                self.running = false;
            }
            self.failure(&what)
        })
    }

    fn create_test_database(&mut self) -> Result<(), String> {
        let (url, sql) = match self.backend {
            Backend::Postgres => (
                format!("{}/postgres", self.server_url()),
                "CREATE DATABASE test",
            ),
            Backend::MySql => (self.server_url(), "CREATE DATABASE IF NOT EXISTS test"),
        };
        let backend = self.backend;
        block_on(connect_and_run(backend, &url, sql))
            .map_err(|e| self.failure(&format!("could not create the database `test`: {e}")))
    }

    fn try_stop_fast(&mut self) -> Result<(), String> {
        assert!(self.running, "the test server is not running");
        match self.backend {
            Backend::Postgres => self.pg_ctl_stop("fast")?,
            Backend::MySql => {
                let pid = self.mysqld_pid();
                signal("TERM", &pid);
                self.wait_for_mysqld("a normal shutdown (SIGTERM)")?;
            }
        }
        self.running = false;
        Ok(())
    }

    fn try_stop_immediate(&mut self) -> Result<(), String> {
        assert!(self.running, "the test server is not running");
        match self.backend {
            Backend::Postgres => self.pg_ctl_stop("immediate")?,
            Backend::MySql => {
                // The connection may or may not see SHUTDOWN answer.
                let url = self.server_url();
                let shut = block_on(async move {
                    let mut conn = sqlx::MySqlConnection::connect(&url)
                        .await
                        .map_err(|e| e.to_string())?;
                    sqlx::raw_sql("SET GLOBAL innodb_fast_shutdown = 2")
                        .execute(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = sqlx::raw_sql("SHUTDOWN").execute(&mut conn).await;
                    Ok::<(), String>(())
                });
                shut.map_err(|e| self.failure(&format!("could not ask for a shutdown: {e}")))?;
                self.wait_for_mysqld("SHUTDOWN with innodb_fast_shutdown = 2")?;
            }
        }
        self.running = false;
        Ok(())
    }

    fn try_kill(&mut self) -> Result<(), String> {
        assert!(self.running, "the test server is not running");
        match self.backend {
            Backend::Postgres => {
                // pg_ctl starts the postmaster in a session of its own, so
                // its process group is every server process.
                let pid = std::fs::read_to_string(self.pid_file())
                    .ok()
                    .and_then(|s| s.lines().next().map(str::to_owned))
                    .ok_or_else(|| self.failure("no postmaster.pid to find the server by"))?;
                let group = format!("-{pid}");
                let target = if signal("KILL", &group) {
                    group
                } else {
                    signal("KILL", &pid);
                    pid
                };
                wait_until("the killed PostgreSQL processes are gone", || {
                    !process_exists(&target)
                })
                .map_err(|e| self.failure(&e))?;
            }
            Backend::MySql => {
                if let Some(child) = self.mysqld.as_mut() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                self.mysqld = None;
            }
        }
        self.running = false;
        Ok(())
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), String> {
        let mut pg_ctl = self.pg_program("pg_ctl");
        pg_ctl.arg("-D").arg(self.data_dir()).args([
            "-m",
            mode,
            "-w",
            "-t",
            &TIMEOUT.as_secs().to_string(),
            "stop",
        ]);
        self.run(&mut pg_ctl, &format!("pg_ctl stop -m {mode}"))
    }

    fn mysqld_pid(&self) -> String {
        self.mysqld
            .as_ref()
            .map(|child| child.id().to_string())
            .expect("a running MariaDB test server has a process")
    }

    /// Waits for the MariaDB process to exit.
    fn wait_for_mysqld(&mut self, what: &str) -> Result<(), String> {
        let mut child = self.mysqld.take().expect("a MariaDB server process");
        let exited = wait_until(&format!("MariaDB exits after {what}"), || {
            child.try_wait().is_ok_and(|status| status.is_some())
        });
        if let Err(e) = exited {
            let _ = child.kill();
            let _ = child.wait();
            return Err(self.failure(&e));
        }
        Ok(())
    }
}

async fn connect_and_run(backend: Backend, url: &str, sql: &'static str) -> Result<(), String> {
    match backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            let done = sqlx::raw_sql(sql).execute(&mut conn).await;
            conn.close().await.ok();
            done.map(drop).map_err(|e| e.to_string())
        }
        Backend::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            let done = sqlx::raw_sql(sql).execute(&mut conn).await;
            conn.close().await.ok();
            done.map(drop).map_err(|e| e.to_string())
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if self.running {
            let stopped = match self.backend {
                Backend::Postgres => self.pg_ctl_stop("immediate"),
                Backend::MySql => self.try_kill(),
            };
            if let Err(message) = stopped {
                eprintln!("stopping the test server: {message}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "could not remove the test server's directory {}: {e}; remove it by hand",
                self.dir.display()
            );
        }
    }
}
