//! Borrowed row-major f32 matrices: the embeddings as the embed stage hands them over, without a copy.

use super::error::MineError;

/// A row-major matrix of `rows x dim` f32 values borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    data: &'a [f32],
    dim: usize,
    what: &'static str,
}

impl<'a> Matrix<'a> {
    /// Views `data` as rows of `dim` values. `what` names the matrix in errors ("queries", "corpus").
    pub fn new(what: &'static str, data: &'a [f32], dim: usize) -> Result<Self, MineError> {
        if dim == 0 {
            return Err(MineError::ZeroDimension { what });
        }
        if data.len() % dim != 0 {
            return Err(MineError::Ragged {
                what,
                len: data.len(),
                dim,
            });
        }
        Ok(Self { data, dim, what })
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn what(&self) -> &'static str {
        self.what
    }

    /// All values, row after row.
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }

    /// Row `index`; panics when out of range, like slice indexing (indices come from this matrix's own range).
    pub fn row(&self, index: usize) -> &'a [f32] {
        &self.data[index * self.dim..(index + 1) * self.dim]
    }

    /// Rows `start..end` as a matrix of their own.
    pub fn rows_range(&self, start: usize, end: usize) -> Matrix<'a> {
        Matrix {
            data: &self.data[start * self.dim..end * self.dim],
            dim: self.dim,
            what: self.what,
        }
    }

    /// The largest absolute value, after checking that every value is finite. Together with the other side's
    /// bound this proves up front that no inner product can overflow, so scores are always finite and totally
    /// ordered.
    pub fn max_abs(&self) -> Result<f32, MineError> {
        // With the sign bit cleared, integer order is float order, and infinities and NaNs sit above every finite
        // value: one integer max (which vectorises) both bounds the values and detects bad ones.
        const INFINITY_BITS: u32 = 0x7f80_0000;
        let max_bits = self
            .data
            .iter()
            .fold(0u32, |max, value| max.max(value.to_bits() & 0x7fff_ffff));
        if max_bits < INFINITY_BITS {
            return Ok(f32::from_bits(max_bits));
        }
        let index = self
            .data
            .iter()
            .position(|value| !value.is_finite())
            .unwrap_or_default();
        Err(MineError::NonFinite {
            what: self.what,
            row: index / self.dim,
            column: index % self.dim,
            value: self.data[index],
        })
    }
}

/// Fails when `dim` products of values bounded by the two maxima could overflow f32 (the partial sums of an inner
/// product are bounded by `dim x max_q x max_d`, with headroom for rounding).
pub(crate) fn check_score_range(
    query_max_abs: f32,
    document_max_abs: f32,
    dim: usize,
) -> Result<(), MineError> {
    let bound = f64::from(query_max_abs) * f64::from(document_max_abs) * dim as f64;
    if bound > f64::from(f32::MAX) / 4.0 {
        return Err(MineError::ScoreOverflow {
            query_max_abs,
            document_max_abs,
            dim,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_bounds_values_and_locates_the_first_bad_one() {
        let values = [0.5f32, -3.0, 2.0, -0.0, 1e-40];
        assert_eq!(Matrix::new("m", &values, 5).unwrap().max_abs(), Ok(3.0));
        assert_eq!(Matrix::new("m", &[], 3).unwrap().max_abs(), Ok(0.0));
        for (bad, row, column) in [(f32::NEG_INFINITY, 1, 0), (f32::NAN, 0, 2)] {
            let mut values = [1.0f32; 6];
            values[row * 3 + column] = bad;
            values[5] = f32::INFINITY;
            let error = Matrix::new("m", &values, 3).unwrap().max_abs().unwrap_err();
            assert!(
                matches!(error, MineError::NonFinite { what: "m", row: r, column: c, .. } if r == row && c == column),
                "{error}"
            );
        }
    }

    #[test]
    fn overflow_bound() {
        assert!(check_score_range(1.0, 1.0, 4096).is_ok());
        assert!(check_score_range(1e18, 1e18, 1024).is_err());
    }
}
