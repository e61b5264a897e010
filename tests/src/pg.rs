//! A PostgreSQL cluster for the replica tests: the one `scripts/test` started
//! (`HALLMARK_TEST_PG`, its socket directory), or a throwaway one of the test's own
//! (`scripts/pg-cluster`, stopped when dropped), so that `cargo test` alone runs them too.

use std::path::PathBuf;
use std::process::Command;

/// Where a cluster listens, and the cluster itself if this test started it.
pub struct PgCluster {
    socket_dir: String,
    own: Option<tempfile::TempDir>,
}

impl PgCluster {
    /// The run's cluster, or a new one.
    pub fn get() -> PgCluster {
        if let Ok(dir) = std::env::var("HALLMARK_TEST_PG") {
            return PgCluster {
                socket_dir: dir,
                own: None,
            };
        }
        PgCluster::own()
    }

    /// A new cluster of this test's own, which it may stop and start (`restart`).
    pub fn own() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        PgCluster {
            socket_dir: pg_cluster("start", dir.path()),
            own: Some(dir),
        }
    }

    /// A new empty database; its connection string.
    pub fn database(&self) -> String {
        crate::server::fresh_database(&self.socket_dir)
    }

    /// Run SQL in database `url` as the superuser; what it printed.
    pub fn sql(&self, url: &str, sql: &str) -> String {
        let dbname = url
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("dbname="))
            .unwrap();
        let out = Command::new("psql")
            .args([
                "-h",
                &self.socket_dir,
                "-U",
                "postgres",
                "-d",
                dbname,
                "-qAt",
                "-c",
            ])
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stop the cluster (all its connections drop), then start it again on the same data.
    pub fn restart(&self, down_for: std::time::Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// Stop this test's own cluster (fast shutdown: every connection drops).
    pub fn stop(&self) {
        pg_cluster("stop", self.own_dir());
    }

    /// Start this test's own, stopped cluster again on its data.
    pub fn start_again(&self) {
        pg_cluster("restart", self.own_dir());
    }

    fn own_dir(&self) -> &std::path::Path {
        self.own
            .as_ref()
            .expect("only a test's own cluster is stopped and started")
            .path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.own {
            let _ = Command::new(script()).arg("stop").arg(dir.path()).status();
        }
    }
}

/// `scripts/pg-cluster COMMAND DIR`, which must succeed; what it printed (the socket dir).
fn pg_cluster(command: &str, dir: &std::path::Path) -> String {
    let out = Command::new(script())
        .arg(command)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/pg-cluster {command}: {} (scripts/install-deps installs postgresql)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/pg-cluster"
    ))
}
