//! Test fixtures: isolated stores on both backends, config files in temporary folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pipewarden::config::parse_store_url;
use pipewarden::config::settings::StoreSettings;
use pipewarden::store::Store;
use sqlx::Connection;

/// The variable `.ci/run` sets to the PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "PIPEWARDEN_TEST_POSTGRES_URL";

/// A migrated store of its own, removed when dropped.
pub struct TestStore {
    pub store: Store,
    /// The store's URL, for a `pipewarden` process to open the same store.
    pub url: String,
    _cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, database: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Cleanup::Postgres {
            admin_url,
            database,
        } = self
        else {
            return;
        };
        let (admin_url, database) = (admin_url.clone(), database.clone());
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                let sql = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                    .map(drop)
            })
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("could not drop test database: {err}");
        }
    }
}

fn store_settings(url: &str) -> StoreSettings {
    StoreSettings {
        url: parse_store_url(url).expect("test store URL is valid"),
        max_connections: 4,
        busy_timeout: Duration::from_secs(5),
        sqlite_mmap_mib: 64 * 1024,
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestStore {
    /// A fresh SQLite file in its own folder.
    pub async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::open_migrated(&store_settings(&url))
            .await
            .expect("sqlite store opens");
        TestStore {
            store,
            url,
            _cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` outside CI when no server is configured.
    /// In CI (`CI` set) a missing server fails the test: it must never pass by skipping.
    pub async fn postgres() -> Option<TestStore> {
        let admin_url = postgres_admin_url()?;
        let database = format!("pw_test_{}", unique_suffix());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("cannot reach PostgreSQL at {POSTGRES_URL_VAR}: {err}"));
        let sql = format!("CREATE DATABASE \"{database}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let cleanup = Cleanup::Postgres {
            admin_url: admin_url.clone(),
            database: database.clone(),
        };
        let mut url = url::Url::parse(&admin_url).expect("valid PostgreSQL URL");
        url.set_path(&database);
        let store = Store::open_migrated(&store_settings(url.as_str()))
            .await
            .expect("postgres store opens");
        Some(TestStore {
            store,
            url: url.to_string(),
            _cleanup: cleanup,
        })
    }
}

fn postgres_admin_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{POSTGRES_URL_VAR} is not set; in CI the PostgreSQL tests must run")
        }
        _ => {
            eprintln!("SKIPPED: PostgreSQL store test ({POSTGRES_URL_VAR} is not set)");
            None
        }
    }
}

/// Runs each listed test body against a SQLite store and a PostgreSQL store.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::TestStore::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(store) = $crate::support::TestStore::postgres().await {
                        super::$name(store).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// A folder holding a config file and whatever files it refers to.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `name` (relative to the folder) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An environment built from pairs, for `load_with_env`.
pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until the store's lease `name` is free, at most 10 seconds. PostgreSQL frees the
/// advisory lock of a killed process only once it notices the session is gone; work that
/// needs the lease before then finds it held and does nothing.
pub async fn until_lease_free(store: &Store, name: &str) {
    for _ in 0..200 {
        if let Some(held) = store.try_lease(name).await.unwrap() {
            held.release().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lease `{name}` is still held");
}
