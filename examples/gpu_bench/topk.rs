//! `gpu_bench topk`: the CUDA exact top-k checked against the CPU miner, then timed on the shape of
//! docs/performance.md#gpu-reference-figures. benches/topk_gpu_torch.py times torch.topk on the same shapes with the
//! same method; benches/gpu/run.sh runs both. Prints one JSON line per result (`"kind": "check"` or `"kind": "bench"`);
//! fails when a check fails.
//!
//! Checks (CPU reference: `umrank::mine::exact_top_k`, all cores):
//! - `integer`: vectors of quarter-integers, whose inner products are exact in f32 whatever the summation order,
//!   so CPU and GPU scores are bit-identical and the lists must be equal, ids and score bits, through heavy ties
//!   (broken by id) and exclusions that remove part of each query's unexcluded top-k.
//! - `float`: unit vectors with planted exact duplicates near some queries. cuBLAS sums in another order than the
//!   CPU kernel, so a position may hold another document only when the two paths' scores there agree within
//!   1e-5 (a near tie); equal GPU scores must still be ordered by id.
//! - `host`: the stage's entry point, `top_k_on(cuda, ...)` on host matrices, against the CPU on the `float` data.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use umrank::device::DeviceSpec;
use umrank::mine::cuda::{exact_top_k_cuda, CUDA_TOP_K_DEFAULTS};
use umrank::mine::{
    exact_top_k, top_k_on, CorpusPart, DocOrder, Exclusions, Hit, Matrix, TopKConfig,
};

/// Shapes of the checks and the timing. The defaults are the ones benches/topk_gpu_torch.py uses.
#[derive(clap::Args)]
pub struct TopkArgs {
    /// The CUDA device (cuda or cuda:K).
    #[arg(long, default_value = "cuda")]
    device: DeviceSpec,
    /// Hits per query, in the checks and the timing.
    #[arg(long, default_value_t = 100)]
    k: usize,
    /// Documents per scored chunk on the GPU.
    #[arg(long, default_value_t = 131_072)]
    chunk_docs: usize,
    /// Queries per wave on the GPU.
    #[arg(long, default_value_t = CUDA_TOP_K_DEFAULTS.query_block)]
    query_block: usize,
    /// Corpus size of the checks.
    #[arg(long, default_value_t = 200_000)]
    check_docs: usize,
    /// Vector dimension of the checks.
    #[arg(long, default_value_t = 256)]
    check_dim: usize,
    /// Query count of the checks.
    #[arg(long, default_value_t = 512)]
    check_queries: usize,
    /// Corpus size of the timing.
    #[arg(long, default_value_t = 1_000_000)]
    bench_docs: usize,
    /// Vector dimension of the timing.
    #[arg(long, default_value_t = 1024)]
    bench_dim: usize,
    /// Query count of the timing.
    #[arg(long, default_value_t = 1024)]
    bench_queries: usize,
    /// Timed runs after one warm-up; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Run the checks only.
    #[arg(long)]
    skip_bench: bool,
}

pub fn run(args: &TopkArgs) -> Result<()> {
    if args.device == DeviceSpec::Cpu {
        bail!("topk compares the CUDA kernel with the CPU: --device must be cuda or cuda:K");
    }
    let device = args.device.candle().context("opening the CUDA device")?;
    let config = TopKConfig {
        k: args.k,
        chunk_docs: args.chunk_docs,
        query_block: args.query_block,
    };
    let integer_ok = check_integer(args, &device, &config)?;
    let float_ok = check_float(args, &device, &config)?;
    if !args.skip_bench {
        bench(args, &device, &config)?;
    }
    if !(integer_ok && float_ok) {
        bail!("the CUDA top-k disagrees with the CPU path (see the check lines above)");
    }
    Ok(())
}

/// Row-major host vectors and their tie order.
struct Data {
    corpus: Vec<f32>,
    queries: Vec<f32>,
    dim: usize,
    order: DocOrder,
}

