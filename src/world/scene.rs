//! The scene model: what a demo image shows, and which scenes are near misses of each other.
//!
//! Everything the world claims about its data ("this negative differs from the positive in exactly one attribute",
//! "this instruction turns the source into the target") is computed here, on attributes, never by reading back
//! rendered pixels or captions.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// At most this many objects: with five positions, a scene always keeps a free position to move an object to.
pub const MAX_OBJECTS: usize = 3;

/// The outline of an object. Every shape's name starts with a consonant, so captions can always say "a".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
        Shape::Cross,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }
}

/// The fill colour of an object; chosen to stay distinguishable on every background the renderer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Cyan,
    Blue,
    Purple,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Cyan,
        Colour::Blue,
        Colour::Purple,
        Colour::Black,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Cyan => "cyan",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Black => "black",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// Where an object sits. The declaration order is reading order (rows top to bottom, then left to right), which
/// is the order a scene keeps its objects in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    TopLeft,
    TopRight,
    Centre,
    BottomLeft,
    BottomRight,
}

impl Position {
    pub const ALL: [Position; 5] = [
        Position::TopLeft,
        Position::TopRight,
        Position::Centre,
        Position::BottomLeft,
        Position::BottomRight,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Position::TopLeft => "top left",
            Position::TopRight => "top right",
            Position::Centre => "centre",
            Position::BottomLeft => "bottom left",
            Position::BottomRight => "bottom right",
        }
    }

    /// A stable small index, used to key per-position render jitter.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One object of a scene, fully described by its four attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub position: Position,
}

impl Object {
    /// How many of the four attributes differ.
    pub fn differences(&self, other: &Object) -> usize {
        usize::from(self.shape != other.shape)
            + usize::from(self.colour != other.colour)
            + usize::from(self.size != other.size)
            + usize::from(self.position != other.position)
    }

    /// The single change that turns `self` into `other`, when they differ in exactly one attribute.
    fn change_to(&self, other: &Object) -> Option<Change> {
        if self.differences(other) != 1 {
            return None;
        }
        Some(if self.shape != other.shape {
            Change::Shape(other.shape)
        } else if self.colour != other.colour {
            Change::Colour(other.colour)
        } else if self.size != other.size {
            Change::Size(other.size)
        } else {
            Change::Position(other.position)
        })
    }

    fn with(mut self, change: Change) -> Object {
        match change {
            Change::Shape(shape) => self.shape = shape,
            Change::Colour(colour) => self.colour = colour,
            Change::Size(size) => self.size = size,
            Change::Position(position) => self.position = position,
        }
        self
    }
}

/// The four attributes an edit can touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Shape,
    Colour,
    Size,
    Position,
}

impl Attribute {
    pub const ALL: [Attribute; 4] = [
        Attribute::Shape,
        Attribute::Colour,
        Attribute::Size,
        Attribute::Position,
    ];
}

/// A new value for one attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Shape(Shape),
    Colour(Colour),
    Size(Size),
    Position(Position),
}

impl Change {
    pub fn attribute(self) -> Attribute {
        match self {
            Change::Shape(_) => Attribute::Shape,
            Change::Colour(_) => Attribute::Colour,
            Change::Size(_) => Attribute::Size,
            Change::Position(_) => Attribute::Position,
        }
    }
}

/// One attribute of one object changed: the difference between a scene and its near miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Edit {
    /// The object as it is before the edit. Shapes are unique within a scene, so `object.shape` names it.
    pub object: Object,
    pub change: Change,
}

impl Edit {
    /// The edit that undoes `self`: it names the object as `self` leaves it and restores the old value.
    pub fn inverse(&self) -> Edit {
        let old = match self.change {
            Change::Shape(_) => Change::Shape(self.object.shape),
            Change::Colour(_) => Change::Colour(self.object.colour),
            Change::Size(_) => Change::Size(self.object.size),
            Change::Position(_) => Change::Position(self.object.position),
        };
        Edit {
            object: self.object.with(self.change),
            change: old,
        }
    }
}

/// Why a list of objects is not a scene.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SceneError {
    #[error("a scene holds 1 to {MAX_OBJECTS} objects, got {0}")]
    ObjectCount(usize),
    #[error("two objects share the shape {}: edit instructions could not say which one they mean", .0.name())]
    RepeatedShape(Shape),
    #[error("two objects share the position {}: they would cover each other", .0.name())]
    RepeatedPosition(Position),
}

/// A set of 1 to [`MAX_OBJECTS`] objects with distinct shapes and distinct positions, kept in reading order so
/// that equal scenes compare (and hash) equal whatever order their objects were listed in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scene {
    objects: Vec<Object>,
}

impl Scene {
    pub fn new(objects: Vec<Object>) -> Result<Scene, SceneError> {
        if objects.is_empty() || objects.len() > MAX_OBJECTS {
            return Err(SceneError::ObjectCount(objects.len()));
        }
        for (i, a) in objects.iter().enumerate() {
            for b in &objects[i + 1..] {
                if a.shape == b.shape {
                    return Err(SceneError::RepeatedShape(a.shape));
                }
                if a.position == b.position {
                    return Err(SceneError::RepeatedPosition(a.position));
                }
            }
        }
        Ok(Scene::from_valid(objects))
    }

