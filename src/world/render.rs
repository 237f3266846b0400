//! Rasterising scenes into small RGB images and encoding them as PNG.
//!
//! Geometry is expressed as fractions of the image side so that any side gives the same picture. Edges are
//! anti-aliased by 4x4 supersampling: at 56 px a small object is ~10 px across, and hard edges would make the
//! shapes look alike.

use std::io::Cursor;

use image::codecs::png::PngEncoder;
use image::{ImageEncoder, ImageError, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::scene::{Colour, Position, Scene, Shape, Size};

/// The background of every canonical rendering.
pub const CANONICAL_BACKGROUND: [u8; 3] = [240, 240, 240];

/// Backgrounds of alternative renderings; none equals [`CANONICAL_BACKGROUND`], so an alternative rendering is
/// never byte-identical to the canonical one.
pub const ALTERNATIVE_BACKGROUNDS: [[u8; 3]; 4] = [
    [222, 222, 222],
    [250, 244, 230],
    [228, 236, 246],
    [236, 246, 232],
];

/// Outline colours of alternative renderings.
pub const OUTLINES: [[u8; 3]; 2] = [[40, 40, 40], [255, 255, 255]];

/// The largest jitter, in thousandths of the side: small enough that an object stays in its named position.
pub const MAX_JITTER_PER_MILLE: i16 = 40;

const SUBSAMPLES: usize = 4;

/// How a scene is drawn, apart from the scene itself. Integers, not floats, so that a style can be stored,
/// compared and hashed exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RenderStyle {
    pub background: [u8; 3],
    /// Drawn around every object when set.
    pub outline: Option<[u8; 3]>,
    /// Offset (x, y) of the object at each [`Position`] (indexed by [`Position::index`]), in thousandths of the
    /// side. Keyed by position rather than by object so that near-miss scenes drawn in one style shift alike.
    pub jitter: [[i16; 2]; 5],
}

impl RenderStyle {
    /// Plain background, no outline, objects exactly on their positions.
    pub fn canonical() -> RenderStyle {
        RenderStyle {
            background: CANONICAL_BACKGROUND,
            outline: None,
            jitter: [[0, 0]; 5],
        }
    }
}

/// The fill colour of a [`Colour`].
pub fn rgb(colour: Colour) -> [u8; 3] {
    match colour {
        Colour::Red => [220, 40, 40],
        Colour::Orange => [245, 140, 20],
        Colour::Yellow => [235, 200, 0],
        Colour::Green => [40, 170, 60],
        Colour::Cyan => [0, 185, 200],
        Colour::Blue => [40, 80, 225],
        Colour::Purple => [145, 60, 190],
        Colour::Black => [25, 25, 25],
    }
}

/// The centre of a position, as fractions of the side.
fn anchor(position: Position) -> (f32, f32) {
    match position {
        Position::TopLeft => (0.25, 0.25),
        Position::TopRight => (0.75, 0.25),
        Position::Centre => (0.5, 0.5),
        Position::BottomLeft => (0.25, 0.75),
        Position::BottomRight => (0.75, 0.75),
    }
}

/// Half the extent of an object, as a fraction of the side. Two large objects on neighbouring positions do not
/// touch (the centre and a corner anchor are 0.354 sides apart; a large square reaches 0.17 along a diagonal).
fn radius(size: Size) -> f32 {
    match size {
        Size::Small => 0.085,
        Size::Large => 0.15,
    }
}

/// Whether the point (dx, dy) relative to the centre (y pointing down) lies inside `shape` of half-extent `r`.
fn contains(shape: Shape, dx: f32, dy: f32, r: f32) -> bool {
    let (ax, ay) = (dx.abs(), dy.abs());
    match shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => ax <= 0.8 * r && ay <= 0.8 * r,
        Shape::Diamond => ax + ay <= r,
        Shape::Cross => (ax <= r && ay <= 0.3 * r) || (ax <= 0.3 * r && ay <= r),
        // Apex at the top, base at 0.8 r below the centre, half-base 0.95 r: widens linearly downwards.
        Shape::Triangle => dy >= -r && dy <= 0.8 * r && ax <= 0.95 * r * (dy + r) / (1.8 * r),
    }
}

/// Draws `scene` in `style` on a `side` x `side` image.
pub fn render(scene: &Scene, style: &RenderStyle, side: u32) -> RgbImage {
    let mut image = RgbImage::from_pixel(side, side, Rgb(style.background));
    let scale = side as f32;
    let outline_width = (0.02 * scale).max(1.0);
    for object in scene.objects() {
        let (ax, ay) = anchor(object.position);
        let [jx, jy] = style.jitter[object.position.index()];
        let cx = (ax + f32::from(jx) / 1000.0) * scale;
        let cy = (ay + f32::from(jy) / 1000.0) * scale;
        let r = radius(object.size) * scale;
        let fill = rgb(object.colour);
        match style.outline {
            Some(outline) => {
                fill_shape(&mut image, object.shape, (cx, cy), r, outline);
                fill_shape(&mut image, object.shape, (cx, cy), r - outline_width, fill);
            }
            None => fill_shape(&mut image, object.shape, (cx, cy), r, fill),
        }
    }
    image
}

