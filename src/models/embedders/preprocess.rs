//! CLIP/SigLIP image preprocessing as transformers' PIL image processors do it: resize (shortest edge or exact
//! size) in 8-bit with a Pillow-compatible convolution filter, center crop, rescale to [0, 1], normalise per channel.
//!
//! A stand-in, private to the embedders, until the shared preprocessing in `media::preprocess` lands; it reads
//! the same preprocessor_config.json fields and should give way to that module then.

use candle_core::{DType, Device, Tensor};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::checkpoint::ModelDir;
use super::error::{compute, EmbedderError};

pub(crate) const CONFIG_FILE: &str = "preprocessor_config.json";

/// The fields of preprocessor_config.json that CLIPImageProcessor and SiglipImageProcessor act on.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    size: Option<RawSize>,
    #[serde(default = "bicubic")]
    resample: u8,
    #[serde(default)]
    do_center_crop: bool,
    crop_size: Option<RawSize>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "one_over_255")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    image_mean: Option<[f64; 3]>,
    image_std: Option<[f64; 3]>,
}

#[derive(Debug, Deserialize)]
struct RawSize {
    shortest_edge: Option<u32>,
    height: Option<u32>,
    width: Option<u32>,
}

fn yes() -> bool {
    true
}

fn bicubic() -> u8 {
    3
}

fn one_over_255() -> f64 {
    1. / 255.
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
enum Resize {
    ShortestEdge(u32),
    Exact { height: u32, width: u32 },
}

/// Preprocessing resolved from a config: every step explicit, as it enters the fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ImagePreprocess {
    resize: Option<Resize>,
    /// PIL's resampling filter code (1 Lanczos, 2 bilinear, 3 bicubic).
    resample: u8,
    #[serde(skip)]
    filter: FilterType,
    crop: Option<(u32, u32)>,
    rescale: Option<f32>,
    normalize: Option<([f32; 3], [f32; 3])>,
    /// Height and width of every output image.
    output: (u32, u32),
}

impl ImagePreprocess {
    /// Reads preprocessor_config.json and checks that it produces `image_size` x `image_size` pixels, the size
    /// the vision tower's position embeddings were trained for.
    pub(crate) fn load(dir: &mut ModelDir, image_size: u32) -> Result<Self, EmbedderError> {
        let raw: RawConfig = dir.json(CONFIG_FILE)?;
        let bad = |field: &str, reason: String| dir.config_error(CONFIG_FILE, field, reason);
        let resize = match (raw.do_resize, &raw.size) {
            (false, _) => None,
            (true, Some(size)) => Some(resolve_resize(size).ok_or_else(|| {
                bad(
                    "size",
                    "expected {shortest_edge} or {height, width}".to_string(),
                )
            })?),
            (true, None) => return Err(bad("size", "missing while do_resize is true".into())),
        };
        let filter = pil_filter(raw.resample).ok_or_else(|| {
            bad(
                "resample",
                format!(
                    "PIL filter {} is not supported (1 Lanczos, 2 bilinear, 3 bicubic are)",
                    raw.resample
                ),
            )
        })?;
        let crop = match (raw.do_center_crop, &raw.crop_size) {
            (false, _) => None,
            (
                true,
                Some(RawSize {
                    height: Some(h),
                    width: Some(w),
                    ..
                }),
            ) => Some((*h, *w)),
            (true, _) => {
                return Err(bad(
                    "crop_size",
                    "expected {height, width} while do_center_crop is true".into(),
                ))
            }
        };
        let normalize = match (raw.do_normalize, raw.image_mean, raw.image_std) {
            (false, _, _) => None,
            (true, Some(mean), Some(std)) if std.iter().all(|s| *s > 0.) => {
                Some((mean.map(|m| m as f32), std.map(|s| s as f32)))
            }
            (true, _, _) => {
                return Err(bad(
                    "image_std",
                    "do_normalize needs image_mean and a positive image_std, three values each"
                        .into(),
                ))
            }
        };
        // The output size must not depend on the input: it is the crop, else an exact resize.
        let output = match (crop, resize) {
            (Some(crop), _) => Some(crop),
            (None, Some(Resize::Exact { height, width })) => Some((height, width)),
            (None, _) => None,
        };
        match output {
            Some(output) if output == (image_size, image_size) => Ok(Self {
                resize,
                resample: raw.resample,
                filter,
                crop,
                rescale: raw.do_rescale.then_some(raw.rescale_factor as f32),
                normalize,
                output,
            }),
            other => Err(bad(
                if crop.is_some() { "crop_size" } else { "size" },
                format!(
                    "images come out as {other:?} (height, width), the model takes {image_size}x{image_size}"
                ),
            )),
        }
    }

