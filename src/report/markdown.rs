//! The report as GitHub-flavoured Markdown; charts are linked PNGs next to it.

use super::document::{Block, Document, Table};

/// The Markdown text of `document`.
pub fn render(document: &Document) -> String {
    let mut out = String::new();
    for block in &document.blocks {
        match block {
            Block::Heading { level, text } => {
                out.push_str(&"#".repeat(usize::from((*level).clamp(1, 6))));
                out.push(' ');
                out.push_str(&inline(text));
            }
            Block::Paragraph(text) => out.push_str(&inline(text)),
            Block::Table(table) => out.push_str(&render_table(table)),
            Block::Image { file, alt } => out.push_str(&format!("![{}]({file})", inline(alt))),
        }
        out.push_str("\n\n");
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// A pipe table; the first column is left-aligned (names), the others right-aligned (numbers).
fn render_table(table: &Table) -> String {
    let row = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        format!("| {} |", cells.join(" | "))
    };
    let alignment: Vec<&str> = (0..table.header.len())
        .map(|i| if i == 0 { ":---" } else { "---:" })
        .collect();
    let mut lines = vec![row(&table.header), format!("| {} |", alignment.join(" | "))];
    lines.extend(table.rows.iter().map(|r| row(r)));
    lines.join("\n")
}

/// Text with the characters that Markdown would read as markup escaped.
fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A table cell: inline text on one line.
fn cell(text: &str) -> String {
    inline(&text.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_render_as_markdown_with_markup_escaped() {
        let document = Document {
            title: "t".into(),
            blocks: vec![
                Block::Heading {
                    level: 2,
                    text: "Task a_b".into(),
                },
                Block::Table(Table {
                    header: vec!["metric".into(), "x|y".into()],
                    rows: vec![vec!["ndcg@10".into(), "0.5000 *".into()]],
                }),
                Block::Image {
                    file: "plots/a.png".into(),
                    alt: "chart".into(),
                },
            ],
            plots: Vec::new(),
        };
        assert_eq!(
            render(&document),
            "## Task a\\_b\n\n| metric | x\\|y |\n| :--- | ---: |\n| ndcg@10 | 0.5000 \\* |\n\n\
             ![chart](plots/a.png)\n"
        );
    }
}
