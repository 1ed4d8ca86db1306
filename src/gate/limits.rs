//! Per-client limits (`[client_limits]`): requests per second with a burst,
//! connections open at once, response bytes per second, and a byte rate
//! for the whole process.
//!
//! One [`Limiter`] serves every worker (built in `server/`, a handle in
//! each `Worker`), so a client that spreads its connections over workers
//! draws on one budget. It is lock-free and its memory is fixed:
//!
//! - Each limit is a table of 65,536 atomic cells, indexed by a keyed hash
//!   of the client's address prefix (or user name). Nothing is inserted or
//!   evicted: an address never seen and an address whose budget is full
//!   again look the same (a cell at rest), so a flood of new IPv6
//!   addresses reuses cells instead of growing anything. Two clients that
//!   hash to one cell share its budget: a collision only makes a limit
//!   stricter, never looser. The hash key is random per process, so a
//!   client cannot aim at another's cell.
//! - Rates are GCRA (the token bucket stated as one number): a cell holds
//!   the time at which its bucket is full again ("theoretical arrival
//!   time", nanoseconds since the limiter's epoch). Taking a token is one
//!   compare-and-swap of that time; refusing costs a load. No worker ever
//!   holds tokens another worker could have used, so the budget is exact
//!   across workers, with no lease to size or return.
//! - Connections are a count per cell: an add at accept, a subtract when
//!   the connection ends (the [`ConnectionSlot`] guard).
//!
//! See `docs/design.md` ("Per-client limits") for the cost and the choices.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::limits::{ByteRate, ClientLimits, RequestRate};
use crate::wire::addr::ClientAddr;

/// Cells per table: with a thousand clients active at once, one shares its
/// cell with another 1.5% of the time (and then only shares a budget).
/// 512 KiB per 64-bit table, allocated on first use.
const CELLS: usize = 1 << 16;

/// Response bytes written at most per paced write: small enough that a
/// shaped body moves steadily (and each wait is short), large enough to
/// keep syscalls per byte low for fast shaped clients.
const MAX_PACED_WRITE: u64 = 64 * 1024;
/// At least this much per paced write (a status line must fit the first).
const MIN_PACED_WRITE: u64 = 4 * 1024;

/// The shared limiter: one per process, for every worker.
pub struct Limiter {
    epoch: Instant,
    /// Keys the cell hash (random per process).
    keys: RandomState,
    requests: OnceLock<Box<[AtomicU64]>>,
    bytes: OnceLock<Box<[AtomicU64]>>,
    connections: OnceLock<Box<[AtomicU32]>>,
    /// The process-wide byte rate's one cell.
    egress: AtomicU64,
}

/// Who a request is counted against: its client's address (grouped by
/// prefix) or, for a user with limits of their own, that user.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub addr: IpAddr,
    /// The user the mirror authenticated, if any (mirror auth).
    pub user: Option<&'a str>,
}

impl<'a> Who<'a> {
    pub fn address(client: ClientAddr) -> Who<'a> {
        Who {
            addr: client.ip,
            user: None,
        }
    }
}

/// A refusal: over a limit, and how long until trying again helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    pub limit: Limit,
    pub retry_after: Duration,
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Connections,
}

impl OverLimit {
    /// `Retry-After` in whole seconds, rounded up (RFC 9110 10.2.3 has no
    /// fractions; rounding down would invite a retry that is refused too).
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// The message of the `TOOMANYREQUESTS` error.
    pub fn message(&self) -> String {
        match self.limit {
            Limit::Requests => format!(
                "too many requests from this client; retry after {} s",
                self.retry_after_secs()
            ),
            Limit::Connections => "too many connections from this client".into(),
        }
    }
}

