//! The dashboard: a self-contained static site (HTML + inline SVG, no script, no request to
//! any other host) drawn from what the pipeline stores — the window statistics, the
//! delivery ledger, the quarantine and the runs' Lambda metering and cost.
//!
//! The same code renders it for `iotpipe dashboard` (to a directory, or served on
//! 127.0.0.1) and can write it into a store under `dashboard/` (the report function on
//! AWS, after a rollup).
//!
//! # Layout
//! - [`source`]: the adapter over `analytics` and `telemetry` — the one module to change
//!   when their APIs move — and the run records under `_runs/`.
//! - [`pages`]: the pages (fleet, devices and a page per device, latency, pipeline health,
//!   bill) and the [`Site`] they make.
//! - [`chart`]: time series and bar charts, drawn with `plotters`' SVG backend.
//! - [`html`]: escaping, the page shell, tables with exact values, figures.
//! - [`report`]: the scheduled `report` Lambda's handler (`src/main.rs` wires it), which
//!   writes the site under `dashboard/` in the bucket.
//!
//! # Pages
//! `index.html` (fleet), `devices.html`, `device/<id>.html`, `latency.html`,
//! `health.html`, `bill.html`. Every chart sits in a `<figure>` that states how many lines,
//! line points, bands and bars it drew (see [`chart`]), with its numbers in a table beside
//! it.

pub mod chart;
pub mod html;
pub mod pages;
pub mod report;
pub mod source;

use std::path::Path;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub use pages::{Site, device_file, render};
pub use source::{
    Options, RUNS_PREFIX, RunSent, SENT_SUFFIX, Snapshot, load, save_run, save_sent,
    window_for_range,
};

/// Key prefix of the site when it is written into the store (see [`publish`]).
pub const SITE_PREFIX: &str = telemetry::layout::DASHBOARD_PREFIX;

/// The dashboard could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// Reading the data failed.
    #[error(transparent)]
    Source(#[from] source::SourceError),
    /// A chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    /// Writing a page failed.
    #[error("writing {path}: {message} — check that the output location is writable")]
    Write {
        /// The file or object.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Reads the data in `store` and renders the site; `now_ms` is shown as its generation
/// time.
pub async fn build(
    store: Arc<dyn ObjectStore>,
    opts: &Options,
    now_ms: i64,
) -> Result<Site, DashboardError> {
    let snapshot = load(store, opts).await?;
    Ok(render(&snapshot, &html::utc(now_ms))?)
}

/// Writes the site's pages under `dir` (created when missing). Each page is written to a
/// temporary file and renamed, so a browser reloading never sees half a page.
pub fn write_dir(site: &Site, dir: &Path) -> Result<usize, DashboardError> {
    let fail = |path: &Path, e: std::io::Error| DashboardError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    for (rel, html) in &site.pages {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(parent, e))?;
        }
        let tmp = path.with_extension("html.tmp");
        std::fs::write(&tmp, html).map_err(|e| fail(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(&path, e))?;
    }
    Ok(site.pages.len())
}

/// Writes the site's pages into `store` under `prefix` (e.g. [`SITE_PREFIX`]), one put
/// each (a reader sees the old or the new page, never a partial one).
pub async fn publish(
    site: &Site,
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> Result<usize, DashboardError> {
    for (rel, html) in &site.pages {
        let key = match prefix.trim_matches('/') {
            "" => rel.clone(),
            p => format!("{p}/{rel}"),
        };
        store
            .put(
                &object_store::path::Path::from(key.as_str()),
                PutPayload::from(html.clone().into_bytes()),
            )
            .await
            .map_err(|e| DashboardError::Write {
                path: key.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(site.pages.len())
}