impl Data {
    fn cpu(&self, exclusions: &Exclusions, k: usize) -> Result<Vec<Vec<Hit>>> {
        let corpus = CorpusPart::whole(Matrix::new("corpus", &self.corpus, self.dim)?);
        let queries = Matrix::new("queries", &self.queries, self.dim)?;
        let config = TopKConfig {
            k,
            ..TopKConfig::default()
        };
        Ok(exact_top_k(
            &queries,
            &corpus,
            &self.order,
            exclusions,
            &config,
        )?)
    }

    fn gpu(
        &self,
        device: &Device,
        exclusions: &Exclusions,
        config: &TopKConfig,
    ) -> Result<(Vec<Vec<Hit>>, f64)> {
        let docs = self.corpus.len() / self.dim;
        let corpus = Tensor::from_slice(&self.corpus, (docs, self.dim), device)?;
        let queries = Tensor::from_slice(
            &self.queries,
            (self.queries.len() / self.dim, self.dim),
            device,
        )?;
        device.synchronize()?;
        let started = Instant::now();
        let hits = exact_top_k_cuda(&queries, &corpus, 0, &self.order, exclusions, config)?;
        Ok((hits, started.elapsed().as_secs_f64() * 1e3))
    }

    /// The mine stage's call: [`top_k_on`] with host matrices.
    fn host(&self, device: DeviceSpec, exclusions: &Exclusions, k: usize) -> Result<Vec<Vec<Hit>>> {
        let corpus = CorpusPart::whole(Matrix::new("corpus", &self.corpus, self.dim)?);
        let queries = Matrix::new("queries", &self.queries, self.dim)?;
        let config = TopKConfig {
            k,
            ..TopKConfig::default()
        };
        Ok(top_k_on(
            device,
            &queries,
            &corpus,
            &self.order,
            exclusions,
            &config,
        )?)
    }
}

/// Ids whose string order is not the index order, so that ties exercise the id order for real.
fn shuffled_order(rng: &mut ChaCha8Rng, docs: usize) -> Result<DocOrder> {
    let ids: Vec<String> = (0..docs)
        .map(|doc| format!("{:08x}-{doc}", rng.random::<u32>()))
        .collect();
    Ok(DocOrder::from_ids(&ids)?)
}

fn check_integer(args: &TopkArgs, device: &Device, config: &TopKConfig) -> Result<bool> {
    let mut rng = ChaCha8Rng::seed_from_u64(20_251_127);
    let quarters = |rng: &mut ChaCha8Rng, len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| f32::from(rng.random_range(-3i8..=3)) * 0.25)
            .collect()
    };
    let data = Data {
        corpus: quarters(&mut rng, args.check_docs * args.check_dim),
        queries: quarters(&mut rng, args.check_queries * args.check_dim),
        dim: args.check_dim,
        order: shuffled_order(&mut rng, args.check_docs)?,
    };
    // Exclude every third document of each query's unexcluded top-k, plus a random one.
    let unexcluded = data.cpu(&Exclusions::none(args.check_queries), config.k)?;
    let exclusions = Exclusions::new(
        unexcluded
            .iter()
            .map(|hits| {
                let mut list: Vec<u32> = hits.iter().step_by(3).map(|hit| hit.doc).collect();
                list.push(rng.random_range(0..args.check_docs as u32));
                list
            })
            .collect(),
    );
    let cpu = data.cpu(&exclusions, config.k)?;
    let (gpu, gpu_ms) = data.gpu(device, &exclusions, config)?;
    let mismatched: Vec<usize> = (0..cpu.len())
        .filter(|&query| !same_bits(&cpu[query], &gpu[query]))
        .collect();
    let tied_positions: usize = cpu
        .iter()
        .map(|hits| {
            hits.windows(2)
                .filter(|pair| pair[0].score == pair[1].score)
                .count()
        })
        .sum();
    let ok = mismatched.is_empty() && gpu.len() == cpu.len();
    println!(
        "{}",
        json!({
            "kind": "check", "check": "integer", "ok": ok,
            "docs": args.check_docs, "dim": args.check_dim, "queries": args.check_queries, "k": config.k,
            "chunk_docs": config.chunk_docs, "tied_adjacent_positions": tied_positions,
            "mismatched_queries": mismatched.len(), "first_mismatches": &mismatched[..mismatched.len().min(5)],
            "gpu_ms": gpu_ms,
        })
    );
    Ok(ok)
}