    /// Callers guarantee distinct shapes and positions; only the order is normalised here.
    fn from_valid(mut objects: Vec<Object>) -> Scene {
        objects.sort_by_key(|object| object.position);
        Scene { objects }
    }

    /// The objects in reading order.
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// A random scene. Single-object scenes are rare (1 in 10) because there are only 400 of them and the world
    /// never repeats a scene; two and three objects share the rest 4:5.
    pub fn sample<R: Rng>(rng: &mut R) -> Scene {
        let count = match rng.random_range(0..10) {
            0 => 1,
            1..=4 => 2,
            _ => 3,
        };
        let shapes = rand::seq::index::sample(rng, Shape::ALL.len(), count);
        let positions = rand::seq::index::sample(rng, Position::ALL.len(), count);
        let objects = shapes
            .iter()
            .zip(positions.iter())
            .map(|(shape, position)| Object {
                shape: Shape::ALL[shape],
                colour: Colour::ALL[rng.random_range(0..Colour::ALL.len())],
                size: Size::ALL[rng.random_range(0..Size::ALL.len())],
                position: Position::ALL[position],
            })
            .collect();
        Scene::from_valid(objects)
    }

    /// Every scene exactly one attribute away, with the edit that leads there, in a fixed order (object, then
    /// attribute, then value). Shape and position changes only go to values no other object uses, so every
    /// neighbour is a valid scene.
    pub fn neighbours(&self) -> Vec<(Edit, Scene)> {
        let mut out = Vec::new();
        for (index, object) in self.objects.iter().enumerate() {
            for change in self.changes_for(object) {
                let mut objects = self.objects.clone();
                objects[index] = object.with(change);
                out.push((
                    Edit {
                        object: *object,
                        change,
                    },
                    Scene::from_valid(objects),
                ));
            }
        }
        out
    }

    fn changes_for(&self, object: &Object) -> Vec<Change> {
        let shape_free = |shape: &&Shape| self.objects.iter().all(|o| o.shape != **shape);
        let position_free =
            |position: &&Position| self.objects.iter().all(|o| o.position != **position);
        let shapes = Shape::ALL
            .iter()
            .filter(shape_free)
            .map(|&s| Change::Shape(s));
        let colours = Colour::ALL
            .iter()
            .filter(|&&c| c != object.colour)
            .map(|&c| Change::Colour(c));
        let sizes = Size::ALL
            .iter()
            .filter(|&&s| s != object.size)
            .map(|&s| Change::Size(s));
        let positions = Position::ALL
            .iter()
            .filter(position_free)
            .map(|&p| Change::Position(p));
        shapes
            .chain(colours)
            .chain(sizes)
            .chain(positions)
            .collect()
    }

    /// The number of attributes that differ under the best pairing of objects; `None` when the object counts
    /// differ (no pairing exists). Pairing by best match rather than by index matters: moving an object changes
    /// the reading order, yet it is still one change.
    pub fn distance(&self, other: &Scene) -> Option<usize> {
        self.best_pairing(other).map(|(cost, _)| cost)
    }

    /// The edit that turns `self` into `other`, when they are exactly one attribute apart.
    pub fn edit_to(&self, other: &Scene) -> Option<Edit> {
        let (cost, pairing) = self.best_pairing(other)?;
        if cost != 1 {
            return None;
        }
        self.objects.iter().zip(&pairing).find_map(|(object, &j)| {
            object.change_to(&other.objects[j]).map(|change| Edit {
                object: *object,
                change,
            })
        })
    }

    /// Applies an edit; `None` when the scene has no such object or the result would break the scene's rules.
    pub fn apply(&self, edit: &Edit) -> Option<Scene> {
        let index = self.objects.iter().position(|o| *o == edit.object)?;
        let mut objects = self.objects.clone();
        objects[index] = edit.object.with(edit.change);
        Scene::new(objects).ok()
    }

    /// The cheapest pairing of `self`'s objects (by index) onto `other`'s, and its cost. Scenes hold at most three
    /// objects, so trying all pairings (at most six) is exact and cheap.
    fn best_pairing(&self, other: &Scene) -> Option<(usize, Vec<usize>)> {
        if self.objects.len() != other.objects.len() {
            return None;
        }
        permutations(self.objects.len())
            .into_iter()
            .map(|pairing| {
                let cost = self
                    .objects
                    .iter()
                    .zip(&pairing)
                    .map(|(object, &j)| object.differences(&other.objects[j]))
                    .sum();
                (cost, pairing)
            })
            .min()
    }
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.objects.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{} {} {} @ {}",
                o.size.name(),
                o.colour.name(),
                o.shape.name(),
                o.position.name()
            )?;
        }
        Ok(())
    }
}

