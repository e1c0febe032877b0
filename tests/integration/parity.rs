//! Parity with torchvision 0.26 (PyTorch 2.11): the fixtures under `tests/fixtures/parity/` were
//! made by `scripts/reference/make_parity_fixtures.py` with the deterministic weights of
//! `docs/deterministic-weights.md`; ctmask builds the same weights, runs the same slices with the
//! torchvision preset and must give the same detections, and the same losses on the same sampled
//! anchors and proposals. Tolerances: boxes 1e-2 px, scores 1e-4, mask areas 1 %.

use std::collections::HashMap;
use std::path::PathBuf;

use ctmask::model::config::{ModelConfig, Semantics};
use ctmask::model::{MaskRcnn, deterministic_init};
use ctmask::ops::sampler::Sampled;
use tch::{Device, Kind, Tensor};

pub(super) fn fixtures() -> PathBuf {
    super::common::repo().join("tests/fixtures/parity")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(name))
        .unwrap()
        .into_iter()
        .collect()
}

pub fn image(i: usize) -> Tensor {
    let img = image::open(fixtures().join(format!("image{i}.png")))
        .unwrap()
        .to_rgb8();
    let (w, h) = img.dimensions();
    ctmask::model::transform::tensor_from_rgb(img.as_raw(), w, h, Device::Cpu).unwrap()
}

/// The JPEG versions of the parity images (`scripts/reference/jpeg_parity_fixtures.py`), read by
/// ctmask's own slice reader (libjpeg-turbo as PIL decodes it, `convert('RGB')`): the model input
/// screening gives it.
pub(super) const JPEG_IMAGES: [&str; 2] = ["image0_ycc420_q75.jpg", "image1_grey_prog_q90.jpg"];

pub(super) fn jpeg_image(i: usize) -> Tensor {
    let path = fixtures().join("jpeg").join(JPEG_IMAGES[i]);
    let mut slices = ctmask::slice::read_slices(&path, &Default::default()).unwrap();
    assert_eq!(slices.len(), 1);
    let s = slices.remove(0);
    assert_eq!(s.format, ctmask::slice::SliceFormat::Jpeg);
    ctmask::model::transform::tensor_from_rgb(&s.rgb, s.width, s.height, Device::Cpu).unwrap()
}

/// Which inputs a parity check runs on: the PNG phantoms, or their JPEG versions with the
/// fixtures torchvision gave on PIL's pixels of them.
#[derive(Clone, Copy)]
pub(super) enum Inputs {
    Png,
    Jpeg,
}

impl Inputs {
    pub(super) fn fixture(self, name: &str) -> HashMap<String, Tensor> {
        match self {
            Inputs::Png => load(name),
            Inputs::Jpeg => load(&format!("jpeg/{name}")),
        }
    }

    fn image(self, i: usize) -> Tensor {
        match self {
            Inputs::Png => image(i),
            Inputs::Jpeg => jpeg_image(i),
        }
    }
}

pub fn model(variant: &str, semantics: Semantics) -> MaskRcnn {
    let preset = match variant {
        "r50_fpn5_frozenbn" => "r50-fpn5-frozenbn",
        "r50_fpn4" => "r50-fpn4",
        _ => "r18-t1",
    };
    let cfg = ModelConfig::preset(preset).unwrap().with_semantics(semantics);
    let m = MaskRcnn::new(&cfg, Device::Cpu).unwrap();
    deterministic_init::fill(&m);
    m
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn close(name: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{name}: ctmask {got} vs torchvision {want}"
    );
}

/// One detection, as compared with the reference.
#[derive(Debug, Clone, PartialEq)]
struct Det {
    label: i64,
    score: f64,
    bbox: [f64; 4],
    area: i64,
}

/// Tolerances of detection parity: boxes 1e-2 px, scores 1e-4, mask areas 1 % (at least one
/// pixel); detections whose reference scores are within `tie` may come in either order.
const BOX_TOL: f64 = 1e-2;
const SCORE_TOL: f64 = 1e-4;
const TIE: f64 = 1e-5;

fn dets(boxes: &Tensor, labels: &Tensor, scores: &Tensor, areas: &[i64]) -> Vec<Det> {
    let b: Vec<Vec<f32>> = Vec::try_from(boxes.to_kind(Kind::Float).contiguous()).unwrap();
    let l: Vec<i64> = Vec::try_from(labels.to_kind(Kind::Int64)).unwrap();
    let s: Vec<f32> = Vec::try_from(scores.to_kind(Kind::Float)).unwrap();
    (0..l.len())
        .map(|i| Det {
            label: l[i],
            score: f64::from(s[i]),
            bbox: [0, 1, 2, 3].map(|k| f64::from(b[i][k])),
            area: areas[i],
        })
        .collect()
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter).max(1e-12)
}

