use crate::model_ops::common::{assert_close, assert_gradients, project, uniform};
use candle_core::{DType, Device, Tensor};
use umrank::models::layers::attention::scaled_dot_product_attention;
use umrank::models::layers::mask::AttentionMask;

/// An independent attention: keys and values copied per query head, the mask written element by element on the
/// host from `allowed(batch, query, key)`, candle-nn's fused softmax.
pub fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> Tensor {
    let (batch, heads, q_len, head_dim) = q.dims4().unwrap();
    let (_, kv_heads, kv_len, _) = k.dims4().unwrap();
    let group = heads / kv_heads;
    let head_map: Vec<u32> = (0..heads).map(|h| (h / group) as u32).collect();
    let head_map = Tensor::new(head_map, &Device::Cpu).unwrap();
    let k = k.index_select(&head_map, 1).unwrap();
    let v = v.index_select(&head_map, 1).unwrap();
    let mut bias = Vec::with_capacity(batch * q_len * kv_len);
    for b in 0..batch {
        for i in 0..q_len {
            for j in 0..kv_len {
                bias.push(if allowed(b, i, j) { 0.0 } else { -1e30 });
            }
        }
    }
    let bias = Tensor::from_vec(bias, (batch, 1, q_len, kv_len), &Device::Cpu)
        .unwrap()
        .to_dtype(q.dtype())
        .unwrap();
    let scores = (q.matmul(&k.t().unwrap()).unwrap() / (head_dim as f64).sqrt()).unwrap();
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&bias).unwrap()).unwrap();
    probs.matmul(&v).unwrap()
}

fn scale(head_dim: usize) -> f64 {
    1.0 / (head_dim as f64).sqrt()
}

