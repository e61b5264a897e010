//! The local token socket of `hallmark-agent run`: a Unix stream socket that hands the current
//! access token to the device's own software, in any language (see [`protocol`] for the wire
//! format and the README's "Local socket protocol" for the contract).
//!
//! Who may ask: the kernel tells the uid of the process at the other end (`SO_PEERCRED`, read
//! at connect time, so it cannot be forged by the client), and only the agent's own uid, root,
//! and the uids in `socket_allowed_uids` get an answer other than `forbidden`. The file mode
//! follows: 0600 when nobody else is allowed (as before the allow-list existed), 0666 when
//! other uids are, because then the uid check is the gate and the mode must let them connect.

pub mod protocol;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use protocol::Answer;

use crate::AccessToken;

/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// A client that does not read its line within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that has sent nothing this long after connecting is a version-0 client (connect
/// and read): it gets the token.
const SILENT_CLIENT: Duration = Duration::from_millis(250);
/// A request line must be complete within this time of connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one refusal report per this period (a local user hammering the socket must not
/// flood the log); the report counts the refusals since the previous one.
const REFUSAL_REPORT_PERIOD: Duration = Duration::from_secs(60);

/// The token the daemon currently serves, shared between its renewal loop and the socket.
pub type SharedToken = Arc<Mutex<Option<AccessToken>>>;

/// The uids that may use the socket: the agent's own, root, and the configured ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPeers {
    own: u32,
    others: Vec<u32>,
}

impl AllowedPeers {
    /// The agent's own effective uid and root, plus `configured` (`socket_allowed_uids`).
    /// Root is always allowed: it can read the TPM and the agent's memory anyway.
    pub fn new(configured: &[u32]) -> AllowedPeers {
        AllowedPeers::for_uid(rustix::process::geteuid().as_raw(), configured)
    }

    fn for_uid(own: u32, configured: &[u32]) -> AllowedPeers {
        let mut others: Vec<u32> = configured
            .iter()
            .copied()
            .filter(|&uid| uid != own && uid != 0)
            .collect();
        others.sort_unstable();
        others.dedup();
        AllowedPeers { own, others }
    }

    /// Whether a peer with `uid` gets an answer.
    pub fn permits(&self, uid: u32) -> bool {
        uid == self.own || uid == 0 || self.others.contains(&uid)
    }

    /// Every allowed uid, ascending.
    pub fn uids(&self) -> Vec<u32> {
        let mut all = self.others.clone();
        all.extend([0, self.own]);
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The socket file's mode: 0600 unless uids other than the agent's and root's may connect.
    fn mode(&self) -> u32 {
        if self.others.is_empty() {
            0o600
        } else {
            0o666
        }
    }
}

/// Peers refused since the last report (see [`REFUSAL_REPORT_PERIOD`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusals {
    /// The uid most recently refused.
    pub uid: u32,
    /// How many connections were refused since the last report (this one included).
    pub count: u64,
}

/// A bound, listening token socket.
pub struct TokenSocket {
    listener: UnixListener,
    path: PathBuf,
    peers: AllowedPeers,
    prover: Option<SharedProver>,
}

impl std::fmt::Debug for TokenSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSocket")
            .field("path", &self.path)
            .field("peers", &self.peers)
            .field("proofs", &self.prover.is_some())
            .finish_non_exhaustive()
    }
}

/// What signs DPoP proofs for the socket's clients (see [`protocol::Prover`]): the daemon hands
/// in one that opens the TPM for each proof, so the key never leaves it.
pub type SharedProver = Arc<
    dyn Fn(crate::tpm::KeySlot, &protocol::ProofRequest, &str) -> Result<String, String>
        + Send
        + Sync,
>;

