//! PNG and JPEG slices, decoded to what PIL's `convert('RGB')` gives the original model.
//!
//! JPEG is decoded by libjpeg-turbo ([`super::turbo`]), the library Pillow bundles, with
//! PIL's settings (islow IDCT, fancy upsampling), so every pixel equals Pillow 13's: a grey
//! JPEG (PIL mode `L`) is copied into R, G and B; YCbCr and Adobe RGB files are converted to
//! RGB by libjpeg; CMYK and YCCK files are read as PIL does, as inverted (Adobe) CMYK, then
//! converted with PIL's `cmyk2rgb`. PIL refuses JPEGs that are not 8-bit or that end early,
//! and so does this reader; other corrupt-data warnings are decoded through, as by PIL.
//!
//! PNG stays with the image/png crates, which decode it losslessly; the conversion follows
//! Pillow 13: grey (and grey+alpha) is copied into R, G and B; alpha is dropped; palettes
//! are expanded; 16-bit colour keeps the high byte of each sample (`RGB;16B`). A 16-bit grey
//! PNG is the odd one: PIL opens it as `I;16` and its conversion to RGB **saturates** each
//! value at 255 instead of scaling it, so a 16-bit CT PNG turns almost white. The reader
//! copies that behaviour, because the model input must be what the original would have seen;
//! store CT as DICOM (or windowed 8-bit) to keep the detail. `tests/fixtures/pil/` (written
//! by `scripts/reference/pil_fixtures.py`) checks both formats against Pillow byte for byte.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader};
use turbojpeg_sys as tj;

use super::turbo::{ColorSpace, Jpeg, JpegError};
use super::{Rejection, Slice, SliceFormat, SliceMeta, SliceOptions};

/// Decode one PNG into a [`Slice`] without HU.
pub(super) fn read_png(bytes: &[u8], opts: &SliceOptions) -> Result<Slice, Rejection> {
    let corrupt = |e: image::ImageError| Rejection::Corrupt(e.to_string());
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png)
        .into_dimensions()
        .map_err(corrupt)?;
    check_size(width, height, opts)?;
    let img = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png)
        .decode()
        .map_err(corrupt)?;
    Ok(raster_slice(width, height, to_pil_rgb(img), SliceFormat::Png))
}

/// Decode one JPEG into a [`Slice`] without HU, as PIL's `Image.open(f).convert('RGB')`.
pub(super) fn read_jpeg(bytes: &[u8], opts: &SliceOptions) -> Result<Slice, Rejection> {
    let jpeg_error = |e: JpegError| match e {
        JpegError::Unsupported(why) => Rejection::UnsupportedEncoding(format!("JPEG: {why}")),
        JpegError::Corrupt(why) => Rejection::Corrupt(format!("JPEG: {why}")),
    };
    let (max_width, max_height) = opts.max_pixels;
    let jpeg = Jpeg::open(bytes, u64::from(max_width) * u64::from(max_height)).map_err(jpeg_error)?;
    let header = jpeg.header;
    check_size(header.width, header.height, opts)?;
    if header.precision != 8 {
        // PIL: "cannot handle 12-bit layers"
        return Err(Rejection::UnsupportedEncoding(format!(
            "{}-bit JPEG",
            header.precision
        )));
    }
    let rgb = match header.color {
        ColorSpace::Gray => grey_to_rgb(
            jpeg.decode8(tj::TJPF_TJPF_GRAY, 1, false)
                .map_err(jpeg_error)?
                .into_iter(),
        ),
        ColorSpace::Rgb | ColorSpace::YCbCr => {
            jpeg.decode8(tj::TJPF_TJPF_RGB, 3, false).map_err(jpeg_error)?
        }
        ColorSpace::Cmyk | ColorSpace::Ycck => {
            cmyk_to_rgb(&jpeg.decode8(tj::TJPF_TJPF_CMYK, 4, false).map_err(jpeg_error)?)
        }
    };
    Ok(raster_slice(header.width, header.height, rgb, SliceFormat::Jpeg))
}

