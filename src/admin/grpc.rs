//! The gRPC admin service: a thin adapter from protobuf to [`Issuer`] calls.
//! Errors become `tonic::Status` in exactly one function, [`status`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{Entry, text};
use crate::issuer::{
    AuditAction, Caller, Credentials, EntryRequest, GenerateRequest, Issuer, IssuerError, MintRequest, SignRequest,
};
use crate::policy::Action;
use crate::proto::admin::v1 as pb;
use crate::store::{AuditFilter, CaRecord, CaRole, CertFilter, CertRecord, CertStatus, StoreError};

use super::grpc_cas;
use super::grpc_profiles;
use crate::attest::TlsPeer;

/// Most audit records in one `ListAudit` page, and about the most bytes.
const AUDIT_PAGE: u32 = 500;
const AUDIT_PAGE_BYTES: usize = 1024 * 1024;

pub struct AdminService {
    issuer: Arc<Issuer>,
}

impl AdminService {
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self { issuer }
    }

    async fn caller<T>(&self, request: &Request<T>, action: AuditAction) -> Result<Caller, Status> {
        let bearer = crate::attest::bearer(request.metadata());
        let peer_cert_der = request.extensions().get::<TlsPeer>().and_then(|p| p.certificate.clone());
        let creds = Credentials { bearer, peer_cert_der };
        self.issuer.authenticate(&creds, action).await.map_err(status)
    }
}

