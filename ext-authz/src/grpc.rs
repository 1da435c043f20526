//! `envoy.service.auth.v3.Authorization/Check`.

use std::sync::Arc;

use arbiter_engine::DenyReason;
use arbiter_engine::trace_context::TraceContext;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use crate::convert::{self, ResponseContext};
use crate::metrics::Origin;
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
        // Envoy's span for this call (its ext_authz client injects it into the call's
        // metadata), before the checked request's own `traceparent`.
        let meta = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok());
        let trace = TraceContext::from_headers(meta("traceparent"), meta("tracestate"));
        let authz_request = convert::authz_request(request.get_ref());
        let (outcome, decision_id) = self
            .state
            .check_as(Origin::Grpc, authz_request, requested_by, trace)
            .await;
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