/// Pair ctmask's detections with the reference's one to one, order-free: each reference
/// detection takes the unused prediction of its label with the best IoU among those whose
/// box and score are within tolerance. Ranks may differ only between detections whose
/// reference scores are tied within [`TIE`] (another CPU's kernels round differently); mask
/// areas are compared pair by pair. Returns the prediction index of each reference detection.
fn pair_detections(got: &[Det], want: &[Det]) -> Result<Vec<usize>, String> {
    if got.len() != want.len() {
        return Err(format!("{} detections vs {}", got.len(), want.len()));
    }
    let mut used = vec![false; got.len()];
    let mut pairs = Vec::with_capacity(want.len());
    for (j, w) in want.iter().enumerate() {
        let within = |g: &Det| {
            g.label == w.label
                && (g.score - w.score).abs() <= SCORE_TOL
                && g.bbox.iter().zip(&w.bbox).all(|(a, b)| (a - b).abs() <= BOX_TOL)
        };
        let pick = (0..got.len())
            .filter(|&i| !used[i] && within(&got[i]))
            .max_by(|&a, &b| iou(&got[a].bbox, &w.bbox).total_cmp(&iou(&got[b].bbox, &w.bbox)))
            .ok_or_else(|| {
                format!(
                    "reference detection {j} {w:?} has no partner (ctmask's {j} is {:?})",
                    got[j]
                )
            })?;
        used[pick] = true;
        pairs.push(pick);
    }
    for j1 in 0..want.len() {
        for j2 in j1 + 1..want.len() {
            let d = (want[j1].score - want[j2].score).abs();
            if pairs[j1] > pairs[j2] && d >= TIE {
                return Err(format!(
                    "detections {j1} and {j2} changed places though their scores differ by {d:e}"
                ));
            }
        }
    }
    for (j, (w, &i)) in want.iter().zip(&pairs).enumerate() {
        let tol = (w.area as f64 * 0.01).max(1.0);
        if ((got[i].area - w.area) as f64).abs() > tol {
            return Err(format!("detection {j}: mask area {} vs {}", got[i].area, w.area));
        }
    }
    Ok(pairs)
}

/// Detections of `m` against torchvision's on image `i` of the fixture.
pub fn compare_detections(m: &MaskRcnn, fx: &HashMap<String, Tensor>, i: usize) -> Result<(), String> {
    compare_detections_on(m, fx, i, &image(i))
}

/// Detections of `m` on `img` against the fixture's image `i`.
pub(super) fn compare_detections_on(
    m: &MaskRcnn,
    fx: &HashMap<String, Tensor>,
    i: usize,
    img: &Tensor,
) -> Result<(), String> {
    let p = |k: &str| &fx[&format!("img{i}.{k}")];
    let d = m
        .detect(std::slice::from_ref(img))
        .map_err(|e| e.to_string())?
        .remove(0);
    let n = p("det.count").int64_value(&[]);
    if n == 0 {
        return Err("the fixture has no detections".into());
    }
    let areas: Vec<i64> = Vec::try_from(
        d.binary_masks(ctmask::model::sigmoid(0.5))
            .unwrap()
            .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Int64),
    )
    .unwrap();
    let want_areas: Vec<i64> = Vec::try_from(p("det.mask_area_gt_sigmoid05")).unwrap();
    let got = dets(&d.boxes, &d.labels, &d.scores, &areas);
    let want = dets(p("det.boxes"), p("det.labels"), p("det.scores"), &want_areas);
    pair_detections(&got, &want).map(|_| ())
}

