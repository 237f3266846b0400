//! Captions of scenes and instructions for edits, from a few templates.
//!
//! A caption always names every attribute of every object, so distinct scenes get distinct captions in any one
//! style; the style (sentence template, object phrasing, object order) only changes the wording. That is what lets
//! a paraphrase be a positive and a one-word-different caption of a near miss be a hard negative.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::scene::{Change, Edit, Object, Scene, Size};

const SENTENCES: [&str; 5] = [
    "{list}.",
    "A picture of {list}.",
    "An image showing {list} on a plain background.",
    "{count} on a plain background: {list}.",
    "This scene contains {list}.",
];

const PHRASES: [&str; 3] = [
    "a {size} {colour} {shape} in the {position}",
    "a {size} {shape} coloured {colour} at the {position}",
    "a {shape} ({size}, {colour}) in the {position}",
];

const COUNTS: [&str; 3] = ["One shape", "Two shapes", "Three shapes"];

/// In which order a caption lists the objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectOrder {
    /// Rows top to bottom, left to right.
    Reading,
    Reversed,
}

/// The wording of a caption: which sentence, which object phrase, which order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CaptionStyle {
    pub sentence: usize,
    pub phrase: usize,
    pub order: ObjectOrder,
}

impl CaptionStyle {
    pub fn sample<R: Rng>(rng: &mut R) -> CaptionStyle {
        CaptionStyle {
            sentence: rng.random_range(0..SENTENCES.len()),
            phrase: rng.random_range(0..PHRASES.len()),
            order: if rng.random_bool(0.5) {
                ObjectOrder::Reading
            } else {
                ObjectOrder::Reversed
            },
        }
    }

    /// A style that differs from `self` in sentence, phrase and order, so that a scene's paraphrase never shares
    /// its caption's wording (and, with two or more objects, lists them in another order).
    pub fn paraphrase<R: Rng>(&self, rng: &mut R) -> CaptionStyle {
        CaptionStyle {
            sentence: other_index(self.sentence, SENTENCES.len(), rng),
            phrase: other_index(self.phrase, PHRASES.len(), rng),
            order: match self.order {
                ObjectOrder::Reading => ObjectOrder::Reversed,
                ObjectOrder::Reversed => ObjectOrder::Reading,
            },
        }
    }
}

/// A uniformly chosen index in `0..len` other than `current`.
fn other_index<R: Rng>(current: usize, len: usize, rng: &mut R) -> usize {
    let pick = rng.random_range(0..len - 1);
    if pick >= current {
        pick + 1
    } else {
        pick
    }
}

/// The caption of `scene` in `style`.
pub fn caption(scene: &Scene, style: &CaptionStyle) -> String {
    let mut objects: Vec<&Object> = scene.objects().iter().collect();
    if style.order == ObjectOrder::Reversed {
        objects.reverse();
    }
    let phrases: Vec<String> = objects.iter().map(|o| phrase(o, style.phrase)).collect();
    let count = COUNTS[objects.len().saturating_sub(1).min(COUNTS.len() - 1)];
    let sentence = SENTENCES[style.sentence % SENTENCES.len()]
        .replace("{count}", count)
        .replace("{list}", &join(&phrases));
    capitalise(&sentence)
}

fn phrase(object: &Object, form: usize) -> String {
    PHRASES[form % PHRASES.len()]
        .replace("{size}", object.size.name())
        .replace("{colour}", object.colour.name())
        .replace("{shape}", object.shape.name())
        .replace("{position}", object.position.name())
}

/// "a", "a and b", "a, b and c".
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

const COLOUR_EDITS: [&str; 3] = [
    "make the {shape} {value}",
    "change the colour of the {shape} to {value}",
    "paint the {shape} {value}",
];

const SHAPE_EDITS: [&str; 3] = [
    "turn the {shape} into a {value}",
    "replace the {shape} with a {value}",
    "change the {shape} to a {value}",
];

const SIZE_EDITS: [&str; 3] = [
    "make the {shape} {value}",
    "change the size of the {shape} to {value}",
    "make the {shape} {comparative}",
];

