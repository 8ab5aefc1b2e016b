//! Policies, path scoring and the selection of active and standby paths.
//!
//! Everything here is a pure function over [`PathView`]s, so the rules can be
//! tested without a swarm; the [behaviour](super::Behaviour) builds the views
//! from its connections and applies the answers.
//!
//! # Score
//!
//! Paths compare by [`Score`], lexicographically:
//!
//! 1. healthy before unhealthy (a heartbeat or app-ack timeout makes a path
//!    unhealthy until its next RTT sample);
//! 2. not degraded before degraded (loss ≥ [`DEGRADED_LOSS`] over the recent
//!    heartbeat window);
//! 3. class rank in the configured order (classes missing from the order rank
//!    last);
//! 4. smoothed RTT, lower first; unknown RTT after any known RTT.
//!
//! # Hysteresis
//!
//! [`should_switch`] replaces the active path by a candidate only when the
//! candidate has been measured (healthy, ≥ 1 RTT sample) and either
//!
//! - it is better on health, degradation or class (steps 1–3 above), or
//! - it ties on those and its RTT is lower than the active's by more than
//!   [`RTT_IMPROVEMENT_PERCENT`] (25 %) *and* by more than the configured margin, with
//!   at least [`MIN_RTT_SAMPLES`] samples (a measured path also beats an
//!   active path that has no RTT yet).
//!
//! # Standby
//!
//! [`select_standby`] keeps at most one warm standby: the best path of a
//! different class than the active (a second network kind fails
//! independently); if there is none, the best same-class path whose
//! [remote host](super::path::RemoteHost) differs from the active's (e.g. a
//! second LAN). A same-class path to the same remote host — or without a
//! known host, like BLE — is never a standby. Healthy candidates come first.

use std::{cmp::Ordering, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use super::path::{PathClass, RemoteHost};

/// Loss ratio over the recent window at which a path counts as degraded.
pub const DEGRADED_LOSS: f32 = 0.10;

/// How much lower, in percent of the active's RTT, a same-class candidate's
/// RTT must be to take over.
pub const RTT_IMPROVEMENT_PERCENT: u32 = 25;

/// RTT samples a candidate needs before an RTT-only comparison can make it
/// active.
pub const MIN_RTT_SAMPLES: u32 = 2;

/// Which path classes a device prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Policy {
    /// LAN, then direct, then BLE, then relayed (the default).
    #[default]
    #[serde(rename = "mains-powered")]
    MainsPowered,
    /// BLE first (cheapest radio), then LAN, direct, relayed.
    #[serde(rename = "low-power")]
    LowPower,
}

impl Policy {
    /// Every policy.
    pub const ALL: [Policy; 2] = [Policy::MainsPowered, Policy::LowPower];

    /// The preference order of path classes, best first.
    pub fn order(self) -> Vec<PathClass> {
        match self {
            Policy::MainsPowered => vec![
                PathClass::LanDirect,
                PathClass::Direct,
                PathClass::Ble,
                PathClass::Relayed,
            ],
            Policy::LowPower => vec![
                PathClass::Ble,
                PathClass::LanDirect,
                PathClass::Direct,
                PathClass::Relayed,
            ],
        }
    }

    /// The short name: `"mains-powered"` or `"low-power"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::MainsPowered => "mains-powered",
            Policy::LowPower => "low-power",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`Policy`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?} (expected mains-powered or low-power)")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// What the rules need to know about one path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathView {
    /// The path's class.
    pub class: PathClass,
    /// Smoothed RTT, if measured.
    pub rtt: Option<Duration>,
    /// RTT samples received so far.
    pub samples: u32,
    /// Missed-heartbeat ratio over the recent window, `0.0..=1.0`.
    pub loss: f32,
    /// `false` after a heartbeat or app-ack timeout, until the next sample.
    pub healthy: bool,
    /// The remote host, if the address has one.
    pub host: Option<RemoteHost>,
}

impl PathView {
    /// An unmeasured, healthy path of `class` without a known host.
    pub fn new(class: PathClass) -> Self {
        Self {
            class,
            rtt: None,
            samples: 0,
            loss: 0.0,
            healthy: true,
            host: None,
        }
    }
}

