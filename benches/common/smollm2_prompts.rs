//! The SmolLM2 benchmarks' reranker prompts: seeded synthetic queries and documents of ordinary English words,
//! built into prompt token ids by umrank's prompt builder, so that umrank and the PyTorch peers run the same tokens.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use umrank::models::text::prompt::{PromptBuilder, RerankInput, Side};
use umrank::models::text::tokenizer::Tokenizer;

pub const INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query.";

/// Words the synthetic queries and documents are drawn from: ordinary English, a token or two each.
const WORDS: [&str; 48] = [
    "river", "city", "history", "energy", "market", "water", "school", "music", "garden",
    "science", "winter", "village", "ocean", "engine", "language", "forest", "bridge", "council",
    "island", "festival", "railway", "museum", "harvest", "climate", "planet", "doctor", "library",
    "mountain", "theatre", "network", "border", "coffee", "season", "factory", "painting",
    "election", "journey", "kitchen", "century", "mineral", "harbour", "novel", "station",
    "orchard", "weather", "castle", "valley", "signal",
];

/// Queries of a dozen words and documents of a few hundred, seeded: a group shares its query, and the prompt
/// builder cuts each document so that its prompt fits the budget.
pub struct Texts {
    /// `(query, document)`, group after group.
    pub pairs: Vec<(String, String)>,
}

impl Texts {
    /// `pairs` pairs, `per_query` to a query.
    pub fn new(pairs: usize, per_query: usize) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let mut words = |n: usize| -> String {
            (0..n)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut out = Vec::with_capacity(pairs);
        while out.len() < pairs {
            let query = words(12);
            for _ in 0..per_query.min(pairs - out.len()) {
                out.push((query.clone(), words(300)));
            }
        }
        Self { pairs: out }
    }
}

/// The token ids of `count` reranker prompts of at most `max_len` tokens, groups of `per_group` sharing their
/// query.
pub fn prompts(
    tokenizer: &Tokenizer,
    count: usize,
    per_group: usize,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let builder = PromptBuilder::reranker(tokenizer)?;
    Texts::new(count, per_group)
        .pairs
        .iter()
        .map(|(query, document)| {
            let input = RerankInput {
                instruction: INSTRUCTION,
                query: Side::text(query),
                document: Side::text(document),
            };
            Ok(builder.build(&input, max_len)?.ids)
        })
        .collect()
}
