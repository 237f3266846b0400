//! Blocked attention against the reference attention: outputs and the gradients of q, k and v, for every mask
//! layout umrank uses, grouped and plain heads, lengths that are not multiples of the tile sizes, fully masked rows
//! and batches of several rows. Both implementations are checked: the CPU's slice kernels and the tensor-op tiles
//! that run on a GPU (here on candle's CPU backend, the same code).
//!
//! The gradients come from candle's autograd on both sides (the reference through its differentiable ops, the
//! blocked op through its own backward) of `sum(out * r)` for a fixed random `r`.

use crate::model_ops::common::{max_abs_diff, uniform};
use candle_core::{DType, Device, Result, Tensor, Var};
use umrank::models::layers::attention::{attention, scaled_dot_product_attention, AttentionKernel};
use umrank::models::layers::blocked_attention::{
    blocked_attention, blocked_attention_with, device_block_sizes, tiled_attention_with, BlockSizes,
};
use umrank::models::layers::key_spans::{KeySpans, Span};
use umrank::models::layers::mask::AttentionMask;
use umrank::models::layers::packed::PackedAttention;
use umrank::models::layers::shared_prefix::{PrefixGroup, SharedPrefixAttention};

/// How close two results must be.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// Largest absolute difference.
    Absolute(f64),
    /// Largest absolute difference relative to the reference's largest magnitude (at least 1): bf16 carries 8
    /// bits, so one rounding step of a gradient entry near 8 is already 0.03.
    Scaled(f64),
}

impl Bound {
    fn limit(self, reference: &Tensor) -> f64 {
        match self {
            Self::Absolute(limit) => limit,
            Self::Scaled(limit) => limit * max_abs(reference).max(1.0),
        }
    }
}

const F32_TOLERANCE: Bound = Bound::Absolute(1e-5);
const BF16_TOLERANCE: Bound = Bound::Scaled(2e-2);

/// Tile sizes that cross many tile borders on tiny inputs, with neither dividing the test lengths.
const SMALL: BlockSizes = BlockSizes {
    queries: 4,
    keys: 3,
};

/// `(batch, heads, kv_heads, q_len, kv_len, head_dim)`.
type Dims = (usize, usize, usize, usize, usize, usize);

fn inputs(
    seed: u64,
    (batch, heads, kv_heads, q_len, kv_len, dim): Dims,
    dtype: DType,
) -> [Tensor; 3] {
    [
        uniform(seed, (batch, heads, q_len, dim), dtype),
        uniform(seed + 1, (batch, kv_heads, kv_len, dim), dtype),
        uniform(seed + 2, (batch, kv_heads, kv_len, dim), dtype),
    ]
}

/// The output of `f` and the gradients of `sum(out * r)` with respect to each input.
fn output_and_grads(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    inputs: &[Tensor; 3],
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let out = f(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
    )
    .unwrap();
    let weights = uniform(999, out.shape().clone(), DType::F32);
    let loss = out
        .to_dtype(DType::F32)
        .and_then(|out| out.mul(&weights))
        .and_then(|product| product.sum_all())
        .unwrap();
    let grads = loss.backward().unwrap();
    let grads = vars
        .iter()
        .map(|var| {
            grads
                .get(var.as_tensor())
                .expect("gradient reaches the input")
                .clone()
        })
        .collect();
    (out, grads)
}

fn max_abs(t: &Tensor) -> f64 {
    max_abs_diff(t, &t.zeros_like().unwrap())
}

/// Asserts that `blocked` equals `reference` in output and in the three gradients within `bound`; returns the
/// largest difference seen.
fn assert_same(
    what: &str,
    inputs: &[Tensor; 3],
    blocked: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    reference: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    bound: Bound,
) -> f64 {
    let (out, grads) = output_and_grads(blocked, inputs);
    let (want, want_grads) = output_and_grads(reference, inputs);
    assert_eq!(out.dtype(), want.dtype(), "{what}: output dtype");
    let mut worst = 0f64;
    for (name, got, want) in [("out", &out, &want)].into_iter().chain(
        ["dq", "dk", "dv"]
            .into_iter()
            .zip(&grads)
            .zip(&want_grads)
            .map(|((n, g), w)| (n, g, w)),
    ) {
        assert_eq!(got.dtype(), want.dtype(), "{what}: {name} dtype");
        let (diff, limit) = (max_abs_diff(got, want), bound.limit(want));
        assert!(
            diff <= limit,
            "{what}: {name} max abs diff {diff:e} > {limit:e}"
        );
        worst = worst.max(diff);
    }
    eprintln!("{what}: max abs diff {worst:e}");
    worst
}

