//! A real browser: Debian's chromium (`IOTPIPE_TEST_CHROMIUM`, installed by
//! `tests/setup/services.sh`) opens every generated page headless, from `file://`.
//! The test fails on any console message (a blocked request is one: the pages' CSP
//! forbids every fetch) or network error, checks in the DOM the browser built that each
//! chart shows the series and points its figure states (the health page's per-minute
//! charts: as many as the meter recorded), and takes screenshots of the fleet and health
//! pages at 1280×800 and at a phone's 390×844. The screenshots are kept as test artefacts in
//! `target/dashboard-screenshots/` (git-ignored).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{figures, fixture, site_of};

fn chromium() -> String {
    match std::env::var("IOTPIPE_TEST_CHROMIUM") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "IOTPIPE_TEST_CHROMIUM is not set: run the suite with `bash tests/run.sh` (its \
             set-up installs Debian's chromium and exports it)"
        ),
    }
}

/// Runs headless chromium on `url` with `extra` flags; returns (stdout, stderr).
fn headless(url: &str, profile: &Path, extra: &[String]) -> (String, String) {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed on {url}: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lines of chromium's log that mean the page misbehaved: console messages (errors,
/// CSP violations) and failed loads.
fn page_problems(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("CONSOLE")
                || l.contains("Refused to")
                || l.contains("net::ERR_")
                || l.contains("Failed to load")
        })
        .collect()
}

fn artefacts() -> PathBuf {
    let dir = test_support::workspace_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn chromium_shows_every_page_without_errors_and_every_chart_with_its_points() {
    let data = tempfile::tempdir().unwrap();
    let store = telemetry::store::open_store(data.path().to_str().unwrap()).unwrap();
    let metered = fixture(&store).await;
    let site = site_of(store).await;
    let out = tempfile::tempdir().unwrap();
    dashboard::write_dir(&site, out.path()).unwrap();
    let profile = tempfile::tempdir().unwrap();

    // The health page's per-minute charts, from the meter's records: invocations (a line
    // per function, a point per minute with invocations) and Duration p50/p99 per function.
    let mut expected: Vec<(String, [usize; 4])> = vec![(
        "invocations-per-minute".into(),
        [
            metered.len(),
            metered.iter().map(|f| f.per_minute.len()).sum(),
            0,
            0,
        ],
    )];
    for f in &metered {
        expected.push((
            format!("duration-{}", f.function),
            [2, 2 * f.per_minute.len(), 0, 0],
        ));
    }
    let mut charts = 0;
    for (rel, html) in &site.pages {
        let url = format!("file://{}", out.path().join(rel).display());
        let (dom, log) = headless(&url, profile.path(), &["--dump-dom".into()]);
        assert!(
            page_problems(&log).is_empty(),
            "{rel}: {:?}",
            page_problems(&log)
        );
        assert!(
            dom.contains("<main>"),
            "{rel}: the browser built no page: {dom:.300}"
        );
        // What the browser shows is what was written, chart by chart.
        let shown = figures(&dom);
        assert_eq!(
            shown.len(),
            figures(html).len(),
            "{rel}: every chart is in the DOM"
        );
        for (id, stated, drawn) in &shown {
            assert_eq!(stated, drawn, "{rel}: chart {id} shows what it states");
            assert!(
                drawn.iter().any(|n| *n > 0),
                "{rel}: chart {id} is not empty"
            );
        }
        charts += shown.len();
        if rel == "health.html" {
            for (id, want) in &expected {
                let got = shown.iter().find(|f| &f.0 == id);
                assert_eq!(got.map(|f| f.2), Some(*want), "health.html: chart {id}");
            }
        }
    }
    // Fleet: 2 metrics + throughput; device pages: 2 each for 3 devices; latency 1;
    // health 8 (reasons over time, invocations, invocations per minute, Duration per
    // minute of the 3 functions, Duration p99 per run, memory); bill 1.
    assert_eq!(charts, 3 + 6 + 1 + 8 + 1);

    let shots = artefacts();
    for (name, page, size) in [
        ("index-1280x800.png", "index.html", "1280,800"),
        ("index-phone-390x844.png", "index.html", "390,844"),
        ("health-1280x800.png", "health.html", "1280,800"),
        ("health-phone-390x844.png", "health.html", "390,844"),
    ] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        let url = format!("file://{}", out.path().join(page).display());
        let (_, log) = headless(
            &url,
            profile.path(),
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={size}"),
            ],
        );
        assert!(page_problems(&log).is_empty(), "{:?}", page_problems(&log));
        let png = std::fs::read(&path).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: {} bytes",
            png.len()
        );
    }
}
