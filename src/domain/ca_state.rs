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

impl CaStep {
    /// The step whose success puts a CA in `state`. None leads to `Prepared`
    /// (where a CA starts) or to `Old` (where activating its successor puts it).
    pub fn reaching(state: CaState) -> Option<Self> {
        match state {
            CaState::Active => Some(Self::Activate),
            CaState::Tainted => Some(Self::Taint),
            CaState::Revoked => Some(Self::Revoke),
            CaState::Prepared | CaState::Old => None,
        }
    }
}

impl CaState {
    /// Whether a CA in this state may be put in `to` directly: `to` is where
    /// it already is (nothing changes), or where [`CaState::after`] takes it
    /// with the step [`CaStep::reaching`] `to`.
    pub fn move_to(self, to: CaState) -> Result<CaState, &'static str> {
        if self == to {
            return Ok(to);
        }
        match CaStep::reaching(to) {
            Some(step) => self.after(step),
            None if to == CaState::Old => Err("a CA becomes old only when its successor is activated"),
            None => Err("a CA is prepared only when it is created"),
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
    fn a_state_is_reached_directly_only_through_its_step() {
        const ALL: [CaState; 5] = [Prepared, Active, Old, Tainted, Revoked];
        for step in [Activate, Taint, Revoke] {
            for from in ALL {
                if let Ok(to) = from.after(step) {
                    assert_eq!(CaStep::reaching(to), Some(step), "{from} {step:?}");
                    assert_eq!(from.move_to(to), Ok(to), "{from} -> {to}");
                }
            }
        }
        for from in ALL {
            assert_eq!(from.move_to(from), Ok(from), "staying is always allowed");
        }
        // (from, to, a word of the refusal)
        let refused: &[(CaState, CaState, &str)] = &[
            (Revoked, Active, "revoked"),
            (Old, Active, "only a prepared"),
            (Prepared, Tainted, "prepared"),
            (Active, Revoked, "active"),
            (Active, Old, "successor"),
            (Prepared, Old, "successor"),
            (Old, Prepared, "created"),
            (Revoked, Prepared, "created"),
        ];
        for (from, to, word) in refused {
            let why = from.move_to(*to).expect_err("refused");
            assert!(why.contains(word), "{from} -> {to}: {why}");
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
