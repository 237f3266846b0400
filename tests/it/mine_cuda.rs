//! The CUDA exact top-k against the CPU miner. Built only with the `cuda` feature, and then it needs a CUDA GPU
//! (device 0): a CUDA build's tests are meant to run where the kernel can.
//!
//! Vectors are quarter-integers, whose inner products are exact in f32 whatever the summation order, so the CPU
//! and GPU scores are bit-identical and the lists must be equal, ids and score bits. The shapes push each branch
//! of the selection kernel: a running list that fills over several small chunks, a first chunk too large to
//! gather whole (the radix descent), a descent that must reach the tie-rank bits (every score equal), new chunks
//! whose entrants overflow the gather buffer, waves of queries, corpus parts, and exclusions.

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use umrank::device::DeviceSpec;
use umrank::mine::cuda::{exact_top_k_cuda, CudaTopKError};
use umrank::mine::{
    exact_top_k, top_k_on, CorpusPart, DocOrder, Exclusions, Hit, Matrix, MineError, TopKConfig,
};

fn device() -> Device {
    Device::new_cuda(0).expect("the cuda feature's tests need CUDA device 0")
}

/// Quarter-integers in [-0.75, 0.75]; `levels` = 0 gives all zeros (every score ties).
fn quarters(rng: &mut ChaCha8Rng, len: usize, levels: i8) -> Vec<f32> {
    (0..len)
        .map(|_| f32::from(rng.random_range(-levels..=levels)) * 0.25)
        .collect()
}

/// Unique ids whose string order differs from the index order.
fn shuffled_order(rng: &mut ChaCha8Rng, docs: usize) -> DocOrder {
    let mut numbers: Vec<usize> = (0..docs).collect();
    numbers.shuffle(rng);
    let ids: Vec<String> = numbers.into_iter().map(|n| format!("d{n}")).collect();
    DocOrder::from_ids(&ids).unwrap()
}

struct Case {
    corpus: Vec<f32>,
    queries: Vec<f32>,
    dim: usize,
    order: DocOrder,
}

impl Case {
    fn new(seed: u64, docs: usize, queries: usize, dim: usize, levels: i8) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Self {
            corpus: quarters(&mut rng, docs * dim, levels),
            queries: quarters(&mut rng, queries * dim, 3),
            dim,
            order: shuffled_order(&mut rng, docs),
        }
    }

    fn docs(&self) -> usize {
        self.corpus.len() / self.dim
    }

    fn query_count(&self) -> usize {
        self.queries.len() / self.dim
    }

    fn cpu(&self, exclusions: &Exclusions, k: usize) -> Vec<Vec<Hit>> {
        let corpus = CorpusPart::whole(Matrix::new("corpus", &self.corpus, self.dim).unwrap());
        let queries = Matrix::new("queries", &self.queries, self.dim).unwrap();
        let config = TopKConfig {
            k,
            ..TopKConfig::default()
        };
        exact_top_k(&queries, &corpus, &self.order, exclusions, &config).unwrap()
    }

    /// Rows `first..end` of the corpus as a part, searched on the GPU.
    fn gpu_part(
        &self,
        first: usize,
        end: usize,
        exclusions: &Exclusions,
        config: &TopKConfig,
    ) -> Result<Vec<Vec<Hit>>, CudaTopKError> {
        let device = device();
        let corpus = Tensor::from_slice(
            &self.corpus[first * self.dim..end * self.dim],
            (end - first, self.dim),
            &device,
        )
        .unwrap();
        let queries =
            Tensor::from_slice(&self.queries, (self.query_count(), self.dim), &device).unwrap();
        exact_top_k_cuda(&queries, &corpus, first, &self.order, exclusions, config)
    }

    fn gpu(&self, exclusions: &Exclusions, config: &TopKConfig) -> Vec<Vec<Hit>> {
        self.gpu_part(0, self.docs(), exclusions, config).unwrap()
    }
}

