//! Typed columns of a record batch, by name, for readers whose inputs come from other stages: a column that is
//! missing or of another type is a message for the reader's own input error, never a panic.

use arrow::array::{Array, RecordBatch};

/// The column `name` of `batch` as the array type `A` (`ty` names it in the message), or the message
/// "no {ty} column `{name}`".
pub fn typed<'a, A: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    ty: &str,
) -> Result<&'a A, String> {
    batch
        .column_by_name(name)
        .and_then(|column| column.as_any().downcast_ref::<A>())
        .ok_or_else(|| format!("no {ty} column `{name}`"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, StringArray};

    use super::*;

    #[test]
    fn a_missing_or_mistyped_column_is_a_message_naming_it() {
        let batch = RecordBatch::try_from_iter([(
            "qid",
            Arc::new(StringArray::from(vec!["q1"])) as Arc<dyn Array>,
        )])
        .unwrap();
        assert_eq!(
            typed::<StringArray>(&batch, "qid", "utf8")
                .unwrap()
                .value(0),
            "q1"
        );
        assert_eq!(
            typed::<Int32Array>(&batch, "qid", "int32").unwrap_err(),
            "no int32 column `qid`"
        );
        assert_eq!(
            typed::<StringArray>(&batch, "did", "utf8").unwrap_err(),
            "no utf8 column `did`"
        );
    }
}
