//! The person's side of the device flow (RFC 8628 §3.3): look up what they typed, show which
//! device asks for what, record their approval or denial. Used by the verification page.

use super::UserCode;
use crate::oauth::{AuthServer, OAuthError, RequestCtx};
use crate::store::audit::{AuditEvent, Outcome};
use crate::store::grants::{DeviceGrant, GrantState, TokenHash};
use crate::store::Device;

/// A pending request as the verification page shows it.
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
    /// Malformed, or no request has it.
    Unknown,
    /// The request expired.
    Expired,
    /// The request was already approved or denied.
    Used,
}

impl CodeProblem {
    fn as_str(self) -> &'static str {
        match self {
            CodeProblem::Unknown => "unknown code",
            CodeProblem::Expired => "expired code",
            CodeProblem::Used => "code already used",
        }
    }
}

/// What looking up (or deciding on) a user code found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CodeLookup {
    /// A pending request (after a decision: the request the decision was recorded for).
    Found(Box<PendingRequest>),
    /// Nothing to act on.
    Problem(CodeProblem),
}

impl AuthServer {
    /// RFC 8628 §3.3: what a person typed on the verification page. Failures are audited
    /// (`device.code_rejected`); `actor` is the signed-in user.
    pub async fn look_up_user_code(
        &self,
        input: &str,
        actor: &str,
        ctx: &RequestCtx,
    ) -> Result<CodeLookup, OAuthError> {
        let found = match UserCode::parse(input) {
            Some(code) => self.pending_request(&code, ctx.now)?,
            None => Err(CodeProblem::Unknown),
        };
        match found {
            Ok((_, request)) => Ok(CodeLookup::Found(Box::new(request))),
            Err(problem) => {
                let event = AuditEvent::new("device.code_rejected", Outcome::Failure)
                    .actor(actor)
                    .reason(problem.as_str());
                self.record(ctx, event).await?;
                Ok(CodeLookup::Problem(problem))
            }
        }
    }

    /// The person approves or denies the request holding `code`. Recorded only while the
    /// request is pending and unexpired; audited (`device.approved` / `device.denied`) and
    /// durable before this returns.
    pub async fn decide_device_request(
        &self,
        code: &UserCode,
        user: &str,
        approve: bool,
        ctx: &RequestCtx,
    ) -> Result<CodeLookup, OAuthError> {
        let (hash, request) = match self.pending_request(code, ctx.now)? {
            Ok(found) => found,
            Err(problem) => return Ok(CodeLookup::Problem(problem)),
        };
        let mut problem = None;
        self.device_grants
            .update_device_grant(&hash, &mut |g| {
                problem = grant_problem(g, ctx.now);
                if problem.is_some() {
                    return None;
                }
                let (user, at) = (user.to_owned(), ctx.now);
                let state = if approve {
                    GrantState::Approved { user, at }
                } else {
                    GrantState::Denied { user, at }
                };
                Some(DeviceGrant { state, ..g.clone() })
            })
            .map_err(OAuthError::internal)?;
        if let Some(p) = problem {
            // Someone decided between our look-up and our write.
            return Ok(CodeLookup::Problem(p));
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

    /// The pending request holding `code` (with its device code's hash), and what the page
    /// shows about its client; or why there is none.
    fn pending_request(
        &self,
        code: &UserCode,
        now: u64,
    ) -> Result<Result<(TokenHash, PendingRequest), CodeProblem>, OAuthError> {
        let Some((hash, grant)) = self
            .device_grants
            .device_grant_by_user_code(code.as_str())
            .map_err(OAuthError::internal)?
        else {
            return Ok(Err(CodeProblem::Unknown));
        };
        if let Some(problem) = grant_problem(&grant, now) {
            return Ok(Err(problem));
        }
        let client = self
            .clients
            .client(&grant.client_id)
            .map_err(OAuthError::internal)?;
        let Some(client) = client.filter(|c| !c.disabled) else {
            // A device disabled since it asked is nothing to approve.
            return Ok(Err(CodeProblem::Unknown));
        };
        let device = self
            .devices
            .device(&grant.client_id)
            .map_err(OAuthError::internal)?;
        let request = PendingRequest {
            user_code: code.clone(),
            client_id: grant.client_id,
            client_name: client.client_name.clone(),
            device,
            scope: grant.scope,
            expires_at: grant.expires_at,
        };
        Ok(Ok((hash, request)))
    }
}

/// Why a stored request cannot be decided on now, if it cannot.
fn grant_problem(grant: &DeviceGrant, now: u64) -> Option<CodeProblem> {
    match grant.state {
        GrantState::Pending if now >= grant.expires_at => Some(CodeProblem::Expired),
        GrantState::Pending => None,
        _ => Some(CodeProblem::Used),
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
        }
    }

    #[test]
    fn only_pending_unexpired_requests_can_be_decided() {
        assert_eq!(grant_problem(&pending(5, None), 699), None);
        assert_eq!(
            grant_problem(&pending(5, None), 700),
            Some(CodeProblem::Expired)
        );
        let mut g = pending(5, None);
        g.state = GrantState::Redeemed {
            user: "ann".into(),
            at: 1,
        };
        assert_eq!(grant_problem(&g, 1), Some(CodeProblem::Used));
    }
}
