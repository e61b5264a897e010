//! The local token socket of `hallmark-agent run`: a Unix stream socket (mode 0600, so only the
//! agent's user and root can connect) that hands the current access token to the device's own
//! software.
//!
//! Protocol: connect, read one line of JSON, done (the client writes nothing). The line is
//! `{"access_token": "…", "token_type": "Bearer", "expires_at": <unix seconds>, "scope": "…"}`
//! while the agent holds an unexpired token, and `{"error": "unavailable", "error_description":
//! "…"}` otherwise (before the first token, or after it expired while the server was down).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::unix_now;
use crate::AccessToken;

/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// A client that does not read its line within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The token the daemon currently serves, shared between its renewal loop and the socket.
pub type SharedToken = Arc<Mutex<Option<AccessToken>>>;

/// One line as the socket sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Answer {
    /// The current token.
    Token {
        /// The access token.
        access_token: String,
        /// Always `Bearer`.
        token_type: String,
        /// Expiry, Unix seconds.
        expires_at: u64,
        /// Granted scope, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// No unexpired token right now.
    Unavailable {
        /// `unavailable`.
        error: String,
        /// Why.
        error_description: String,
    },
}

/// A bound, listening token socket.
#[derive(Debug)]
pub struct TokenSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl TokenSocket {
    /// Binds `path` with mode 0600. A stale socket file left by a killed agent is replaced;
    /// one that another process answers on is [`std::io::ErrorKind::AddrInUse`].
    pub fn bind(path: &Path) -> std::io::Result<TokenSocket> {
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
        // The socket's directory is the 0700 state directory by default, so nobody else can
        // reach the socket between bind and this chmod.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(TokenSocket {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves `token` to every client until `stop` is set, then removes the socket file.
    pub fn serve(self, token: SharedToken, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let answer = current(&token);
                    // A client that hung up is its own problem.
                    let _ = answer_client(stream, &answer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(_) => std::thread::sleep(POLL),
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one answer from the agent serving on `path`.
pub fn fetch(path: &Path) -> std::io::Result<Answer> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn current(token: &SharedToken) -> Answer {
    let guard = token
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match guard.as_ref() {
        Some(t) if t.expires_at > unix_now() => Answer::Token {
            access_token: t.token.clone(),
            token_type: "Bearer".into(),
            expires_at: t.expires_at,
            scope: t.scope.clone(),
        },
        Some(_) => unavailable("the token expired and the server has not issued a new one yet"),
        None => unavailable("no token yet"),
    }
}

fn unavailable(why: &str) -> Answer {
    Answer::Unavailable {
        error: "unavailable".into(),
        error_description: why.into(),
    }
}

fn answer_client(mut stream: UnixStream, answer: &Answer) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut line = serde_json::to_vec(answer).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn serves_one_line_with_mode_0600_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let token: SharedToken = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let socket = TokenSocket::bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let (t, s) = (token.clone(), stop.clone());
        let server = std::thread::spawn(move || socket.serve(t, s));
        assert!(matches!(fetch(&path).unwrap(), Answer::Unavailable { .. }));
        assert_eq!(
            TokenSocket::bind(&path).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        *token.lock().unwrap() = Some(AccessToken {
            token: "tok".into(),
            expires_at: unix_now() + 60,
            issued_at: unix_now(),
            scope: Some("device".into()),
        });
        match fetch(&path).unwrap() {
            Answer::Token { access_token, .. } => assert_eq!(access_token, "tok"),
            other => panic!("{other:?}"),
        }
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert!(!path.exists());
    }
}
