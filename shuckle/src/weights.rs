//! Write weights: how many bytes each block service should receive next.
//!
//! The objective (DESIGN.md §7): after adding [`GROWTH_FRACTION`] of the total
//! capacity of the writable services, every service should be as equally full
//! as possible. Precisely, with used bytes `u_i`, capacity `c_i = u_i + f_i`
//! and `x_i` new bytes (`0 ≤ x_i ≤ f_i`, `Σ x_i = A`), we minimise
//! `Σ (u_i + x_i)² / c_i`. Its optimality conditions say every service that
//! receives something but is not filled ends at one common fill level `L`,
//! fuller services receive nothing, and services that would pass `L = 1` are
//! filled: `x_i = clamp(L·c_i − u_i, 0, f_i)`. Finding `L` is water-filling,
//! done here by bisection (the total is monotone in `L`).
//!
//! The prototype solved a linear program (minimise the largest fill level).
//! Its optimum is degenerate whenever services look alike, and the solver
//! returned a vertex: several services on one disk, reporting the same free
//! space, collapsed onto one of them. The quadratic objective has a unique
//! optimum that treats equal services equally.

/// Fraction of the total capacity the weights plan for: large enough that
/// the plan fills emptier services first, small enough to stay proportional
/// once all are level.
pub const GROWTH_FRACTION: f64 = 0.2;

/// Bisection steps; 200 halvings of [0, 1] reach f64 resolution.
const BISECTION_STEPS: usize = 200;

/// One writable block service's space.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Space {
    pub used_bytes: u64,
    pub free_bytes: u64,
}

impl Space {
    fn capacity(self) -> f64 {
        self.used_bytes as f64 + self.free_bytes as f64
    }

    /// Bytes this service takes at fill level `level`.
    fn take_at(self, level: f64) -> f64 {
        (level * self.capacity() - self.used_bytes as f64).clamp(0.0, self.free_bytes as f64)
    }
}

/// The bytes each service should receive (same order as `spaces`), planning
/// for `GROWTH_FRACTION` of their total capacity. Callers pass only the
/// services that may be written (ok and not stale).
pub fn write_weights(spaces: &[Space]) -> Vec<u64> {
    let capacity: f64 = spaces.iter().map(|s| s.capacity()).sum();
    let amount = GROWTH_FRACTION * capacity;
    water_fill(spaces, amount).iter().map(|&x| x.round() as u64).collect()
}

/// The optimal `x_i` for adding `amount` bytes (as reals).
pub fn water_fill(spaces: &[Space], amount: f64) -> Vec<f64> {
    let free: f64 = spaces.iter().map(|s| s.free_bytes as f64).sum();
    if amount >= free {
        return spaces.iter().map(|s| s.free_bytes as f64).collect();
    }
    let total_at = |level: f64| spaces.iter().map(|s| s.take_at(level)).sum::<f64>();
    let (mut low, mut high) = (0.0f64, 1.0f64);
    for _ in 0..BISECTION_STEPS {
        let middle = (low + high) / 2.0;
        if total_at(middle) < amount {
            low = middle;
        } else {
            high = middle;
        }
    }
    spaces.iter().map(|s| s.take_at(high)).collect()
}

