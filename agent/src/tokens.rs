//! Getting access tokens: client credentials (RFC 6749 §4.4) with the device's credential,
//! the device authorization grant (RFC 8628) with its refresh token sealed by the TPM, refresh
//! with rotation (RFC 6749 §6), and the local status report.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::clock::{self, unix_now};
use crate::http::Http;
use crate::oauth::device::{self, DeviceFlowError, Poll, Schedule};
use crate::oauth::dpop::{self, ProofFor};
use crate::oauth::{self, assertion, ClientAuth, ErrorCode, OAuthError, TokenResponse};
use crate::rotation::schedule::{rekey_due, RekeyDue};
use crate::rotation::tpm_err;
use crate::store::{LOGIN_TOKEN_FILE, REFRESH_FILE};
use crate::tpm::{KeySlot, SealedBlob};
use crate::{
    AccessToken, Agent, AgentError, Credential, DeviceAuthorization, Event, Flow, Login,
    RotationState, Status,
};

/// A login's access token is not handed out in its last seconds: it would die in transit.
const LOGIN_TOKEN_MARGIN: i64 = 5;

/// The access token of a login that brought no refresh token, as sealed in the state
/// directory. Its expiry is on the device clock.
#[derive(serde::Serialize, serde::Deserialize)]
struct LoginToken {
    access_token: String,
    expires_at: i64,
    scope: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    bound_to: Option<KeySlot>,
}

/// Lifetime assumed when a token response has no `expires_in` (RFC 6749 §5.1 makes it
/// RECOMMENDED only); short, so the agent renews early rather than serving a dead token.
const DEFAULT_LIFETIME: u64 = 300;

impl Agent {
    /// The credential in use, running the rotation first if this process has not yet.
    pub(crate) fn credential(&mut self) -> Result<Credential, AgentError> {
        match &self.credential {
            Some(c) => Ok(c.clone()),
            None => self.rotate(),
        }
    }

    /// A fresh token by the configured flow.
    pub(crate) fn fresh_token(&mut self, scope: Option<&str>) -> Result<AccessToken, AgentError> {
        let credential = self.credential()?;
        // The rotation's proof just obtained one by client credentials; no need for a second
        // request (with the device flow, tokens act for the user and come from the refresh).
        if scope.is_none() && self.config.flow == Flow::ClientCredentials {
            if let Some(token) = self.cached.take() {
                if token.expires_at > unix_now() + 30 {
                    return Ok(token);
                }
            }
        }
        match self.config.flow {
            Flow::DeviceCode => self.refresh(&credential, scope),
            _ => self.request_client_credentials(&credential, scope),
        }
    }

    /// The client authentication for a request to the server (`aud` = token endpoint) and,
    /// for an assertion, the server clock offset its times were taken with.
    fn client_auth(
        &mut self,
        credential: &Credential,
    ) -> Result<(ClientAuth, Option<i64>), AgentError> {
        let client_id = self.config.client_id.clone();
        match credential {
            Credential::Factory => Ok((
                ClientAuth::Secret {
                    client_id,
                    secret: self.factory_secret()?,
                },
                None,
            )),
            Credential::Key { slot, kid } => {
                // Metadata first: fetching it is also how a fresh agent learns the offset.
                let audience = self.metadata()?.token_endpoint;
                let clock = self.http.clock().clone();
                let offset = clock.offset();
                self.report_clock_offset(offset);
                let mut tpm = self.tpm()?;
                let signed =
                    assertion::build(&client_id, &audience, kid, clock.server_now(), |input| {
                        tpm.sign_es256(*slot, input)
                    })
                    .map_err(tpm_err)?;
                Ok((
                    ClientAuth::Assertion {
                        client_id,
                        assertion: signed,
                    },
                    Some(offset),
                ))
            }
        }
    }

    /// Sends a request with the client authentication for `credential`. If the server
    /// refuses an assertion (`refused`) and its `Date` shows the assertion's times were off,
    /// signs once more with the corrected time and sends again: a device whose first word
    /// with the server is a token request still gets through (see
    /// [`clock::send_resigning`]).
    pub(crate) fn send_authenticated<T, E>(
        &mut self,
        credential: &Credential,
        mut send: impl FnMut(&Http, &ClientAuth) -> Result<T, E>,
        refused: impl Fn(&E) -> bool,
    ) -> Result<Result<T, E>, AgentError> {
        self.send_with_proof(
            credential,
            None,
            |http, auth, _| send(http, auth),
            refused,
            |_| false,
        )
    }

