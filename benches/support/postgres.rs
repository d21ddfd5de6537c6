//! Databases of their own for the benchmarks that run on PostgreSQL, on the server that
//! `PIPEWARDEN_TEST_POSTGRES_URL` names (default `postgres://postgres@127.0.0.1:5432/postgres`,
//! whose user may create databases). Included by each benchmark with `#[path]`, since every
//! file under `benches/` is a crate of its own.

use sqlx::Connection;

/// Creates the database `name` and answers its URL.
pub async fn create_database(name: &str) -> Result<String, String> {
    let admin = std::env::var("PIPEWARDEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
    // An existing database of that name is an error, never replaced: it may be a kept store.
    run(&mut conn, format!("CREATE DATABASE \"{name}\"")).await?;
    conn.close().await.map_err(|e| e.to_string())?;
    let mut url = url::Url::parse(&admin).map_err(|e| e.to_string())?;
    url.set_path(name);
    Ok(url.to_string())
}

/// Drops the database at `store_url`, from the server's `postgres` database (`WITH (FORCE)`:
/// a failed run may have left connections to it open).
pub async fn drop_database(store_url: &str) -> Result<(), String> {
    let mut url = url::Url::parse(store_url).map_err(|e| e.to_string())?;
    let name = url.path().trim_start_matches('/').to_string();
    url.set_path("/postgres");
    let mut conn = sqlx::PgConnection::connect(url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    run(
        &mut conn,
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await?;
    conn.close().await.map_err(|e| e.to_string())
}

async fn run(conn: &mut sqlx::PgConnection, statement: String) -> Result<(), String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(conn)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
