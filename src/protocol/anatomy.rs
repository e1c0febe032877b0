//! The anatomical order of a series' slices, one rule for the series reports, the socket's
//! `series` answer and the dashboard (before the daemon's own list arrives): by
//! ImagePositionPatient z (ascending: feet to head) when every slice has it, else SliceLocation,
//! else InstanceNumber, else file name; ties by (frame, job id).

use std::cmp::Ordering;

use super::SliceSummary;

/// What the order reads of a slice (implemented by each format that lists slices).
pub trait SlicePosition {
    fn position_z(&self) -> Option<f64>;
    fn slice_location(&self) -> Option<f64>;
    fn instance_number(&self) -> Option<i32>;
    fn file_name(&self) -> &str;
    /// (frame, job id): the order among slices at the same place.
    fn tie(&self) -> (Option<u32>, i64);
}

/// Sorts `slices` anatomically; returns the key used (`image_position_z`, `slice_location`,
/// `instance_number` or `file_name`).
pub fn anatomical_order<T: SlicePosition>(slices: &mut [T]) -> &'static str {
    let tie = |a: &T, b: &T| a.tie().cmp(&b.tie());
    let by = |a: Option<f64>, b: Option<f64>| a.partial_cmp(&b).unwrap_or(Ordering::Equal);
    if slices.iter().all(|s| s.position_z().is_some()) {
        slices.sort_by(|a, b| by(a.position_z(), b.position_z()).then(tie(a, b)));
        "image_position_z"
    } else if slices.iter().all(|s| s.slice_location().is_some()) {
        slices.sort_by(|a, b| by(a.slice_location(), b.slice_location()).then(tie(a, b)));
        "slice_location"
    } else if slices.iter().all(|s| s.instance_number().is_some()) {
        slices.sort_by(|a, b| a.instance_number().cmp(&b.instance_number()).then(tie(a, b)));
        "instance_number"
    } else {
        slices.sort_by(|a, b| a.file_name().cmp(b.file_name()).then(tie(a, b)));
        "file_name"
    }
}

/// Implements [`SlicePosition`] for a slice type with the usual field names.
macro_rules! slice_position {
    ($t:ty) => {
        impl $crate::protocol::SlicePosition for $t {
            fn position_z(&self) -> Option<f64> {
                self.position_z
            }
            fn slice_location(&self) -> Option<f64> {
                self.slice_location
            }
            fn instance_number(&self) -> Option<i32> {
                self.instance_number
            }
            fn file_name(&self) -> &str {
                &self.file_name
            }
            fn tie(&self) -> (Option<u32>, i64) {
                (self.frame, self.job_id)
            }
        }
    };
}

pub(crate) use slice_position;

slice_position!(SliceSummary);
