//! Child processes that cannot outlive the test binary.
//!
//! libtest ends a test binary with `process::exit`, which skips destructors of
//! statics, and a panic or a signal may end it anywhere. So every child is
//! (1) spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so the
//! kernel kills it when the test process dies for any reason, and
//! (2) registered with an `atexit` hook that kills it and removes the bed's
//! working directory on a normal exit.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A child process with its combined output captured in a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// The last `max` bytes of the child's output, for error messages.
    pub fn log_tail(&self, max: u64) -> String {
        log_tail(&self.log, max)
    }

    /// Fails with the child's output when it has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "{} exited early with {status}; its output ends with:\n{}",
                self.name,
                self.log_tail(4000)
            )),
            Ok(None) => Ok(()),
            Err(e) => Err(format!("waiting on {}: {e}", self.name)),
        }
    }
}

pub fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

struct Registry {
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    dirs: Vec::new(),
});

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The thread that forks every child: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked exits, so it must be one that lives as long as the
/// process, not a test thread.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep the thread (and so the children's death signal) alive.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the testbed spawner thread");
        // SAFETY: registering a plain `extern "C"` function with atexit.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
        Mutex::new(tx)
    })
}

extern "C" fn cleanup_at_exit() {
    let Ok(reg) = REGISTRY.lock() else { return };
    for pid in &reg.pids {
        // SAFETY: sending a signal to a child we started.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    for dir in &reg.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes `dir` when the test process exits normally.
pub fn remove_at_exit(dir: &Path) {
    spawner();
    if let Ok(mut reg) = REGISTRY.lock() {
        reg.dirs.push(dir.to_path_buf());
    }
}

/// Starts `cmd` with stdout and stderr going to `<log_dir>/<name>.log`.
pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc, String> {
    let log = log_dir.join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cloning log handle: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| "spawner lock poisoned".to_string())?
        .send((cmd, tx))
        .map_err(|_| "spawner thread is gone".to_string())?;
    let child = rx
        .recv()
        .map_err(|_| "spawner thread is gone".to_string())?
        .map_err(|e| format!("starting {name}: {e}"))?;
    if let Ok(mut reg) = REGISTRY.lock() {
        reg.pids.push(child.id() as i32);
    }
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
    })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Polls `ready` every 200 ms until it returns `Ok(true)`, the child dies, or
/// `timeout` passes; errors carry the child's output.
pub fn wait_until(
    proc: &mut Proc,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        proc.check_alive()?;
        if ready() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{} was not {what} after {timeout:?}; its output ends with:\n{}",
                proc.name,
                proc.log_tail(4000)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
