//! The COVIDx-CT classification set: labelled slice paths (port of the original
//! `dataset_classifier.py` labelling, spec §3.2 and §3.4).
//!
//! Labels come from file names `<cls>_<patient>_<scan>_<slice>.png` whose `<cls>` is 0/1/2
//! or `Normal`/`CP`/`NCP` (0 Control, 1 common pneumonia, 2 COVID-19), or from COVIDx split
//! files with lines `<file> <class> <xmin> <ymin> <xmax> <ymax>` (the crop box is kept but,
//! as in the original, not applied).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CovidxError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: cannot label {name}: expected <cls>_<patient>_<scan>_<slice>.png with cls 0/1/2 or Normal/CP/NCP"
    )]
    Unlabelled { path: PathBuf, name: String },
    #[error("{path}:{line}: {message}")]
    Split {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Labelled slices in file-name order (from a folder) or split-file order.
#[derive(Debug, Clone, Default)]
pub struct CovidxDataset {
    items: Vec<(PathBuf, u8)>,
    boxes: Vec<Option<[u32; 4]>>,
}

/// The class of a COVIDx file name, if its prefix names one.
pub fn label_from_name(name: &str) -> Option<u8> {
    let mut parts = name.split('_');
    let label = match parts.next()? {
        "0" | "Normal" => 0,
        "1" | "CP" => 1,
        "2" | "NCP" => 2,
        _ => return None,
    };
    // <patient>_<scan>_<slice>.<ext>
    (parts.count() == 3 && name.contains('.')).then_some(label)
}

impl CovidxDataset {
    /// Every visible image file of `dir` (PNG, JPEG, DICOM by extension; split files and other
    /// text beside them are skipped), sorted by name, labelled by its name.
    pub fn from_dir(dir: &Path) -> Result<Self, CovidxError> {
        let io = |source| CovidxError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let lower = name.to_ascii_lowercase();
            let text = [".txt", ".csv", ".json", ".md"]
                .iter()
                .any(|x| lower.ends_with(x));
            if !name.starts_with('.') && !text && path.is_file() {
                names.push(name);
            }
        }
        names.sort();
        let mut items = Vec::with_capacity(names.len());
        for name in names {
            let label = label_from_name(&name).ok_or_else(|| CovidxError::Unlabelled {
                path: dir.to_path_buf(),
                name: name.clone(),
            })?;
            items.push((dir.join(name), label));
        }
        let boxes = vec![None; items.len()];
        Ok(Self { items, boxes })
    }

    /// The files listed in a COVIDx split file, found in `image_dir`.
    pub fn from_split(split_file: &Path, image_dir: &Path) -> Result<Self, CovidxError> {
        let text = std::fs::read_to_string(split_file).map_err(|source| CovidxError::Io {
            path: split_file.to_path_buf(),
            source,
        })?;
        let mut out = Self::default();
        for (line, content) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let err = |message: String| CovidxError::Split {
                path: split_file.to_path_buf(),
                line,
                message,
            };
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.len() != 2 && fields.len() != 6 {
                return Err(err(format!(
                    "expected `<file> <class> <xmin> <ymin> <xmax> <ymax>`, got {} fields",
                    fields.len()
                )));
            }
            let label = match fields[1] {
                "0" => 0,
                "1" => 1,
                "2" => 2,
                other => return Err(err(format!("class {other} is not 0, 1 or 2"))),
            };
            if let Some(named) = label_from_name(fields[0]).filter(|&l| l != label) {
                return Err(err(format!(
                    "{} is named class {named} but listed as {label}",
                    fields[0]
                )));
            }
            let crop = if fields.len() == 6 {
                let mut b = [0u32; 4];
                for (v, f) in b.iter_mut().zip(&fields[2..]) {
                    *v = f.parse().map_err(|_| err(format!("bad box value {f}")))?;
                }
                Some(b)
            } else {
                None
            };
            let path = image_dir.join(fields[0]);
            if !path.is_file() {
                return Err(err(format!("{} not found in {}", fields[0], image_dir.display())));
            }
            out.items.push((path, label));
            out.boxes.push(crop);
        }
        Ok(out)
    }

    pub fn items(&self) -> &[(PathBuf, u8)] {
        &self.items
    }

    /// The split file's crop boxes `[xmin, ymin, xmax, ymax]`, parallel to `items()`.
    pub fn crop_boxes(&self) -> &[Option<[u32; 4]>] {
        &self.boxes
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_names() {
        assert_eq!(label_from_name("0_1728_1013_0023.png"), Some(0));
        assert_eq!(label_from_name("2_236_1618_0096.png"), Some(2));
        assert_eq!(label_from_name("NCP_341_1834_0022.png"), Some(2));
        assert_eq!(label_from_name("CP_1_2_0003.png"), Some(1));
        assert_eq!(label_from_name("Normal_1_2_0003.png"), Some(0));
        assert_eq!(label_from_name("3_1_2_0003.png"), None);
        assert_eq!(label_from_name("scan_0003.png"), None);
        assert_eq!(label_from_name("0_1_2.png"), None);
    }

    #[test]
    fn from_dir_sorts_and_rejects_unlabelled_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["2_5_6_0001.png", "0_1_2_0003.png", "NCP_9_9_0001.png", ".hidden"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let ds = CovidxDataset::from_dir(dir.path()).expect("labelled");
        let got: Vec<(String, u8)> = ds
            .items()
            .iter()
            .map(|(p, l)| (p.file_name().unwrap().to_string_lossy().into_owned(), *l))
            .collect();
        assert_eq!(
            got,
            [
                ("0_1_2_0003.png".into(), 0),
                ("2_5_6_0001.png".into(), 2),
                ("NCP_9_9_0001.png".into(), 2)
            ]
        );

        std::fs::write(dir.path().join("slice_7.png"), b"x").expect("write");
        let e = CovidxDataset::from_dir(dir.path()).expect_err("unlabelled");
        assert!(e.to_string().contains("cannot label slice_7.png"), "{e}");
    }

    #[test]
    fn from_split_reads_classes_and_boxes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("NCP_341_1834_0022.png"), b"x").expect("write");
        std::fs::write(dir.path().join("Normal_1_2_0003.png"), b"x").expect("write");
        let split = dir.path().join("train.txt");
        std::fs::write(
            &split,
            "NCP_341_1834_0022.png 2 0 130 512 429\n\nNormal_1_2_0003.png 0 1 2 3 4\n",
        )
        .expect("write");
        let ds = CovidxDataset::from_split(&split, dir.path()).expect("split");
        assert_eq!(ds.items().iter().map(|i| i.1).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(ds.crop_boxes()[0], Some([0, 130, 512, 429]));

        for (text, want) in [
            (
                "NCP_341_1834_0022.png 1 0 0 1 1\n",
                "named class 2 but listed as 1",
            ),
            ("NCP_341_1834_0022.png 7 0 0 1 1\n", "class 7 is not 0, 1 or 2"),
            ("missing.png 0 0 0 1 1\n", "missing.png not found"),
            ("NCP_341_1834_0022.png 2 0 0\n", "got 4 fields"),
        ] {
            std::fs::write(&split, text).expect("write");
            let e = CovidxDataset::from_split(&split, dir.path()).expect_err(want);
            assert!(
                e.to_string().contains(want) && e.to_string().contains(":1:"),
                "{e}"
            );
        }
    }
}
