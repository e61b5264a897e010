//! The person's side of the device flow (RFC 8628 §3.3): look up what they typed, show which
//! device asks for what, record their approval or denial. Used by the verification page.
//!
//! A decision records which browser session made it (an opaque tag), so the page can tell the
//! person who pressed Approve twice that it worked, and anyone else that it was already decided.

use super::UserCode;
use crate::oauth::{AuthServer, OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::grants::{DeviceGrant, GrantState, TokenHash};
use crate::store::Device;

/// A request as the verification page shows it.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    /// Its user code.
    pub user_code: UserCode,
    /// The requesting client.
    pub client_id: String,
    /// Its registered name.
    pub client_name: Option<String>,
    /// The registered device behind the client, if it is one.
    pub device: Option<Device>,
    /// Scope it asks for.
    pub scope: Vec<String>,
    /// When the request expires.
    pub expires_at: u64,
}

/// Why a user code cannot be acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodeProblem {
    /// Malformed, or no request has it: the only problem that can be a guess.
    Unknown,
    /// The request expired before anyone decided.
    Expired,
}

impl CodeProblem {
    fn as_str(self) -> &'static str {
        match self {
            CodeProblem::Unknown => "unknown code",
            CodeProblem::Expired => "expired code",
        }
    }
}

/// A request someone already approved or denied.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What was decided on.
    pub request: PendingRequest,
    /// Approved (else denied).
    pub approved: bool,
    /// The account that decided.
    pub user: String,
    /// Whether the browser session asking now is the one that decided.
    pub same_session: bool,
}

/// What looking up (or deciding on) a user code found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CodeLookup {
    /// A pending request (after a decision: the request the decision was recorded for).
    Found(Box<PendingRequest>),
    /// The request was decided already (or, after a decision, by someone else first).
    Decided(Box<Decision>),
    /// Nothing to act on.
    Problem(CodeProblem),
}

impl AuthServer {
    /// RFC 8628 §3.3: what a person typed on the verification page. Codes that cannot be acted
    /// on are audited (`device.code_rejected`); `actor` is the signed-in user, `session` the tag
    /// of their browser session.
    pub async fn look_up_user_code(
        &self,
        input: &str,
        actor: &str,
        session: Option<&str>,
        ctx: &RequestCtx,
    ) -> Result<CodeLookup, OAuthError> {
        let found = match UserCode::parse(input) {
            Some(code) => self.device_request(&code, session, ctx.now).await?,
            None => CodeLookup::Problem(CodeProblem::Unknown),
        };
        let reason = match &found {
            CodeLookup::Problem(p) => Some(p.as_str()),
            CodeLookup::Decided(d) if !d.same_session => Some("code already used"),
            _ => None,
        };
        if let Some(reason) = reason {
            let event = AuditEvent::new("device.code_rejected", Outcome::Failure)
                .actor(actor)
                .reason(reason);
            self.record(ctx, event).await?;
        }
        Ok(found)
    }

    /// The person approves or denies the request holding `code`, from browser session
    /// `session`. Recorded only while the request is pending and unexpired; audited
    /// (`device.approved` / `device.denied`) and durable before this returns. A request already
    /// decided comes back as [`CodeLookup::Decided`].
    pub async fn decide_device_request(
        &self,
        code: &UserCode,
        user: &str,
        session: Option<&str>,
        approve: bool,
        ctx: &RequestCtx,
    ) -> Result<CodeLookup, OAuthError> {
        let Some((hash, _, request)) = self.find(code).await? else {
            return Ok(CodeLookup::Problem(CodeProblem::Unknown));
        };
        let mut seen = None;
        self.device_grants
            .update_device_grant(&hash, &mut |g| {
                seen = Some(g.clone());
                if !matches!(g.state, GrantState::Pending) || ctx.now >= g.expires_at {
                    return None;
                }
                let (user, at) = (user.to_owned(), ctx.now);
                let state = if approve {
                    GrantState::Approved { user, at }
                } else {
                    GrantState::Denied { user, at }
                };
                Some(DeviceGrant {
                    state,
                    decided_in: session.map(str::to_owned),
                    ..g.clone()
                })
            })
            .await
            .map_err(OAuthError::from)?;
        // The record as it was when our change was (or was not) applied.
        let Some(before) = seen else {
            return Ok(CodeLookup::Problem(CodeProblem::Unknown));
        };
        let request = PendingRequest {
            expires_at: before.expires_at,
            ..request
        };
        if let Some(answer) = settled(&before, request.clone(), session, ctx.now) {
            return Ok(answer);
        }
        let (name, verb) = if approve {
            ("device.approved", "approved")
        } else {
            ("device.denied", "denied")
        };
        let event = AuditEvent::new(name, Outcome::Success)
            .actor(user)
            .subject(user)
            .client(&request.client_id)
            .reason(format!("{verb} scope={}", request.scope.join(" ")));
        self.record(ctx, event).await?;
        Ok(CodeLookup::Found(Box::new(request)))
    }

