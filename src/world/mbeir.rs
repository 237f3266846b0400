//! Writing a planned world in the M-BEIR on-disk layout, so that it enters umrank through the same ingest as real
//! M-BEIR data:
//!
//! ```text
//! query/<split>/mbeir_<name>_<split>.jsonl
//! cand_pool/local/mbeir_<name>_cand_pool.jsonl
//! qrels/<split>/mbeir_<name>_<split>_qrels.txt
//! instructions/query_instructions.tsv
//! images/<split>/scene-NNNNN[-alt].png
//! world.json
//! ```
//!
//! Files are written in a fixed order with content that depends only on the plan; records serialise their fields
//! in declaration order, which is M-BEIR's key order.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use super::config::Split;
use super::error::WorldError;
use super::plan::World;
use super::render::{encode_png, render};
use super::summary::WorldSummary;
use super::tasks::{Dataset, Modality, Task};

/// One line of a query file.
#[derive(Serialize)]
struct QueryRecord<'a> {
    qid: &'a str,
    query_txt: Option<&'a str>,
    query_img_path: Option<&'a str>,
    query_modality: Modality,
    /// Serialises as null: world queries have no source content.
    query_src_content: (),
    pos_cand_list: Vec<&'a str>,
    neg_cand_list: Vec<&'a str>,
    task_id: u8,
}

/// One line of a candidate pool.
#[derive(Serialize)]
struct CandidateRecord<'a> {
    did: &'a str,
    txt: Option<&'a str>,
    img_path: Option<&'a str>,
    modality: Modality,
    /// Serialises as null: world candidates have no source content.
    src_content: (),
}

/// Writes every file of `world` under `root` (which must exist) and returns the counts it wrote.
pub fn write(world: &World, root: &Path) -> Result<WorldSummary, WorldError> {
    write_images(world, root)?;
    for dataset in &world.datasets {
        for split in Split::ALL {
            write_queries(world, dataset, split, root)?;
            write_qrels(dataset, split, root)?;
        }
        write_pool(world, dataset, root)?;
    }
    write_instructions(root)?;
    let summary = WorldSummary::of(world);
    let path = root.join("world.json");
    let mut out = create(&path)?;
    serde_json::to_writer_pretty(&mut out, &summary).map_err(|source| WorldError::Json {
        path: path.clone(),
        source,
    })?;
    out.write_all(b"\n")
        .map_err(WorldError::io("write", &path))?;
    finish(out, &path)?;
    Ok(summary)
}

/// Renders and writes every image, in parallel: each file's bytes depend only on its own spec.
fn write_images(world: &World, root: &Path) -> Result<(), WorldError> {
    for split in Split::ALL {
        let dir = root.join("images").join(split.name());
        fs::create_dir_all(&dir).map_err(WorldError::io("create directory", dir))?;
    }
    world.images.par_iter().try_for_each(|spec| {
        let scene = &world.scenes[spec.scene].scene;
        let image = render(scene, &spec.style, world.config.image_side);
        let bytes = encode_png(&image).map_err(|source| WorldError::Encode {
            path: spec.path.clone(),
            source,
        })?;
        let path = root.join(&spec.path);
        fs::write(&path, bytes).map_err(WorldError::io("write", path))
    })
}

fn write_queries(
    world: &World,
    dataset: &Dataset,
    split: Split,
    root: &Path,
) -> Result<(), WorldError> {
    let task = dataset.task;
    let path = root.join("query").join(split.name()).join(format!(
        "mbeir_{}_{}.jsonl",
        task.name(),
        split.name()
    ));
    let dids = |indices: &[usize]| -> Vec<&str> {
        indices
            .iter()
            .map(|&i| dataset.pool[i].did.as_str())
            .collect()
    };
    let records = dataset
        .queries
        .iter()
        .filter(|q| q.split == split)
        .map(|query| QueryRecord {
            qid: &query.qid,
            query_txt: query.text.as_deref(),
            query_img_path: query.image.map(|i| world.images[i].path.as_str()),
            query_modality: task.query_modality(),
            query_src_content: (),
            pos_cand_list: dids(&query.positives),
            neg_cand_list: dids(&query.negatives),
            task_id: task.task_id(),
        });
    write_jsonl(&path, records)
}

fn write_pool(world: &World, dataset: &Dataset, root: &Path) -> Result<(), WorldError> {
    let task = dataset.task;
    let path = root
        .join("cand_pool")
        .join("local")
        .join(format!("mbeir_{}_cand_pool.jsonl", task.name()));
    let records = dataset.pool.iter().map(|candidate| CandidateRecord {
        did: &candidate.did,
        txt: candidate.text.as_deref(),
        img_path: candidate.image.map(|i| world.images[i].path.as_str()),
        modality: task.candidate_modality(),
        src_content: (),
    });
    write_jsonl(&path, records)
}

/// `qid 0 did relevance task_id`, one line per positive, as M-BEIR's qrels files have them.
fn write_qrels(dataset: &Dataset, split: Split, root: &Path) -> Result<(), WorldError> {
    let task = dataset.task;
    let path = root.join("qrels").join(split.name()).join(format!(
        "mbeir_{}_{}_qrels.txt",
        task.name(),
        split.name()
    ));
    let mut out = create(&path)?;
    for query in dataset.queries.iter().filter(|q| q.split == split) {
        for &positive in &query.positives {
            let did = &dataset.pool[positive].did;
            writeln!(out, "{} 0 {did} 1 {}", query.qid, task.task_id())
                .map_err(WorldError::io("write", &path))?;
        }
    }
    finish(out, &path)
}

fn write_instructions(root: &Path) -> Result<(), WorldError> {
    let path = root.join("instructions").join("query_instructions.tsv");
    let mut out = create(&path)?;
    let mut lines = vec![
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4".to_string(),
    ];
    lines.extend(Task::ALL.iter().map(|task| {
        format!(
            "{}\t{}\t{}\t{}\t{}",
            task.query_modality().as_str(),
            task.candidate_modality().as_str(),
            task.name(),
            task.dataset_id(),
            task.prompts().join("\t")
        )
    }));
    for line in lines {
        writeln!(out, "{line}").map_err(WorldError::io("write", &path))?;
    }
    finish(out, &path)
}

fn write_jsonl<T: Serialize>(
    path: &Path,
    records: impl Iterator<Item = T>,
) -> Result<(), WorldError> {
    let mut out = create(path)?;
    for record in records {
        serde_json::to_writer(&mut out, &record).map_err(|source| WorldError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        out.write_all(b"\n")
            .map_err(WorldError::io("write", path))?;
    }
    finish(out, path)
}

/// Creates `path` and its parent directories.
fn create(path: &Path) -> Result<BufWriter<File>, WorldError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(WorldError::io("create directory", parent))?;
    }
    let file = File::create(path).map_err(WorldError::io("create", path))?;
    Ok(BufWriter::new(file))
}

/// Flushes explicitly: a `BufWriter` dropped with unwritten data would swallow the error.
fn finish(mut out: BufWriter<File>, path: &Path) -> Result<(), WorldError> {
    out.flush().map_err(WorldError::io("write", path))
}
