//! Which inputs go through the model together.
//!
//! Inputs are grouped by modality (a batch is all text, all image or all image+text, as the models take them) and
//! sorted by length within a group, so that a batch pads little. The plan depends only on the inputs' content
//! and the batch size, never on the input order or on what is cached: a resumed run forms exactly the batches an
//! uninterrupted run forms, which is what makes their outputs byte-identical even on kernels whose rounding
//! depends on the batch shape.

use crate::modality::Modality;

/// One input of the plan: its modality, its length (tokens, characters or image tokens, as the model measures)
/// and its content key, which breaks ties so that the order is total.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub modality: Modality,
    pub length: usize,
    pub key: &'a str,
}

/// Batches of indices into `inputs`: text first, then image, then image+text; shortest first within each.
pub fn plan(inputs: &[PlanInput<'_>], batch_size: usize) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut batches = Vec::new();
    for modality in [Modality::Text, Modality::Image, Modality::ImageText] {
        let mut group: Vec<usize> = (0..inputs.len())
            .filter(|&i| inputs[i].modality == modality)
            .collect();
        group.sort_by(|&a, &b| {
            (inputs[a].length, inputs[a].key).cmp(&(inputs[b].length, inputs[b].key))
        });
        batches.extend(group.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(modality: Modality, length: usize, key: &str) -> PlanInput<'_> {
        PlanInput {
            modality,
            length,
            key,
        }
    }

    #[test]
    fn groups_by_modality_and_sorts_by_length_then_key() {
        let inputs = [
            input(Modality::Image, 0, "a"),
            input(Modality::Text, 9, "b"),
            input(Modality::Text, 2, "c"),
            input(Modality::ImageText, 4, "d"),
            input(Modality::Text, 2, "a"),
            input(Modality::Image, 0, "0"),
        ];
        assert_eq!(
            plan(&inputs, 2),
            vec![vec![4, 2], vec![1], vec![5, 0], vec![3]]
        );
    }

    #[test]
    fn the_plan_does_not_depend_on_input_order() {
        let inputs = [
            input(Modality::Text, 3, "x"),
            input(Modality::Text, 1, "y"),
            input(Modality::Text, 3, "w"),
        ];
        let reversed: Vec<_> = inputs.iter().rev().copied().collect();
        let keys = |inputs: &[PlanInput], batches: Vec<Vec<usize>>| -> Vec<Vec<String>> {
            batches
                .into_iter()
                .map(|b| b.into_iter().map(|i| inputs[i].key.to_string()).collect())
                .collect()
        };
        assert_eq!(
            keys(&inputs, plan(&inputs, 2)),
            keys(&reversed, plan(&reversed, 2))
        );
    }
}
