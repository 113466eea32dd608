//! A real PostgreSQL server for tests: Debian's `postgresql` package, run from its own bin folder
//! (`/usr/lib/postgresql/<N>/bin`, the highest `N` installed) in a fresh temporary folder, on a
//! free loopback port, with trust authentication for the role `mcp`. Each test makes its own
//! database with `create_database`, so tests sharing a server do not see each other's rows.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI does), `initdb`, `pg_ctl`
//! and so the server itself run as the `postgres` user the Debian package creates, and the
//! temporary folder is given to that user; otherwise they run as the current user.
//!
//! A missing PostgreSQL is a failure, never a skip: `scripts/test` installs it.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where Debian's packages put each major version's programs.
const DEBIAN_POSTGRESQL: &str = "/usr/lib/postgresql";

/// How many free ports `start` tries: between finding a port free and the server binding it,
/// another test may take it.
const PORT_ATTEMPTS: usize = 5;

/// A running PostgreSQL server; stopped (immediate mode) and its folder removed when dropped.
pub struct PostgresServer {
    bin: PathBuf,
    /// Holds `data/` (the cluster), `postgres.log` and the server's Unix socket.
    dir: tempfile::TempDir,
    port: u16,
    /// `Some((uid, gid))` of the `postgres` user when the tests run as root.
    run_as: Option<(u32, u32)>,
}

impl PostgresServer {
    /// Makes a cluster in a fresh temporary folder and starts it on a free loopback port;
    /// returns once it accepts connections.
    pub fn start() -> PostgresServer {
        let bin = bin_dir();
        let run_as = if is_root() {
            Some(postgres_user())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("mcp-pg-")
            .tempdir()
            .expect("a temporary folder for PostgreSQL");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("the temporary folder is given to the postgres user");
        }
        let mut server = PostgresServer {
            bin,
            dir,
            port: 0,
            run_as,
        };
        let initdb = server
            .command("initdb")
            .args(["--auth=trust", "-U", "mcp", "--no-sync", "-E", "UTF8"])
            // The C locale: the machine's locale may not be generated, and tests want the same
            // collation everywhere.
            .arg("--locale=C")
            .arg("-D")
            .arg(server.data_dir())
            .output();
        check("initdb", initdb);

        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            let output = server.pg_ctl_start();
            if output.status.success() {
                return server;
            }
            let log = server.log();
            if attempt < PORT_ATTEMPTS && log.contains("could not bind") {
                continue;
            }
            panic!(
                "pg_ctl start failed on port {}: {}\n{}\nserver log:\n{log}",
                server.port,
                output.status,
                String::from_utf8_lossy(&output.stderr),
            );
        }
        unreachable!()
    }

    /// `postgres://mcp@127.0.0.1:PORT/postgres`: the server's default database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// Creates the database `name` (owned by `mcp`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name:?}: a database name for tests is lowercase letters, digits and _"
        );
        let output = client(&self.bin, "createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "mcp"])
            .arg(name)
            .output();
        check(&format!("createdb {name}"), output);
        self.database_url(name)
    }

    /// Stops the server (fast mode: open connections are closed); returns once it has stopped.
    pub fn stop(&self) {
        let output = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.data_dir())
            .arg("stop")
            .output();
        check("pg_ctl stop", output);
    }

    /// Starts the stopped server again, on the same data folder and port; returns once it
    /// accepts connections.
    pub fn start_again(&self) {
        let output = self.pg_ctl_start();
        if !output.status.success() {
            panic!(
                "pg_ctl start (again) failed on port {}: {}\n{}\nserver log:\n{}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.log(),
            );
        }
    }

    /// The port the server listens on, at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server has logged so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn database_url(&self, name: &str) -> String {
        format!("postgres://mcp@127.0.0.1:{}/{name}", self.port)
    }

    /// The cluster's folder (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pg_ctl start`, waiting (`-w`) until the server accepts connections. Its output goes to
    /// `postgres.log`, so the server holds none of this process's pipes open.
    fn pg_ctl_start(&self) -> Output {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display(),
        );
        self.command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .arg("-o")
            .arg(options)
            .arg("start")
            .output()
            .expect("pg_ctl runs")
    }

    /// A server program (`initdb`, `pg_ctl`), run as the `postgres` user when this process is
    /// root, in the temporary folder.
    fn command(&self, program: &str) -> Command {
        let mut command = client(&self.bin, program);
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            // std drops the supplementary groups too when root sets a uid.
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Immediate: nothing is kept. It fails when the server is already stopped; that is fine.
        // The folder (a TempDir) is removed after this.
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-m", "immediate", "-D"])
            .arg(self.data_dir())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `/usr/lib/postgresql/<N>/bin` for the highest major version `N` that has `initdb`.
fn bin_dir() -> PathBuf {
    let versions = std::fs::read_dir(DEBIAN_POSTGRESQL)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        });
    match versions.max_by_key(|(version, _)| *version) {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed: no {DEBIAN_POSTGRESQL}/<version>/bin/initdb. \
             Install Debian's `postgresql` package (scripts/test does: \
             apt-get install postgresql)."
        ),
    }
}

/// A program of the bin folder, with none of libpq's environment variables that could point it
/// elsewhere.
fn client(bin: &Path, program: &str) -> Command {
    let mut command = Command::new(bin.join(program));
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGDATA",
        "PGSSLMODE",
    ] {
        command.env_remove(var);
    }
    command
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` user Debian's package creates.
fn postgres_user() -> (u32, u32) {
    let output = Command::new("getent")
        .args(["passwd", "postgres"])
        .output()
        .expect("getent runs");
    let entry = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = entry.trim().split(':').collect();
    match (output.status.success(), fields.get(2), fields.get(3)) {
        (true, Some(uid), Some(gid)) => (
            uid.parse().expect("a numeric uid"),
            gid.parse().expect("a numeric gid"),
        ),
        _ => panic!(
            "the tests run as root and PostgreSQL refuses to, but there is no `postgres` user \
             to run it as (Debian's `postgresql` package creates one)"
        ),
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Panics with the program's output unless it ran and succeeded.
fn check(what: &str, output: std::io::Result<Output>) {
    let output = output.unwrap_or_else(|error| panic!("{what} did not run: {error}"));
    if !output.status.success() {
        panic!(
            "{what} failed: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}
