//! Realistic demo usage for a new installation: 30 days of history for the demo key, with
//! weekly and daily rhythms, an endpoint mix, errors, latencies and a few throttled calls.
//! The events are written through the real usage writer, so they land exactly like live ones.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::UsageEvent;

/// Share of a day's calls in each UTC hour: quiet nights, busy afternoons.
const HOURLY_WEIGHTS: [f64; 24] = [
    0.3, 0.2, 0.2, 0.2, 0.3, 0.5, 0.8, 1.2, 1.6, 1.9, 2.0, 2.1, 2.2, 2.4, 2.6, 2.7, 2.6, 2.3, 1.9, 1.5, 1.1, 0.8, 0.6,
    0.4,
];

/// Events for the `days` whole UTC days before `today_start_ms`, about `per_day` a weekday.
pub fn history(key_id: Uuid, today_start_ms: i64, days: i64, per_day: u32, seed: u64) -> Vec<UsageEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let total_weight: f64 = HOURLY_WEIGHTS.iter().sum();
    let mut events = Vec::new();
    for d in (1..=days).rev() {
        let day_start = today_start_ms - d * 86_400_000;
        // 1970-01-01 was a Thursday: day index 0 → Thursday.
        let weekday = (day_start / 86_400_000 + 3).rem_euclid(7); // 0 = Monday
        let weekend = if weekday >= 5 { 0.55 } else { 1.0 };
        let growth = 1.0 + (days - d) as f64 * 0.012;
        let volume = per_day as f64 * weekend * growth * rng.gen_range(0.9..1.1);
        for (hour, weight) in HOURLY_WEIGHTS.iter().enumerate() {
            let calls = (volume * weight / total_weight).round() as i64;
            let hour_start = day_start + hour as i64 * 3_600_000;
            for _ in 0..calls {
                let at_ms = hour_start + rng.gen_range(0..3_600_000);
                events.push(one_call(&mut rng, key_id, at_ms));
            }
        }
    }
    events.sort_by_key(|e| e.at_ms);
    events
}

/// A plausible latency around `median_ms`, with a long tail.
fn latency_us(rng: &mut StdRng, median_ms: f64) -> u64 {
    let spread: f64 = rng.gen_range(-1.0f64..1.0).powi(3) * 1.2 + if rng.gen_bool(0.03) { 1.5 } else { 0.0 };
    (median_ms * spread.exp() * 1000.0).max(50.0) as u64
}

fn one_call(rng: &mut StdRng, key_id: Uuid, at_ms: i64) -> UsageEvent {
    let pick: f64 = rng.gen();
    let (method, endpoint, status, latency, bytes_in, bytes_out) = if pick < 0.005 {
        ("GET", "/api/v1/ping", 429u16, 300, 0, 180)
    } else if pick < 0.5 {
        ("GET", "/api/v1/ping", 200, latency_us(rng, 1.6), 0, 60)
    } else if pick < 0.7 {
        let size = rng.gen_range(200..6_000);
        ("POST", "/api/v1/echo", 200, latency_us(rng, 2.5 + size as f64 / 4_000.0), size, size)
    } else if pick < 0.85 {
        let status = match rng.gen_range(0..100) {
            0..=59 => 200,
            60..=79 => 404,
            80..=89 => 422,
            90..=94 => 500,
            _ => 503,
        };
        ("GET", "/api/v1/status/{code}", status, latency_us(rng, 1.8), 0, 14)
    } else {
        let ms = rng.gen_range(5..250) as f64;
        ("GET", "/api/v1/delay/{ms}", 200, latency_us(rng, ms + 1.5), 0, 20)
    };
    UsageEvent {
        request_id: uuid::Builder::from_random_bytes(rng.gen()).into_uuid(),
        key_id,
        at_ms,
        method: method.into(),
        endpoint: endpoint.into(),
        status,
        latency_us: latency,
        bytes_in,
        bytes_out,
        throttled: status == 429,
        enforced: true,
        alerts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_covers_the_days_before_today_only() {
        let today = 1_764_288_000_000; // a midnight UTC
        let events = history(Uuid::nil(), today, 30, 1_000, 7);
        assert!(events.len() > 20_000 && events.len() < 40_000, "{}", events.len());
        assert!(events.iter().all(|e| e.at_ms < today && e.at_ms >= today - 30 * 86_400_000));
        assert!(events.iter().any(|e| e.throttled));
        assert!(events.iter().any(|e| e.status >= 500));
        assert_eq!(history(Uuid::nil(), today, 2, 100, 7), history(Uuid::nil(), today, 2, 100, 7));
    }
}