    /// [`Agent::send_authenticated`] for a POST to `url` that carries a DPoP proof when
    /// `dpop = true` (RFC 9449 §5): each attempt gets a fresh proof, signed in the TPM with
    /// the credential's key. A server asking for a nonce (`wants_nonce`, §8) is answered once
    /// more with the nonce it sent (the HTTP client keeps the last one).
    pub(crate) fn send_with_proof<T, E>(
        &mut self,
        credential: &Credential,
        url: Option<&str>,
        mut send: impl FnMut(&Http, &ClientAuth, Option<&str>) -> Result<T, E>,
        refused: impl Fn(&E) -> bool,
        wants_nonce: impl Fn(&E) -> bool,
    ) -> Result<Result<T, E>, AgentError> {
        // A clone shares the connection pool, the clock and the nonce; it frees `self` for
        // signing.
        let http = self.http.clone();
        let url = url.filter(|_| self.config.dpop);
        let mut round = 0;
        loop {
            round += 1;
            let result = clock::send_resigning(
                http.clock(),
                || {
                    let (auth, offset) = self.client_auth(credential)?;
                    let proof = match url {
                        Some(u) => self.dpop_proof(credential, "POST", u, None)?,
                        None => None,
                    };
                    Ok(((auth, proof), offset))
                },
                |(auth, proof)| send(&http, auth, proof.as_deref()),
                &refused,
            )?;
            match result {
                Err(e) if round == 1 && url.is_some() && wants_nonce(&e) => continue,
                other => return Ok(other),
            }
        }
    }

    /// A DPoP proof (RFC 9449 §4) for `method` at `url`, signed in the TPM by the key of
    /// `credential`, with `ath` for `access_token` and the server's last nonce. `None` on the
    /// factory credential, which has no key in the TPM yet: its tokens stay bearer tokens.
    pub(crate) fn dpop_proof(
        &mut self,
        credential: &Credential,
        method: &str,
        url: &str,
        access_token: Option<&str>,
    ) -> Result<Option<String>, AgentError> {
        let Credential::Key { slot, .. } = credential else {
            return Ok(None);
        };
        let nonce = self.http.dpop_nonce();
        let now = self.http.clock().server_now();
        let mut tpm = self.tpm()?;
        sign_proof(
            &mut tpm,
            *slot,
            method,
            url,
            access_token,
            nonce.as_deref(),
            now,
        )
    }

    /// Tells the operator, once per offset, that the device clock is far off.
    fn report_clock_offset(&mut self, offset: i64) {
        let threshold = clock::REPORT_THRESHOLD_SECS.unsigned_abs();
        if offset.unsigned_abs() > threshold
            && self
                .reported_offset
                .is_none_or(|r| r.abs_diff(offset) > threshold)
        {
            self.reported_offset = Some(offset);
            self.emit(Event::ClockOffset { offset_s: offset });
        }
    }

    /// The client credentials grant (RFC 6749 §4.4.2).
    pub(crate) fn request_client_credentials(
        &mut self,
        credential: &Credential,
        scope: Option<&str>,
    ) -> Result<AccessToken, AgentError> {
        let scope = scope.map(str::to_owned).or_else(|| self.scope_default());
        let endpoint = self.metadata()?.token_endpoint;
        let mut params = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope.as_deref() {
            params.push(("scope", s));
        }
        let response = self
            .send_with_proof(
                credential,
                Some(&endpoint),
                |http, auth, proof| oauth::token_request(http, &endpoint, auth, proof, &params),
                refused,
                OAuthError::wants_dpop_nonce,
            )?
            .map_err(|source| self.token_error(credential, source))?;
        Ok(self.accept(response, credential))
    }

