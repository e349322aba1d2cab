//! The one door to the GEMM crate (`gemm`, the kernels behind faer and candle): a safe matrix
//! product on row-major slices, with transposed views and optional accumulation into the
//! destination. Shapes and slice lengths are checked before the unsafe call, so no caller can
//! make it read or write out of bounds.
#![allow(unsafe_code)]

use gemm::Parallelism;

/// A row-major `rows x cols` matrix in a slice, read as is or transposed.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> View<'a> {
    /// The first `rows * cols` values of `data` as a row-major matrix.
    ///
    /// # Panics
    /// When `data` is shorter than `rows * cols` (a bug in the caller, never input-dependent).
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "matrix view {rows}x{cols} over {} values",
            data.len()
        );
        View {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The same matrix read transposed.
    pub fn t(self) -> Self {
        View {
            transposed: !self.transposed,
            ..self
        }
    }

    /// (rows, cols) as read.
    fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (row stride, column stride) as read.
    fn strides(&self) -> (isize, isize) {
        let c = self.cols as isize;
        if self.transposed { (1, c) } else { (c, 1) }
    }
}

/// `dst = a * b` (or `dst += a * b` when `accumulate`), `dst` row-major `m x n`; `scale`
/// multiplies the product. `threads` > 1 lets the GEMM split the work.
///
/// # Panics
/// When the shapes do not agree or `dst` is too short (a bug in the caller).
pub fn matmul(
    dst: &mut [f32],
    a: View<'_>,
    b: View<'_>,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "inner dimensions {m}x{k} * {k2}x{n}");
    assert!(dst.len() >= m * n, "destination {m}x{n} over {}", dst.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = a.strides();
    let (b_rs, b_cs) = b.strides();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every index the kernel touches is below (m-1)*rs + (n-1)*cs + 1 for its matrix,
    // which the checks above and in `View::new` bound by the slice lengths; `dst` does not alias
    // `a` or `b` (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; a.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = a[i * cols + j];
            }
        }
        t
    }

    #[test]
    fn products_match_the_naive_loop_in_every_orientation() {
        let (m, k, n) = (37, 29, 41);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let want = naive(&a, &b, m, k, n);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        let plain = (View::new(&a, m, k), View::new(&b, k, n));
        let transposed = (View::new(&at, k, m).t(), View::new(&bt, n, k).t());
        for threads in [1, 2] {
            for (x, y) in [plain, transposed] {
                let mut c = vec![0.0; m * n];
                matmul(&mut c, x, y, 1.0, false, threads);
                assert_eq!(c, want);
                // Accumulating the product scaled by -1 cancels it.
                matmul(&mut c, x, y, -1.0, true, threads);
                assert!(c.iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn mismatched_shapes_are_refused() {
        let a = [0.0; 6];
        let mut c = [0.0; 4];
        matmul(
            &mut c,
            View::new(&a, 2, 3),
            View::new(&a, 2, 3),
            1.0,
            false,
            1,
        );
    }
}