    /// `(batch, 3, height, width)` pixel values in `dtype`; `first` numbers the first image for errors.
    pub(crate) fn pixel_values(
        &self,
        images: &[RgbImage],
        first: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, EmbedderError> {
        let mut resizer = Resizer::new();
        let planes = images
            .iter()
            .enumerate()
            .map(|(k, image)| {
                self.one(&mut resizer, image)
                    .map_err(|reason| EmbedderError::Image {
                        index: first + k,
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (height, width) = self.output;
        let data: Vec<f32> = planes.into_iter().flatten().collect();
        Tensor::from_vec(
            data,
            (images.len(), 3, height as usize, width as usize),
            device,
        )
        .and_then(|t| t.to_dtype(dtype))
        .map_err(compute("pixel values"))
    }

    /// One image as channel-first f32 values.
    fn one(&self, resizer: &mut Resizer, image: &RgbImage) -> Result<Vec<f32>, String> {
        if image.width() == 0 || image.height() == 0 {
            return Err("the image has no pixels".into());
        }
        let resized = match self.resize {
            Some(resize) => self.resized(resizer, image, resize)?,
            None => image.clone(),
        };
        let cropped = match self.crop {
            Some(crop) => center_crop(&resized, crop)?,
            None => resized,
        };
        Ok(self.to_channels_first(&cropped))
    }

    /// Pillow resamples horizontally, rounds to 8 bits, then resamples vertically; fast_image_resize runs the
    /// passes the other way round for 8-bit images, which moves pixels at sharp edges by many levels (the clamped
    /// overshoot lands elsewhere). Two single-axis resizes keep Pillow's order.
    fn resized(
        &self,
        resizer: &mut Resizer,
        image: &RgbImage,
        resize: Resize,
    ) -> Result<RgbImage, String> {
        let (height, width) = output_size(image.height(), image.width(), resize);
        let horizontal = resize_one_axis(resizer, image, width, image.height(), self.filter)?;
        resize_one_axis(resizer, &horizontal, width, height, self.filter)
    }

    fn to_channels_first(&self, image: &RgbImage) -> Vec<f32> {
        let plane = (image.width() * image.height()) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                let mut v = f32::from(pixel[c]);
                if let Some(scale) = self.rescale {
                    v *= scale;
                }
                if let Some((mean, std)) = self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                out[c * plane + i] = v;
            }
        }
        out
    }
}

/// Resizes along at most one axis (or copies, when the size does not change).
fn resize_one_axis(
    resizer: &mut Resizer,
    image: &RgbImage,
    width: u32,
    height: u32,
    filter: FilterType,
) -> Result<RgbImage, String> {
    if (width, height) == image.dimensions() {
        return Ok(image.clone());
    }
    let src = Image::from_vec_u8(
        image.width(),
        image.height(),
        image.as_raw().clone(),
        PixelType::U8x3,
    )
    .map_err(|err| format!("cannot view the image for resizing: {err}"))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    resizer
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)),
        )
        .map_err(|err| format!("resize to {width}x{height} failed: {err}"))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| "the resized buffer has the wrong size".to_string())
}

fn resolve_resize(size: &RawSize) -> Option<Resize> {
    match (size.shortest_edge, size.height, size.width) {
        (Some(edge), _, _) if edge > 0 => Some(Resize::ShortestEdge(edge)),
        (None, Some(height), Some(width)) if height > 0 && width > 0 => {
            Some(Resize::Exact { height, width })
        }
        _ => None,
    }
}

/// Pillow's filters by code, as fast_image_resize reproduces them.
fn pil_filter(resample: u8) -> Option<FilterType> {
    match resample {
        1 => Some(FilterType::Lanczos3),
        2 => Some(FilterType::Bilinear),
        3 => Some(FilterType::CatmullRom),
        _ => None,
    }
}

/// transformers' `get_resize_output_image_size` without `max_size`: the short side becomes `edge`, the long side
/// scales with it and is truncated toward zero, as Python's `int()` does.
fn output_size(height: u32, width: u32, resize: Resize) -> (u32, u32) {
    match resize {
        Resize::Exact { height, width } => (height, width),
        Resize::ShortestEdge(edge) => {
            let (short, long) = (height.min(width), height.max(width));
            let scaled = (f64::from(edge) * f64::from(long) / f64::from(short)) as u32;
            if width <= height {
                (scaled, edge)
            } else {
                (edge, scaled)
            }
        }
    }
}

/// numpy's center crop: offsets `(size - crop) // 2`. transformers pads an image smaller than the crop; with a
/// shortest-edge resize to at least the crop that cannot happen, so it is an error here.
fn center_crop(image: &RgbImage, (height, width): (u32, u32)) -> Result<RgbImage, String> {
    if image.height() < height || image.width() < width {
        return Err(format!(
            "{}x{} (width x height) after resizing is smaller than the {width}x{height} crop",
            image.width(),
            image.height()
        ));
    }
    let top = (image.height() - height) / 2;
    let left = (image.width() - width) / 2;
    Ok(image::imageops::crop_imm(image, left, top, width, height).to_image())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_the_long_side_like_python_int() {
        // 224 * 500 / 333 = 336.33 -> 336; portrait keeps the width as the short side.
        assert_eq!(output_size(333, 500, Resize::ShortestEdge(224)), (224, 336));
        assert_eq!(output_size(500, 333, Resize::ShortestEdge(224)), (336, 224));
        // Square and upscaling.
        assert_eq!(output_size(10, 10, Resize::ShortestEdge(32)), (32, 32));
        assert_eq!(output_size(29, 37, Resize::ShortestEdge(32)), (32, 40));
    }

    #[test]
    fn center_crop_offsets_round_down() {
        let image = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let cropped = center_crop(&image, (2, 2)).unwrap();
        // left = (5 - 2) / 2 = 1, top = (4 - 2) / 2 = 1.
        assert_eq!(cropped.get_pixel(0, 0).0, [1, 1, 0]);
        assert_eq!(cropped.get_pixel(1, 1).0, [2, 2, 0]);
        assert!(center_crop(&image, (5, 2)).is_err());
    }
}
