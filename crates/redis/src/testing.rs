//! A private `redis-server` for tests, benchmarks and demos (feature
//! `test-util`).
//!
//! [`RedisServer::start`] runs `redis-server` from `PATH` on a free loopback
//! port with persistence off (`--save ""`, `--appendonly no`), waits until it
//! answers `PING`, and stops it when the handle is dropped. Nothing relies on a
//! system service, and a missing `redis-server` is an error that says how to
//! install it: the tests that need Redis fail with that message rather than
//! being skipped.
//!
//! ```no_run
//! use heijunka_redis::testing::RedisServer;
//!
//! let mut server = RedisServer::start()?;
//! println!("redis at {}", server.url());
//! server.kill(); // an outage...
//! server.restart()?; // ...and the same port back, empty
//! # Ok::<(), heijunka_redis::testing::StartError>(())
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`RedisServer::start`] waits for the server to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Why a `redis-server` could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `redis-server` is not on `PATH`.
    #[error(
        "`redis-server` was not found on PATH ({0}): install it (Debian/Ubuntu: `apt-get install -y redis-server`; \
         `.ci/run` does this on a fresh machine). The Redis tests need a real server and do not skip."
    )]
    NotInstalled(std::io::Error),
    /// It started but did not answer `PING` on its port in time.
    #[error("`redis-server` on port {port} did not answer PING within {within:?}: {detail}")]
    NotReady {
        /// The port it was given.
        port: u16,
        /// How long it was given.
        within: Duration,
        /// What went wrong last (the exit status, or the connection error).
        detail: String,
    },
    /// No free loopback port.
    #[error("no free loopback port: {0}")]
    NoPort(std::io::Error),
}

/// A `redis-server` process of this test's own, on a loopback port; killed when
/// dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`StartError::NotInstalled`] if `redis-server` is not on `PATH`,
    /// [`StartError::NotReady`] if it does not come up (after trying three
    /// ports, in case another process took the free one first).
    pub fn start() -> Result<Self, StartError> {
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut server = Self { child: None, port };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ StartError::NotInstalled(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| StartError::NoPort(std::io::Error::other("no attempt made"))))
    }

    /// The server's URL, `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (`SIGKILL`, no shutdown handshake: a crash, as far as
    /// clients can tell) and waits for the process to end. Its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty, after [`kill`](Self::kill)
    /// (kills it first if it still runs).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), without trying other ports: clients hold
    /// this one.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        // The kernel may hold the port briefly after the kill.
        let until = Instant::now() + READY_WITHIN;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e @ StartError::NotInstalled(_)) => return Err(e),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(["--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(StartError::NotInstalled)?;
        self.child = Some(child);
        let until = Instant::now() + READY_WITHIN;
        loop {
            let detail = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => {
                    self.child = None;
                    return Err(StartError::NotReady {
                        port: self.port,
                        within: READY_WITHIN,
                        detail: format!("the server exited with {status}"),
                    });
                }
                _ => match ping(self.port) {
                    Ok(()) => return Ok(()),
                    Err(e) => e.to_string(),
                },
            };
            if Instant::now() >= until {
                self.kill();
                return Err(StartError::NotReady {
                    port: self.port,
                    within: READY_WITHIN,
                    detail,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16, StartError> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(StartError::NoPort)?;
    Ok(listener.local_addr().map_err(StartError::NoPort)?.port())
}

/// Sends `PING` and expects `+PONG`.
fn ping(port: u16) -> std::io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0_u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply)
        )))
    }
}
