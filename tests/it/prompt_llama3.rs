//! A Llama-3-template model trains and scores: the tiny Llama fixture (tests/fixtures/models/llama) with the
//! Llama-3 chat template and tokenizer of tests/fixtures/prompt_families/llama3, prompted with `prompt =
//! "template"`. LoRA SFT lowers its loss; the adapter records its prompt; `umrank score` with the adapter gives the
//! yes/no logits of the model's own forward pass on the template prompt's ids.

use crate::common::cli::umrank_ok;
use crate::common::train_data::{cpu_run_settings, small_demo_data, train_inputs};

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use umrank::models::decoder::{select_positions, AttentionLayout, Decoder};
use umrank::models::text::chat_template::ChatTemplates;
use umrank::models::text::prompt::{PromptBuilder, RerankInput, Side};
use umrank::models::text::prompt_format::{PromptFormat, PromptSettings, PROMPT_FILE};
use umrank::models::text::tokenizer::Tokenizer;
use umrank::schema::outputs;
use umrank::train::config::DataFormat;
use umrank::train::log::read_log;
use umrank::train::{train, TrainConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny Llama's weights with the Llama-3 tokenizer and chat template beside them, in `dir/model`.
fn llama3_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    fs::create_dir_all(&model).unwrap();
    for entry in fs::read_dir(root().join("tests/fixtures/models/llama")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        fs::copy(
            root()
                .join("tests/fixtures/prompt_families/llama3")
                .join(file),
            model.join(file),
        )
        .unwrap();
    }
    model
}

fn config(model: &Path) -> TrainConfig {
    toml::from_str(&format!(
        "model = '{}'\nprompt = 'template'\ntune = 'lora'\nmax_len = 512\nnegatives = 2\ngroups_per_batch = 4\n\
         lr = 2e-2\ndecay = 'constant'\nlora_r = 4\nlora_alpha = 8\nlora_dropout = 0\ncheckpoint_every = 0\n\
         max_steps = 8\ntrain_lm_head = false",
        model.display()
    ))
    .unwrap()
}

const PAIRS: [(&str, &str, &str); 2] = [
    (
        "Retrieve the passage that answers the question.",
        "What colour is the sky on Mars at noon?",
        "Martian skies are butterscotch by day.",
    ),
    (
        "",
        "sunsets over Gale crater",
        "They turn blue <|eot_id|> at dusk.",
    ),
];

/// z_yes and z_no of the decoder with the adapter, by its own forward pass over the template prompt of each pair.
fn forward_logits(model: &Path, adapter: &Path) -> Vec<[f32; 2]> {
    let mut decoder = Decoder::from_model_dir(model, DType::F32, &Device::Cpu).unwrap();
    decoder.load_lora(adapter, 0).unwrap();
    decoder.freeze_lora();
    let tokenizer = Tokenizer::from_dir(model).unwrap();
    let template = ChatTemplates::from_dir(model)
        .unwrap()
        .into_selected(None, false)
        .unwrap();
    let settings = PromptSettings {
        format: PromptFormat::Template,
        ..PromptSettings::default()
    };
    let builder = PromptBuilder::for_settings(&tokenizer, &settings, Some(&template)).unwrap();
    let answers = tokenizer.yes_no_ids().unwrap();
    PAIRS
        .iter()
        .map(|(instruction, query, document)| {
            let input = RerankInput {
                instruction,
                query: Side::text(query),
                document: Side::text(document),
            };
            let ids = builder.build(&input, usize::MAX).unwrap().ids;
            let len = ids.len();
            let tensor = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let positions = Tensor::arange(0u32, len as u32, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let layout = AttentionLayout::causal(len, DType::F32, &Device::Cpu).unwrap();
            let hidden = decoder
                .forward(&tensor, &positions, &layout, false)
                .unwrap();
            let last = select_positions(&hidden, &[(0, len - 1)]).unwrap();
            let logits = decoder
                .token_logits(&last, &[answers.yes, answers.no])
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            [logits[0], logits[1]]
        })
        .collect()
}

#[test]
fn a_llama3_template_model_trains_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let model = llama3_model(tmp.path());
    let out = tmp.path().join("train");
    train(
        &config(&model),
        &train_inputs(&data, DataFormat::Sft),
        &cpu_run_settings(&out, 3, "llama3", None),
    )
    .unwrap();
    let log = read_log(&out.join(outputs::train::TRAIN_LOG)).unwrap();
    assert_eq!(log.len(), 8);
    let (first, last) = (log[0].loss, log[log.len() - 1].loss);
    assert!(last < first, "loss {first} -> {last}");

    let adapter = out.join(outputs::train::ADAPTER);
    let recorded = PromptSettings::read_recorded(&adapter).unwrap().unwrap();
    assert_eq!(recorded.format, PromptFormat::Template);

    let pairs = tmp.path().join("pairs.jsonl");
    let lines: Vec<String> = PAIRS
        .iter()
        .map(|(instruction, query, document)| {
            serde_json::json!({"instruction": instruction, "query_text": query, "doc_text": document})
                .to_string()
        })
        .collect();
    fs::write(&pairs, lines.join("\n") + "\n").unwrap();
    let stdout = umrank_ok(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
    ]);
    let want = forward_logits(&model, &adapter);
    let got: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (score, [z_yes, z_no]) in got.iter().zip(&want) {
        let close = |a: f64, b: f32| (a - f64::from(b)).abs() <= 1e-4 * (1.0 + a.abs());
        assert!(
            close(score["z_yes"].as_f64().unwrap(), *z_yes),
            "{score} vs {z_yes}"
        );
        assert!(
            close(score["z_no"].as_f64().unwrap(), *z_no),
            "{score} vs {z_no}"
        );
    }

    // Asking for another prompt than the adapter was trained with is refused, naming the record.
    let (ok, _, stderr) = crate::common::cli::umrank(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--prompt",
        "paper",
    ]);
    assert!(!ok);
    assert!(stderr.contains(PROMPT_FILE), "{stderr}");
}
