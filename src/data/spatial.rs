//! The SENSEI spatial augmentor: rotation, translation, shear, zoom, brightness and contrast,
//! each on a grid of discrete steps, for spatial-robustness training and test sets.
//!
//! Geometry is one affine warp about the image centre (bilinear sampling, zero outside the
//! source), so that combining operators blurs the image once, not once per operator. Photometry
//! follows: contrast about each channel's mean, then brightness, then rounding to 8 bits.

use rand::Rng;

use super::preprocess::Preprocess;
use crate::error::{Error, Result};

/// A range of one operator: `centre + s·step` for the integer steps `s ∈ [-max_steps, max_steps]`.
#[derive(Debug, Clone, Copy)]
struct Steps {
    centre: f32,
    step: f32,
    max_steps: i32,
}

impl Steps {
    const ROTATION: Steps = Steps { centre: 0.0, step: 1.0, max_steps: 30 };
    const SHEAR: Steps = Steps { centre: 0.0, step: 3.0, max_steps: 6 };
    const ZOOM: Steps = Steps { centre: 1.0, step: 0.05, max_steps: 2 };
    const BRIGHTNESS: Steps = Steps { centre: 0.0, step: 2.0, max_steps: 16 };
    const CONTRAST: Steps = Steps { centre: 1.0, step: 0.05, max_steps: 4 };

    /// ±10 % of a side in whole pixels (none below 10 pixels); the step counts pixels.
    fn translation(side: usize) -> Steps {
        Steps { centre: 0.0, step: 1.0, max_steps: i32::try_from(side / 10).unwrap_or(i32::MAX) }
    }

    fn value(self, steps: i32) -> f32 {
        self.centre + steps as f32 * self.step
    }

    /// A step anywhere in the range.
    fn full(self, rng: &mut impl Rng) -> i32 {
        rng.gen_range(-self.max_steps..=self.max_steps)
    }

    /// A step whose distance from the centre lies in the `level`-th fifth of the half range,
    /// `((level-1)/5, level/5]`, with a random sign. Where that fifth holds no step (coarse grids:
    /// zoom, contrast, translation of small images) the smallest step above its lower end is
    /// taken, so every level perturbs and higher levels never perturb less.
    fn level(self, level: u8, rng: &mut impl Rng) -> i32 {
        if self.max_steps == 0 {
            return 0;
        }
        let (k, max) = (i64::from(level), i64::from(self.max_steps));
        let low = (k - 1) * max / 5 + 1;
        let high = (k * max / 5).max(low);
        let magnitude = rng.gen_range(low..=high) as i32;
        if rng.gen_bool(0.5) {
            magnitude
        } else {
            -magnitude
        }
    }
}

/// One draw of the six operators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpatialParams {
    /// Degrees, counter-clockwise as seen on screen.
    pub rotation: f32,
    /// Pixels, to the right.
    pub translate_x: i32,
    /// Pixels, downwards.
    pub translate_y: i32,
    /// Degrees of horizontal shear (`x' = x + tan(shear)·y`).
    pub shear: f32,
    /// Scale factor of the content (> 1 enlarges).
    pub zoom: f32,
    /// 8-bit intensity levels added to every value.
    pub brightness: i32,
    /// Factor applied to each value's distance from its channel mean.
    pub contrast: f32,
}

/// The test levels of the brief: level k draws from the k-th fifth of every range.
pub const LEVELS: std::ops::RangeInclusive<u8> = 1..=5;

impl SpatialParams {
    /// Leaves the image unchanged.
    pub const IDENTITY: SpatialParams =
        SpatialParams { rotation: 0.0, translate_x: 0, translate_y: 0, shear: 0.0, zoom: 1.0, brightness: 0, contrast: 1.0 };

    /// Draws each operator uniformly over its whole grid (training augmentation) for an `h×w` image.
    pub fn sample_full(rng: &mut impl Rng, h: usize, w: usize) -> SpatialParams {
        Self::draw(h, w, |steps| steps.full(rng))
    }

    /// Draws each operator from the `level`-th fifth of its range on either side of the centre
    /// (test level 1..=5) for an `h×w` image.
    pub fn sample_level(level: u8, rng: &mut impl Rng, h: usize, w: usize) -> Result<SpatialParams> {
        if !LEVELS.contains(&level) {
            return Err(Error::Config(format!("spatial level {level} is not in 1..=5")));
        }
        Ok(Self::draw(h, w, |steps| steps.level(level, rng)))
    }

