//! `iotpipe dashboard`: renders the static site of the `dashboard` crate into a directory,
//! or serves it on 127.0.0.1 and re-renders it as new data lands (also behind
//! `iotpipe up --dashboard`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use dashboard::{Options, RunSent, Site};
use object_store::ObjectStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use local::stack;

use crate::args::parse_time;
use crate::{DataArg, summary};

/// Examples after the flags.
const HELP: &str = "\
Pages: index.html (the fleet per metric, with its p50-p95-p99 band; readings and messages
per minute), devices.html (silent, noisiest, most rejected; a page per device with its
statistics and ledger), latency.html (device -> received -> in Parquet -> in stats,
p50/p99 per window; loss, late, out-of-order and duplicate ratios), health.html (accepted
vs quarantined by reason; per function, invocations and Duration p50/p99 per minute, Max
Memory Used vs Memory Size), bill.html (the last run's cost by service). The site is HTML
and SVG only: it makes no request to any other host. Lambda figures, the rollups that date
in-stats times and the bill come from the run records iotpipe up/replay write under _runs/
in --data.

Examples:
  iotpipe up --devices 50 --rate 5 --duration 2m --data ./data
  iotpipe dashboard --data ./data --out site        # then open site/index.html
  iotpipe dashboard --data ./data --from 2026-11-20T00:00:00Z   # 1h windows (range > 6 h)
  iotpipe dashboard --data ./data --serve --port 8080
  iotpipe up --dashboard                            # watch a run live";

/// Arguments of `iotpipe dashboard`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = HELP)]
pub(crate) struct DashboardArgs {
    #[command(flatten)]
    data: DataArg,
    /// Directory the site is written to (created when missing; default ./site). With
    /// --serve, the site is served from memory and written here only when --out is given.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Window of the statistics and the ledger: 1m, 1h or 1d. Default: from the range,
    /// 1m up to 6 hours, 1h up to 14 days, 1d beyond (1m without --from).
    #[arg(long)]
    window: Option<analytics::Window>,
    /// Only windows starting at or after this time (RFC 3339, e.g. 2026-11-25T16:00:00Z,
    /// or epoch milliseconds): the fleet and device statistics.
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    /// Only windows starting before this time (RFC 3339 or epoch milliseconds; default: no
    /// end, and now when choosing the window).
    #[arg(long, value_parser = parse_time)]
    to: Option<i64>,
    /// Serve the site on http://127.0.0.1:PORT and re-render it every --every, until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Port for --serve (0 picks a free one; the URL is printed).
    #[arg(long, default_value_t = 8080, requires = "serve")]
    port: u16,
    /// How often --serve re-renders from --data (pages reload themselves as often).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    every: Duration,
}

/// `iotpipe dashboard`.
pub(crate) async fn run(a: DashboardArgs) -> anyhow::Result<()> {
    let store = stack::open_existing_store(&a.data.data)?;
    let to =
        a.to.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let opts = Options {
        window: a
            .window
            .unwrap_or_else(|| dashboard::window_for_range(a.from, to)),
        from_ms: a.from,
        to_ms: a.to,
    };
    if a.serve {
        let server = Server::bind(a.port).await?;
        summary::print_line(&format!("dashboard: {}", server.url()));
        return server.run(store, opts, a.every, a.out).await;
    }
    let out = a.out.unwrap_or_else(|| PathBuf::from("site"));
    let site = render(&store, &opts).await?;
    let pages = dashboard::write_dir(&site, &out)?;
    summary::print_line(&format!(
        "dashboard: {pages} page(s) in {} — open {}",
        out.display(),
        out.join("index.html").display()
    ));
    Ok(())
}

async fn render(store: &Arc<dyn ObjectStore>, opts: &Options) -> anyhow::Result<Site> {
    let now = chrono::Utc::now().timestamp_millis();
    dashboard::build(store.clone(), opts, now)
        .await
        .context("rendering the dashboard")
}

/// The dashboard served on 127.0.0.1.
pub(crate) struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Binds 127.0.0.1:`port` (0: any free port).
    pub(crate) async fn bind(port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .with_context(|| {
                format!("cannot listen on 127.0.0.1:{port}: pick another --port (0: any free one)")
            })?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The URL of the index page.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Renders now and every `every`, serving the latest site, until the task is dropped.
    /// A failed re-render keeps the previous site (and logs why).
    pub(crate) async fn run(
        self,
        store: Arc<dyn ObjectStore>,
        opts: Options,
        every: Duration,
        out: Option<PathBuf>,
    ) -> anyhow::Result<()> {
        let refresh = every.as_secs().max(1);
        let site = Arc::new(RwLock::new(Site::default()));
        let renderer = {
            let site = site.clone();
            async move {
                loop {
                    match render(&store, &opts).await {
                        Ok(new) => {
                            if let Some(dir) = &out
                                && let Err(e) = dashboard::write_dir(&new, dir)
                            {
                                tracing::warn!(error = %e, "the dashboard could not be written");
                            }
                            if let Ok(mut s) = site.write() {
                                *s = new;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "re-rendering the dashboard failed")
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            }
        };
        let serve = async move {
            loop {
                let (conn, _) = match self.listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a dashboard connection failed");
                        continue;
                    }
                };
                let site = site.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond(conn, &site, refresh).await {
                        tracing::debug!(error = %e, "a dashboard request failed");
                    }
                });
            }
        };
        // Both loops run until the task is dropped (Ctrl-C ends the process).
        tokio::select! {
            _ = renderer => Ok(()),
            _ = serve => Ok(()),
        }
    }
}

