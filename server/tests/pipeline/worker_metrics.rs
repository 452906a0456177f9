//! A real `larder-worker` process with `[worker] metrics-listen`: it ingests
//! an upload the router staged, and its `GET /metrics` shows the ingest,
//! the pack it sealed, its periodic tasks and (on S3) its storage requests;
//! without the `[metrics] token` it answers the contract's 401 JSON error;
//! `/_health` and `/_ready` answer without it; SIGTERM stops it with exit 0. Its job slots and jobs in
//! flight are gauges. The API's own `/metrics` renders every family once,
//! with the backlog (queue depth, staged NARs, ingest lag) before and after
//! the worker drains it.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::{MIB, PULL_PUSH};
use crate::common::nar::TestNar;
use crate::common::read::assert_kind;
use crate::common::{self, Store, TestApp};

const TOKEN: &str = "worker-metrics-test-token";
/// Bound on the worker's start and ingest.
const LIMIT: Duration = Duration::from_secs(90);

/// A `larder-worker` child, killed on drop; its log in the test's directory.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    fn start(config: &Path, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("worker log");
        let mut cmd = Command::new(common::package_binary("larder-worker"));
        cmd.arg("-f").arg(config).arg("--concurrency").arg("2");
        for var in ["LARDER_CONFIG", "LARDER_DATABASE_URL", "LARDER_LISTEN"] {
            cmd.env_remove(var);
        }
        // The test config is written without the KEK (the app gets it in memory).
        cmd.env("LARDER_SIGNING_KEK", common::TEST_KEK)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file);
        let child = cmd.spawn().expect("spawning larder-worker");
        Self { child, log }
    }

    /// Panics with the log if the worker exited.
    fn ensure_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("larder-worker exited ({status}):\n{}", self.log_text());
        }
    }

    /// Sends SIGTERM (what `docker stop` sends) and waits for the exit.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM failed");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "larder-worker ignored SIGTERM for 30 s:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The app's config with `metrics-listen` and a `[metrics] token`.
fn worker_config(app: &TestApp, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(&app.config_path).expect("test config");
    let listen = format!("[worker]\nembedded = 0\nmetrics-listen = \"127.0.0.1:{port}\"\n");
    let text = text.replacen("[worker]\nembedded = 0\n", &listen, 1);
    assert!(
        text.contains("metrics-listen"),
        "no [worker] section:\n{text}"
    );
    let path = app.config_path.with_file_name("worker.toml");
    std::fs::write(&path, format!("{text}\n[metrics]\ntoken = \"{TOKEN}\"\n")).expect("write");
    path
}