/// The one mapping from service errors to gRPC status codes. The message is
/// bounded: whatever a caller sent, its refusal does not echo it back whole.
pub fn status(err: IssuerError) -> Status {
    let msg = text::shorten(&err.to_string(), 2 * text::MAX_RECORDED);
    match err {
        IssuerError::Unauthenticated(_) => Status::unauthenticated(msg),
        IssuerError::PermissionDenied(_) | IssuerError::Denied { .. } => Status::permission_denied(msg),
        IssuerError::InvalidArgument(_) => Status::invalid_argument(msg),
        IssuerError::Ca(e) if e.is_bad_input() => Status::invalid_argument(msg),
        IssuerError::NotFound(_) => Status::not_found(msg),
        IssuerError::Store(StoreError::Conflict { .. }) => Status::already_exists(msg),
        IssuerError::Store(StoreError::NotFound { .. }) => Status::not_found(msg),
        IssuerError::FailedPrecondition(_) | IssuerError::Store(StoreError::Refused { .. }) => {
            Status::failed_precondition(msg)
        }
        IssuerError::Store(_) => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadStatus)).await?;
        let s = self.issuer.status(&caller).await.map_err(status)?;
        let mut root = None;
        let mut intermediates = Vec::new();
        for ca in s.cas {
            let info = pb::CaInfo {
                role: ca.role.as_str().into(),
                common_name: ca.common_name,
                fingerprint: ca.fingerprint,
                algorithm: ca.algorithm,
                not_before: ca.not_before,
                not_after: ca.not_after,
                active: ca.state == crate::domain::CaState::Active,
                key_online: ca.key_online,
                state: ca.state.as_str().into(),
                ..pb::CaInfo::default()
            };
            if ca.role == CaRole::Root && ca.state == crate::domain::CaState::Active {
                root = Some(info);
            } else {
                intermediates.push(info);
            }
        }
        Ok(Response::new(pb::StatusResponse {
            health: if s.healthy { "HEALTHY" } else { "DEGRADED" }.into(),
            trust_domain: self.issuer.trust_domain().to_string(),
            root,
            intermediates,
            active_certificates: s.active_certificates,
            denied_identities: s.denied_identities,
            warnings: s.warnings,
        }))
    }

    async fn create_intermediary(
        &self,
        request: Request<pb::CreateIntermediaryRequest>,
    ) -> Result<Response<pb::CaInfo>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::CreateIntermediary)).await?;
        let req = request.into_inner();
        let role = match req.role.as_str() {
            "" | "services" => CaRole::Services,
            "transport" => CaRole::Transport,
            "profiles" => CaRole::Profiles,
            other => {
                return Err(Status::invalid_argument(format!("role {other:?} is not services, transport or profiles")));
            }
        };
        let record =
            self.issuer.create_intermediary(&caller, role, &req.common_name, req.ttl_days).await.map_err(status)?;
        Ok(Response::new(ca_info(&record)))
    }

    async fn import_crl(&self, request: Request<pb::ImportCrlRequest>) -> Result<Response<pb::CrlInfo>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ImportCrl)).await?;
        let crl = self.issuer.import_crl(&caller, &request.into_inner().crl).await.map_err(status)?;
        Ok(Response::new(pb::CrlInfo {
            issuer_fingerprint: crl.issuer_fingerprint,
            number: crl.number,
            this_update: crl.this_update.unix_timestamp(),
            next_update: crl.next_update.unix_timestamp(),
        }))
    }

    async fn bundle(&self, request: Request<pb::BundleRequest>) -> Result<Response<pb::BundleResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadBundle)).await?;
        let pem = self.issuer.bundle(&caller).await.map_err(status)?;
        Ok(Response::new(pb::BundleResponse { pem }))
    }

    async fn generate_certificate(
        &self,
        request: Request<pb::GenerateCertificateRequest>,
    ) -> Result<Response<pb::GenerateCertificateResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::IssueCertificate)).await?;
        let req = request.into_inner();
        if !req.profile.is_empty() {
            return grpc_profiles::generate(&self.issuer, &caller, req).await.map(Response::new);
        }
        let issued = self
            .issuer
            .generate(
                &caller,
                &GenerateRequest {
                    common_name: req.common_name,
                    spiffe_id: req.spiffe_id,
                    dns_names: req.dns_names,
                    ttl_seconds: req.ttl_seconds,
                },
            )
            .await
            .map_err(status)?;
        let private_key_pem = issued.private_key.as_ref().map(|k| k.to_pem().to_string()).unwrap_or_default();
        Ok(Response::new(pb::GenerateCertificateResponse {
            certificate_pem: issued.chain_pem,
            private_key_pem,
            certificate: Some(cert_info(&issued.record, self.issuer.now().unix_timestamp())),
        }))
    }

    async fn sign_csr(&self, request: Request<pb::SignCsrRequest>) -> Result<Response<pb::SignCsrResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::SignCsr)).await?;
        let req = request.into_inner();
        if !req.profile.is_empty() {
            return grpc_profiles::sign(&self.issuer, &caller, req).await.map(Response::new);
        }
        let issued = self
            .issuer
            .sign_csr(&caller, &SignRequest { csr: req.csr, spiffe_id: req.spiffe_id, ttl_seconds: req.ttl_seconds })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SignCsrResponse {
            certificate_pem: issued.chain_pem,
            certificate: Some(cert_info(&issued.record, self.issuer.now().unix_timestamp())),
        }))
    }

    async fn list_certificates(
        &self,
        request: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadCertificates)).await?;
        let req = request.into_inner();
        let now = self.issuer.now().unix_timestamp();
        let filter = CertFilter {
            spiffe_id: (!req.spiffe_id.is_empty()).then_some(req.spiffe_id),
            expiring_before: (req.expiring_within_seconds > 0).then(|| now.saturating_add(req.expiring_within_seconds)),
            unexpired_at: (!req.include_expired).then_some(now),
            mount: None,
            node: None,
            limit: (req.limit > 0).then_some(req.limit),
        };
        let certs = self.issuer.list_certificates(&caller, &filter).await.map_err(status)?;
        Ok(Response::new(pb::ListCertificatesResponse {
            certificates: certs.iter().map(|c| cert_info(c, now)).collect(),
        }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::RevokeCertificate)).await?;
        let req = request.into_inner();
        let (record, already) = self.issuer.revoke(&caller, &req.serial, &req.reason).await.map_err(status)?;
        Ok(Response::new(pb::RevokeCertificateResponse {
            certificate: Some(cert_info(&record, self.issuer.now().unix_timestamp())),
            already_revoked: already,
        }))
    }

    async fn deny_identity(
        &self,
        request: Request<pb::DenyIdentityRequest>,
    ) -> Result<Response<pb::DenyIdentityResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::DenyIdentity)).await?;
        let req = request.into_inner();
        let revoked_serials = self.issuer.deny(&caller, &req.spiffe_id, &req.reason).await.map_err(status)?;
        Ok(Response::new(pb::DenyIdentityResponse { revoked_serials }))
    }

    async fn allow_identity(
        &self,
        request: Request<pb::AllowIdentityRequest>,
    ) -> Result<Response<pb::AllowIdentityResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::AllowIdentity)).await?;
        let req = request.into_inner();
        let was_denied = self.issuer.allow(&caller, &req.spiffe_id).await.map_err(status)?;
        Ok(Response::new(pb::AllowIdentityResponse { was_denied }))
    }

    async fn list_denied(
        &self,
        request: Request<pb::ListDeniedRequest>,
    ) -> Result<Response<pb::ListDeniedResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadDenied)).await?;
        let list = self.issuer.deny_list(&caller).await.map_err(status)?;
        Ok(Response::new(pb::ListDeniedResponse {
            identities: list
                .into_iter()
                .map(|d| pb::DeniedIdentity {
                    spiffe_id: d.spiffe_id,
                    reason: d.reason,
                    denied_at: d.denied_at,
                    denied_by: d.denied_by,
                })
                .collect(),
        }))
    }

    async fn mint_token(
        &self,
        request: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::MintTokenResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::MintToken)).await?;
        let req = request.into_inner();
        let kind = req.kind.parse().map_err(|e: crate::domain::DomainError| Status::invalid_argument(e.to_string()))?;
        let minted = self
            .issuer
            .mint_token(
                &caller,
                &MintRequest {
                    kind,
                    subject: req.subject,
                    expires_in_seconds: req.expires_in_seconds,
                    single_use: req.single_use,
                    spiffe_ids: req.spiffe_ids,
                    cert_fingerprint: (!req.cert_fingerprint.is_empty()).then_some(req.cert_fingerprint),
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MintTokenResponse { token: minted.token, expires_at: minted.expires_at, jti: minted.jti }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadAudit)).await?;
        let req = request.into_inner();
        let page = if req.limit == 0 { AUDIT_PAGE } else { req.limit.min(AUDIT_PAGE) };
        let filter = AuditFilter {
            since: (req.since > 0).then_some(req.since),
            target: (!req.spiffe_id.is_empty()).then_some(req.spiffe_id),
            before_id: (req.before_id > 0).then_some(req.before_id),
            limit: Some(page),
        };
        let records = self.issuer.audit_log(&caller, &filter).await.map_err(status)?;
        let full = records.len() >= page as usize;
        // Newest first until the page is about AUDIT_PAGE_BYTES; records
        // written before fields were bounded are cut on the way out.
        let bound = |s: String| text::shorten(&s, text::MAX_RECORDED);
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut cut = false;
        for a in records.into_iter().rev() {
            let entry = pb::AuditEntry {
                id: a.id,
                at: a.at,
                actor: bound(a.actor),
                action: bound(a.action),
                target: bound(a.target),
                outcome: bound(a.outcome),
                reason: bound(a.reason),
            };
            bytes += prost::Message::encoded_len(&entry);
            if bytes > AUDIT_PAGE_BYTES && !entries.is_empty() {
                cut = true;
                break;
            }
            entries.push(entry);
        }
        entries.reverse();
        let next_before_id = match entries.first() {
            Some(oldest) if full || cut => oldest.id,
            _ => 0,
        };
        Ok(Response::new(pb::ListAuditResponse { entries, next_before_id }))
    }

    async fn create_entry(&self, request: Request<pb::CreateEntryRequest>) -> Result<Response<pb::Entry>, Status> {
        let caller = self.caller(&request, AuditAction::CreateEntry).await?;
        let req = request.into_inner();
        let entry = EntryRequest {
            spiffe_id: req.spiffe_id,
            selectors: req.selectors,
            dns_names: req.dns_names,
            ttl_seconds: (req.ttl_seconds > 0).then_some(req.ttl_seconds),
            jwt_ttl_seconds: (req.jwt_ttl_seconds > 0).then_some(req.jwt_ttl_seconds),
            hint: (!req.hint.is_empty()).then_some(req.hint),
            federates_with: req.federates_with,
            node: (!req.node.is_empty()).then_some(req.node),
        };
        let created = self.issuer.create_entry(&caller, entry).await.map_err(status)?;
        Ok(Response::new(entry_info(&created)))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let caller = self.caller(&request, AuditAction::ListEntries).await?;
        let entries = self.issuer.list_entries(&caller).await.map_err(status)?;
        Ok(Response::new(pb::ListEntriesResponse { entries: entries.iter().map(entry_info).collect() }))
    }

    async fn show_entry(&self, request: Request<pb::ShowEntryRequest>) -> Result<Response<pb::Entry>, Status> {
        let caller = self.caller(&request, AuditAction::ShowEntry).await?;
        let entry = self.issuer.show_entry(&caller, &request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(entry_info(&entry)))
    }

    async fn delete_entry(&self, request: Request<pb::DeleteEntryRequest>) -> Result<Response<pb::Entry>, Status> {
        let caller = self.caller(&request, AuditAction::DeleteEntry).await?;
        let entry = self.issuer.delete_entry(&caller, &request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(entry_info(&entry)))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = self.caller(&request, AuditAction::ListAgents).await?;
        let agents = self.issuer.list_agents(&caller).await.map_err(status)?;
        let agents = agents
            .into_iter()
            .map(|(a, entries)| pb::AgentInfo {
                node: a.node,
                spiffe_id: a.spiffe_id,
                replica: a.replica.unwrap_or_default(),
                last_seen: a.last_seen.unwrap_or_default(),
                svid_not_after: a.not_after,
                entries: entries as u64,
                svids: u64::try_from(a.svids).unwrap_or(0),
                evicted: a.evicted_at.is_some(),
                attested_at: a.attested_at,
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn evict_agent(
        &self,
        request: Request<pb::EvictAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        let caller = self.caller(&request, AuditAction::EvictAgent).await?;
        let revoked = self.issuer.evict_agent(&caller, &request.into_inner().node).await.map_err(status)?;
        Ok(Response::new(pb::EvictAgentResponse { revoked }))
    }

    async fn put_profile(
        &self,
        request: Request<pb::PutProfileRequest>,
    ) -> Result<Response<pb::ProfileResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ManageProfiles)).await?;
        grpc_profiles::put(&self.issuer, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn show_profile(
        &self,
        request: Request<pb::ShowProfileRequest>,
    ) -> Result<Response<pb::ProfileResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadProfiles)).await?;
        grpc_profiles::show(&self.issuer, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadProfiles)).await?;
        grpc_profiles::list(&self.issuer, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn delete_profile(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ManageProfiles)).await?;
        grpc_profiles::delete(&self.issuer, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn prepare_ca(&self, request: Request<pb::PrepareCaRequest>) -> Result<Response<pb::CaList>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::CreateIntermediary)).await?;
        grpc_cas::prepare(&self.issuer, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn activate_ca(&self, request: Request<pb::CaStepRequest>) -> Result<Response<pb::CaList>, Status> {
        self.ca_step(request, grpc_cas::Step::Activate).await
    }

    async fn taint_ca(&self, request: Request<pb::CaStepRequest>) -> Result<Response<pb::CaList>, Status> {
        self.ca_step(request, grpc_cas::Step::Taint).await
    }

    async fn revoke_ca(&self, request: Request<pb::CaStepRequest>) -> Result<Response<pb::CaList>, Status> {
        self.ca_step(request, grpc_cas::Step::Revoke).await
    }

    async fn list_cas(&self, request: Request<pb::ListCasRequest>) -> Result<Response<pb::CaList>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::ReadStatus)).await?;
        grpc_cas::list_all(&self.issuer, &caller).await.map(Response::new)
    }
}

