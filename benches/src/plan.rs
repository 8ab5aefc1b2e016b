//! How much each scenario measures: the full plan and a quick one.

/// Sizes, counts and repetitions of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Payload sizes for the latency scenarios.
    pub latency_sizes: Vec<usize>,
    /// Unmeasured round trips before each latency measurement.
    pub latency_warmup: usize,
    /// Measured round trips per latency case.
    pub latency_iters: usize,
    /// Payload sizes for pub→sub throughput.
    pub throughput_sizes: Vec<usize>,
    /// Bytes published per throughput repetition (the count is this / size, capped).
    pub throughput_bytes: usize,
    /// Most messages per throughput repetition.
    pub throughput_max_count: usize,
    /// Repetitions of each throughput case (the median is reported).
    pub reps: usize,
    /// RPC calls per calls/s repetition.
    pub rpc_calls: usize,
    /// Calls in flight for calls/s.
    pub rpc_concurrency: usize,
    /// Bytes per bulk repetition.
    pub bulk_bytes: usize,
    /// Subscriber counts for fan-out.
    pub fanout_subscribers: Vec<usize>,
    /// Messages per fan-out case.
    pub fanout_messages: usize,
    /// Node counts for the scale scenario.
    pub scale_nodes: Vec<usize>,
}

impl Plan {
    /// Every scenario at full size (several minutes).
    pub fn full() -> Self {
        Self {
            latency_sizes: vec![64, 1024],
            latency_warmup: 500,
            latency_iters: 5000,
            throughput_sizes: vec![64, 1024, 64 * 1024],
            throughput_bytes: 128 << 20,
            throughput_max_count: 500_000,
            reps: 3,
            rpc_calls: 100_000,
            rpc_concurrency: 64,
            bulk_bytes: 512 << 20,
            fanout_subscribers: vec![10, 50],
            fanout_messages: 1000,
            scale_nodes: vec![50, 100, 200],
        }
    }

    /// A smaller run with the same shape (about a minute).
    pub fn quick() -> Self {
        Self {
            latency_iters: 1000,
            latency_warmup: 100,
            throughput_bytes: 32 << 20,
            throughput_max_count: 200_000,
            reps: 2,
            rpc_calls: 20_000,
            bulk_bytes: 128 << 20,
            fanout_subscribers: vec![10],
            fanout_messages: 200,
            scale_nodes: vec![20, 50],
            ..Self::full()
        }
    }

    /// Messages per throughput repetition for `size`-byte payloads.
    pub fn throughput_count(&self, size: usize) -> usize {
        (self.throughput_bytes / size.max(1)).clamp(1000, self.throughput_max_count)
    }
}
