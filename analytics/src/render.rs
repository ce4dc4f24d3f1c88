//! One renderer for every table the CLI prints — `iotpipe query`, `iotpipe ledger`, the
//! function and cost tables of a run's summary: columns with a header and an alignment,
//! rows of already formatted cells, rendered as an aligned plain-text table or as CSV
//! (RFC 4180). JSON output stays the serde form of the typed rows, which keeps numbers
//! numbers.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A column: its header and alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The header (and the CSV field name).
    pub header: String,
    /// How the header and the cells line up in text.
    pub align: Align,
}

impl Column {
    /// A column of text, aligned left.
    pub fn left(header: impl Into<String>) -> Self {
        Self {
            header: header.into(),
            align: Align::Left,
        }
    }

    /// A column of numbers, aligned right.
    pub fn right(header: impl Into<String>) -> Self {
        Self {
            header: header.into(),
            align: Align::Right,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Line {
    Cells(Vec<String>),
    /// A rule across every column (text only; CSV leaves it out).
    Rule,
}

/// A table being built: columns, then rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    columns: Vec<Column>,
    lines: Vec<Line>,
    /// Prefix of every text line (a table nested in a longer report).
    indent: String,
    /// Whether text output starts with the header and a rule.
    header: bool,
}

/// Spaces between two columns of text.
const GAP: &str = "  ";

impl Table {
    /// A table with these columns and no rows; text output starts with the header and a
    /// rule.
    pub fn new(columns: Vec<Column>) -> Self {
        Self {
            columns,
            lines: Vec::new(),
            indent: String::new(),
            header: true,
        }
    }

    /// Prefixes every text line with `indent` (e.g. two spaces under a heading).
    pub fn indent(mut self, indent: &str) -> Self {
        self.indent = indent.to_string();
        self
    }

    /// Leaves the header and its rule out of text output (a list whose cells say what
    /// they are); CSV keeps the header.
    pub fn without_header(mut self) -> Self {
        self.header = false;
        self
    }

    /// Adds a row. Missing cells are empty; cells beyond the columns are ignored.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells
            .into_iter()
            .take(self.columns.len())
            .map(Into::into)
            .collect();
        cells.resize(self.columns.len(), String::new());
        self.lines.push(Line::Cells(cells));
    }

    /// Adds a rule (e.g. above a totals row); text only.
    pub fn rule(&mut self) {
        self.lines.push(Line::Rule);
    }

    /// The aligned plain-text table: the header and a rule (unless
    /// [`Table::without_header`]), then one line per row, columns two spaces apart,
    /// trailing spaces trimmed, every line ending in `\n`.
    pub fn to_text(&self) -> String {
        let headers: Vec<String> = self.columns.iter().map(|c| c.header.clone()).collect();
        let rows = self.lines.iter().filter_map(|l| match l {
            Line::Cells(c) => Some(c),
            Line::Rule => None,
        });
        let mut widths = vec![0; self.columns.len()];
        for row in rows.chain(self.header.then_some(&headers)) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        let line = |cells: &[String]| {
            let mut s = self.indent.clone();
            for (i, ((cell, &w), col)) in cells.iter().zip(&widths).zip(&self.columns).enumerate() {
                if i > 0 {
                    s.push_str(GAP);
                }
                match col.align {
                    Align::Left => s.push_str(&format!("{cell:<w$}")),
                    Align::Right => s.push_str(&format!("{cell:>w$}")),
                }
            }
            s.truncate(s.trim_end().len());
            s.push('\n');
            s
        };
        let mut out = String::new();
        if self.header {
            out.push_str(&line(&headers));
            out.push_str(&line(&rule));
        }
        for l in &self.lines {
            out.push_str(&line(match l {
                Line::Cells(cells) => cells,
                Line::Rule => &rule,
            }));
        }
        out
    }

    /// CSV (RFC 4180, `\n` line ends): the header line, then one line per row; a field is
    /// quoted only when it holds a separator, a quote or a line break.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let mut push = |cells: &mut dyn Iterator<Item = &str>| {
            let fields: Vec<String> = cells.map(csv_text).collect();
            out.push_str(&fields.join(","));
            out.push('\n');
        };
        push(&mut self.columns.iter().map(|c| c.header.as_str()));
        for l in &self.lines {
            if let Line::Cells(cells) = l {
                push(&mut cells.iter().map(String::as_str));
            }
        }
        out
    }
}

/// Quotes a CSV field when it contains a separator, a quote or a line break (RFC 4180).
pub fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(vec![Column::left("name"), Column::right("n")]);
        t.row(["a,b", "1"]);
        t.row(["long name", "12345"]);
        t.rule();
        t.row(["TOTAL", "12346"]);
        t
    }

    #[test]
    fn text_aligns_text_left_and_numbers_right_under_a_header_and_rule() {
        assert_eq!(
            sample().to_text(),
            "name           n\n\
             ---------  -----\n\
             a,b            1\n\
             long name  12345\n\
             ---------  -----\n\
             TOTAL      12346\n"
        );
    }

    #[test]
    fn csv_quotes_only_what_needs_it_and_leaves_rules_out() {
        assert_eq!(
            sample().to_csv(),
            "name,n\n\"a,b\",1\nlong name,12345\nTOTAL,12346\n"
        );
        assert_eq!(csv_text("a,\"b\""), "\"a,\"\"b\"\"\"");
    }

    #[test]
    fn an_indented_table_without_header_pads_missing_cells() {
        let mut t = Table::new(vec![Column::left("k"), Column::right("v")])
            .indent("  ")
            .without_header();
        t.row(["key"]);
        t.row(["k", "value"]);
        assert_eq!(t.to_text(), "  key\n  k    value\n");
    }
}
