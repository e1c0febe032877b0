//! The hostile-file corpus of the decoders (issue 17), made here by code: multi-frame bombs for
//! every codec (a few hundred KB declaring thousands of large frames), huge declared sizes in
//! DICOM, PNG and JPEG headers, a deflate bomb, and a pickle REDUCE bomb for `import-weights`.
//! Each goes through the real binary beside good slices: every bomb is refused with its
//! reason, the good slices are still processed, and the process stays under 300 MB (peak RSS of
//! the child, from `/usr/bin/time`). Run times are printed, not asserted.

use std::path::{Path, PathBuf};

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR, smallvec::smallvec};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, OpenFileOptions};

const RSS_LIMIT_KB: i64 = 300 * 1024;

fn chest_path() -> PathBuf {
    super::common::shared().join("data/dicom/chest_ct1_128_crop_explicit_le.dcm")
}

/// The chest CT's data set under a file meta of transfer syntax `ts`.
fn chest_with_syntax(ts: &str) -> DefaultDicomObject {
    let chest = OpenFileOptions::new().open_file(chest_path()).unwrap();
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
        .media_storage_sop_instance_uid("2.25.1234")
        .build()
        .unwrap();
    let mut obj = DefaultDicomObject::new_empty_with_meta(meta);
    for e in chest.iter() {
        obj.put(e.clone());
    }
    obj
}

/// The chest CT with `rows` x `cols`, `frames` frames and the given pixel data, written with
/// transfer syntax `ts`.
fn dicom_bomb(
    path: &Path,
    ts: &str,
    rows: u16,
    cols: u16,
    frames: u32,
    pixels: DataElement<dicom_object::mem::InMemDicomObject>,
) {
    let mut obj = chest_with_syntax(ts);
    obj.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::U16(smallvec![rows]),
    ));
    obj.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::U16(smallvec![cols]),
    ));
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(frames.to_string()),
    ));
    obj.put(pixels);
    obj.write_to_file(path).unwrap();
}

fn fragments(frames: u32, len: usize) -> DataElement<dicom_object::mem::InMemDicomObject> {
    let frags: Vec<Vec<u8>> = (0..frames).map(|i| vec![(i % 200) as u8; len]).collect();
    DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), frags),
    )
}

fn crc_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out
}

/// Every bomb, each with the start of the reason it must be refused with.
pub(crate) fn corpus(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    let mut add = |name: &str, why: &'static str| {
        let p = dir.join(name);
        out.push((p.clone(), why));
        p
    };
    // multi-frame bombs: 3000 constant frames of 2048x2048 in every encapsulated codec
    for (name, ts) in [
        ("j2k_bomb.dcm", "1.2.840.10008.1.2.4.90"),
        ("jpeg_baseline_bomb.dcm", "1.2.840.10008.1.2.4.50"),
        ("jpeg_lossless_bomb.dcm", "1.2.840.10008.1.2.4.70"),
        ("jpegls_bomb.dcm", "1.2.840.10008.1.2.4.80"),
        ("rle_bomb.dcm", "1.2.840.10008.1.2.5"),
    ] {
        let p = add(name, "too large: 3000 frame(s) of 2048x2048");
        dicom_bomb(&p, ts, 2048, 2048, 3000, fragments(3000, 239));
    }
    // native pixel data declaring 9000 frames of 4096x4096 and holding a few bytes
    let p = add("native_bomb.dcm", "too large: 9000 frame(s) of 4096x4096");
    dicom_bomb(
        &p,
        "1.2.840.10008.1.2.1",
        4096,
        4096,
        9000,
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(smallvec![0, 0, 0, 0]),
        ),
    );
    // one huge frame
    let p = add("huge_rows.dcm", "too large: 65535x65535 exceeds limit");
    dicom_bomb(&p, "1.2.840.10008.1.2.4.90", 65535, 65535, 1, fragments(1, 239));
    // a deflated data set that inflates to 200 MB (a private element of zeros)
    let p = add(
        "deflate_bomb.dcm",
        "corrupt: deflated data set inflates to more than",
    );
    {
        let mut obj = chest_with_syntax("1.2.840.10008.1.2.1.99");
        obj.put(DataElement::new(
            dicom_core::Tag(0x0009, 0x1001),
            VR::OB,
            PrimitiveValue::from(vec![0u8; 200 << 20]),
        ));
        obj.write_to_file(&p).unwrap();
    }
    // PNG and JPEG headers declaring 100000 x 100000 (IHDR / SOF0), then nothing
    let p = add("png_bomb.png", "too large: 100000x100000 exceeds limit");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend(crc_chunk(b"IHDR", &ihdr));
    png.extend(crc_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(crc_chunk(b"IEND", &[]));
    std::fs::write(&p, png).unwrap();
    let p = add("jpeg_bomb.jpg", "too large: 60000x60000 exceeds limit");
    // a real 16x16 JPEG whose SOF0 then declares 60000 x 60000
    let mut jpg = Vec::new();
    image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]))
        .write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
        .unwrap();
    let sof = jpg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has SOF0");
    jpg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
    std::fs::write(&p, jpg).unwrap();
    out
}