fn raster_slice(width: u32, height: u32, rgb: Vec<u8>, format: SliceFormat) -> Slice {
    Slice {
        width,
        height,
        rgb,
        hu: None,
        format,
        meta: SliceMeta::default(),
    }
}

/// PIL's CMYK JPEG path: the samples libjpeg gives are read as `CMYK;I` (inverted, Adobe's
/// convention), then `convert('RGB')` applies `cmyk2rgb`: `255 - k` scaled by each inverted
/// ink with PIL's rounded divide by 255 (`MULDIV255`).
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let nk = i32::from(p[3]); // 255 - (255 - k)
            let ink = |v: u8| (nk - muldiv255(255 - i32::from(v), nk)).clamp(0, 255) as u8;
            [ink(p[0]), ink(p[1]), ink(p[2])]
        })
        .collect()
}

/// Refuse images larger than the configured limit (before allocating their pixels).
pub(super) fn check_size(width: u32, height: u32, opts: &SliceOptions) -> Result<(), Rejection> {
    let (max_width, max_height) = opts.max_pixels;
    if width > max_width || height > max_height {
        return Err(Rejection::TooLarge {
            width,
            height,
            max_width,
            max_height,
        });
    }
    if width == 0 || height == 0 {
        return Err(Rejection::Corrupt(format!("empty image {width}x{height}")));
    }
    Ok(())
}

/// PIL `convert('RGB')` semantics for every layout PNG and JPEG decoders produce.
fn to_pil_rgb(img: DynamicImage) -> Vec<u8> {
    match img {
        DynamicImage::ImageLuma8(g) => grey_to_rgb(g.as_raw().iter().copied()),
        DynamicImage::ImageLumaA8(g) => grey_to_rgb(g.as_raw().iter().step_by(2).copied()),
        // PIL I;16 -> L saturates instead of scaling
        DynamicImage::ImageLuma16(g) => grey_to_rgb(g.as_raw().iter().map(|&v| v.min(255) as u8)),
        DynamicImage::ImageLumaA16(g) => grey_to_rgb(g.as_raw().iter().step_by(2).map(|&v| (v >> 8) as u8)),
        DynamicImage::ImageRgb8(c) => c.into_raw(),
        DynamicImage::ImageRgba8(c) => drop_alpha(c.as_raw().iter().copied()),
        DynamicImage::ImageRgb16(c) => c.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(c) => drop_alpha(c.as_raw().iter().map(|&v| (v >> 8) as u8)),
        other => other.to_rgb8().into_raw(),
    }
}

fn grey_to_rgb(grey: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(grey.size_hint().0 * 3);
    for g in grey {
        rgb.extend_from_slice(&[g, g, g]);
    }
    rgb
}

