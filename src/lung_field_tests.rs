//! Tests of the lung field: distance transform, synthetic phantoms against their own lung
//! masks (lesions included) and the real slices in `../shared/data/dicom/`.

use super::*;
use crate::data::synth::{LesionClass, PhantomSpec, phantom_with};
use crate::slice::{SliceOptions, read_slices};

use crate::test_support::shared_dicom;

/// The phantom's lesions as separate masks (4-connected components of mask values 2 and 3) of a
/// `w` x `h` mask.
fn lesion_components(mask: &[u8], w: usize, h: usize) -> Vec<Vec<bool>> {
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    for start in 0..w * h {
        if mask[start] < 2 || seen[start] {
            continue;
        }
        let mut m = vec![false; w * h];
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            m[i] = true;
            for j in neighbours4(i, w, h) {
                if mask[j] >= 2 && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        out.push(m);
    }
    out
}

fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    inter as f64 / union.max(1) as f64
}

#[test]
fn distance_transform_is_euclidean() {
    let (w, h) = (7, 5);
    let mut f = vec![false; w * h];
    f[2 * w + 3] = true;
    let d = edt_sq(&f, w, h);
    assert_eq!(d[2 * w + 3], 0.0);
    assert_eq!(d[2 * w + 5], 4.0);
    assert_eq!(d[w + 4], 2.0);
    assert_eq!(d[0], 9.0 + 4.0);
    f[4 * w + 6] = true;
    assert_eq!(edt_sq(&f, w, h)[3 * w + 6], 1.0);
}

#[test]
fn phantom_lungs_with_their_lesions_match_the_generator_mask() {
    for seed in 0..4u64 {
        for class in LesionClass::ALL {
            for z in [0.3, 0.5, 0.7] {
                let spec = PhantomSpec {
                    z,
                    ..PhantomSpec::new(seed, class, 512)
                };
                let ph = phantom_with(&spec);
                let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
                let field = lung_field_hu(&hu, 512, 512, ph.pixel_spacing_mm);
                let truth: Vec<bool> = ph.mask.iter().map(|&m| m >= 1).collect();
                let lesions = lesion_components(&ph.mask, 512, 512);
                let alone = iou(&field.mask, &truth);
                let (with, fractions) = field.with_lesions(&lesions);
                assert!(
                    fractions.iter().all(|&f| f >= 0.95),
                    "seed {seed} {class:?} z {z}: {fractions:?}"
                );
                let score = iou(&with, &truth);
                assert!(score >= 0.95, "seed {seed} {class:?} z {z}: IoU {score:.3}");
                // the air-based field alone holds the lungs of a slice without large lesions
                if class != LesionClass::Cp {
                    assert!(alone >= 0.95, "seed {seed} {class:?} z {z}: IoU {alone:.3} alone");
                }
                // every lesion pixel of the phantom is inside the field
                let lesion = ph.mask.iter().filter(|&&m| m >= 2).count();
                let inside = ph.mask.iter().zip(&with).filter(|&(&m, &f)| m >= 2 && f).count();
                assert!(
                    inside as f64 >= 0.95 * lesion as f64,
                    "seed {seed} {class:?} z {z}: {inside}/{lesion} lesion px inside"
                );
            }
        }
    }
}

#[test]
fn no_lungs_in_the_neck_or_abdomen_and_grey_input_agrees_with_hu() {
    for z in [0.05, 0.95] {
        let ph = phantom_with(&PhantomSpec {
            z,
            ..PhantomSpec::new(2, LesionClass::Control, 256)
        });
        let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
        let field = lung_field_hu(&hu, 256, 256, ph.pixel_spacing_mm);
        assert_eq!((field.lungs, field.pixels()), (0, 0), "z {z}");
    }
    let ph = phantom_with(&PhantomSpec::new(9, LesionClass::Cp, 512));
    let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
    let from_hu = lung_field_hu(&hu, 512, 512, ph.pixel_spacing_mm);
    let grey: Vec<f32> = ph
        .hu
        .iter()
        .map(|&v| {
            let g = crate::slice::lung_window(f32::from(v), -600.0, 1500.0);
            f32::from(g) / 255.0 * 1500.0 - 1350.0
        })
        .collect();
    let from_grey = lung_field_hu(&grey, 512, 512, ph.pixel_spacing_mm);
    assert!(from_hu.lungs >= 2, "lungs {}", from_hu.lungs);
    assert!(iou(&from_hu.mask, &from_grey.mask) > 0.98);
}