/// The value of the sample `series` (`name{labels}`) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub(super) async fn a_worker_process_serves_its_metrics(app: &TestApp) {
    app.create_cache("metered", false).await;
    let token = app.token(&[("metered", PULL_PUSH)]);
    let nar = TestNar::files("metered-1.0", 71, &[300 * 1024, 2 * MIB]);
    assert_kind(&app.upload(&token, "metered", &nar).await, "Uploaded");
    // The API's backlog gauges: one NAR staged, its job waiting.
    let backlog = app.get("/metrics", None).await.text();
    assert_eq!(
        sample(
            &backlog,
            "larder_queue_pending_jobs{queue=\"larder.ingest-nar\"}"
        ),
        Some(1),
        "{backlog}"
    );
    assert_eq!(sample(&backlog, "larder_staged_nars"), Some(1));
    assert_eq!(
        sample(&backlog, "larder_staged_bytes"),
        Some(nar.nar_size())
    );
    assert!(sample(&backlog, "larder_ingest_lag_seconds").is_some());

    let port = free_port();
    let config = worker_config(app, port);
    let mut worker = WorkerProcess::start(&config, config.with_file_name("worker.log"));
    let url = format!("http://127.0.0.1:{port}/metrics");
    let http = reqwest::Client::new();

    // Until the worker answers and has ingested the staged NAR.
    let started = Instant::now();
    let text = loop {
        worker.ensure_running();
        assert!(
            started.elapsed() < LIMIT,
            "no ingest and sweep counted within {LIMIT:?}; log:\n{}",
            worker.log_text()
        );
        let got = http.get(&url).bearer_auth(TOKEN).send().await;
        if let Ok(resp) = got {
            assert_eq!(resp.status(), reqwest::StatusCode::OK);
            let ctype = resp.headers()[reqwest::header::CONTENT_TYPE].clone();
            assert_eq!(ctype, "text/plain; version=0.0.4");
            let text = resp.text().await.expect("metrics text");
            // Also until its first sweep (run at start, beside the ingest)
            // is counted: the two finish in either order.
            let ingested =
                sample(&text, "larder_jobs_total{kind=\"ingest\",outcome=\"ok\"}") == Some(1);
            let swept = sample(&text, "larder_jobs_total{kind=\"sweep\",outcome=\"ok\"}")
                .is_some_and(|n| n >= 1);
            // The ingest's run is counted just before it stops counting
            // as in flight.
            let idle = sample(&text, "larder_jobs_in_flight{kind=\"ingest\"}") == Some(0);
            if ingested && swept && idle {
                break text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(app.staged_nar_ids().await.is_empty(), "counted before done");
    assert_eq!(
        sample(&text, "larder_job_slots{kind=\"ingest\"}"),
        Some(2),
        "--concurrency 2: {text}"
    );
    assert!(text.contains("# TYPE larder_jobs_in_flight gauge\n"));
    assert!(
        sample(&text, "larder_packs_written_total").is_some_and(|n| n >= 1),
        "{text}"
    );
    assert!(
        sample(&text, "larder_pack_bytes_written_total").is_some_and(|n| n > 0),
        "{text}"
    );
    // Periodic tasks every worker runs at start.
    assert!(
        sample(&text, "larder_jobs_total{kind=\"sweep\",outcome=\"ok\"}").is_some_and(|n| n >= 1),
        "{text}"
    );
    for family in [
        "larder_storage_requests_total",
        "larder_chunks_moved_total",
        "larder_recompression_bytes_saved_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter\n")),
            "{text}"
        );
    }
    assert!(
        !text.contains("larder_uploads_total"),
        "API counters: {text}"
    );
    if app.store == Store::S3 {
        // The ingest read the staged copy and wrote its pack.
        let op = |op: &str| {
            sample(
                &text,
                &format!("larder_storage_requests_total{{op=\"{op}\",result=\"ok\"}}"),
            )
        };
        assert!(op("get").is_some_and(|n| n > 0), "{text}");
        assert!(
            op("put").or(op("upload_part")).is_some_and(|n| n > 0),
            "{text}"
        );
    }

    // Without the token, or with another: the API's 401 JSON error.
    for bearer in [None, Some("not-the-token")] {
        let mut req = http.get(&url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.expect("metrics request");
        assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = resp.json().await.expect("JSON error body");
        assert_eq!(body["code"], 401, "{body}");
        assert_eq!(body["error"], "Unauthorized", "{body}");
    }

    // Health for container healthchecks (compose.yaml's worker): open to
    // all even with a metrics token; ready = database and storage reachable.
    let base = format!("http://127.0.0.1:{port}");
    let health = http
        .get(format!("{base}/_health"))
        .send()
        .await
        .expect("/_health");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let ready = http
        .get(format!("{base}/_ready"))
        .send()
        .await
        .expect("/_ready");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = ready.json().await.expect("/_ready JSON");
    assert_eq!(body, serde_json::json!({"database": true, "storage": true}));

    // The API (no token configured here) renders every family once.
    let api = app.get("/metrics", None).await;
    assert_eq!(api.status, StatusCode::OK);
    let text = api.text();
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = types.len();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), n, "a family twice:\n{text}");
    assert!(
        text.contains("# TYPE larder_jobs_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE larder_pack_dead_bytes gauge\n"),
        "{text}"
    );
    // The backlog is gone.
    assert_eq!(sample(&text, "larder_staged_nars"), Some(0), "{text}");
    assert_eq!(sample(&text, "larder_ingest_lag_seconds"), Some(0));
    assert_eq!(
        sample(
            &text,
            "larder_queue_pending_jobs{queue=\"larder.ingest-nar\"}"
        ),
        Some(0),
        "{text}"
    );
    worker.ensure_running();
    // SIGTERM stops it cleanly (exit 0), as Ctrl-C does.
    let status = worker.terminate().await;
    assert!(status.success(), "{status}:\n{}", worker.log_text());
}
