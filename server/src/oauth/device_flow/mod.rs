//! The device authorization grant (RFC 8628): the device authorization endpoint (§3.1–3.2) and
//! the device code grant at the token endpoint with its polling rules (§3.4–3.5). The person's
//! side (§3.3) is in `verification.rs`; user codes in `user_code.rs`.

mod user_code;
mod verification;

use serde::Serialize;

use super::client_auth::Presented;
use super::dpop::{DpopError, Proof, ProofRequest};
use super::form::Form;
use super::refresh::public_binding;
use super::token_endpoint::{bind, issued_event, require_proof, TokenResponse};
use super::{grant, scope, AuthServer, OAuthError, RequestCtx};
use crate::secret::Secret;
use crate::store::grants::{DeviceGrant, GrantState, TokenHash};

pub use self::user_code::{UserCode, USER_CODE_ALPHABET, USER_CODE_LEN};
pub use self::verification::{CodeLookup, CodeProblem, Decision, PendingRequest};

/// RFC 8628 §3.5: each `slow_down` adds 5 seconds to the interval.
pub const SLOW_DOWN_STEP: u64 = 5;
/// Default `expires_in` of a device code: 10 minutes.
pub const DEFAULT_EXPIRES_IN: u64 = 600;
/// Default polling interval (RFC 8628 §3.2's default too).
pub const DEFAULT_INTERVAL: u64 = 5;
/// Default refresh token lifetime: 30 days.
pub const DEFAULT_REFRESH_TOKEN_TTL: u64 = 30 * 24 * 3600;
/// How many times a freshly drawn user code may collide before we give up.
const USER_CODE_DRAWS: usize = 8;

/// Default grace for a refresh response lost in transit: 30 seconds.
pub const DEFAULT_REFRESH_TOKEN_GRACE: u64 = 30;

/// Settings of the device flow, its refresh tokens and the verification page.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// Absolute URL of the device authorization endpoint.
    pub device_authorization_endpoint: String,
    /// Absolute URL of the verification page.
    pub verification_uri: String,
    /// Lifetime of a device code, seconds.
    pub expires_in: u64,
    /// Minimum polling interval handed out, seconds.
    pub interval: u64,
    /// Lifetime of each refresh token, seconds (a rotation starts a new one).
    pub refresh_token_ttl: u64,
    /// How long after its rotation a refresh token is still accepted once, answered with the
    /// same successor (a response lost in transit), seconds; 0 = never.
    pub refresh_token_grace: u64,
    /// Verification-page session lifetime, seconds.
    pub session_ttl: u64,
    /// Codes matching no request one session may enter per window.
    pub code_failures_per_session: u32,
    /// Codes matching no request one account may enter per window.
    pub code_failures_per_account: u32,
    /// Codes matching no request from one source address per window before accounts there
    /// that guessed themselves are paused.
    pub code_failures_per_source: u32,
    /// Codes matching no request from one source address per window before such accounts are
    /// slowed down.
    pub code_slowdown_per_source: u32,
    /// Codes matching no request on the server per window before such accounts are paused.
    pub code_failures_global: u32,
    /// Failed sign-ins one session may make per window.
    pub sign_in_failures_per_session: u32,
    /// Failed sign-ins one source address may make per window.
    pub sign_in_failures_per_source: u32,
    /// The window the limits count in, and so the longest lockout, seconds.
    pub lockout_window: u64,
}

impl DeviceSettings {
    /// Defaults for an issuer (no trailing slash).
    pub fn for_issuer(issuer: &str) -> Self {
        DeviceSettings {
            device_authorization_endpoint: format!("{issuer}/oauth2/device_authorization"),
            verification_uri: format!("{issuer}/device"),
            expires_in: DEFAULT_EXPIRES_IN,
            interval: DEFAULT_INTERVAL,
            refresh_token_ttl: DEFAULT_REFRESH_TOKEN_TTL,
            refresh_token_grace: DEFAULT_REFRESH_TOKEN_GRACE,
            session_ttl: 1800,
            code_failures_per_session: 5,
            code_failures_per_account: 10,
            code_failures_per_source: 50,
            code_slowdown_per_source: 20,
            code_failures_global: 200,
            sign_in_failures_per_session: 5,
            sign_in_failures_per_source: 20,
            lockout_window: 900,
        }
    }
}

/// The device authorization response (RFC 8628 §3.2).
#[derive(Debug, Serialize)]
pub struct DeviceAuthorization {
    /// The device's polling credential (256 random bits).
    pub device_code: String,
    /// What the person types, `XXXX-XXXX`.
    pub user_code: String,
    /// Where they type it.
    pub verification_uri: String,
    /// The same with the code filled in, for a QR code.
    pub verification_uri_complete: String,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Seconds to wait between polls.
    pub interval: u64,
}

