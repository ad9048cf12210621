//! Where a CA is in its rotation: the states of `pki ca list` and the steps
//! between them (SPEC §14), as a pure function tested as a table.
//!
//! ```text
//!   prepare ─▶ Prepared ─activate─▶ Active ─(successor activated)─▶ Old ─taint─▶ Tainted
//!                 │                                                  │             │
//!                 └────────────────────── revoke ────────────────────┴─────────────┴──▶ Revoked
//! ```
//!
//! Every state but `Revoked` is in the bundles; only `Active` signs.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaState {
    /// In every bundle, with its own empty CRL; signs nothing yet.
    Prepared,
    /// The signer of its role (one per role).
    Active,
    /// Was active; still trusted, signs nothing, certificates it signed live on.
    Old,
    /// Trusted until its certificates are replaced: what it signed is being
    /// re-issued under the active CA.
    Tainted,
    /// Out of every bundle; listed in its parent's CRL.
    Revoked,
}

/// A step of the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStep {
    Activate,
    Taint,
    Revoke,
}

impl CaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Old => "old",
            Self::Tainted => "tainted",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Prepared, Self::Active, Self::Old, Self::Tainted, Self::Revoked].into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the bundles carry it.
    pub fn trusted(self) -> bool {
        self != Self::Revoked
    }

    /// The state after `step`, or why the step is refused. A step to the
    /// state a CA is already in is allowed (and changes nothing).
    pub fn after(self, step: CaStep) -> Result<Self, &'static str> {
        use CaState::*;
        match (step, self) {
            (CaStep::Activate, Prepared | Active) => Ok(Active),
            (CaStep::Activate, Old | Tainted) => Err("only a prepared CA can be activated; prepare a new one"),
            (CaStep::Activate, Revoked) => Err("a revoked CA cannot be activated"),
            (CaStep::Taint, Old | Tainted) => Ok(Tainted),
            (CaStep::Taint, Active) => Err("the active CA cannot be tainted: prepare and activate its successor first"),
            (CaStep::Taint, Prepared) => Err("a prepared CA has signed nothing to taint; revoke it to discard it"),
            (CaStep::Taint, Revoked) => Err("a revoked CA cannot be tainted"),
            (CaStep::Revoke, Prepared | Old | Tainted | Revoked) => Ok(Revoked),
            (CaStep::Revoke, Active) => {
                Err("the active CA cannot be revoked: prepare and activate its successor first")
            }
        }
    }
}

impl fmt::Display for CaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::CaState::*;
    use super::CaStep::*;
    use super::*;

    #[test]
    fn each_step_moves_or_refuses_as_the_rotation_says() {
        // (state, step, the state after it, or a word of the refusal)
        let table: &[(CaState, CaStep, Result<CaState, &str>)] = &[
            (Prepared, Activate, Ok(Active)),
            (Active, Activate, Ok(Active)),
            (Old, Activate, Err("only a prepared")),
            (Tainted, Activate, Err("only a prepared")),
            (Revoked, Activate, Err("revoked")),
            (Old, Taint, Ok(Tainted)),
            (Tainted, Taint, Ok(Tainted)),
            (Active, Taint, Err("active")),
            (Prepared, Taint, Err("prepared")),
            (Revoked, Taint, Err("revoked")),
            (Prepared, Revoke, Ok(Revoked)),
            (Old, Revoke, Ok(Revoked)),
            (Tainted, Revoke, Ok(Revoked)),
            (Revoked, Revoke, Ok(Revoked)),
            (Active, Revoke, Err("active")),
        ];
        for (state, step, expected) in table {
            match (state.after(*step), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{state} {step:?}"),
                (Err(why), Err(word)) => assert!(why.contains(word), "{state} {step:?}: {why}"),
                (got, want) => panic!("{state} {step:?}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn every_state_but_revoked_is_trusted_and_names_round_trip() {
        for s in [Prepared, Active, Old, Tainted, Revoked] {
            assert_eq!(CaState::parse(s.as_str()), Some(s));
            assert_eq!(s.trusted(), s != Revoked);
        }
        assert_eq!(CaState::parse("retired"), None);
    }
}
