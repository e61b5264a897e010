//! The token socket's wire protocol, version 1: one request line in, one answer line out, both
//! JSON objects ending in `\n`. Pure functions over bytes, so every case is tested without a
//! socket; the README's "Local socket protocol" section is the contract for other languages.
//!
//! - Request: `{"v":1,"op":"token"}`. Unknown fields are ignored, so a newer client's extra
//!   parameters do not break an older agent. A client that sends nothing at all (version 0, the
//!   first protocol: connect and read) is answered as if it had asked for `token`.
//! - Answer: `{"v":1,"access_token":"…","token_type":"Bearer","expires_at":N,"scope":"…"}`, or
//!   `{"v":1,"error":"<code>","error_description":"…"}` with a code from [`code`].
//! - Proof request: `{"v":1,"op":"proof","method":"GET","url":"https://…"}` (and optionally
//!   `"nonce"`, a resource server's `DPoP-Nonce`). Answer: `{"v":1,"proof":"…","access_token":
//!   "…","token_type":"DPoP","expires_at":N}`: a DPoP proof (RFC 9449 §4) signed in the TPM by
//!   the key the current token is bound to, for that method and URL, with `ath` for that token;
//!   send both as `Authorization: DPoP <access_token>` and `DPoP: <proof>`. A bearer token
//!   gets `not_dpop_bound`.
//! - Versioning: fields are only ever added; a change of meaning takes a new `v`, and an agent
//!   answers a `v` it does not speak with `unsupported_version`.

use serde::{Deserialize, Serialize};

use crate::clock::unix_now;
use crate::AccessToken;

/// The protocol version this agent speaks.
pub const VERSION: u32 = 1;
/// The longest request line read, newline included; a longer one is `invalid_request`.
pub const MAX_REQUEST: usize = 4096;

/// The `error` codes of an [`Answer::Error`].
pub mod code {
    /// No unexpired token right now (before the first one, or while the server has been
    /// unreachable for longer than a token lives). Ask again later.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The peer's uid is not allowed on this socket (`socket_allowed_uids` in agent.toml).
    pub const FORBIDDEN: &str = "forbidden";
    /// The request line is not a JSON object with a numeric `v` and a string `op`, is longer
    /// than 4096 bytes, or did not end in a newline within 2 s.
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// The request's `v` is not one this agent speaks (the description names those it does).
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// The request's `op` is not one this agent knows.
    pub const UNSUPPORTED_OP: &str = "unsupported_op";
    /// A proof was asked for, but the current token is a bearer token (`dpop = false`, or a
    /// server that does not bind tokens).
    pub const NOT_DPOP_BOUND: &str = "not_dpop_bound";
    /// The TPM could not sign the proof now. Ask again later.
    pub const PROOF_FAILED: &str = "proof_failed";
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Answer {
    /// A DPoP proof with the token it covers (listed first: the token answer's members are a
    /// subset of these, and an untagged enum takes the first variant that fits).
    Proof {
        /// Protocol version of the answer.
        #[serde(default)]
        v: u32,
        /// The proof, for the `DPoP` header.
        proof: String,
        /// The access token the proof's `ath` covers.
        access_token: String,
        /// `DPoP`.
        token_type: String,
        /// Expiry of the token, Unix seconds.
        expires_at: u64,
    },
    /// The current access token.
    Token {
        /// Protocol version of the answer (0 from an agent older than versioning).
        #[serde(default)]
        v: u32,
        /// The access token.
        access_token: String,
        /// `Bearer`, or `DPoP` for a token bound to the device key: then ask for a proof
        /// (`op: proof`) and send `Authorization: DPoP`.
        token_type: String,
        /// Expiry, Unix seconds.
        expires_at: u64,
        /// Granted scope, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// The request cannot be answered with a token; `error` is one of [`code`].
    Error {
        /// Protocol version of the answer (0 from an agent older than versioning).
        #[serde(default)]
        v: u32,
        /// What went wrong, as a code (see [`code`]).
        error: String,
        /// Why, for a person (one line).
        error_description: String,
    },
}

impl Answer {
    /// An error answer.
    pub fn error(code: &str, description: impl Into<String>) -> Answer {
        Answer::Error {
            v: VERSION,
            error: code.to_owned(),
            error_description: description.into(),
        }
    }

    /// The answer as sent: compact JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        // Strings and integers only: serialisation cannot fail.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// The request line a client of this version sends.
pub fn request_line(op: &str) -> Vec<u8> {
    // A string always serialises.
    let op = serde_json::to_string(op).unwrap_or_default();
    format!("{{\"v\":{VERSION},\"op\":{op}}}\n").into_bytes()
}

/// The request line asking for a proof for `method` at `url`.
pub fn proof_request_line(method: &str, url: &str, nonce: Option<&str>) -> Vec<u8> {
    let mut request =
        serde_json::json!({"v": VERSION, "op": "proof", "method": method, "url": url});
    if let Some(n) = nonce {
        request["nonce"] = n.into();
    }
    let mut line = serde_json::to_vec(&request).unwrap_or_default();
    line.push(b'\n');
    line
}

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// The current access token.
    Token,
    /// A DPoP proof for the current token.
    Proof(ProofRequest),
}

/// What a proof covers: the request the client is about to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofRequest {
    /// `htm`.
    pub method: String,
    /// `htu` (query and fragment are dropped from the proof).
    pub url: String,
    /// A resource server's `DPoP-Nonce`, if it sent one.
    pub nonce: Option<String>,
}

/// A request line as sent: only `v` and `op` (and a proof's members) are read.
#[derive(Deserialize)]
struct RawRequest {
    v: Option<serde_json::Value>,
    op: Option<serde_json::Value>,
    method: Option<serde_json::Value>,
    url: Option<serde_json::Value>,
    nonce: Option<serde_json::Value>,
}

/// Parses one request line (without or with its newline). `None` is a client that sent
/// nothing (version 0): it asks for the token.
pub fn parse(line: Option<&[u8]>) -> Result<Op, Answer> {
    let Some(line) = line else {
        return Ok(Op::Token);
    };
    let invalid = |why: &str| Answer::error(code::INVALID_REQUEST, why);
    let raw: RawRequest = serde_json::from_slice(line)
        .map_err(|_| invalid("the request line is not a JSON object"))?;
    let v = raw
        .v
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| invalid("the request has no numeric \"v\" (the protocol version)"))?;
    if v != u64::from(VERSION) {
        return Err(Answer::error(
            code::UNSUPPORTED_VERSION,
            format!("this agent speaks protocol version {VERSION}, not {v}"),
        ));
    }
    match raw.op.as_ref().and_then(serde_json::Value::as_str) {
        Some("token") => Ok(Op::Token),
        Some("proof") => {
            fn text(v: &Option<serde_json::Value>) -> Option<&str> {
                v.as_ref().and_then(serde_json::Value::as_str)
            }
            // RFC 9110 §9.1: a method is a token of visible characters.
            let method = text(&raw.method)
                .filter(|m| {
                    (1..=32).contains(&m.len())
                        && m.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                })
                .ok_or_else(|| invalid("a proof request needs a \"method\" such as \"GET\""))?;
            let url = text(&raw.url)
                .filter(|u| {
                    (u.starts_with("https://") || u.starts_with("http://"))
                        && u.len() <= 2048
                        && !u.bytes().any(|b| b.is_ascii_control() || b == b' ')
                })
                .ok_or_else(|| invalid("a proof request needs an absolute http(s) \"url\""))?;
            let nonce = match &raw.nonce {
                None => None,
                Some(n) => Some(
                    n.as_str()
                        .filter(|n| {
                            !n.is_empty()
                                && n.len() <= 256
                                && n.bytes().all(|b| b.is_ascii_graphic())
                        })
                        .ok_or_else(|| invalid("\"nonce\" must be a short printable string"))?,
                ),
            };
            Ok(Op::Proof(ProofRequest {
                method: method.to_owned(),
                url: url.to_owned(),
                nonce: nonce.map(str::to_owned),
            }))
        }
        Some(other) => Err(Answer::error(
            code::UNSUPPORTED_OP,
            format!(
                "unknown op {:?}; this agent knows \"token\" and \"proof\"",
                clip(other)
            ),
        )),
        None => Err(invalid("the request has no string \"op\"")),
    }
}

