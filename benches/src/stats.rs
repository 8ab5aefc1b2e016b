//! Order statistics of latency samples.

use std::time::Duration;

/// Median, p99, mean, min and max of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// 50th percentile.
    pub median_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Smallest sample.
    pub min_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Summary {
    /// Summarises `samples` (empty: all zeros).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self {
                median_us: 0.0,
                p99_us: 0.0,
                mean_us: 0.0,
                min_us: 0.0,
                max_us: 0.0,
            };
        }
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| {
            let idx = ((samples.len() - 1) as f64 * q).round() as usize;
            us(samples[idx.min(samples.len() - 1)])
        };
        let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
        Self {
            median_us: at(0.5),
            p99_us: at(0.99),
            mean_us: mean,
            min_us: us(samples[0]),
            max_us: us(samples[samples.len() - 1]),
        }
    }
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let s = Summary::of((1..=100).map(Duration::from_micros).collect());
        assert_eq!(s.min_us, 1.0);
        assert_eq!(s.max_us, 100.0);
        assert_eq!(s.median_us, 51.0);
        assert_eq!(s.p99_us, 99.0);
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(Summary::of(Vec::new()).median_us, 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
