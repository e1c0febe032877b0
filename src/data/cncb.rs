//! The CNCB lesion-segmentation set (port of the original `dataset_segmentation.py`, spec §3.1):
//! image and mask folders paired by file name, masks turned into Mask R-CNN instances.
//!
//! Mask values: 0 background, 1 lung, 2 GGO, 3 consolidation. By default classes come from
//! the values (2 -> label 1, 3 -> label 2); [`Labelling::OriginalRank`] reproduces the
//! original's quirk (§9 item 5): label = rank of the value among those present in the slice
//! after dropping the two smallest, so a consolidation-only slice {0,1,3} labels its
//! consolidation 1. Components use 8-connectivity per class; regions of `area_threshold`
//! pixels or fewer are dropped; boxes are `(min_col, min_row, max_col + 1, max_row + 1)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::slice::{Slice, SliceError, SliceOptions, read_slices};

/// Which lesion values the masks keep (original `mask_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskType {
    /// GGO and consolidation as two classes.
    #[default]
    Both,
    /// Consolidation removed (`mask[mask==3]=0`).
    Ggo,
    /// Consolidation merged into GGO (`mask[mask==3]=2`).
    Merge,
}

/// How mask values become labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Labelling {
    /// 2 (GGO) -> 1, 3 (consolidation) -> 2.
    #[default]
    ByValue,
    /// The original's per-slice rank of the value (`np.unique(mask)[2:]`).
    OriginalRank,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOptions {
    pub mask_type: MaskType,
    pub labelling: Labelling,
    /// Regions with `area <= area_threshold` are dropped (the original: 100).
    pub area_threshold: u32,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            mask_type: MaskType::Both,
            labelling: Labelling::ByValue,
            area_threshold: 100,
        }
    }
}

/// One lesion region: Mask R-CNN target.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub label: i64,
    /// `[x1, y1, x2, y2]` with exclusive x2, y2.
    pub bbox: [f32; 4],
    /// H*W, 1 inside the region.
    pub mask: Vec<u8>,
    pub area: u32,
}

/// Instances of a `w`x`h` CNCB mask, class by class, components in raster order.
pub fn instances_from_mask(mask: &[u8], w: u32, h: u32, opts: &TargetOptions) -> Vec<Instance> {
    let (w, h) = (w as usize, h as usize);
    let mask: Vec<u8> = mask[..w * h]
        .iter()
        .map(|&v| match (opts.mask_type, v) {
            (MaskType::Ggo, 3) => 0,
            (MaskType::Merge, 3) => 2,
            _ => v,
        })
        .collect();
    let planes: Vec<(u8, i64)> = match opts.labelling {
        Labelling::ByValue => vec![(2, 1), (3, 2)],
        Labelling::OriginalRank => {
            let mut present = [false; 256];
            mask.iter().for_each(|&v| present[v as usize] = true);
            (0..=255u8)
                .filter(|&v| present[v as usize])
                .skip(2)
                .zip(1..)
                .collect()
        }
    };
    let mut out = Vec::new();
    for (value, label) in planes {
        for pixels in components(&mask, w, h, value) {
            if pixels.len() as u32 <= opts.area_threshold {
                continue;
            }
            let mut region = vec![0u8; w * h];
            let mut bbox = [usize::MAX, usize::MAX, 0, 0];
            for &i in &pixels {
                region[i] = 1;
                let (x, y) = (i % w, i / w);
                bbox = [
                    bbox[0].min(x),
                    bbox[1].min(y),
                    bbox[2].max(x + 1),
                    bbox[3].max(y + 1),
                ];
            }
            out.push(Instance {
                label,
                bbox: bbox.map(|v| v as f32),
                mask: region,
                area: pixels.len() as u32,
            });
        }
    }
    out
}