impl TokenSocket {
    /// Binds `path` for `peers` (mode 0600, or 0666 when uids other than the agent's and
    /// root's may connect). A stale socket file left by a killed agent is replaced; one that
    /// another process answers on is [`std::io::ErrorKind::AddrInUse`].
    pub fn bind(path: &Path, peers: AllowedPeers) -> std::io::Result<TokenSocket> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another agent serves on this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let listener = UnixListener::bind(path)?;
        // Between bind and this chmod the socket has the umask's mode; that is harmless
        // either way, since no peer outside `peers` gets more than `forbidden`.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(peers.mode()))?;
        listener.set_nonblocking(true)?;
        Ok(TokenSocket {
            listener,
            path: path.to_owned(),
            peers,
            prover: None,
        })
    }

    /// Answers proof requests with `prover` (without one they get `proof_failed`).
    pub fn with_prover(mut self, prover: SharedProver) -> TokenSocket {
        self.prover = Some(prover);
        self
    }

    /// Serves `token` to every allowed client until `stop` is set, then removes the socket
    /// file. Refused peers are reported on `refused`, at most once a minute.
    pub fn serve(self, token: SharedToken, stop: Arc<AtomicBool>, refused: Sender<Refusals>) {
        let mut pending: Option<Refusals> = None;
        let mut last_report: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => match peer_uid(&stream) {
                    Ok(uid) if self.peers.permits(uid) => {
                        // A client that hung up or stalled is its own problem.
                        let prover = self.prover.as_deref().map(|p| p as &protocol::Prover<'_>);
                        let _ = answer_client(stream, &token, prover);
                    }
                    Ok(uid) => {
                        let _ = refuse(stream, uid);
                        let count = pending.map_or(0, |p| p.count) + 1;
                        pending = Some(Refusals { uid, count });
                    }
                    // No credentials: nothing to answer to.
                    Err(_) => {}
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(_) => std::thread::sleep(POLL),
            }
            let due = last_report.is_none_or(|at| at.elapsed() >= REFUSAL_REPORT_PERIOD);
            if let (true, Some(report)) = (due, pending) {
                // The daemon may have stopped listening; the socket goes on regardless.
                let _ = refused.send(report);
                pending = None;
                last_report = Some(Instant::now());
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one answer from the agent serving on `path` (protocol version 1, `token`).
pub fn fetch(path: &Path) -> std::io::Result<Answer> {
    exchange(path, &protocol::request_line("token"))
}

/// Asks the agent serving on `path` for a DPoP proof for `method` at `url` (protocol version
/// 1, `proof`).
pub fn fetch_proof(
    path: &Path,
    method: &str,
    url: &str,
    nonce: Option<&str>,
) -> std::io::Result<Answer> {
    exchange(path, &protocol::proof_request_line(method, url, nonce))
}

fn exchange(path: &Path, request: &[u8]) -> std::io::Result<Answer> {
    let mut stream = UnixStream::connect(path)?;
    // A proof is signed in the TPM, which may be busy with the daemon's own request.
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // An agent older than the request line answers without reading and may have closed
    // already; its answer is still there to read.
    let _ = stream.write_all(request);
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The uid of the process that connected, as the kernel recorded it at `connect`.
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    Ok(cred.uid.as_raw())
}

fn answer_client(
    mut stream: UnixStream,
    token: &SharedToken,
    prover: Option<&protocol::Prover<'_>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let no_prover = |_: crate::tpm::KeySlot, _: &protocol::ProofRequest, _: &str| {
        Err("this agent signs no proofs".to_owned())
    };
    let answer = match read_request(&mut stream) {
        Ok(line) => match protocol::parse(line.as_deref()) {
            Ok(op) => {
                // A copy, so the lock is not held while the TPM signs.
                let current = token.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match prover {
                    Some(p) => protocol::answer(&op, current.as_ref(), p),
                    None => protocol::answer(&op, current.as_ref(), &no_prover),
                }
            }
            Err(refusal) => refusal,
        },
        Err(refusal) => refusal,
    };
    stream.write_all(&answer.to_line())
}

fn refuse(mut stream: UnixStream, uid: u32) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // The request is not read: a refused peer gets nothing to wait on.
    let answer = Answer::error(
        protocol::code::FORBIDDEN,
        format!("uid {uid} may not use this socket (socket_allowed_uids in agent.toml)"),
    );
    stream.write_all(&answer.to_line())
}

/// The request line, or `None` for a client that sent nothing (version 0: it waits to read).
/// A line that is too long, cut short by a hang-up or not finished in time is an answer.
fn read_request(stream: &mut UnixStream) -> Result<Option<Vec<u8>>, Answer> {
    let invalid = |why: &str| Answer::error(protocol::code::INVALID_REQUEST, why);
    let started = Instant::now();
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        // A silent client is waited for briefly; one that started a line, until the limit.
        let limit = if line.is_empty() {
            SILENT_CLIENT
        } else {
            REQUEST_TIMEOUT
        };
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(invalid("the request line did not end in a newline in time"))
            };
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| invalid("cannot read the request"))?;
        match stream.read(&mut chunk) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => return Err(invalid("the request line did not end in a newline")),
            Ok(n) => {
                line.extend_from_slice(&chunk[..n]);
                if let Some(end) = line.iter().position(|&b| b == b'\n') {
                    line.truncate(end);
                    return Ok(Some(line));
                }
                if line.len() >= protocol::MAX_REQUEST {
                    return Err(invalid("the request line is longer than 4096 bytes"));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(invalid("cannot read the request")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::mpsc;

    use crate::clock::unix_now;

    fn serve(path: &Path, peers: AllowedPeers) -> (SharedToken, Arc<AtomicBool>, impl FnOnce()) {
        let token: SharedToken = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let socket = TokenSocket::bind(path, peers).unwrap();
        let (t, s) = (token.clone(), stop.clone());
        let (tx, _rx) = mpsc::channel();
        let server = std::thread::spawn(move || socket.serve(t, s, tx));
        let stop2 = stop.clone();
        (token, stop, move || {
            stop2.store(true, Ordering::Relaxed);
            server.join().unwrap();
        })
    }

    fn raw(path: &Path, send: &[u8], shut: bool) -> String {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.write_all(send).unwrap();
        if shut {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn serves_one_line_with_mode_0600_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (token, _stop, finish) = serve(&path, AllowedPeers::new(&[]));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(
            matches!(fetch(&path).unwrap(), Answer::Error { v: 1, ref error, .. } if error == "unavailable")
        );
        assert_eq!(
            TokenSocket::bind(&path, AllowedPeers::new(&[]))
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::AddrInUse
        );
        *token.lock().unwrap() = Some(AccessToken {
            token: "tok".into(),
            expires_at: unix_now() + 60,
            issued_at: unix_now(),
            scope: Some("device".into()),
            token_type: "Bearer".into(),
            bound_to: None,
        });
        match fetch(&path).unwrap() {
            Answer::Token { access_token, .. } => assert_eq!(access_token, "tok"),
            other => panic!("{other:?}"),
        }
        // Version 0: send nothing, read; and a client that only shuts its side down.
        assert!(raw(&path, b"", false).contains("\"access_token\":\"tok\""));
        assert!(raw(&path, b"", true).contains("\"access_token\":\"tok\""));
        // Errors are one line each.
        let started = Instant::now();
        assert!(raw(&path, b"{\"v\":1", true).contains("invalid_request"));
        assert!(raw(&path, b"{\"v\":9,\"op\":\"token\"}\n", false).contains("unsupported_version"));
        assert!(raw(&path, &[b'x'; 5000], false).contains("longer than 4096"));
        assert!(
            started.elapsed() < SILENT_CLIENT,
            "errors are answered at once"
        );
        finish();
        assert!(!path.exists());
    }

    #[test]
    fn others_allowed_means_mode_0666_and_the_uid_check_as_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (_token, _stop, finish) = serve(&path, AllowedPeers::new(&[4242]));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
        // This process is the agent's own uid: allowed.
        assert!(
            matches!(fetch(&path).unwrap(), Answer::Error { ref error, .. } if error == "unavailable")
        );
        finish();
    }

    #[test]
    fn the_allow_list_always_holds_the_agent_and_root() {
        let peers = AllowedPeers::for_uid(998, &[]);
        assert!(peers.permits(998) && peers.permits(0) && !peers.permits(1000));
        assert_eq!(peers.mode(), 0o600);
        assert_eq!(peers.uids(), vec![0, 998]);
        let peers = AllowedPeers::for_uid(998, &[1000, 0, 998, 1000, 1001]);
        assert!(peers.permits(1000) && peers.permits(1001) && !peers.permits(1002));
        assert_eq!(peers.mode(), 0o666);
        assert_eq!(peers.uids(), vec![0, 998, 1000, 1001]);
        // Only the agent and root named: nobody else, so the file stays 0600.
        assert_eq!(AllowedPeers::for_uid(998, &[0, 998]).mode(), 0o600);
    }
}