/// Detections against torchvision's, with the weights in the default layout and again laid out
/// channels-last (what screening on the CPU uses).
pub(super) fn check_detections(variant: &str, inputs: Inputs) {
    let fx = inputs.fixture(&format!("parity_{variant}.safetensors"));
    let mut m = model(variant, Semantics::Torchvision);
    let images = [inputs.image(0), inputs.image(1)];
    for (i, img) in images.iter().enumerate() {
        // the same pixels as torchvision's input: the normalised sum agrees
        let normed = ctmask::model::transform::batch_images(std::slice::from_ref(img), &m.cfg).unwrap();
        close(
            &format!("{variant} img{i} input.sum"),
            normed.tensors.sum(Kind::Double).double_value(&[]),
            fx[&format!("img{i}.input.sum")].double_value(&[]),
            1e-7,
        );
    }
    for (i, layout) in [(0, "nchw"), (1, "nchw"), (0, "nhwc"), (1, "nhwc")] {
        if layout == "nhwc" && i == 0 {
            m.set_channels_last();
        }
        if let Err(e) = compare_detections_on(&m, &fx, i, &images[i]) {
            panic!("{variant} ({layout}) img{i}: {e}");
        }
    }
}

#[test]
fn detection_parity_fails_on_one_perturbed_weight() {
    // the order-free comparison still sees a small real change: one bias of the box
    // classifier moved by 0.01
    let fx = load("parity_r18_t1.safetensors");
    let m = model("r18_t1", Semantics::Torchvision);
    assert_eq!(compare_detections(&m, &fx, 0), Ok(()));
    tch::no_grad(|| {
        let vars = m.vs.variables();
        let bias = vars["roi_heads.box_predictor.cls_score.bias"].shallow_clone();
        let _ = bias.get(1).g_add_scalar_(0.01);
    });
    assert!(
        compare_detections(&m, &fx, 0).is_err(),
        "a perturbed weight must fail parity"
    );
}

#[test]
fn detection_pairing_allows_swaps_of_tied_scores_only() {
    let det = |score: f64, x: f64| Det {
        label: 1,
        score,
        bbox: [x, 10.0, x + 20.0, 30.0],
        area: 300,
    };
    let want = vec![
        det(0.9, 0.0),
        det(0.600_003, 100.0),
        det(0.600_000, 200.0),
        det(0.1, 300.0),
    ];
    assert_eq!(pair_detections(&want, &want), Ok(vec![0, 1, 2, 3]));
    // a swap of scores tied to 3e-6 (another CPU's rounding) is allowed
    let swapped = vec![want[0].clone(), want[2].clone(), want[1].clone(), want[3].clone()];
    assert_eq!(pair_detections(&swapped, &want), Ok(vec![0, 2, 1, 3]));
    // the same swap of scores 0.3 apart is not
    let mut far = want.clone();
    far[2].score = 0.3;
    let far_swapped = vec![far[0].clone(), far[2].clone(), far[1].clone(), far[3].clone()];
    assert!(
        pair_detections(&far_swapped, &far)
            .unwrap_err()
            .contains("changed places")
    );
    // a box moved by more than the tolerance, another label, a mask area 2 % off: no partner
    let mut moved = want.clone();
    moved[3].bbox[0] += 0.05;
    assert!(pair_detections(&moved, &want).unwrap_err().contains("no partner"));
    let mut relabelled = want.clone();
    relabelled[0].label = 2;
    assert!(pair_detections(&relabelled, &want).is_err());
    let mut bigger = want.clone();
    bigger[1].area = 306;
    assert!(pair_detections(&bigger, &want).unwrap_err().contains("mask area"));
}

#[test]
fn r18_t1_detections_equal_torchvision() {
    check_detections("r18_t1", Inputs::Png);
}

#[test]
fn r50_fpn5_frozenbn_detections_equal_torchvision() {
    check_detections("r50_fpn5_frozenbn", Inputs::Png);
}

#[test]
fn r50_fpn4_detections_equal_torchvision() {
    check_detections("r50_fpn4", Inputs::Png);
}

fn unpack_masks(fx: &HashMap<String, Tensor>) -> Tensor {
    let shape: Vec<i64> = Vec::try_from(&fx["loss.gt.mask_shape"]).unwrap();
    let packed: Vec<u8> = Vec::try_from(fx["loss.gt.masks_packbits"].flatten(0, -1)).unwrap();
    let bits: Vec<u8> = packed
        .iter()
        .flat_map(|b| (0..8).rev().map(move |k| (b >> k) & 1))
        .collect();
    let n: i64 = shape.iter().product();
    Tensor::from_slice(&bits[..n as usize]).view(shape.as_slice())
}

