//! Non-negative least squares, `min ‖A x − b‖² subject to x ≥ 0`, by Lawson and Hanson's active-set
//! method (the one `scipy.optimize.nnls` runs), for matrices whose columns each cover a contiguous
//! run of rows that moves down the matrix as the column index grows: a mel filterbank's transpose,
//! where each frequency bin feeds one or two neighbouring mel bands. Its solutions are sparse (few
//! bins carry all the energy), which is what keeps a harmonic's pitch through the mel inverse.
//!
//! The least-squares step on the passive (non-zero) columns solves the normal equations by an
//! envelope Cholesky: sorted by bin, two passive columns meet only if their rows overlap, so the
//! Gram matrix has a narrow profile and each step costs about `passive · band²`.

use crate::error::{Error, Result};

/// A solver for one matrix `A` (`rows × columns`), reusable across right-hand sides.
#[derive(Clone, Debug)]
pub struct Nnls {
    rows: usize,
    /// Per column: its rows `[lo, hi)` and where its `hi - lo` values start in `vals`.
    cols: Vec<(usize, usize, usize)>,
    vals: Vec<f64>,
    /// The columns with any rows (bins outside the filters' range have none and never enter).
    nonempty: Vec<usize>,
    /// The largest column norm, to scale the tolerance.
    max_col_norm: f64,
}

/// How a solve ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Columns added to the passive set (outer iterations), including rejected ones.
    pub iterations: usize,
    /// False when the iteration guard (3 × columns) stopped it; `x` is then feasible, not optimal.
    pub converged: bool,
}

impl Nnls {
    /// Builds the solver from columns given as (first row, values on consecutive rows).
    ///
    /// # Errors
    /// A column that runs past `rows`, or columns whose row runs do not move monotonically down.
    pub fn new(rows: usize, columns: impl IntoIterator<Item = (usize, Vec<f64>)>) -> Result<Self> {
        let (mut cols, mut vals) = (Vec::new(), Vec::new());
        let (mut last_lo, mut last_hi) = (0, 0);
        let mut max_col_norm = 0f64;
        for (k, (lo, v)) in columns.into_iter().enumerate() {
            let hi = lo + v.len();
            if hi > rows {
                return Err(Error::invalid(format!("nnls: column {k} covers rows {lo}..{hi} of {rows}")));
            }
            if !v.is_empty() {
                if lo < last_lo || hi < last_hi {
                    return Err(Error::invalid(format!(
                        "nnls: column {k} covers rows {lo}..{hi}, above the previous column's {last_lo}..{last_hi}"
                    )));
                }
                (last_lo, last_hi) = (lo, hi);
            }
            max_col_norm = max_col_norm.max(v.iter().map(|a| a * a).sum::<f64>().sqrt());
            cols.push((lo, hi, vals.len()));
            vals.extend(v);
        }
        let nonempty = (0..cols.len()).filter(|&k| cols[k].1 > cols[k].0).collect();
        Ok(Self { rows, cols, vals, nonempty, max_col_norm })
    }

    /// Number of unknowns (columns).
    pub fn columns(&self) -> usize {
        self.cols.len()
    }

    fn col(&self, k: usize) -> (usize, &[f64]) {
        let (lo, hi, off) = self.cols[k];
        (lo, &self.vals[off..off + hi - lo])
    }

    /// `A_kᵀ v`.
    fn dot(&self, k: usize, v: &[f64]) -> f64 {
        let (lo, c) = self.col(k);
        c.iter().zip(&v[lo..]).map(|(a, b)| a * b).sum()
    }

    /// `A_kᵀ A_l`.
    fn gram(&self, k: usize, l: usize) -> f64 {
        let ((lk, ck), (ll, cl)) = (self.col(k), self.col(l));
        let (lo, hi) = (lk.max(ll), (lk + ck.len()).min(ll + cl.len()));
        (lo..hi).map(|r| ck[r - lk] * cl[r - ll]).sum()
    }

    /// The gradient tolerance for a right-hand side: `10 · max(rows, cols) · ε · max‖A_k‖ · ‖b‖`,
    /// the size of rounding in `A_kᵀ (b − A x)`.
    pub fn tolerance(&self, b: &[f64]) -> f64 {
        let b_norm = b.iter().map(|v| v * v).sum::<f64>().sqrt();
        10.0 * self.rows.max(self.cols.len()) as f64 * f64::EPSILON * self.max_col_norm * b_norm
    }

