//! Dataset schemas: the contracts between stages.
//!
//! The JSON files in `schemas/` are the single source of truth; they are compiled into the binary so that a
//! stage checks every batch it writes against the same definition a person reads. A mismatch is caught at the
//! writer, where the field that broke the contract can still be named, instead of in a downstream stage.

mod negative_kind;
pub mod outputs;

pub use negative_kind::NegativeKind;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Fields, Schema as ArrowSchema, SchemaRef};
use serde::Deserialize;

/// The schema files, embedded at build time.
const SOURCES: &[(&str, &str)] = &[
    ("candidates", include_str!("../../schemas/candidates.json")),
    ("cl", include_str!("../../schemas/cl.json")),
    ("corpus", include_str!("../../schemas/corpus.json")),
    (
        "embedding_cache",
        include_str!("../../schemas/embedding_cache.json"),
    ),
    ("embeddings", include_str!("../../schemas/embeddings.json")),
    ("images", include_str!("../../schemas/images.json")),
    ("metrics", include_str!("../../schemas/metrics.json")),
    ("mine_stats", include_str!("../../schemas/mine_stats.json")),
    ("negatives", include_str!("../../schemas/negatives.json")),
    ("qrels", include_str!("../../schemas/qrels.json")),
    ("queries", include_str!("../../schemas/queries.json")),
    ("rejects", include_str!("../../schemas/rejects.json")),
    ("run", include_str!("../../schemas/run.json")),
    ("sft", include_str!("../../schemas/sft.json")),
];

/// Why a schema could not be loaded or a batch does not conform to it.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown dataset kind `{0}` (known: {known})", known = kinds().join(", "))]
    UnknownKind(String),
    #[error("schemas/{kind}.json: {source}")]
    Parse {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("schemas/{kind}.json: field `{field}`: {message}")]
    Definition {
        kind: String,
        field: String,
        message: String,
    },
    #[error("batch for dataset kind `{kind}` does not match schemas/{kind}.json: {problem}")]
    Mismatch { kind: String, problem: String },
}

/// A field type as written in the schema files (see schemas/README.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TypeSpec {
    Name(String),
    List {
        list: Box<TypeSpec>,
        #[serde(default)]
        item_nullable: bool,
    },
    FixedSizeList {
        fixed_size_list: Box<TypeSpec>,
        size: Option<i32>,
    },
    Struct {
        #[serde(rename = "struct")]
        fields: Vec<FieldSpec>,
    },
}

/// One field of a schema file.
#[derive(Debug, Clone, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    ty: TypeSpec,
    pub nullable: bool,
    pub doc: String,
}

#[derive(Debug, Deserialize)]
struct SchemaFile {
    name: String,
    doc: String,
    fields: Vec<FieldSpec>,
}

/// A dataset kind's schema: its docs, and the Arrow schema batches must match.
#[derive(Debug)]
pub struct DatasetSchema {
    pub kind: String,
    pub doc: String,
    pub fields: Vec<FieldSpec>,
    /// Fixed-size lists whose width the file leaves open (`"size": null`), by dotted field path.
    open_widths: Vec<String>,
    arrow: SchemaRef,
}

/// Every dataset kind with a schema, sorted.
pub fn kinds() -> Vec<&'static str> {
    SOURCES.iter().map(|(kind, _)| *kind).collect()
}

/// The schema of a dataset kind, parsed once per process.
pub fn get(kind: &str) -> Result<&'static DatasetSchema, SchemaError> {
    static PARSED: OnceLock<BTreeMap<&'static str, Result<DatasetSchema, String>>> =
        OnceLock::new();
    let parsed = PARSED.get_or_init(|| {
        SOURCES
            .iter()
            .map(|(kind, text)| (*kind, parse(kind, text).map_err(|e| e.to_string())))
            .collect()
    });
    match parsed.get(kind) {
        Some(Ok(schema)) => Ok(schema),
        Some(Err(message)) => Err(SchemaError::Mismatch {
            kind: kind.to_string(),
            problem: message.clone(),
        }),
        None => Err(SchemaError::UnknownKind(kind.to_string())),
    }
}

fn parse(kind: &str, text: &str) -> Result<DatasetSchema, SchemaError> {
    let file: SchemaFile = serde_json::from_str(text).map_err(|source| SchemaError::Parse {
        kind: kind.to_string(),
        source,
    })?;
    if file.name != kind {
        return Err(SchemaError::Definition {
            kind: kind.to_string(),
            field: "name".into(),
            message: format!("file declares name `{}`", file.name),
        });
    }
    let mut open_widths = Vec::new();
    let fields = file
        .fields
        .iter()
        .map(|f| to_arrow_field(kind, "", f, &mut open_widths))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DatasetSchema {
        kind: kind.to_string(),
        doc: file.doc,
        fields: file.fields,
        open_widths,
        arrow: Arc::new(ArrowSchema::new(fields)),
    })
}

