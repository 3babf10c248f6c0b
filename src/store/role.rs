//! Whether the service's database role is the schema's owner. The
//! processes that serve requests parse hostile input; if one is taken
//! over, its database credentials are the attacker's. An owner (or a
//! superuser) may disable the audit trail's triggers, rewrite it, or drop
//! tables, so the service connects as a member of the group role
//! [`SERVICE_ROLE`], which the migrations grant rows and nothing else
//! (`migrations/20261205000004_service_role.sql`). `serve` refuses to
//! start, and `/readyz` answers 503, when `database.url` reaches an owner,
//! unless `database.allow_owner` says this is a development setup.

use sqlx::PgPool;

/// The group role the migrations grant the service's share to.
pub const SERVICE_ROLE: &str = "sandgnat_service";

/// What an operator reads when the service connects as an owner.
pub const FIX: &str = "database.url connects as an owner of the tables or a superuser; \
connect as a login role that is a member of sandgnat_service and owns nothing \
(README: Database roles), or set database.allow_owner = true for development";

/// What the connected role may do to the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Rows only: the share the migrations grant.
    Service,
    /// More than rows: it may change or drop the schema, or become a role
    /// that may.
    Owner(OwnerBy),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerBy {
    Superuser,
    /// It owns these many of the schema's tables, or is a member of a
    /// role that does.
    Tables(i64),
    /// It owns the schema (or is a member of its owner): a schema's owner
    /// may drop any table in it. A database's owner owns `public` from
    /// PostgreSQL 15 on, which is how the one-role layout shows up.
    Schema,
    /// CREATEROLE: before PostgreSQL 16 it may make itself a member of
    /// the owner.
    CreateRole,
}

impl std::fmt::Display for OwnerBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnerBy::Superuser => write!(f, "is a superuser"),
            OwnerBy::Tables(n) => write!(f, "owns {n} of the schema's tables"),
            OwnerBy::Schema => write!(f, "owns the schema"),
            OwnerBy::CreateRole => write!(f, "has CREATEROLE"),
        }
    }
}

const STANDING_SQL: &str = "\
SELECT r.rolsuper, r.rolcreaterole,
       (SELECT count(*) FROM pg_tables t
         WHERE t.schemaname = current_schema()
           AND pg_has_role(current_user, t.tableowner, 'MEMBER')),
       coalesce((SELECT pg_has_role(current_user, n.nspowner, 'MEMBER')
                   FROM pg_namespace n WHERE n.nspname = current_schema()), false)
  FROM pg_roles r WHERE r.rolname = current_user";

/// What the role `pool` connects as may do to the schema.
pub async fn standing(pool: &PgPool) -> Result<Standing, sqlx::Error> {
    let (superuser, createrole, tables, schema): (bool, bool, i64, bool) =
        sqlx::query_as(STANDING_SQL).fetch_one(pool).await?;
    Ok(if superuser {
        Standing::Owner(OwnerBy::Superuser)
    } else if tables > 0 {
        Standing::Owner(OwnerBy::Tables(tables))
    } else if schema {
        Standing::Owner(OwnerBy::Schema)
    } else if createrole {
        Standing::Owner(OwnerBy::CreateRole)
    } else {
        Standing::Service
    })
}

