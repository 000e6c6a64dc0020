//! The connection limits' gauges and slots (per door, per address, inbound and outbound),
//! and their log: refusals by a limit are logged once per (limit, source) per minute, with
//! how many were not logged since, so a flood of refused connections cannot flood the log.
//! The memory this takes is capped too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Limits;
use crate::types::FixedWindow;
pub use crate::types::LimitKey;

/// How often one (limit, source) is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Distinct (limit, source) pairs remembered; beyond, the oldest half is forgotten.
const REMEMBERED: usize = 4096;
/// New sources logged per limit per [`LOG_INTERVAL`] at most: sources are addresses, and an
/// attacker has many (an IPv6 /64, 127.0.0.0/8 on the machine), so past this the others are
/// only counted, and the count goes into the limit's next line.
const NEW_SOURCES_PER_INTERVAL: u64 = 16;
/// The source under which a limit's own window (new sources logged, and not) is kept.
const ANY_SOURCE: &str = "\0every source";

/// Per (limit, source): its window of one line a [`LOG_INTERVAL`]. Under [`ANY_SOURCE`]:
/// the limit's window of new sources logged.
type Windows = HashMap<(LimitKey, String), FixedWindow<Instant>>;

static SEEN: Mutex<Option<Windows>> = Mutex::new(None);

/// Whether to log this refusal now, and how many were suppressed before it.
pub fn should_log(limit: LimitKey, source: &str, now: Instant) -> Option<u64> {
    let mut g = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(w) = map.get_mut(&(limit, source.to_owned())) {
        return w.take(now, LOG_INTERVAL, 1);
    }
    // A new source: within the limit's budget of new sources for this interval? (Its
    // refusals count the new sources not logged.)
    let carried = map.entry((limit, ANY_SOURCE.to_owned())).or_default().take(now, LOG_INTERVAL, NEW_SOURCES_PER_INTERVAL)?;
    if map.len() >= REMEMBERED {
        let mut ages: Vec<Instant> = map.values().filter_map(FixedWindow::began).collect();
        ages.sort();
        let cut = ages[ages.len() / 2];
        map.retain(|k, w| w.began().is_some_and(|b| b > cut) || k.1 == ANY_SOURCE);
    }
    let mut w = FixedWindow::default();
    w.take(now, LOG_INTERVAL, 1);
    map.insert((limit, source.to_owned()), w);
    Some(carried)
}

