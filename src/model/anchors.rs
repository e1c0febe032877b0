//! Anchor generator (port of torchvision `anchor_utils.AnchorGenerator`, spec §2.3): per level,
//! base anchors `round([-ws, -hs, ws, hs] / 2)` in ratio-major, size-minor order, shifted to every
//! location with no half-stride offset, concatenated level by level in (y, x, anchor) order.
//! Anchors for an (image size, grid sizes) pair are computed once and cached.

use std::cell::RefCell;
use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::config::AnchorStride;

type CacheKey = ((i64, i64), Vec<(i64, i64)>, Device);

#[derive(Debug)]
pub struct AnchorGenerator {
    pub sizes: Vec<Vec<f64>>,
    pub aspect_ratios: Vec<Vec<f64>>,
    pub stride: AnchorStride,
    cache: RefCell<HashMap<CacheKey, Tensor>>,
}

/// Base anchors `[A, 4]` (float32) for one level.
pub fn base_anchors(sizes: &[f64], ratios: &[f64]) -> Tensor {
    let scales = Tensor::from_slice(&sizes.iter().map(|&s| s as f32).collect::<Vec<_>>());
    let ars = Tensor::from_slice(&ratios.iter().map(|&r| r as f32).collect::<Vec<_>>());
    let h_ratios = ars.sqrt();
    let w_ratios = h_ratios.reciprocal();
    let ws = (w_ratios.unsqueeze(1) * scales.unsqueeze(0)).reshape([-1]);
    let hs = (h_ratios.unsqueeze(1) * scales.unsqueeze(0)).reshape([-1]);
    (Tensor::stack(&[-&ws, -&hs, ws, hs], 1) / 2.0).round()
}

impl AnchorGenerator {
    pub fn new(sizes: Vec<Vec<f64>>, aspect_ratios: Vec<Vec<f64>>, stride: AnchorStride) -> Self {
        AnchorGenerator {
            sizes,
            aspect_ratios,
            stride,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Anchors `[sum_l H_l*W_l*A, 4]` for a padded image size and the levels' grid sizes.
    pub fn anchors(&self, image: (i64, i64), grids: &[(i64, i64)], device: Device) -> Tensor {
        let key = (image, grids.to_vec(), device);
        if let Some(a) = self.cache.borrow().get(&key) {
            return a.shallow_clone();
        }
        let per_level: Vec<Tensor> = grids
            .iter()
            .zip(self.sizes.iter().zip(&self.aspect_ratios))
            .map(|(&(gh, gw), (s, r))| {
                let (sh, sw) = match self.stride {
                    AnchorStride::Float => (image.0 as f64 / gh as f64, image.1 as f64 / gw as f64),
                    AnchorStride::Floor => ((image.0 / gh) as f64, (image.1 / gw) as f64),
                };
                let shifts_x = Tensor::arange(gw, (Kind::Float, device)) * sw;
                let shifts_y = Tensor::arange(gh, (Kind::Float, device)) * sh;
                let grid = Tensor::meshgrid_indexing(&[&shifts_y, &shifts_x], "ij");
                let (y, x) = (grid[0].reshape([-1]), grid[1].reshape([-1]));
                let shifts = Tensor::stack(&[&x, &y, &x, &y], 1); // [HW, 4]
                let base = base_anchors(s, r).to_device(device);
                (shifts.unsqueeze(1) + base.unsqueeze(0)).reshape([-1, 4])
            })
            .collect();
        let all = Tensor::cat(&per_level, 0);
        self.cache.borrow_mut().insert(key, all.shallow_clone());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_anchor_table_of_spec_2_3() {
        let b = base_anchors(&[2., 4., 8., 16., 32.], &[0.1, 0.25, 0.5, 1., 1.5, 2.]);
        let rows: Vec<Vec<f32>> = Vec::try_from(&b).unwrap();
        #[rustfmt::skip]
        let want: [[f32; 4]; 30] = [
            [-3.,0.,3.,0.], [-6.,-1.,6.,1.], [-13.,-1.,13.,1.], [-25.,-3.,25.,3.], [-51.,-5.,51.,5.],
            [-2.,0.,2.,0.], [-4.,-1.,4.,1.], [-8.,-2.,8.,2.], [-16.,-4.,16.,4.], [-32.,-8.,32.,8.],
            [-1.,-1.,1.,1.], [-3.,-1.,3.,1.], [-6.,-3.,6.,3.], [-11.,-6.,11.,6.], [-23.,-11.,23.,11.],
            [-1.,-1.,1.,1.], [-2.,-2.,2.,2.], [-4.,-4.,4.,4.], [-8.,-8.,8.,8.], [-16.,-16.,16.,16.],
            [-1.,-1.,1.,1.], [-2.,-2.,2.,2.], [-3.,-5.,3.,5.], [-7.,-10.,7.,10.], [-13.,-20.,13.,20.],
            [-1.,-1.,1.,1.], [-1.,-3.,1.,3.], [-3.,-6.,3.,6.], [-6.,-11.,6.,11.], [-11.,-23.,11.,23.],
        ];
        for (i, w) in want.iter().enumerate() {
            let got: Vec<f32> = rows[i].iter().map(|v| if *v == 0.0 { 0.0 } else { *v }).collect();
            assert_eq!(got, w.to_vec(), "base anchor {i}");
        }
    }

    #[test]
    fn counts_order_and_cache() {
        let g = AnchorGenerator::new(vec![vec![2., 4.]; 2], vec![vec![1.]; 2], AnchorStride::Float);
        let a = g.anchors((64, 64), &[(16, 16), (8, 8)], Device::Cpu);
        assert_eq!(a.size(), vec![(256 + 64) * 2, 4]);
        // second location of level 0 (y=0, x=1): shift 4
        let row: Vec<f32> = Vec::try_from(a.get(2)).unwrap();
        assert_eq!(row, vec![3., -1., 5., 1.]);
        // (y=1, x=0) is location 16
        let row: Vec<f32> = Vec::try_from(a.get(32)).unwrap();
        assert_eq!(row, vec![-1., 3., 1., 5.]);
        let b = g.anchors((64, 64), &[(16, 16), (8, 8)], Device::Cpu);
        assert_eq!(a.data_ptr(), b.data_ptr());
        // the original's float strides differ from floor strides on odd grids
        let f = AnchorGenerator::new(vec![vec![2.]], vec![vec![1.]], AnchorStride::Float);
        let fl = AnchorGenerator::new(vec![vec![2.]], vec![vec![1.]], AnchorStride::Floor);
        let xf: Vec<f32> = Vec::try_from(f.anchors((544, 544), &[(9, 9)], Device::Cpu).get(1)).unwrap();
        let xl: Vec<f32> = Vec::try_from(fl.anchors((544, 544), &[(9, 9)], Device::Cpu).get(1)).unwrap();
        assert!((xf[0] - (544.0 / 9.0 - 1.0)).abs() < 1e-4);
        assert_eq!(xl[0], 59.0);
    }
}
