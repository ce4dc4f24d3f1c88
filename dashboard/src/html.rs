//! HTML building blocks: escaping, the page shell (inline CSS, a Content-Security-Policy
//! that forbids every request, so the site never reaches another host), tables whose
//! number cells carry their exact value (`data-v`), and chart figures.

use std::fmt::Write as _;

use crate::chart::Chart;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM` UTC of an epoch-ms instant.
pub fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `HH:MM:SS` UTC.
pub fn utc_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A number for people: up to three decimals, no trailing zeros.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// One table cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text, left-aligned.
    Text(String),
    /// A link: (href, text).
    Link(String, String),
    /// An integer, right-aligned; `data-v` holds it.
    Int(u64),
    /// A float, right-aligned, shown rounded; `data-v` holds Rust's round-trip form.
    Float(f64),
    /// An instant, shown as UTC; `data-v` holds epoch ms.
    Time(i64),
}

/// A table with a caption and an `id` (tests find tables by it).
pub fn table(id: &str, caption: &str, header: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut s = format!(
        "<div class=\"scroll\"><table id=\"{}\"><caption>{}</caption><thead><tr>",
        esc(id),
        esc(caption)
    );
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for row in rows {
        s.push_str("<tr>");
        for c in row {
            match c {
                Cell::Text(t) => {
                    let _ = write!(s, "<td>{}</td>", esc(t));
                }
                Cell::Link(href, t) => {
                    let _ = write!(s, "<td><a href=\"{}\">{}</a></td>", esc(href), esc(t));
                }
                Cell::Int(n) => {
                    let _ = write!(s, "<td class=\"n\" data-v=\"{n}\">{n}</td>");
                }
                Cell::Float(x) => {
                    let _ = write!(s, "<td class=\"n\" data-v=\"{x}\">{}</td>", num(*x));
                }
                Cell::Time(ms) => {
                    let _ = write!(s, "<td data-v=\"{ms}\">{}</td>", esc(&utc(*ms)));
                }
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></div>");
    s
}

/// A chart in a `<figure>` stating what it drew, with its title, HTML legend and a note.
pub fn figure(id: &str, title: &str, chart: &Chart, note: &str) -> String {
    let mut s = format!(
        "<figure class=\"chart\" id=\"{}\" data-lines=\"{}\" data-line-points=\"{}\" data-bands=\"{}\" data-bars=\"{}\"><figcaption>{}</figcaption><div class=\"plot\">{}</div>",
        esc(id),
        chart.lines,
        chart.line_points,
        chart.bands,
        chart.bars,
        esc(title),
        chart.svg
    );
    if !chart.legend.is_empty() {
        s.push_str("<ul class=\"legend\">");
        for (name, color) in &chart.legend {
            let _ = write!(
                s,
                "<li><span class=\"sw\" style=\"background:{color}\"></span>{}</li>",
                esc(name)
            );
        }
        s.push_str("</ul>");
    }
    if !note.is_empty() {
        let _ = write!(s, "<p class=\"note\">{}</p>", esc(note));
    }
    s.push_str("</figure>");
    s
}

/// The honest empty state: what is missing and the command that produces it.
pub fn empty(what: &str, how: &str) -> String {
    format!(
        "<div class=\"empty\"><p>{}</p><p>{}</p></div>",
        esc(what),
        esc(how)
    )
}

/// A headline figure.
pub fn card(label: &str, value: &str, href: &str) -> String {
    format!(
        "<a class=\"card\" href=\"{}\"><span class=\"v\">{}</span><span class=\"l\">{}</span></a>",
        esc(href),
        esc(value),
        esc(label)
    )
}

const CSS: &str = "\
*{box-sizing:border-box}body{margin:0;font:16px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d232a;background:#f6f7f9}\
header{background:#14324a;color:#fff;padding:.6rem 1rem}header h1{font-size:1.15rem;margin:0 0 .3rem}\
nav{display:flex;flex-wrap:wrap;gap:.15rem 1rem}nav a{color:#cfe6ff;text-decoration:none;white-space:nowrap}nav a.on{color:#fff;font-weight:600;border-bottom:2px solid #fff}\
main{max-width:1240px;margin:0 auto;padding:1rem}h2{font-size:1.2rem;margin:1.6rem 0 .6rem}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:.6rem}\
.card{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:.6rem .8rem;color:inherit;text-decoration:none}\
.card .v{display:block;font-size:1.45rem;font-weight:600}.card .l{color:#56606b;font-size:.9rem}\
figure.chart{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:0 0 1rem;padding:.6rem}\
figure.chart svg{width:100%;height:auto;display:block}figcaption{font-weight:600;margin-bottom:.3rem}\
.legend{list-style:none;padding:0;margin:.3rem 0 0;display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.9rem}\
.sw{display:inline-block;width:.9rem;height:.9rem;border-radius:2px;margin-right:.35rem;vertical-align:-2px}\
.note{color:#56606b;font-size:.88rem;margin:.3rem 0 0}\
.scroll{overflow-x:auto;margin-bottom:1rem}table{border-collapse:collapse;background:#fff;font-size:.9rem;min-width:50%}\
caption{text-align:left;font-weight:600;padding:.3rem 0}th,td{border:1px solid #dde2e8;padding:.25rem .5rem;white-space:nowrap}\
th{background:#eef1f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
details{margin-bottom:1rem}summary{cursor:pointer;color:#14324a}\
.empty{background:#fff;border:1px dashed #9aa5b1;border-radius:6px;padding:1rem 1.2rem}\
footer{color:#56606b;font-size:.85rem;padding:1rem;text-align:center}\
@media (max-width:600px){main{padding:.5rem}body{font-size:15px}.card .v{font-size:1.2rem}\
.plot{overflow-x:auto}.plot svg{min-width:620px}}";

/// The pages of the navigation: (file, label).
pub const NAV: [(&str, &str); 5] = [
    ("index.html", "Fleet"),
    ("devices.html", "Devices"),
    ("latency.html", "Latency"),
    ("health.html", "Pipeline health"),
    ("bill.html", "Bill"),
];

/// A whole page. `root` is the relative path to the site's root (`""` or `"../"`);
/// `current` the file name of the navigation entry to highlight.
pub fn page(title: &str, root: &str, current: &str, generated: &str, body: &str) -> String {
    let mut nav = String::new();
    for (file, label) in NAV {
        let on = if file == current { " class=\"on\"" } else { "" };
        let _ = write!(nav, "<a href=\"{root}{file}\"{on}>{label}</a>");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
<title>{t} · iot-pipeline</title><style>{CSS}</style></head><body>\
<header><h1>iot-pipeline · {t}</h1><nav>{nav}</nav></header><main>{body}</main>\
<footer>Generated {g} by iotpipe dashboard. All times UTC.</footer></body></html>\n",
        t = esc(title),
        g = esc(generated),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_numbers_keep_their_exact_value() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let t = table("t", "c", &["a"], &[vec![Cell::Float(0.1 + 0.2)]]);
        assert!(t.contains("data-v=\"0.30000000000000004\">0.3<"), "{t}");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(-0.0001), "0");
    }
}