/// Checks both blocked implementations against reference attention under `mask`, with the small tiles and the
/// default ones.
fn check_mask(what: &str, dims: Dims, mask: Option<&AttentionMask>, scale: f64) {
    let (batch, heads, _, q_len, kv_len, _) = dims;
    let spans = mask.map(|m| m.key_spans(batch, q_len, kv_len).unwrap().clone());
    let reference =
        |q: &Tensor, k: &Tensor, v: &Tensor| scaled_dot_product_attention(q, k, v, mask, scale);
    let qkv = inputs(10, dims, DType::F32);
    for blocks in [SMALL, BlockSizes::default()] {
        assert_same(
            &format!("{what} slices {blocks:?}"),
            &qkv,
            |q, k, v| blocked_attention_with(q, k, v, spans.as_ref(), scale, blocks),
            reference,
            F32_TOLERANCE,
        );
    }
    for blocks in [SMALL, device_block_sizes(batch, heads)] {
        assert_same(
            &format!("{what} tensor tiles {blocks:?}"),
            &qkv,
            |q, k, v| tiled_attention_with(q, k, v, spans.as_ref(), scale, blocks),
            reference,
            F32_TOLERANCE,
        );
    }
}

/// The blocked kernels the layouts below are checked on.
const BLOCKED: [AttentionKernel; 2] = [AttentionKernel::Blocked, AttentionKernel::Tiled];

