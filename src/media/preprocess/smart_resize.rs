//! Qwen2-VL's choice of input resolution.

use super::error::PreprocessError;

/// Widest aspect ratio Qwen2-VL accepts; thinner images would collapse to a one-patch-wide strip.
const MAX_ASPECT_RATIO: f64 = 200.0;

/// The `(height, width)` an image of `height` x `width` is resized to: both multiples of `factor`
/// (patch_size * merge_size), the pixel count kept within `[min_pixels, max_pixels]` by scaling both sides with one
/// factor, so the aspect ratio survives up to rounding.
///
/// This is transformers' `smart_resize` operation for operation, because the resulting grid decides how many vision
/// tokens the prompt holds: `round` is Python's round-half-to-even, the floating-point expressions are evaluated in
/// Python's order, and an aspect ratio above 200 is an error. Inputs for which Python would return a zero side
/// (only possible with `min_pixels` 0) or divide by zero are errors too.
pub fn smart_resize(
    height: u64,
    width: u64,
    factor: u64,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u64, u64), PreprocessError> {
    if height == 0 || width == 0 {
        return Err(PreprocessError::ZeroSize {
            what: "image",
            width,
            height,
        });
    }
    let ratio = height.max(width) as f64 / height.min(width) as f64;
    if ratio > MAX_ASPECT_RATIO {
        return Err(PreprocessError::AspectRatio {
            width,
            height,
            ratio,
        });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let mut h_bar = (h / f).round_ties_even() as u64 * factor;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor;
    if h_bar.saturating_mul(w_bar) > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as u64 * factor);
        w_bar = factor.max((w / beta / f).floor() as u64 * factor);
    } else if h_bar.saturating_mul(w_bar) < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as u64 * factor;
        w_bar = (w * beta / f).ceil() as u64 * factor;
    }
    if h_bar == 0 || w_bar == 0 {
        return Err(PreprocessError::ZeroSize {
            what: "smart_resize target",
            width: w_bar,
            height: h_bar,
        });
    }
    Ok((h_bar, w_bar))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_like_python() {
        // 42 / 28 = 1.5 -> 2 and 70 / 28 = 2.5 -> 2: both sides land on 56.
        assert_eq!(smart_resize(42, 70, 28, 0, 1 << 40).unwrap(), (56, 56));
    }

    #[test]
    fn rejects_extreme_aspect_ratio_but_allows_200() {
        assert!(smart_resize(1, 200, 28, 3136, 1_003_520).is_ok());
        assert!(matches!(
            smart_resize(1, 201, 28, 3136, 1_003_520),
            Err(PreprocessError::AspectRatio { .. })
        ));
    }

    #[test]
    fn zero_sides_are_errors() {
        assert!(matches!(
            smart_resize(0, 5, 28, 3136, 1_003_520),
            Err(PreprocessError::ZeroSize { .. })
        ));
        assert!(matches!(
            smart_resize(10, 10, 28, 0, 1_003_520),
            Err(PreprocessError::ZeroSize { .. })
        ));
    }
}
