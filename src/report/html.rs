//! The report as one self-contained HTML page: styles inline and every chart embedded as a base64 data URI, so
//! the file can be mailed or opened from anywhere without its `plots/` directory.

use std::path::Path;

use base64::Engine;

use super::document::{Block, Document, Table};
use super::ReportError;

const STYLE: &str =
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:0.25em 0.6em}\
td:not(:first-child),th:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}\
th{background:#eee}img{max-width:100%;border:1px solid #ddd}";

/// The HTML page of `document`; its images are read from `base` (the directory the report is written to).
pub fn render(document: &Document, base: &Path) -> Result<String, ReportError> {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&document.title)
    );
    for block in &document.blocks {
        match block {
            Block::Heading { level, text } => {
                let level = (*level).clamp(1, 6);
                out.push_str(&format!("<h{level}>{}</h{level}>", escape(text)));
            }
            Block::Paragraph(text) => out.push_str(&format!("<p>{}</p>", escape(text))),
            Block::Table(table) => out.push_str(&render_table(table)),
            Block::Image { file, alt } => {
                let path = base.join(file);
                let bytes = std::fs::read(&path).map_err(ReportError::io(&path))?;
                let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                out.push_str(&format!(
                    "<figure><img src=\"data:image/png;base64,{data}\" alt=\"{}\"></figure>",
                    escape(alt)
                ));
            }
        }
        out.push('\n');
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

fn render_table(table: &Table) -> String {
    let cells = |tag: &str, cells: &[String]| -> String {
        cells
            .iter()
            .map(|c| format!("<{tag}>{}</{tag}>", escape(c)))
            .collect()
    };
    let mut out = format!("<table>\n<tr>{}</tr>\n", cells("th", &table.header));
    for row in &table.rows {
        out.push_str(&format!("<tr>{}</tr>\n", cells("td", row)));
    }
    out.push_str("</table>");
    out
}

fn escape(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_images_are_inlined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"\x89PNG").unwrap();
        let document = Document {
            title: "a <b>".into(),
            blocks: vec![
                Block::Paragraph("x & y".into()),
                Block::Table(Table {
                    header: vec!["m".into()],
                    rows: vec![vec!["<1>".into()]],
                }),
                Block::Image {
                    file: "a.png".into(),
                    alt: "\"q\"".into(),
                },
            ],
            plots: Vec::new(),
        };
        let html = render(&document, dir.path()).unwrap();
        assert!(html.contains("<title>a &lt;b&gt;</title>"));
        assert!(html.contains("<p>x &amp; y</p>"));
        assert!(html.contains("<td>&lt;1&gt;</td>"));
        assert!(html.contains("src=\"data:image/png;base64,iVBORw==\" alt=\"&quot;q&quot;\""));
    }

    #[test]
    fn a_missing_image_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let document = Document {
            title: "t".into(),
            blocks: vec![Block::Image {
                file: "plots/gone.png".into(),
                alt: String::new(),
            }],
            plots: Vec::new(),
        };
        let error = render(&document, dir.path()).unwrap_err().to_string();
        assert!(error.contains("gone.png"), "{error}");
    }
}