/// The rank of `class` in `order` (0 is best); classes missing from the
/// order rank after all listed ones.
pub fn rank(order: &[PathClass], class: PathClass) -> usize {
    order
        .iter()
        .position(|c| *c == class)
        .unwrap_or(order.len())
}

/// Whether a loss ratio makes a path degraded (≥ [`DEGRADED_LOSS`]).
pub fn is_degraded(loss: f32) -> bool {
    loss >= DEGRADED_LOSS
}

/// The comparable score of a path; lower is better (see the [module
/// docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    unhealthy: bool,
    degraded: bool,
    rank: usize,
    rtt_unknown: bool,
    rtt: Duration,
}

impl Score {
    /// The part of the score that is not RTT: health, degradation, class.
    fn coarse(&self) -> (bool, bool, usize) {
        (self.unhealthy, self.degraded, self.rank)
    }
}

/// The score of `path` under `order`.
pub fn score(path: &PathView, order: &[PathClass]) -> Score {
    Score {
        unhealthy: !path.healthy,
        degraded: is_degraded(path.loss),
        rank: rank(order, path.class),
        rtt_unknown: path.rtt.is_none(),
        rtt: path.rtt.unwrap_or_default(),
    }
}

/// The index of the best path by [`score`], skipping `skip`; ties go to the
/// lower index (the older connection).
pub fn best(paths: &[PathView], order: &[PathClass], skip: Option<usize>) -> Option<usize> {
    paths
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .min_by_key(|(i, p)| (score(p, order), *i))
        .map(|(i, _)| i)
}

/// Whether `candidate` should replace `active` (the hysteresis rule of the
/// [module docs](self)).
pub fn should_switch(
    active: &PathView,
    candidate: &PathView,
    order: &[PathClass],
    rtt_margin: Duration,
) -> bool {
    if !candidate.healthy || candidate.samples == 0 {
        return false;
    }
    let (a, c) = (score(active, order), score(candidate, order));
    match c.coarse().cmp(&a.coarse()) {
        Ordering::Less => return true,
        Ordering::Greater => return false,
        Ordering::Equal => {}
    }
    if candidate.samples < MIN_RTT_SAMPLES {
        return false;
    }
    // Two BLE paths to a peer share one radio link: a lower RTT on the
    // other only means it is idle while the active one carries the traffic.
    if active.class == PathClass::Ble && candidate.class == PathClass::Ble {
        return false;
    }
    match (active.rtt, candidate.rtt) {
        (Some(a), Some(c)) if c < a => {
            let gain = a - c;
            gain.as_nanos() * 100 > a.as_nanos() * u128::from(RTT_IMPROVEMENT_PERCENT)
                && gain > rtt_margin
        }
        (None, Some(_)) => true,
        _ => false,
    }
}

/// The path the active one should be replaced with, if any: the best-scored
/// path other than `active` for which [`should_switch`] holds.
pub fn better_path(
    paths: &[PathView],
    active: usize,
    order: &[PathClass],
    rtt_margin: Duration,
) -> Option<usize> {
    let mut others: Vec<usize> = (0..paths.len()).filter(|i| *i != active).collect();
    others.sort_by_key(|i| (score(&paths[*i], order), *i));
    others
        .into_iter()
        .find(|i| should_switch(&paths[active], &paths[*i], order, rtt_margin))
}

/// The warm standby for `active`, if any (see the [module docs](self)):
/// healthy first, then a different class before a same-class path to another
/// remote host, then by score, then the older connection.
pub fn select_standby(paths: &[PathView], active: usize, order: &[PathClass]) -> Option<usize> {
    let act = paths.get(active)?;
    paths
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            *i != active
                && (p.class != act.class
                    || matches!((&p.host, &act.host), (Some(h), Some(a)) if h != a))
        })
        .min_by_key(|(i, p)| (!p.healthy, p.class == act.class, score(p, order), *i))
        .map(|(i, _)| i)
}

