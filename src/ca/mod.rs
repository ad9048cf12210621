//! The certificate authority core: keys, the key-encryption key, CA
//! certificates, CSRs, X.509-SVIDs, certificates issued under a profile,
//! server certificates and CRLs.
//!
//! Invariants:
//!
//! - **Pure.** No I/O, no async, no global state: the current time, serial
//!   numbers and the parameters of every certificate come in as arguments.
//!   The only ambient input is the system CSPRNG (key generation, ECDSA
//!   nonces, KEK nonces), reached through `ring`.
//! - **Every certificate is validated after signing.** Whatever rcgen
//!   produced is parsed back with x509-parser, its signature and every link
//!   up to the root are verified, and its profile (SANs, basic constraints,
//!   key usages, serial, validity inside the issuer's) is compared with what
//!   was asked for, before it is returned ([`CaError::SelfCheck`] otherwise).
//!   CRLs are verified the same way.
//! - **Keys only leave as PKCS#8 DER, for sealing.** A [`PrivateKey`] is held
//!   in zeroizing memory; [`PrivateKey::pkcs8_der`] exists to be passed to
//!   [`Kek::seal`], [`PrivateKey::to_pem`] returns a zeroizing string, and no
//!   `Debug` or error message ever shows key bytes.
//! - **Parse, don't validate.** A [`CaCertificate`] is always a CA
//!   certificate, a [`Signer`] always has a matching key and a verified chain
//!   to a self-signed root, and a [`Csr`] has passed every check.
//!
//! Boundary: callers above (the issuer loop, the CLI) decide *what* to sign
//! (policy, TTL limits, deny lists); this module decides *how*, and refuses
//! to produce a certificate that breaks the X.509-SVID profile.

mod asn1;
mod cert;
mod check;
mod create;
mod crl;
mod csr;
mod encoding;
mod error;
mod issue;
mod kek;
mod key;
mod leaf_key;
mod node;
mod template;
mod usage;

#[cfg(test)]
mod tests;

pub use crate::domain::RevocationReason;
pub use cert::{CaCertificate, Signer};
pub use create::{ImportedCa, IntermediateParams, RootParams, create_intermediate, create_root, import_ca};
pub use crl::{Crl, CrlEntry, MAX_CRL_BYTES, build_crl, parse_crl};
pub use csr::{Csr, CsrRequest, MAX_CSR_BYTES, parse_csr, parse_csr_request};
pub use encoding::{cert_to_pem, certs_from_pem, fingerprint, sha256_b64url};
pub use error::CaError;
pub use issue::{
    IssuedCertificate, LeafRequest, SvidRequest, issue_leaf_certificate, issue_server_certificate, issue_svid,
};
pub use kek::Kek;
pub use key::{KeyAlgorithm, PrivateKey};
pub use leaf_key::LeafKey;
pub use node::{csr_der, issue_node_svid};
pub use template::{LEAF_BACKDATE, check_dns_name};
pub use usage::{ExtKeyUsage, KeyUsage, LeafUsage};