fn to_arrow_field(
    kind: &str,
    prefix: &str,
    spec: &FieldSpec,
    open_widths: &mut Vec<String>,
) -> Result<Field, SchemaError> {
    let path = format!("{prefix}{}", spec.name);
    let ty = to_arrow_type(kind, &path, &spec.ty, open_widths)?;
    Ok(Field::new(&spec.name, ty, spec.nullable))
}

fn to_arrow_type(
    kind: &str,
    path: &str,
    ty: &TypeSpec,
    open_widths: &mut Vec<String>,
) -> Result<DataType, SchemaError> {
    let bad = |message: String| SchemaError::Definition {
        kind: kind.to_string(),
        field: path.to_string(),
        message,
    };
    Ok(match ty {
        TypeSpec::Name(name) => match name.as_str() {
            "utf8" => DataType::Utf8,
            "binary" => DataType::Binary,
            "large_binary" => DataType::LargeBinary,
            "bool" => DataType::Boolean,
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            "uint32" => DataType::UInt32,
            "uint64" => DataType::UInt64,
            "float32" => DataType::Float32,
            "float64" => DataType::Float64,
            other => return Err(bad(format!("unknown type `{other}`"))),
        },
        TypeSpec::List {
            list,
            item_nullable,
        } => {
            let item = to_arrow_type(kind, &format!("{path}[]"), list, open_widths)?;
            DataType::List(Arc::new(Field::new("item", item, *item_nullable)))
        }
        TypeSpec::FixedSizeList {
            fixed_size_list,
            size,
        } => {
            let item = to_arrow_type(kind, &format!("{path}[]"), fixed_size_list, open_widths)?;
            let width = match size {
                Some(n) if *n > 0 => *n,
                Some(n) => {
                    return Err(bad(format!(
                        "fixed_size_list size must be positive, got {n}"
                    )))
                }
                None => {
                    open_widths.push(path.to_string());
                    1
                }
            };
            DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), width)
        }
        TypeSpec::Struct { fields } => {
            let children = fields
                .iter()
                .map(|f| to_arrow_field(kind, &format!("{path}."), f, open_widths))
                .collect::<Result<Vec<_>, _>>()?;
            DataType::Struct(Fields::from(children))
        }
    })
}

impl DatasetSchema {
    /// The Arrow schema to build batches with. Open fixed-size-list widths are given as 1; use
    /// [`DatasetSchema::arrow_with_width`] for kinds that have one.
    pub fn arrow(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// The Arrow schema with every open fixed-size-list width set to `width` (e.g. an embedding dimension).
    pub fn arrow_with_width(&self, width: i32) -> SchemaRef {
        let fields: Vec<Field> = self
            .arrow
            .fields()
            .iter()
            .map(|f| {
                let ty = set_open_width(f.data_type(), width);
                Field::new(f.name(), ty, f.is_nullable())
            })
            .collect();
        Arc::new(ArrowSchema::new(fields))
    }

    /// The one-line doc of a top-level field.
    pub fn field_doc(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.doc.as_str())
    }

    /// Checks a batch against this schema: names and order, types, and nulls in non-nullable columns
    /// (the data, not only the declared nullability, since builders often declare everything nullable).
    pub fn check(&self, batch: &RecordBatch) -> Result<(), SchemaError> {
        let mismatch = |problem: String| SchemaError::Mismatch {
            kind: self.kind.clone(),
            problem,
        };
        let expected = self.arrow.fields();
        let actual = batch.schema();
        let actual = actual.fields();
        for (i, want) in expected.iter().enumerate() {
            let Some(got) = actual.get(i) else {
                return Err(mismatch(format!("field `{}` is missing", want.name())));
            };
            if got.name() != want.name() {
                return Err(mismatch(
                    match actual.iter().position(|f| f.name() == want.name()) {
                        Some(at) => format!(
                            "field `{}` is at column {at}, expected at column {i}",
                            want.name()
                        ),
                        None => format!(
                            "field `{}` is missing (found `{}` in its place)",
                            want.name(),
                            got.name()
                        ),
                    },
                ));
            }
            self.check_type(want.name(), want.data_type(), got.data_type())
                .map_err(&mismatch)?;
            check_nulls(want.name(), want, batch.column(i).as_ref()).map_err(&mismatch)?;
        }
        if let Some(extra) = actual.get(expected.len()) {
            return Err(mismatch(format!("unexpected field `{}`", extra.name())));
        }
        Ok(())
    }

