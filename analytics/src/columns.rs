//! Typed access to the Arrow columns the analytics read, tolerant of the encodings other
//! writers use for the same logical type.
//!
//! The pipeline's own writer stores strings dictionary-encoded and timestamps in
//! milliseconds, but Firehose's record-format conversion (Glue schema) writes plain UTF-8
//! strings and may write timestamps at another unit (INT96 reads back as nanoseconds).
//! Accepting those here keeps the rollup working on files written by AWS as well as by
//! the local stack. Public for the other readers of telemetry files (the dashboard).

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

/// A column that is missing, of an unexpected type, or null where the contract says it
/// cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    /// The batch has no column of that name.
    #[error("column {0:?} is missing")]
    Missing(&'static str),
    /// The column exists with a type the reader does not accept.
    #[error("column {name:?} has type {found}, expected {expected}")]
    Type {
        /// Column name.
        name: &'static str,
        /// The type found, as Arrow prints it.
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A required column holds nulls.
    #[error("column {name:?} holds {nulls} null(s) but is required")]
    Nulls {
        /// Column name.
        name: &'static str,
        /// How many nulls.
        nulls: usize,
    },
}

/// The column `name` of `batch`, checked to hold no nulls.
pub fn required<'a>(
    batch: &'a RecordBatch,
    name: &'static str,
) -> Result<&'a ArrayRef, ColumnError> {
    let col = batch
        .column_by_name(name)
        .ok_or(ColumnError::Missing(name))?;
    let nulls = col.logical_null_count();
    if nulls > 0 {
        return Err(ColumnError::Nulls { name, nulls });
    }
    Ok(col)
}

fn type_error(name: &'static str, col: &ArrayRef, expected: &'static str) -> ColumnError {
    ColumnError::Type {
        name,
        found: col.data_type().to_string(),
        expected,
    }
}

/// A string column in any of Arrow's string encodings.
pub enum Strings<'a> {
    /// `Utf8`.
    Plain(&'a arrow_array::StringArray),
    /// `LargeUtf8`.
    Large(&'a arrow_array::LargeStringArray),
    /// `Utf8View`.
    View(&'a arrow_array::StringViewArray),
    /// A dictionary of strings: `keys[i]` indexes `values`.
    Dict {
        /// One dictionary index per row.
        keys: Vec<usize>,
        /// The distinct values.
        values: Box<Strings<'a>>,
        /// The dictionary's values array: the identity `DictMemo` keys on (the
        /// Parquet reader shares one dictionary between the batches of a column chunk).
        dict: &'a ArrayRef,
    },
}

/// Something computed once per distinct value of a dictionary column and reused for the
/// following batches that share the dictionary — a column chunk's dictionary page is
/// shared by every batch decoded from it, so a per-row question (which bucket is this
/// device in, which interned id is this name) costs one answer per distinct value per
/// chunk instead of one per row.
///
/// The memo keeps the dictionary alive, so its identity cannot be reused by another
/// allocation while the answers are kept.
#[derive(Debug)]
pub(crate) struct DictMemo<T> {
    dict: Option<ArrayRef>,
    answers: Vec<Option<T>>,
}

impl<T> Default for DictMemo<T> {
    fn default() -> Self {
        Self {
            dict: None,
            answers: Vec::new(),
        }
    }
}

impl<T: Copy> DictMemo<T> {
    /// One answer per row of `col`: for a dictionary column, `answer` runs at most once per
    /// distinct value of the dictionary (while it stays the same dictionary); otherwise
    /// once per run of equal neighbouring values (a message's readings, a device's batch,
    /// come in such runs).
    pub(crate) fn per_row(
        &mut self,
        col: &Strings<'_>,
        mut answer: impl FnMut(&str) -> T,
    ) -> Vec<T> {
        match col {
            Strings::Dict { keys, values, dict } => {
                if !self
                    .dict
                    .as_ref()
                    .is_some_and(|d| std::sync::Arc::ptr_eq(d, dict))
                {
                    self.dict = Some((*dict).clone());
                    self.answers.clear();
                    self.answers.resize(values.len(), None);
                }
                keys.iter()
                    .map(|&k| match self.answers.get_mut(k) {
                        Some(Some(a)) => *a,
                        Some(slot) => *slot.insert(answer(values.value(k))),
                        // Keys were normalised against this dictionary: unreachable.
                        None => answer(""),
                    })
                    .collect()
            }
            plain => {
                let mut last: Option<(&str, T)> = None;
                (0..plain.len())
                    .map(|i| {
                        let v = plain.value(i);
                        match last {
                            Some((l, a)) if l == v => a,
                            _ => {
                                let a = answer(v);
                                last = Some((v, a));
                                a
                            }
                        }
                    })
                    .collect()
            }
        }
    }
}

const STRING_TYPES: &str = "a string (Utf8, LargeUtf8, Utf8View or a dictionary of them)";

impl<'a> Strings<'a> {
    /// Views `col` (named `name`, for errors) as strings.
    pub fn new(name: &'static str, col: &'a ArrayRef) -> Result<Self, ColumnError> {
        Ok(match col.data_type() {
            DataType::Utf8 => Strings::Plain(col.as_string::<i32>()),
            DataType::LargeUtf8 => Strings::Large(col.as_string::<i64>()),
            DataType::Utf8View => Strings::View(col.as_string_view()),
            DataType::Dictionary(_, _) => {
                let dict = col
                    .as_any_dictionary_opt()
                    .ok_or_else(|| type_error(name, col, STRING_TYPES))?;
                let values = Strings::new(name, dict.values())?;
                // `normalized_keys` panics on an empty dictionary, which can only hold
                // rows that are all null — and nulls were rejected before.
                let keys = if dict.values().is_empty() {
                    Vec::new()
                } else {
                    dict.normalized_keys()
                };
                Strings::Dict {
                    keys,
                    values: Box::new(values),
                    dict: dict.values(),
                }
            }
            _ => return Err(type_error(name, col, STRING_TYPES)),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Strings::Plain(a) => a.len(),
            Strings::Large(a) => a.len(),
            Strings::View(a) => a.len(),
            Strings::Dict { keys, .. } => keys.len(),
        }
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string in row `i` (empty if `i` is out of range, which callers avoid by
    /// iterating over the batch's rows).
    pub fn value(&self, i: usize) -> &'a str {
        match self {
            Strings::Plain(a) => value_or_empty(*a, i),
            Strings::Large(a) => value_or_empty(*a, i),
            Strings::View(a) => {
                if i < a.len() {
                    a.value(i)
                } else {
                    ""
                }
            }
            Strings::Dict { keys, values, .. } => {
                keys.get(i).map(|&k| values.value(k)).unwrap_or_default()
            }
        }
    }
}

fn value_or_empty<O: arrow_array::OffsetSizeTrait>(
    a: &arrow_array::GenericStringArray<O>,
    i: usize,
) -> &str {
    if i < a.len() { a.value(i) } else { "" }
}

/// An `Int64` column.
pub fn int64<'a>(
    batch: &'a RecordBatch,
    name: &'static str,
) -> Result<&'a Int64Array, ColumnError> {
    let col = required(batch, name)?;
    col.as_primitive_opt::<Int64Type>()
        .ok_or_else(|| type_error(name, col, "Int64"))
}

/// A `Float64` column; `nullable` says whether nulls are allowed.
pub(crate) fn float64<'a>(
    batch: &'a RecordBatch,
    name: &'static str,
    nullable: bool,
) -> Result<&'a Float64Array, ColumnError> {
    let col = if nullable {
        batch
            .column_by_name(name)
            .ok_or(ColumnError::Missing(name))?
    } else {
        required(batch, name)?
    };
    col.as_primitive_opt::<Float64Type>()
        .ok_or_else(|| type_error(name, col, "Float64"))
}