/// The reason to refuse this standing under these settings, if any.
pub fn refusal(allow_owner: bool, standing: &Standing) -> Option<&OwnerBy> {
    match standing {
        Standing::Owner(by) if !allow_owner => Some(by),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    /// A throwaway login role in the group, on the test's database.
    async fn login(admin: &PgPool, group: Option<&str>) -> (String, PgPool) {
        let name = format!("sandgnat_t_{}", uuid::Uuid::new_v4().simple());
        let in_role = group.map_or(String::new(), |g| format!(" IN ROLE {g}"));
        sqlx::query(&format!("CREATE ROLE {name} LOGIN{in_role}"))
            .execute(admin)
            .await
            .unwrap();
        let opts = (*admin.connect_options()).clone().username(&name);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        (name, pool)
    }

    async fn drop_login(admin: &PgPool, name: &str, pool: PgPool) {
        pool.close().await;
        sqlx::query(&format!("DROP ROLE {name}"))
            .execute(admin)
            .await
            .unwrap();
    }

    /// The SQLSTATE a statement fails with (panics if it succeeds).
    async fn refused(pool: &PgPool, sql: &str) -> String {
        match sqlx::query(sql).execute(pool).await {
            Ok(_) => panic!("{sql:?} was allowed"),
            Err(sqlx::Error::Database(db)) => db.code().unwrap_or_default().into_owned(),
            Err(e) => panic!("{sql:?}: {e}"),
        }
    }

    const PRIVILEGES: [&str; 7] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
    ];

    /// Guards later migrations: a new table must be listed here with what
    /// the service may do to it, and get exactly that.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn every_table_grants_the_service_its_share(admin: PgPool) {
        let rows = ["SELECT", "INSERT", "UPDATE", "DELETE"].as_slice();
        let expected: &[(&str, &[&str])] = &[
            ("_sqlx_migrations", &["SELECT"]),
            ("api_keys", rows),
            ("samples", rows),
            ("analyses", rows),
            ("analysis_audit_log", &["SELECT", "INSERT"]),
            ("jobs", rows),
            ("idempotency_keys", rows),
            ("status_sessions", rows),
            ("cluster_duties", rows),
        ];
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT tablename::text, tableowner::text FROM pg_tables
              WHERE schemaname = current_schema() ORDER BY 1",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        for (table, owner) in &tables {
            assert_ne!(owner, SERVICE_ROLE, "{table} is the service's");
            let Some((_, granted)) = expected.iter().find(|(t, _)| t == table) else {
                panic!("table {table} is new: say in a migration what {SERVICE_ROLE} may do to it, and list it here");
            };
            for privilege in PRIVILEGES {
                let has: bool =
                    sqlx::query_scalar("SELECT has_table_privilege($1, quote_ident($2), $3)")
                        .bind(SERVICE_ROLE)
                        .bind(table)
                        .bind(privilege)
                        .fetch_one(&admin)
                        .await
                        .unwrap();
                assert_eq!(
                    has,
                    granted.contains(&privilege),
                    "{SERVICE_ROLE} {} {privilege} on {table}",
                    if has { "has" } else { "lacks" }
                );
            }
        }
        assert_eq!(tables.len(), expected.len(), "{tables:?}");
        let (login, owns): (bool, i64) = sqlx::query_as(
            "SELECT rolcanlogin, (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
               FROM pg_roles r WHERE rolname = $1",
        )
        .bind(SERVICE_ROLE)
        .fetch_one(&admin)
        .await
        .unwrap();
        assert!(!login && owns == 0, "login {login}, owns {owns}");
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_service_login_cannot_rewrite_the_audit_trail(admin: PgPool) {
        let (name, svc) = login(&admin, Some(SERVICE_ROLE)).await;
        assert_eq!(standing(&svc).await.unwrap(), Standing::Service);
        assert_eq!(
            standing(&admin).await.unwrap(),
            Standing::Owner(OwnerBy::Superuser)
        );

        // What the service does: rows in, rows read, the audit appended.
        let sha = "a".repeat(64);
        sqlx::query(
            "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
             VALUES ($1, repeat('b', 40), repeat('c', 32), 1, 'data', '/q/x')",
        )
        .bind(&sha)
        .execute(&svc)
        .await
        .unwrap();
        let id = uuid::Uuid::now_v7();
        sqlx::query("INSERT INTO analyses (id, sample_sha256) VALUES ($1, $2)")
            .bind(id)
            .bind(&sha)
            .execute(&svc)
            .await
            .unwrap();
        sqlx::query("UPDATE analyses SET status = 'running' WHERE id = $1")
            .bind(id)
            .execute(&svc)
            .await
            .unwrap();
        let audit: i64 = sqlx::query_scalar(
            "INSERT INTO analysis_audit_log (analysis_id, actor, event)
             VALUES ($1, 'test', 'submitted') RETURNING id",
        )
        .bind(id)
        .fetch_one(&svc)
        .await
        .unwrap();

        // What it must not: 42501 is insufficient_privilege, raised by the
        // privilege check before any trigger could be reached.
        for sql in [
            "ALTER TABLE analysis_audit_log DISABLE TRIGGER ALL",
            "ALTER TABLE analysis_audit_log DISABLE TRIGGER analysis_audit_log_no_change",
            "DELETE FROM analysis_audit_log",
            "UPDATE analysis_audit_log SET event = 'nothing'",
            "TRUNCATE analysis_audit_log",
            "DROP TABLE analyses",
            "DROP TABLE analysis_audit_log",
            "ALTER TABLE analyses ADD COLUMN x int",
            "DROP FUNCTION analysis_audit_log_append_only() CASCADE",
            "CREATE TABLE mine (x int)",
        ] {
            assert_eq!(refused(&svc, sql).await, "42501", "{sql}");
        }
        let kept: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM analysis_audit_log WHERE id = $1 AND event = 'submitted'",
        )
        .bind(audit)
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(kept, 1);
        drop_login(&admin, &name, svc).await;
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn an_owner_that_is_not_a_superuser_is_found(admin: PgPool) {
        let (name, pool) = login(&admin, Some(SERVICE_ROLE)).await;
        let exec = |sql: String| {
            let admin = admin.clone();
            async move { sqlx::query(&sql).execute(&admin).await.unwrap() }
        };
        // Any table owned is DDL the service must not hold.
        exec(format!("ALTER TABLE jobs OWNER TO {name}")).await;
        assert_eq!(
            standing(&pool).await.unwrap(),
            Standing::Owner(OwnerBy::Tables(1))
        );
        exec("ALTER TABLE jobs OWNER TO CURRENT_USER".into()).await;
        assert_eq!(standing(&pool).await.unwrap(), Standing::Service);

        // The layout before this check: the service's role owned the
        // database, hence (PostgreSQL 15 on) the public schema.
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&admin)
            .await
            .unwrap();
        if version >= 150_000 {
            exec(format!(
                "ALTER DATABASE \"{}\" OWNER TO {name}",
                db_name(&admin).await
            ))
            .await;
            assert_eq!(
                standing(&pool).await.unwrap(),
                Standing::Owner(OwnerBy::Schema)
            );
            exec(format!(
                "ALTER DATABASE \"{}\" OWNER TO CURRENT_USER",
                db_name(&admin).await
            ))
            .await;
        }
        assert_eq!(refusal(true, &Standing::Owner(OwnerBy::Schema)), None);
        assert_eq!(
            refusal(false, &Standing::Owner(OwnerBy::Schema)),
            Some(&OwnerBy::Schema)
        );
        assert_eq!(refusal(false, &Standing::Service), None);
        drop_login(&admin, &name, pool).await;
    }

    async fn db_name(pool: &PgPool) -> String {
        sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(pool)
            .await
            .unwrap()
    }
}