    /// Refresh with the sealed refresh token (RFC 6749 §6), sealing the rotated one.
    fn refresh(
        &mut self,
        credential: &Credential,
        scope: Option<&str>,
    ) -> Result<AccessToken, AgentError> {
        let Some(bytes) = self
            .state
            .read(REFRESH_FILE)
            .map_err(|source| AgentError::State { source })?
        else {
            return self.login_token(scope);
        };
        let blob = SealedBlob::from_bytes(&bytes).map_err(tpm_err)?;
        let mut tpm = self.tpm()?;
        let refresh_token = tpm.unseal_blob(&blob).map_err(tpm_err)?;
        drop(tpm);
        let refresh_token = Zeroizing::new(String::from_utf8_lossy(&refresh_token).into_owned());
        let endpoint = self.metadata()?.token_endpoint;
        let mut params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ];
        if let Some(s) = scope {
            params.push(("scope", s));
        }
        // The server authenticates the client before it looks at the refresh token (RFC 6749
        // §6), so a refused assertion has not spent it and sending it again is safe.
        let sent = self.send_with_proof(
            credential,
            Some(&endpoint),
            |http, auth, proof| oauth::token_request(http, &endpoint, auth, proof, &params),
            refused,
            OAuthError::wants_dpop_nonce,
        )?;
        let response = match sent {
            Ok(r) => r,
            Err(source) if source.code() == Some(&ErrorCode::InvalidGrant) => {
                return Err(AgentError::RefreshRefused { source })
            }
            Err(source) => return Err(self.token_error(credential, source)),
        };
        self.emit(Event::RefreshAnswered);
        // Seal the rotated refresh token before handing out the access token: losing it
        // would lock the device out until someone logs in again. A server may also keep the
        // refresh token (the same one back, or none: RFC 6749 §6); then nothing changes.
        match &response.refresh_token {
            Some(new) if new.as_str() != refresh_token.as_str() => {
                self.store_refresh_token(new)?;
                self.emit(Event::RefreshTokenRotated);
            }
            _ => self.emit(Event::RefreshTokenKept),
        }
        Ok(self.accept(response, credential))
    }

    /// Without a refresh token: the access token of a login that brought none, while it lives.
    fn login_token(&mut self, scope: Option<&str>) -> Result<AccessToken, AgentError> {
        let Some(bytes) = self
            .state
            .read(LOGIN_TOKEN_FILE)
            .map_err(|source| AgentError::State { source })?
        else {
            return Err(AgentError::NotLoggedIn);
        };
        let blob = SealedBlob::from_bytes(&bytes).map_err(tpm_err)?;
        let mut tpm = self.tpm()?;
        let plain = tpm.unseal_blob(&blob).map_err(tpm_err)?;
        drop(tpm);
        let stored: LoginToken = serde_json::from_slice(&plain).map_err(|e| AgentError::State {
            source: crate::store::StoreError::Corrupt {
                path: LOGIN_TOKEN_FILE.into(),
                reason: e.to_string(),
            },
        })?;
        let now = self.local_now();
        if scope.is_some() {
            return Err(AgentError::NoRefreshToken { expired_at: None });
        }
        if stored.expires_at <= now + LOGIN_TOKEN_MARGIN {
            return Err(AgentError::NoRefreshToken {
                expired_at: Some(stored.expires_at),
            });
        }
        let left = u64::try_from(stored.expires_at - now).unwrap_or(0);
        let issued_at = unix_now();
        Ok(AccessToken {
            token: stored.access_token,
            // What is left of it, on the clock the rest of the agent measures lifetimes with.
            expires_at: issued_at + left,
            issued_at,
            scope: stored.scope,
            token_type: stored.token_type.unwrap_or_else(|| "Bearer".into()),
            bound_to: stored.bound_to,
        })
    }

    /// Seal a login's access token to serve while it lives (no refresh token came with it).
    fn store_login_token(&mut self, token: &AccessToken) -> Result<(), AgentError> {
        let lifetime =
            i64::try_from(token.expires_at.saturating_sub(token.issued_at)).unwrap_or(i64::MAX);
        let stored = LoginToken {
            access_token: token.token.clone(),
            expires_at: self.local_now().saturating_add(lifetime),
            scope: token.scope.clone(),
            token_type: Some(token.token_type.clone()),
            bound_to: token.bound_to,
        };
        let json = Zeroizing::new(serde_json::to_vec(&stored).unwrap_or_default());
        let mut tpm = self.tpm()?;
        let blob = tpm.seal_blob(&json).map_err(tpm_err)?;
        drop(tpm);
        self.state
            .write(LOGIN_TOKEN_FILE, &blob.to_bytes())
            .map_err(|source| AgentError::State { source })
    }

    /// The device authorization grant, end to end.
    pub(crate) fn device_login(
        &mut self,
        show: impl FnOnce(&DeviceAuthorization),
        sleep: &mut dyn FnMut(Duration),
    ) -> Result<Login, AgentError> {
        let credential = self.credential()?;
        let metadata = self.metadata()?;
        let Some(endpoint) = metadata.device_authorization_endpoint.clone() else {
            return Err(AgentError::NoDeviceFlow {
                issuer: self.config.issuer.clone(),
            });
        };
        let flow_err = |source| AgentError::DeviceFlow { source };
        let scope = self.scope_default();
        // RFC 9449 §10: a proof here binds the device code, so only this TPM can poll for it.
        let authorization = self
            .send_with_proof(
                &credential,
                Some(&endpoint),
                |http, auth, proof| {
                    device::authorize(http, &endpoint, auth, proof, scope.as_deref())
                },
                |e| matches!(e, DeviceFlowError::Authorize { source } if refused(source)),
                |e| matches!(e, DeviceFlowError::Authorize { source } if source.wants_dpop_nonce()),
            )?
            .map_err(flow_err)?;
        show(&authorization);
        let mut schedule = Schedule::new(&authorization);
        loop {
            sleep(schedule.wait());
            if schedule.expired() {
                return Err(flow_err(DeviceFlowError::Expired));
            }
            let polled = self.send_with_proof(
                &credential,
                Some(&metadata.token_endpoint),
                |http, auth, proof| {
                    device::poll_once(
                        http,
                        &metadata.token_endpoint,
                        auth,
                        proof,
                        &authorization.device_code,
                    )
                },
                |e| matches!(e, DeviceFlowError::Poll { source } if refused(source)),
                |e| matches!(e, DeviceFlowError::Poll { source } if source.wants_dpop_nonce()),
            )?;
            match polled {
                Ok(Poll::Token(response)) => {
                    // This login replaces whatever an earlier one left.
                    let refresh_token = response.refresh_token.is_some();
                    if let Some(rt) = &response.refresh_token {
                        self.store_refresh_token(rt)?;
                    }
                    let access_token = self.accept(response, &credential);
                    if refresh_token {
                        self.state.remove(LOGIN_TOKEN_FILE)
                    } else {
                        self.store_login_token(&access_token)?;
                        self.state.remove(REFRESH_FILE)
                    }
                    .map_err(|source| AgentError::State { source })?;
                    return Ok(Login {
                        access_token,
                        refresh_token,
                    });
                }
                Ok(Poll::Pending) => {}
                Ok(Poll::SlowDown) => schedule.slow_down(),
                Err(DeviceFlowError::Poll { source }) if source.is_transient() => {
                    self.emit(Event::Retrying {
                        error: source.to_string(),
                        after: schedule.wait() * 2,
                    });
                    schedule.back_off();
                }
                Err(e) => return Err(flow_err(e)),
            }
        }
    }

    /// The device's state from the TPM and the state directory.
    pub(crate) fn local_status(&mut self) -> Result<Status, AgentError> {
        let mut tpm = self.tpm()?;
        let inventory = tpm.inventory().map_err(tpm_err)?;
        drop(tpm);
        let mut rotation = self.rotation_state()?;
        let slot = rotation.slot().filter(|s| inventory.has_key(*s)).or(
            match (inventory.slot_a, inventory.slot_b) {
                (true, _) => Some(KeySlot::A),
                (false, true) => Some(KeySlot::B),
                _ => None,
            },
        );
        let credential = match (inventory.factory_secret, slot) {
            (true, None) => "factory",
            (true, Some(_)) => "rotating",
            (false, Some(_)) if rotation.is_rekeying() => "rekeying",
            (false, Some(_)) => "key",
            (false, None) => "none",
        };
        let key = match slot {
            Some(s) => Some(self.device_key(s)?),
            None => None,
        };
        // No record (a fresh or lost state directory) beside a TPM that rotated long ago: the
        // TPM is the truth.
        if let (RotationState::Factory, false, Some(slot), Some(key)) =
            (&rotation, inventory.factory_secret, slot, key.as_ref())
        {
            rotation = RotationState::Done {
                slot,
                kid: key.kid.clone(),
                since: None,
            };
        }
        // Its age from the TPM's own record, where the state directory has none (a lost one,
        // or one from an agent before the schedule).
        if let RotationState::Done {
            slot,
            since: since @ None,
            ..
        } = &mut rotation
        {
            *since = self.key_made(*slot);
        }
        let key_attestation = match key.as_ref().and_then(|k| self.key_attestation(&k.kid)) {
            Some(true) => "attested",
            Some(false) => "unattested",
            None => "unknown",
        };
        let jwk = key.map(|k| k.jwk_json());
        let refresh_token_stored = self
            .state
            .read(REFRESH_FILE)
            .map_err(|source| AgentError::State { source })?
            .is_some();
        // Read only: a missing key age is recorded by the next start, not by a status.
        let (key_created_at, next_rekey_at) =
            match rekey_due(self.config.rekey_interval_days.duration(), &rotation) {
                RekeyDue::At { since, at } => (Some(since), Some(at)),
                RekeyDue::Unfinished => (None, Some(self.local_now())),
                RekeyDue::Never | RekeyDue::Unknown => match &rotation {
                    RotationState::Done { since, .. } => (*since, None),
                    _ => (None, None),
                },
            };
        Ok(Status {
            client_id: self.config.client_id.clone(),
            serial: self.config.serial.clone(),
            server: self.config.issuer.clone(),
            credential,
            slot,
            rotation,
            jwk,
            refresh_token_stored,
            key_created_at,
            next_rekey_at,
            key_attestation,
        })
    }

    /// The factory secret as the client_secret: the 32 sealed bytes, base64url without
    /// padding (the provisioner's contract with the server).
    pub(crate) fn factory_secret(&self) -> Result<Zeroizing<String>, AgentError> {
        let mut tpm = self.tpm()?;
        let raw = tpm
            .unseal_factory_secret()
            .map_err(tpm_err)?
            .ok_or_else(|| AgentError::NotProvisioned {
                what: "the factory secret vanished".into(),
            })?;
        Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_slice())))
    }

    fn store_refresh_token(&mut self, token: &str) -> Result<(), AgentError> {
        let mut tpm = self.tpm()?;
        let blob = tpm.seal_blob(token.as_bytes()).map_err(tpm_err)?;
        drop(tpm);
        self.state
            .write(REFRESH_FILE, &blob.to_bytes())
            .map_err(|source| AgentError::State { source })
    }

    /// A refused client authentication means the server does not know this device (or has
    /// disabled it); anything else is a token error.
    fn token_error(&self, credential: &Credential, source: oauth::OAuthError) -> AgentError {
        if source.code() == Some(&ErrorCode::InvalidClient) && *credential == Credential::Factory {
            return AgentError::UnknownClient {
                client_id: self.config.client_id.clone(),
                issuer: self.config.issuer.clone(),
                source,
            };
        }
        AgentError::Token { source }
    }

    /// Token lifetimes are local: `expires_in` (RFC 6749 §5.1) is a duration, so the device
    /// clock measures it correctly however wrong its wall time is.
    fn accept(&mut self, response: TokenResponse, credential: &Credential) -> AccessToken {
        let now = unix_now();
        let lifetime = response.expires_in.unwrap_or(DEFAULT_LIFETIME);
        let bound = response.token_type.eq_ignore_ascii_case(dpop::TOKEN_TYPE);
        let token = AccessToken {
            token: response.access_token,
            expires_at: now + lifetime,
            issued_at: now,
            scope: response.scope,
            token_type: if bound { dpop::TOKEN_TYPE } else { "Bearer" }.to_owned(),
            bound_to: match credential {
                Credential::Key { slot, .. } if bound => Some(*slot),
                _ => None,
            },
        };
        self.emit(Event::TokenRenewed {
            expires_at: token.expires_at,
        });
        token
    }
}

/// The server refused the client's authentication (RFC 6749 §5.2 `invalid_client`).
fn refused(e: &OAuthError) -> bool {
    e.code() == Some(&ErrorCode::InvalidClient)
}

/// A proof signed by the key in `slot` (see [`Agent::dpop_proof`]); `None` if the slot holds no
/// key.
pub(crate) fn sign_proof(
    tpm: &mut crate::tpm::Tpm,
    slot: KeySlot,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    nonce: Option<&str>,
    now: u64,
) -> Result<Option<String>, AgentError> {
    let Some(key) = tpm.device_key(slot).map_err(tpm_err)? else {
        return Ok(None);
    };
    let what = ProofFor {
        method,
        url,
        access_token,
        nonce,
    };
    dpop::build(&key.jwk_json(), what, now, |input| {
        tpm.sign_es256(slot, input)
    })
    .map(Some)
    .map_err(tpm_err)
}