/// A required `Binary` column.
pub(crate) fn binary<'a>(
    batch: &'a RecordBatch,
    name: &'static str,
) -> Result<&'a arrow_array::BinaryArray, ColumnError> {
    let col = required(batch, name)?;
    col.as_binary_opt::<i32>()
        .ok_or_else(|| type_error(name, col, "Binary"))
}

/// A required timestamp column of any unit, as epoch milliseconds (floored).
pub fn timestamps_ms(batch: &RecordBatch, name: &'static str) -> Result<Vec<i64>, ColumnError> {
    let col = required(batch, name)?;
    let expected = "a timestamp";
    let err = || type_error(name, col, expected);
    Ok(match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => col
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(err)?
            .values()
            .to_vec(),
        DataType::Timestamp(TimeUnit::Second, _) => col
            .as_primitive_opt::<TimestampSecondType>()
            .ok_or_else(err)?
            .values()
            .iter()
            .map(|s| s.saturating_mul(1000))
            .collect(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => col
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(err)?
            .values()
            .iter()
            .map(|us| us.div_euclid(1000))
            .collect(),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => col
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(err)?
            .values()
            .iter()
            .map(|ns| ns.div_euclid(1_000_000))
            .collect(),
        _ => return Err(err()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::StringDictionaryBuilder;
    use arrow_array::types::Int32Type;
    use arrow_array::{StringArray, TimestampNanosecondArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = cols
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            cols.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    #[test]
    fn plain_and_dictionary_strings_read_the_same() {
        let mut d = StringDictionaryBuilder::<Int32Type>::new();
        d.append_value("b");
        d.append_value("a");
        d.append_value("b");
        let b = batch(vec![
            ("d", Arc::new(d.finish()) as ArrayRef),
            ("p", Arc::new(StringArray::from(vec!["b", "a", "b"]))),
        ]);
        let dict = Strings::new("d", b.column(0)).unwrap();
        let plain = Strings::new("p", b.column(1)).unwrap();
        for i in 0..3 {
            assert_eq!(dict.value(i), plain.value(i));
        }
    }

    #[test]
    fn nanosecond_timestamps_become_milliseconds_and_nulls_are_refused() {
        let ns = TimestampNanosecondArray::from(vec![1_500_000, -1]);
        let b = batch(vec![("t", Arc::new(ns) as ArrayRef)]);
        assert_eq!(timestamps_ms(&b, "t").unwrap(), vec![1, -1]);

        let with_null = TimestampNanosecondArray::from(vec![Some(1), None]);
        let b = batch(vec![("t", Arc::new(with_null) as ArrayRef)]);
        assert_eq!(
            timestamps_ms(&b, "t").unwrap_err(),
            ColumnError::Nulls {
                name: "t",
                nulls: 1
            }
        );
        assert_eq!(
            timestamps_ms(&b, "x").unwrap_err(),
            ColumnError::Missing("x")
        );
    }
}