/// The page a request path names: `/` is `index.html`; `%7E`/`%3A` are decoded.
fn page_of(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    path.replace("%7E", "~").replace("%7e", "~")
}

/// Answers one HTTP/1.x request (GET or HEAD) from the site in memory, then closes.
async fn respond(mut conn: TcpStream, site: &RwLock<Site>, refresh_s: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let page = site
        .read()
        .ok()
        .and_then(|s| s.pages.get(&page_of(path)).cloned());
    let (status, body) = match (method, page) {
        ("GET" | "HEAD", Some(html)) => (
            "200 OK",
            // Pages reload themselves so that a run can be watched live.
            html.replacen(
                "<meta charset=\"utf-8\">",
                &format!(
                    "<meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{refresh_s}\">"
                ),
                1,
            ),
        ),
        ("GET" | "HEAD", None) => ("404 Not Found", "not found: see / for the pages\n".into()),
        _ => ("405 Method Not Allowed", "only GET and HEAD\n".into()),
    };
    let ctype = if status.starts_with("200") {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    conn.write_all(&out).await?;
    conn.shutdown().await
}

/// `iotpipe up --dashboard`: serves the dashboard of `data` for the length of the run and
/// prints its URL.
pub(crate) async fn serve_during_run(data: &str, port: u16) -> anyhow::Result<()> {
    let store = stack::open_store(data)?;
    let server = Server::bind(port).await?;
    eprintln!("dashboard: {} (re-rendered every 5 s)", server.url());
    tokio::spawn(async move {
        let _ = server
            .run(store, Options::default(), Duration::from_secs(5), None)
            .await;
    });
    Ok(())
}

/// Records the run (its Lambda figures and cost) under `_runs/` in `data`, for the
/// dashboard's health and bill pages, and `sent`, what its simulated devices published (the
/// devices page's expected). A failure is logged, never fatal: the run's data is already
/// written.
pub(crate) async fn record_run(data: &str, s: &summary::Summary, sent: Option<RunSent>) {
    let saved = async {
        let store = stack::open_store(data)?;
        let value = serde_json::to_value(s)?;
        dashboard::save_run(&store, s.finished_at_ms, &value).await?;
        if let Some(sent) = &sent {
            dashboard::save_sent(&store, s.finished_at_ms, sent).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = saved.await {
        tracing::warn!(error = %format!("{e:#}"), "the run record for the dashboard could not be written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_name_the_site_pages() {
        assert_eq!(page_of("/"), "index.html");
        assert_eq!(page_of("/bill.html?x=1"), "bill.html");
        assert_eq!(page_of("/device/a%7Eb.html"), "device/a~b.html");
        assert_eq!(page_of("/device/"), "device/index.html");
    }

    #[tokio::test]
    async fn the_server_answers_pages_from_memory_and_404_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = stack::open_store(dir.path().to_str().unwrap()).unwrap();
        let server = Server::bind(0).await.unwrap();
        let url = server.url();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let task =
            tokio::spawn(server.run(store, Options::default(), Duration::from_millis(50), None));
        let get = |path: &'static str| {
            let addr = addr.clone();
            async move {
                let mut c = TcpStream::connect(&addr).await.unwrap();
                c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut s = String::new();
                c.read_to_string(&mut s).await.unwrap();
                s
            }
        };
        // The first render may still be running: wait for it.
        let mut index = String::new();
        for _ in 0..100 {
            index = get("/").await;
            if index.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(index.starts_with("HTTP/1.1 200"), "{index}");
        assert!(index.contains("class=\"empty\"") && index.contains("http-equiv=\"refresh\""));
        assert!(get("/nope.html").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
