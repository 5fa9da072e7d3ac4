//! Mergeable latency histograms: log buckets growing by 2%, so any quantile read from summed
//! buckets is within 1% of the exact value (the bucket's geometric midpoint is at most
//! sqrt(1.02) - 1 ≈ 0.995% away from anything in the bucket).

use serde::{Deserialize, Serialize};

const GROWTH: f64 = 1.02;

/// Bucket counts by bucket index, stored densely from the lowest used bucket (merging is a
/// vector addition); serialised as a JSON object `{"<index>": count}`, the form PostgreSQL's
/// `km_hist_merge` adds up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Index of `counts[0]`; always a used bucket, so equal contents mean equal values.
    offset: u32,
    counts: Vec<u64>,
}

/// The bucket holding `latency_us` (values below 1 µs count as 1 µs).
pub fn bucket_of(latency_us: u64) -> u32 {
    ((latency_us.max(1) as f64).ln() / GROWTH.ln()).floor() as u32
}

/// The representative value of a bucket, in µs: its geometric midpoint.
pub fn bucket_value_us(bucket: u32) -> f64 {
    GROWTH.powf(bucket as f64 + 0.5)
}

impl LatencyHistogram {
    pub const fn new() -> Self {
        Self { offset: 0, counts: Vec::new() }
    }

    pub fn record(&mut self, latency_us: u64) {
        self.add_bucket(bucket_of(latency_us), 1);
    }

    /// Makes room for buckets `low..=high`.
    fn cover(&mut self, low: u32, high: u32) {
        if self.counts.is_empty() {
            self.offset = low;
            self.counts = vec![0; (high - low + 1) as usize];
            return;
        }
        if low < self.offset {
            let extra = (self.offset - low) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, extra));
            self.offset = low;
        }
        let needed = (high - self.offset + 1) as usize;
        if needed > self.counts.len() {
            self.counts.resize(needed, 0);
        }
    }

    pub fn add_bucket(&mut self, bucket: u32, count: u64) {
        if count == 0 {
            return;
        }
        self.cover(bucket, bucket);
        self.counts[(bucket - self.offset) as usize] += count;
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        self.cover(other.offset, other.offset + other.counts.len() as u32 - 1);
        let start = (other.offset - self.offset) as usize;
        for (mine, theirs) in self.counts[start..].iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Used buckets and their counts, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (self.offset + i as u32, c))
    }

    /// The `q` quantile (0 < q ≤ 1) by nearest rank, in µs; none when empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let mut last = None;
        for (bucket, count) in self.buckets() {
            seen += count;
            last = Some(bucket);
            if seen >= rank {
                return Some(bucket_value_us(bucket));
            }
        }
        last.map(bucket_value_us)
    }
}

impl Serialize for LatencyHistogram {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (bucket, count) in self.buckets() {
            map.serialize_entry(&bucket.to_string(), &count)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LatencyHistogram;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of bucket counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut h = LatencyHistogram::new();
                while let Some((bucket, count)) = access.next_entry::<std::borrow::Cow<'de, str>, u64>()? {
                    let bucket: u32 = bucket.parse().map_err(serde::de::Error::custom)?;
                    h.add_bucket(bucket, count);
                }
                Ok(h)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The exact nearest-rank quantile of raw values, for comparison in tests and benchmarks.
pub fn exact_quantile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        // A spread of latencies from 50 µs to 2 s, deterministic.
        let mut values: Vec<u64> = (0..10_000u64).map(|i| 50 + (i * i * 7919) % 2_000_000).collect();
        let mut h = LatencyHistogram::default();
        for &v in &values {
            h.record(v);
        }
        for q in [0.5, 0.9, 0.95, 0.99, 1.0] {
            let exact = exact_quantile(&mut values, q).unwrap() as f64;
            let approx = h.quantile_us(q).unwrap();
            assert!((approx - exact).abs() / exact <= 0.01, "q={q}: {approx} vs {exact}");
        }
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) =
            (LatencyHistogram::default(), LatencyHistogram::default(), LatencyHistogram::default());
        for v in 1..500u64 {
            let target: &mut LatencyHistogram = if v % 3 == 0 { &mut a } else { &mut b };
            target.record(v * 13);
            all.record(v * 13);
        }
        let mut merged: LatencyHistogram = a.clone();
        merged.merge(&b);
        assert_eq!(merged, all);
        assert_eq!(merged.count(), 499);
    }

    #[test]
    fn json_form_is_an_object_of_counts() {
        let mut h = LatencyHistogram::default();
        h.record(1);
        h.record(1);
        assert_eq!(serde_json::to_string(&h).unwrap(), r#"{"0":2}"#);
        let back: LatencyHistogram = serde_json::from_str(r#"{"0":2}"#).unwrap();
        assert_eq!(back, h);
        assert_eq!(LatencyHistogram::default().quantile_us(0.5), None);
    }
}