    /// Draws the operators in a fixed order, so one rng state gives one set of parameters.
    fn draw(h: usize, w: usize, mut pick: impl FnMut(Steps) -> i32) -> SpatialParams {
        let rotation = Steps::ROTATION.value(pick(Steps::ROTATION));
        let translate_x = pick(Steps::translation(w));
        let translate_y = pick(Steps::translation(h));
        let shear = Steps::SHEAR.value(pick(Steps::SHEAR));
        let zoom = Steps::ZOOM.value(pick(Steps::ZOOM));
        let brightness = Steps::BRIGHTNESS.value(pick(Steps::BRIGHTNESS)) as i32;
        let contrast = Steps::CONTRAST.value(pick(Steps::CONTRAST));
        SpatialParams { rotation, translate_x, translate_y, shear, zoom, brightness, contrast }
    }

    /// The augmented copy of an 8-bit `h×w×c` image (channels interleaved).
    pub fn apply(&self, image: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
        let strides = Strides { row: w * c, column: c, channel: 1 };
        let mut values = self.warp(image, h, w, c, strides, &vec![0.0; c]);
        self.adjust(&mut values, c, strides, &vec![self.brightness as f32; c]);
        values.into_iter().map(|v| v.round_ties_even().clamp(0.0, 255.0) as u8).collect()
    }

    /// The augmented copy of a float `c×h×w` image already normalised by `pre`
    /// (`(v·scale − mean[c]) / std[c]`, one mean and std per channel): the zero fill and the
    /// brightness step are mapped into that space, nothing is rounded or clamped.
    pub fn apply_normalized(&self, image: &[f32], c: usize, h: usize, w: usize, pre: &Preprocess) -> Vec<f32> {
        let strides = Strides { row: w, column: 1, channel: h * w };
        let fill: Vec<f32> = pre.mean.iter().zip(&pre.std).map(|(m, s)| -m / s).collect();
        let brightness: Vec<f32> = pre.std.iter().map(|s| self.brightness as f32 * pre.scale / s).collect();
        let mut values = self.warp(image, h, w, c, strides, &fill);
        self.adjust(&mut values, c, strides, &brightness);
        values
    }

