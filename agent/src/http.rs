//! The agent's HTTPS client: blocking ureq over rustls, trusting only the CA pinned in the
//! device's config, with bounded timeouts so a dead server never hangs the agent. Every
//! response passes through one function, which also teaches the [`Clock`] the server's time.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::clock::Clock;

/// Connect timeout: a server that does not answer the TCP handshake in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response body read (metadata, token responses are a few kB).
const MAX_BODY: u64 = 256 * 1024;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The pinned CA certificate file could not be read.
    #[error("cannot read the pinned CA certificate {path}: {source}")]
    ReadCa {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pinned CA file holds no usable PEM certificate.
    #[error("the pinned CA file {path} holds no PEM certificate")]
    ParseCa {
        /// The file.
        path: String,
    },
    /// The server could not be reached (refused, timed out, name not resolved).
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport error.
        source: Box<ureq::Error>,
    },
    /// TLS failed: most often the server's certificate is not signed by the pinned CA.
    #[error(
        "TLS with {url} failed (is the server's certificate signed by the pinned CA?): {source}"
    )]
    Tls {
        /// The URL.
        url: String,
        /// The TLS error.
        source: Box<ureq::Error>,
    },
    /// The request failed for another reason (bad URL, protocol error).
    #[error("request to {url} failed: {source}")]
    Request {
        /// The URL.
        url: String,
        /// The error.
        source: Box<ureq::Error>,
    },
    /// The server answered 5xx: worth retrying later.
    #[error("{url} answered HTTP {status}")]
    ServerError {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
}

impl HttpError {
    /// Whether trying again later may succeed (server down or overloaded), as opposed to a
    /// misconfiguration that retrying cannot fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HttpError::Unreachable { .. } | HttpError::ServerError { .. }
        )
    }
}

/// A response: status and body text (JSON for every endpoint the agent calls).
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// HTTPS client trusting only the pinned CA.
#[derive(Debug, Clone)]
pub struct Http {
    agent: ureq::Agent,
    clock: Clock,
    /// The last `DPoP-Nonce` the server sent (RFC 9449 §8), shared by clones: the next proof
    /// carries it, so a server that requires nonces seldom needs to ask twice.
    dpop_nonce: Arc<Mutex<Option<String>>>,
}

