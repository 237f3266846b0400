//! Image preprocessing for the vision towers: transformers' Qwen2-VL, CLIP and SigLIP image processors, in Rust.
//!
//! Each processor reproduces its transformers counterpart: same colour conversion, same target size, same
//! resampling filter, bit-identical normalisation, same output layout. Qwen2-VL's reproduces either of
//! transformers' backends ([`ImageBackend`]): torchvision, what `AutoImageProcessor` loads by default, or PIL; CLIP
//! and SigLIP reproduce the PIL processors. Outputs are plain `Vec<f32>` with their shape; the model layer wraps
//! them in tensors.
//!
//! ```text
//! bytes --decode--> DynamicImage --convert_rgb--> RgbImage --resize--> RgbImage --normalise+layout--> f32
//! ```
//!
//! Build a processor from a model's `preprocessor_config.json` ([`PreprocessorConfig`]), then call
//! [`ImagePreprocessor::preprocess`] per image or [`ImagePreprocessor::preprocess_batch`] for a parallel batch.

mod chw;
mod clip;
mod config;
mod decode;
mod error;
pub mod jpeg;
mod normalize;
mod patchify;
mod pil_resize;
mod processor;
mod qwen2vl;
mod resize;
mod smart_resize;
mod torchvision_resize;

pub use chw::ChwPixels;
pub use clip::{ClipParams, ClipProcessor, ResizeTarget};
pub use config::{ChannelValues, PreprocessorConfig, ProcessorKind, SizeConfig, SizeDict};
pub use decode::{decode, into_rgb8, rgb8};
pub use error::PreprocessError;
pub use normalize::{
    Normalization, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use processor::{ImageInput, ImagePreprocessor};
pub use qwen2vl::{ImageTokenCounts, Qwen2VlParams, Qwen2VlProcessor, QwenPixels};
pub use resize::{resize_rgb, ImageBackend, Resample};
pub use smart_resize::smart_resize;
