//! Data-parallel training (issue 21) on the CPU, with ranks as threads and an in-process all-reduce: N ranks,
//! each on its slice of every micro-batch, make the update one rank makes on the whole batch (SFT, CL and a
//! unified objective; LoRA and full fine-tuning; with gradient accumulation and slices of unequal size), a run
//! resumed with another number of ranks ends where an uninterrupted one does, rank 0 alone writes the outputs,
//! and a failing rank stops the others with its rank named.
//!
//! AdamW's `eps` is 1e-3 here: with the default 1e-8 its first update is nearly the sign of each gradient
//! component, so a component that is zero up to float rounding could flip sign between two summation orders.
//! A larger `eps` makes the update a smooth function of the gradient, and the comparison then measures what it
//! is about: that the ranks' summed gradient is the one-rank gradient.

use crate::common::reference::to_f32;
use crate::common::train_data::{
    cpu_run_settings, small_demo_data, tiny_train_config, train_inputs, DemoData,
};

use std::path::Path;

use candle_core::Device;
use umrank::distributed::run_ranks;
use umrank::train::config::DataFormat;
use umrank::train::parallel::train_in_process;
use umrank::train::{
    prepare, train_prepared, train_prepared_on, RunSettings, TrainConfig, TrainInputs,
    TrainOutcome, TrainRunError,
};

/// The tiny VL model, four groups per micro-batch, two micro-batches per step, no LoRA dropout, with the keys
/// of `extra` on top.
fn config(extra: &str) -> TrainConfig {
    tiny_train_config("max_len = 512\ngroups_per_batch = 4\naccumulation = 2\nmax_steps = 3\nlr = 1e-2\neps = 1e-3\nwarmup_steps = 1\nlora_dropout = 0.0\ncheckpoint_every = 0", extra)
}

fn settings(out: &Path, stop_after: Option<u64>) -> RunSettings {
    cpu_run_settings(out, 5, "data-parallel", stop_after)
}

/// The trained weights, by name.
type Weights = Vec<(String, Vec<f32>)>;

fn one_rank(config: &TrainConfig, inputs: &TrainInputs, out: &Path) -> (TrainOutcome, Weights) {
    let prepared = prepare(config, inputs, 5, &Device::Cpu).unwrap();
    let (outcome, model) = train_prepared(config, prepared, &settings(out, None)).unwrap();
    (outcome, weights(&model))
}

fn weights(model: &umrank::train::model::TrainableReranker) -> Weights {
    model
        .trainable()
        .iter()
        .map(|(name, var)| (name.clone(), to_f32(var.as_tensor())))
        .collect()
}

fn assert_same_update(
    (one, one_weights): &(TrainOutcome, Weights),
    (many, many_weights): &(TrainOutcome, Weights),
    what: &str,
) {
    assert_eq!(one.log.len(), many.log.len(), "{what}: steps");
    for (a, b) in one.log.iter().zip(&many.log) {
        assert_eq!(a.groups, b.groups, "{what}: groups of step {}", a.step);
        assert_eq!(a.masked, b.masked, "{what}: masked of step {}", a.step);
        for (field, x, y) in [
            ("loss", a.loss, b.loss),
            ("sft_loss", a.sft_loss, b.sft_loss),
            ("cl_loss", a.cl_loss, b.cl_loss),
            ("grad_norm", a.grad_norm, b.grad_norm),
            ("w_pos", a.w_pos, b.w_pos),
            ("w_neg", a.w_neg, b.w_neg),
        ] {
            // Forward values in f32 over micro-batches of other shapes (a rank packs only its slice): the
            // rounding differs a little more than the update's, which is held to 1e-6 below.
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{what}: step {} {field} {x} vs {y}",
                a.step
            );
        }
    }
    assert_eq!(one_weights.len(), many_weights.len());
    let mut moved = 0;
    for ((name, a), (_, b)) in one_weights.iter().zip(many_weights) {
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{what}: {name} differs by {worst}");
        moved += usize::from(a.iter().any(|x| *x != 0.0));
    }
    assert!(moved > 0, "{what}: nothing trained");
}

/// One objective and tuning mode: one rank against 2 ranks (slices of 2 groups) and 3 ranks (1, 1 and 2).
fn check_equivalence(data: &DemoData, extra: &str, format: DataFormat, out: &Path) {
    let config = config(extra);
    let inputs = train_inputs(data, format);
    let single = one_rank(&config, &inputs, &out.join("one"));
    for world in [2, 3] {
        let dir = out.join(format!("ranks-{world}"));
        let (outcome, model) =
            train_in_process(&config, &inputs, &settings(&dir, None), world).unwrap();
        assert!(outcome.output.is_some(), "rank 0 writes the outputs");
        assert_same_update(
            &single,
            &(outcome, weights(&model)),
            &format!("{extra} on {world} ranks"),
        );
    }
}

#[test]
fn ranks_make_the_one_rank_update_for_sft_with_lora_and_full_tuning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    check_equivalence(
        &data,
        "objective = 'sft'\ntune = 'lora'",
        DataFormat::Sft,
        &tmp.path().join("lora"),
    );
    check_equivalence(
        &data,
        "objective = 'sft'\ntune = 'full'\ntrain_lm_head = true\ntrain_vision = true",
        DataFormat::Sft,
        &tmp.path().join("full"),
    );
}