impl Http {
    /// A client that trusts only the CA certificate(s) in the PEM file `ca_pem`, and keeps
    /// `clock`'s server offset up to date from every response's `Date` header.
    pub fn new(ca_pem: &Path, clock: Clock) -> Result<Http, HttpError> {
        let pem = std::fs::read(ca_pem).map_err(|source| HttpError::ReadCa {
            path: ca_pem.display().to_string(),
            source,
        })?;
        let certs: Vec<Certificate<'static>> = split_pem(&pem)
            .iter()
            .filter_map(|block| Certificate::from_pem(block).ok().map(|c| c.to_owned()))
            .collect();
        if certs.is_empty() {
            return Err(HttpError::ParseCa {
                path: ca_pem.display().to_string(),
            });
        }
        // ring, named here rather than through ureq's `rustls` feature, which would also link
        // webpki-roots: ~150 public CAs this client never trusts.
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(certs)))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            // Endpoints come from metadata; a redirect would be a misconfiguration, and a
            // redirected POST could leak the client's credentials elsewhere.
            .max_redirects(0)
            .user_agent(concat!("hallmark-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Http {
            agent,
            clock,
            dpop_nonce: Arc::default(),
        })
    }

    /// The last DPoP nonce the server sent, if any (RFC 9449 §8).
    pub fn dpop_nonce(&self) -> Option<String> {
        self.dpop_nonce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The clock this client keeps in step with the server's.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// GET `url`.
    pub fn get(&self, url: &str) -> Result<Response, HttpError> {
        let result = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .call();
        self.finish(url, result)
    }

    /// POST a form (RFC 6749 §4.4.2 and friends), with an optional `Authorization` header.
    pub fn post_form(
        &self,
        url: &str,
        authorization: Option<&str>,
        form: &[(&str, &str)],
    ) -> Result<Response, HttpError> {
        self.post_form_dpop(url, authorization, None, form)
    }

    /// [`Http::post_form`] with a `DPoP` proof header (RFC 9449 §4.1), if one is given.
    pub fn post_form_dpop(
        &self,
        url: &str,
        authorization: Option<&str>,
        dpop: Option<&str>,
        form: &[(&str, &str)],
    ) -> Result<Response, HttpError> {
        let mut req = self.agent.post(url).header("Accept", "application/json");
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if let Some(p) = dpop {
            req = req.header("DPoP", p);
        }
        self.finish(url, req.send_form(form.iter().copied()))
    }

    /// POST a JSON document, with an optional `Authorization` header.
    pub fn post_json(
        &self,
        url: &str,
        authorization: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Response, HttpError> {
        let mut req = self.agent.post(url).header("Accept", "application/json");
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        self.finish(url, req.send_json(body))
    }

    /// [`finish`], first keeping the response's `DPoP-Nonce` for the next proof.
    fn finish(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response, HttpError> {
        if let Ok(resp) = &result {
            let nonce = resp
                .headers()
                .get("dpop-nonce")
                .and_then(|v| v.to_str().ok())
                // A nonce is a short token (§8: NQCHAR); anything else is not kept.
                .filter(|n| !n.is_empty() && n.len() <= 256);
            if let Some(n) = nonce {
                *self.dpop_nonce.lock().unwrap_or_else(|p| p.into_inner()) = Some(n.to_owned());
            }
        }
        finish(&self.clock, url, result)
    }
}

/// Reads a response; first learns the server's time from its `Date` (RFC 9110 §6.6.1), on
/// errors too: a refused assertion is exactly when the agent needs it (see
/// [`crate::clock::send_resigning`]).
fn finish(
    clock: &Clock,
    url: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Response, HttpError> {
    let mut resp = result.map_err(|source| classify(url, source))?;
    clock.observe_date(
        resp.headers()
            .get(ureq::http::header::DATE)
            .and_then(|v| v.to_str().ok()),
    );
    let status = resp.status().as_u16();
    if status >= 500 {
        return Err(HttpError::ServerError {
            url: url.to_owned(),
            status,
        });
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|source| classify(url, source))?;
    Ok(Response { status, body })
}

fn classify(url: &str, source: ureq::Error) -> HttpError {
    let url = url.to_owned();
    match source {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => HttpError::Tls {
            url,
            source: Box::new(source),
        },
        ureq::Error::Io(ref e) if is_tls_io(e) => HttpError::Tls {
            url,
            source: Box::new(source),
        },
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BodyStalled => HttpError::Unreachable {
            url,
            source: Box::new(source),
        },
        source => HttpError::Request {
            url,
            source: Box::new(source),
        },
    }
}

/// rustls reports certificate failures during the handshake as an `io::Error` wrapping a
/// `rustls::Error`; those are configuration errors, not outages.
fn is_tls_io(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidData
        || e.get_ref()
            .is_some_and(|inner| inner.to_string().contains("certificate"))
}

/// The `-----BEGIN …-----` … `-----END …-----` blocks of a PEM file.
fn split_pem(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                blocks.push(block.clone().into_bytes());
                current = None;
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Http::new(&dir.path().join("nope.pem"), Clock::system()).unwrap_err();
        assert!(matches!(err, HttpError::ReadCa { .. }), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a pem").unwrap();
        assert!(matches!(
            Http::new(&empty, Clock::system()).unwrap_err(),
            HttpError::ParseCa { .. }
        ));
    }

    #[test]
    fn refused_connection_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // Any syntactically valid certificate will do: the connection never gets that far.
        std::fs::write(&ca, TEST_CA).unwrap();
        let http = Http::new(&ca, Clock::system()).unwrap();
        let err = http
            .get(&format!("https://127.0.0.1:{port}/x"))
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBeDCCAR6gAwIBAgIUVh2cH6S8k5XnI4oLw1hY3b9r0XkwCgYIKoZIzj0EAwIw
ETEPMA0GA1UEAwwGdGVzdGNhMB4XDTI0MDEwMTAwMDAwMFoXDTM0MDEwMTAwMDAw
MFowETEPMA0GA1UEAwwGdGVzdGNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
-----END CERTIFICATE-----
";
}
