//! Who sees which analyses. A `submitter` key reads only what it submitted;
//! `reader`, `bridge` and `admin` read everything except TLP:RED, which only
//! `admin` and the key that submitted it see. Every read route (one
//! analysis, lookups, lists, the feed, STIX, TAXII, downloads) filters with
//! the one predicate built here, so the rule cannot drift between routes.

use super::role::{Caller, Role};

/// What a caller may read, as a predicate over an `analyses` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    key_id: i64,
    scope: Scope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Only analyses this key submitted.
    Own,
    /// Everything but TLP:RED, plus the key's own TLP:RED analyses.
    AllButRed,
    /// Everything.
    All,
}

impl Visibility {
    pub fn of(caller: &Caller) -> Self {
        let scope = match caller.role {
            Role::Submitter => Scope::Own,
            Role::Reader | Role::Bridge => Scope::AllButRed,
            Role::Admin => Scope::All,
        };
        Visibility {
            key_id: caller.key_id,
            scope,
        }
    }

    /// For readers on the node itself (`sandgnat export`): everything.
    pub fn operator() -> Self {
        Visibility {
            key_id: 0,
            scope: Scope::All,
        }
    }

    /// The key id to bind to the placeholder `sql` names.
    pub fn key_id(&self) -> i64 {
        self.key_id
    }

    /// A boolean SQL expression over the analyses row `alias`, with the
    /// caller's key id bound as `$param`. Always mentions `$param`, so
    /// callers bind it unconditionally and placeholders never shift.
    pub fn sql(&self, alias: &str, param: usize) -> String {
        match self.scope {
            Scope::Own => format!("({alias}.api_key_id = ${param})"),
            Scope::AllButRed => {
                format!("({alias}.tlp <> 'red' OR {alias}.api_key_id = ${param})")
            }
            Scope::All => format!("(${param}::int8 IS NOT NULL)"),
        }
    }

    /// The same predicate pushed onto a query being built, binding the
    /// key id itself.
    pub fn push(&self, qb: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>, alias: &str) {
        match self.scope {
            Scope::Own => {
                qb.push(format!("({alias}.api_key_id = "))
                    .push_bind(self.key_id)
                    .push(")");
            }
            Scope::AllButRed => {
                qb.push(format!("({alias}.tlp <> 'red' OR {alias}.api_key_id = "))
                    .push_bind(self.key_id)
                    .push(")");
            }
            Scope::All => {
                qb.push("TRUE");
            }
        }
    }

    /// Whether one analysis, already read, is visible.
    pub fn allows(&self, tlp: &str, submitted_by: Option<i64>) -> bool {
        let own = submitted_by == Some(self.key_id);
        match self.scope {
            Scope::Own => own,
            Scope::AllButRed => tlp != "red" || own,
            Scope::All => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            key_id: 7,
            name: "k".into(),
            role,
        }
    }

    #[test]
    fn each_role_sees_what_the_contract_says() {
        let sub = Visibility::of(&caller(Role::Submitter));
        assert!(sub.allows("amber", Some(7)));
        assert!(sub.allows("red", Some(7)));
        assert!(!sub.allows("clear", Some(8)));
        assert!(!sub.allows("clear", None));
        for role in [Role::Reader, Role::Bridge] {
            let v = Visibility::of(&caller(role));
            assert!(v.allows("amber+strict", Some(8)));
            assert!(!v.allows("red", Some(8)));
            assert!(v.allows("red", Some(7)));
        }
        let admin = Visibility::of(&caller(Role::Admin));
        assert!(admin.allows("red", Some(8)));
        assert!(admin.sql("a", 3).contains("$3"));
        assert!(sub.sql("a", 3).contains("a.api_key_id = $3"));
    }
}