fn assert_same(cpu: &[Vec<Hit>], gpu: &[Vec<Hit>], what: &str) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: query count");
    for (query, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        let bits = |hits: &[Hit]| -> Vec<(u32, u32)> {
            hits.iter()
                .map(|hit| (hit.doc, hit.score.to_bits()))
                .collect()
        };
        assert_eq!(bits(c), bits(g), "{what}: query {query}");
    }
}

/// Each query excludes every third document of its unexcluded list plus one random document.
fn exclusions_from(rng: &mut ChaCha8Rng, lists: &[Vec<Hit>], docs: usize) -> Exclusions {
    Exclusions::new(
        lists
            .iter()
            .map(|hits| {
                let mut list: Vec<u32> = hits.iter().step_by(3).map(|hit| hit.doc).collect();
                list.push(rng.random_range(0..docs as u32));
                list
            })
            .collect(),
    )
}

#[test]
fn equals_the_cpu_over_many_chunk_and_wave_shapes() {
    let case = Case::new(1, 20_000, 70, 24, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let k = 50;
    let unexcluded = case.cpu(&Exclusions::none(case.query_count()), k);
    let exclusions = exclusions_from(&mut rng, &unexcluded, case.docs());
    let cpu = case.cpu(&exclusions, k);
    // Chunks smaller than k (the list fills over several), one that is gathered whole, ones that need the radix
    // descent on the first chunk, and one chunk for everything; waves of 1, 16 and all queries.
    for (chunk_docs, query_block) in [
        (7, 16),
        (1_000, 70),
        (4_500, 1),
        (20_000, 16),
        (65_536, 4_096),
    ] {
        let config = TopKConfig {
            k,
            chunk_docs,
            query_block,
        };
        let gpu = case.gpu(&exclusions, &config);
        assert_same(
            &cpu,
            &gpu,
            &format!("chunk {chunk_docs}, wave {query_block}"),
        );
    }
    let none = case.gpu(
        &Exclusions::none(case.query_count()),
        &TopKConfig {
            k,
            chunk_docs: 3_000,
            query_block: 32,
        },
    );
    assert_same(&unexcluded, &none, "no exclusions");
}

#[test]
fn all_equal_scores_are_ranked_by_id_alone() {
    // Zero documents: every score is 0 and only the tie ranks decide, so the radix descent walks down into the
    // key's low (tie-rank) half; k near the kernel's limit keeps the buffer nearly full.
    let case = Case::new(3, 12_000, 5, 8, 0);
    for k in [1, 100, 2_048] {
        let cpu = case.cpu(&Exclusions::none(case.query_count()), k);
        for chunk_docs in [12_000, 5_000] {
            let config = TopKConfig {
                k,
                chunk_docs,
                query_block: 8,
            };
            let gpu = case.gpu(&Exclusions::none(case.query_count()), &config);
            assert_same(&cpu, &gpu, &format!("k {k}, chunk {chunk_docs}"));
        }
    }
}

#[test]
fn later_chunks_whose_entrants_overflow_the_buffer() {
    // Documents sorted by ascending norm along the query direction: every chunk beats the whole running list, so
    // a full list meets more than the buffer's worth of new candidates and must descend again.
    let dim = 4;
    let docs = 40_000;
    let corpus: Vec<f32> = (0..docs)
        .flat_map(|doc| [(doc / 8) as f32 * 0.25, 0.25, 0.0, 0.0])
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let case = Case {
        corpus,
        queries: vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.25, 0.0, 0.0],
        dim,
        order: shuffled_order(&mut rng, docs),
    };
    let k = 1_000;
    let cpu = case.cpu(&Exclusions::none(3), k);
    let config = TopKConfig {
        k,
        chunk_docs: 10_000,
        query_block: 3,
    };
    assert_same(
        &cpu,
        &case.gpu(&Exclusions::none(3), &config),
        "rising chunks",
    );
}