impl AdminService {
    async fn ca_step(
        &self,
        request: Request<pb::CaStepRequest>,
        step: grpc_cas::Step,
    ) -> Result<Response<pb::CaList>, Status> {
        let caller = self.caller(&request, AuditAction::Policy(Action::CreateIntermediary)).await?;
        grpc_cas::step(&self.issuer, &caller, step, request.into_inner()).await.map(Response::new)
    }
}

fn entry_info(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        dns_names: e.dns_names.clone(),
        ttl_seconds: e.ttl_seconds.map_or(0, u64::from),
        jwt_ttl_seconds: e.jwt_ttl_seconds.map_or(0, u64::from),
        hint: e.hint.clone().unwrap_or_default(),
        federates_with: e.federates_with.iter().map(|td| td.as_str().to_string()).collect(),
        created_at: e.created_at,
        node: e.node.as_ref().map(ToString::to_string).unwrap_or_default(),
    }
}

pub(super) fn ca_info(r: &CaRecord) -> pb::CaInfo {
    let algorithm = crate::ca::CaCertificate::from_der(&r.cert_der).map(|c| c.algorithm).unwrap_or_default();
    pb::CaInfo {
        role: r.role.as_str().into(),
        common_name: r.common_name.clone(),
        fingerprint: r.id.clone(),
        algorithm,
        not_before: r.not_before,
        not_after: r.not_after,
        active: r.state == crate::domain::CaState::Active,
        key_online: r.sealed_key.is_some(),
        state: r.state.as_str().into(),
        ..pb::CaInfo::default()
    }
}