/// The cell a key was found in, for the tables of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell(usize);

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            epoch: Instant::now(),
            keys: RandomState::new(),
            requests: OnceLock::new(),
            bytes: OnceLock::new(),
            connections: OnceLock::new(),
            egress: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the epoch: the clock every cell is in.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The cell of `who`'s address prefix, or of its user when `by_user`.
    fn cell(&self, limits: &ClientLimits, who: Who<'_>, by_user: bool) -> Cell {
        let mut h = self.keys.build_hasher();
        match (who.user, by_user) {
            (Some(user), true) => {
                1u8.hash(&mut h);
                user.hash(&mut h);
            }
            _ => match who.addr {
                IpAddr::V4(a) => {
                    2u8.hash(&mut h);
                    (u32::from(a) & mask32(limits.ipv4_prefix)).hash(&mut h);
                }
                IpAddr::V6(a) => {
                    3u8.hash(&mut h);
                    (u128::from(a) & mask128(limits.ipv6_prefix)).hash(&mut h);
                }
            },
        }
        Cell(h.finish() as usize & (CELLS - 1))
    }

    /// Admits one request of `who`, or says how long until it would be.
    pub fn admit_request(&self, limits: &ClientLimits, who: Who<'_>) -> Result<(), OverLimit> {
        let user = who.user.and_then(|u| limits.users.get(u));
        let (rate, by_user) = match user.and_then(|u| u.requests) {
            Some(r) => (r, true),
            None => match limits.requests {
                Some(r) => (r, false),
                None => return Ok(()),
            },
        };
        let Cell(i) = self.cell(limits, who, by_user);
        let cells = self.requests.get_or_init(cells64);
        let (t, tau) = request_costs(rate);
        gcra_admit(&cells[i], self.now(), t, tau).map_err(|wait| OverLimit {
            limit: Limit::Requests,
            retry_after: Duration::from_nanos(wait),
        })
    }

    /// Counts a new connection of `client` against its prefix's cap, until
    /// the slot is dropped. `Ok(None)`: no cap applies.
    pub fn open_connection(
        self: &Arc<Self>,
        limits: &ClientLimits,
        client: ClientAddr,
    ) -> Result<Option<ConnectionSlot>, OverLimit> {
        let Some(max) = limits.max_connections else {
            return Ok(None);
        };
        let Cell(i) = self.cell(limits, Who::address(client), false);
        let cells = self.connections.get_or_init(|| {
            (0..CELLS)
                .map(|_| AtomicU32::new(0))
                .collect::<Vec<_>>()
                .into()
        });
        // Relaxed: the count is the only thing the cell says.
        if cells[i].fetch_add(1, Ordering::Relaxed) >= max {
            cells[i].fetch_sub(1, Ordering::Relaxed);
            return Err(OverLimit {
                limit: Limit::Connections,
                // A slot comes back when one of its connections ends,
                // which nothing here can predict: a second is the shortest
                // honest answer.
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(Some(ConnectionSlot {
            limiter: self.clone(),
            cell: i,
        }))
    }

    /// The pacing of one response's bytes for `who`, if any byte rate
    /// applies.
    pub fn pacer(self: &Arc<Self>, limits: &ClientLimits, who: Who<'_>) -> Option<Pacer> {
        let user = who.user.and_then(|u| limits.users.get(u));
        let client = match user.and_then(|u| u.bytes) {
            Some(r) => Some((r, true)),
            None => limits.bytes.map(|r| (r, false)),
        };
        if client.is_none() && limits.egress.is_none() {
            return None;
        }
        let client = client.map(|(r, by_user)| (self.cell(limits, who, by_user).0, r));
        let slowest = client
            .iter()
            .map(|(_, r)| r.per_sec)
            .chain(limits.egress.map(|r| r.per_sec))
            .min()
            .unwrap_or(u64::MAX);
        Some(Pacer {
            limiter: self.clone(),
            client,
            egress: limits.egress,
            // About an eighth of a second's worth per write.
            chunk: (slowest / 8).clamp(MIN_PACED_WRITE, MAX_PACED_WRITE) as usize,
            waited: false,
        })
    }
}

/// One open connection counted against its client's cap; the count goes
/// down when this is dropped.
pub struct ConnectionSlot {
    limiter: Arc<Limiter>,
    cell: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(cells) = self.limiter.connections.get() {
            cells[self.cell].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Paces the bytes of one response: each write first reserves its bytes in
/// the client's cell and in the process's, then waits (a monoio timer: the
/// worker serves others meanwhile) until both rates allow them. Bodies are
/// slowed, never cut.
pub struct Pacer {
    limiter: Arc<Limiter>,
    client: Option<(usize, ByteRate)>,
    egress: Option<ByteRate>,
    chunk: usize,
    waited: bool,
}

impl Pacer {
    /// Waits until `want` bytes (or the first part of them: at most one
    /// paced write) may go, and says how many.
    pub async fn admit(&mut self, want: usize) -> usize {
        if want == 0 {
            return 0; // nothing to pay for, nothing to wait for
        }
        let n = want.min(self.chunk);
        let wait = self.reserve(n as u64);
        if !wait.is_zero() {
            self.waited = true;
            monoio::time::sleep(wait).await;
        }
        n
    }

    /// Charges `n` bytes already written, waiting what they cost beyond
    /// the burst (for writes that cannot be split first).
    pub async fn paid(&mut self, n: usize) {
        let wait = self.reserve(n as u64);
        if !wait.is_zero() {
            self.waited = true;
            monoio::time::sleep(wait).await;
        }
    }

    /// Reserves `n` bytes in every cell that applies: how long until they
    /// may go.
    fn reserve(&self, n: u64) -> Duration {
        let l = &self.limiter;
        let now = l.now();
        let mut wait = 0;
        if let Some((i, rate)) = self.client {
            let cells = l.bytes.get_or_init(cells64);
            wait = gcra_reserve(
                &cells[i],
                now,
                byte_cost(rate, n),
                byte_cost(rate, rate.burst),
            );
        }
        if let Some(rate) = self.egress {
            let w = gcra_reserve(
                &l.egress,
                now,
                byte_cost(rate, n),
                byte_cost(rate, rate.burst),
            );
            wait = wait.max(w);
        }
        Duration::from_nanos(wait)
    }

    /// Whether any write of this response had to wait.
    pub fn waited(&self) -> bool {
        self.waited
    }
}

fn cells64() -> Box<[AtomicU64]> {
    (0..CELLS)
        .map(|_| AtomicU64::new(0))
        .collect::<Vec<_>>()
        .into()
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// A request's cost `t` (ns between requests at the rate) and the bucket's
/// tolerance `tau` (how far ahead of now the cell may run: `burst - 1`
/// requests beyond the one being admitted).
fn request_costs(rate: RequestRate) -> (u64, u64) {
    let t = (1e9 / rate.per_sec).max(1.0) as u64;
    (t, t.saturating_mul(u64::from(rate.burst - 1)))
}

/// Nanoseconds `n` bytes take at `rate`.
fn byte_cost(rate: ByteRate, n: u64) -> u64 {
    let ns = u128::from(n) * 1_000_000_000 / u128::from(rate.per_sec.max(1));
    ns.min(u128::from(u64::MAX / 4)) as u64
}

/// GCRA admission: admits a unit costing `t` if the cell runs at most `tau`
/// ahead of `now` (then moves it on by `t`); otherwise the nanoseconds
/// until it would be admitted, and the cell is left as it was.
fn gcra_admit(cell: &AtomicU64, now: u64, t: u64, tau: u64) -> Result<(), u64> {
    let mut tat = cell.load(Ordering::Relaxed);
    loop {
        // A cell at rest (its time passed) starts from now: unused and
        // long-unused cells are the same, which is why nothing is evicted.
        let start = tat.max(now);
        let ahead = start - now;
        if ahead > tau {
            return Err(ahead - tau);
        }
        match cell.compare_exchange_weak(tat, start + t, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(seen) => tat = seen,
        }
    }
}

/// GCRA reservation: always takes the cost (bytes already asked for are
/// sent, late), and says how long the caller waits first: as long as the
/// cell runs more than `tau` ahead of `now`.
fn gcra_reserve(cell: &AtomicU64, now: u64, cost: u64, tau: u64) -> u64 {
    let mut tat = cell.load(Ordering::Relaxed);
    loop {
        let start = tat.max(now);
        match cell.compare_exchange_weak(tat, start + cost, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return (start - now).saturating_sub(tau),
            Err(seen) => tat = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limits() -> ClientLimits {
        ClientLimits {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            requests: Some(RequestRate {
                per_sec: 2.0,
                burst: 3,
            }),
            max_connections: Some(2),
            bytes: None,
            egress: None,
            users: BTreeMap::new(),
        }
    }

    fn who(ip: &str) -> Who<'static> {
        Who {
            addr: ip.parse().unwrap(),
            user: None,
        }
    }

    #[test]
    fn a_burst_is_admitted_then_refused_until_the_bucket_refills() {
        let cell = AtomicU64::new(0);
        let (t, tau) = request_costs(RequestRate {
            per_sec: 2.0,
            burst: 3,
        });
        let now = 100 * SEC;
        for _ in 0..3 {
            assert_eq!(gcra_admit(&cell, now, t, tau), Ok(()));
        }
        // The fourth waits for one token: half a second at 2/s.
        assert_eq!(gcra_admit(&cell, now, t, tau), Err(SEC / 2));
        assert_eq!(gcra_admit(&cell, now + SEC / 2 - 1, t, tau), Err(1));
        assert_eq!(gcra_admit(&cell, now + SEC / 2, t, tau), Ok(()));
        // Long idle: a full burst again, no more.
        let later = now + 60 * SEC;
        for _ in 0..3 {
            assert_eq!(gcra_admit(&cell, later, t, tau), Ok(()));
        }
        assert!(gcra_admit(&cell, later, t, tau).is_err());
    }

    #[test]
    fn reservations_wait_once_the_burst_is_spent() {
        let cell = AtomicU64::new(0);
        let rate = ByteRate {
            per_sec: 1000,
            burst: 1000,
        };
        let (cost, tau) = (byte_cost(rate, 500), byte_cost(rate, rate.burst));
        let now = 5 * SEC;
        assert_eq!(gcra_reserve(&cell, now, cost, tau), 0);
        assert_eq!(gcra_reserve(&cell, now, cost, tau), 0);
        // 1000 bytes ahead: the burst is spent, the next 500 wait their time.
        assert_eq!(gcra_reserve(&cell, now, cost, tau), 0);
        assert_eq!(gcra_reserve(&cell, now, cost, tau), SEC / 2);
        assert_eq!(gcra_reserve(&cell, now, cost, tau), SEC);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let o = |ms| OverLimit {
            limit: Limit::Requests,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(o(1).retry_after_secs(), 1);
        assert_eq!(o(1000).retry_after_secs(), 1);
        assert_eq!(o(1001).retry_after_secs(), 2);
        assert_eq!(o(0).retry_after_secs(), 1);
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64_and_ipv4_by_address() {
        let l = Limiter::new();
        let lim = limits();
        let c = |ip| l.cell(&lim, who(ip), false);
        assert_eq!(c("2001:db8:1:2::1"), c("2001:db8:1:2:ffff::9"));
        assert_ne!(c("2001:db8:1:2::1"), c("2001:db8:1:3::1"));
        assert_ne!(c("192.0.2.1"), c("192.0.2.2"));
        let wide = ClientLimits {
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            ..limits()
        };
        let w = |ip| l.cell(&wide, who(ip), false);
        assert_eq!(w("192.0.2.1"), w("192.0.2.200"));
        assert_eq!(w("2001:db8:1:2::1"), w("2001:db8:1:3::1"));
    }

    #[test]
    fn the_connection_cap_counts_open_slots_and_frees_them() {
        let l = Arc::new(Limiter::new());
        let lim = limits();
        let a: ClientAddr = ClientAddr::from_socket("192.0.2.1:1".parse().unwrap());
        let one = l.open_connection(&lim, a).unwrap();
        let two = l.open_connection(&lim, a).unwrap();
        let over = l.open_connection(&lim, a).err().unwrap();
        assert_eq!(over.limit, Limit::Connections);
        drop(one);
        let three = l.open_connection(&lim, a).unwrap();
        assert!(three.is_some());
        drop((two, three));
    }

    #[test]
    fn a_user_with_limits_of_their_own_is_counted_apart_from_the_address() {
        let l = Limiter::new();
        let mut lim = limits();
        lim.users.insert(
            "ci".into(),
            crate::config::limits::UserLimits {
                requests: Some(RequestRate {
                    per_sec: 1.0,
                    burst: 5,
                }),
                bytes: None,
            },
        );
        let anon = who("192.0.2.1");
        for _ in 0..3 {
            l.admit_request(&lim, anon).unwrap();
        }
        assert!(l.admit_request(&lim, anon).is_err());
        let ci = Who {
            user: Some("ci"),
            ..anon
        };
        for _ in 0..5 {
            l.admit_request(&lim, ci).unwrap();
        }
        assert!(l.admit_request(&lim, ci).is_err());
        // A user without limits of their own is counted as their address.
        let other = Who {
            user: Some("someone"),
            ..anon
        };
        assert!(l.admit_request(&lim, other).is_err());
    }

    #[test]
    fn masks_keep_the_prefix_bits() {
        assert_eq!(mask32(32), u32::MAX);
        assert_eq!(mask32(24), 0xffff_ff00);
        assert_eq!(mask128(64), !0u128 << 64);
        assert_eq!(mask128(128), u128::MAX);
    }
}