    fn check_type(&self, path: &str, want: &DataType, got: &DataType) -> Result<(), String> {
        let same = match (want, got) {
            (DataType::List(w), DataType::List(g)) => {
                return self.check_type(&format!("{path}[]"), w.data_type(), g.data_type());
            }
            (DataType::FixedSizeList(w, wn), DataType::FixedSizeList(g, gn)) => {
                if wn != gn && !self.open_widths.iter().any(|p| p == path) {
                    return Err(format!(
                        "field `{path}`: expected {wn} items per list, found {gn}"
                    ));
                }
                return self.check_type(&format!("{path}[]"), w.data_type(), g.data_type());
            }
            (DataType::Struct(w), DataType::Struct(g)) => {
                if w.len() != g.len() {
                    return Err(format!(
                        "field `{path}`: expected a struct of {} fields, found {}",
                        w.len(),
                        g.len()
                    ));
                }
                for (wf, gf) in w.iter().zip(g.iter()) {
                    let child = format!("{path}.{}", wf.name());
                    if wf.name() != gf.name() {
                        return Err(format!(
                            "field `{child}` is missing (found `{}`)",
                            gf.name()
                        ));
                    }
                    self.check_type(&child, wf.data_type(), gf.data_type())?;
                }
                return Ok(());
            }
            (w, g) => w == g,
        };
        if same {
            Ok(())
        } else {
            Err(format!("field `{path}`: expected type {want}, found {got}"))
        }
    }
}

fn set_open_width(ty: &DataType, width: i32) -> DataType {
    match ty {
        DataType::FixedSizeList(item, 1) => DataType::FixedSizeList(item.clone(), width),
        other => other.clone(),
    }
}

/// Nulls are checked recursively through structs and list items, since a null nested inside a list is as much
/// a broken contract as a null at the top.
fn check_nulls(path: &str, want: &Field, column: &dyn Array) -> Result<(), String> {
    if !want.is_nullable() && column.null_count() > 0 {
        return Err(format!(
            "field `{path}` is not nullable but has {} null(s)",
            column.null_count()
        ));
    }
    match (want.data_type(), column.data_type()) {
        (DataType::Struct(fields), DataType::Struct(_)) => {
            let array = column
                .as_any()
                .downcast_ref::<arrow::array::StructArray>()
                .ok_or_else(|| format!("field `{path}`: not a struct array"))?;
            for (i, field) in fields.iter().enumerate() {
                check_nulls(
                    &format!("{path}.{}", field.name()),
                    field,
                    array.column(i).as_ref(),
                )?;
            }
            Ok(())
        }
        (DataType::List(item), DataType::List(_)) => {
            let array = column
                .as_any()
                .downcast_ref::<arrow::array::ListArray>()
                .ok_or_else(|| format!("field `{path}`: not a list array"))?;
            check_nulls(&format!("{path}[]"), item, array.values().as_ref())
        }
        (DataType::FixedSizeList(item, _), DataType::FixedSizeList(..)) => {
            let array = column
                .as_any()
                .downcast_ref::<arrow::array::FixedSizeListArray>()
                .ok_or_else(|| format!("field `{path}`: not a fixed-size list array"))?;
            check_nulls(&format!("{path}[]"), item, array.values().as_ref())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    #[test]
    fn every_schema_file_parses_and_documents_every_field() {
        for kind in kinds() {
            let schema = get(kind).unwrap();
            assert!(!schema.doc.is_empty(), "{kind} has no doc");
            for field in &schema.fields {
                assert!(
                    !field.doc.trim().is_empty(),
                    "{kind}.{} has no doc",
                    field.name
                );
            }
        }
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert!(matches!(get("nope"), Err(SchemaError::UnknownKind(_))));
    }

    #[test]
    fn null_in_a_required_column_is_refused_by_name() {
        let schema = get("qrels").unwrap();
        let loose = Arc::new(ArrowSchema::new(vec![
            Field::new("qid", DataType::Utf8, true),
            Field::new("did", DataType::Utf8, true),
            Field::new("relevance", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            loose,
            vec![
                Arc::new(StringArray::from(vec![Some("q1"), Some("q2")])),
                Arc::new(StringArray::from(vec![Some("d1"), None])),
                Arc::new(arrow::array::Int32Array::from(vec![1, 1])),
            ],
        )
        .unwrap();
        let err = schema.check(&batch).unwrap_err().to_string();
        assert!(err.contains("field `did` is not nullable"), "{err}");
    }

    #[test]
    fn wrong_type_is_refused_by_name() {
        let schema = get("rejects").unwrap();
        let all_text: Vec<Field> = schema
            .arrow()
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect();
        let columns: Vec<Arc<dyn Array>> = all_text
            .iter()
            .map(|_| Arc::new(StringArray::from(vec!["7"])) as Arc<dyn Array>)
            .collect();
        let batch = RecordBatch::try_new(Arc::new(ArrowSchema::new(all_text)), columns).unwrap();
        let err = schema.check(&batch).unwrap_err().to_string();
        assert!(
            err.contains("field `line`: expected type UInt64, found Utf8"),
            "{err}"
        );
    }

    #[test]
    fn conforming_batch_passes() {
        let schema = get("qrels").unwrap();
        let batch = RecordBatch::try_new(
            schema.arrow(),
            vec![
                Arc::new(StringArray::from(vec!["q1"])),
                Arc::new(StringArray::from(vec!["d1"])),
                Arc::new(arrow::array::Int32Array::from(vec![2])),
            ],
        )
        .unwrap();
        schema.check(&batch).unwrap();
    }
}