/// The objective the weights minimise, for tests and diagnostics.
pub fn objective(spaces: &[Space], added: &[f64]) -> f64 {
    spaces
        .iter()
        .zip(added)
        .filter(|(s, _)| s.capacity() > 0.0)
        .map(|(s, x)| (s.used_bytes as f64 + x).powi(2) / s.capacity())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(used_bytes: u64, free_bytes: u64) -> Space {
        Space { used_bytes, free_bytes }
    }

    /// Every way to hand out `amount`: each service but the last takes a
    /// multiple of `unit` (or all its free space), the last takes the rest
    /// if it can. The best by the objective.
    fn brute_force(spaces: &[Space], amount: f64, unit: f64) -> (Vec<f64>, f64) {
        fn walk(spaces: &[Space], left: f64, unit: f64, current: &mut Vec<f64>, best: &mut (Vec<f64>, f64)) {
            let index = current.len();
            let free = spaces[index].free_bytes as f64;
            if index + 1 == spaces.len() {
                if left >= -1e-9 && left <= free + 1e-9 {
                    current.push(left.max(0.0));
                    let value = objective(spaces, current);
                    if value < best.1 {
                        *best = (current.clone(), value);
                    }
                    current.pop();
                }
                return;
            }
            let mut candidates: Vec<f64> = (0..).map(|k| k as f64 * unit).take_while(|x| *x < free.min(left)).collect();
            candidates.push(free.min(left));
            for x in candidates {
                current.push(x);
                walk(spaces, left - x, unit, current, best);
                current.pop();
            }
        }
        let mut best = (Vec::new(), f64::INFINITY);
        walk(spaces, amount, unit, &mut Vec::new(), &mut best);
        best
    }

    fn check_against_brute_force(spaces: &[Space], units: usize) {
        let capacity: f64 = spaces.iter().map(|s| s.capacity()).sum();
        let free: f64 = spaces.iter().map(|s| s.free_bytes as f64).sum();
        let amount = (GROWTH_FRACTION * capacity).min(free);
        let unit = amount / units as f64;
        let filled = water_fill(spaces, amount);
        let (grid_best, grid_value) = brute_force(spaces, amount, unit);
        assert!(grid_value.is_finite(), "no feasible grid point for {spaces:?}");
        let value = objective(spaces, &filled);
        let total: f64 = filled.iter().sum();
        assert!((total - amount).abs() <= amount * 1e-9, "{spaces:?}: hands out {total}, not {amount}");
        for (x, s) in filled.iter().zip(spaces) {
            assert!(*x >= 0.0 && *x <= s.free_bytes as f64 + 1e-6, "{spaces:?}: {x} out of bounds");
        }
        // The continuous optimum is at least as good as the best grid point,
        assert!(value <= grid_value * (1.0 + 1e-12), "{spaces:?}: {value} worse than grid {grid_value}");
        // and the best grid point is a grid cell away from it.
        for (x, g) in filled.iter().zip(&grid_best) {
            assert!((x - g).abs() <= unit * spaces.len() as f64, "{spaces:?}: {filled:?} far from {grid_best:?}");
        }
    }

    #[test]
    fn matches_brute_force_on_small_instances() {
        let cases: Vec<Vec<Space>> = vec![
            vec![space(0, 100), space(0, 100)],
            vec![space(50, 50), space(0, 100)],
            vec![space(90, 10), space(10, 90), space(40, 60)],
            vec![space(0, 1000), space(500, 500), space(0, 10)],
            vec![space(10, 0), space(0, 30), space(70, 30)],
            vec![space(3, 7), space(30, 70), space(300, 700), space(0, 1)],
            vec![space(95, 5), space(95, 5), space(0, 20)],
        ];
        for spaces in &cases {
            check_against_brute_force(spaces, 24);
        }
    }

    #[test]
    fn matches_brute_force_on_random_instances() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |limit: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % limit
        };
        for _ in 0..40 {
            let count = 2 + next(2) as usize;
            let spaces: Vec<Space> = (0..count).map(|_| space(next(1000), 1 + next(1000))).collect();
            check_against_brute_force(&spaces, 20);
        }
    }

    // The prototype's failure: four services on one disk report the same
    // used and free space; the LP put everything on one of them.
    #[test]
    fn services_sharing_a_disk_do_not_collapse_onto_one() {
        let shared = space(400, 600);
        let spaces = [shared, shared, shared, shared, space(100, 900)];
        check_against_brute_force(&spaces, 15);
        let weights = write_weights(&spaces);
        assert!(weights[..4].iter().all(|&w| w > 0), "{weights:?}");
        assert!(weights[..4].iter().all(|&w| w.abs_diff(weights[0]) <= 1), "{weights:?}");
        // The emptier disk gets more than any of the shared ones.
        assert!(weights[4] > weights[0], "{weights:?}");
    }

    #[test]
    fn full_and_fuller_services_get_nothing() {
        let weights = write_weights(&[space(100, 0), space(900, 100), space(0, 1000)]);
        assert_eq!(weights[0], 0);
        assert_eq!(weights[1], 0);
        assert_eq!(weights[2], 420);
    }

    #[test]
    fn level_services_get_weights_proportional_to_capacity() {
        let weights = write_weights(&[space(100, 100), space(200, 200)]);
        assert_eq!(weights, vec![40, 80]);
    }

    #[test]
    fn not_enough_space_fills_everything() {
        let weights = write_weights(&[space(95, 5), space(99, 1)]);
        assert_eq!(weights, vec![5, 1]);
        assert!(write_weights(&[]).is_empty());
        assert_eq!(write_weights(&[space(0, 0)]), vec![0]);
    }
}
