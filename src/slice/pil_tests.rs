//! The PIL corpus (`tests/fixtures/pil/`, written by `scripts/reference/pil_fixtures.py` with
//! Pillow 13): every JPEG and PNG decodes to exactly the bytes of PIL's `convert('RGB')`, and
//! every PIL bilinear resize is reproduced byte for byte.

use std::path::{Path, PathBuf};

use super::resample::pil_bilinear;
use super::{SliceFormat, SliceOptions, read_slices};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil")
}

/// An 8-bit RGB PNG as Pillow wrote it: (width, height, pixels).
fn rgb_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png data");
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight),
        "{}",
        path.display()
    );
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn cases(kind: &str) -> Vec<Vec<String>> {
    let manifest = std::fs::read_to_string(corpus().join("manifest.txt")).expect("manifest.txt");
    manifest
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|f| f.first().map(String::as_str) == Some(kind))
        .collect()
}

/// How many bytes differ, and the first difference, for a readable failure.
fn diff(got: &[u8], want: &[u8]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} bytes, PIL has {}", got.len(), want.len()));
    }
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    bad.first().map(|&i| {
        format!(
            "{} of {} bytes differ; first at byte {i}: {} vs PIL {}",
            bad.len(),
            got.len(),
            got[i],
            want[i]
        )
    })
}

#[test]
fn every_jpeg_and_png_decodes_to_pils_pixels() {
    let dir = corpus();
    let cases = cases("decode");
    let mut jpegs = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let (input, expected) = (&case[1], &case[2]);
        let slice = read_slices(&dir.join(input), &SliceOptions::default())
            .unwrap_or_else(|e| panic!("{input}: {e}"))
            .remove(0);
        let (w, h, want) = rgb_png(&dir.join(expected));
        assert_eq!((slice.width, slice.height), (w, h), "{input}");
        if slice.format == SliceFormat::Jpeg {
            jpegs += 1;
        }
        if let Some(d) = diff(&slice.rgb, &want) {
            failures.push(format!("{input}: {d}"));
        }
    }
    assert!(failures.is_empty(), "not PIL's pixels:\n{}", failures.join("\n"));
    // the corpus is all there: JPEG variants and PNG variants
    assert!(
        jpegs >= 25 && cases.len() - jpegs >= 12,
        "{jpegs} JPEGs of {}",
        cases.len()
    );
}

#[test]
fn bilinear_resizes_equal_pils() {
    let dir = corpus();
    let cases = cases("resize");
    let mut failures = Vec::new();
    for case in &cases {
        let (source, expected) = (&case[1], &case[2]);
        let (tw, th): (usize, usize) = (case[3].parse().unwrap(), case[4].parse().unwrap());
        // PIL's convert('RGB') of the source, grey or colour (checked by the test above)
        let src = read_slices(&dir.join(source), &SliceOptions::default())
            .unwrap_or_else(|e| panic!("{source}: {e}"))
            .remove(0);
        let size = (src.width as usize, src.height as usize);
        let got = pil_bilinear(&src.rgb, size, 3, (tw, th));
        let (ew, eh, want) = rgb_png(&dir.join(expected));
        assert_eq!((ew as usize, eh as usize), (tw, th), "{expected}");
        if let Some(d) = diff(&got, &want) {
            failures.push(format!("{source} -> {tw}x{th}: {d}"));
        }
    }
    assert!(failures.is_empty(), "not PIL's resize:\n{}", failures.join("\n"));
    assert!(cases.len() >= 15, "{} resize cases", cases.len());
}

#[test]
fn classifier_images_are_resized_as_pil_does() {
    use crate::training::{PilResize, classifier_image};
    let dir = corpus();
    // training's Resize((64, 64)) and evaluation's Resize(23) (shorter side) of a 37x23 slice
    for (resize, expected) in [
        (PilResize::Square(64), "resize_src_37x23_to_64x64.png"),
        (PilResize::Shorter(23), "resize_src_37x23.png"),
        (PilResize::Shorter(46), "resize_src_37x23_to_74x46.png"),
    ] {
        let img = classifier_image(&dir.join("resize_src_37x23.png"), Some(resize), tch::Device::Cpu)
            .expect("classifier image");
        let (w, h, want) = rgb_png(&dir.join(expected));
        assert_eq!(img.size(), [3, i64::from(h), i64::from(w)], "{resize:?}");
        // [3, H, W] in [0, 1] back to interleaved bytes
        let bytes = (img * 255.0)
            .round()
            .to_kind(tch::Kind::Uint8)
            .permute([1, 2, 0])
            .contiguous();
        let got = Vec::<u8>::try_from(bytes.view([-1])).expect("bytes");
        assert_eq!(diff(&got, &want), None, "{resize:?}");
    }
}
