//! `envoy.service.auth.v3.Authorization/Check`.

use std::sync::Arc;

use arbiter_engine::DenyReason;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use crate::convert::{self, ResponseContext};
use crate::state::State;

/// The ext_authz service. Every request it can decode gets a `CheckResponse`: errors are
/// denials with a reason, never gRPC errors, so Envoy's `failure_mode_allow` never decides.
#[derive(Debug, Clone)]
pub struct AuthzService {
    state: Arc<State>,
}

impl AuthzService {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let requested_by = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let authz_request = convert::authz_request(request.get_ref());
        let (outcome, decision_id) = self.state.check(authz_request, requested_by).await;
        Ok(Response::new(convert::check_response(
            &outcome.decision,
            ResponseContext {
                decision_id: &decision_id,
                // An unaudited request is denied even in dry-run mode.
                dry_run: self.state.options.dry_run
                    && !matches!(outcome.decision.reason, Some(DenyReason::AuditUnavailable)),
            },
        )))
    }
}
