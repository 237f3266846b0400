//! What every image processor offers: the three input forms and the parallel batch.

use image::{DynamicImage, RgbImage};
use rayon::prelude::*;

use super::decode::{decode, into_rgb8, rgb8};
use super::error::PreprocessError;

/// One image to preprocess: still encoded (any format the `image` crate decodes) or already decoded.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    Encoded(&'a [u8]),
    Decoded(&'a DynamicImage),
}

/// An image processor that turns an 8-bit RGB image into one model input.
///
/// Implementors provide [`ImagePreprocessor::preprocess_rgb`]; decoding, colour conversion (transformers'
/// `convert_rgb`) and batching are shared.
pub trait ImagePreprocessor: Sync {
    type Output: Send;

    /// `do_convert_rgb`: whether non-RGB input is converted (alpha composited over white) or rejected.
    fn converts_to_rgb(&self) -> bool;

    fn preprocess_rgb(&self, image: &RgbImage) -> Result<Self::Output, PreprocessError>;

    fn preprocess_image(&self, image: &DynamicImage) -> Result<Self::Output, PreprocessError> {
        let rgb = rgb8(image, self.converts_to_rgb())?;
        self.preprocess_rgb(&rgb)
    }

    fn preprocess_bytes(&self, bytes: &[u8]) -> Result<Self::Output, PreprocessError> {
        self.preprocess_rgb(&into_rgb8(decode(bytes)?, self.converts_to_rgb())?)
    }

    fn preprocess(&self, input: ImageInput<'_>) -> Result<Self::Output, PreprocessError> {
        match input {
            ImageInput::Encoded(bytes) => self.preprocess_bytes(bytes),
            ImageInput::Decoded(image) => self.preprocess_image(image),
        }
    }

    /// Preprocesses the images in parallel on the current rayon pool; results come back in input order, one per
    /// input, so one bad image costs only its own slot.
    fn preprocess_batch(
        &self,
        inputs: &[ImageInput<'_>],
    ) -> Vec<Result<Self::Output, PreprocessError>> {
        inputs
            .par_iter()
            .map(|input| self.preprocess(*input))
            .collect()
    }
}
