//! Issuance profiles (SPEC §15): written, read, listed and deleted through
//! the PKI API's `roles/:name` and `trustmesh pki profile …`, stored in the
//! database (shared by replicas, which follow each other's writes through
//! the change feed) and held in memory, so an issuance never reads the store
//! for its profile.
//!
//! Every call is authorized (Cedar `manage_profiles` / `read_profiles` on
//! `Profile::"mount/name"`) and audited, reads included.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::{Map, Value};

use super::auth::{Caller, audit};
use super::{AuditAction, Issuer, IssuerError};
use crate::domain::{Profile, ProfileRef, text};
use crate::policy::{Action, Resource};
use crate::store::{ProfileKey, ProfileRecord, Store};

/// The profiles in force, by mount and name.
#[derive(Default)]
pub(super) struct Profiles(RwLock<BTreeMap<ProfileKey, Arc<Profile>>>);

impl Profiles {
    /// Every stored profile; one whose JSON no longer reads is left out, loudly.
    pub(super) async fn load(store: &dyn Store) -> Result<Self, IssuerError> {
        let mut map = BTreeMap::new();
        for record in store.profiles().await? {
            if let Some(profile) = parse(&record) {
                map.insert(record.key, Arc::new(profile));
            }
        }
        Ok(Self(RwLock::new(map)))
    }

    pub(super) fn get(&self, key: &ProfileKey) -> Option<Arc<Profile>> {
        self.0.read().get(key).cloned()
    }

    fn set(&self, key: ProfileKey, profile: Option<Profile>) {
        let mut map = self.0.write();
        match profile {
            Some(p) => map.insert(key, Arc::new(p)),
            None => map.remove(&key),
        };
    }

    fn names(&self, mount: &str) -> Vec<String> {
        self.0.read().keys().filter(|k| k.mount == mount).map(|k| k.name.clone()).collect()
    }
}

fn parse(record: &ProfileRecord) -> Option<Profile> {
    match Profile::from_json(&record.spec) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(mount = %record.key.mount, profile = %record.key.name, error = %e, "stored profile unreadable; it is not served");
            None
        }
    }
}

pub(super) fn key_of(r: &ProfileRef) -> ProfileKey {
    ProfileKey { mount: r.mount().to_string(), name: r.name().to_string() }
}

impl Issuer {
    /// Creates or replaces a profile from a Vault role body (fields not
    /// given take their defaults). Returns it with Vault's warnings.
    pub async fn put_profile(
        &self,
        caller: &Caller,
        mount: &str,
        name: &str,
        fields: &Map<String, Value>,
    ) -> Result<(Profile, Vec<String>), IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ManageProfiles);
        let r = self.profile_ref(caller, ACTION, mount, name).await?;
        let target = r.to_string();
        self.authorize(caller, Action::ManageProfiles, &Resource::Profile(r.clone()), &target).await?;
        let (profile, warnings) = self
            .audited(caller, ACTION, &target, async {
                Profile::from_fields(fields).map_err(|e| IssuerError::InvalidArgument(text::shorten(&e, 512)))
            })
            .await?;
        let now = self.now().unix_timestamp();
        let key = key_of(&r);
        let record = ProfileRecord { key: key.clone(), spec: profile.to_json(), created_at: now, updated_at: now };
        let log = audit(caller, ACTION, &target, "ok", "written", now);
        self.store.put_profile(&record, &log).await?;
        self.profiles.set(key, Some(profile.clone()));
        tracing::info!(profile = %target, actor = %caller.actor(), "Profile written");
        Ok((profile, warnings))
    }

    /// One profile; `NotFound` when the mount has none of that name.
    pub async fn read_profile(&self, caller: &Caller, mount: &str, name: &str) -> Result<Arc<Profile>, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ReadProfiles);
        let r = self.profile_ref(caller, ACTION, mount, name).await?;
        let target = r.to_string();
        self.authorize(caller, Action::ReadProfiles, &Resource::Profile(r.clone()), &target).await?;
        let found = self.profiles.get(&key_of(&r));
        let outcome = if found.is_some() { "read" } else { "not found" };
        self.audit_read(caller, ACTION, &target, outcome).await?;
        found.ok_or_else(|| IssuerError::NotFound(format!("no profile {target}")))
    }

    /// The names of a mount's profiles, sorted.
    pub async fn list_profiles(&self, caller: &Caller, mount: &str) -> Result<Vec<String>, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ReadProfiles);
        self.mount_audited(caller, ACTION, mount).await?;
        // The mount's profiles as a whole: `Profile::"<mount>/*"` to Cedar.
        let all = ProfileRef::all_of(mount).map_err(IssuerError::InvalidArgument)?;
        self.authorize(caller, Action::ReadProfiles, &Resource::Profile(all), mount).await?;
        let names = self.profiles.names(mount);
        self.audit_read(caller, ACTION, mount, &format!("{} profiles listed", names.len())).await?;
        Ok(names)
    }

    /// Deletes a profile; `false` when there was none. Certificates issued
    /// under it stay valid (revoke them to end them).
    pub async fn delete_profile(&self, caller: &Caller, mount: &str, name: &str) -> Result<bool, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ManageProfiles);
        let r = self.profile_ref(caller, ACTION, mount, name).await?;
        let target = r.to_string();
        self.authorize(caller, Action::ManageProfiles, &Resource::Profile(r.clone()), &target).await?;
        let key = key_of(&r);
        let log = audit(caller, ACTION, &target, "ok", "deleted", self.now().unix_timestamp());
        let deleted = self.store.delete_profile(&key, &log).await?;
        self.profiles.set(key, None);
        tracing::info!(profile = %target, deleted, actor = %caller.actor(), "Profile deleted");
        Ok(deleted)
    }

    /// Reads one profile again from the store (another replica wrote or
    /// deleted it): `mount/name` as the change feed names it.
    pub(super) async fn reload_profile(&self, subject: &str) -> Result<(), IssuerError> {
        let Some((mount, name)) = subject.split_once('/') else { return Ok(()) };
        let key = ProfileKey { mount: mount.to_string(), name: name.to_string() };
        let record = self.store.profile(&key).await?;
        self.profiles.set(key, record.as_ref().and_then(parse));
        Ok(())
    }

    /// A profile of a configured mount, parsed (refusals audited).
    pub(super) async fn profile_ref(
        &self,
        caller: &Caller,
        action: AuditAction,
        mount: &str,
        name: &str,
    ) -> Result<ProfileRef, IssuerError> {
        self.mount_audited(caller, action, mount).await?;
        let target = format!("{}/{}", text::quoted(mount), text::quoted(name));
        self.audited(caller, action, &target, async {
            ProfileRef::new(mount, name).map_err(IssuerError::InvalidArgument)
        })
        .await
    }

    /// Refuses a mount the server does not serve.
    async fn mount_audited(&self, caller: &Caller, action: AuditAction, mount: &str) -> Result<(), IssuerError> {
        if self.cfg.mounts.iter().any(|m| m == mount) {
            return Ok(());
        }
        let err = IssuerError::NotFound(format!("no PKI mount {:?}", text::quoted(mount)));
        self.refuse(caller, action, &text::quoted(mount), err).await
    }

    /// The audit record of a successful read.
    pub(super) async fn audit_read(
        &self,
        caller: &Caller,
        action: AuditAction,
        target: &str,
        what: &str,
    ) -> Result<(), IssuerError> {
        let log = audit(caller, action, target, "ok", what, self.now().unix_timestamp());
        Ok(self.store.append_audit(&log).await?)
    }
}