#[test]
fn ranks_make_the_one_rank_update_for_cl_with_lora_and_full_tuning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    check_equivalence(
        &data,
        "objective = 'cl'\ndata = 'cl'\ntune = 'lora'",
        DataFormat::Cl,
        &tmp.path().join("lora"),
    );
    check_equivalence(
        &data,
        "objective = 'cl'\ndata = 'cl'\ntune = 'full'",
        DataFormat::Cl,
        &tmp.path().join("full"),
    );
}

#[test]
fn ranks_make_the_one_rank_update_for_a_unified_objective_with_lora_and_full_tuning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    let unified = "objective = 'unified'\nweight = 'cl'\ndirection = 'sft'\ntau = 0.2";
    check_equivalence(
        &data,
        &format!("{unified}\ntune = 'lora'"),
        DataFormat::Sft,
        &tmp.path().join("lora"),
    );
    check_equivalence(
        &data,
        &format!("{unified}\ntune = 'full'"),
        DataFormat::Sft,
        &tmp.path().join("full"),
    );
}

#[test]
fn a_run_resumed_on_another_number_of_ranks_ends_where_an_uninterrupted_one_does() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    let config = config("max_steps = 4\ncheckpoint_every = 1");
    let inputs = train_inputs(&data, DataFormat::Sft);
    let single = one_rank(&config, &inputs, &tmp.path().join("one"));

    let dir = tmp.path().join("resumed");
    let (first, _) = train_in_process(&config, &inputs, &settings(&dir, Some(2)), 2).unwrap();
    assert!(first.output.is_none() && first.log.len() == 2);
    let (second, model) = train_in_process(&config, &inputs, &settings(&dir, None), 3).unwrap();
    assert_eq!(second.resumed_from, 2);
    assert_same_update(&single, &(second, weights(&model)), "2 ranks, then 3");
}

#[test]
fn only_rank_0_writes_and_a_failing_rank_stops_the_others_with_its_rank_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    let config = config("max_steps = 1");
    let inputs = train_inputs(&data, DataFormat::Sft);

    let out = tmp.path().join("run");
    let outcomes = run_ranks(2, |rank| {
        let prepared = prepare(&config, &inputs, 5, &Device::Cpu)?;
        train_prepared_on(&config, prepared, &settings(&out, None), rank)
            .map(|(outcome, _)| outcome)
    })
    .unwrap_or_else(|f| panic!("rank {} failed", f.rank));
    assert!(outcomes[0].output.is_some());
    assert!(outcomes[1].output.is_none(), "rank 1 wrote outputs");

    // Rank 1 asks for more negatives than the groups have, so it has nothing to train on and stops; ranks 0
    // and 2 are then waiting for it in their first collective operation, and stop instead of hanging.
    let greedy = TrainConfig {
        negatives: Some(50),
        ..config.clone()
    };
    let failure = run_ranks(3, |rank| {
        let mine = if umrank::distributed::Collective::rank(rank) == 1 {
            &greedy
        } else {
            &config
        };
        let prepared = prepare(mine, &inputs, 5, &Device::Cpu)?;
        train_prepared_on(
            mine,
            prepared,
            &settings(&tmp.path().join("failing"), None),
            rank,
        )
        .map(drop)
    })
    .unwrap_err();
    assert_eq!(failure.rank, 1);
    let error: TrainRunError = failure.error.unwrap();
    assert!(
        error.to_string().contains("no group is left to train on"),
        "{error}"
    );

    let too_many = train_in_process(
        &config,
        &inputs,
        &settings(&tmp.path().join("many"), None),
        5,
    )
    .map(drop)
    .unwrap_err();
    assert!(
        too_many
            .to_string()
            .contains("groups_per_batch = 4 is below the 5 data-parallel ranks"),
        "{too_many}"
    );
}

#[test]
fn rank_0_hands_its_training_to_the_other_ranks_through_the_store() {
    use std::sync::Arc;
    use std::time::Duration;
    use umrank::distributed::process::ProcessGroup;
    use umrank::distributed::store::{TcpStore, TcpStoreServer};
    use umrank::distributed::InProcessRank;
    use umrank::train::parallel::{finish, follow, lead};

    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    let config = config("max_steps = 2");
    let inputs = train_inputs(&data, DataFormat::Sft);
    let single = one_rank(&config, &inputs, &tmp.path().join("one"));

    // Two processes' worth of ranks in one: the all-reduce in process, the store over TCP on localhost.
    let server = TcpStoreServer::start("127.0.0.1:0").unwrap();
    let port = server.address().port();
    let groups: Vec<ProcessGroup> = InProcessRank::group(2)
        .into_iter()
        .map(|rank| {
            let store = TcpStore::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
            ProcessGroup::new(Box::new(rank), Arc::new(store))
        })
        .collect();
    let out = tmp.path().join("led");
    std::thread::scope(|scope| {
        let follower = scope.spawn(|| follow(&groups[1], &Device::Cpu).unwrap());
        let prepared = prepare(&config, &inputs, 5, &Device::Cpu).unwrap();
        let (outcome, model) = lead(
            &groups[0],
            &config,
            &inputs,
            prepared,
            &settings(&out, None),
        )
        .unwrap();
        finish(&groups[0]).unwrap();
        assert_eq!(follower.join().unwrap(), 1, "rank 1 ran one training");
        assert_same_update(&single, &(outcome, weights(&model)), "led by rank 0");
    });
}