/// All orderings of `0..n`, in lexicographic order.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for first in 0..n {
        for rest in permutations(n - 1) {
            let mut p = vec![first];
            p.extend(rest.into_iter().map(|i| if i >= first { i + 1 } else { i }));
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn object(shape: Shape, colour: Colour, size: Size, position: Position) -> Object {
        Object {
            shape,
            colour,
            size,
            position,
        }
    }

    fn two_objects() -> Scene {
        Scene::new(vec![
            object(
                Shape::Square,
                Colour::Blue,
                Size::Small,
                Position::BottomRight,
            ),
            object(Shape::Circle, Colour::Red, Size::Large, Position::TopLeft),
        ])
        .unwrap()
    }

    #[test]
    fn objects_are_kept_in_reading_order() {
        let scene = two_objects();
        assert_eq!(scene.objects()[0].shape, Shape::Circle);
        assert_eq!(scene.objects()[1].shape, Shape::Square);
    }

    #[test]
    fn invalid_scenes_are_rejected_with_their_reason() {
        assert_eq!(Scene::new(vec![]), Err(SceneError::ObjectCount(0)));
        let a = object(Shape::Circle, Colour::Red, Size::Large, Position::TopLeft);
        let same_shape = object(Shape::Circle, Colour::Blue, Size::Small, Position::Centre);
        let same_place = object(Shape::Cross, Colour::Blue, Size::Small, Position::TopLeft);
        assert_eq!(
            Scene::new(vec![a, same_shape]),
            Err(SceneError::RepeatedShape(Shape::Circle))
        );
        assert_eq!(
            Scene::new(vec![a, same_place]),
            Err(SceneError::RepeatedPosition(Position::TopLeft))
        );
        let four = (0..4)
            .map(|i| object(Shape::ALL[i], Colour::Red, Size::Small, Position::ALL[i]))
            .collect();
        assert_eq!(Scene::new(four), Err(SceneError::ObjectCount(4)));
    }

    #[test]
    fn neighbours_are_valid_distinct_and_one_attribute_away() {
        let scene = two_objects();
        let neighbours = scene.neighbours();
        // Per object: 3 free shapes + 7 colours + 1 size + 3 free positions.
        assert_eq!(neighbours.len(), 2 * (3 + 7 + 1 + 3));
        let mut seen = std::collections::HashSet::new();
        for (edit, neighbour) in &neighbours {
            assert!(Scene::new(neighbour.objects().to_vec()).is_ok());
            assert_eq!(scene.distance(neighbour), Some(1));
            assert_eq!(neighbour.distance(&scene), Some(1));
            assert_eq!(scene.edit_to(neighbour), Some(*edit));
            assert_eq!(scene.apply(edit).as_ref(), Some(neighbour));
            assert_eq!(neighbour.apply(&edit.inverse()).as_ref(), Some(&scene));
            assert_eq!(neighbour.edit_to(&scene), Some(edit.inverse()));
            assert!(
                seen.insert(neighbour.clone()),
                "duplicate neighbour {neighbour}"
            );
        }
    }

    #[test]
    fn moving_an_object_past_another_is_still_one_change() {
        let scene = two_objects();
        let moved = Scene::new(vec![
            object(
                Shape::Square,
                Colour::Blue,
                Size::Small,
                Position::BottomRight,
            ),
            object(Shape::Circle, Colour::Red, Size::Large, Position::Centre),
        ])
        .unwrap();
        let edit = scene.edit_to(&moved).unwrap();
        assert_eq!(edit.object.shape, Shape::Circle);
        assert_eq!(edit.change, Change::Position(Position::Centre));
    }

    #[test]
    fn distance_counts_every_changed_attribute() {
        let scene = two_objects();
        let far = Scene::new(vec![
            object(
                Shape::Square,
                Colour::Green,
                Size::Large,
                Position::BottomRight,
            ),
            object(Shape::Circle, Colour::Red, Size::Large, Position::TopRight),
        ])
        .unwrap();
        assert_eq!(scene.distance(&far), Some(3));
        assert_eq!(scene.edit_to(&far), None);
        assert_eq!(scene.distance(&scene), Some(0));
        let single = Scene::new(vec![scene.objects()[0]]).unwrap();
        assert_eq!(scene.distance(&single), None);
    }

    #[test]
    fn sampled_scenes_are_valid_and_depend_on_the_seed() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..50).map(|_| Scene::sample(&mut rng)).collect::<Vec<_>>()
        };
        let scenes = draw(7);
        for scene in &scenes {
            assert!(Scene::new(scene.objects().to_vec()).is_ok());
        }
        assert_eq!(scenes, draw(7));
        assert_ne!(scenes, draw(8));
    }

    #[test]
    fn permutations_are_all_orderings() {
        assert_eq!(permutations(1), vec![vec![0]]);
        assert_eq!(permutations(3).len(), 6);
        let mut p = permutations(3);
        p.dedup();
        assert_eq!(p.len(), 6);
    }
}