/// Refusals by each limit since the process started (for `drawbridge_limit_refusals_total`;
/// process-wide, as the log's windows are).
static REFUSED: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// Refusals by each limit (its config key) since start.
pub fn refusals() -> Vec<(&'static str, u64)> {
    REFUSED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Log a refusal by `limit` for `source` (an address or a domain), at most once a minute;
/// count every one.
pub fn refused_once(limit: LimitKey, source: &str, msg: impl FnOnce() -> String) {
    {
        let mut r = REFUSED.lock().unwrap_or_else(|e| e.into_inner());
        let key = limit.as_str();
        match r.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => r.push((key, 1)),
        }
    }
    if let Some(suppressed) = should_log(limit, source, Instant::now()) {
        if suppressed > 0 {
            tracing::warn!(limit = limit.as_str(), source, "{} ({suppressed} more refused by {limit} since the last report)", msg());
        } else {
            tracing::warn!(limit = limit.as_str(), source, "{}", msg());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_per_source_counting_the_rest() {
        let t = Instant::now();
        assert_eq!(should_log(LimitKey::Test("test.limit"), "a", t), Some(0));
        assert_eq!(should_log(LimitKey::Test("test.limit"), "a", t + Duration::from_secs(1)), None);
        assert_eq!(should_log(LimitKey::Test("test.limit"), "a", t + Duration::from_secs(2)), None);
        assert_eq!(should_log(LimitKey::Test("test.limit"), "b", t), Some(0));
        assert_eq!(should_log(LimitKey::Test("test.limit"), "a", t + LOG_INTERVAL + Duration::from_secs(1)), Some(2));
        // Memory stays capped whatever the number of sources.
        for i in 0..10_000 {
            should_log(LimitKey::Test("test.flood"), &format!("10.0.{}.{}", i / 256, i % 256), t + Duration::from_millis(i));
        }
        assert!(SEEN.lock().unwrap().as_ref().unwrap().len() <= REMEMBERED);
        // Many sources of one limit: a bounded number of lines a minute, the rest counted in
        // the first line of the next minute.
        let logged =
            (0..1000).filter(|i| should_log(LimitKey::Test("test.sources"), &format!("10.1.{}.{}", i / 256, i % 256), t).is_some()).count();
        assert_eq!(logged as u64, NEW_SOURCES_PER_INTERVAL);
        assert_eq!(should_log(LimitKey::Test("test.sources"), "10.2.0.1", t + LOG_INTERVAL), Some(1000 - NEW_SOURCES_PER_INTERVAL));
        // Another limit has its own budget.
        assert_eq!(should_log(LimitKey::Test("test.other"), "10.1.0.1", t), Some(0));
    }
}

/// Which listener a connection came in on. Each door has its own budget of unauthenticated
/// connections, so a flood on the public listener cannot lock the internal server (gateway
/// mode) or a component out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `server.listen` and `server.direct_tls`: the world.
    Federation,
    /// `gateway.listen`: the internal server.
    Gateway,
    /// `[components] listen`: external components (XEP-0114).
    Components,
}

impl Door {
    const ALL: [Door; 3] = [Door::Federation, Door::Gateway, Door::Components];

    /// Its limits: (key, all sources together), (key, one address).
    fn limits(self, l: &Limits) -> [(LimitKey, usize); 2] {
        match self {
            Door::Federation => [
                (LimitKey::MaxInboundUnauthenticated, l.max_inbound_unauthenticated),
                (LimitKey::MaxUnauthenticatedPerAddress, l.max_unauthenticated_per_address),
            ],
            // The internal server is one address: its door's whole budget is its own.
            Door::Gateway => [
                (LimitKey::MaxUnauthenticatedGateway, l.max_unauthenticated_gateway),
                (LimitKey::MaxUnauthenticatedGateway, l.max_unauthenticated_gateway),
            ],
            Door::Components => [
                (LimitKey::MaxUnauthenticatedComponents, l.max_unauthenticated_components),
                (LimitKey::MaxUnauthenticatedPerAddress, l.max_unauthenticated_per_address),
            ],
        }
    }
}

/// One door's unauthenticated connections, in all and per source address.
#[derive(Debug, Default)]
struct DoorGauge {
    unauthenticated: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// Streams in use against their limits: inbound before authentication (per door, in all and
/// per source address), inbound authenticated, outbound. Separate so that no inbound flood
/// can take the slots outbound federation needs, and no flood on one door those of another.
#[derive(Debug, Default)]
pub struct Gauges {
    doors: [DoorGauge; 3],
    inbound: AtomicUsize,
    outbound: AtomicUsize,
}

/// One limit's use, for `ctl status` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitUse {
    pub key: String,
    pub used: usize,
    pub max: usize,
}

/// A limit said no: which key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub LimitKey);

impl Gauges {
    fn door(&self, door: Door) -> &DoorGauge {
        &self.doors[door as usize]
    }

    /// An accepted connection on `door`, not authenticated yet.
    pub fn admit(self: &Arc<Self>, door: Door, ip: IpAddr, limits: &Limits) -> Result<InboundSlot, Refused> {
        let g = self.door(door);
        let [(all_key, all), (per_key, per_max)] = door.limits(limits);
        let mut per = g.per_address.lock().unwrap_or_else(|e| e.into_inner());
        if g.unauthenticated.load(Ordering::Relaxed) >= all {
            return Err(Refused(all_key));
        }
        let n = per.entry(ip).or_insert(0);
        if *n >= per_max {
            return Err(Refused(per_key));
        }
        *n += 1;
        g.unauthenticated.fetch_add(1, Ordering::Relaxed);
        Ok(InboundSlot { gauges: self.clone(), door, ip, authenticated: false, max_inbound: limits.max_inbound })
    }

    /// A new outbound stream.
    pub fn outbound(self: &Arc<Self>, limits: &Limits) -> Result<OutboundSlot, Refused> {
        self.outbound
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limits.max_outbound).then_some(n + 1))
            .map_err(|_| Refused(LimitKey::MaxOutbound))?;
        Ok(OutboundSlot { gauges: self.clone() })
    }

    pub fn uses(&self, limits: &Limits) -> Vec<LimitUse> {
        let u = |key: LimitKey, used: usize, max: usize| LimitUse { key: key.as_str().into(), used, max };
        let mut v = Vec::new();
        let mut busiest = 0;
        for door in Door::ALL {
            let g = self.door(door);
            let [(all_key, all), (_, per_max)] = door.limits(limits);
            v.push(u(all_key, g.unauthenticated.load(Ordering::Relaxed), all));
            if door != Door::Gateway {
                let most = g.per_address.lock().unwrap_or_else(|e| e.into_inner()).values().copied().max().unwrap_or(0);
                busiest = busiest.max(most.min(per_max));
            }
        }
        v.insert(1, u(LimitKey::MaxUnauthenticatedPerAddress, busiest, limits.max_unauthenticated_per_address));
        v.push(u(LimitKey::MaxInbound, self.inbound.load(Ordering::Relaxed), limits.max_inbound));
        v.push(u(LimitKey::MaxOutbound, self.outbound.load(Ordering::Relaxed), limits.max_outbound));
        v
    }

    fn release_unauthenticated(&self, door: Door, ip: IpAddr) {
        let g = self.door(door);
        g.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        let mut per = g.per_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&ip);
            }
        }
    }
}

/// An inbound stream's place under the limits; given back when dropped.
#[derive(Debug)]
pub struct InboundSlot {
    gauges: Arc<Gauges>,
    door: Door,
    ip: IpAddr,
    authenticated: bool,
    /// `limits.max_inbound` when admitted.
    max_inbound: usize,
}