/// The path to promote when the active path fails: the `standby` if it is
/// healthy, else the best remaining path other than `failed` (only healthy
/// ones if `require_healthy`).
pub fn select_replacement(
    paths: &[PathView],
    failed: Option<usize>,
    standby: Option<usize>,
    order: &[PathClass],
    require_healthy: bool,
) -> Option<usize> {
    if let Some(s) = standby {
        if Some(s) != failed && paths.get(s).is_some_and(|p| p.healthy) {
            return Some(s);
        }
    }
    best(paths, order, failed).filter(|i| !require_healthy || paths[*i].healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARGIN: Duration = Duration::from_millis(5);

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn measured(class: PathClass, rtt_ms: u64, samples: u32) -> PathView {
        PathView {
            rtt: ms(rtt_ms),
            samples,
            ..PathView::new(class)
        }
    }

    fn with_host(mut p: PathView, ip: &str) -> PathView {
        p.host = Some(RemoteHost::Ip(ip.parse().unwrap()));
        p
    }

    #[test]
    fn policy_orders() {
        use PathClass::*;
        assert_eq!(
            Policy::MainsPowered.order(),
            vec![LanDirect, Direct, Ble, Relayed]
        );
        assert_eq!(
            Policy::LowPower.order(),
            vec![Ble, LanDirect, Direct, Relayed]
        );
        assert_eq!(Policy::default(), Policy::MainsPowered);
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
            assert_eq!(p.to_string(), p.as_str());
            let mut order = p.order();
            order.sort();
            assert_eq!(order, PathClass::ALL.to_vec(), "{p} lists every class once");
        }
        assert!("solar".parse::<Policy>().is_err());
    }

    #[test]
    fn missing_classes_rank_last() {
        use PathClass::*;
        let order = [Direct, LanDirect];
        assert_eq!(rank(&order, Direct), 0);
        assert_eq!(rank(&order, LanDirect), 1);
        assert_eq!(rank(&order, Ble), 2);
        assert_eq!(rank(&order, Relayed), 2);
        let paths = [PathView::new(Relayed), PathView::new(LanDirect)];
        assert_eq!(best(&paths, &order, None), Some(1));
    }

    #[test]
    fn mains_powered_prefers_lan_direct_ble_relayed() {
        use PathClass::*;
        let order = Policy::MainsPowered.order();
        // Even with a much worse RTT, the class decides.
        let paths = [
            measured(Relayed, 5, 5),
            measured(Ble, 5, 5),
            measured(Direct, 50, 5),
            measured(LanDirect, 500, 5),
        ];
        assert_eq!(best(&paths, &order, None), Some(3));
        assert_eq!(best(&paths, &order, Some(3)), Some(2));
        assert_eq!(best(&paths[..2], &order, None), Some(1));
        let mut sorted: Vec<_> = paths.iter().collect();
        sorted.sort_by_key(|p| score(p, &order));
        assert_eq!(
            sorted.iter().map(|p| p.class).collect::<Vec<_>>(),
            vec![LanDirect, Direct, Ble, Relayed]
        );
    }

    #[test]
    fn low_power_prefers_ble() {
        use PathClass::*;
        let order = Policy::LowPower.order();
        let paths = [
            measured(LanDirect, 1, 5),
            measured(Ble, 80, 5),
            measured(Direct, 1, 5),
        ];
        assert_eq!(best(&paths, &order, None), Some(1));
        assert!(should_switch(&paths[0], &paths[1], &order, MARGIN));
        assert!(!should_switch(&paths[1], &paths[0], &order, MARGIN));
    }

    #[test]
    fn unhealthy_and_degraded_rank_after() {
        use PathClass::*;
        let order = Policy::MainsPowered.order();
        let lan_unhealthy = PathView {
            healthy: false,
            ..measured(LanDirect, 1, 5)
        };
        let lan_degraded = PathView {
            loss: 0.2,
            ..measured(LanDirect, 1, 5)
        };
        let relayed = measured(Relayed, 200, 5);
        let ble_degraded = PathView {
            loss: 0.1,
            ..measured(Ble, 20, 5)
        };
        // Healthy non-degraded relayed beats both LAN variants.
        let paths = [
            lan_unhealthy.clone(),
            lan_degraded.clone(),
            relayed.clone(),
            ble_degraded.clone(),
        ];
        assert_eq!(best(&paths, &order, None), Some(2));
        // Among degraded paths, class decides: LAN before BLE.
        assert_eq!(best(&paths, &order, Some(2)), Some(1));
        // Unhealthy is last of all.
        let mut sorted: Vec<usize> = (0..paths.len()).collect();
        sorted.sort_by_key(|i| score(&paths[*i], &order));
        assert_eq!(sorted, vec![2, 1, 3, 0]);
        // Loss just under the threshold is not degraded.
        assert!(!is_degraded(0.09));
        assert!(is_degraded(1.0 / 10.0));
        // Unknown RTT ranks after known within a class.
        let unknown = PathView::new(Direct);
        let known = measured(Direct, 300, 1);
        assert!(score(&known, &order) < score(&unknown, &order));
    }

    #[test]
    fn switch_on_health_degradation_and_class() {
        use PathClass::*;
        let order = Policy::MainsPowered.order();
        let active = measured(Relayed, 50, 5);
        // A better class takes over after one sample…
        assert!(should_switch(
            &active,
            &measured(LanDirect, 80, 1),
            &order,
            MARGIN
        ));
        // …but not before it was measured, nor when unhealthy.
        assert!(!should_switch(
            &active,
            &PathView::new(LanDirect),
            &order,
            MARGIN
        ));
        let sick = PathView {
            healthy: false,
            ..measured(LanDirect, 1, 3)
        };
        assert!(!should_switch(&active, &sick, &order, MARGIN));
        // A worse class never takes over from a healthy path.
        assert!(!should_switch(
            &measured(LanDirect, 100, 5),
            &measured(Direct, 1, 9),
            &order,
            MARGIN
        ));
        // An unhealthy active is replaced by any healthy measured path.
        let dead = PathView {
            healthy: false,
            ..measured(LanDirect, 1, 5)
        };
        assert!(should_switch(
            &dead,
            &measured(Relayed, 300, 1),
            &order,
            MARGIN
        ));
        // A degraded active is replaced by a non-degraded one of a worse class.
        let lossy = PathView {
            loss: 0.3,
            ..measured(LanDirect, 1, 10)
        };
        assert!(should_switch(
            &lossy,
            &measured(Direct, 40, 1),
            &order,
            MARGIN
        ));
    }

    #[test]
    fn a_second_ble_path_never_wins_on_rtt() {
        use PathClass::*;
        let order = Policy::LowPower.order();
        // The busy BLE link's RTT is inflated by its queue; an idle second
        // connection over the same radios is no better a path.
        assert!(!should_switch(
            &measured(Ble, 700, 10),
            &measured(Ble, 60, 5),
            &order,
            MARGIN
        ));
        // A healthy BLE path still replaces an unhealthy one.
        let sick = PathView {
            healthy: false,
            ..measured(Ble, 700, 10)
        };
        assert!(should_switch(&sick, &measured(Ble, 60, 5), &order, MARGIN));
    }

    #[test]
    fn hysteresis_on_rtt() {
        use PathClass::*;
        let order = Policy::MainsPowered.order();
        let active = measured(LanDirect, 100, 10);
        // 5 % better: no switch.
        assert!(!should_switch(
            &active,
            &measured(LanDirect, 95, 5),
            &order,
            MARGIN
        ));
        // Exactly 25 % better: still no switch (must be more).
        assert!(!should_switch(
            &active,
            &measured(LanDirect, 75, 5),
            &order,
            MARGIN
        ));
        // 50 % better: switch…
        assert!(should_switch(
            &active,
            &measured(LanDirect, 50, 2),
            &order,
            MARGIN
        ));
        // …but only with at least two samples.
        assert!(!should_switch(
            &active,
            &measured(LanDirect, 50, 1),
            &order,
            MARGIN
        ));
        // The absolute margin applies too: 4 ms → 1 ms is 75 % but only 3 ms.
        let fast = measured(LanDirect, 4, 10);
        assert!(!should_switch(
            &fast,
            &measured(LanDirect, 1, 5),
            &order,
            MARGIN
        ));
        assert!(should_switch(
            &fast,
            &measured(LanDirect, 1, 5),
            &order,
            Duration::ZERO
        ));
        // A measured path beats an unmeasured active of the same class.
        assert!(should_switch(
            &PathView::new(LanDirect),
            &measured(LanDirect, 30, 2),
            &order,
            MARGIN
        ));
        // better_path picks the best eligible one.
        let paths = [
            active.clone(),
            measured(LanDirect, 95, 5),
            measured(LanDirect, 40, 5),
            measured(LanDirect, 20, 1),
        ];
        assert_eq!(better_path(&paths, 0, &order, MARGIN), Some(2));
        assert_eq!(better_path(&paths[..2], 0, &order, MARGIN), None);
    }

    #[test]
    fn standby_prefers_another_class() {
        use PathClass::*;
        let order = Policy::MainsPowered.order();
        let paths = [
            with_host(measured(LanDirect, 2, 5), "192.168.1.2"),
            with_host(measured(LanDirect, 3, 5), "10.0.0.2"),
            measured(Relayed, 200, 5),
            measured(Ble, 40, 5),
        ];
        // BLE ranks better than relayed; both are another class than LAN and
        // come before the second LAN.
        assert_eq!(select_standby(&paths, 0, &order), Some(3));
        assert_eq!(select_standby(&paths[..3], 0, &order), Some(2));
        // An unhealthy other-class path loses to a healthy same-class one on
        // another network.
        let mut sick = paths[..3].to_vec();
        sick[2].healthy = false;
        assert_eq!(select_standby(&sick, 0, &order), Some(1));
        // Active relayed: the best other class is LAN.
        assert_eq!(select_standby(&paths, 2, &order), Some(0));
    }

    #[test]
    fn same_class_standby_needs_another_remote_host() {
        use PathClass::*;
        let order = Policy::MainsPowered.order();
        let same_ip = [
            with_host(measured(LanDirect, 2, 5), "192.168.1.2"),
            with_host(measured(LanDirect, 3, 5), "192.168.1.2"),
        ];
        assert_eq!(select_standby(&same_ip, 0, &order), None);
        let other_ip = [
            with_host(measured(LanDirect, 2, 5), "192.168.1.2"),
            with_host(measured(LanDirect, 3, 5), "192.168.1.2"),
            with_host(measured(LanDirect, 9, 5), "10.1.1.1"),
        ];
        assert_eq!(select_standby(&other_ip, 0, &order), Some(2));
        // No host (BLE): never a same-class standby.
        let ble = [measured(Ble, 2, 5), measured(Ble, 3, 5)];
        assert_eq!(select_standby(&ble, 0, &order), None);
        // A single path has no standby.
        assert_eq!(select_standby(&ble[..1], 0, &order), None);
    }

    #[test]
    fn replacement_prefers_a_healthy_standby() {
        use PathClass::*;
        let order = Policy::MainsPowered.order();
        let paths = [
            measured(LanDirect, 2, 5),
            measured(Relayed, 100, 5),
            measured(Direct, 20, 5),
        ];
        // The standby (relayed) is promoted even though direct scores better.
        assert_eq!(
            select_replacement(&paths, Some(0), Some(1), &order, true),
            Some(1)
        );
        // No standby: the best remaining.
        assert_eq!(
            select_replacement(&paths, Some(0), None, &order, true),
            Some(2)
        );
        // An unhealthy standby is skipped.
        let mut sick = paths.to_vec();
        sick[1].healthy = false;
        assert_eq!(
            select_replacement(&sick, Some(0), Some(1), &order, true),
            Some(2)
        );
        // Only unhealthy paths left: none if health is required, else the best.
        sick[2].healthy = false;
        assert_eq!(
            select_replacement(&sick, Some(0), Some(1), &order, true),
            None
        );
        assert_eq!(
            select_replacement(&sick, Some(0), Some(1), &order, false),
            Some(2)
        );
        // Nothing left at all.
        assert_eq!(
            select_replacement(&paths[..1], Some(0), None, &order, false),
            None
        );
    }
}
