use crate::model_ops::common::{assert_close, assert_gradients, project, uniform};
use candle_core::{DType, Device, Tensor};
use umrank::models::layers::attention::{scaled_dot_product_attention, AttentionKernel};
use umrank::models::layers::mask::AttentionMask;
use umrank::models::layers::packed::PackedAttention;

/// `(total, heads, dim)` to `(1, heads, len, dim)` for tokens `start..start + len`.
fn sequence(xs: &Tensor, start: usize, len: usize) -> Tensor {
    xs.narrow(0, start, len)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

#[test]
fn packed_attention_equals_each_sequence_alone() {
    let cu_seqlens = [0, 3, 4, 4, 9, 11];
    let (q, k, v) = (
        uniform(100, (11, 4, 8), DType::F32),
        uniform(101, (11, 2, 8), DType::F32),
        uniform(102, (11, 2, 8), DType::F32),
    );
    for (causal, kernel) in [false, true].into_iter().flat_map(|c| {
        [
            (c, AttentionKernel::Reference),
            (c, AttentionKernel::Blocked),
        ]
    }) {
        let packed = PackedAttention::new(&cu_seqlens, causal, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(packed.total_tokens(), 11);
        let out = packed.forward(&q, &k, &v, 0.35, kernel).unwrap();
        assert_eq!(out.dims(), &[11, 4, 8]);
        for w in cu_seqlens.windows(2).filter(|w| w[1] > w[0]) {
            let (start, len) = (w[0], w[1] - w[0]);
            let mask = AttentionMask::causal(len, len, DType::F32, &Device::Cpu).unwrap();
            let alone = scaled_dot_product_attention(
                &sequence(&q, start, len),
                &sequence(&k, start, len),
                &sequence(&v, start, len),
                causal.then_some(&mask),
                0.35,
            )
            .unwrap();
            assert_close(
                &sequence(&out, start, len),
                &alone,
                1e-6,
                &format!("{kernel:?} causal {causal} at {start}"),
            );
        }
    }
}

#[test]
fn packed_gradients_match_finite_differences() {
    for causal in [false, true] {
        let packed = PackedAttention::new(&[0, 2, 5, 6], causal, DType::F64, &Device::Cpu).unwrap();
        let q = uniform(103, (6, 2, 4), DType::F64);
        let k = uniform(104, (6, 1, 4), DType::F64);
        let v = uniform(105, (6, 1, 4), DType::F64);
        assert_gradients(
            &format!("packed causal {causal}"),
            |t| {
                project(
                    &packed.forward(&t[0], &t[1], &t[2], 0.5, AttentionKernel::Reference)?,
                    106,
                )
            },
            &[q, k, v],
        );
    }
}

#[test]
fn invalid_cu_seqlens_are_clear_errors() {
    let device = Device::Cpu;
    for (cu_seqlens, reason) in [
        (&[][..], "empty"),
        (&[1, 3][..], "start at 0"),
        (&[0, 3, 2][..], "must not decrease"),
        (&[0, 0][..], "no tokens"),
    ] {
        let err = PackedAttention::new(cu_seqlens, true, DType::F32, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{cu_seqlens:?}: {err}");
    }
    let packed = PackedAttention::new(&[0, 2, 5], true, DType::F32, &device).unwrap();
    let xs = uniform(107, (4, 1, 4), DType::F32);
    for kernel in [AttentionKernel::Reference, AttentionKernel::Blocked] {
        let err = packed
            .forward(&xs, &xs, &xs, 1.0, kernel)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4 tokens") && err.contains("describes 5"),
            "{kernel:?}: {err}"
        );
    }
}