fn same_bits(a: &[Hit], b: &[Hit]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.doc == y.doc && x.score.to_bits() == y.score.to_bits())
}

/// Unit vectors (uniform entries, normalised).
fn unit_vectors(rng: &mut ChaCha8Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut data: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    for row in data.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    data
}

/// How far apart CPU and GPU scores of float vectors may be where the two lists hold different documents.
const TOLERANCE: f32 = 1e-5;

fn check_float(args: &TopkArgs, device: &Device, config: &TopKConfig) -> Result<bool> {
    let dim = args.check_dim;
    let mut rng = ChaCha8Rng::seed_from_u64(4_242);
    let mut corpus = unit_vectors(&mut rng, args.check_docs, dim);
    let queries = unit_vectors(&mut rng, args.check_queries, dim);
    // For every 8th query, a document close to it, copied to 3 random places: exact ties at the top of its list.
    for query in (0..args.check_queries).step_by(8) {
        let near: Vec<f32> = queries[query * dim..(query + 1) * dim]
            .iter()
            .map(|x| x + rng.random_range(-0.01f32..0.01))
            .collect();
        for _ in 0..3 {
            let doc = rng.random_range(0..args.check_docs);
            corpus[doc * dim..(doc + 1) * dim].copy_from_slice(&near);
        }
    }
    let data = Data {
        corpus,
        queries,
        dim,
        order: shuffled_order(&mut rng, args.check_docs)?,
    };
    let exclusions = Exclusions::new(
        (0..args.check_queries)
            .map(|_| vec![rng.random_range(0..args.check_docs as u32)])
            .collect(),
    );
    let cpu = data.cpu(&exclusions, config.k)?;
    let (gpu, gpu_ms) = data.gpu(device, &exclusions, config)?;
    let shape = json!({
        "docs": args.check_docs, "dim": dim, "queries": args.check_queries, "k": config.k,
        "chunk_docs": config.chunk_docs, "tolerance": TOLERANCE, "gpu_ms": gpu_ms,
    });
    let float_ok = report_near("float", &shape, &cpu, &gpu, &data.order);
    // The stage's path: host matrices in, the device's own chunk sizes.
    let host = data.host(args.device, &exclusions, config.k)?;
    let shape = json!({
        "docs": args.check_docs, "dim": dim, "queries": args.check_queries, "k": config.k,
        "chunk_docs": CUDA_TOP_K_DEFAULTS.chunk_docs, "tolerance": TOLERANCE,
    });
    let host_ok = report_near("host", &shape, &cpu, &host, &data.order);
    Ok(float_ok && host_ok)
}

/// Compares GPU lists with the CPU's where the scores are not exact: a position may hold another document only
/// when the two scores there are within [`TOLERANCE`] (a near tie that the summation order decided), and equal GPU
/// scores must be ordered by the tie order. Prints one check line; returns whether it passed.
fn report_near(
    check: &str,
    shape: &serde_json::Value,
    cpu: &[Vec<Hit>],
    gpu: &[Vec<Hit>],
    order: &DocOrder,
) -> bool {
    let mut same_doc = 0usize;
    let mut near_ties = 0usize;
    let mut unexplained = Vec::new();
    let mut max_score_diff = 0f32;
    let mut tie_order_violations = 0usize;
    let mut gpu_exact_ties = 0usize;
    for (query, (cpu, gpu)) in cpu.iter().zip(gpu).enumerate() {
        if cpu.len() != gpu.len() {
            unexplained.push(json!({"query": query, "cpu_len": cpu.len(), "gpu_len": gpu.len()}));
            continue;
        }
        for (position, (c, g)) in cpu.iter().zip(gpu).enumerate() {
            let diff = (c.score - g.score).abs();
            max_score_diff = max_score_diff.max(diff);
            if c.doc == g.doc {
                same_doc += 1;
            } else if diff <= TOLERANCE {
                near_ties += 1;
            } else {
                unexplained.push(json!({
                    "query": query, "position": position,
                    "cpu": [c.doc, c.score], "gpu": [g.doc, g.score],
                }));
            }
        }
        for pair in gpu.windows(2) {
            if pair[0].score.to_bits() == pair[1].score.to_bits() {
                gpu_exact_ties += 1;
                if order.rank(pair[0].doc) < order.rank(pair[1].doc) {
                    tie_order_violations += 1;
                }
            }
        }
    }
    let ok = unexplained.is_empty() && tie_order_violations == 0 && gpu.len() == cpu.len();
    println!(
        "{}",
        json!({
            "kind": "check", "check": check, "ok": ok, "shape": shape,
            "same_doc_positions": same_doc, "near_tie_swaps": near_ties,
            "unexplained": unexplained.len(), "first_unexplained": &unexplained[..unexplained.len().min(5)],
            "max_score_diff": max_score_diff, "gpu_exact_ties": gpu_exact_ties,
            "tie_order_violations": tie_order_violations,
        })
    );
    ok
}