    /// Where the request holding `code` stands, seen from browser session `session`; nothing
    /// is written or audited.
    pub async fn device_request(
        &self,
        code: &UserCode,
        session: Option<&str>,
        now: u64,
    ) -> Result<CodeLookup, OAuthError> {
        let Some((_, grant, request)) = self.find(code).await? else {
            return Ok(CodeLookup::Problem(CodeProblem::Unknown));
        };
        Ok(settled(&grant, request.clone(), session, now)
            .unwrap_or_else(|| CodeLookup::Found(Box::new(request))))
    }

    /// The request holding `code` (with its device code's hash) and what the page shows about
    /// its client, whatever its state; `None` if there is none or its client is disabled.
    async fn find(
        &self,
        code: &UserCode,
    ) -> Result<Option<(TokenHash, DeviceGrant, PendingRequest)>, OAuthError> {
        let Some((hash, grant)) = self
            .device_grants
            .device_grant_by_user_code(code.as_str())
            .await
            .map_err(OAuthError::from)?
        else {
            return Ok(None);
        };
        let client = self
            .clients
            .client(&grant.client_id)
            .await
            .map_err(OAuthError::from)?;
        let Some(client) = client.filter(|c| !c.disabled) else {
            // A device disabled since it asked is nothing to approve.
            return Ok(None);
        };
        let device = self
            .devices
            .device(&grant.client_id)
            .await
            .map_err(OAuthError::from)?;
        let request = PendingRequest {
            user_code: code.clone(),
            client_id: grant.client_id.clone(),
            client_name: client.client_name.clone(),
            device,
            scope: grant.scope.clone(),
            expires_at: grant.expires_at,
        };
        Ok(Some((hash, grant, request)))
    }
}

/// What a request that can no longer be decided on says, if it cannot: decided (by whom, seen
/// from `session`) or expired.
fn settled(
    grant: &DeviceGrant,
    request: PendingRequest,
    session: Option<&str>,
    now: u64,
) -> Option<CodeLookup> {
    let (approved, user) = match &grant.state {
        GrantState::Pending if now >= grant.expires_at => {
            return Some(CodeLookup::Problem(CodeProblem::Expired))
        }
        GrantState::Pending => return None,
        GrantState::Approved { user, .. } | GrantState::Redeemed { user, .. } => (true, user),
        GrantState::Denied { user, .. } => (false, user),
    };
    let same_session = session.is_some() && grant.decided_in.as_deref() == session;
    Some(CodeLookup::Decided(Box::new(Decision {
        request,
        approved,
        user: user.clone(),
        same_session,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(state: GrantState, decided_in: Option<&str>) -> DeviceGrant {
        DeviceGrant {
            user_code: "BCDFGHJK".into(),
            client_id: "dev".into(),
            scope: vec!["a".into()],
            created_at: 100,
            expires_at: 700,
            interval: 5,
            last_poll: None,
            state,
            decided_in: decided_in.map(str::to_owned),
            dpop_jkt: None,
        }
    }

    fn request() -> PendingRequest {
        PendingRequest {
            user_code: UserCode::parse("BCDFGHJK").unwrap(),
            client_id: "dev".into(),
            client_name: None,
            device: None,
            scope: vec![],
            expires_at: 700,
        }
    }

    #[test]
    fn only_pending_unexpired_requests_can_be_decided() {
        assert!(settled(&grant(GrantState::Pending, None), request(), None, 699).is_none());
        assert!(matches!(
            settled(&grant(GrantState::Pending, None), request(), None, 700),
            Some(CodeLookup::Problem(CodeProblem::Expired))
        ));
    }

    #[test]
    fn a_decision_knows_the_session_that_made_it() {
        let redeemed = grant(
            GrantState::Redeemed {
                user: "ann".into(),
                at: 1,
            },
            Some("tag-a"),
        );
        // Even after expiry, and after the device took its tokens.
        for (session, same) in [(Some("tag-a"), true), (Some("tag-b"), false), (None, false)] {
            let Some(CodeLookup::Decided(d)) = settled(&redeemed, request(), session, 900) else {
                panic!("not decided");
            };
            assert_eq!(
                (d.approved, d.user.as_str(), d.same_session),
                (true, "ann", same)
            );
        }
        let denied = grant(
            GrantState::Denied {
                user: "bob".into(),
                at: 1,
            },
            None,
        );
        let Some(CodeLookup::Decided(d)) = settled(&denied, request(), None, 10) else {
            panic!("not decided");
        };
        assert!(!d.approved && !d.same_session, "no tag matches no tag");
    }
}
