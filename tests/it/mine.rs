//! Hard-negative mining core: exact top-k against brute force (ties included, on every way of splitting the
//! work), exclusions, the false-negative filter, sampling and the statistics table.

use std::cmp::Ordering;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use umrank::mine::{
    exact_top_k, filter_candidates, merge_top_k, sample_negatives, Candidate, CorpusPart, DocOrder,
    Exclusions, FilterConfig, FilterKind, Filtered, Hit, Matrix, MineError, QueryInput,
    QueryNegatives, RandomPool, SampleConfig, StatsBuilder, TopKConfig,
};
use umrank::schema::NegativeKind;

/// The score every path must reproduce bit for bit: one FMA chain over the dimensions in order.
fn fma_chain(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .fold(0.0f32, |acc, (&x, &y)| x.mul_add(y, acc))
}

/// Vectors with few distinct values (many exact ties) or continuous ones.
fn vectors(rng: &mut ChaCha8Rng, rows: usize, dim: usize, quantised: bool) -> Vec<f32> {
    (0..rows * dim)
        .map(|_| {
            if quantised {
                rng.random_range(-2i32..=2) as f32 * 0.5
            } else {
                rng.random_range(-1.0f32..1.0)
            }
        })
        .collect()
}

/// Unique ids whose string order differs from the index order ("d10" < "d9").
fn shuffled_ids(rng: &mut ChaCha8Rng, docs: usize) -> Vec<String> {
    let mut numbers: Vec<usize> = (0..docs).collect();
    numbers.shuffle(rng);
    numbers.into_iter().map(|n| format!("d{n}")).collect()
}

/// Full sort of every non-excluded document: score descending, then id descending as a string.
fn brute_force(
    queries: &[f32],
    corpus: &[f32],
    dim: usize,
    ids: &[String],
    exclude: &[Vec<u32>],
    k: usize,
) -> Vec<Vec<Hit>> {
    queries
        .chunks_exact(dim)
        .enumerate()
        .map(|(query, vector)| {
            let mut all: Vec<Hit> = corpus
                .chunks_exact(dim)
                .enumerate()
                .filter(|(doc, _)| !exclude[query].contains(&(*doc as u32)))
                .map(|(doc, row)| Hit {
                    doc: doc as u32,
                    score: fma_chain(vector, row),
                })
                .collect();
            all.sort_by(|a, b| {
                b.score
                    .partial_cmp(&a.score)
                    .unwrap_or(Ordering::Equal)
                    .then_with(|| ids[b.doc as usize].cmp(&ids[a.doc as usize]))
            });
            all.truncate(k);
            all
        })
        .collect()
}

fn assert_same(got: &[Vec<Hit>], expected: &[Vec<Hit>], context: &str) {
    assert_eq!(got.len(), expected.len(), "{context}: query count");
    for (query, (got, expected)) in got.iter().zip(expected).enumerate() {
        let got: Vec<(u32, u32)> = got
            .iter()
            .map(|hit| (hit.doc, hit.score.to_bits()))
            .collect();
        let expected: Vec<(u32, u32)> = expected
            .iter()
            .map(|hit| (hit.doc, hit.score.to_bits()))
            .collect();
        assert_eq!(got, expected, "{context}: query {query}");
    }
}

fn config(k: usize, chunk_docs: usize, query_block: usize) -> TopKConfig {
    TopKConfig {
        k,
        chunk_docs,
        query_block,
    }
}

/// One search problem, run whole or split into corpus parts.
struct Problem<'a> {
    queries: Matrix<'a>,
    corpus: &'a [f32],
    dim: usize,
    order: &'a DocOrder,
    exclusions: &'a Exclusions,
}

impl Problem<'_> {
    fn whole(&self, config: &TopKConfig) -> Vec<Vec<Hit>> {
        let corpus = CorpusPart::whole(Matrix::new("corpus", self.corpus, self.dim).unwrap());
        exact_top_k(&self.queries, &corpus, self.order, self.exclusions, config).unwrap()
    }

    /// Splits the documents at `parts - 1` random points (parts may be empty), searches each part and merges.
    fn sharded(&self, rng: &mut ChaCha8Rng, parts: usize, config: &TopKConfig) -> Vec<Vec<Hit>> {
        let docs = self.corpus.len() / self.dim;
        let mut cuts: Vec<usize> = (0..parts - 1).map(|_| rng.random_range(0..=docs)).collect();
        cuts.extend([0, docs]);
        cuts.sort_unstable();
        let lists: Vec<Vec<Vec<Hit>>> = cuts
            .windows(2)
            .map(|range| {
                let rows = &self.corpus[range[0] * self.dim..range[1] * self.dim];
                let part =
                    CorpusPart::new(Matrix::new("corpus", rows, self.dim).unwrap(), range[0]);
                exact_top_k(&self.queries, &part, self.order, self.exclusions, config).unwrap()
            })
            .collect();
        merge_top_k(&lists, config.k, self.order).unwrap()
    }
}