/// 8-connected components of the pixels equal to `value`, each as its pixel indices,
/// ordered by their first pixel in raster order (as `skimage.measure.label`).
fn components(mask: &[u8], w: usize, h: usize, value: u8) -> Vec<Vec<usize>> {
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    for start in 0..w * h {
        if seen[start] || mask[start] != value {
            continue;
        }
        seen[start] = true;
        let (mut stack, mut pixels) = (vec![start], Vec::new());
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for (dx, dy) in [
                (-1, -1),
                (0, -1),
                (1, -1),
                (-1, 0),
                (1, 0),
                (-1, 1),
                (0, 1),
                (1, 1),
            ] {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if !seen[j] && mask[j] == value {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        out.push(pixels);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum CncbError {
    #[error("cannot list {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unpaired files: images without mask [{images}], masks without image [{masks}]")]
    Unpaired { images: String, masks: String },
    #[error("{path}:{line}: {name} is not in the image folder")]
    SplitEntry {
        path: PathBuf,
        line: usize,
        name: String,
    },
    #[error(transparent)]
    Slice(#[from] SliceError),
    #[error("{path}: bad mask: {message}")]
    Mask { path: PathBuf, message: String },
    #[error("item {index} out of range (dataset has {len})")]
    Index { index: usize, len: usize },
}

/// Options of the CNCB set: target extraction and the slice reader.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CncbOptions {
    pub targets: TargetOptions,
    pub slice: SliceOptions,
}

/// Image/mask pairs sorted by image file name.
#[derive(Debug, Clone)]
pub struct CncbDataset {
    pairs: Vec<(PathBuf, PathBuf)>,
    opts: CncbOptions,
}

/// Visible regular files of `dir` by file stem.
fn by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>, CncbError> {
    let list = |source| CncbError::List {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(list)? {
        let path = entry.map_err(list)?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.insert(stem, path);
    }
    Ok(out)
}

fn names(list: &[&PathBuf]) -> String {
    let shown: Vec<String> = list.iter().take(10).map(|p| p.display().to_string()).collect();
    let more = list.len().saturating_sub(10);
    shown.join(", ")
        + &if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
}

impl CncbDataset {
    /// Pair `images_dir` with `masks_dir` by file stem, optionally keeping only the image
    /// file names listed in `split` (one `<patient>_<slice>.jpg` per line).
    pub fn open(
        images_dir: &Path,
        masks_dir: &Path,
        split: Option<&Path>,
        opts: CncbOptions,
    ) -> Result<Self, CncbError> {
        let images = by_stem(images_dir)?;
        let masks = by_stem(masks_dir)?;
        let lonely_images: Vec<_> = images
            .iter()
            .filter(|(s, _)| !masks.contains_key(*s))
            .map(|(_, p)| p)
            .collect();
        let lonely_masks: Vec<_> = masks
            .iter()
            .filter(|(s, _)| !images.contains_key(*s))
            .map(|(_, p)| p)
            .collect();
        if !lonely_images.is_empty() || !lonely_masks.is_empty() {
            return Err(CncbError::Unpaired {
                images: names(&lonely_images),
                masks: names(&lonely_masks),
            });
        }
        let mut pairs: Vec<(PathBuf, PathBuf)> = images
            .iter()
            .map(|(s, p)| (p.clone(), masks[s].clone()))
            .collect();
        pairs.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
        if let Some(split) = split {
            let text = std::fs::read_to_string(split).map_err(|source| CncbError::List {
                path: split.to_path_buf(),
                source,
            })?;
            let mut keep = Vec::new();
            for (line, name) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
                if name.is_empty() {
                    continue;
                }
                let found = pairs
                    .iter()
                    .find(|(img, _)| img.file_name().is_some_and(|n| n == name));
                let pair = found.ok_or_else(|| CncbError::SplitEntry {
                    path: split.to_path_buf(),
                    line,
                    name: name.to_string(),
                })?;
                keep.push(pair.clone());
            }
            keep.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
            keep.dedup();
            pairs = keep;
        }
        Ok(Self { pairs, opts })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// (image path, mask path) pairs in dataset order.
    pub fn pairs(&self) -> &[(PathBuf, PathBuf)] {
        &self.pairs
    }

    /// The slice, its lesion instances and the image path of item `i`.
    pub fn item(&self, i: usize) -> Result<(Slice, Vec<Instance>, PathBuf), CncbError> {
        let (slice, instances, _, image) = self.item_with_mask(i)?;
        Ok((slice, instances, image))
    }

    /// The slice, its lesion instances, its mask's values (row-major; 0 background, 1 lung,
    /// 2 GGO, 3 consolidation: the lung field and the lesion pixels before any instance filter)
    /// and the image path of item `i`.
    pub fn item_with_mask(&self, i: usize) -> Result<(Slice, Vec<Instance>, Vec<u8>, PathBuf), CncbError> {
        let (image, mask_path) = self.pairs.get(i).ok_or(CncbError::Index {
            index: i,
            len: self.pairs.len(),
        })?;
        let slice = read_slices(image, &self.opts.slice)?.swap_remove(0);
        let bad = |message: String| CncbError::Mask {
            path: mask_path.clone(),
            message,
        };
        let img = image::open(mask_path).map_err(|e| bad(e.to_string()))?;
        let mask = match img {
            image::DynamicImage::ImageLuma8(g) => g,
            other => return Err(bad(format!("expected 8-bit grey, got {:?}", other.color()))),
        };
        if (mask.width(), mask.height()) != (slice.width, slice.height) {
            let (mw, mh, w, h) = (mask.width(), mask.height(), slice.width, slice.height);
            return Err(bad(format!("mask is {mw}x{mh}, image is {w}x{h}")));
        }
        let instances = instances_from_mask(mask.as_raw(), slice.width, slice.height, &self.opts.targets);
        Ok((slice, instances, mask.into_raw(), image.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w`x`h` mask of lung (1) with filled rectangles `(value, x0, y0, x1, y1)` (exclusive).
    fn mask(w: usize, h: usize, rects: &[(u8, usize, usize, usize, usize)]) -> Vec<u8> {
        let mut m = vec![1u8; w * h];
        for &(v, x0, y0, x1, y1) in rects {
            for y in y0..y1 {
                m[y * w + x0..y * w + x1].fill(v);
            }
        }
        m
    }

    fn summary(inst: &[Instance]) -> Vec<(i64, [f32; 4], u32)> {
        inst.iter().map(|i| (i.label, i.bbox, i.area)).collect()
    }

    #[test]
    fn boxes_are_exclusive_and_labels_by_value() {
        // GGO 10x11 = 110 px at x 2..12, y 3..14; consolidation 12x10 at x 20..32, y 20..30
        let m = mask(40, 40, &[(2, 2, 3, 12, 14), (3, 20, 20, 32, 30)]);
        let got = instances_from_mask(&m, 40, 40, &TargetOptions::default());
        assert_eq!(
            summary(&got),
            [
                (1, [2.0, 3.0, 12.0, 14.0], 110),
                (2, [20.0, 20.0, 32.0, 30.0], 120)
            ]
        );
        assert_eq!(got[0].mask.iter().map(|&v| u32::from(v)).sum::<u32>(), 110);
        assert_eq!((got[0].mask[3 * 40 + 2], got[0].mask[3 * 40 + 12]), (1, 0));
    }

    #[test]
    fn area_threshold_is_strict_at_100() {
        let hundred = mask(30, 30, &[(2, 0, 0, 10, 10)]);
        assert!(instances_from_mask(&hundred, 30, 30, &TargetOptions::default()).is_empty());
        let hundred_one = {
            let mut m = hundred.clone();
            m[10] = 2; // (10, 0) touches the square
            m
        };
        let got = instances_from_mask(&hundred_one, 30, 30, &TargetOptions::default());
        assert_eq!(summary(&got), [(1, [0.0, 0.0, 11.0, 10.0], 101)]);
        let low = TargetOptions {
            area_threshold: 1,
            ..TargetOptions::default()
        };
        assert_eq!(instances_from_mask(&hundred, 30, 30, &low).len(), 1);
    }

    #[test]
    fn diagonal_pixels_are_one_component() {
        // two 11x11 squares touching only at a corner: (10,10) and (11,11)
        let m = mask(30, 30, &[(2, 0, 0, 11, 11), (2, 11, 11, 22, 22)]);
        let got = instances_from_mask(&m, 30, 30, &TargetOptions::default());
        assert_eq!(summary(&got), [(1, [0.0, 0.0, 22.0, 22.0], 242)]);
        // a one-pixel gap splits them, raster order of first pixels
        let m = mask(30, 30, &[(2, 12, 0, 23, 11), (2, 0, 12, 11, 23)]);
        let got = instances_from_mask(&m, 30, 30, &TargetOptions::default());
        assert_eq!(
            summary(&got),
            [
                (1, [12.0, 0.0, 23.0, 11.0], 121),
                (1, [0.0, 12.0, 11.0, 23.0], 121)
            ]
        );
    }

    #[test]
    fn consolidation_only_slice_by_value_and_original_quirk() {
        let m = mask(30, 30, &[(0, 20, 20, 30, 30), (3, 0, 0, 11, 11)]); // values {0,1,3}
        let by_value = instances_from_mask(&m, 30, 30, &TargetOptions::default());
        assert_eq!(summary(&by_value), [(2, [0.0, 0.0, 11.0, 11.0], 121)]);
        let quirk = TargetOptions {
            labelling: Labelling::OriginalRank,
            ..TargetOptions::default()
        };
        assert_eq!(
            summary(&instances_from_mask(&m, 30, 30, &quirk)),
            [(1, [0.0, 0.0, 11.0, 11.0], 121)]
        );
        // {1,3} (no background) and {0,3} (no lung): the quirk drops the two smallest values
        let no_background = mask(30, 30, &[(3, 0, 0, 11, 11)]);
        assert!(instances_from_mask(&no_background, 30, 30, &quirk).is_empty());
        let mut no_lung = m.clone();
        no_lung.iter_mut().filter(|v| **v == 1).for_each(|v| *v = 0);
        assert!(instances_from_mask(&no_lung, 30, 30, &quirk).is_empty());
        assert_eq!(
            instances_from_mask(&no_lung, 30, 30, &TargetOptions::default()).len(),
            1
        );
        // both lesion values present: the quirk and the values agree
        let both = mask(
            40,
            40,
            &[(0, 35, 35, 40, 40), (2, 0, 0, 11, 11), (3, 20, 20, 31, 31)],
        );
        let labels = |o: &TargetOptions| {
            instances_from_mask(&both, 40, 40, o)
                .iter()
                .map(|i| i.label)
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(&quirk), labels(&TargetOptions::default()));
    }

    #[test]
    fn mask_types_ggo_and_merge() {
        let m = mask(40, 40, &[(2, 0, 0, 11, 11), (3, 20, 20, 31, 31)]);
        let ggo = TargetOptions {
            mask_type: MaskType::Ggo,
            ..TargetOptions::default()
        };
        assert_eq!(
            summary(&instances_from_mask(&m, 40, 40, &ggo)),
            [(1, [0.0, 0.0, 11.0, 11.0], 121)]
        );
        let merge = TargetOptions {
            mask_type: MaskType::Merge,
            ..TargetOptions::default()
        };
        let labels: Vec<i64> = instances_from_mask(&m, 40, 40, &merge)
            .iter()
            .map(|i| i.label)
            .collect();
        assert_eq!(labels, [1, 1]);
    }

    fn write_png(path: &Path, w: u32, h: u32, px: Vec<u8>) {
        image::GrayImage::from_raw(w, h, px)
            .expect("size")
            .save(path)
            .expect("save png");
    }

    #[test]
    fn dataset_pairs_by_name_reads_split_and_names_unpaired_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (imgs, masks) = (dir.path().join("imgs"), dir.path().join("masks"));
        std::fs::create_dir_all(&imgs).expect("mkdir");
        std::fs::create_dir_all(&masks).expect("mkdir");
        for name in ["0_1", "0_2", "10_1"] {
            write_png(&imgs.join(format!("{name}.png")), 30, 30, vec![100; 900]);
            write_png(
                &masks.join(format!("{name}.png")),
                30,
                30,
                mask(30, 30, &[(2, 0, 0, 11, 11)]),
            );
        }
        let ds = CncbDataset::open(&imgs, &masks, None, CncbOptions::default()).expect("paired");
        assert_eq!(ds.len(), 3);
        let (slice, inst, path) = ds.item(2).expect("item");
        assert_eq!(
            (slice.width, inst.len(), path.file_name().unwrap().to_str()),
            (30, 1, Some("10_1.png"))
        );

        let split = dir.path().join("split.txt");
        std::fs::write(&split, "0_2.png\n10_1.png\n").expect("write");
        assert_eq!(
            CncbDataset::open(&imgs, &masks, Some(&split), CncbOptions::default())
                .expect("split")
                .len(),
            2
        );
        std::fs::write(&split, "0_2.png\n7_7.jpg\n").expect("write");
        let e = CncbDataset::open(&imgs, &masks, Some(&split), CncbOptions::default()).expect_err("missing");
        assert!(
            e.to_string()
                .ends_with("split.txt:2: 7_7.jpg is not in the image folder"),
            "{e}"
        );

        write_png(&imgs.join("5_5.png"), 30, 30, vec![0; 900]);
        write_png(&masks.join("6_6.png"), 30, 30, vec![0; 900]);
        let e = CncbDataset::open(&imgs, &masks, None, CncbOptions::default()).expect_err("unpaired");
        let text = e.to_string();
        assert!(text.contains("5_5.png") && text.contains("6_6.png"), "{text}");
    }
}
