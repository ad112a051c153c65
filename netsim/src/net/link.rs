//! Link rules: what a directed link between two simulated hosts does to a
//! datagram (latency from a distribution, loss, duplication, reordering,
//! an MTU and a bound on datagrams in flight), and partial patches that
//! scenarios and faults lay over the defaults.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// How a link's latency is drawn between its minimum and maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyDistribution {
    /// Every value in the range equally likely.
    #[default]
    Uniform,
    /// Bell-shaped around the middle of the range (σ = range / 6), clamped.
    Normal,
    /// Mostly near the minimum with a heavy tail towards the maximum
    /// (Pareto, shape 1.5), like a congested path.
    Pareto,
}

/// Whether a link's latency is drawn for each datagram or once for the
/// link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyPer {
    /// Every datagram draws its own latency, so datagrams of one link
    /// overtake each other whenever the range is wide: a harsh path, on
    /// which QUIC reads reordering as loss.
    #[default]
    Datagram,
    /// Each link (both directions of a pair of hosts) draws its latency
    /// once, like a real path between two machines; its datagrams keep
    /// their order unless `reorder` holds some back.
    Link,
}

/// The largest datagram the default link carries, in bytes: Ethernet's
/// payload, so QUIC's path MTU discovery (up to 1452 bytes) fits.
pub const MTU_BYTES_DEFAULT: usize = 1500;

/// Datagrams in flight on one directed link at most by default. A real path
/// buffers a bounded number of packets; beyond it, it drops.
pub const LINK_QUEUE_MAX_DEFAULT: usize = 1024;

/// What one directed link does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkRule {
    /// Smallest one-way latency, in milliseconds.
    pub latency_ms_min: f64,
    /// Largest one-way latency (before reordering delay), in milliseconds.
    pub latency_ms_max: f64,
    /// How the latency is drawn.
    pub distribution: LatencyDistribution,
    /// Whether the latency is drawn per datagram or once per link.
    pub latency_per: LatencyPer,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by up to `reorder_ms`, so
    /// later ones overtake it.
    pub reorder: f64,
    /// The longest reordering delay, in milliseconds.
    pub reorder_ms: f64,
    /// Datagrams larger than this many bytes are dropped.
    pub mtu_bytes: usize,
    /// Datagrams in flight on this link at most; more are dropped.
    pub queue_max: usize,
}

impl Default for LinkRule {
    fn default() -> LinkRule {
        LinkRule {
            latency_ms_min: 2.0,
            latency_ms_max: 20.0,
            distribution: LatencyDistribution::Uniform,
            latency_per: LatencyPer::Datagram,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_ms: 0.0,
            mtu_bytes: MTU_BYTES_DEFAULT,
            queue_max: LINK_QUEUE_MAX_DEFAULT,
        }
    }
}

impl LinkRule {
    /// Draws one datagram's delay: the latency, plus a reordering delay
    /// when this datagram is picked for one.
    pub fn draw_delay(&self, rng: &mut StdRng) -> Duration {
        let latency_ms = self.draw_latency_ms(rng);
        Duration::from_secs_f64(latency_ms / 1000.0) + self.draw_reorder(rng)
    }

    /// Draws a latency from the range and distribution, in milliseconds.
    pub fn draw_latency_ms(&self, rng: &mut StdRng) -> f64 {
        let min = self.latency_ms_min.max(0.0);
        let max = self.latency_ms_max.max(min);
        let span = max - min;
        match self.distribution {
            LatencyDistribution::Uniform => min + span * rng.r#gen::<f64>(),
            LatencyDistribution::Normal => {
                // Box-Muller from two uniforms in (0, 1].
                let u1 = 1.0 - rng.r#gen::<f64>();
                let u2 = rng.r#gen::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (min + span / 2.0 + z * span / 6.0).clamp(min, max)
            }
            LatencyDistribution::Pareto => {
                const SHAPE: f64 = 1.5;
                let u = rng.r#gen::<f64>();
                let scale = min.max(0.1);
                (scale * (1.0 - u).powf(-1.0 / SHAPE) + (min - scale)).clamp(min, max)
            }
        }
    }

    /// Draws the reordering delay: zero unless this datagram is picked.
    pub fn draw_reorder(&self, rng: &mut StdRng) -> Duration {
        let reorder_ms = if chance(rng, self.reorder) {
            self.reorder_ms.max(0.0) * rng.r#gen::<f64>()
        } else {
            0.0
        };
        Duration::from_secs_f64(reorder_ms / 1000.0)
    }
}

