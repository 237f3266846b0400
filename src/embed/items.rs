//! The records to embed: this shard's documents (corpus order) and queries (queries order), read from the ingest
//! datasets, each with the content key its embedding is cached under.

use std::collections::HashMap;

use arrow::array::{Array, LargeBinaryArray, RecordBatch, StringArray, UInt32Array, UInt64Array};

use super::EmbedError;
use crate::dataset::{columns, Dataset};
use crate::digest::Fingerprint;
use crate::modality::Modality;
use crate::shard::Shard;

/// Which side of retrieval a record is on; the value of the output's `kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Doc,
    Query,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Doc => "doc",
            Side::Query => "query",
        }
    }
}

/// sha256 (hex) over exactly what the model sees of a record; equal keys embed to equal vectors.
pub type ContentKey = String;

/// One record to embed.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub side: Side,
    pub modality: Modality,
    pub text: Option<String>,
    pub image_id: Option<String>,
    /// The instruction the model is given: the query's own for instruction-aware models, else none.
    pub instruction: Option<String>,
    /// Where the record came from, for rejects.
    pub source_file: String,
    pub source_line: u64,
    pub key: ContentKey,
}

/// The content key: modality, instruction, text and image id, each labelled and length-prefixed.
pub fn content_key(
    modality: Modality,
    instruction: Option<&str>,
    text: Option<&str>,
    image_id: Option<&str>,
) -> ContentKey {
    let mut fp = Fingerprint::new();
    fp.part("modality", modality.as_str().as_bytes());
    for (label, value) in [
        ("instruction", instruction),
        ("text", text),
        ("image_id", image_id),
    ] {
        match value {
            Some(v) => fp.part(label, v.as_bytes()),
            None => fp.part(label, b"\0none"),
        };
    }
    fp.finish()
}

/// A record that could not become an item, with its reason.
#[derive(Debug, Clone)]
pub struct BadRecord {
    pub id: String,
    pub source_file: String,
    pub source_line: u64,
    pub reason: &'static str,
    pub detail: String,
}

/// Reads this shard's records of one side. Records whose modality disagrees with their text and image columns
/// are returned as bad records, not items.
pub fn read(
    dataset: &Dataset,
    side: Side,
    shard: Shard,
    takes_instructions: bool,
) -> Result<(Vec<Item>, Vec<BadRecord>), EmbedError> {
    let id_column = match side {
        Side::Doc => "did",
        Side::Query => "qid",
    };
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for batch in dataset.batches()? {
        let batch = batch?;
        let columns = Columns::of(&batch, dataset, id_column, side)?;
        for row in 0..batch.num_rows() {
            let id = columns.id.value(row);
            if !shard.owns(id) {
                continue;
            }
            match columns.item(row, side, takes_instructions) {
                Ok(item) => items.push(item),
                Err((reason, detail)) => bad.push(BadRecord {
                    id: id.to_string(),
                    source_file: columns.source_file.value(row).to_string(),
                    source_line: columns.source_line.value(row),
                    reason,
                    detail,
                }),
            }
        }
    }
    Ok((items, bad))
}

type Utf8 = StringArray;

struct Columns<'a> {
    id: &'a Utf8,
    modality: &'a Utf8,
    text: &'a Utf8,
    image_id: &'a Utf8,
    instruction: Option<&'a Utf8>,
    source_file: &'a Utf8,
    source_line: &'a UInt64Array,
}

impl<'a> Columns<'a> {
    fn of(
        batch: &'a RecordBatch,
        dataset: &Dataset,
        id: &str,
        side: Side,
    ) -> Result<Self, EmbedError> {
        let utf8 = |name: &str| column::<Utf8>(batch, dataset, name, "utf8");
        let source_line = column::<UInt64Array>(batch, dataset, "source_line", "uint64")?;
        Ok(Self {
            id: utf8(id)?,
            modality: utf8("modality")?,
            text: utf8("text")?,
            image_id: utf8("image_id")?,
            instruction: match side {
                Side::Query => Some(utf8("instruction")?),
                Side::Doc => None,
            },
            source_file: utf8("source_file")?,
            source_line,
        })
    }