/// Signs a proof for a request with the key in a TPM slot: (slot, request, access token).
pub type Prover<'a> =
    dyn Fn(crate::tpm::KeySlot, &ProofRequest, &str) -> Result<String, String> + 'a;

/// The answer to `op` given the token the daemon holds; `prove` signs proofs in the TPM.
pub fn answer(op: &Op, token: Option<&AccessToken>, prove: &Prover<'_>) -> Answer {
    let t = match token {
        Some(t) if t.expires_at > unix_now() => t,
        Some(_) => {
            return Answer::error(
                code::UNAVAILABLE,
                "the token expired and the server has not issued a new one yet",
            )
        }
        None => return Answer::error(code::UNAVAILABLE, "no token yet"),
    };
    match op {
        Op::Token => Answer::Token {
            v: VERSION,
            access_token: t.token.clone(),
            token_type: t.token_type.clone(),
            expires_at: t.expires_at,
            scope: t.scope.clone(),
        },
        Op::Proof(request) => {
            let Some(slot) = t.bound_to else {
                return Answer::error(
                    code::NOT_DPOP_BOUND,
                    "the current token is a bearer token; no proof is needed (dpop = false?)",
                );
            };
            match prove(slot, request, &t.token) {
                Ok(proof) => Answer::Proof {
                    v: VERSION,
                    proof,
                    access_token: t.token.clone(),
                    token_type: t.token_type.clone(),
                    expires_at: t.expires_at,
                },
                Err(why) => Answer::error(code::PROOF_FAILED, why),
            }
        }
    }
}