#[test]
fn top_k_equals_brute_force_on_every_split_ties_included() {
    let pools = [1, 2].map(|threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..12 {
        let quantised = case % 3 != 2;
        let (docs, dim, queries_n) = (
            rng.random_range(1..260),
            rng.random_range(1..40),
            rng.random_range(1..70),
        );
        let corpus = vectors(&mut rng, docs, dim, quantised);
        let queries = vectors(&mut rng, queries_n, dim, quantised);
        let ids = shuffled_ids(&mut rng, docs);
        let order = DocOrder::from_ids(&ids).unwrap();
        let gold: Vec<Vec<u32>> = (0..queries_n)
            .map(|_| {
                (0..rng.random_range(0..4))
                    .map(|_| rng.random_range(0..docs as u32))
                    .collect()
            })
            .collect();
        let exclusions = Exclusions::new(gold.clone());
        let problem = Problem {
            queries: Matrix::new("queries", &queries, dim).unwrap(),
            corpus: &corpus,
            dim,
            order: &order,
            exclusions: &exclusions,
        };
        for k in [0, 1, 7, docs.saturating_sub(1), docs, docs + 5] {
            let expected = brute_force(&queries, &corpus, dim, &ids, &gold, k);
            if quantised && k > 1 {
                let tied = expected
                    .iter()
                    .any(|list| list.windows(2).any(|pair| pair[0].score == pair[1].score));
                assert!(tied, "case {case}: quantised data should produce ties");
            }
            for (pool, (chunk_docs, query_block)) in
                pools
                    .iter()
                    .cycle()
                    .zip([(docs + 1, 1000), (1, 1), (7, 48), (64, 100)])
            {
                let config = config(k, chunk_docs, query_block);
                let context = format!("case {case} k {k} chunk {chunk_docs} block {query_block}");
                assert_same(
                    &pool.install(|| problem.whole(&config)),
                    &expected,
                    &context,
                );
                for parts in [2, 3, 5] {
                    let got = pool.install(|| problem.sharded(&mut rng, parts, &config));
                    assert_same(&got, &expected, &format!("{context} parts {parts}"));
                }
            }
        }
    }
}

#[test]
fn empty_corpus_and_empty_queries() {
    let order = DocOrder::from_ids(&["a", "b"]).unwrap();
    let queries = [1.0f32, 0.0, 0.5, 0.5];
    let queries = Matrix::new("queries", &queries, 2).unwrap();
    let empty = CorpusPart::new(Matrix::new("corpus", &[], 2).unwrap(), 1);
    let got = exact_top_k(
        &queries,
        &empty,
        &order,
        &Exclusions::none(2),
        &TopKConfig::default(),
    )
    .unwrap();
    assert_eq!(got, vec![Vec::<Hit>::new(), Vec::new()]);

    let corpus = [1.0f32, 2.0, 3.0, 4.0];
    let corpus = CorpusPart::whole(Matrix::new("corpus", &corpus, 2).unwrap());
    let none = Matrix::new("queries", &[], 2).unwrap();
    let got = exact_top_k(
        &none,
        &corpus,
        &order,
        &Exclusions::none(0),
        &TopKConfig::default(),
    )
    .unwrap();
    assert!(got.is_empty());
    assert!(merge_top_k(&[], 3, &order).unwrap().is_empty());
}

#[test]
fn exclusions_remove_exactly_the_gold_documents() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (docs, dim, queries_n) = (120, 16, 9);
    let corpus = vectors(&mut rng, docs, dim, false);
    let queries = vectors(&mut rng, queries_n, dim, false);
    let ids: Vec<String> = (0..docs).map(|doc| format!("doc-{doc:03}")).collect();
    let order = DocOrder::from_ids(&ids).unwrap();
    let query_matrix = Matrix::new("queries", &queries, dim).unwrap();
    let whole = CorpusPart::whole(Matrix::new("corpus", &corpus, dim).unwrap());
    let all = exact_top_k(
        &query_matrix,
        &whole,
        &order,
        &Exclusions::none(queries_n),
        &config(docs, 32, 48),
    )
    .unwrap();
    // Gold: each query's best, its 10th and a document outside its top 20, listed twice and unsorted.
    let gold: Vec<Vec<u32>> = all
        .iter()
        .map(|list| vec![list[40].doc, list[0].doc, list[9].doc, list[0].doc])
        .collect();
    let got = exact_top_k(
        &query_matrix,
        &whole,
        &order,
        &Exclusions::new(gold.clone()),
        &config(20, 32, 48),
    )
    .unwrap();
    for (query, (got, all)) in got.iter().zip(&all).enumerate() {
        let expected: Vec<Hit> = all
            .iter()
            .filter(|hit| !gold[query].contains(&hit.doc))
            .take(20)
            .copied()
            .collect();
        assert_eq!(got, &expected, "query {query}");
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let order = DocOrder::from_ids(&["a", "b"]).unwrap();
    let corpus_values = [1.0f32, 0.0, 0.0, 1.0];
    let corpus = CorpusPart::whole(Matrix::new("corpus", &corpus_values, 2).unwrap());
    let query_values = [1.0f32, 1.0];
    let queries = Matrix::new("queries", &query_values, 2).unwrap();
    let defaults = TopKConfig::default();
    let search =
        |queries: &Matrix<'_>,
         corpus: &CorpusPart<'_>,
         exclusions: &Exclusions,
         config: &TopKConfig| { exact_top_k(queries, corpus, &order, exclusions, config) };

    assert!(matches!(
        Matrix::new("corpus", &[1.0; 5], 2),
        Err(MineError::Ragged { len: 5, dim: 2, .. })
    ));
    assert!(matches!(
        Matrix::new("corpus", &[], 0),
        Err(MineError::ZeroDimension { .. })
    ));
    assert!(matches!(
        DocOrder::from_ids(&["x", "y", "x"]),
        Err(MineError::DuplicateDocId {
            first: 0,
            second: 2,
            ..
        })
    ));

    let three = Matrix::new("queries", &[1.0f32; 3], 3).unwrap();
    assert!(matches!(
        search(&three, &corpus, &Exclusions::none(1), &defaults),
        Err(MineError::DimensionMismatch {
            queries: 3,
            documents: 2
        })
    ));
    let nan = [0.0f32, 1.0, f32::NAN, 0.0];
    let nan_corpus = CorpusPart::whole(Matrix::new("corpus", &nan, 2).unwrap());
    assert!(matches!(
        search(&queries, &nan_corpus, &Exclusions::none(1), &defaults),
        Err(MineError::NonFinite {
            what: "corpus",
            row: 1,
            column: 0,
            ..
        })
    ));
    let huge = [3e19f32, 0.0];
    let huge_queries = Matrix::new("queries", &huge, 2).unwrap();
    assert!(matches!(
        search(
            &huge_queries,
            &CorpusPart::whole(Matrix::new("corpus", &huge, 2).unwrap()),
            &Exclusions::none(1),
            &defaults
        ),
        Err(MineError::ScoreOverflow { .. })
    ));
    assert!(matches!(
        search(&queries, &corpus, &Exclusions::none(2), &defaults),
        Err(MineError::ExclusionCount {
            lists: 2,
            queries: 1
        })
    ));
    assert!(matches!(
        search(
            &queries,
            &corpus,
            &Exclusions::new(vec![vec![2]]),
            &defaults
        ),
        Err(MineError::DocOutOfRange {
            doc: 2,
            known: 2,
            ..
        })
    ));
    let shifted = CorpusPart::new(Matrix::new("corpus", &corpus_values, 2).unwrap(), 1);
    assert!(matches!(
        search(&queries, &shifted, &Exclusions::none(1), &defaults),
        Err(MineError::PartOutOfRange {
            first_doc: 1,
            end: 3,
            known: 2
        })
    ));
    assert!(matches!(
        search(&queries, &corpus, &Exclusions::none(1), &config(5, 0, 1)),
        Err(MineError::ZeroConfig {
            field: "chunk_docs"
        })
    ));
    let overlapping = vec![
        vec![vec![Hit { doc: 1, score: 1.0 }]],
        vec![vec![Hit { doc: 1, score: 1.0 }]],
    ];
    assert!(matches!(
        merge_top_k(&overlapping, 5, &order),
        Err(MineError::OverlappingParts { query: 0, doc: 1 })
    ));
    assert!(matches!(
        corpus.score(&query_values, 7),
        Err(MineError::NotInPart { doc: 7, .. })
    ));
}

#[test]
fn pair_scores_equal_the_search_scores() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (docs, dim) = (50, 300);
    let corpus = vectors(&mut rng, docs, dim, false);
    let queries = vectors(&mut rng, 3, dim, false);
    let ids: Vec<String> = (0..docs).map(|doc| doc.to_string()).collect();
    let order = DocOrder::from_ids(&ids).unwrap();
    let query_matrix = Matrix::new("queries", &queries, dim).unwrap();
    let whole = CorpusPart::whole(Matrix::new("corpus", &corpus, dim).unwrap());
    let got = exact_top_k(
        &query_matrix,
        &whole,
        &order,
        &Exclusions::none(3),
        &config(docs, 16, 48),
    )
    .unwrap();
    for (query, list) in got.iter().enumerate() {
        for hit in list {
            let pair = whole.score(query_matrix.row(query), hit.doc).unwrap();
            assert_eq!(pair.to_bits(), hit.score.to_bits());
        }
    }
}