fn key_valid(rows: &[&[u32]]) -> Tensor {
    Tensor::new(
        rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn unmasked_attention_matches_the_reference() {
    check_mask("gqa none", (2, 6, 2, 11, 13, 8), None, 0.3);
    check_mask("mha none", (1, 3, 3, 7, 5, 16), None, 0.25);
}

#[test]
fn causal_attention_matches_the_reference() {
    for (what, dims) in [
        ("gqa causal", (2, 4, 2, 10, 10, 8)),
        ("mha causal", (1, 2, 2, 9, 9, 4)),
        ("gqa causal after a prefix", (2, 4, 1, 7, 12, 8)),
    ] {
        let (_, _, _, q_len, kv_len, dim) = dims;
        let mask = AttentionMask::causal(q_len, kv_len, DType::F32, &Device::Cpu).unwrap();
        check_mask(what, dims, Some(&mask), 1.0 / (dim as f64).sqrt());
    }
}

/// Left padding, right padding and a row that is all padding (every query of it attends to every key).
#[test]
fn key_padding_matches_the_reference() {
    let valid = key_valid(&[
        &[0, 0, 1, 1, 1, 1, 1],
        &[1, 1, 1, 1, 0, 0, 0],
        &[0, 0, 0, 0, 0, 0, 0],
    ]);
    let mask = AttentionMask::key_padding(&valid, DType::F32).unwrap();
    check_mask("gqa key padding", (3, 4, 2, 5, 7, 8), Some(&mask), 0.35);
    check_mask("mha key padding", (3, 2, 2, 7, 7, 8), Some(&mask), 0.35);
}

/// Under left padding the first queries see no real key: they attend to every key, as in the reference.
#[test]
fn causal_key_padding_with_fully_masked_rows_matches_the_reference() {
    let valid = key_valid(&[&[0, 0, 0, 1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1, 0, 0, 0]]);
    let mask = AttentionMask::causal_key_padding(&valid, 9, DType::F32).unwrap();
    check_mask(
        "gqa causal key padding",
        (2, 6, 3, 9, 9, 8),
        Some(&mask),
        0.35,
    );
    check_mask(
        "mha causal key padding",
        (2, 2, 2, 9, 9, 4),
        Some(&mask),
        0.5,
    );
}

#[test]
fn causal_after_context_matches_the_reference() {
    let context = Tensor::new(&[4u32, 0, 2], &Device::Cpu).unwrap();
    let last = Tensor::new(&[2u32, 4, 0], &Device::Cpu).unwrap();
    let mask = AttentionMask::causal_after_context(&context, &last, 5, 9, DType::F32).unwrap();
    check_mask(
        "gqa causal after context",
        (3, 4, 2, 5, 9, 8),
        Some(&mask),
        0.35,
    );
    check_mask(
        "mha causal after context",
        (3, 2, 2, 5, 9, 8),
        Some(&mask),
        0.35,
    );
}

/// `(total, heads, dim)` inputs for the one-row layouts.
fn row_inputs(
    seed: u64,
    total: usize,
    heads: usize,
    kv_heads: usize,
    dim: usize,
    dtype: DType,
) -> [Tensor; 3] {
    [
        uniform(seed, (total, heads, dim), dtype),
        uniform(seed + 1, (total, kv_heads, dim), dtype),
        uniform(seed + 2, (total, kv_heads, dim), dtype),
    ]
}

/// Packed rows on the blocked kernel (spans over the row) against the reference's padded gather.
#[test]
fn packed_rows_match_the_reference() {
    let cu_seqlens = [0, 3, 4, 4, 9, 15, 23];
    for causal in [false, true] {
        let packed = PackedAttention::new(&cu_seqlens, causal, DType::F32, &Device::Cpu).unwrap();
        for ((heads, kv_heads), kernel) in [(4, 2), (3, 3)]
            .into_iter()
            .flat_map(|h| BLOCKED.map(|k| (h, k)))
        {
            assert_same(
                &format!("packed causal {causal} heads {heads}/{kv_heads} {kernel:?}"),
                &row_inputs(20, 23, heads, kv_heads, 8, DType::F32),
                |q, k, v| packed.forward(q, k, v, 0.35, kernel),
                |q, k, v| packed.forward(q, k, v, 0.35, AttentionKernel::Reference),
                F32_TOLERANCE,
            );
        }
    }
}

/// Shared prefixes on the blocked kernel (two spans per suffix token) against the reference's padded blocks,
/// including a group without a prefix.
#[test]
fn shared_prefix_rows_match_the_reference() {
    let groups = [
        PrefixGroup {
            prefix: 0..5,
            suffixes: vec![5..8, 8..9, 9..15],
        },
        PrefixGroup {
            prefix: 15..15,
            suffixes: vec![15..17, 17..19],
        },
        PrefixGroup {
            prefix: 19..26,
            suffixes: vec![26..28, 28..33],
        },
    ];
    let shared = SharedPrefixAttention::new(&groups, DType::F32, &Device::Cpu).unwrap();
    for ((heads, kv_heads), kernel) in [(6, 2), (2, 2)]
        .into_iter()
        .flat_map(|h| BLOCKED.map(|k| (h, k)))
    {
        assert_same(
            &format!("shared prefix heads {heads}/{kv_heads} {kernel:?}"),
            &row_inputs(30, 33, heads, kv_heads, 8, DType::F32),
            |q, k, v| shared.forward(q, k, v, 0.35, kernel),
            |q, k, v| shared.forward(q, k, v, 0.35, AttentionKernel::Reference),
            F32_TOLERANCE,
        );
    }
}

/// bf16 inputs are computed in f32 and rounded on output; the reference rounds its scores and probabilities to
/// bf16 on the way, hence the looser bound. Also against the f32 reference, the blocked result is the closer one.
#[test]
fn bf16_matches_the_reference_loosely() {
    let valid = key_valid(&[&[0, 0, 1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1, 1, 0]]);
    let mask = AttentionMask::causal_key_padding(&valid, 8, DType::BF16).unwrap();
    let spans = mask.key_spans(2, 8, 8).unwrap().clone();
    let dims = (2, 4, 2, 8, 8, 16);
    let half = inputs(40, dims, DType::BF16);
    let blocked = |q: &Tensor, k: &Tensor, v: &Tensor| {
        blocked_attention_with(q, k, v, Some(&spans), 0.25, SMALL)
    };
    assert_same(
        "bf16 causal key padding",
        &half,
        blocked,
        |q, k, v| scaled_dot_product_attention(q, k, v, Some(&mask), 0.25),
        BF16_TOLERANCE,
    );
    let full = half.clone().map(|t| t.to_dtype(DType::F32).unwrap());
    let (blocked_out, _) = output_and_grads(blocked, &half);
    let (reference_out, _) = output_and_grads(
        |q, k, v| scaled_dot_product_attention(q, k, v, Some(&mask), 0.25),
        &half,
    );
    let (exact, _) = output_and_grads(
        |q, k, v| scaled_dot_product_attention(q, k, v, Some(&mask), 0.25),
        &full,
    );
    let (ours, theirs) = (
        max_abs_diff(&blocked_out, &exact),
        max_abs_diff(&reference_out, &exact),
    );
    assert!(
        ours <= theirs,
        "bf16 blocked {ours:e} vs reference {theirs:e} from f32"
    );

    assert_same(
        "bf16 causal key padding, tensor tiles",
        &half,
        |q, k, v| tiled_attention_with(q, k, v, Some(&spans), 0.25, SMALL),
        |q, k, v| scaled_dot_product_attention(q, k, v, Some(&mask), 0.25),
        BF16_TOLERANCE,
    );

    let packed = PackedAttention::new(&[0, 5, 6, 13], true, DType::BF16, &Device::Cpu).unwrap();
    for kernel in BLOCKED {
        assert_same(
            &format!("bf16 packed {kernel:?}"),
            &row_inputs(50, 13, 4, 2, 16, DType::BF16),
            |q, k, v| packed.forward(q, k, v, 0.25, kernel),
            |q, k, v| packed.forward(q, k, v, 0.25, AttentionKernel::Reference),
            BF16_TOLERANCE,
        );
    }
}

/// The dispatcher takes the blocked kernel for f32 on the CPU, and the reference for f64, both agreeing.
#[test]
fn the_dispatcher_picks_a_kernel_that_agrees_with_the_reference() {
    let mask = AttentionMask::causal(6, 6, DType::F32, &Device::Cpu).unwrap();
    let [q, k, v] = inputs(60, (1, 4, 2, 6, 6, 8), DType::F32);
    assert!(AttentionKernel::Blocked.runs_blocked(&q, &k, &v));
    assert!(AttentionKernel::Tiled.runs_blocked(&q, &k, &v));
    assert!(!AttentionKernel::Reference.runs_blocked(&q, &k, &v));
    let blocked = attention(&q, &k, &v, Some(&mask), 0.35, AttentionKernel::Blocked).unwrap();
    let reference = scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.35).unwrap();
    assert!(max_abs_diff(&blocked, &reference) <= 1e-5);

    let wide = [&q, &k, &v].map(|t| t.to_dtype(DType::F64).unwrap());
    assert!(!AttentionKernel::Blocked.runs_blocked(&wide[0], &wide[1], &wide[2]));
    assert!(!AttentionKernel::Tiled.runs_blocked(&wide[0], &wide[1], &wide[2]));
    let f64_mask = AttentionMask::causal(6, 6, DType::F64, &Device::Cpu).unwrap();
    let out = attention(
        &wide[0],
        &wide[1],
        &wide[2],
        Some(&f64_mask),
        0.35,
        AttentionKernel::Blocked,
    )
    .unwrap();
    assert_eq!(out.dtype(), DType::F64);
    assert!(max_abs_diff(&out, &reference) <= 1e-5);
    let err = blocked_attention(&wide[0], &wide[1], &wide[2], None, 0.35)
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32 or bf16"), "{err}");
}

/// A causal mask needs only the key blocks up to the diagonal, a packed row only those its sequences touch: the
/// kernel skips the rest.
#[test]
fn only_the_key_blocks_a_query_block_may_see_are_visited() {
    let causal = AttentionMask::causal(10, 10, DType::F32, &Device::Cpu).unwrap();
    let spans = causal.key_spans(1, 10, 10).unwrap();
    assert_eq!(spans.key_blocks(0, 0..2, 3), vec![0..3]);
    assert_eq!(spans.key_blocks(0, 0..4, 3), [0..3, 3..6]);
    assert_eq!(spans.key_blocks(0, 8..10, 3), [0..3, 3..6, 6..9, 9..10]);

    let rows = (0..12)
        .map(|t| {
            let start = if t < 6 { 0 } else { 6 };
            [Span::new(start..t + 1), Span::default()]
        })
        .collect();
    let packed = KeySpans::new(1, 12, 12, rows, None).unwrap();
    assert_eq!(packed.key_blocks(0, 8..12, 4), [4..8, 8..12]);
}

#[test]
fn masks_that_do_not_fit_are_clear_errors() {
    let [q, k, v] = inputs(70, (2, 2, 2, 4, 6, 4), DType::F32);
    let spans = KeySpans::full(5).unwrap();
    let err = blocked_attention(&q, &k, &v, Some(&spans), 0.5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit"), "{err}");
    let mask = AttentionMask::causal(4, 4, DType::F32, &Device::Cpu).unwrap();
    let err = attention(&q, &k, &v, Some(&mask), 0.5, AttentionKernel::Blocked)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not broadcast"), "{err}");
    let err = KeySpans::new(2, 3, 4, vec![[Span::default(); 2]; 5], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 rows"), "{err}");
}

/// The tensor path's tiles stay within their memory bound and never go below 64 x 64.
#[test]
fn device_tiles_are_as_large_as_their_budget_allows() {
    let sizes = |batch, heads| {
        let b = device_block_sizes(batch, heads);
        (b.queries, b.keys)
    };
    assert_eq!(sizes(1, 16), (1024, 1024));
    assert_eq!(sizes(17, 16), (256, 256));
    assert_eq!(sizes(4096, 64), (64, 64));
}