/// Losses on the fixture's sampled anchors and proposals, for both semantics.
fn check_losses(variant: &str) {
    let fx = load(&format!("parity_{variant}.safetensors"));
    let f = |k: &str| fx[&format!("loss.{k}")].shallow_clone();
    for semantics in [Semantics::Torchvision, Semantics::Original] {
        let m = model(variant, semantics);
        let prefix = if semantics == Semantics::Torchvision {
            "losses"
        } else {
            "losses_v030"
        };
        let want = |k: &str| f(&format!("{prefix}.{k}")).double_value(&[]);
        let batch = ctmask::model::transform::batch_images(&[image(0)], &m.cfg).unwrap();
        let feats = m.backbone.forward_t(&batch.tensors, false);
        let out = m.rpn.head_outputs(&feats, (512, 512));
        let gt_boxes = f("gt.boxes");
        let (labels, matched) = m.rpn.assign_targets(&out.anchors, &gt_boxes);
        let targets = m.rpn.box_coder.encode(&matched, &out.anchors);
        let sampled = Sampled {
            positive: f("rpn.sampled_pos"),
            negative: f("rpn.sampled_neg"),
        };
        let order = Tensor::cat(&[f("rpn.sampled_pos"), f("rpn.sampled_neg")], 0);
        assert!(
            labels.index_select(0, &order).equal(&f("rpn.labels_sampled")),
            "{variant}: anchor labels"
        );
        let dobj = max_abs(
            &out.objectness.get(0).index_select(0, &order),
            &f("rpn.objectness_sampled"),
        );
        assert!(dobj < 1e-4, "{variant}: objectness differs by {dobj}");
        let (obj, rpn_box) = m.rpn.loss(&out, &[labels], &[targets], &[sampled]);
        close(
            "loss_objectness",
            obj.double_value(&[]),
            want("loss_objectness"),
            1e-4,
        );
        close(
            "loss_rpn_box_reg",
            rpn_box.double_value(&[]),
            want("loss_rpn_box_reg"),
            1e-4,
        );

        let props = f("roi.proposals_with_gt");
        let (matched, roi_labels) = m.roi_heads.assign(&props, &gt_boxes, &f("gt.labels"));
        let s = m
            .roi_heads
            .samples_at(&props, &gt_boxes, &matched, &roi_labels, &f("roi.sampled_inds"));
        assert!(s.labels.equal(&f("roi.labels")), "{variant}: RoI labels");
        assert!(
            s.matched_idxs.equal(&f("roi.matched_gt")),
            "{variant}: matched GT"
        );
        let rl = m.cfg.roi_levels();
        let (logits, regression) =
            m.roi_heads
                .box_forward(&feats[..rl], &[s.proposals.shallow_clone()], &[(512, 512)]);
        let dl = max_abs(&logits, &f("roi.class_logits"));
        assert!(dl < 1e-4, "{variant}: class logits differ by {dl}");
        let (cls, box_reg) =
            m.roi_heads
                .fastrcnn_loss(&logits, &regression, &s.labels, &s.regression_targets);
        close(
            "loss_classifier",
            cls.double_value(&[]),
            want("loss_classifier"),
            1e-4,
        );
        close(
            "loss_box_reg",
            box_reg.double_value(&[]),
            want("loss_box_reg"),
            1e-4,
        );

        let pos = f("mask.pos_in_sampled");
        let pboxes = s.proposals.index_select(0, &pos);
        let mask_logits = m
            .roi_heads
            .mask_forward(&feats[..rl], &[pboxes.shallow_clone()], &[(512, 512)])
            .unwrap();
        let loss_mask = m.roi_heads.mask_loss(
            &mask_logits,
            &pboxes,
            &unpack_masks(&fx),
            &s.labels.index_select(0, &pos),
            &s.matched_idxs.index_select(0, &pos),
        );
        close("loss_mask", loss_mask.double_value(&[]), want("loss_mask"), 1e-4);
    }
}

#[test]
fn r18_t1_losses_equal_torchvision_and_original() {
    check_losses("r18_t1");
}

#[test]
fn r50_fpn5_frozenbn_losses_equal_torchvision_and_original() {
    check_losses("r50_fpn5_frozenbn");
}