fn hits(scores: &[f32]) -> Vec<Hit> {
    scores
        .iter()
        .enumerate()
        .map(|(doc, &score)| Hit {
            doc: doc as u32 + 100,
            score,
        })
        .collect()
}

/// (doc, rank) of the eligible candidates, and (doc, rule) of the dropped ones.
type Split = (Vec<(u32, u32)>, Vec<(u32, FilterKind)>);

fn split(filtered: &Filtered) -> Split {
    (
        filtered.eligible.iter().map(|c| (c.doc, c.rank)).collect(),
        filtered
            .dropped
            .iter()
            .map(|(c, kind)| (c.doc, *kind))
            .collect(),
    )
}

#[test]
fn each_filter_alone_keeps_and_drops_exactly() {
    let candidates = hits(&[0.9, 0.8, 0.76, 0.75, 0.7, 0.6, 0.5]);
    let positives = [0.85, 0.8];
    let off = FilterConfig {
        relative_margin: None,
        absolute_margin: None,
        max_score: None,
        min_rank: 1,
        max_rank: None,
    };
    let run = |config: FilterConfig| {
        split(&filter_candidates("q", &candidates, &positives, &config).unwrap())
    };

    let (kept, dropped) = run(off);
    assert_eq!(kept.len(), 7);
    assert!(dropped.is_empty());

    // Each rule alone: the (doc, rank) it keeps, and the docs it drops, each recorded with the rule's kind.
    let cases = [
        // Relative: ceiling 0.8 x 0.95 = 0.76; 0.76 itself is not below it.
        (
            FilterConfig {
                relative_margin: Some(0.05),
                ..off
            },
            FilterKind::RelativeMargin,
            vec![(103, 4), (104, 5), (105, 6), (106, 7)],
            vec![100, 101, 102],
        ),
        // Absolute: ceiling 0.8 - 0.1 = 0.7 (dropped: equal is not below).
        (
            FilterConfig {
                absolute_margin: Some(0.1),
                ..off
            },
            FilterKind::AbsoluteMargin,
            vec![(105, 6), (106, 7)],
            vec![100, 101, 102, 103, 104],
        ),
        (
            FilterConfig {
                max_score: Some(0.75),
                ..off
            },
            FilterKind::MaxScore,
            vec![(104, 5), (105, 6), (106, 7)],
            vec![100, 101, 102, 103],
        ),
        (
            FilterConfig {
                min_rank: 3,
                max_rank: Some(5),
                ..off
            },
            FilterKind::RankWindow,
            vec![(102, 3), (103, 4), (104, 5)],
            vec![100, 101, 105, 106],
        ),
    ];
    for (config, kind, want_kept, want_dropped) in cases {
        let (kept, dropped) = run(config);
        assert_eq!(kept, want_kept, "{kind:?}");
        let want_dropped: Vec<_> = want_dropped.into_iter().map(|doc| (doc, kind)).collect();
        assert_eq!(dropped, want_dropped, "{kind:?}");
    }
}

