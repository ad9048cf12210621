//! The admin service's side of issuance profiles: the profile RPCs, and
//! `GenerateCertificate` / `SignCsr` when they name a profile. Each turns
//! protobuf into the issuer's calls; errors go through `grpc::status`.

use serde_json::{Map, Value};
use tonic::Status;

use super::grpc::{cert_info, status};
use crate::domain::profile::DEFAULT_MOUNT;
use crate::issuer::{Caller, Issuer, ProfileIssued, ProfileRequest};
use crate::proto::admin::v1 as pb;

/// `""` is the default mount.
fn mount(m: &str) -> &str {
    if m.is_empty() { DEFAULT_MOUNT } else { m }
}

/// A request under `profile` (`NAME`, of mount `pki`, or `MOUNT/NAME`),
/// with `spiffe_id` (may be empty) as its URI SAN.
fn under(profile: &str, spiffe_id: String, ttl_seconds: u64) -> ProfileRequest {
    let (mount, name) = profile.split_once('/').unwrap_or((DEFAULT_MOUNT, profile));
    ProfileRequest {
        mount: mount.into(),
        profile: name.into(),
        uri_sans: if spiffe_id.is_empty() { vec![] } else { vec![spiffe_id] },
        ttl_seconds,
        ..ProfileRequest::default()
    }
}

pub(super) async fn put(
    issuer: &Issuer,
    caller: &Caller,
    req: pb::PutProfileRequest,
) -> Result<pb::ProfileResponse, Status> {
    let fields: Map<String, Value> = match serde_json::from_str(&req.fields_json) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(Status::invalid_argument("fields_json is not a JSON object")),
        Err(e) => return Err(Status::invalid_argument(format!("fields_json is not JSON: {e}"))),
    };
    let mount = mount(&req.mount);
    let (profile, warnings) = issuer.put_profile(caller, mount, &req.name, &fields).await.map_err(status)?;
    Ok(pb::ProfileResponse { mount: mount.into(), name: req.name, profile_json: profile.to_json(), warnings })
}

pub(super) async fn show(
    issuer: &Issuer,
    caller: &Caller,
    req: pb::ShowProfileRequest,
) -> Result<pb::ProfileResponse, Status> {
    let mount = mount(&req.mount);
    let profile = issuer.read_profile(caller, mount, &req.name).await.map_err(status)?;
    Ok(pb::ProfileResponse { mount: mount.into(), name: req.name, profile_json: profile.to_json(), warnings: vec![] })
}

pub(super) async fn list(
    issuer: &Issuer,
    caller: &Caller,
    req: pb::ListProfilesRequest,
) -> Result<pb::ListProfilesResponse, Status> {
    let names = issuer.list_profiles(caller, mount(&req.mount)).await.map_err(status)?;
    Ok(pb::ListProfilesResponse { names })
}

pub(super) async fn delete(
    issuer: &Issuer,
    caller: &Caller,
    req: pb::DeleteProfileRequest,
) -> Result<pb::DeleteProfileResponse, Status> {
    let deleted = issuer.delete_profile(caller, mount(&req.mount), &req.name).await.map_err(status)?;
    Ok(pb::DeleteProfileResponse { deleted })
}

/// `GenerateCertificate` under a profile: the server makes the key the
/// profile names.
pub(super) async fn generate(
    issuer: &Issuer,
    caller: &Caller,
    req: pb::GenerateCertificateRequest,
) -> Result<pb::GenerateCertificateResponse, Status> {
    let request = ProfileRequest {
        common_name: req.common_name,
        dns_names: req.dns_names,
        ..under(&req.profile, req.spiffe_id, req.ttl_seconds)
    };
    let issued = issuer.issue_with_profile(caller, &request).await.map_err(status)?;
    let private_key_pem = issued.private_key.as_ref().map(|k| k.to_pem().to_string()).unwrap_or_default();
    let (chain, info) = answer(issuer, &issued);
    Ok(pb::GenerateCertificateResponse { certificate_pem: chain, private_key_pem, certificate: Some(info) })
}

/// `SignCsr` under a profile: the names come from the CSR (and the SPIFFE
/// ID, when one is given), judged by the profile.
pub(super) async fn sign(
    issuer: &Issuer,
    caller: &Caller,
    req: pb::SignCsrRequest,
) -> Result<pb::SignCsrResponse, Status> {
    let request = ProfileRequest { csr: Some(req.csr), ..under(&req.profile, req.spiffe_id, req.ttl_seconds) };
    let issued = issuer.issue_with_profile(caller, &request).await.map_err(status)?;
    let (chain, info) = answer(issuer, &issued);
    Ok(pb::SignCsrResponse { certificate_pem: chain, certificate: Some(info) })
}

/// The leaf followed by its intermediate, and the certificate's description.
fn answer(issuer: &Issuer, issued: &ProfileIssued) -> (String, pb::CertificateInfo) {
    (issued.issued.chain_pem.clone(), cert_info(&issued.issued.record, issuer.now().unix_timestamp()))
}