impl InboundSlot {
    /// The stream authenticated a domain: it moves from the unauthenticated limits to
    /// `limits.max_inbound` (refused when that is full).
    pub fn authenticated(&mut self) -> Result<(), Refused> {
        if self.authenticated {
            return Ok(());
        }
        self.gauges
            .inbound
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_inbound).then_some(n + 1))
            .map_err(|_| Refused(LimitKey::MaxInbound))?;
        self.gauges.release_unauthenticated(self.door, self.ip);
        self.authenticated = true;
        Ok(())
    }
}

impl crate::proto::machine::Admission for InboundSlot {
    fn authenticated(&mut self) -> Result<(), LimitKey> {
        match InboundSlot::authenticated(self) {
            Ok(()) => Ok(()),
            Err(Refused(key)) => {
                refused_once(key, "*", || format!("refusing an authenticated inbound stream: {key} reached"));
                Err(key)
            }
        }
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        if self.authenticated {
            self.gauges.inbound.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.gauges.release_unauthenticated(self.door, self.ip);
        }
    }
}

/// An outbound stream's place under `limits.max_outbound`.
#[derive(Debug)]
pub struct OutboundSlot {
    gauges: Arc<Gauges>,
}

impl Drop for OutboundSlot {
    fn drop(&mut self) {
        self.gauges.outbound.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod gauge_tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_inbound_unauthenticated: 3,
            max_unauthenticated_per_address: 2,
            max_inbound: 1,
            max_outbound: 1,
            max_verifications_in_flight: 2,
            verifications_per_minute: 3,
            ..Limits::default()
        }
    }

    #[test]
    fn inbound_limits_are_separate_from_outbound() {
        let g = Arc::new(Gauges::default());
        let l = limits();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let mut s1 = g.admit(Door::Federation, a, &l).unwrap();
        let _s2 = g.admit(Door::Federation, a, &l).unwrap();
        assert_eq!(g.admit(Door::Federation, a, &l).unwrap_err(), Refused(LimitKey::MaxUnauthenticatedPerAddress));
        let s3 = g.admit(Door::Federation, b, &l).unwrap();
        assert_eq!(g.admit(Door::Federation, b, &l).unwrap_err(), Refused(LimitKey::MaxInboundUnauthenticated));
        // Inbound full: outbound still has its own room.
        let o = g.outbound(&l).unwrap();
        assert_eq!(g.outbound(&l).unwrap_err(), Refused(LimitKey::MaxOutbound));
        // Authenticating frees the unauthenticated slot.
        s1.authenticated().unwrap();
        let _s4 = g.admit(Door::Federation, b, &l).unwrap();
        drop(s3);
        let mut s5 = g.admit(Door::Federation, b, &l).unwrap();
        assert_eq!(s5.authenticated().unwrap_err(), Refused(LimitKey::MaxInbound));
        drop((s1, o));
        let uses = g.uses(&l);
        assert_eq!(uses.iter().find(|u| u.key == "limits.max_inbound").unwrap().used, 0);
        assert_eq!(uses.iter().find(|u| u.key == "limits.max_outbound").unwrap().used, 0);
        assert_eq!(uses.iter().find(|u| u.key == "limits.max_inbound_unauthenticated").unwrap().used, 3);
    }

    #[test]
    fn each_door_has_its_own_unauthenticated_budget() {
        let g = Arc::new(Gauges::default());
        let l = Limits { max_unauthenticated_gateway: 2, max_unauthenticated_components: 2, ..limits() };
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        // The public door full, from one address and from all.
        let _public = [g.admit(Door::Federation, a, &l).unwrap(), g.admit(Door::Federation, a, &l).unwrap()];
        let _more = g.admit(Door::Federation, b, &l).unwrap();
        assert_eq!(g.admit(Door::Federation, b, &l).unwrap_err(), Refused(LimitKey::MaxInboundUnauthenticated));
        // The same addresses still come in through the other doors, up to their own limits.
        let internal = [g.admit(Door::Gateway, a, &l).unwrap(), g.admit(Door::Gateway, a, &l).unwrap()];
        assert_eq!(g.admit(Door::Gateway, a, &l).unwrap_err(), Refused(LimitKey::MaxUnauthenticatedGateway));
        let component = g.admit(Door::Components, a, &l).unwrap();
        let _c2 = g.admit(Door::Components, b, &l).unwrap();
        assert_eq!(g.admit(Door::Components, b, &l).unwrap_err(), Refused(LimitKey::MaxUnauthenticatedComponents));
        // A slot given back returns to its own door.
        drop(internal);
        drop(component);
        let _i = g.admit(Door::Gateway, a, &l).unwrap();
        let _c = g.admit(Door::Components, a, &l).unwrap();
        assert_eq!(g.admit(Door::Federation, b, &l).unwrap_err(), Refused(LimitKey::MaxInboundUnauthenticated));
        let uses = g.uses(&l);
        let used = |k: &str| uses.iter().find(|u| u.key == k).unwrap().used;
        assert_eq!(
            (
                used("limits.max_inbound_unauthenticated"),
                used("limits.max_unauthenticated_gateway"),
                used("limits.max_unauthenticated_components")
            ),
            (3, 1, 2)
        );
    }
}
