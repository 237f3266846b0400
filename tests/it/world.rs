//! The demo world as the ingest sees it: the files under `out`, checked against the world's own scene model.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use umrank::world::scene::Scene;
use umrank::world::{
    generate, plan, Split, Task, World, WorldConfig, WorldError, WorldSize, WorldSummary,
};

fn small(seed: u64) -> WorldConfig {
    WorldConfig {
        seed,
        size: WorldSize::Small,
        ..WorldConfig::default()
    }
}

/// Generates `config` into a fresh temporary directory; returns the directory guard and the world's root.
fn generated(config: &WorldConfig) -> (TempDir, PathBuf, WorldSummary) {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("world");
    let summary = generate(config, &out).unwrap();
    (dir, out, summary)
}

/// Every file under `root`, by relative path, with its sha256.
fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    relative,
                    hex::encode(Sha256::digest(fs::read(&path).unwrap())),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn query_path(root: &Path, task: Task, split: Split) -> PathBuf {
    root.join(format!(
        "query/{0}/mbeir_{1}_{0}.jsonl",
        split.name(),
        task.name()
    ))
}

fn qrels_path(root: &Path, task: Task, split: Split) -> PathBuf {
    root.join(format!(
        "qrels/{0}/mbeir_{1}_{0}_qrels.txt",
        split.name(),
        task.name()
    ))
}

fn pool_path(root: &Path, task: Task) -> PathBuf {
    root.join(format!(
        "cand_pool/local/mbeir_{}_cand_pool.jsonl",
        task.name()
    ))
}

/// Every line of `path` has exactly the keys `expected`, in that order (M-BEIR's own order).
fn assert_keys(path: &Path, expected: &[&str]) {
    let wanted: BTreeSet<&str> = expected.iter().copied().collect();
    for line in fs::read_to_string(path).unwrap().lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let found: BTreeSet<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(found, wanted, "{line}");
        let offsets: Vec<usize> = expected
            .iter()
            .map(|key| line.find(&format!("\"{key}\":")).unwrap())
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "key order of {line}"
        );
    }
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// `"<dataset_id>:<n>"` with n >= 1.
fn assert_id(id: &str, task: Task) {
    let (dataset, n) = id
        .split_once(':')
        .unwrap_or_else(|| panic!("malformed id {id}"));
    assert_eq!(dataset, task.dataset_id().to_string(), "{id}");
    assert!(n.parse::<u64>().unwrap() >= 1, "{id}");
}

/// The scene behind each did of each task, as the plan has it.
fn scenes_by_did(world: &World) -> HashMap<(Task, String), &Scene> {
    world
        .datasets
        .iter()
        .flat_map(|d| {
            d.pool
                .iter()
                .map(move |c| ((d.task, c.did.clone()), &world.scenes[c.scene].scene))
        })
        .collect()
}

#[test]
fn same_seed_gives_a_byte_identical_tree_and_another_seed_does_not() {
    let (_a, root_a, _) = generated(&small(7));
    let (_b, root_b, _) = generated(&small(7));
    let (_c, root_c, _) = generated(&small(8));
    let (a, b, c) = (
        tree_hashes(&root_a),
        tree_hashes(&root_b),
        tree_hashes(&root_c),
    );
    assert!(a.len() > 100, "only {} files", a.len());
    assert_eq!(a, b);
    let changed = a
        .iter()
        .filter(|(path, hash)| c.get(*path) != Some(*hash))
        .count();
    assert!(
        changed > a.len() / 2,
        "only {changed} files differ between seeds"
    );
}