/// What one poll of the device code grant does (RFC 8628 §3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Poll {
    Issue {
        user: String,
    },
    Pending,
    SlowDown,
    Denied,
    Expired,
    Spent,
    WrongClient,
    /// RFC 9449 §10: the device code is bound to a DPoP key and the poll came without a proof
    /// by it. Nothing changes: not even `slow_down` counts.
    WrongKey {
        missing: bool,
    },
}

/// One poll against `grant` by `client_id` at `now`: the answer, and the record to store.
fn poll_step(
    grant: &DeviceGrant,
    client_id: &str,
    jkt: Option<&str>,
    now: u64,
) -> (Poll, Option<DeviceGrant>) {
    // §3.4: the device code is bound to the client it was issued to.
    if grant.client_id != client_id {
        return (Poll::WrongClient, None);
    }
    if let Some(bound) = &grant.dpop_jkt {
        if jkt != Some(bound.as_str()) {
            return (
                Poll::WrongKey {
                    missing: jkt.is_none(),
                },
                None,
            );
        }
    }
    match &grant.state {
        GrantState::Redeemed { .. } => (Poll::Spent, None),
        GrantState::Denied { .. } => (Poll::Denied, None),
        _ if now >= grant.expires_at => (Poll::Expired, None),
        GrantState::Approved { user, .. } => {
            let next = DeviceGrant {
                state: GrantState::Redeemed {
                    user: user.clone(),
                    at: now,
                },
                last_poll: Some(now),
                ..grant.clone()
            };
            (Poll::Issue { user: user.clone() }, Some(next))
        }
        GrantState::Pending => {
            let too_soon = grant
                .last_poll
                .is_some_and(|last| now < last.saturating_add(grant.interval));
            if too_soon {
                // §3.5: the interval grows for this and every later request.
                let next = DeviceGrant {
                    interval: grant.interval + SLOW_DOWN_STEP,
                    last_poll: Some(now),
                    ..grant.clone()
                };
                (Poll::SlowDown, Some(next))
            } else {
                (
                    Poll::Pending,
                    Some(DeviceGrant {
                        last_poll: Some(now),
                        ..grant.clone()
                    }),
                )
            }
        }
    }
}

impl AuthServer {
    /// RFC 8628 §3.1–3.2: a client (public by `client_id`, or authenticated as at the token
    /// endpoint) asks for a device code and a user code. Cheap on purpose: two random draws, one
    /// transaction, one group commit.
    pub async fn device_authorization(
        &self,
        presented: Presented,
        form: Form,
        ctx: &RequestCtx,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let dpop = ProofRequest::none(
            "POST",
            self.settings.device.device_authorization_endpoint.clone(),
        );
        self.device_authorization_with_dpop(presented, form, &dpop, ctx)
            .await
    }

    /// [`AuthServer::device_authorization`] with what the request brought for DPoP: a proof
    /// binds the device code to its key (RFC 9449 §10), so only that key can poll for tokens.
    pub async fn device_authorization_with_dpop(
        &self,
        presented: Presented,
        form: Form,
        dpop: &ProofRequest,
        ctx: &RequestCtx,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let proof = self.check_dpop_proof(dpop, None, ctx.now).await?;
        let client = self.authenticate(presented, true, ctx).await?;
        require_proof(&client, proof.as_ref())?;
        if !client.allows_grant(grant::DEVICE_CODE) {
            return Err(OAuthError::UnauthorizedClient(
                "client is not registered for the device_code grant".into(),
            ));
        }
        let allowed = self.allowed_scopes(&client).await?;
        let granted = scope::grant(form.get("scope"), &allowed)?;
        let s = &self.settings.device;
        let device_code = Secret::generate();
        let hash = TokenHash::of(device_code.expose());
        let mut record = DeviceGrant {
            user_code: String::new(),
            client_id: client.client_id.clone(),
            scope: granted,
            created_at: ctx.now,
            expires_at: ctx.now + s.expires_in,
            interval: s.interval,
            last_poll: None,
            state: GrantState::Pending,
            decided_in: None,
            dpop_jkt: proof.map(|p| p.jkt),
        };
        let mut user_code = None;
        for _ in 0..USER_CODE_DRAWS {
            let candidate = UserCode::generate();
            record.user_code = candidate.as_str().to_owned();
            if self
                .device_grants
                .insert_device_grant(&hash, &record)
                .await
                .map_err(OAuthError::from)?
            {
                user_code = Some(candidate);
                break;
            }
        }
        // Eight collisions in a row means the code space is nearly full: a flood, not bad luck.
        let user_code =
            user_code.ok_or_else(|| OAuthError::Internal("no free user code".into()))?;
        self.commit_for(ctx).await?;
        let shown = user_code.display();
        Ok(DeviceAuthorization {
            device_code: device_code.expose().to_owned(),
            verification_uri_complete: format!("{}?user_code={shown}", s.verification_uri),
            user_code: shown,
            verification_uri: s.verification_uri.clone(),
            expires_in: s.expires_in,
            interval: s.interval,
        })
    }