#[test]
fn combined_filters_record_the_first_rule_that_drops() {
    let candidates = hits(&[0.9, 0.8, 0.76, 0.75, 0.7, 0.6, 0.5, 0.4]);
    let config = FilterConfig {
        relative_margin: Some(0.05),
        absolute_margin: Some(0.12),
        max_score: Some(0.85),
        min_rank: 2,
        max_rank: Some(7),
    };
    let filtered = filter_candidates("q", &candidates, &[0.8, 0.95], &config).unwrap();
    let (kept, dropped) = split(&filtered);
    // Ceilings: max 0.85, relative 0.76, absolute 0.68; the rank window drops ranks 1 and 8 first.
    assert_eq!(kept, vec![(105, 6), (106, 7)]);
    assert_eq!(
        dropped,
        vec![
            (100, FilterKind::RankWindow),
            (101, FilterKind::RelativeMargin),
            (102, FilterKind::RelativeMargin),
            (103, FilterKind::AbsoluteMargin),
            (104, FilterKind::AbsoluteMargin),
            (107, FilterKind::RankWindow),
        ]
    );
    assert_eq!(filtered.min_positive, Some(0.8));
    assert_eq!(filtered.ceiling, Some(0.8 - 0.12));

    let max_first = filter_candidates(
        "q",
        &hits(&[0.9]),
        &[0.8],
        &FilterConfig {
            max_score: Some(0.5),
            ..config
        },
    )
    .unwrap();
    assert_eq!(split(&max_first).1, vec![(100, FilterKind::RankWindow)]);
    let no_positives = filter_candidates("q", &candidates, &[], &config).unwrap();
    assert_eq!(no_positives.ceiling, Some(0.85));
    assert_eq!(
        split(&no_positives).0,
        vec![(101, 2), (102, 3), (103, 4), (104, 5), (105, 6), (106, 7)]
    );
}