/// A client's string cut short for an error description.
fn clip(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_in: i64) -> AccessToken {
        AccessToken {
            token: "tok".into(),
            expires_at: unix_now().saturating_add_signed(expires_in),
            issued_at: unix_now(),
            scope: Some("device".into()),
            token_type: "Bearer".into(),
            bound_to: None,
        }
    }

    fn no_prover(_: crate::tpm::KeySlot, _: &ProofRequest, _: &str) -> Result<String, String> {
        Err("no TPM here".into())
    }

    fn code_of(answer: &Answer) -> &str {
        match answer {
            Answer::Error { error, .. } => error,
            Answer::Token { .. } => "token",
            Answer::Proof { .. } => "proof",
        }
    }

    #[test]
    fn a_token_request_in_either_version_gets_the_token() {
        for line in [
            None,
            Some(&b"{\"v\":1,\"op\":\"token\"}\n"[..]),
            Some(&b"{\"op\":\"token\",\"v\":1,\"later\":[1,2]}"[..]),
            Some(&b" { \"v\" : 1 , \"op\" : \"token\" } \r\n"[..]),
        ] {
            assert_eq!(parse(line), Ok(Op::Token), "{line:?}");
        }
        let line = answer(&Op::Token, Some(&token(60)), &no_prover).to_line();
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with("}\n") && !text[..text.len() - 1].contains('\n'));
        assert!(
            text.starts_with("{\"v\":1,\"access_token\":\"tok\""),
            "{text}"
        );
        let back: Answer = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Answer::Token { v: 1, .. }));
    }

    #[test]
    fn no_token_or_an_expired_one_is_unavailable() {
        assert_eq!(
            code_of(&answer(&Op::Token, None, &no_prover)),
            code::UNAVAILABLE
        );
        assert_eq!(
            code_of(&answer(&Op::Token, Some(&token(-1)), &no_prover)),
            code::UNAVAILABLE
        );
    }

    #[test]
    fn bad_requests_get_their_codes() {
        for (line, want) in [
            (&b"token\n"[..], code::INVALID_REQUEST),
            (b"[1]\n", code::INVALID_REQUEST),
            (b"{\"op\":\"token\"}\n", code::INVALID_REQUEST),
            (b"{\"v\":\"1\",\"op\":\"token\"}\n", code::INVALID_REQUEST),
            (b"{\"v\":1}\n", code::INVALID_REQUEST),
            (b"{\"v\":1,\"op\":7}\n", code::INVALID_REQUEST),
            (b"{\"v\":2,\"op\":\"token\"}\n", code::UNSUPPORTED_VERSION),
            (b"{\"v\":1,\"op\":\"dpop_proof\"}\n", code::UNSUPPORTED_OP),
            (b"{\"v\":1,\"op\":\"proof\"}\n", code::INVALID_REQUEST),
            (
                b"{\"v\":1,\"op\":\"proof\",\"method\":\"G T\",\"url\":\"https://a/\"}\n",
                code::INVALID_REQUEST,
            ),
            (
                b"{\"v\":1,\"op\":\"proof\",\"method\":\"GET\",\"url\":\"/relative\"}\n",
                code::INVALID_REQUEST,
            ),
        ] {
            let err = parse(Some(line)).unwrap_err();
            assert_eq!(code_of(&err), want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_version_0_answer_still_parses() {
        let old = "{\"error\":\"unavailable\",\"error_description\":\"no token yet\"}";
        assert!(matches!(
            serde_json::from_str::<Answer>(old).unwrap(),
            Answer::Error { v: 0, .. }
        ));
        let request = String::from_utf8(request_line("token")).unwrap();
        assert_eq!(request, "{\"v\":1,\"op\":\"token\"}\n");
    }

    #[test]
    fn a_proof_is_signed_only_for_a_bound_token() {
        let line = proof_request_line("GET", "https://rs.example/x", Some("n"));
        let Ok(op) = parse(Some(&line)) else {
            panic!("parse")
        };
        let bearer = token(60);
        assert_eq!(
            code_of(&answer(&op, Some(&bearer), &no_prover)),
            code::NOT_DPOP_BOUND
        );
        let mut bound = token(60);
        bound.token_type = "DPoP".into();
        bound.bound_to = Some(crate::tpm::KeySlot::B);
        let seen = std::cell::RefCell::new(None);
        let prove = |slot: crate::tpm::KeySlot, r: &ProofRequest, t: &str| {
            *seen.borrow_mut() = Some((slot, r.clone(), t.to_owned()));
            Ok("proof!".to_owned())
        };
        let a = answer(&op, Some(&bound), &prove);
        assert!(
            matches!(&a, Answer::Proof { proof, token_type, .. } if proof == "proof!" && token_type == "DPoP"),
            "{a:?}"
        );
        let (slot, r, t) = seen.into_inner().unwrap();
        assert_eq!(
            (slot, r.method.as_str(), r.nonce.as_deref(), t.as_str()),
            (crate::tpm::KeySlot::B, "GET", Some("n"), "tok")
        );
        // The answer parses back as a proof, not as a token answer.
        let back: Answer = serde_json::from_slice(&a.to_line()).unwrap();
        assert!(matches!(back, Answer::Proof { .. }));
        assert_eq!(
            code_of(&answer(&op, Some(&bound), &no_prover)),
            code::PROOF_FAILED
        );
    }
}
