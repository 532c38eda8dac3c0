//! `report.html`: one self-contained page (inline SVG and CSS, no scripts, nothing
//! fetched), readable in any browser and safe to mail or archive on its own.

use std::fmt::Write as _;

use super::plots::Figure;
use super::tables::{Cell, Table};
use super::Report;

/// Escaped text with Markdown-style `code` spans (as the notes are written) set as <code>.
fn prose(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

const STYLE: &str = "
body { font-family: 'DejaVu Sans', Verdana, Arial, sans-serif; margin: 0 auto; max-width: 1500px; padding: 1em 2em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h4 { margin: 1.2em 0 0.4em; }
.counts span { display: inline-block; margin-right: 1.2em; }
.warn { background: #fff4e5; border-left: 4px solid #e69500; padding: 0.5em 1em; }
.note { background: #eef4fb; border-left: 4px solid #3a78c2; padding: 0.5em 1em; }
figure { margin: 1.5em 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; margin-top: 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }
th, td { border: 1px solid #ddd; padding: 2px 8px; }
th { background: #f4f4f4; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.tablenote { font-size: 0.9em; color: #444; }
code { background: #f6f6f6; padding: 0 3px; }
";

pub fn page(report: &Report, svgs: &[String]) -> String {
    let mut h = String::new();
    let name = escape(&report.sweep);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>NeuroMFA report: {name}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    );
    let _ = writeln!(h, "<h1>NeuroMFA report: {name}</h1>");
    let count = |state: &str| report.counts.get(state).copied().unwrap_or(0);
    let _ = writeln!(
        h,
        "<p class=\"counts\"><span><b>{}</b> tasks</span><span><b>{}</b> done</span><span><b>{}</b> failed</span><span>{} pending</span><span>{} leased</span></p>",
        report.total_tasks,
        count("done"),
        count("failed"),
        count("pending"),
        count("leased")
    );
    let _ = writeln!(
        h,
        "<p>State directory <code>{}</code>; written by neuromfa {}. Variances are population variances (ddof 0) unless marked ddof1; bands and error margins are ±1 sd from them.</p>",
        escape(&report.state_dir.display().to_string()),
        env!("CARGO_PKG_VERSION")
    );
    for w in &report.warnings {
        let _ = writeln!(h, "<p class=\"warn\">Warning: {}</p>", prose(w));
    }
    for n in &report.notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", prose(n));
    }

    let figures: Vec<(&Figure, &String)> = report.figures.iter().zip(svgs).collect();
    let with_prefix = |prefix: &str| -> Vec<(&Figure, &String)> {
        figures
            .iter()
            .filter(|(f, _)| f.stem.starts_with(prefix))
            .copied()
            .collect()
    };
    let table = |stem: &str| report.tables.iter().find(|t| t.stem == stem);

    section(
        &mut h,
        "Multifractal spectra",
        &with_prefix("spectra-"),
        &[],
    );
    section(
        &mut h,
        "Irregularity α0 and heterogeneity w",
        &with_prefix("alpha0-width"),
        &[
            table("table-alpha0-width"),
            table("table-spectrum-variance"),
        ],
    );
    section(
        &mut h,
        "Degree of emergence",
        &with_prefix("emergence"),
        &[table("table-emergence")],
    );
    if let Some(i) = report.correlations {
        section(
            &mut h,
            "Benchmarks",
            &with_prefix("evals-"),
            &[report.tables.get(i)],
        );
    }
    if !report.failed.is_empty() {
        let _ = writeln!(h, "<h2>Failed tasks</h2>\n<table>\n<tr><th>model</th><th>step</th><th>seed</th><th>attempts</th><th>error</th></tr>");
        for row in &report.failed {
            let cells: String = row
                .iter()
                .map(|c| format!("<td>{}</td>", escape(c)))
                .collect();
            let _ = writeln!(h, "<tr>{cells}</tr>");
        }
        let _ = writeln!(h, "</table>");
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn section(h: &mut String, title: &str, figures: &[(&Figure, &String)], tables: &[Option<&Table>]) {
    let _ = writeln!(h, "<h2>{}</h2>", escape(title));
    for (figure, svg) in figures {
        let _ = writeln!(h, "<figure id=\"{}\">", escape(&figure.stem));
        // The SVG is plotters' output: text is already escaped, and it holds no scripts.
        h.push_str(svg);
        let _ = writeln!(
            h,
            "<figcaption>{} (<code>{}.svg</code>, <code>{}.png</code>)</figcaption>\n</figure>",
            escape(&figure.caption),
            escape(&figure.stem),
            escape(&figure.stem)
        );
    }
    for table in tables.iter().flatten() {
        write_table(h, table);
    }
}

fn write_table(h: &mut String, table: &Table) {
    let _ = writeln!(
        h,
        "<h3 id=\"{}\">{}</h3>",
        escape(&table.stem),
        escape(&table.title)
    );
    for note in &table.notes {
        let _ = writeln!(h, "<p class=\"tablenote\">{}</p>", prose(note));
    }
    let _ = writeln!(
        h,
        "<p class=\"tablenote\">Also as <code>{0}.md</code> and <code>{0}.csv</code> (full precision).</p>",
        escape(&table.stem)
    );
    for (model, rows) in &table.sections {
        let _ = writeln!(h, "<h4>{}</h4>\n<table>", escape(model));
        let head: String = table
            .columns
            .iter()
            .map(|c| format!("<th>{}</th>", escape(c)))
            .collect();
        let _ = writeln!(h, "<tr>{head}</tr>");
        for row in rows {
            let cells: String = row
                .iter()
                .map(|c| match c {
                    Cell::Text(_) => format!("<td>{}</td>", escape(&c.display())),
                    _ => format!("<td class=\"n\">{}</td>", escape(&c.display())),
                })
                .collect();
            let _ = writeln!(h, "<tr>{cells}</tr>");
        }
        let _ = writeln!(h, "</table>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(prose("a `x<y` b"), "a <code>x&lt;y</code> b");
    }
}