#[test]
fn summary_counts_match_the_files_and_the_size() {
    let config = small(1);
    let started = std::time::Instant::now();
    let (_dir, root, summary) = generated(&config);
    eprintln!("small world generated in {:?}", started.elapsed());

    let on_disk: WorldSummary =
        serde_json::from_str(&fs::read_to_string(root.join("world.json")).unwrap()).unwrap();
    assert_eq!(on_disk, summary);
    assert_eq!(summary.config, config);

    let size = config.size;
    let families: usize = Split::ALL.iter().map(|&s| size.families(s)).sum();
    let per_pool = families * (1 + size.near_misses());
    assert_eq!(summary.tasks.len(), Task::ALL.len());
    let mut expected_files = BTreeSet::from([
        "world.json".to_string(),
        "instructions/query_instructions.tsv".to_string(),
    ]);
    for (task, counts) in Task::ALL.iter().zip(&summary.tasks) {
        assert_eq!(counts.name, task.name());
        assert_eq!(counts.task_id, task.task_id());
        assert_eq!(counts.dataset_id, task.dataset_id());
        assert_eq!(counts.pool, per_pool);
        assert_eq!(jsonl(&pool_path(&root, *task)).len(), counts.pool);
        for split in Split::ALL {
            assert_eq!(*counts.queries.get(split), size.families(split));
            assert_eq!(*counts.qrels.get(split), size.families(split));
            assert_eq!(
                jsonl(&query_path(&root, *task, split)).len(),
                *counts.queries.get(split)
            );
            let qrels = fs::read_to_string(qrels_path(&root, *task, split)).unwrap();
            assert_eq!(qrels.lines().count(), *counts.qrels.get(split));
            for path in [
                query_path(&root, *task, split),
                qrels_path(&root, *task, split),
            ] {
                expected_files.insert(path.strip_prefix(&root).unwrap().to_string_lossy().into());
            }
        }
        expected_files.insert(
            pool_path(&root, *task)
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into(),
        );
    }
    assert_eq!(summary.images, 2 * per_pool);
    assert!(
        summary.images <= 300,
        "small world has {} images",
        summary.images
    );

    let files = tree_hashes(&root);
    let images: Vec<&String> = files.keys().filter(|p| p.starts_with("images/")).collect();
    assert_eq!(images.len(), summary.images);
    assert!(images.iter().all(|p| p.ends_with(".png")));
    let others: BTreeSet<String> = files
        .keys()
        .filter(|p| !p.starts_with("images/"))
        .cloned()
        .collect();
    assert_eq!(others, expected_files);
    assert!(!root.parent().unwrap().join(".world.partial").exists());
}

#[test]
fn records_are_well_formed_and_qrels_agree_with_positives() {
    let (_dir, root, _) = generated(&small(2));
    for task in Task::ALL {
        let pool = jsonl(&pool_path(&root, task));
        assert_keys(
            &pool_path(&root, task),
            &["did", "txt", "img_path", "modality", "src_content"],
        );
        let mut dids = HashSet::new();
        for record in &pool {
            let did = record["did"].as_str().unwrap();
            assert_id(did, task);
            assert!(dids.insert(did.to_string()), "duplicate did {did}");
            assert_eq!(record["modality"], task.candidate_modality().as_str());
            assert!(record["src_content"].is_null());
            let has_text = record["txt"].as_str().is_some_and(|t| !t.is_empty());
            let image = record["img_path"].as_str();
            match task.candidate_modality().as_str() {
                "text" => assert!(has_text && image.is_none(), "{record}"),
                _ => assert!(!has_text && image.is_some(), "{record}"),
            }
            if let Some(image) = image {
                assert!(root.join(image).is_file(), "missing {image}");
            }
        }

        let mut qids = HashSet::new();
        for split in Split::ALL {
            let mut positives = BTreeSet::new();
            assert_keys(
                &query_path(&root, task, split),
                &[
                    "qid",
                    "query_txt",
                    "query_img_path",
                    "query_modality",
                    "query_src_content",
                    "pos_cand_list",
                    "neg_cand_list",
                    "task_id",
                ],
            );
            for record in jsonl(&query_path(&root, task, split)) {
                let qid = record["qid"].as_str().unwrap().to_string();
                assert_id(&qid, task);
                assert!(qids.insert(qid.clone()), "duplicate qid {qid}");
                assert_eq!(record["task_id"], u64::from(task.task_id()));
                assert_eq!(record["query_modality"], task.query_modality().as_str());
                assert!(record["query_src_content"].is_null());
                let modality = task.query_modality().as_str();
                assert_eq!(record["query_txt"].is_string(), modality.contains("text"));
                assert_eq!(
                    record["query_img_path"].is_string(),
                    modality.contains("image")
                );
                if let Some(image) = record["query_img_path"].as_str() {
                    assert!(root.join(image).is_file(), "missing {image}");
                }
                let pos = string_list(&record["pos_cand_list"]);
                let neg = string_list(&record["neg_cand_list"]);
                assert_eq!(pos.len(), 1);
                assert!(!neg.is_empty());
                for did in pos.iter().chain(&neg) {
                    assert!(dids.contains(did), "{qid} names {did}, not in the pool");
                }
                assert!(neg.iter().all(|n| !pos.contains(n)));
                positives.extend(pos.into_iter().map(|did| (qid.clone(), did)));
            }
            let qrels: BTreeSet<(String, String)> =
                fs::read_to_string(qrels_path(&root, task, split))
                    .unwrap()
                    .lines()
                    .map(|line| {
                        let fields: Vec<&str> = line.split(' ').collect();
                        assert_eq!(fields.len(), 5, "{line}");
                        assert_eq!(fields[1], "0");
                        assert_eq!(fields[3], "1");
                        assert_eq!(fields[4], task.task_id().to_string());
                        (fields[0].to_string(), fields[2].to_string())
                    })
                    .collect();
            assert_eq!(qrels, positives, "{} {}", task.name(), split.name());
        }
    }
}