    /// Samples the image through the inverse of `translate · centre · rotate · shear · zoom ·
    /// centre⁻¹`, bilinearly; neighbours outside the image count as `fill` of their channel.
    fn warp<T: Copy + Into<f32>>(&self, image: &[T], h: usize, w: usize, c: usize, strides: Strides, fill: &[f32]) -> Vec<f32> {
        let (sin, cos) = self.rotation.to_radians().sin_cos();
        let tan = self.shear.to_radians().tan();
        // Forward matrix (y pointing down, positive angles counter-clockwise on screen).
        let m = [
            [cos * self.zoom, (cos * tan + sin) * self.zoom],
            [-sin * self.zoom, (-sin * tan + cos) * self.zoom],
        ];
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        let inv = [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]];
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let mut out = vec![0f32; image.len()];
        let pixel = |x: isize, y: isize, ch: usize| -> f32 {
            if x < 0 || y < 0 || x as usize >= w || y as usize >= h {
                fill[ch]
            } else {
                image[y as usize * strides.row + x as usize * strides.column + ch * strides.channel].into()
            }
        };
        for y in 0..h {
            for x in 0..w {
                let u = x as f32 - cx - self.translate_x as f32;
                let v = y as f32 - cy - self.translate_y as f32;
                let sx = inv[0][0] * u + inv[0][1] * v + cx;
                let sy = inv[1][0] * u + inv[1][1] * v + cy;
                let base = y * strides.row + x * strides.column;
                if !(sx.is_finite() && sy.is_finite() && sx.abs() < 1e6 && sy.abs() < 1e6) {
                    (0..c).for_each(|ch| out[base + ch * strides.channel] = fill[ch]);
                    continue;
                }
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let (x0, y0) = (x0 as isize, y0 as isize);
                for ch in 0..c {
                    let top = pixel(x0, y0, ch) * (1.0 - fx) + pixel(x0 + 1, y0, ch) * fx;
                    let bottom = pixel(x0, y0 + 1, ch) * (1.0 - fx) + pixel(x0 + 1, y0 + 1, ch) * fx;
                    out[base + ch * strides.channel] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        out
    }

    /// Contrast about each channel's mean, then the per-channel brightness offset.
    fn adjust(&self, values: &mut [f32], c: usize, strides: Strides, brightness: &[f32]) {
        if c == 0 || values.is_empty() {
            return;
        }
        let channel = |i: usize| (i / strides.channel) % c;
        let mut sums = vec![0f64; c];
        for (i, v) in values.iter().enumerate() {
            sums[channel(i)] += f64::from(*v);
        }
        let count = (values.len() / c) as f64;
        let means: Vec<f32> = sums.iter().map(|s| (s / count) as f32).collect();
        for (i, v) in values.iter_mut().enumerate() {
            let ch = channel(i);
            *v = (*v - means[ch]) * self.contrast + means[ch] + brightness[ch];
        }
    }
}

/// How to find value (y, x, channel) in a flat image.
#[derive(Debug, Clone, Copy)]
struct Strides {
    row: usize,
    column: usize,
    channel: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A deterministic 8-bit test pattern of `h×w×c` values.
    fn pattern(h: usize, w: usize, c: usize) -> Vec<u8> {
        (0..h * w * c).map(|i| ((i * 37 + i / 7) % 251) as u8).collect()
    }

    #[test]
    fn identity_changes_nothing() {
        let image = pattern(32, 32, 3);
        assert_eq!(SpatialParams::IDENTITY.apply(&image, 32, 32, 3), image);
        let odd = pattern(5, 7, 1);
        assert_eq!(SpatialParams::IDENTITY.apply(&odd, 5, 7, 1), odd);
    }

    #[test]
    fn translation_moves_pixels_by_whole_steps() {
        let (h, w, c) = (6, 8, 3);
        let image = pattern(h, w, c);
        let right = SpatialParams { translate_x: 1, ..SpatialParams::IDENTITY }.apply(&image, h, w, c);
        let down = SpatialParams { translate_y: 2, ..SpatialParams::IDENTITY }.apply(&image, h, w, c);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let at = |y: usize, x: usize| image[(y * w + x) * c + ch];
                    let expected_right = if x == 0 { 0 } else { at(y, x - 1) };
                    let expected_down = if y < 2 { 0 } else { at(y - 2, x) };
                    assert_eq!(right[(y * w + x) * c + ch], expected_right, "right ({y},{x},{ch})");
                    assert_eq!(down[(y * w + x) * c + ch], expected_down, "down ({y},{x},{ch})");
                }
            }
        }
    }

    #[test]
    fn rotation_is_counter_clockwise_about_the_centre() {
        // A bright pixel right of the centre of a 3×3 image ends up above it.
        let mut image = vec![0u8; 9];
        image[3 + 2] = 200;
        let rotated = SpatialParams { rotation: 90.0, ..SpatialParams::IDENTITY }.apply(&image, 3, 3, 1);
        let mut expected = vec![0u8; 9];
        expected[1] = 200;
        assert_eq!(rotated, expected);
    }

    #[test]
    fn zoom_enlarges_about_the_centre() {
        // Zoom 2 on a 1-D ramp: the centre stays, neighbours move half as far from it.
        let image: Vec<u8> = (0..5).map(|x| x * 40).collect();
        let zoomed = SpatialParams { zoom: 2.0, ..SpatialParams::IDENTITY }.apply(&image, 1, 5, 1);
        assert_eq!(zoomed[2], 80);
        assert_eq!(zoomed[3], 100);
        assert_eq!(zoomed[1], 60);
    }

    #[test]
    fn photometric_operators() {
        let image = vec![100, 100, 140, 140];
        let brighter = SpatialParams { brightness: 10, ..SpatialParams::IDENTITY }.apply(&image, 2, 2, 1);
        assert_eq!(brighter, vec![110, 110, 150, 150]);
        let stronger = SpatialParams { contrast: 1.5, ..SpatialParams::IDENTITY }.apply(&image, 2, 2, 1);
        assert_eq!(stronger, vec![90, 90, 150, 150]);
        let clipped = SpatialParams { brightness: 200, ..SpatialParams::IDENTITY }.apply(&image, 2, 2, 1);
        assert_eq!(clipped, vec![255; 4]);
    }

    #[test]
    fn normalized_variant_agrees_with_the_8_bit_one() {
        let (c, h, w) = (3, 9, 11);
        let image = pattern(h, w, c);
        let pre = Preprocess { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], ..Preprocess::default() };
        let (scale, mean, std) = (pre.scale, &pre.mean, &pre.std);
        let params = SpatialParams { rotation: 13.0, translate_x: -1, translate_y: 1, shear: 6.0, zoom: 1.05, brightness: -12, contrast: 0.85 };
        let via_u8 = params.apply(&image, h, w, c);
        let mut chw = vec![0f32; image.len()];
        for (i, v) in image.iter().enumerate() {
            let ch = i % c;
            chw[ch * h * w + i / c] = (*v as f32 * scale - mean[ch]) / std[ch];
        }
        let via_f32 = params.apply_normalized(&chw, c, h, w, &pre);
        for (i, v) in via_u8.iter().enumerate() {
            let ch = i % c;
            let expected = (*v as f32 * scale - mean[ch]) / std[ch];
            // The 8-bit path rounds; half a level apart at most (no value clips in this draw).
            let got = via_f32[ch * h * w + i / c];
            assert!((got - expected).abs() <= 0.51 * scale / std[ch], "value {i}: {got} vs {expected}");
        }
    }

    #[test]
    fn levels_draw_from_their_fifth_of_each_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for level in LEVELS {
            let k = f32::from(level);
            let mut signs = (false, false);
            let (mut zooms, mut contrasts, mut shifts) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..500 {
                let p = SpatialParams::sample_level(level, &mut rng, 32, 32).unwrap();
                let within = |value: f32, fifth: f32| value.abs() > (k - 1.0) * fifth && value.abs() <= k * fifth + 1e-4;
                assert!(within(p.rotation, 6.0), "level {level}: rotation {}", p.rotation);
                assert!(within(p.shear, 3.6), "level {level}: shear {}", p.shear);
                assert!(within(p.brightness as f32, 6.4), "level {level}: brightness {}", p.brightness);
                assert_eq!(p.rotation.fract(), 0.0);
                assert_eq!(p.brightness % 2, 0);
                signs = (signs.0 || p.rotation > 0.0, signs.1 || p.rotation < 0.0);
                zooms.push(((p.zoom - 1.0).abs() * 100.0).round() as i32);
                contrasts.push(((p.contrast - 1.0).abs() * 100.0).round() as i32);
                shifts.extend([p.translate_x.abs(), p.translate_y.abs()]);
            }
            assert_eq!(signs, (true, true), "level {level} draws both signs");
            let only = |values: &mut Vec<i32>| {
                values.sort();
                values.dedup();
                values.clone()
            };
            // Coarse grids: the step in the fifth, or the smallest step above its lower end.
            let expected_zoom = [5, 5, 5, 10, 10][usize::from(level - 1)];
            let expected_contrast = [5, 5, 10, 15, 20][usize::from(level - 1)];
            let expected_shift = [1, 1, 2, 2, 3][usize::from(level - 1)];
            assert_eq!(only(&mut zooms), [expected_zoom], "level {level} zoom");
            assert_eq!(only(&mut contrasts), [expected_contrast], "level {level} contrast");
            assert_eq!(only(&mut shifts), [expected_shift], "level {level} translation");
        }
        assert!(SpatialParams::sample_level(0, &mut rng, 32, 32).is_err());
        assert!(SpatialParams::sample_level(6, &mut rng, 32, 32).is_err());
    }

    #[test]
    fn full_draws_cover_the_grid_and_repeat_with_the_seed() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..3000).map(|_| SpatialParams::sample_full(&mut rng, 32, 32)).collect::<Vec<_>>()
        };
        let draws = draw(11);
        assert_eq!(draws, draw(11));
        assert_ne!(draws, draw(12));
        let mut rotations: Vec<i32> = draws.iter().map(|p| p.rotation as i32).collect();
        rotations.sort();
        rotations.dedup();
        assert_eq!(rotations, (-30..=30).collect::<Vec<_>>());
        assert!(draws.iter().all(|p| p.translate_x.abs() <= 3 && p.shear.abs() <= 18.0 && p.brightness.abs() <= 32));
        assert!(draws.iter().all(|p| (0.899..=1.101).contains(&p.zoom) && (0.799..=1.201).contains(&p.contrast)));
    }
}
