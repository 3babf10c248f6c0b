//! Whether the database server analyzes and vacuums tables by itself.
//! With `autovacuum` off no table is ever analyzed, so a statement a
//! session planned while a table was nearly empty keeps that plan as the
//! table grows: the recorder's, planned at its first submission, then
//! reads `samples` whole on every batch, and resubmissions slow down as
//! samples come in (`benches/RESULTS.md`, 2026-12-06 night). Dead rows
//! pile up too. The recorder reads the setting once at start and logs it;
//! it is never enforced (an operator may run `ANALYZE` on a schedule).

use std::time::Duration;

use sqlx::PgPool;

/// Logs a warning when the server runs without autovacuum. Called once
/// the database has answered (after durability's check, which waits for
/// it); a failure now is only logged at debug.
pub async fn warn_if_off(pool: &PgPool) {
    let read =
        sqlx::query_scalar::<_, String>("SELECT current_setting('autovacuum')").fetch_one(pool);
    match crate::store::within(Duration::from_secs(5), read).await {
        Ok(v) if !super::durability::is_on(&v) => tracing::warn!(
            autovacuum = %v,
            "autovacuum is off on the database server: tables are never analyzed, and \
             statements planned while they were small keep those plans as they grow; \
             turn it on, or run ANALYZE on a schedule"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the database's autovacuum setting"),
    }
}
