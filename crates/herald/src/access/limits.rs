//! Connection limits: `limits.max_connections` and
//! `limits.max_connections_per_ip`. A permit is held for the life of a
//! stream and gives its slot back when dropped, however the stream ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a stream was refused for now (a temporary refusal, SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitRefusal {
    HubFull,
    TooManyFromAddress,
    TooManyForUser,
    ConnectRate,
}

impl LimitRefusal {
    pub(crate) fn code(self) -> &'static str {
        match self {
            LimitRefusal::HubFull => "hub_full",
            LimitRefusal::TooManyFromAddress => "too_many_connections_from_address",
            LimitRefusal::TooManyForUser => "too_many_connections_for_user",
            LimitRefusal::ConnectRate => "connect_rate_limited",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            LimitRefusal::HubFull => "the hub has reached its connection limit; try again later",
            LimitRefusal::TooManyFromAddress => {
                "too many open streams from this address; try again later"
            }
            LimitRefusal::TooManyForUser => "too many open streams for this user; try again later",
            LimitRefusal::ConnectRate => "too many new streams from this address; try again later",
        }
    }
}

#[derive(Clone)]
pub(crate) struct ConnectionLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// 0 = unlimited.
    max_total: usize,
    /// 0 = unlimited.
    max_per_ip: usize,
    /// 0 = unlimited.
    max_per_user: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<Box<str>, usize>,
}

/// A held connection slot.
pub(crate) struct ConnectionPermit {
    inner: Arc<Inner>,
    ip: Option<IpAddr>,
    user: Option<Box<str>>,
}

/// Takes one from a count, forgetting the key at zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl ConnectionLimiter {
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        max_per_user: usize,
    ) -> ConnectionLimiter {
        ConnectionLimiter {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                max_per_user,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub(crate) fn try_acquire(
        &self,
        ip: Option<IpAddr>,
        user: Option<&str>,
    ) -> Result<ConnectionPermit, LimitRefusal> {
        let inner = &self.inner;
        let mut s = inner.state.lock();
        let over = |max: usize, n: Option<&usize>| max != 0 && n.copied().unwrap_or(0) >= max;
        if over(inner.max_total, Some(&s.total)) {
            return Err(LimitRefusal::HubFull);
        }
        if ip.is_some_and(|ip| over(inner.max_per_ip, s.per_ip.get(&ip))) {
            return Err(LimitRefusal::TooManyFromAddress);
        }
        if user.is_some_and(|u| over(inner.max_per_user, s.per_user.get(u))) {
            return Err(LimitRefusal::TooManyForUser);
        }
        s.total += 1;
        if let Some(ip) = ip {
            *s.per_ip.entry(ip).or_default() += 1;
        }
        if let Some(user) = user {
            *s.per_user.entry(user.into()).or_default() += 1;
        }
        Ok(ConnectionPermit {
            inner: inner.clone(),
            ip,
            user: user.map(Into::into),
        })
    }

    /// Streams open now.
    pub(crate) fn open(&self) -> usize {
        self.inner.state.lock().total
    }

    /// Addresses with at least one open stream.
    pub(crate) fn addresses(&self) -> usize {
        self.inner.state.lock().per_ip.len()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut s = self.inner.state.lock();
        s.total -= 1;
        if let Some(ip) = &self.ip {
            release(&mut s.per_ip, ip);
        }
        if let Some(user) = &self.user {
            release(&mut s.per_user, user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_address_and_gives_back() {
        let l = ConnectionLimiter::new(3, 2, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(Some(a), None).unwrap();
        let _p2 = l.try_acquire(Some(a), None).unwrap();
        let refused = l.try_acquire(Some(a), None).err();
        assert_eq!(refused, Some(LimitRefusal::TooManyFromAddress));
        let _p3 = l.try_acquire(Some(b), None).unwrap();
        assert_eq!(
            l.try_acquire(Some(b), None).err(),
            Some(LimitRefusal::HubFull)
        );
        drop(p1);
        let _p4 = l.try_acquire(Some(a), None).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn limits_per_user() {
        let l = ConnectionLimiter::new(0, 0, 2);
        let _a1 = l.try_acquire(None, Some("alice")).unwrap();
        let a2 = l.try_acquire(None, Some("alice")).unwrap();
        let refused = l.try_acquire(None, Some("alice")).err();
        assert_eq!(refused, Some(LimitRefusal::TooManyForUser));
        let _b = l.try_acquire(None, Some("bob")).unwrap();
        drop(a2);
        assert!(l.try_acquire(None, Some("alice")).is_ok());
    }

    #[test]
    fn unlimited_when_zero() {
        let l = ConnectionLimiter::new(0, 0, 0);
        let permits: Vec<_> = (0..100)
            .map(|_| l.try_acquire(None, Some("u")).unwrap())
            .collect();
        assert_eq!(l.open(), 100);
        drop(permits);
        assert_eq!((l.open(), l.addresses()), (0, 0));
    }
}
