//! Connection limits: `limits.max_connections` and
//! `limits.max_connections_per_ip`. A permit is held for the life of a
//! stream and gives its slot back when dropped, however the stream ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a stream was refused for now (a temporary refusal, SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    HubFull,
    TooManyFromAddress,
}

impl LimitRefusal {
    pub fn code(self) -> &'static str {
        match self {
            LimitRefusal::HubFull => "hub_full",
            LimitRefusal::TooManyFromAddress => "too_many_connections_from_address",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            LimitRefusal::HubFull => "the hub has reached its connection limit; try again later",
            LimitRefusal::TooManyFromAddress => {
                "too many open streams from this address; try again later"
            }
        }
    }
}

#[derive(Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// 0 = unlimited.
    max_total: usize,
    /// 0 = unlimited.
    max_per_ip: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A held connection slot.
pub struct ConnectionPermit {
    inner: Arc<Inner>,
    ip: Option<IpAddr>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn try_acquire(&self, ip: Option<IpAddr>) -> Result<ConnectionPermit, LimitRefusal> {
        let mut s = self.inner.state.lock();
        if self.inner.max_total != 0 && s.total >= self.inner.max_total {
            return Err(LimitRefusal::HubFull);
        }
        if let Some(ip) = ip {
            let n = s.per_ip.entry(ip).or_default();
            if self.inner.max_per_ip != 0 && *n >= self.inner.max_per_ip {
                if *n == 0 {
                    s.per_ip.remove(&ip);
                }
                return Err(LimitRefusal::TooManyFromAddress);
            }
            *n += 1;
        }
        s.total += 1;
        Ok(ConnectionPermit {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.inner.state.lock().total
    }

    /// Addresses with at least one open stream.
    pub fn addresses(&self) -> usize {
        self.inner.state.lock().per_ip.len()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut s = self.inner.state.lock();
        s.total -= 1;
        if let Some(ip) = self.ip {
            if let Some(n) = s.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    s.per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_address_and_gives_back() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(Some(a)).unwrap();
        let _p2 = l.try_acquire(Some(a)).unwrap();
        assert_eq!(
            l.try_acquire(Some(a)).err(),
            Some(LimitRefusal::TooManyFromAddress)
        );
        let _p3 = l.try_acquire(Some(b)).unwrap();
        assert_eq!(l.try_acquire(Some(b)).err(), Some(LimitRefusal::HubFull));
        drop(p1);
        let _p4 = l.try_acquire(Some(a)).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn unlimited_when_zero() {
        let l = ConnectionLimiter::new(0, 0);
        let permits: Vec<_> = (0..100).map(|_| l.try_acquire(None).unwrap()).collect();
        assert_eq!(l.open(), 100);
        drop(permits);
        assert_eq!((l.open(), l.addresses()), (0, 0));
    }
}