fn real(name: &str) -> Slice {
    read_slices(&shared_dicom(name), &SliceOptions::default())
        .expect("the shared slice reads")
        .remove(0)
}

#[test]
fn real_slices_lung_base_chest_crop_and_head() {
    // lung bases, 512x512 at 0.29 mm (a zoomed field of view): the two posterior recesses
    let base = lung_field(&real("ct_siemens_unsigned12_jpeg_lossless_badseq.dcm"));
    let fraction = base.pixels() as f64 / (512.0 * 512.0);
    assert!(base.lungs >= 2, "lungs {}", base.lungs);
    assert!((0.01..0.1).contains(&fraction), "base lung fraction {fraction}");
    // both halves of the image hold lung
    let left = (0..512 * 512).filter(|&i| base.mask[i] && i % 512 < 256).count();
    let right = (0..512 * 512).filter(|&i| base.mask[i] && i % 512 >= 256).count();
    assert!(left > 1500 && right > 1500, "left {left} right {right}");
    // the posterior chest crop: lungs beside the spine, touching the crop's border
    let crop = real("chest_ct1_128_crop_explicit_le.dcm");
    let field = lung_field(&crop);
    let fraction = field.pixels() as f64 / (128.0 * 128.0);
    assert!(field.lungs >= 1, "crop lungs {}", field.lungs);
    assert!((0.1..0.7).contains(&fraction), "crop lung fraction {fraction}");
    let hu = crop.hu.as_ref().expect("dicom has HU");
    // the field is the air-like part of the chest plus what closing adds: mostly lung HU
    let lungish = (0..hu.len()).filter(|&i| field.mask[i] && hu[i] < -500.0).count();
    assert!(lungish as f64 > 0.8 * field.pixels() as f64);
    // no bone in the field
    assert!((0..hu.len()).all(|i| !field.mask[i] || hu[i] < 300.0));
    // the head has no lungs
    let head = lung_field(&real("head_ct_693_j2k_lossy.dcm"));
    assert_eq!((head.lungs, head.pixels()), (0, 0));
}

/// A disc of radius `r` px at `(cx, cy)` as a lesion mask.
fn disc(n: usize, cx: usize, cy: usize, r: usize) -> Vec<bool> {
    (0..n * n)
        .map(|i| (i % n).abs_diff(cx).pow(2) + (i / n).abs_diff(cy).pow(2) <= r * r)
        .collect()
}

#[test]
fn detections_in_the_chest_wall_stay_outside_the_field_with_mirrored_hulls() {
    // what the gate is for: "lesions" in the subcutaneous fat and muscles beside the lungs, and
    // behind the spine, are not taken into the field, though the hulls are mirrored across the
    // midline (the lungs are symmetric enough that a mirrored hull stays inside the ribs)
    for seed in 0..4u64 {
        let ph = phantom_with(&PhantomSpec {
            z: 0.5,
            ..PhantomSpec::new(seed, LesionClass::Control, 512)
        });
        let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
        let field = lung_field_hu(&hu, 512, 512, ph.pixel_spacing_mm);
        assert_eq!(field.lungs, 2, "seed {seed}");
        // the lungs' middle row and their lateral extent
        let lung: Vec<usize> = (0..512 * 512).filter(|&i| ph.mask[i] == 1).collect();
        let cy = lung.iter().map(|&i| i / 512).sum::<usize>() / lung.len();
        let row = |x: usize| ph.mask[cy * 512 + x] == 1;
        let (lo, hi) = (
            (0..512).find(|&x| row(x)).unwrap(),
            (0..512).rev().find(|&x| row(x)).unwrap(),
        );
        // the body's outer edge on that row (skin: first pixel denser than -500 HU)
        let body = |x: usize| hu[cy * 512 + x] > -500.0;
        let skin_l = (0..lo).find(|&x| body(x)).unwrap();
        let skin_r = (hi..512).rev().find(|&x| body(x)).unwrap();
        let spine_back = (cy..512).rev().find(|&y| hu[y * 512 + 256] > -500.0).unwrap();
        let walls = [
            disc(512, (skin_l + lo) / 2, cy, 6),
            disc(512, (skin_r + hi) / 2, cy, 6),
            disc(512, 256, spine_back - 12, 6),
        ];
        let (_, fractions) = field.with_lesions(&walls);
        assert!(
            fractions.iter().all(|&f| f < 0.5),
            "seed {seed}: chest-wall discs taken into the field: {fractions:?}"
        );
    }
}