const POSITION_EDITS: [&str; 3] = [
    "move the {shape} to the {value}",
    "put the {shape} in the {value}",
    "place the {shape} at the {value}",
];

/// How many instruction templates exist per kind of change; the world picks one of them per query.
pub const INSTRUCTION_TEMPLATES: usize = 3;

/// The instruction asking for `edit`. The object is named by its shape before the edit, which is unique in its
/// scene.
pub fn instruction(edit: &Edit, template: usize) -> String {
    let (templates, value, comparative) = match edit.change {
        Change::Colour(colour) => (COLOUR_EDITS, colour.name(), ""),
        Change::Shape(shape) => (SHAPE_EDITS, shape.name(), ""),
        Change::Size(Size::Small) => (SIZE_EDITS, Size::Small.name(), "smaller"),
        Change::Size(Size::Large) => (SIZE_EDITS, Size::Large.name(), "bigger"),
        Change::Position(position) => (POSITION_EDITS, position.name(), ""),
    };
    let text = templates[template % INSTRUCTION_TEMPLATES]
        .replace("{shape}", edit.object.shape.name())
        .replace("{value}", value)
        .replace("{comparative}", comparative);
    capitalise(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::scene::{Colour, Position, Shape};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn scene() -> Scene {
        Scene::new(vec![
            Object {
                shape: Shape::Circle,
                colour: Colour::Red,
                size: Size::Large,
                position: Position::TopLeft,
            },
            Object {
                shape: Shape::Square,
                colour: Colour::Blue,
                size: Size::Small,
                position: Position::Centre,
            },
        ])
        .unwrap()
    }

    #[test]
    fn caption_reads_naturally() {
        let style = CaptionStyle {
            sentence: 0,
            phrase: 0,
            order: ObjectOrder::Reading,
        };
        assert_eq!(
            caption(&scene(), &style),
            "A large red circle in the top left and a small blue square in the centre."
        );
        let style = CaptionStyle {
            sentence: 3,
            phrase: 1,
            order: ObjectOrder::Reversed,
        };
        assert_eq!(
            caption(&scene(), &style),
            "Two shapes on a plain background: a small square coloured blue at the centre and a large circle \
             coloured red at the top left."
        );
    }

    #[test]
    fn three_objects_are_listed_with_commas() {
        assert_eq!(join(&["a".into(), "b".into(), "c".into()]), "a, b and c");
    }

    #[test]
    fn paraphrases_change_every_part_of_the_style() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..100 {
            let style = CaptionStyle::sample(&mut rng);
            let other = style.paraphrase(&mut rng);
            assert_ne!(style.sentence, other.sentence);
            assert_ne!(style.phrase, other.phrase);
            assert_ne!(style.order, other.order);
            assert!(other.sentence < SENTENCES.len() && other.phrase < PHRASES.len());
            assert_ne!(caption(&scene(), &style), caption(&scene(), &other));
        }
    }

    #[test]
    fn near_misses_get_different_captions_in_every_style() {
        let base = scene();
        for sentence in 0..SENTENCES.len() {
            for phrase in 0..PHRASES.len() {
                for order in [ObjectOrder::Reading, ObjectOrder::Reversed] {
                    let style = CaptionStyle {
                        sentence,
                        phrase,
                        order,
                    };
                    let text = caption(&base, &style);
                    for (_, neighbour) in base.neighbours() {
                        assert_ne!(text, caption(&neighbour, &style));
                    }
                }
            }
        }
    }

    #[test]
    fn instructions_name_the_object_and_the_new_value() {
        let base = scene();
        let circle = base.objects()[0];
        let edit = |change| Edit {
            object: circle,
            change,
        };
        assert_eq!(
            instruction(&edit(Change::Colour(Colour::Green)), 0),
            "Make the circle green"
        );
        assert_eq!(
            instruction(&edit(Change::Position(Position::BottomRight)), 0),
            "Move the circle to the bottom right"
        );
        assert_eq!(
            instruction(&edit(Change::Size(Size::Small)), 2),
            "Make the circle smaller"
        );
        assert_eq!(
            instruction(&edit(Change::Shape(Shape::Cross)), 1),
            "Replace the circle with a cross"
        );
    }
}