#[test]
fn instructions_have_one_row_per_task() {
    let (_dir, root, _) = generated(&small(3));
    let text = fs::read_to_string(root.join("instructions/query_instructions.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows[0][..4],
        ["query_modality", "cand_modality", "dataset", "dataset_id"]
    );
    assert_eq!(rows.len(), 1 + Task::ALL.len());
    for (row, task) in rows[1..].iter().zip(Task::ALL) {
        assert_eq!(row.len(), rows[0].len());
        assert_eq!(row[0], task.query_modality().as_str());
        assert_eq!(row[1], task.candidate_modality().as_str());
        assert_eq!(row[2], task.name());
        assert_eq!(row[3], task.dataset_id().to_string());
        assert!(row[4..].iter().all(|prompt| prompt.len() > 10));
    }
}

#[test]
fn files_describe_the_planned_scenes_and_splits_share_none() {
    let config = small(4);
    let (_dir, root, _) = generated(&config);
    let world = plan(&config).unwrap();
    let by_did = scenes_by_did(&world);
    let mut split_of_scene: HashMap<&Scene, Split> = HashMap::new();
    for task in Task::ALL {
        let dataset = world.datasets.iter().find(|d| d.task == task).unwrap();
        for record in jsonl(&pool_path(&root, task)) {
            let did = record["did"].as_str().unwrap();
            let candidate = dataset.pool.iter().find(|c| c.did == did).unwrap();
            assert_eq!(record["txt"].as_str(), candidate.text.as_deref());
            let planned_image = candidate.image.map(|i| world.images[i].path.as_str());
            assert_eq!(record["img_path"].as_str(), planned_image);
        }
        for split in Split::ALL {
            for record in jsonl(&query_path(&root, task, split)) {
                let qid = record["qid"].as_str().unwrap();
                let query = dataset.queries.iter().find(|q| q.qid == qid).unwrap();
                assert_eq!(query.split, split);
                assert_eq!(record["query_txt"].as_str(), query.text.as_deref());
                if let Some(image) = record["query_img_path"].as_str() {
                    assert!(image.starts_with(&format!("images/{}/", split.name())));
                }
                let mut scenes = vec![&world.scenes[query.scene].scene];
                for did in string_list(&record["pos_cand_list"])
                    .into_iter()
                    .chain(string_list(&record["neg_cand_list"]))
                {
                    scenes.push(by_did[&(task, did)]);
                }
                for scene in scenes {
                    let first = *split_of_scene.entry(scene).or_insert(split);
                    assert_eq!(first, split, "scene {scene} is in {first:?} and {split:?}");
                }
            }
        }
    }
    let seen: HashSet<Split> = split_of_scene.values().copied().collect();
    assert_eq!(seen.len(), 3);
}

#[test]
fn near_misses_differ_from_the_positive_in_exactly_one_attribute() {
    let config = small(5);
    let (_dir, root, _) = generated(&config);
    let world = plan(&config).unwrap();
    let by_did = scenes_by_did(&world);
    let mut checked = 0;
    for task in Task::ALL {
        for split in Split::ALL {
            for record in jsonl(&query_path(&root, task, split)) {
                let pos = string_list(&record["pos_cand_list"]);
                let positive = by_did[&(task, pos[0].clone())];
                let negatives: Vec<&Scene> = string_list(&record["neg_cand_list"])
                    .into_iter()
                    .map(|did| by_did[&(task, did)])
                    .collect();
                assert_eq!(negatives.len(), config.size.near_misses());
                for negative in &negatives {
                    assert_eq!(
                        positive.distance(negative),
                        Some(1),
                        "{positive} vs {negative}"
                    );
                    checked += 1;
                }
                let qid = record["qid"].as_str().unwrap();
                let dataset = world.datasets.iter().find(|d| d.task == task).unwrap();
                let query = dataset.queries.iter().find(|q| q.qid == qid).unwrap();
                let shown = &world.scenes[query.scene].scene;
                if task == Task::EditToImage {
                    // The query shows a near miss; its instruction undoes that near miss's one change.
                    assert!(negatives.contains(&shown));
                    let edit = shown.edit_to(positive).unwrap();
                    assert_eq!(shown.apply(&edit).as_ref(), Some(positive));
                    let instruction = record["query_txt"].as_str().unwrap();
                    assert!(
                        instruction.contains(edit.object.shape.name()),
                        "{instruction}"
                    );
                } else {
                    assert_eq!(shown, positive);
                }
            }
        }
    }
    assert_eq!(checked, 5 * 15 * config.size.near_misses());
}

#[test]
fn images_are_shared_across_tasks_and_written_once() {
    let (_dir, root, summary) = generated(&small(6));
    let mut referenced = BTreeSet::new();
    for task in Task::ALL {
        for record in jsonl(&pool_path(&root, task)) {
            referenced.extend(record["img_path"].as_str().map(String::from));
        }
        for split in Split::ALL {
            for record in jsonl(&query_path(&root, task, split)) {
                referenced.extend(record["query_img_path"].as_str().map(String::from));
            }
        }
    }
    assert_eq!(referenced.len(), summary.images);

    let pool_images = |task| -> BTreeMap<String, String> {
        jsonl(&pool_path(&root, task))
            .iter()
            .map(|r| {
                (
                    r["did"].as_str().unwrap().to_string(),
                    r["img_path"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let t2i = pool_images(Task::TextToImage);
    let i2i = pool_images(Task::ImageToImage);
    for split in Split::ALL {
        let t2i_queries = jsonl(&query_path(&root, Task::TextToImage, split));
        let i2t_queries = jsonl(&query_path(&root, Task::ImageToText, split));
        let i2i_queries = jsonl(&query_path(&root, Task::ImageToImage, split));
        for ((t2i_query, i2t_query), i2i_query) in
            t2i_queries.iter().zip(&i2t_queries).zip(&i2i_queries)
        {
            // One family per query index: the t2i positive is the very file the i2t and i2i queries show.
            let positive = &t2i[string_list(&t2i_query["pos_cand_list"])[0].as_str()];
            assert_eq!(
                i2t_query["query_img_path"].as_str(),
                Some(positive.as_str())
            );
            assert_eq!(
                i2i_query["query_img_path"].as_str(),
                Some(positive.as_str())
            );
            // The i2i positive is another file of the same scene, with other bytes and the same size.
            let alternative = &i2i[string_list(&i2i_query["pos_cand_list"])[0].as_str()];
            assert_ne!(alternative, positive);
            let (a, b) = (
                fs::read(root.join(positive)).unwrap(),
                fs::read(root.join(alternative)).unwrap(),
            );
            assert_ne!(a, b);
            let (a, b) = (
                image::load_from_memory(&a).unwrap(),
                image::load_from_memory(&b).unwrap(),
            );
            assert_eq!((a.width(), a.height()), (56, 56));
            assert_eq!((b.width(), b.height()), (56, 56));
        }
    }
}

#[test]
fn image_side_is_configurable() {
    let config = WorldConfig {
        image_side: 84,
        ..small(9)
    };
    let (_dir, root, _) = generated(&config);
    for record in jsonl(&query_path(&root, Task::ImageToText, Split::Test)) {
        let image = image::open(root.join(record["query_img_path"].as_str().unwrap())).unwrap();
        assert_eq!((image.width(), image.height()), (84, 84));
    }
}

#[test]
fn a_stale_partial_world_is_replaced() {
    let dir = TempDir::new().unwrap();
    let stale = dir.path().join(".world.partial");
    fs::create_dir_all(stale.join("images")).unwrap();
    fs::write(stale.join("images/left-over.png"), b"junk").unwrap();
    let out = dir.path().join("world");
    generate(&small(1), &out).unwrap();
    assert!(!stale.exists());
    assert!(!out.join("images/left-over.png").exists());
    let (_fresh, fresh_root, _) = generated(&small(1));
    assert_eq!(tree_hashes(&out), tree_hashes(&fresh_root));
}

#[test]
fn full_size_has_its_documented_counts() {
    let world = plan(&WorldConfig {
        size: WorldSize::Full,
        ..WorldConfig::default()
    })
    .unwrap();
    let summary = WorldSummary::of(&world);
    let per_split = |split| {
        summary
            .tasks
            .iter()
            .map(|t| *t.queries.get(split))
            .sum::<usize>()
    };
    assert_eq!(per_split(Split::Train), 1600);
    assert_eq!(per_split(Split::Val), 200);
    assert_eq!(per_split(Split::Test), 400);
    assert!(summary.tasks.iter().all(|t| t.pool == 2200));
    assert_eq!(summary.images, 4400);
    let distinct: HashSet<&Scene> = world.scenes.iter().map(|s| &s.scene).collect();
    assert_eq!(distinct.len(), 2200);
}

#[test]
fn existing_output_is_refused_and_an_empty_directory_is_filled() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("world");
    fs::create_dir(&out).unwrap();
    generate(&small(1), &out).unwrap();
    assert!(out.join("world.json").is_file());
    let err = generate(&small(1), &out).unwrap_err();
    assert!(matches!(err, WorldError::OutputExists { .. }), "{err}");
    assert!(err.to_string().contains(&out.display().to_string()));

    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        generate(&small(1), &file),
        Err(WorldError::OutputExists { .. })
    ));
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

#[test]
fn invalid_config_is_rejected_before_anything_is_written() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("world");
    let config = WorldConfig {
        image_side: 8,
        ..small(1)
    };
    let err = generate(&config, &out).unwrap_err();
    assert!(
        matches!(
            err,
            WorldError::InvalidConfig {
                field: "image_side",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}