fn drop_alpha(rgba: impl Iterator<Item = u8>) -> Vec<u8> {
    rgba.enumerate()
        .filter(|(i, _)| i % 4 != 3)
        .map(|(_, v)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use png::{BitDepth, ColorType};

    /// A 1-row PNG written with the png crate; `data` is the raw scanline.
    fn png(
        width: u32,
        color: ColorType,
        depth: BitDepth,
        data: &[u8],
        palette: Option<(&[u8], &[u8])>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, width, 1);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some((plte, trns)) = palette {
            enc.set_palette(plte.to_vec());
            enc.set_trns(trns.to_vec());
        }
        let mut writer = enc.write_header().expect("header");
        writer.write_image_data(data).expect("data");
        writer.finish().expect("finish");
        out
    }

    fn rgb_of(bytes: &[u8]) -> Vec<u8> {
        read_png(bytes, &SliceOptions::default()).expect("decodes").rgb
    }

    fn be16(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    // expected values printed by Pillow 13: Image.open(f).convert('RGB')
    #[test]
    fn sixteen_bit_grey_saturates_like_pil() {
        let bytes = png(
            5,
            ColorType::Grayscale,
            BitDepth::Sixteen,
            &be16(&[0, 1, 255, 256, 65535]),
            None,
        );
        assert_eq!(
            rgb_of(&bytes),
            [0, 0, 0, 1, 1, 1, 255, 255, 255, 255, 255, 255, 255, 255, 255]
        );
    }

    #[test]
    fn sixteen_bit_colour_keeps_high_byte_and_drops_alpha() {
        let rgb = png(
            2,
            ColorType::Rgb,
            BitDepth::Sixteen,
            &be16(&[0x1234, 0xff00, 0x00ff, 0x8080, 0x0101, 0xfffe]),
            None,
        );
        assert_eq!(rgb_of(&rgb), [0x12, 0xff, 0x00, 0x80, 0x01, 0xff]);
        let rgba = png(
            1,
            ColorType::Rgba,
            BitDepth::Sixteen,
            &be16(&[0x1234, 0xff00, 0x00ff, 0]),
            None,
        );
        assert_eq!(rgb_of(&rgba), [0x12, 0xff, 0x00]);
        let la = png(
            2,
            ColorType::GrayscaleAlpha,
            BitDepth::Sixteen,
            &be16(&[0x1234, 0xff00, 0x00ff, 0]),
            None,
        );
        assert_eq!(rgb_of(&la), [0x12, 0x12, 0x12, 0, 0, 0]);
    }

    #[test]
    fn eight_bit_alpha_low_depth_and_palette() {
        let rgba = png(1, ColorType::Rgba, BitDepth::Eight, &[10, 20, 30, 0], None);
        assert_eq!(rgb_of(&rgba), [10, 20, 30]);
        let la = png(
            2,
            ColorType::GrayscaleAlpha,
            BitDepth::Eight,
            &[10, 20, 200, 0],
            None,
        );
        assert_eq!(rgb_of(&la), [10, 10, 10, 200, 200, 200]);
        let two_bit = png(4, ColorType::Grayscale, BitDepth::Two, &[0b0001_1011], None);
        assert_eq!(
            rgb_of(&two_bit),
            [0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255]
        );
        let plte: &[u8] = &[1, 2, 3, 200, 100, 50];
        let pal = png(
            2,
            ColorType::Indexed,
            BitDepth::Eight,
            &[1, 0],
            Some((plte, &[255, 0])),
        );
        assert_eq!(rgb_of(&pal), [200, 100, 50, 1, 2, 3]);
    }

    #[test]
    fn grey_jpeg_is_copied_to_three_channels() {
        let img = image::GrayImage::from_fn(32, 16, |x, _| image::Luma([(x * 8) as u8]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).expect("encode jpeg");
        let s = read_jpeg(out.get_ref(), &SliceOptions::default()).expect("decodes");
        assert_eq!((s.width, s.height, s.format), (32, 16, SliceFormat::Jpeg));
        assert!(s.rgb.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!((i32::from(s.rgb[3 * 20]) - 160).abs() <= 3);
    }

    #[test]
    fn forged_jpeg_sizes_are_refused_from_the_header() {
        let img = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 16) as u8]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).expect("encode jpeg");
        let mut bytes = out.into_inner();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("SOF0");
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]); // 60000 x 60000
        let e = read_jpeg(&bytes, &SliceOptions::default()).expect_err("too large");
        assert_eq!(e.to_string(), "too large: 60000x60000 exceeds limit 4096x4096");
        bytes[sof + 5..sof + 9].copy_from_slice(&[0, 0, 0, 16]);
        let e = read_jpeg(&bytes, &SliceOptions::default()).expect_err("empty");
        assert!(e.to_string().starts_with("corrupt: JPEG: "), "{e}");
        let e = read_jpeg(&[0xFF, 0xD8, 0xFF, 0xD9], &SliceOptions::default()).expect_err("no frame");
        assert!(e.to_string().starts_with("corrupt: JPEG: "), "{e}");
    }

    #[test]
    fn size_limit_applies_before_decoding() {
        let bytes = png(5, ColorType::Grayscale, BitDepth::Eight, &[1, 2, 3, 4, 5], None);
        let opts = SliceOptions {
            max_pixels: (4, 4),
            ..SliceOptions::default()
        };
        let e = read_png(&bytes, &opts).expect_err("too wide");
        assert_eq!(e.to_string(), "too large: 5x1 exceeds limit 4x4");
    }
}