#[test]
fn operators_equal_torchvision() {
    use ctmask::ops::{boxes::BoxCoder, matcher::Matcher, nms, roi_align};
    let fx = load("ops.safetensors");
    let g = |k: &str| fx[k].shallow_clone();
    // RoIAlign forward and backward, fixed and adaptive sampling, three scales
    let input = g("roi_align.input");
    for (scale, name) in [(1.0, "1"), (0.25, "0.25"), (0.0625, "0.0625")] {
        let rois = g(&format!("roi_align.scale{name}.rois"));
        for (sr, sname) in [(2, "sr2"), (-1, "sradaptive")] {
            let x = input.detach().set_requires_grad(true);
            let out = roi_align::roi_align(&x, &rois, (7, 7), scale, sr);
            let d = max_abs(&out, &g(&format!("roi_align.scale{name}.{sname}.output")));
            assert!(d < 1e-4, "roi_align scale {name} {sname}: forward differs by {d}");
            (out * g("roi_align.grad_output")).sum(Kind::Float).backward();
            let dg = max_abs(
                &x.grad(),
                &g(&format!("roi_align.scale{name}.{sname}.grad_input")),
            );
            assert!(
                dg < 1e-3,
                "roi_align scale {name} {sname}: backward differs by {dg}"
            );
        }
    }
    for t in ["0.5", "0.75"] {
        let th: f64 = t.parse().unwrap();
        let keep = nms::nms(&g("nms.boxes"), &g("nms.scores"), th);
        assert!(keep.equal(&g(&format!("nms.keep_iou{t}"))), "nms {t}");
        let keep = nms::batched_nms(&g("nms.boxes"), &g("nms.scores"), &g("nms.idxs"), th);
        assert!(
            keep.equal(&g(&format!("batched_nms.keep_iou{t}"))),
            "batched nms {t}"
        );
    }
    for (w, name) in [
        ([1.0, 1.0, 1.0, 1.0], "w1111"),
        ([10.0, 10.0, 5.0, 5.0], "w10_10_5_5"),
    ] {
        let c = BoxCoder::new(w);
        let e = c.encode(&g("box_coder.reference"), &g("box_coder.proposals"));
        assert!(
            max_abs(&e, &g(&format!("box_coder.{name}.encoded"))) < 1e-5,
            "encode {name}"
        );
        let d = c.decode(&g(&format!("box_coder.{name}.codes")), &g("box_coder.proposals"));
        assert!(
            max_abs(&d, &g(&format!("box_coder.{name}.decoded"))) < 1e-3,
            "decode {name}"
        );
    }
    let m = Matcher::new(0.7, 0.3, true).matches(&g("matcher.iou"));
    assert!(m.equal(&g("matcher.rpn_0.7_0.3_lowq")), "rpn matcher");
    let m = Matcher::new(0.75, 0.5, false).matches(&g("matcher.iou"));
    assert!(m.equal(&g("matcher.roi_0.75_0.5")), "roi matcher");
    let hw: Vec<i64> = Vec::try_from(g("paste.image_hw")).unwrap();
    let pasted = ctmask::model::transform::paste_masks(
        &g("paste.masks").squeeze_dim(1),
        &g("paste.boxes"),
        (hw[0], hw[1]),
    );
    let dp = max_abs(&pasted, &g("paste.output").squeeze_dim(1));
    assert!(dp < 1e-5, "paste differs by {dp}");
    let lv = roi_align::map_levels(&g("levels.boxes"), 2, 5) + 2;
    assert!(lv.equal(&g("levels.level_k2_5")), "level mapper");
    let feats: Vec<Tensor> = (0..4).map(|i| g(&format!("msroialign.feature.{i}"))).collect();
    let hw: Vec<i64> = Vec::try_from(g("msroialign.image_hw")).unwrap();
    let pooled = roi_align::MultiScaleRoiAlign {
        output_size: 7,
        sampling_ratio: 2,
    }
    .pool(&feats, &[g("msroialign.boxes")], &[(hw[0], hw[1])]);
    let dm = max_abs(&pooled, &g("msroialign.output"));
    assert!(dm < 1e-4, "MultiScaleRoIAlign differs by {dm}");
    let cell = ctmask::model::anchors::base_anchors(&[2., 4., 8., 16., 32.], &[0.1, 0.25, 0.5, 1., 1.5, 2.]);
    assert!(max_abs(&cell, &g("anchors.cell")) == 0.0, "base anchors");
    let generator = ctmask::model::anchors::AnchorGenerator::new(
        vec![vec![2., 4., 8., 16., 32.]; 2],
        vec![vec![0.1, 0.25, 0.5, 1., 1.5, 2.]; 2],
        ctmask::model::config::AnchorStride::Floor,
    );
    let a = generator.anchors((64, 96), &[(4, 6), (2, 3)], Device::Cpu);
    assert!(
        max_abs(&a, &g("anchors.image_64x96_feats_4x6_2x3")) == 0.0,
        "anchors"
    );
}