#[test]
fn filter_rejects_unranked_or_non_finite_scores() {
    let config = FilterConfig::default();
    assert!(matches!(
        filter_candidates("q7", &hits(&[0.5, 0.6]), &[0.9], &config),
        Err(MineError::UnrankedCandidates { position: 1, .. })
    ));
    assert!(matches!(
        filter_candidates("q7", &hits(&[0.5]), &[f32::NAN], &config),
        Err(MineError::NonFiniteScore {
            what: "a positive",
            ..
        })
    ));
    assert!(matches!(
        filter_candidates(
            "q7",
            &hits(&[0.5]),
            &[0.9],
            &FilterConfig {
                relative_margin: Some(2.0),
                ..config
            }
        ),
        Err(MineError::FilterConfig {
            field: "relative_margin",
            ..
        })
    ));
}

/// One query end to end on a random corpus: search without exclusions (so positives do reach the candidate
/// list, the worst case for the sampler), filter, sample.
struct World {
    corpus: Vec<f32>,
    queries: Vec<f32>,
    dim: usize,
    ids: Vec<String>,
    positives: Vec<Vec<u32>>,
}

impl World {
    fn random(rng: &mut ChaCha8Rng, docs: usize, queries: usize, dim: usize) -> Self {
        let positives = (0..queries)
            .map(|_| {
                (0..rng.random_range(1..4))
                    .map(|_| rng.random_range(0..docs as u32))
                    .collect()
            })
            .collect();
        Self {
            corpus: vectors(rng, docs, dim, true),
            queries: vectors(rng, queries, dim, true),
            dim,
            ids: shuffled_ids(rng, docs),
            positives,
        }
    }

    fn mine(
        &self,
        k: usize,
        filter: &FilterConfig,
        sample: &SampleConfig,
    ) -> Vec<(Vec<f32>, Filtered, QueryNegatives)> {
        let order = DocOrder::from_ids(&self.ids).unwrap();
        let queries = Matrix::new("queries", &self.queries, self.dim).unwrap();
        let corpus = CorpusPart::whole(Matrix::new("corpus", &self.corpus, self.dim).unwrap());
        let lists = exact_top_k(
            &queries,
            &corpus,
            &order,
            &Exclusions::none(queries.rows()),
            &config(k, 16, 48),
        )
        .unwrap();
        let pool = RandomPool::all(&order);
        lists
            .iter()
            .enumerate()
            .map(|(query, list)| {
                let vector = queries.row(query);
                let positive_scores: Vec<f32> = self.positives[query]
                    .iter()
                    .map(|&doc| corpus.score(vector, doc).unwrap())
                    .collect();
                let filtered = filter_candidates("q", list, &positive_scores, filter).unwrap();
                let qid = format!("q{query}");
                let input = QueryInput {
                    qid: &qid,
                    positives: &self.positives[query],
                    filtered: &filtered,
                };
                let negatives = sample_negatives(&input, &pool, &order, sample, |doc| {
                    corpus.score(vector, doc)
                })
                .unwrap();
                (positive_scores, filtered, negatives)
            })
            .collect()
    }
}