/// splitmix64 in [0, 1).
fn unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// A blob: an ellipse at `(cx, cy)` with some pixels knocked out (holes, ragged border).
fn blob(w: usize, h: usize, (cx, cy): (f64, f64), (rx, ry): (f64, f64), state: &mut u64) -> Vec<bool> {
    (0..w * h)
        .map(|i| {
            let (dx, dy) = (((i % w) as f64 - cx) / rx, ((i / w) as f64 - cy) / ry);
            dx * dx + dy * dy <= 1.0 && unit(state) < 0.9
        })
        .collect()
}

#[test]
fn bitmaps_and_crops_round_trip_and_contact_agrees_word_by_word() {
    let mut state = 5u64;
    // widths on both sides of a word's edge, one of them a whole number of words
    for (w, h) in [(70usize, 45usize), (64, 33), (129, 20), (1, 9), (63, 1)] {
        for _ in 0..40 {
            let field: Vec<bool> = blob(
                w,
                h,
                (w as f64 / 2.0, h as f64 / 2.0),
                (w as f64 / 3.0, 30.0),
                &mut state,
            );
            let c = (unit(&mut state) * w as f64, unit(&mut state) * h as f64);
            let r = (0.5 + unit(&mut state) * 30.0, 0.5 + unit(&mut state) * 30.0);
            let m = blob(w, h, c, r, &mut state);
            let bits = Bitmap::from_bools(&m, w, h);
            assert_eq!(bits.to_bools(), m);
            let crop = MaskCrop::from_bools(&m, w, h);
            assert_eq!(crop.to_bitmap(w, h), bits);
            assert_eq!(crop.area, m.iter().filter(|&&v| v).count() as u64);
            let fb = Bitmap::from_bools(&field, w, h);
            assert_eq!(
                contact_crop(&fb, &crop),
                contact(&field, &m, w, h),
                "{w}x{h} at {c:?} {r:?}"
            );
            let inside = m.iter().zip(&field).filter(|&(&a, &b)| a && b).count() as u64;
            assert_eq!(crop.count_and(&fb), inside);
        }
    }
}

#[test]
fn lesion_crops_give_the_same_field_and_fractions_as_full_masks() {
    let mut state = 17u64;
    for (seed, class) in [
        (0u64, LesionClass::Cp),
        (3, LesionClass::Covid),
        (5, LesionClass::Control),
    ] {
        let ph = phantom_with(&PhantomSpec::new(seed, class, 256));
        // a non-square window with a width of no whole number of words
        let (w, h, x0, y0) = (250usize, 236usize, 3usize, 10usize);
        let (mut hu, mut mask) = (Vec::new(), Vec::new());
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                hu.push(f32::from(ph.hu[y * 256 + x]));
                mask.push(ph.mask[y * 256 + x]);
            }
        }
        let field = lung_field_hu(&hu, w, h, ph.pixel_spacing_mm);
        // the phantom's own lesions, then blobs across the lungs' edges, in the chest wall
        // and over the image's border
        let mut lesions = lesion_components(&mask, w, h);
        let rim: Vec<usize> = (0..w * h)
            .filter(|&i| field.mask[i] && neighbours4(i, w, h).any(|j| !field.mask[j]))
            .collect();
        for k in 0..60 {
            let c = if k % 2 == 0 && !rim.is_empty() {
                let i = rim[(unit(&mut state) * rim.len() as f64) as usize % rim.len()];
                ((i % w) as f64, (i / w) as f64)
            } else {
                (unit(&mut state) * w as f64, unit(&mut state) * h as f64)
            };
            let r = (1.0 + unit(&mut state) * 25.0, 1.0 + unit(&mut state) * 25.0);
            lesions.push(blob(w, h, c, r, &mut state));
        }
        lesions.push(vec![false; w * h]);
        let crops: Vec<MaskCrop> = lesions.iter().map(|m| MaskCrop::from_bools(m, w, h)).collect();
        let (want_field, want_fractions) = field.with_lesions(&lesions);
        let (got_field, got_fractions) = field.with_lesion_crops(&crops);
        assert_eq!(got_fractions, want_fractions, "seed {seed} {class:?}");
        assert!(
            got_field.to_bools() == want_field,
            "seed {seed} {class:?}: fields differ"
        );
        // the lesions did grow the field here
        assert!(got_field.count() > field.pixels(), "seed {seed} {class:?}");
    }
}