fn key_valid(rows: &[&[u32]]) -> Tensor {
    Tensor::new(
        rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn grouped_query_causal_attention_matches_naive() {
    let q = uniform(70, (2, 6, 5, 8), DType::F32);
    let k = uniform(71, (2, 2, 5, 8), DType::F32);
    let v = uniform(72, (2, 2, 5, 8), DType::F32);
    let mask = AttentionMask::causal(5, 5, DType::F32, &Device::Cpu).unwrap();
    let ours = scaled_dot_product_attention(&q, &k, &v, Some(&mask), scale(8)).unwrap();
    let naive = naive_attention(&q, &k, &v, |_, i, j| j <= i);
    assert_close(&ours, &naive, 1e-5, "gqa causal");

    let unmasked = scaled_dot_product_attention(&q, &k, &v, None, scale(8)).unwrap();
    assert_close(
        &unmasked,
        &naive_attention(&q, &k, &v, |_, _, _| true),
        1e-5,
        "gqa full",
    );
}

/// Queries that are the last positions after a prefix see the whole prefix: the result equals the last rows of
/// causal attention over prefix + queries.
#[test]
fn causal_queries_after_a_prefix_match_the_tail_of_full_attention() {
    let q = uniform(73, (1, 4, 7, 8), DType::F32);
    let k = uniform(74, (1, 2, 7, 8), DType::F32);
    let v = uniform(75, (1, 2, 7, 8), DType::F32);
    let full_mask = AttentionMask::causal(7, 7, DType::F32, &Device::Cpu).unwrap();
    let full = scaled_dot_product_attention(&q, &k, &v, Some(&full_mask), scale(8)).unwrap();
    let tail_q = q.narrow(2, 4, 3).unwrap();
    let tail_mask = AttentionMask::causal(3, 7, DType::F32, &Device::Cpu).unwrap();
    let tail = scaled_dot_product_attention(&tail_q, &k, &v, Some(&tail_mask), scale(8)).unwrap();
    assert_close(&tail, &full.narrow(2, 4, 3).unwrap(), 1e-6, "prefix");
}

/// A padded batch gives, on the real tokens, what each sequence gives alone, for left and right padding, causal
/// or not. Row 0 holds 3 real tokens, row 1 holds 5.
#[test]
fn padded_attention_equals_per_sequence_attention() {
    let (len, real) = (5, [3usize, 5]);
    for left in [false, true] {
        for causal in [false, true] {
            let q = uniform(76, (2, 4, len, 8), DType::F32);
            let k = uniform(77, (2, 2, len, 8), DType::F32);
            let v = uniform(78, (2, 2, len, 8), DType::F32);
            let valid = if left {
                key_valid(&[&[0, 0, 1, 1, 1], &[1, 1, 1, 1, 1]])
            } else {
                key_valid(&[&[1, 1, 1, 0, 0], &[1, 1, 1, 1, 1]])
            };
            let mask = if causal {
                AttentionMask::causal_key_padding(&valid, len, DType::F32).unwrap()
            } else {
                AttentionMask::key_padding(&valid, DType::F32).unwrap()
            };
            let padded = scaled_dot_product_attention(&q, &k, &v, Some(&mask), scale(8)).unwrap();
            assert!(padded
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|x| x.is_finite()));
            for (b, &n) in real.iter().enumerate() {
                let start = if left { len - n } else { 0 };
                let take = |t: &Tensor| t.narrow(0, b, 1).unwrap().narrow(2, start, n).unwrap();
                let alone_mask = AttentionMask::causal(n, n, DType::F32, &Device::Cpu).unwrap();
                let alone = scaled_dot_product_attention(
                    &take(&q),
                    &take(&k),
                    &take(&v),
                    causal.then_some(&alone_mask),
                    scale(8),
                )
                .unwrap();
                assert_close(
                    &take(&padded),
                    &alone,
                    1e-6,
                    &format!("left {left} causal {causal} row {b}"),
                );
            }
        }
    }
}

#[test]
fn half_precision_attention_stays_close_to_f32() {
    let q = uniform(79, (1, 4, 6, 16), DType::F32);
    let k = uniform(80, (1, 2, 6, 16), DType::F32);
    let v = uniform(81, (1, 2, 6, 16), DType::F32);
    let mask = AttentionMask::causal(6, 6, DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(mask.bias().unwrap().dtype(), DType::F32);
    let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let out = scaled_dot_product_attention(&half(&q), &half(&k), &half(&v), Some(&mask), scale(16))
        .unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let reference = scaled_dot_product_attention(&q, &k, &v, Some(&mask), scale(16)).unwrap();
    assert_close(&out, &reference, 0.05, "bf16 attention");
}

#[test]
fn gqa_causal_gradient_matches_finite_differences() {
    let q = uniform(82, (2, 4, 3, 4), DType::F64);
    let k = uniform(83, (2, 2, 3, 4), DType::F64);
    let v = uniform(84, (2, 2, 3, 4), DType::F64);
    let mask = AttentionMask::causal(3, 3, DType::F64, &Device::Cpu).unwrap();
    assert_gradients(
        "gqa causal",
        |t| {
            project(
                &scaled_dot_product_attention(&t[0], &t[1], &t[2], Some(&mask), 0.5)?,
                85,
            )
        },
        &[q, k, v],
    );
}

#[test]
fn padded_gradients_match_finite_differences() {
    let valid = key_valid(&[&[0, 1, 1, 1], &[1, 1, 1, 0]]);
    let masks = [
        AttentionMask::key_padding(&valid, DType::F64).unwrap(),
        AttentionMask::causal_key_padding(&valid, 4, DType::F64).unwrap(),
    ];
    for mask in &masks {
        let q = uniform(86, (2, 2, 4, 4), DType::F64);
        let k = uniform(87, (2, 1, 4, 4), DType::F64);
        let v = uniform(88, (2, 1, 4, 4), DType::F64);
        assert_gradients(
            "padded attention",
            |t| {
                project(
                    &scaled_dot_product_attention(&t[0], &t[1], &t[2], Some(mask), 0.5)?,
                    89,
                )
            },
            &[q, k, v],
        );
    }
}

#[test]
fn prefix_causal_gradient_matches_finite_differences() {
    let q = uniform(90, (1, 2, 2, 4), DType::F64);
    let k = uniform(91, (1, 2, 5, 4), DType::F64);
    let v = uniform(92, (1, 2, 5, 4), DType::F64);
    let mask = AttentionMask::causal(2, 5, DType::F64, &Device::Cpu).unwrap();
    assert_gradients(
        "prefix causal",
        |t| {
            project(
                &scaled_dot_product_attention(&t[0], &t[1], &t[2], Some(&mask), 0.5)?,
                93,
            )
        },
        &[q, k, v],
    );
}

#[test]
fn inconsistent_shapes_are_clear_errors() {
    let device = Device::Cpu;
    let q = uniform(94, (1, 3, 4, 8), DType::F32);
    let k = uniform(95, (1, 2, 4, 8), DType::F32);
    let err = scaled_dot_product_attention(&q, &k, &k, None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 query heads") && err.contains("2 key/value heads"),
        "{err}"
    );

    let q = uniform(96, (1, 2, 4, 8), DType::F32);
    let mask = AttentionMask::causal(5, 5, DType::F32, &device).unwrap();
    let err = scaled_dot_product_attention(&q, &k, &k, Some(&mask), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not broadcast"), "{err}");

    let short_v = uniform(97, (1, 2, 3, 8), DType::F32);
    assert!(scaled_dot_product_attention(&q, &k, &short_v, None, 1.0).is_err());
    assert!(AttentionMask::causal(6, 5, DType::F32, &device).is_err());
    let err = AttentionMask::key_padding(&key_valid(&[&[1, 1]]).flatten_all().unwrap(), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(batch, kv_len)"), "{err}");
}

#[test]
fn mask_values_are_zero_or_the_most_negative_finite_value() {
    let device = Device::Cpu;
    let m = f32::MIN;
    let rows = |mask: AttentionMask| {
        mask.bias()
            .unwrap()
            .flatten_to(2)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };

    let causal = AttentionMask::causal(2, 3, DType::F32, &device).unwrap();
    assert_eq!(causal.bias().unwrap().dims(), &[1, 1, 2, 3]);
    assert_eq!(rows(causal), [[0.0, 0.0, m], [0.0, 0.0, 0.0]]);

    let padding = AttentionMask::key_padding(&key_valid(&[&[1, 0, 1]]), DType::BF16).unwrap();
    assert_eq!(padding.bias().unwrap().dims(), &[1, 1, 1, 3]);
    assert_eq!(rows(padding), [[0.0, m, 0.0]]);

    // Query 0 is left padding and may see no real key: it is let attend everywhere rather than nowhere.
    let both = AttentionMask::causal_key_padding(&key_valid(&[&[0, 1, 1]]), 3, DType::F32).unwrap();
    assert_eq!(rows(both), [[0.0, 0.0, 0.0], [m, 0.0, m], [m, 0.0, 0.0]]);

    let f64_mask = AttentionMask::causal(2, 2, DType::F64, &device).unwrap();
    let values = f64_mask
        .bias()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert_eq!(values, [0.0, f64::MIN, 0.0, 0.0]);
}
