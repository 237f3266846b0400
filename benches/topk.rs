//! Exact top-k throughput on the shapes of docs/performance.md#cpu-bars, on random unit vectors generated from a fixed
//! seed.
//!
//! The vectors are written as .npy files next to our results so that `benches/topk_vs_faiss.py` runs faiss and
//! numpy on the very same data and checks that they find the same documents.
//!
//!     cargo bench --bench topk -- [--shape small|large|all] [--threads 2] [--data-dir DIR]

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use umrank::mine::{exact_top_k, CorpusPart, DocOrder, Exclusions, Hit, Matrix, TopKConfig};

#[derive(Parser)]
struct Args {
    /// Which shape of docs/performance.md#cpu-bars: small (100k x 384, 2000 queries), large (200k x 768, 1000 queries)
    /// or all.
    #[arg(long, default_value = "all")]
    shape: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 100)]
    k: usize,
    /// Timed runs per shape; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long)]
    chunk_docs: Option<usize>,
    #[arg(long)]
    query_block: Option<usize>,
    /// Where the vectors and results go (default: a directory under the system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Shape {
    name: &'static str,
    docs: usize,
    dim: usize,
    queries: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "small",
        docs: 100_000,
        dim: 384,
        queries: 2000,
    },
    Shape {
        name: "large",
        docs: 200_000,
        dim: 768,
        queries: 1000,
    },
];

fn main() -> Result<()> {
    let args = Args::parse();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("umrank-topk-bench"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    for shape in SHAPES
        .iter()
        .filter(|shape| args.shape == "all" || args.shape == shape.name)
    {
        pool.install(|| run_shape(&args, shape, &data_dir.join(shape.name)))?;
    }
    Ok(())
}

fn run_shape(args: &Args, shape: &Shape, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let corpus = unit_vectors(shape.docs, shape.dim, 1);
    let queries = unit_vectors(shape.queries, shape.dim, 2);
    write_npy_f32(&dir.join("corpus.npy"), &corpus, shape.docs, shape.dim)?;
    write_npy_f32(&dir.join("queries.npy"), &queries, shape.queries, shape.dim)?;

    let ids: Vec<String> = (0..shape.docs).map(|doc| format!("d{doc:07}")).collect();
    let order = DocOrder::from_ids(&ids)?;
    let defaults = TopKConfig::default();
    let config = TopKConfig {
        k: args.k,
        chunk_docs: args.chunk_docs.unwrap_or(defaults.chunk_docs),
        query_block: args.query_block.unwrap_or(defaults.query_block),
    };
    let corpus = CorpusPart::whole(Matrix::new("corpus", &corpus, shape.dim)?);
    let queries = Matrix::new("queries", &queries, shape.dim)?;
    let exclusions = Exclusions::none(shape.queries);

    let mut best = f64::INFINITY;
    let mut hits = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let started = Instant::now();
        hits = exact_top_k(&queries, &corpus, &order, &exclusions, &config)?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    write_npy_hits(&dir.join("ours_top.npy"), &hits, args.k)?;
    let rate = shape.queries as f64 / best;
    println!(
        "{}: {} docs x {}-d, {} queries, k={}, {} threads: best {:.3} s, {:.0} queries/s",
        shape.name, shape.docs, shape.dim, shape.queries, args.k, args.threads, best, rate
    );
    println!(
        "RESULT {{\"shape\": \"{}\", \"seconds\": {best}, \"queries_per_s\": {rate}, \"dir\": {:?}}}",
        shape.name,
        dir.display().to_string()
    );
    Ok(())
}

/// Rows of uniform random values scaled to unit length, as normalised embeddings are.
fn unit_vectors(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    for row in data.chunks_exact_mut(dim) {
        let norm = row
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    data
}

/// A version-1.0 .npy header for a C-ordered little-endian array; the header is padded so data starts 64-aligned.
fn npy_header(descr: &str, rows: usize, cols: usize) -> Vec<u8> {
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header
}

fn write_npy_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let mut out =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    out.write_all(&npy_header("<f4", rows, cols))?;
    for value in data {
        out.write_all(&value.to_le_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Our result's document indices, -1 where a query has fewer than k hits.
fn write_npy_hits(path: &Path, hits: &[Vec<Hit>], k: usize) -> Result<()> {
    let mut out =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    out.write_all(&npy_header("<i8", hits.len(), k))?;
    for list in hits {
        for rank in 0..k {
            let doc = list.get(rank).map_or(-1i64, |hit| i64::from(hit.doc));
            out.write_all(&doc.to_le_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}