/// `fill_hull` as it was first written: every pixel of the hull's box tested against every
/// edge.
fn fill_hull_per_pixel(comp: &[usize], w: usize, out: &mut [bool]) {
    let mut hull_only = vec![false; out.len()];
    let hull = convex_hull(comp, w);
    if hull.len() < 3 {
        return;
    }
    let cross =
        |o: (i64, i64), a: (i64, i64), b: (i64, i64)| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let (x0, x1) = (
        hull.iter().map(|p| p.0).min().unwrap(),
        hull.iter().map(|p| p.0).max().unwrap(),
    );
    let (y0, y1) = (
        hull.iter().map(|p| p.1).min().unwrap(),
        hull.iter().map(|p| p.1).max().unwrap(),
    );
    for y in y0..=y1 {
        for x in x0..=x1 {
            if (0..hull.len()).all(|k| cross(hull[k], hull[(k + 1) % hull.len()], (x, y)) >= 0) {
                hull_only[y as usize * w + x as usize] = true;
            }
        }
    }
    for (o, h) in out.iter_mut().zip(hull_only) {
        *o |= h;
    }
}

#[test]
fn hull_rows_match_the_per_pixel_test() {
    let mut state = 23u64;
    let (w, h) = (97usize, 61usize);
    for case in 0..300 {
        // a few points, a line, a blob, or a scatter over the frame
        let n = [1, 2, 3, 5, 40, 400][case % 6];
        let spread = 2.0 + unit(&mut state) * 60.0;
        let (cx, cy) = (unit(&mut state) * w as f64, unit(&mut state) * h as f64);
        let comp: Vec<usize> = (0..n)
            .map(|_| {
                let x = (cx + (unit(&mut state) - 0.5) * spread).clamp(0.0, (w - 1) as f64) as usize;
                let y = if case % 7 == 0 {
                    cy as usize
                } else {
                    (cy + (unit(&mut state) - 0.5) * spread).clamp(0.0, (h - 1) as f64) as usize
                };
                y * w + x
            })
            .collect();
        let (mut got, mut want) = (vec![false; w * h], vec![false; w * h]);
        fill_hull(&comp, w, &mut got);
        fill_hull_per_pixel(&comp, w, &mut want);
        assert!(got == want, "case {case}: hulls differ");
    }
    // and the lungs of a phantom
    let ph = phantom_with(&PhantomSpec::new(1, LesionClass::Covid, 256));
    let air: Vec<bool> = ph.hu.iter().map(|&v| f32::from(v) < AIR_HU).collect();
    for comp in components(&air, 256, 256).iter().filter(|c| c.len() > 50) {
        let (mut got, mut want) = (vec![false; 256 * 256], vec![false; 256 * 256]);
        fill_hull(comp, 256, &mut got);
        fill_hull_per_pixel(comp, 256, &mut want);
        assert!(
            got == want,
            "phantom component of {} px: hulls differ",
            comp.len()
        );
    }
}

#[test]
fn thickness_in_the_components_box_matches_the_whole_image_transform() {
    let mut state = 31u64;
    // random air over small frames, with thresholds of a few pixels
    for case in 0..60 {
        let (w, h) = (20 + case % 13 * 5, 15 + case % 7 * 6);
        let p = 0.5 + 0.45 * unit(&mut state);
        let air: Vec<bool> = (0..w * h).map(|_| unit(&mut state) < p).collect();
        let depth = edt_sq(&air.iter().map(|&a| !a).collect::<Vec<_>>(), w, h);
        for t in [0.5f32, 1.0, 2.0, 4.84, 9.0, 20.0] {
            for comp in components(&air, w, h) {
                let whole = comp.iter().any(|&i| depth[i] >= t);
                assert_eq!(thick(&comp, &air, w, h, t), whole, "case {case} t {t}");
            }
        }
    }
    // the components of phantoms, the outside air and the lungs included
    for (seed, z) in [(0u64, 0.5), (4, 0.2), (6, 0.85)] {
        let ph = phantom_with(&PhantomSpec {
            z,
            ..PhantomSpec::new(seed, LesionClass::Covid, 256)
        });
        let air: Vec<bool> = ph.hu.iter().map(|&v| f32::from(v) < AIR_HU).collect();
        let depth = edt_sq(&air.iter().map(|&a| !a).collect::<Vec<_>>(), 256, 256);
        let t = (MIN_THICKNESS_MM / ph.pixel_spacing_mm).powi(2) as f32;
        for comp in components(&air, 256, 256) {
            let whole = comp.iter().any(|&i| depth[i] >= t);
            assert_eq!(thick(&comp, &air, 256, 256, t), whole, "seed {seed} z {z}");
        }
    }
}