#[test]
fn no_positive_is_ever_a_negative() {
    for seed in 0..150u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (docs, queries, dim) = (
            rng.random_range(2..60),
            rng.random_range(1..6),
            rng.random_range(1..6),
        );
        let world = World::random(&mut rng, docs, queries, dim);
        let filter = FilterConfig {
            relative_margin: [None, Some(0.05)][rng.random_range(0..2)],
            min_rank: 1,
            ..FilterConfig::default()
        };
        let sample = SampleConfig {
            negatives_per_group: rng.random_range(1..24),
            hard_ratio: rng.random_range(0..3),
            random_ratio: rng.random_range(1..3),
            seed,
        };
        let k = rng.random_range(1..docs + 3);
        for (query, (_, _, negatives)) in world.mine(k, &filter, &sample).iter().enumerate() {
            let positives = &world.positives[query];
            assert!(negatives.positives.iter().all(|p| positives.contains(p)));
            let mut docs: Vec<u32> = negatives
                .negatives
                .iter()
                .map(|negative| negative.doc)
                .collect();
            assert!(
                docs.iter().all(|doc| !positives.contains(doc)),
                "seed {seed}: positive sampled as negative"
            );
            docs.sort_unstable();
            docs.dedup();
            assert_eq!(
                docs.len(),
                negatives.negatives.len(),
                "seed {seed}: duplicate negative"
            );
        }
    }
}

#[test]
fn sampling_is_deterministic_per_seed_and_qid_and_independent_of_numbering() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let world = World::random(&mut rng, 400, 4, 8);
    let filter = FilterConfig::default();
    let sample = SampleConfig::default();
    let first = world.mine(60, &filter, &sample);
    let again = world.mine(60, &filter, &sample);
    assert_eq!(
        first.iter().map(|(_, _, n)| n).collect::<Vec<_>>(),
        again.iter().map(|(_, _, n)| n).collect::<Vec<_>>()
    );
    let reseeded = world.mine(60, &filter, &SampleConfig { seed: 1, ..sample });
    assert_ne!(
        first[0].2, reseeded[0].2,
        "another seed draws other negatives"
    );

    // The same documents numbered differently (as another shard might) give the same negatives by id.
    let mut permutation: Vec<usize> = (0..400).collect();
    permutation.shuffle(&mut rng);
    let mut renumbered = World {
        corpus: vec![0.0; world.corpus.len()],
        queries: world.queries.clone(),
        dim: world.dim,
        ids: vec![String::new(); 400],
        positives: Vec::new(),
    };
    for (old, &new) in permutation.iter().enumerate() {
        renumbered.corpus[new * 8..(new + 1) * 8]
            .copy_from_slice(&world.corpus[old * 8..(old + 1) * 8]);
        renumbered.ids[new] = world.ids[old].clone();
    }
    renumbered.positives = world
        .positives
        .iter()
        .map(|list| {
            list.iter()
                .map(|&doc| permutation[doc as usize] as u32)
                .collect()
        })
        .collect();
    let moved = renumbered.mine(60, &filter, &sample);
    let by_id = |world: &World,
                 negatives: &QueryNegatives|
     -> Vec<(String, NegativeKind, u32, Option<u32>)> {
        negatives
            .negatives
            .iter()
            .map(|n| {
                (
                    world.ids[n.doc as usize].clone(),
                    n.kind,
                    n.score.to_bits(),
                    n.rank,
                )
            })
            .collect()
    };
    for ((_, _, a), (_, _, b)) in first.iter().zip(&moved) {
        assert_eq!(by_id(&world, a), by_id(&renumbered, b));
    }
}

