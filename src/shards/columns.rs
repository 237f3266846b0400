//! Typed access to the columns of a record batch, with an error naming the file and column instead of a panic
//! when a dataset is not what its kind promises.

use std::path::Path;

use arrow::array::{
    Array, BooleanArray, ListArray, RecordBatch, StringArray, StructArray, UInt64Array,
};

use super::ShardsError;

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
    expected: &str,
) -> Result<&'a T, ShardsError> {
    let bad = |problem: String| ShardsError::Column {
        path: path.to_path_buf(),
        column: name.to_string(),
        problem,
    };
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| bad("missing".into()))?;
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| bad(format!("expected {expected}, found {}", array.data_type())))
}

pub fn strings<'a>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
) -> Result<&'a StringArray, ShardsError> {
    column(batch, path, name, "utf8")
}

pub fn lists<'a>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
) -> Result<&'a ListArray, ShardsError> {
    column(batch, path, name, "a list")
}

pub fn u64s<'a>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
) -> Result<&'a UInt64Array, ShardsError> {
    column(batch, path, name, "uint64")
}

pub fn bools<'a>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
) -> Result<&'a BooleanArray, ShardsError> {
    column(batch, path, name, "bool")
}

/// The value at `row`, `None` when null.
pub fn optional(array: &StringArray, row: usize) -> Option<String> {
    (!array.is_null(row)).then(|| array.value(row).to_string())
}

/// The strings of list `row` of a `list<utf8>` column.
pub fn string_list(
    list: &ListArray,
    row: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<String>, ShardsError> {
    let values = list.value(row);
    let items = values
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| ShardsError::Column {
            path: path.to_path_buf(),
            column: name.to_string(),
            problem: format!("expected list<utf8>, found list<{}>", values.data_type()),
        })?;
    Ok(items.iter().flatten().map(str::to_string).collect())
}

/// The `did` field of every struct in list `row` of a `list<struct<did, ...>>` column.
pub fn struct_dids(
    list: &ListArray,
    row: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<String>, ShardsError> {
    let bad = |problem: String| ShardsError::Column {
        path: path.to_path_buf(),
        column: name.to_string(),
        problem,
    };
    let values = list.value(row);
    let structs = values
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| {
            bad(format!(
                "expected list<struct>, found list<{}>",
                values.data_type()
            ))
        })?;
    let dids = structs
        .column_by_name("did")
        .ok_or_else(|| bad("its structs have no `did` field".into()))?;
    let dids = dids
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| bad(format!("`did` must be utf8, found {}", dids.data_type())))?;
    Ok(dids.iter().flatten().map(str::to_string).collect())
}
