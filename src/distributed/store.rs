//! The rendezvous: a small key-value store every rank reaches, through which rank 0 hands out NCCL's unique id
//! (and later the training jobs) and a failing rank tells the others.
//!
//! Two kinds, both with "set a key" and "wait for a key": a TCP store that rank 0 serves on
//! `MASTER_ADDR:port` (the default; [`super::Launch::store_port`] says which port), and a directory on storage
//! every node mounts (`file:DIR`), for clusters whose nodes cannot open ports to each other. A value once set is
//! never changed, so a reader that saw a key can rely on it.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::error::DistributedError;

/// A key-value store shared by the ranks.
pub trait Store: Send + Sync {
    /// Sets `key` to `value`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), DistributedError>;

    /// The value of `key`, waiting up to `timeout` for some rank to set it; `None` when none did.
    fn wait(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, DistributedError>;

    /// Where the store is, for messages.
    fn location(&self) -> String;

    /// The value of `key`, waiting up to `timeout`; that no rank set it in time is an error.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, DistributedError> {
        self.wait(key, timeout)?.ok_or_else(|| {
            DistributedError::rendezvous(
                self.location(),
                format!("no rank set {key:?} within {}s", timeout.as_secs()),
            )
        })
    }
}

/// Which rendezvous a data-parallel run uses (`--rendezvous`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Rendezvous {
    /// Rank 0 serves a TCP store on `MASTER_ADDR`.
    #[default]
    Tcp,
    /// Files under this directory (on shared storage), in a subdirectory named by the job id.
    File(PathBuf),
}

impl FromStr for Rendezvous {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "tcp" => Ok(Self::Tcp),
            other => match other.strip_prefix("file:") {
                Some(dir) if !dir.is_empty() => Ok(Self::File(PathBuf::from(dir))),
                _ => Err(format!("{other:?}: expected tcp or file:DIR")),
            },
        }
    }
}

impl fmt::Display for Rendezvous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::File(dir) => write!(f, "file:{}", dir.display()),
        }
    }
}

const SET: u8 = b'S';
const GET: u8 = b'G';
const FOUND: u8 = b'F';
const MISSING: u8 = b'M';
const DONE: u8 = b'K';

/// The keys and values rank 0 serves.
#[derive(Default)]
struct Table {
    values: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
}

/// A TCP store's server: a thread that accepts connections for as long as the process lives, one thread per
/// connection.
pub struct TcpStoreServer {
    address: std::net::SocketAddr,
}

impl TcpStoreServer {
    /// Listens on `address` (`0.0.0.0:PORT` on rank 0; port 0 picks a free one).
    pub fn start(address: impl ToSocketAddrs + fmt::Debug) -> Result<Self, DistributedError> {
        let at = format!("{address:?}");
        let listener = TcpListener::bind(address).map_err(|e| {
            DistributedError::rendezvous(
                &at,
                format!("cannot listen: {e} (is the port in use? set UMRANK_STORE_PORT)"),
            )
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| DistributedError::rendezvous(&at, e))?;
        let table = Arc::new(Table::default());
        std::thread::Builder::new()
            .name("umrank-store".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let table = Arc::clone(&table);
                    // A connection that breaks ends its own thread; the server goes on serving the others.
                    let _ = std::thread::Builder::new()
                        .name("umrank-store-conn".into())
                        .spawn(move || serve_connection(stream, &table));
                }
            })
            .map_err(|e| DistributedError::rendezvous(&at, e))?;
        Ok(Self { address: bound })
    }

    /// Where it listens.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }
}