#[test]
fn sampling_respects_the_ratio_and_reports_shortfalls() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let world = World::random(&mut rng, 500, 3, 6);
    let count = |negatives: &QueryNegatives, kind| negatives.of_kind(kind).count();
    let filter = FilterConfig {
        relative_margin: None,
        ..FilterConfig::default()
    };
    for (hard_ratio, random_ratio, n, hard) in [
        (1, 1, 16, 8),
        (3, 1, 4, 3),
        (0, 1, 5, 0),
        (1, 0, 5, 5),
        (1, 2, 7, 2),
    ] {
        let sample = SampleConfig {
            negatives_per_group: n,
            hard_ratio,
            random_ratio,
            seed: 4,
        };
        assert_eq!(sample.split(), (hard, n - hard));
        for (_, _, negatives) in world.mine(100, &filter, &sample) {
            assert_eq!(count(&negatives, NegativeKind::Hard), hard);
            assert_eq!(count(&negatives, NegativeKind::Random), n - hard);
            assert_eq!(negatives.short(), 0);
            let hard_ranks: Vec<u32> = negatives.negatives.iter().filter_map(|n| n.rank).collect();
            assert!(
                hard_ranks.windows(2).all(|pair| pair[0] < pair[1]),
                "hard negatives in rank order"
            );
            assert!(
                negatives.negatives[..hard]
                    .iter()
                    .all(|n| n.kind == NegativeKind::Hard),
                "hard negatives first"
            );
        }
    }

    // Three eligible candidates, a pool of five with one positive in it: short of hard and random ones.
    let order =
        DocOrder::from_ids(&(0..10).map(|doc| format!("d{doc}")).collect::<Vec<_>>()).unwrap();
    let filtered = Filtered {
        eligible: (0..3)
            .map(|doc| Candidate {
                doc,
                score: 0.5,
                rank: doc + 1,
            })
            .collect(),
        dropped: vec![(
            Candidate {
                doc: 3,
                score: 0.9,
                rank: 4,
            },
            FilterKind::RelativeMargin,
        )],
        min_positive: Some(0.95),
        ceiling: Some(0.9025),
        config: FilterConfig::default(),
    };
    let pool = RandomPool::new(&[9, 3, 8, 7, 6, 0], &order).unwrap();
    let input = QueryInput {
        qid: "q",
        positives: &[9],
        filtered: &filtered,
    };
    let sample = SampleConfig {
        negatives_per_group: 10,
        ..SampleConfig::default()
    };
    let negatives =
        sample_negatives(&input, &pool, &order, &sample, |doc| Ok(doc as f32 / 10.0)).unwrap();
    assert_eq!((negatives.short_hard, negatives.short_random), (2, 2));
    let mut randoms: Vec<(u32, f32)> = negatives
        .of_kind(NegativeKind::Random)
        .map(|n| (n.doc, n.score))
        .collect();
    randoms.sort_by_key(|&(doc, _)| doc);
    // Pool minus the positive (9), the suspected false negative (3) and the hard picks (0): 6, 7, 8.
    assert_eq!(randoms, vec![(6, 0.6), (7, 0.7), (8, 0.8)]);
    assert_eq!(negatives.short(), 4);
    assert_eq!(negatives.ceiling, Some(0.9025));
}

