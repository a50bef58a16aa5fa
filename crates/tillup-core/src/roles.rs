//! Who at head office may do what: the roles of the people who sign in to
//! `tillup-server`, and the one rule ([`Role::may`]) every page and every
//! action is checked against on the server.

use serde::{Deserialize, Serialize};

/// A person's role, from least to most trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the fleet, stores, releases, rollouts and the audit trail.
    Viewer,
    /// Also publishes releases and starts, approves, pauses, resumes,
    /// advances and aborts rollouts.
    Releaser,
    /// Also manages stores (tokens, channels) and people.
    Admin,
}

/// Something a person may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read any page or list.
    View,
    /// Publish a release.
    Publish,
    /// Start, pause, resume, advance or abort a rollout.
    Rollout,
    /// Approve another person's rollout.
    Approve,
    /// Add stores, rotate or revoke their tokens, set their channels.
    ManageStores,
    /// Add or disable people.
    ManagePeople,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 6] = [
        Action::View,
        Action::Publish,
        Action::Rollout,
        Action::Approve,
        Action::ManageStores,
        Action::ManagePeople,
    ];
}

impl Role {
    /// What this role may do, as the pages ask.
    pub fn allowed(self) -> Vec<Action> {
        Action::ALL.into_iter().filter(|a| self.may(*a)).collect()
    }

    /// Every role, least trusted first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Releaser, Role::Admin];

    /// Whether this role may do `action`.
    pub fn may(self, action: Action) -> bool {
        let least = match action {
            Action::View => Role::Viewer,
            Action::Publish | Action::Rollout | Action::Approve => Role::Releaser,
            Action::ManageStores | Action::ManagePeople => Role::Admin,
        };
        self >= least
    }

    /// Its name, as the command line and the database write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Releaser => "releaser",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a role: say viewer, releaser or admin")]
pub struct BadRole(pub String);

impl std::str::FromStr for Role {
    type Err = BadRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| BadRole(s.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewer_only_looks() {
        assert!(Role::Viewer.may(Action::View));
        for a in [
            Action::Publish,
            Action::Rollout,
            Action::Approve,
            Action::ManageStores,
            Action::ManagePeople,
        ] {
            assert!(!Role::Viewer.may(a), "{a:?}");
        }
    }

    #[test]
    fn a_releaser_releases_and_an_admin_does_everything() {
        for a in [
            Action::View,
            Action::Publish,
            Action::Rollout,
            Action::Approve,
        ] {
            assert!(Role::Releaser.may(a), "{a:?}");
        }
        assert!(!Role::Releaser.may(Action::ManageStores));
        assert!(!Role::Releaser.may(Action::ManagePeople));
        for a in Action::ALL {
            assert!(Role::Admin.may(a), "{a:?}");
        }
    }

    #[test]
    fn role_names_round_trip_and_others_are_refused() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .to_string()
                .contains("viewer, releaser or admin")
        );
    }
}
