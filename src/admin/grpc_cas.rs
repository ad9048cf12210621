//! The admin service's side of CA rotation: `PrepareCa`, `ActivateCa`,
//! `TaintCa`, `RevokeCa`, `ListCas`. Each turns protobuf into the issuer's
//! calls; errors go through `grpc::status`.

use tonic::Status;

use super::grpc::{ca_info, status};
use crate::domain::CaRole;
use crate::issuer::{AuditAction, CaListing, Caller, Issuer, PrepareRequest};
use crate::proto::admin::v1 as pb;
use crate::store::CaRecord;

/// Which step a `CaStepRequest` asks for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    Activate,
    Taint,
    Revoke,
}

pub(super) async fn prepare(issuer: &Issuer, caller: &Caller, req: pb::PrepareCaRequest) -> Result<pb::CaList, Status> {
    let Some(role) = CaRole::parse(&req.role) else {
        let why = "role is not root, services, transport or profiles".to_string();
        return Err(status(issuer.reject(caller, AuditAction::PrepareCa, &req.role, why).await));
    };
    let request = PrepareRequest {
        role,
        common_name: Some(req.common_name).filter(|n| !n.is_empty()),
        ttl_days: Some(req.ttl_days).filter(|d| *d != 0),
    };
    let records = issuer.prepare_ca(caller, &request).await.map_err(status)?;
    Ok(list(&records))
}

pub(super) async fn step(
    issuer: &Issuer,
    caller: &Caller,
    step: Step,
    req: pb::CaStepRequest,
) -> Result<pb::CaList, Status> {
    let records = match step {
        Step::Activate => issuer.activate_ca(caller, &req.id, req.force).await,
        Step::Taint if req.force => return Err(Status::invalid_argument("taint takes no --force")),
        Step::Taint => issuer.taint_ca(caller, &req.id).await,
        Step::Revoke => issuer.revoke_ca(caller, &req.id, req.force).await,
    };
    Ok(list(&records.map_err(status)?))
}

pub(super) async fn list_all(issuer: &Issuer, caller: &Caller) -> Result<pb::CaList, Status> {
    let listed = issuer.list_cas(caller).await.map_err(status)?;
    Ok(pb::CaList { cas: listed.iter().map(listing).collect() })
}

fn list(records: &[CaRecord]) -> pb::CaList {
    pb::CaList { cas: records.iter().map(ca_info).collect() }
}

fn listing(l: &CaListing) -> pb::CaInfo {
    pb::CaInfo {
        live_certificates: l.live_certificates,
        parent: l.parent.clone().unwrap_or_default(),
        ..ca_info(&l.record)
    }
}