    /// Solves for `x` (length [`Self::columns`]) given `b` (length `rows`). A zero (or non-finite)
    /// `b` gives `x = 0`.
    pub fn solve(&self, b: &[f64], x: &mut [f64]) -> Outcome {
        let n = self.cols.len();
        assert_eq!((b.len(), x.len()), (self.rows, n), "nnls: right-hand side or solution of the wrong length");
        x.fill(0.0);
        let tol = self.tolerance(b);
        let max_iters = 3 * n;
        let mut passive: Vec<usize> = Vec::new(); // sorted column indices
        let mut in_passive = vec![false; n];
        // columns that made the passive system singular (or came out non-positive) since x last moved
        let mut blocked = vec![false; n];
        let mut r = b.to_vec();
        let mut z = Vec::new();
        let mut work = Work::default();
        let mut iterations = 0;
        if !tol.is_finite() {
            return Outcome { iterations, converged: true };
        }
        loop {
            let mut best = None;
            let mut best_w = tol;
            for &k in self.nonempty.iter().filter(|&&k| !in_passive[k] && !blocked[k]) {
                let w = self.dot(k, &r);
                if w > best_w {
                    (best, best_w) = (Some(k), w);
                }
            }
            let Some(j) = best else { return Outcome { iterations, converged: true } };
            if iterations == max_iters {
                return Outcome { iterations, converged: false };
            }
            iterations += 1;
            let pos = passive.partition_point(|&k| k < j);
            passive.insert(pos, j);
            in_passive[j] = true;
            let mut first = true;
            loop {
                let ok = self.solve_passive(&passive, b, &mut z, &mut work);
                if first && (!ok || z[pos] <= 0.0) {
                    // numerically dependent on the passive columns: leave it out until x moves
                    passive.remove(pos);
                    in_passive[j] = false;
                    blocked[j] = true;
                    break;
                }
                if !ok {
                    // cannot happen in exact arithmetic (a subset of independent columns)
                    return Outcome { iterations, converged: false };
                }
                first = false;
                blocked.fill(false);
                if z.iter().all(|&v| v > 0.0) {
                    for (&k, &v) in passive.iter().zip(&z) {
                        x[k] = v;
                    }
                    break;
                }
                // step from x towards z until the first passive value reaches zero
                let (mut alpha, mut arg) = (f64::INFINITY, 0);
                for (i, (&k, &v)) in passive.iter().zip(&z).enumerate() {
                    if v <= 0.0 {
                        let a = if x[k] > 0.0 { x[k] / (x[k] - v) } else { 0.0 };
                        if a < alpha {
                            (alpha, arg) = (a, i);
                        }
                    }
                }
                for (&k, &v) in passive.iter().zip(&z) {
                    x[k] += alpha * (v - x[k]);
                }
                x[passive[arg]] = 0.0;
                passive.retain(|&k| {
                    let keep = x[k] > 0.0;
                    if !keep {
                        x[k] = 0.0;
                        in_passive[k] = false;
                    }
                    keep
                });
            }
            r.copy_from_slice(b);
            for &k in &passive {
                let (lo, c) = self.col(k);
                for (ri, a) in r[lo..].iter_mut().zip(c) {
                    *ri -= a * x[k];
                }
            }
        }
    }

    /// Unconstrained least squares on the passive columns (sorted): `z` such that `A_P z ≈ b`, by the
    /// normal equations and an envelope Cholesky. False when a pivot falls below 1e-12 of its
    /// diagonal (columns numerically dependent).
    fn solve_passive(&self, passive: &[usize], b: &[f64], z: &mut Vec<f64>, w: &mut Work) -> bool {
        let p = passive.len();
        // row i of L holds columns first[i]..=i, stored from off[i]
        w.first.clear();
        w.off.clear();
        w.l.clear();
        let mut f = 0;
        for (i, &k) in passive.iter().enumerate() {
            let lo = self.cols[k].0;
            while f < i && self.cols[passive[f]].1 <= lo {
                f += 1;
            }
            w.first.push(f);
            w.off.push(w.l.len());
            for (l, &kl) in passive.iter().enumerate().take(i + 1).skip(f) {
                let mut v = self.gram(k, kl);
                let q0 = f.max(w.first[l]);
                for q in q0..l {
                    v -= w.l[w.off[i] + q - f] * w.l[w.off[l] + q - w.first[l]];
                }
                if l == i {
                    let diag = self.gram(k, k);
                    if v.is_nan() || v <= 1e-12 * diag {
                        return false;
                    }
                    w.l.push(v.sqrt());
                } else {
                    w.l.push(v / w.l[w.off[l] + l - w.first[l]]);
                }
            }
        }
        let at = |w: &Work, i: usize, q: usize| w.l[w.off[i] + q - w.first[i]];
        z.clear();
        for (i, &k) in passive.iter().enumerate() {
            let s: f64 = (w.first[i]..i).map(|q| at(w, i, q) * z[q]).sum();
            z.push((self.dot(k, b) - s) / at(w, i, i));
        }
        for i in (0..p).rev() {
            z[i] /= at(w, i, i);
            let zi = z[i];
            for (q, zq) in z.iter_mut().enumerate().take(i).skip(w.first[i]) {
                *zq -= at(w, i, q) * zi;
            }
        }
        true
    }
}

/// Scratch space for [`Nnls::solve_passive`].
#[derive(Default)]
struct Work {
    first: Vec<usize>,
    off: Vec<usize>,
    l: Vec<f64>,
}