pub(super) fn cert_info(c: &CertRecord, now: i64) -> pb::CertificateInfo {
    let status = match c.status {
        CertStatus::Revoked => "revoked",
        CertStatus::Active if c.not_after <= now => "expired",
        CertStatus::Active => "active",
    };
    pb::CertificateInfo {
        serial: c.serial.clone(),
        spiffe_id: c.spiffe_id.clone(),
        fingerprint: c.fingerprint.clone(),
        issuer: c.issuer_id.clone(),
        not_before: c.not_before,
        not_after: c.not_after,
        status: status.into(),
        revoked_at: c.revoked_at.unwrap_or_default(),
        revocation_reason: c.revocation_reason.clone().unwrap_or_default(),
        common_name: c.common_name.clone().unwrap_or_default(),
        profile: c.profile.as_ref().map(|p| format!("{}/{}", p.mount, p.name)).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_refusals_keep_their_meaning_on_the_wire() {
        let code = |e: StoreError| status(IssuerError::Store(e)).code();
        assert_eq!(code(StoreError::NotFound { what: "CA x".into() }), tonic::Code::NotFound);
        let refused = StoreError::Refused { what: "CA x (revoked)".into(), reason: "a revoked CA …".into() };
        assert_eq!(code(refused), tonic::Code::FailedPrecondition);
        assert_eq!(code(StoreError::Conflict { what: "CA x".into() }), tonic::Code::AlreadyExists);
        assert_eq!(code(StoreError::Unavailable("down".into())), tonic::Code::Unavailable);
    }
}