/// Draws an event of probability `p` (always drawing, so the stream's
/// position does not depend on `p`).
pub fn chance(rng: &mut StdRng, p: f64) -> bool {
    let draw = rng.r#gen::<f64>();
    draw < p.clamp(0.0, 1.0)
}

/// Fields to change in a [`LinkRule`]; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPatch {
    /// `[min, max]` one-way latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<[f64; 2]>,
    /// Latency distribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<LatencyDistribution>,
    /// Latency drawn per datagram or once per link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_per: Option<LatencyPer>,
    /// Loss probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Duplication probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<f64>,
    /// Reordering probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<f64>,
    /// Longest reordering delay in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder_ms: Option<f64>,
    /// MTU in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_bytes: Option<usize>,
    /// Datagrams in flight at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max: Option<usize>,
}

impl LinkPatch {
    /// Lays this patch over `rule`.
    pub fn apply(&self, rule: &mut LinkRule) {
        if let Some([min, max]) = self.latency_ms {
            rule.latency_ms_min = min;
            rule.latency_ms_max = max;
        }
        if let Some(distribution) = self.distribution {
            rule.distribution = distribution;
        }
        if let Some(latency_per) = self.latency_per {
            rule.latency_per = latency_per;
        }
        if let Some(loss) = self.loss {
            rule.loss = loss;
        }
        if let Some(duplicate) = self.duplicate {
            rule.duplicate = duplicate;
        }
        if let Some(reorder) = self.reorder {
            rule.reorder = reorder;
        }
        if let Some(reorder_ms) = self.reorder_ms {
            rule.reorder_ms = reorder_ms;
        }
        if let Some(mtu_bytes) = self.mtu_bytes {
            rule.mtu_bytes = mtu_bytes;
        }
        if let Some(queue_max) = self.queue_max {
            rule.queue_max = queue_max;
        }
    }

    /// Why this patch is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        let probabilities = [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ];
        for (name, value) in probabilities {
            if let Some(p) = value
                && !(0.0..=1.0).contains(&p)
            {
                return Some(format!("`{name}` is {p}; a probability is between 0 and 1"));
            }
        }
        if let Some([min, max]) = self.latency_ms
            && !(min >= 0.0 && max >= min && max <= 3_600_000.0)
        {
            return Some(format!(
                "`latency_ms` is [{min}, {max}]; it must be [min, max] with 0 <= min <= max <= 1 h"
            ));
        }
        if let Some(ms) = self.reorder_ms
            && !(0.0..=3_600_000.0).contains(&ms)
        {
            return Some(format!(
                "`reorder_ms` is {ms}; it must be between 0 and 1 h"
            ));
        }
        if let Some(mtu) = self.mtu_bytes
            && !(68..=65_535).contains(&mtu)
        {
            return Some(format!(
                "`mtu_bytes` is {mtu}; it must be between 68 and 65535"
            ));
        }
        if let Some(queue) = self.queue_max
            && !(1..=1_000_000).contains(&queue)
        {
            return Some(format!(
                "`queue_max` is {queue}; it must be between 1 and 1000000"
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_in_range_for_every_distribution() {
        let mut rng = StdRng::seed_from_u64(7);
        for distribution in [
            LatencyDistribution::Uniform,
            LatencyDistribution::Normal,
            LatencyDistribution::Pareto,
        ] {
            let rule = LinkRule {
                latency_ms_min: 10.0,
                latency_ms_max: 50.0,
                distribution,
                ..LinkRule::default()
            };
            for _ in 0..1000 {
                let ms = rule.draw_delay(&mut rng).as_secs_f64() * 1000.0;
                assert!(
                    (10.0 - 1e-6..=50.0 + 1e-6).contains(&ms),
                    "{distribution:?}: {ms}"
                );
            }
        }
    }

    #[test]
    fn patches_change_only_their_fields() {
        let mut rule = LinkRule::default();
        LinkPatch {
            loss: Some(0.3),
            ..LinkPatch::default()
        }
        .apply(&mut rule);
        assert_eq!(rule.loss, 0.3);
        assert_eq!(rule.mtu_bytes, MTU_BYTES_DEFAULT);
        assert!(
            LinkPatch {
                loss: Some(1.5),
                ..LinkPatch::default()
            }
            .problem()
            .is_some()
        );
    }
}