/// Blends `colour` over the pixels that `shape` covers, weighted by the covered fraction of each pixel.
fn fill_shape(image: &mut RgbImage, shape: Shape, (cx, cy): (f32, f32), r: f32, colour: [u8; 3]) {
    let side = image.width();
    let lo = |c: f32| ((c - r - 1.0).floor().max(0.0) as u32).min(side);
    let hi = |c: f32| ((c + r + 1.0).ceil().max(0.0) as u32).min(side);
    for y in lo(cy)..hi(cy) {
        for x in lo(cx)..hi(cx) {
            let coverage = coverage(shape, x as f32 - cx, y as f32 - cy, r);
            if coverage > 0.0 {
                let pixel = image.get_pixel_mut(x, y);
                for (channel, &target) in pixel.0.iter_mut().zip(&colour) {
                    let blended =
                        f32::from(*channel) * (1.0 - coverage) + f32::from(target) * coverage;
                    *channel = blended.round() as u8;
                }
            }
        }
    }
}

/// The fraction of the pixel whose top-left corner is at (px, py), relative to the centre, inside the shape.
fn coverage(shape: Shape, px: f32, py: f32, r: f32) -> f32 {
    let step = 1.0 / SUBSAMPLES as f32;
    let mut inside = 0usize;
    for sy in 0..SUBSAMPLES {
        for sx in 0..SUBSAMPLES {
            let dx = px + (sx as f32 + 0.5) * step;
            let dy = py + (sy as f32 + 0.5) * step;
            inside += usize::from(contains(shape, dx, dy, r));
        }
    }
    inside as f32 / (SUBSAMPLES * SUBSAMPLES) as f32
}

/// PNG bytes of `image`. The encoder is deterministic, so equal images give equal bytes.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Cursor::new(Vec::new());
    PngEncoder::new(&mut bytes).write_image(
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::scene::Object;

    fn scene(objects: &[(Shape, Colour, Size, Position)]) -> Scene {
        Scene::new(
            objects
                .iter()
                .map(|&(shape, colour, size, position)| Object {
                    shape,
                    colour,
                    size,
                    position,
                })
                .collect(),
        )
        .unwrap()
    }

    fn pixel_at(image: &RgbImage, fx: f32, fy: f32) -> [u8; 3] {
        let side = image.width() as f32;
        image.get_pixel((fx * side) as u32, (fy * side) as u32).0
    }

    #[test]
    fn objects_are_painted_at_their_positions_in_their_colours() {
        let s = scene(&[
            (Shape::Circle, Colour::Red, Size::Large, Position::TopLeft),
            (
                Shape::Square,
                Colour::Blue,
                Size::Small,
                Position::BottomRight,
            ),
        ]);
        let image = render(&s, &RenderStyle::canonical(), 56);
        assert_eq!(image.dimensions(), (56, 56));
        assert_eq!(pixel_at(&image, 0.25, 0.25), rgb(Colour::Red));
        assert_eq!(pixel_at(&image, 0.75, 0.75), rgb(Colour::Blue));
        assert_eq!(pixel_at(&image, 0.5, 0.5), CANONICAL_BACKGROUND);
        assert_eq!(pixel_at(&image, 0.75, 0.25), CANONICAL_BACKGROUND);
    }

    #[test]
    fn sizes_differ_in_painted_area() {
        let painted = |size| {
            let image = render(
                &scene(&[(Shape::Diamond, Colour::Green, size, Position::Centre)]),
                &RenderStyle::canonical(),
                56,
            );
            image
                .pixels()
                .filter(|p| p.0 != CANONICAL_BACKGROUND)
                .count()
        };
        let (small, large) = (painted(Size::Small), painted(Size::Large));
        assert!(small > 20, "small diamond covers only {small} px");
        assert!(large > 2 * small, "large {large} px vs small {small} px");
    }

    #[test]
    fn every_shape_paints_a_different_mask() {
        let masks: Vec<Vec<bool>> = Shape::ALL
            .iter()
            .map(|&shape| {
                let image = render(
                    &scene(&[(shape, Colour::Black, Size::Large, Position::Centre)]),
                    &RenderStyle::canonical(),
                    56,
                );
                image
                    .pixels()
                    .map(|p| p.0 != CANONICAL_BACKGROUND)
                    .collect()
            })
            .collect();
        for (i, a) in masks.iter().enumerate() {
            for b in &masks[i + 1..] {
                let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
                assert!(differing > 20, "two shapes differ in only {differing} px");
            }
        }
    }

    #[test]
    fn alternative_style_outlines_and_moves_objects() {
        let s = scene(&[(Shape::Square, Colour::Yellow, Size::Large, Position::Centre)]);
        let mut jitter = [[0, 0]; 5];
        jitter[Position::Centre.index()] = [MAX_JITTER_PER_MILLE, 0];
        let style = RenderStyle {
            background: ALTERNATIVE_BACKGROUNDS[0],
            outline: Some(OUTLINES[0]),
            jitter,
        };
        let canonical = render(&s, &RenderStyle::canonical(), 56);
        let alternative = render(&s, &style, 56);
        assert_ne!(canonical, alternative);
        assert_eq!(alternative.get_pixel(0, 0).0, ALTERNATIVE_BACKGROUNDS[0]);
        assert!(alternative.pixels().any(|p| p.0 == OUTLINES[0]));
        assert_eq!(pixel_at(&alternative, 0.54, 0.5), rgb(Colour::Yellow));
    }

    #[test]
    fn png_round_trips_and_is_deterministic() {
        let s = scene(&[(
            Shape::Triangle,
            Colour::Purple,
            Size::Large,
            Position::TopRight,
        )]);
        let image = render(&s, &RenderStyle::canonical(), 84);
        let bytes = encode_png(&image).unwrap();
        assert_eq!(
            bytes,
            encode_png(&render(&s, &RenderStyle::canonical(), 84)).unwrap()
        );
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded, image);
    }
}
