//! PNG encoding of 8-bit grey or RGB pixels (label masks, overlays, phantoms): the one place
//! that calls `image`'s encoder.

use image::ImageEncoder;
use image::codecs::png::{CompressionType, PngEncoder};

pub use image::ExtendedColorType;
pub use image::codecs::png::FilterType;

/// `pixels` (rows of `w` grey or RGB bytes) as PNG, with fast compression and row filter
/// `filter` (`Adaptive`: image's default, smaller files; `Sub`: quicker, the daemon's).
pub fn encode_png(
    pixels: &[u8],
    w: u32,
    h: u32,
    color: ExtendedColorType,
    filter: FilterType,
) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, filter)
        .write_image(pixels, w, h, color)?;
    Ok(bytes)
}
