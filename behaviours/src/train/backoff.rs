//! Reconnection backoff and endpoint ordering, pure.
//!
//! A watched peer that lost its last connection is redialed after
//! [`Backoff::next_delay`]: 1 s, 2 s, 4 s, … doubling up to 60 s (with the
//! default bounds), and the sequence starts over ([`Backoff::reset`]) once a
//! connection is established. Endpoints are tried in order of their last
//! success ([`order_endpoints`]): the address that worked most recently is
//! the most likely to work again.

use std::time::Duration;

/// Exponential backoff between `min` and `max`, doubling per failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and capped at `max` (`max` below `min`
    /// is raised to `min`; a zero `min` is taken as 1 ms so it can grow).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now, doubling the following one (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// The delay [`Backoff::next_delay`] would return, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Starts over at the minimum (after a successful connection).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Orders endpoints by last success, most recent first; endpoints that
/// never succeeded (`None`) go last. Equal times keep their input order, and
/// duplicates keep their first (best) position.
pub fn order_endpoints<T: PartialEq>(endpoints: Vec<(T, Option<u64>)>) -> Vec<T> {
    let mut endpoints = endpoints;
    // Stable sort: `Reverse(None)` sorts after every `Reverse(Some(_))`.
    endpoints.sort_by_key(|(_, last)| std::cmp::Reverse(*last));
    let mut out: Vec<T> = Vec::with_capacity(endpoints.len());
    for (endpoint, _) in endpoints {
        if !out.contains(&endpoint) {
            out.push(endpoint);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_one_second_to_a_minute() {
        let mut b = Backoff::new(S, 60 * S);
        let got: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.peek(), 60 * S);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(S, 60 * S);
        for _ in 0..4 {
            b.next_delay();
        }
        assert_eq!(b.peek(), 16 * S);
        b.reset();
        assert_eq!(b.peek(), S);
        assert_eq!(b.next_delay(), S);
        assert_eq!(b.next_delay(), 2 * S);
    }

    #[test]
    fn odd_bounds() {
        // Max below min: constant.
        let mut b = Backoff::new(5 * S, S);
        assert_eq!((b.next_delay(), b.next_delay()), (5 * S, 5 * S));
        // Zero min still grows.
        let mut b = Backoff::new(Duration::ZERO, Duration::from_millis(4));
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![1, 2, 4, 4]);
        // No overflow at huge values.
        let mut b = Backoff::new(Duration::MAX / 2, Duration::MAX);
        b.next_delay();
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::MAX);
    }

    #[test]
    fn endpoints_by_last_success() {
        let ordered = order_endpoints(vec![
            ("never-a", None),
            ("old", Some(1_000)),
            ("new", Some(9_000)),
            ("never-b", None),
            ("mid", Some(5_000)),
            ("old", Some(500)),
        ]);
        assert_eq!(ordered, vec!["new", "mid", "old", "never-a", "never-b"]);
        assert!(order_endpoints::<&str>(vec![]).is_empty());
    }
}