/// Times the top-k on random normal data generated on the device (warm-up, then the median of `repeat` runs;
/// each run ends with the lists on the host, which synchronises), in full f32 and with TF32 products, plus the
/// matrix products alone, which bound what any selection can reach.
fn bench(args: &TopkArgs, device: &Device, config: &TopKConfig) -> Result<()> {
    let corpus = Tensor::randn(0f32, 1.0, (args.bench_docs, args.bench_dim), device)?;
    let queries = Tensor::randn(0f32, 1.0, (args.bench_queries, args.bench_dim), device)?;
    let ids: Vec<String> = (0..args.bench_docs)
        .map(|doc| format!("d{doc:08}"))
        .collect();
    let order = DocOrder::from_ids(&ids)?;
    let exclusions = Exclusions::none(args.bench_queries);
    let shape = json!({
        "docs": args.bench_docs, "dim": args.bench_dim, "queries": args.bench_queries, "k": config.k,
        "chunk_docs": config.chunk_docs, "query_block": config.query_block, "device": device_name(),
    });
    for tf32 in [false, true] {
        candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
        let runs = timed(device, args.repeat, || {
            exact_top_k_cuda(&queries, &corpus, 0, &order, &exclusions, config)?;
            Ok(())
        })?;
        let products = timed(device, args.repeat, || {
            for start in (0..args.bench_docs).step_by(config.chunk_docs) {
                let cols = config.chunk_docs.min(args.bench_docs - start);
                queries.matmul(&corpus.narrow(0, start, cols)?.t()?)?;
            }
            Ok(())
        })?;
        let gemm = if tf32 { "tf32" } else { "f32" };
        print_timing("umrank_cuda_topk", gemm, &shape, &runs);
        print_timing("candle_matmul_only", gemm, &shape, &products);
    }
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    let corpus_bf16 = corpus.to_dtype(DType::BF16)?;
    drop(corpus);
    let queries_bf16 = queries.to_dtype(DType::BF16)?;
    let products = timed(device, args.repeat, || {
        for start in (0..args.bench_docs).step_by(config.chunk_docs) {
            let cols = config.chunk_docs.min(args.bench_docs - start);
            queries_bf16.matmul(&corpus_bf16.narrow(0, start, cols)?.t()?)?;
        }
        Ok(())
    })?;
    print_timing("candle_matmul_only", "bf16", &shape, &products);
    Ok(())
}

/// Milliseconds of `repeat` runs of `run` after one warm-up, the device synchronised around each.
fn timed(device: &Device, repeat: usize, mut run: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    run()?;
    device.synchronize()?;
    let mut runs = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        run()?;
        device.synchronize()?;
        runs.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(runs)
}

fn print_timing(what: &str, gemm: &str, shape: &serde_json::Value, runs: &[f64]) {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "kind": "bench", "what": what, "gemm": gemm, "shape": shape,
            "median_ms": sorted[sorted.len() / 2], "runs_ms": runs,
        })
    );
}

/// The GPU's name as nvidia-smi reports it, when it is there to ask.
fn device_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |name| name.trim().to_owned())
}
