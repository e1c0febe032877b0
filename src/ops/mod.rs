//! Maths with no weights, each tested alone: box geometry and coding, matching, sampling, NMS and
//! RoIAlign. libtorch lacks torchvision's compiled `roi_align`, `nms` and `batched_nms`; these
//! are written on tensor ops (spec §9 item 13, libtorch.md "Operators missing from libtorch").

pub mod boxes;
pub mod host;
pub mod matcher;
pub mod nms;
pub mod roi_align;
pub mod sampler;