/// For each reference row, the index of the row of `got` that matches it: the same score
/// within `tie` of another score or exactly in place, all values within `tol`. `got` and `want`
/// are `[k, 5]` rows in descending score order.
fn tie_matching(got: &Tensor, want: &Tensor, tie: f64, tol: f64) -> Result<Vec<i64>, String> {
    let rows = |t: &Tensor| -> Vec<Vec<f32>> { Vec::try_from(t.contiguous()).unwrap() };
    let (g, w) = (rows(got), rows(want));
    if g.len() != w.len() {
        return Err(format!("{} rows vs {}", g.len(), w.len()));
    }
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| ((x - y).abs() as f64) < tol);
    let mut used = vec![false; g.len()];
    let mut order = Vec::with_capacity(w.len());
    for (j, wr) in w.iter().enumerate() {
        let pick = (0..g.len())
            .filter(|&i| !used[i])
            .filter(|&i| i == j || ((g[i][0] - wr[0]).abs() as f64) < tie + tol)
            .find(|&i| close(&g[i], wr))
            .ok_or_else(|| format!("reference row {j} {wr:?} has no match (row {j} is {:?})", g[j]))?;
        if pick != j && ((g[j][0] - wr[0]).abs() as f64) > tie + 1e-6 {
            return Err(format!("row {j} moved to {pick} though its score is not tied"));
        }
        used[pick] = true;
        order.push(pick as i64);
    }
    Ok(order)
}

/// COVID-CT-Mask-Net's classification path (§4.2-4.4) against the Python reference built on
/// torchvision: the ranked `[score, dx, dy, dw, dh]` rows and the logits of S, within 1e-4.
pub(super) fn check_classifier(variant: &str, n: i64, s: i64, inputs: Inputs) {
    let fx = inputs.fixture(&format!("classifier_{variant}.safetensors"));
    let base = model(variant, Semantics::Torchvision).cfg;
    let mut cfg = base.into_classifier(n, s);
    cfg.roi_heads.box_min_size = None; // the reference redoes the RoI post-processing as the original
    let m = MaskRcnn::new(&cfg, Device::Cpu).unwrap();
    deterministic_init::fill(&m);
    for i in 0..2 {
        let p = |k: &str| &fx[&format!("img{i}.{k}")];
        let ranked = m.ranked(&inputs.image(i), false).unwrap();
        assert_eq!(
            ranked.size()[0],
            p("count").int64_value(&[]),
            "{variant} img{i}: rows kept"
        );
        // Rows whose scores tie to float rounding (within TIE) may come in either order: any
        // summation order other than torchvision's own kernel, or another CPU's, can swap them.
        // Match each row to a reference row of a tied score, then compare values within 1e-4.
        let want = p("ranked");
        let order = tie_matching(&ranked, want, TIE, 1e-4)
            .unwrap_or_else(|e| panic!("{variant} img{i}: ranked rows differ: {e}"));
        let in_reference_order = ranked.index_select(0, &Tensor::from_slice(&order));
        let d = max_abs(&in_reference_order, want);
        assert!(d < 1e-4, "{variant} img{i}: ranked rows differ by {d}");
        // Module S on the rows in the reference's order, padded as the model pads them.
        let cls = cfg.classifier.as_ref().unwrap();
        let (rows, padded) =
            ctmask::model::classifier::pad_ranked(&in_reference_order, cls.detections, cls.padding_seed);
        assert!(!padded);
        let logits: Vec<f32> =
            Vec::try_from(tch::no_grad(|| m.s2new.as_ref().unwrap().forward(&rows))).unwrap();
        let want: Vec<f32> = Vec::try_from(p("logits")).unwrap();
        for (g, w) in logits.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-4,
                "{variant} img{i}: logits {logits:?} vs {want:?}"
            );
        }
        // The model's own path gives the same logits when no tie was reordered.
        let c = m.classify(&inputs.image(i)).unwrap();
        assert!(!c.padded && !c.no_detections);
        if order.iter().enumerate().all(|(j, &o)| j as i64 == o) {
            for (g, w) in c.logits.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-4,
                    "{variant} img{i}: logits {:?} vs {want:?}",
                    c.logits
                );
            }
        }
    }
}

#[test]
fn r18_t1_classifier_equals_reference() {
    check_classifier("r18_t1", 128, 512, Inputs::Png);
}

#[test]
fn r50_fpn5_classifier_equals_reference() {
    check_classifier("r50_fpn5_frozenbn", 256, 1024, Inputs::Png);
}