#[test]
fn statistics_equal_hand_computed_values() {
    use umrank::mine::Negative;
    let negative = |doc, kind, score: f32| Negative {
        doc,
        kind,
        score,
        rank: (kind == NegativeKind::Hard).then_some(doc),
    };
    let filtered = |dropped: Vec<FilterKind>| Filtered {
        eligible: Vec::new(),
        dropped: dropped
            .into_iter()
            .map(|kind| {
                (
                    Candidate {
                        doc: 0,
                        score: 0.0,
                        rank: 1,
                    },
                    kind,
                )
            })
            .collect(),
        min_positive: None,
        ceiling: None,
        config: FilterConfig::default(),
    };
    let query_one = QueryNegatives {
        positives: vec![1, 9],
        negatives: vec![
            negative(2, NegativeKind::Hard, 0.5),
            negative(3, NegativeKind::Hard, 0.7),
            negative(4, NegativeKind::Random, 0.1),
        ],
        short_hard: 0,
        short_random: 1,
        filter: FilterConfig::default(),
        ceiling: None,
    };
    let query_two = QueryNegatives {
        positives: vec![5],
        negatives: vec![
            negative(6, NegativeKind::Hard, 0.3),
            negative(7, NegativeKind::Random, 0.2),
            negative(8, NegativeKind::Random, 0.0),
        ],
        short_hard: 2,
        short_random: 0,
        filter: FilterConfig::default(),
        ceiling: None,
    };
    let mut builder = StatsBuilder::new();
    builder.add_query(
        "q1",
        &[1.0, 0.5],
        &filtered(vec![FilterKind::RelativeMargin, FilterKind::RankWindow]),
        &query_one,
    );
    builder.add_query(
        "q2",
        &[0.0, 0.25, 0.75],
        &filtered(vec![FilterKind::RelativeMargin]),
        &query_two,
    );
    builder.add_query(
        "q3",
        &[],
        &filtered(vec![]),
        &QueryNegatives {
            positives: vec![],
            negatives: vec![],
            short_hard: 0,
            short_random: 0,
            filter: FilterConfig::default(),
            ceiling: None,
        },
    );
    builder.add_query_without_positives("q4");
    let stats = builder.finish();

    // Positives 0, 0.25, 0.5, 0.75, 1: p5 at position 0.2 -> 0.05, p95 at 3.8 -> 0.95.
    let positives = stats.positives.as_ref().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert_eq!(positives.count, 5);
    for (got, expected) in [
        (positives.min, 0.0),
        (positives.p5, 0.05),
        (positives.p25, 0.25),
        (positives.p50, 0.5),
        (positives.p75, 0.75),
        (positives.p95, 0.95),
        (positives.max, 1.0),
        (positives.mean, 0.5),
    ] {
        assert!(close(got, expected), "{got} vs {expected}");
    }
    // Hard 0.3, 0.5, 0.7 (f32): median 0.5, p25 at position 0.5 -> 0.4.
    let hard = stats.hard_negatives.as_ref().unwrap();
    assert_eq!(hard.count, 3);
    assert!(close(hard.p50, f64::from(0.5f32)));
    assert!(close(
        hard.p25,
        (f64::from(0.3f32) + f64::from(0.5f32)) / 2.0
    ));
    let random = stats.random_negatives.as_ref().unwrap();
    assert_eq!(random.count, 3);
    assert!(close(random.max, f64::from(0.2f32)));
    assert_eq!(stats.dropped.relative_margin, 2);
    assert_eq!(stats.dropped.rank_window, 1);
    assert_eq!(stats.dropped.total(), 3);
    assert_eq!((stats.queries, stats.groups), (3, 3));
    assert_eq!(stats.queries_without_positives, 1);
    assert_eq!((stats.queries_short, stats.total_short), (2, 3));
    // Per-query gaps: (0.6 - 0.1) and (0.3 - 0.1): mean 0.35.
    let f = |score: f32| f64::from(score);
    let first_gap = (f(0.5) + f(0.7)) / 2.0 - f(0.1);
    let second_gap = f(0.3) - (f(0.2) + f(0.0)) / 2.0;
    assert!(close(
        stats.mean_gap.unwrap(),
        (first_gap + second_gap) / 2.0
    ));
    assert!((stats.mean_gap.unwrap() - 0.35).abs() < 1e-6);

    let table = stats.to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("scores") && lines[0].ends_with("mean"));
    assert_eq!(lines[0].len(), lines[1].len(), "rows align with the header");
    assert_eq!(lines[1].len(), lines[2].len());
    assert!(lines[1].starts_with("positives") && lines[1].contains("0.9500"));
    assert!(table.contains("relative margin 2"));
    assert!(table.contains("queries short of negatives: 2 of 3 (total shortfall 3)"));
    assert!(table.contains("queries with negatives: 3 (3 groups, one per positive)"));
    assert!(table.contains("queries without positives (no negatives): 1"));
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["dropped"]["relative_margin"], 2);
    assert_eq!(json["total_short"], 3);
    assert_eq!(json["positives"]["p95"], 0.95);
    assert!(json["hard_negatives"]["count"] == 3 && json["random_negatives"]["mean"].is_f64());
}

#[test]
fn queries_beyond_one_wave_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (docs, dim, queries_n) = (40, 3, 8192 + 300);
    let corpus = vectors(&mut rng, docs, dim, true);
    let queries = vectors(&mut rng, queries_n, dim, true);
    let ids = shuffled_ids(&mut rng, docs);
    let order = DocOrder::from_ids(&ids).unwrap();
    let gold: Vec<Vec<u32>> = (0..queries_n)
        .map(|query| vec![(query % docs) as u32])
        .collect();
    let exclusions = Exclusions::new(gold.clone());
    let problem = Problem {
        queries: Matrix::new("queries", &queries, dim).unwrap(),
        corpus: &corpus,
        dim,
        order: &order,
        exclusions: &exclusions,
    };
    let expected = brute_force(&queries, &corpus, dim, &ids, &gold, 5);
    assert_same(&problem.whole(&config(5, 16, 256)), &expected, "waves");
}