    /// RFC 8628 §3.4–3.5: the device polls with its device code. Tokens come once, after
    /// approval; `sub` is the approving user, `client_id` the device.
    pub(super) async fn device_code_grant(
        &self,
        presented: Presented,
        form: &Form,
        proof: Option<&Proof>,
        ctx: &RequestCtx,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate(presented, true, ctx).await?;
        require_proof(&client, proof)?;
        if !client.allows_grant(grant::DEVICE_CODE) {
            return Err(OAuthError::UnauthorizedClient(
                "client is not registered for the device_code grant".into(),
            ));
        }
        let jkt = proof.map(|p| p.jkt.as_str());
        let hash = TokenHash::of(form.require("device_code")?);
        let mut poll = Poll::Spent;
        let stored = self
            .device_grants
            .update_device_grant(&hash, &mut |g| {
                let (p, next) = poll_step(g, &client.client_id, jkt, ctx.now);
                poll = p;
                next
            })
            .await
            .map_err(OAuthError::from)?;
        let Some(stored) = stored else {
            return Err(OAuthError::InvalidGrant("unknown device_code".into()));
        };
        let user = match poll {
            Poll::Issue { user } => user,
            Poll::Pending => return Err(OAuthError::AuthorizationPending),
            Poll::SlowDown => return Err(OAuthError::SlowDown),
            Poll::Denied => return Err(OAuthError::AccessDenied),
            Poll::Expired => return Err(OAuthError::ExpiredToken),
            Poll::Spent => {
                return Err(OAuthError::InvalidGrant(
                    "device_code was already used".into(),
                ))
            }
            Poll::WrongClient => {
                return Err(OAuthError::InvalidGrant(
                    "device_code was issued to another client".into(),
                ))
            }
            Poll::WrongKey { missing: true } => return Err(DpopError::Missing.into()),
            Poll::WrongKey { missing: false } => return Err(DpopError::KeyMismatch.into()),
        };
        let granted = stored.scope.join(" ");
        let (refresh_token, family) = self
            .start_refresh_family(
                &client.client_id,
                &user,
                &granted,
                public_binding(&client, proof),
                ctx.now,
            )
            .await?;
        let mut claims = self.access_claims(&user, &client.client_id, &granted, ctx.now);
        claims.sid = Some(family);
        let token_type = bind(&mut claims, proof);
        let access_token = self.sign_access_token(&claims);
        // record() commits: the spent device code, the refresh token and the audit entry are
        // durable together before the tokens leave.
        self.record(ctx, issued_event(grant::DEVICE_CODE, &claims))
            .await?;
        Ok(TokenResponse {
            access_token,
            token_type,
            expires_in: self.settings.access_token_ttl,
            scope: granted,
            refresh_token: Some(refresh_token),
            issued_token_type: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(interval: u64, last_poll: Option<u64>) -> DeviceGrant {
        DeviceGrant {
            user_code: "BCDFGHJK".into(),
            client_id: "dev".into(),
            scope: vec!["a".into()],
            created_at: 100,
            expires_at: 700,
            interval,
            last_poll,
            state: GrantState::Pending,
            decided_in: None,
            dpop_jkt: None,
        }
    }

    #[test]
    fn polling_too_fast_grows_the_interval_by_five() {
        let (p, next) = poll_step(&pending(5, None), "dev", None, 110);
        assert_eq!(p, Poll::Pending);
        let g = next.unwrap();
        let (p, next) = poll_step(&g, "dev", None, 112);
        assert_eq!(p, Poll::SlowDown);
        let g = next.unwrap();
        assert_eq!((g.interval, g.last_poll), (10, Some(112)));
        // 10 s now: 8 s later is still too fast, and it grows again.
        let (p, next) = poll_step(&g, "dev", None, 120);
        assert_eq!(
            (p, next.as_ref().map(|g| g.interval)),
            (Poll::SlowDown, Some(15))
        );
        let (p, _) = poll_step(&next.unwrap(), "dev", None, 135);
        assert_eq!(p, Poll::Pending);
    }

    #[test]
    fn approval_issues_once_and_other_states_answer_their_error() {
        let mut g = pending(5, None);
        g.state = GrantState::Approved {
            user: "ann".into(),
            at: 120,
        };
        let (p, next) = poll_step(&g, "dev", None, 121);
        assert_eq!(p, Poll::Issue { user: "ann".into() });
        let spent = next.unwrap();
        assert_eq!(poll_step(&spent, "dev", None, 122).0, Poll::Spent);
        assert_eq!(poll_step(&g, "other", None, 121), (Poll::WrongClient, None));
        assert_eq!(poll_step(&g, "dev", None, 700), (Poll::Expired, None));
        assert_eq!(
            poll_step(&pending(5, None), "dev", None, 700),
            (Poll::Expired, None)
        );
        g.state = GrantState::Denied {
            user: "ann".into(),
            at: 120,
        };
        assert_eq!(poll_step(&g, "dev", None, 121), (Poll::Denied, None));
    }
}