    fn item(
        &self,
        row: usize,
        side: Side,
        takes_instructions: bool,
    ) -> Result<Item, (&'static str, String)> {
        let value = |a: &Utf8| (!a.is_null(row)).then(|| a.value(row).to_string());
        let modality: Modality = self
            .modality
            .value(row)
            .parse()
            .map_err(|e: String| ("bad_modality", e))?;
        let text = value(self.text).filter(|_| modality.has_text());
        let image_id = value(self.image_id).filter(|_| modality.has_image());
        if modality.has_text() && text.is_none() {
            return Err((
                "missing_text",
                format!("modality is {modality} but the text is null"),
            ));
        }
        if modality.has_image() && image_id.is_none() {
            return Err((
                "missing_image",
                format!("modality is {modality} but the image_id is null"),
            ));
        }
        let instruction = self
            .instruction
            .and_then(value)
            .filter(|_| takes_instructions);
        let key = content_key(
            modality,
            instruction.as_deref(),
            text.as_deref(),
            image_id.as_deref(),
        );
        Ok(Item {
            id: self.id.value(row).to_string(),
            side,
            modality,
            text,
            image_id,
            instruction,
            source_file: self.source_file.value(row).to_string(),
            source_line: self.source_line.value(row),
            key,
        })
    }
}

/// The column `name` of a batch of `dataset` as `A`, or an input error naming the dataset.
fn column<'a, A: Array + 'static>(
    batch: &'a RecordBatch,
    dataset: &Dataset,
    name: &str,
    ty: &str,
) -> Result<&'a A, EmbedError> {
    columns::typed(batch, name, ty).map_err(|message| EmbedError::Input {
        path: dataset.path().to_path_buf(),
        message,
    })
}

/// The images the items point at, read from the images dataset in one pass: encoded bytes and (width, height).
/// Only referenced images are kept, so memory is this shard's share of the images.
pub struct Images {
    by_id: HashMap<String, (Vec<u8>, (u32, u32))>,
}

impl Images {
    pub fn read(dataset: &Dataset, items: &[Item]) -> Result<Self, EmbedError> {
        let wanted: std::collections::HashSet<&str> =
            items.iter().filter_map(|i| i.image_id.as_deref()).collect();
        let mut by_id = HashMap::with_capacity(wanted.len());
        if wanted.is_empty() {
            return Ok(Self { by_id });
        }
        for batch in dataset.batches_of(256)? {
            let batch = batch?;
            let ids = column::<StringArray>(&batch, dataset, "image_id", "utf8")?;
            let bytes = column::<LargeBinaryArray>(&batch, dataset, "bytes", "large_binary")?;
            let dims = |name: &str| column::<UInt32Array>(&batch, dataset, name, "uint32");
            let (width, height) = (dims("width")?, dims("height")?);
            for row in 0..batch.num_rows() {
                let id = ids.value(row);
                if wanted.contains(id) && !by_id.contains_key(id) {
                    by_id.insert(
                        id.to_string(),
                        (
                            bytes.value(row).to_vec(),
                            (width.value(row), height.value(row)),
                        ),
                    );
                }
            }
        }
        Ok(Self { by_id })
    }

    /// No images, for record sets that have none.
    pub fn read_none() -> Self {
        Self {
            by_id: HashMap::new(),
        }
    }

    pub fn bytes(&self, image_id: &str) -> Option<&[u8]> {
        self.by_id.get(image_id).map(|(b, _)| b.as_slice())
    }

    /// (width, height).
    pub fn size(&self, image_id: &str) -> Option<(u32, u32)> {
        self.by_id.get(image_id).map(|(_, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_fields_and_absent_values() {
        let t = Modality::Text;
        let a = content_key(t, None, Some("ab"), None);
        assert_eq!(a, content_key(t, None, Some("ab"), None));
        assert_ne!(a, content_key(t, Some(""), Some("ab"), None));
        assert_ne!(a, content_key(t, None, Some("ab"), Some("")));
        assert_ne!(
            content_key(t, Some("a"), Some("b"), None),
            content_key(t, None, Some("ab"), None)
        );
        assert_ne!(a, content_key(Modality::ImageText, None, Some("ab"), None));
    }
}
