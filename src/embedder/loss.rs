//! CLIP's symmetric contrastive loss over in-batch negatives.
//!
//! With `B` pairs, logits `L = exp(s) Q Dᵀ` (`s` the learned log-scale, capped at ln 100 as CLIP caps it), the
//! loss is the mean of the row-wise cross-entropy (each query must pick its document) and the column-wise one
//! (each document must pick its query). Its gradient in the logits is
//! `(softmax_rows(L) - I) / 2B + (softmax_cols(L) - I) / 2B`.
//!
//! Two pairs of a batch can share a query (one image, two relevant captions) or a document; the other's item is
//! then no negative, and its logit is masked out of both cross-entropies instead of being pushed down.

use candle_core::{DType, Result, Tensor, D};

/// The largest logit scale, as in CLIP: beyond it training becomes unstable.
const MAX_LOGIT_SCALE: f64 = 100.0;

/// Masked logits sit this far below the rest: `exp` of it is exactly zero in f32.
const MASKED: f32 = -1e9;

/// The symmetric InfoNCE loss of row-normalised query and document embeddings `(B, P)`. `same[i * B + j]` says
/// that pair `j`'s query or document is the same record as pair `i`'s (ignored on the diagonal).
pub fn symmetric_info_nce(
    queries: &Tensor,
    docs: &Tensor,
    log_scale: &Tensor,
    same: &[bool],
) -> Result<Tensor> {
    let batch = queries.dim(0)?;
    if same.len() != batch * batch {
        candle_core::bail!(
            "the duplicate mask has {} entries for a batch of {batch}",
            same.len()
        )
    }
    let scale = log_scale.exp()?.minimum(MAX_LOGIT_SCALE)?;
    let logits = queries.matmul(&docs.t()?)?.broadcast_mul(&scale)?;
    let mask: Vec<f32> = (0..batch * batch)
        .map(|k| match same[k] && k / batch != k % batch {
            true => MASKED,
            false => 0.0,
        })
        .collect();
    let mask =
        Tensor::from_vec(mask, (batch, batch), queries.device())?.to_dtype(logits.dtype())?;
    let logits = (logits + mask)?;
    let rows = cross_entropy_on_diagonal(&logits)?;
    let cols = cross_entropy_on_diagonal(&logits.t()?)?;
    (rows + cols)? / 2.0
}

/// Mean over rows of `logsumexp(row) - row[i]` for row `i`: the cross-entropy of targets on the diagonal.
fn cross_entropy_on_diagonal(logits: &Tensor) -> Result<Tensor> {
    let batch = logits.dim(0)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let log_sum_exp = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .add(&max)?;
    let eye = Tensor::eye(batch, DType::F32, logits.device())?.to_dtype(logits.dtype())?;
    let diagonal = (logits * eye)?.sum_keepdim(D::Minus1)?;
    (log_sum_exp - diagonal)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn closed_form(logits: &[Vec<f64>]) -> (f64, Vec<Vec<f64>>) {
        let b = logits.len();
        let softmax = |v: Vec<f64>| {
            let m = v.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect::<Vec<_>>()
        };
        let rows: Vec<Vec<f64>> = (0..b).map(|i| softmax(logits[i].clone())).collect();
        let cols: Vec<Vec<f64>> = (0..b)
            .map(|j| softmax((0..b).map(|i| logits[i][j]).collect()))
            .collect();
        let loss = (0..b)
            .map(|i| -rows[i][i].ln() - cols[i][i].ln())
            .sum::<f64>()
            / (2.0 * b as f64);
        let grad = (0..b)
            .map(|i| {
                (0..b)
                    .map(|j| {
                        let eye = if i == j { 1.0 } else { 0.0 };
                        (rows[i][j] - eye + cols[j][i] - eye) / (2.0 * b as f64)
                    })
                    .collect()
            })
            .collect();
        (loss, grad)
    }

    #[test]
    fn loss_and_gradient_match_the_closed_form() {
        let device = Device::Cpu;
        let q: Vec<f32> = vec![0.6, 0.8, 0.0, 1.0, -0.28, 0.96];
        let d: Vec<f32> = vec![1.0, 0.0, 0.6, -0.8, 0.0, 1.0];
        let queries = Var::from_vec(q.clone(), (3, 2), &device).unwrap();
        let docs = Tensor::from_vec(d.clone(), (3, 2), &device).unwrap();
        let log_scale = Tensor::new(2.0f32.ln(), &device).unwrap();
        let loss = symmetric_info_nce(queries.as_tensor(), &docs, &log_scale, &[false; 9]).unwrap();
        let logits: Vec<Vec<f64>> = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| 2.0 * (q[2 * i] * d[2 * j] + q[2 * i + 1] * d[2 * j + 1]) as f64)
                    .collect()
            })
            .collect();
        let (expected, dlogits) = closed_form(&logits);
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - expected).abs() < 1e-6);
        // dL/dq_i = sum_j dL/dlogit_ij * 2 * d_j
        let grad = loss.backward().unwrap();
        let got = grad.get(&queries).unwrap().to_vec2::<f32>().unwrap();
        for i in 0..3 {
            for k in 0..2 {
                let want: f64 = (0..3)
                    .map(|j| dlogits[i][j] * 2.0 * d[2 * j + k] as f64)
                    .sum();
                assert!((got[i][k] as f64 - want).abs() < 1e-6, "{i} {k}");
            }
        }
    }

    #[test]
    fn a_duplicate_is_no_negative() {
        let device = Device::Cpu;
        // Pairs 0 and 1 share their document: with the mask, the loss is that of two single-pair problems.
        let queries = Tensor::new(&[[1.0f32, 0.0], [1.0, 0.0]], &device).unwrap();
        let docs = Tensor::new(&[[1.0f32, 0.0], [1.0, 0.0]], &device).unwrap();
        let log_scale = Tensor::new(0f32, &device).unwrap();
        let masked = symmetric_info_nce(&queries, &docs, &log_scale, &[true; 4]).unwrap();
        assert!(masked.to_scalar::<f32>().unwrap().abs() < 1e-6);
        let unmasked = symmetric_info_nce(&queries, &docs, &log_scale, &[false; 4]).unwrap();
        assert!((unmasked.to_scalar::<f32>().unwrap() - 2f32.ln()).abs() < 1e-6);
    }
}
