//! Model parity on JPEG inputs: the fixtures under `tests/fixtures/parity/jpeg/` are
//! torchvision's outputs on PIL's decoding of JPEG versions of the parity images
//! (`scripts/reference/jpeg_parity_fixtures.py`); ctmask reads the same files with its own slice
//! reader (libjpeg-turbo, as Pillow decodes) and must pass the PNG checks of `parity.rs` with the
//! same tolerances.

use ctmask::model::config::Semantics;
use tch::Device;

use super::parity::{
    Inputs, JPEG_IMAGES, check_classifier, check_detections, compare_detections_on, fixtures, image,
    jpeg_image, model,
};

#[test]
fn r18_t1_detections_on_jpeg_equal_torchvision() {
    check_detections("r18_t1", Inputs::Jpeg);
}

#[test]
fn r50_fpn5_frozenbn_detections_on_jpeg_equal_torchvision() {
    check_detections("r50_fpn5_frozenbn", Inputs::Jpeg);
}

#[test]
fn r18_t1_classifier_on_jpeg_equals_reference() {
    check_classifier("r18_t1", 128, 512, Inputs::Jpeg);
}

#[test]
fn r50_fpn5_classifier_on_jpeg_equals_reference() {
    check_classifier("r50_fpn5_frozenbn", 256, 1024, Inputs::Jpeg);
}

/// Test of the test: the JPEG fixtures are not the PNG ones, and another JPEG decoder's pixels
/// (the `image` crate's zune-jpeg: its own IDCT and chroma upsampling, what ctmask used before)
/// fail the detection check that PIL's pixels pass.
#[test]
fn jpeg_parity_fails_with_another_decoders_pixels() {
    for i in 0..2 {
        let d = (jpeg_image(i) - image(i)).abs().max().double_value(&[]);
        assert!(
            d > 1.5 / 255.0,
            "img{i}: the JPEG decodes to the PNG's pixels (max diff {d})"
        );
    }
    let fx = Inputs::Jpeg.fixture("parity_r18_t1.safetensors");
    let m = model("r18_t1", Semantics::Torchvision);
    for (i, name) in JPEG_IMAGES.iter().enumerate() {
        let other = image::open(fixtures().join("jpeg").join(name)).unwrap().to_rgb8();
        let other = ctmask::model::transform::tensor_from_rgb(
            other.as_raw(),
            other.width(),
            other.height(),
            Device::Cpu,
        )
        .unwrap();
        let d = (&other - jpeg_image(i)).abs().max().double_value(&[]);
        assert!(
            d > 0.0,
            "img{i}: zune-jpeg gave PIL's pixels: pick another test decoder"
        );
        assert!(
            compare_detections_on(&m, &fx, i, &other).is_err(),
            "img{i}: pixels {d} off PIL's pass the JPEG parity check"
        );
    }
}