/// Run the ctmask binary with stdout and stderr in files, under `/usr/bin/time` (Debian's
/// `time`, installed by `make test-tools`) for its peak RSS: the child's own `ru_maxrss` seen
/// from this process would include this test process's size (the kernel records the old
/// memory map's high-water mark at exec). Returns the exit code, the peak RSS in KB (`None`
/// without `/usr/bin/time`), seconds, stdout and stderr.
fn run_measured(args: &[&str], dir: &Path) -> (i32, Option<i64>, f64, String, String) {
    let (o, e, m) = (dir.join("stdout"), dir.join("stderr"), dir.join("maxrss"));
    let timer = Path::new("/usr/bin/time");
    let mut cmd = if timer.exists() {
        let mut c = std::process::Command::new(timer);
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&m)
            .arg(env!("CARGO_BIN_EXE_ctmask"));
        c
    } else {
        eprintln!("note: /usr/bin/time not found (make test-tools installs it): peak RSS not checked");
        std::process::Command::new(env!("CARGO_BIN_EXE_ctmask"))
    };
    let started = std::time::Instant::now();
    let status = cmd
        .args(args)
        .current_dir(super::common::repo())
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .status()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let rss = read(&m).lines().last().and_then(|l| l.trim().parse().ok());
    (status.code().unwrap_or(-1), rss, secs, read(&o), read(&e))
}

fn check_rss(what: &str, rss: Option<i64>) {
    if let Some(kb) = rss {
        eprintln!("{what}: peak RSS {} MB", kb / 1024);
        assert!(kb < RSS_LIMIT_KB, "{what}: peak RSS {} MB", kb / 1024);
    }
}

#[test]
fn decoder_bombs_are_refused_quickly_within_memory_and_good_slices_still_screen() {
    let dir = tempfile::tempdir().unwrap();
    let bombs = corpus(dir.path());
    if let Ok(keep) = std::env::var("CTMASK_KEEP_CORPUS") {
        for (p, _) in &bombs {
            std::fs::copy(p, Path::new(&keep).join(p.file_name().unwrap())).unwrap();
        }
    }
    let json = dir.path().join("out.json");
    let mut args: Vec<String> = [
        "segment",
        "--model",
        "pretrained_models/demo_segmentation.safetensors",
        "--device",
        "cpu",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.push(json.display().to_string());
    args.extend(bombs.iter().map(|(p, _)| p.display().to_string()));
    let bombs_only: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, rss, secs, _, stderr) = run_measured(&bombs_only, dir.path());
    eprintln!("{} bombs through `segment`: {secs:.2} s", bombs.len());
    assert_eq!(code, 2, "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), bombs.len());
    for (row, (path, why)) in rows.iter().zip(&bombs) {
        let got = row["error"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(why),
            "{}: {got:?} (expected {why:?})",
            path.display()
        );
    }
    check_rss("bombs only", rss);

    // the same bombs between two good slices: the good ones are segmented
    let mut mixed: Vec<String> = args[..7].to_vec();
    mixed.push(chest_path().display().to_string());
    mixed.extend(bombs.iter().map(|(p, _)| p.display().to_string()));
    mixed.push(chest_path().display().to_string());
    let mixed: Vec<&str> = mixed.iter().map(String::as_str).collect();
    let (code, _, secs, _, stderr) = run_measured(&mixed, dir.path());
    eprintln!("bombs between two good slices: {secs:.2} s");
    assert_eq!(code, 2, "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), bombs.len() + 2);
    for row in [&rows[0], &rows[rows.len() - 1]] {
        assert!(row.get("error").is_none() && row["width"] == 128, "{row:?}");
    }
}

/// `f = builtins.bar; t = (0,) * n; f(*t)` repeated `calls` times, in a zip checkpoint.
fn pickle_bomb(path: &Path, n: usize, calls: usize) {
    use std::io::Write;
    let mut p = b"\x80\x02cbuiltins\nbar\nq\x00(".to_vec();
    p.extend(std::iter::repeat_n(*b"K\x00", n).flatten());
    p.extend_from_slice(b"tq\x01");
    p.extend(std::iter::repeat_n(*b"h\x00h\x01R0", calls).flatten());
    p.extend_from_slice(b"N.");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("bomb/data.pkl", stored).unwrap();
    zip.write_all(&p).unwrap();
    zip.start_file("bomb/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

#[test]
fn a_pickle_reduce_bomb_is_refused_within_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.pth");
    // 60000 calls on a 60000-tuple: 3.6e9 copied ids (29 GB) without the limit; 480 KB on disk
    pickle_bomb(&bomb, 60_000, 60_000);
    let out = dir.path().join("x.safetensors");
    let (code, rss, secs, _, stderr) = run_measured(
        &[
            "import-weights",
            bomb.to_str().unwrap(),
            "--preset",
            "r18-t1",
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    eprintln!("pickle REDUCE bomb: {secs:.2} s");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("container items"), "{stderr}");
    check_rss("pickle REDUCE bomb", rss);
    assert!(!out.exists());
}