fn serve_connection(mut stream: TcpStream, table: &Table) -> std::io::Result<()> {
    loop {
        let mut op = [0u8; 1];
        if stream.read(&mut op)? == 0 {
            return Ok(());
        }
        let key = String::from_utf8_lossy(&read_frame(&mut stream)?).into_owned();
        match op[0] {
            SET => {
                let value = read_frame(&mut stream)?;
                let mut values = table
                    .values
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                values.insert(key, value);
                table.changed.notify_all();
                drop(values);
                stream.write_all(&[DONE])?;
            }
            GET => {
                let mut millis = [0u8; 8];
                stream.read_exact(&mut millis)?;
                let deadline = Instant::now() + Duration::from_millis(u64::from_le_bytes(millis));
                let mut values = table
                    .values
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                loop {
                    if let Some(value) = values.get(&key) {
                        let value = value.clone();
                        drop(values);
                        stream.write_all(&[FOUND])?;
                        write_frame(&mut stream, &value)?;
                        break;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        drop(values);
                        stream.write_all(&[MISSING])?;
                        break;
                    }
                    values = table
                        .changed
                        .wait_timeout(values, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
            _ => {
                stream.shutdown(Shutdown::Both)?;
                return Ok(());
            }
        }
    }
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_frame(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(bytes.len() as u64).to_le_bytes())?;
    stream.write_all(bytes)
}

/// A client of a [`TcpStoreServer`]. Requests go one at a time over one connection.
pub struct TcpStore {
    at: String,
    stream: Mutex<TcpStream>,
}

impl TcpStore {
    /// Connects to `host:port`, retrying until `timeout` (rank 0 may not be listening yet).
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self, DistributedError> {
        let at = format!("{host}:{port}");
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect((host, port)) {
                Ok(stream) => {
                    stream
                        .set_nodelay(true)
                        .map_err(|e| DistributedError::rendezvous(&at, e))?;
                    return Ok(Self {
                        at,
                        stream: Mutex::new(stream),
                    });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(DistributedError::rendezvous(
                        &at,
                        format!(
                            "cannot connect within {}s: {e} (has rank 0 started?)",
                            timeout.as_secs()
                        ),
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn request(
        &self,
        what: impl FnOnce(&mut TcpStream) -> std::io::Result<Option<Vec<u8>>>,
    ) -> Result<Option<Vec<u8>>, DistributedError> {
        let mut stream = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        what(&mut stream).map_err(|e| {
            DistributedError::rendezvous(
                &self.at,
                format!("{e} (the store is served by rank 0: has it stopped?)"),
            )
        })
    }
}

impl Store for TcpStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), DistributedError> {
        self.request(|stream| {
            stream.write_all(&[SET])?;
            write_frame(stream, key.as_bytes())?;
            write_frame(stream, value)?;
            let mut reply = [0u8; 1];
            stream.read_exact(&mut reply)?;
            Ok(None)
        })
        .map(drop)
    }

    fn location(&self) -> String {
        self.at.clone()
    }

    fn wait(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, DistributedError> {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.request(|stream| {
            stream.write_all(&[GET])?;
            write_frame(stream, key.as_bytes())?;
            stream.write_all(&millis.to_le_bytes())?;
            let mut reply = [0u8; 1];
            stream.read_exact(&mut reply)?;
            match reply[0] {
                FOUND => read_frame(stream).map(Some),
                _ => Ok(None),
            }
        })
    }
}

/// A store in a directory on shared storage: a key is a file, written under a temporary name and renamed into
/// place, so a reader sees the whole value or nothing.
pub struct FileStore {
    dir: PathBuf,
    rank: usize,
}

impl FileStore {
    /// The store of job `job_id` under `root` (`root/job_id/`), as seen by `rank`.
    pub fn new(root: &Path, job_id: &str, rank: usize) -> Result<Self, DistributedError> {
        let dir = root.join(sanitize(job_id));
        std::fs::create_dir_all(&dir)
            .map_err(|e| DistributedError::rendezvous(dir.display(), e))?;
        Ok(Self { dir, rank })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(sanitize(key))
    }
}

/// A key as one file name: characters other than ASCII letters, digits, `-`, `_` and `.` become `_`.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Store for FileStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), DistributedError> {
        let path = self.path(key);
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", sanitize(key), self.rank));
        std::fs::write(&tmp, value)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| DistributedError::rendezvous(path.display(), e))
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn wait(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, DistributedError> {
        let path = self.path(key);
        let deadline = Instant::now() + timeout;
        loop {
            match std::fs::read(&path) {
                Ok(value) => return Ok(Some(value)),
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DistributedError::rendezvous(path.display(), e))
                }
                Err(_) if Instant::now() >= deadline => return Ok(None),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// Starts serving the store of `launch` if the rendezvous needs a server (TCP, on rank 0: every interface, the
/// store port); call it on rank 0 before [`connect`].
pub fn serve(rendezvous: &Rendezvous, launch: &super::Launch) -> Result<(), DistributedError> {
    match rendezvous {
        Rendezvous::Tcp => {
            let (_, port) = launch.store_address()?;
            TcpStoreServer::start(("0.0.0.0", port)).map(drop)
        }
        Rendezvous::File(_) => Ok(()),
    }
}

/// A connection to the store of `launch`: for TCP, to `MASTER_ADDR` (rank 0 too), retrying until `timeout`;
/// for files, the directory `DIR/<job id>`.
pub fn connect(
    rendezvous: &Rendezvous,
    launch: &super::Launch,
    timeout: Duration,
) -> Result<Box<dyn Store>, DistributedError> {
    match rendezvous {
        Rendezvous::Tcp => {
            let (host, port) = launch.store_address()?;
            Ok(Box::new(TcpStore::connect(&host, port, timeout)?))
        }
        Rendezvous::File(root) => {
            let job = launch.job_id.as_deref().ok_or_else(|| {
                DistributedError::Launch(
                    "a file rendezvous needs a job id to keep jobs apart: set UMRANK_RUN_ID (torchrun and Slurm \
                     set TORCHELASTIC_RUN_ID and SLURM_JOB_ID)"
                        .into(),
                )
            })?;
            Ok(Box::new(FileStore::new(root, job, launch.rank)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(stores: Vec<Box<dyn Store>>) {
        std::thread::scope(|scope| {
            for (rank, store) in stores.iter().enumerate() {
                scope.spawn(move || {
                    store
                        .set(&format!("hello/{rank}"), format!("from {rank}").as_bytes())
                        .unwrap();
                    for other in 0..3 {
                        let got = store
                            .get(&format!("hello/{other}"), Duration::from_secs(10))
                            .unwrap();
                        assert_eq!(got, format!("from {other}").into_bytes());
                    }
                });
            }
        });
        let missing = stores[0]
            .get("never", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("never"), "{missing}");
    }

    #[test]
    fn tcp_store_on_localhost_serves_three_ranks() {
        let server = TcpStoreServer::start("127.0.0.1:0").unwrap();
        let port = server.address().port();
        let stores: Vec<Box<dyn Store>> = (0..3)
            .map(|_| {
                Box::new(TcpStore::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap())
                    as Box<dyn Store>
            })
            .collect();
        exchange(stores);
    }

    #[test]
    fn tcp_store_reports_an_unreachable_server() {
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = TcpStore::connect("127.0.0.1", free, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("has rank 0 started"), "{error}");
    }

    #[test]
    fn file_store_serves_three_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<Box<dyn Store>> = (0..3)
            .map(|rank| {
                Box::new(FileStore::new(dir.path(), "job/7", rank).unwrap()) as Box<dyn Store>
            })
            .collect();
        exchange(stores);
        assert!(dir.path().join("job_7").join("hello_0").exists());
    }

    #[test]
    fn rendezvous_parses() {
        assert_eq!("tcp".parse::<Rendezvous>().unwrap(), Rendezvous::Tcp);
        assert_eq!(
            "file:/shared/rdzv".parse::<Rendezvous>().unwrap(),
            Rendezvous::File("/shared/rdzv".into())
        );
        assert!("file:".parse::<Rendezvous>().is_err());
        assert!("etcd".parse::<Rendezvous>().is_err());
    }
}