#[test]
fn corpus_parts_and_the_stage_entry_point_agree_with_the_cpu() {
    let case = Case::new(5, 9_000, 33, 16, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let k = 40;
    let unexcluded = case.cpu(&Exclusions::none(case.query_count()), k);
    let exclusions = exclusions_from(&mut rng, &unexcluded, case.docs());
    let config = TopKConfig {
        k,
        chunk_docs: 2_000,
        query_block: 10,
    };
    // A part's lists are the CPU's lists of the same part (exclusions use corpus-wide numbering).
    let (first, end) = (3_000, 7_500);
    let part = CorpusPart::new(
        Matrix::new("corpus", &case.corpus[first * 16..end * 16], 16).unwrap(),
        first,
    );
    let queries = Matrix::new("queries", &case.queries, 16).unwrap();
    let cpu_part = exact_top_k(&queries, &part, &case.order, &exclusions, &config).unwrap();
    let gpu_part = case.gpu_part(first, end, &exclusions, &config).unwrap();
    assert_same(&cpu_part, &gpu_part, "part");
    // The mine stage's call with a CUDA device.
    let whole = CorpusPart::whole(Matrix::new("corpus", &case.corpus, 16).unwrap());
    let host = top_k_on(
        DeviceSpec::Cuda(0),
        &queries,
        &whole,
        &case.order,
        &exclusions,
        &config,
    )
    .unwrap();
    assert_same(&case.cpu(&exclusions, k), &host, "top_k_on");
}

#[test]
fn k_beyond_the_corpus_and_zero_k() {
    let case = Case::new(7, 30, 4, 8, 3);
    let exclusions = Exclusions::new(vec![vec![0, 29], vec![], vec![5], vec![]]);
    for k in [0, 29, 31, 500] {
        let config = TopKConfig {
            k,
            chunk_docs: 16,
            query_block: 3,
        };
        assert_same(
            &case.cpu(&exclusions, k),
            &case.gpu(&exclusions, &config),
            &format!("k {k}"),
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let device = device();
    let order = DocOrder::from_ids(&["a", "b", "c"]).unwrap();
    let mut values = vec![0.5f32; 6];
    values[3] = f32::NAN;
    let corpus = Tensor::from_slice(&values, (3, 2), &device).unwrap();
    let queries = Tensor::from_slice(&[1.0f32, 0.0], (1, 2), &device).unwrap();
    let config = TopKConfig {
        k: 2,
        ..TopKConfig::default()
    };
    let none = Exclusions::none(1);
    match exact_top_k_cuda(&queries, &corpus, 0, &order, &none, &config) {
        Err(CudaTopKError::Mine(MineError::NonFinite {
            what: "corpus",
            row: 1,
            column: 1,
            ..
        })) => {}
        other => panic!("expected a non-finite error, got {other:?}"),
    }
    let corpus = Tensor::from_slice(&[0.5f32; 6], (3, 2), &device).unwrap();
    let too_many = TopKConfig { k: 2_049, ..config };
    assert!(matches!(
        exact_top_k_cuda(&queries, &corpus, 0, &order, &none, &too_many),
        Err(CudaTopKError::KTooLarge { k: 2_049, .. })
    ));
    let half = corpus.to_dtype(DType::F16).unwrap();
    assert!(matches!(
        exact_top_k_cuda(&queries, &half, 0, &order, &none, &config),
        Err(CudaTopKError::Input { what: "corpus", .. })
    ));
    assert!(matches!(
        exact_top_k_cuda(&queries, &corpus, 1, &order, &none, &config),
        Err(CudaTopKError::Mine(MineError::PartOutOfRange { .. }))
    ));
    let on_cpu = queries.to_device(&Device::Cpu).unwrap();
    assert!(matches!(
        exact_top_k_cuda(&on_cpu, &corpus, 0, &order, &none, &config),
        Err(CudaTopKError::Input {
            what: "queries",
            ..
        })
    ));
}
