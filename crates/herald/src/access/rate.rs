//! Rate limits (`limits.publish_rate_per_sec`, `limits.connect_rate_per_ip`),
//! GCRA per key through `governor`. Keys that have been quiet long enough
//! to be back at full allowance are forgotten once a minute, so memory
//! follows the number of recently active callers, not all callers ever.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub(crate) struct RateLimits {
    publish: Option<DefaultKeyedRateLimiter<String>>,
    connect: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn limiter<K: Hash + Eq + Clone>(per_sec: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_sec).map(|n| RateLimiter::keyed(Quota::per_second(n)))
}

fn check<K: Hash + Eq + Clone>(
    limiter: &Option<DefaultKeyedRateLimiter<K>>,
    key: &K,
) -> Result<(), Duration> {
    match limiter {
        None => Ok(()),
        Some(l) => l
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
    }
}

impl RateLimits {
    pub(crate) fn new(publish_per_sec: u32, connect_per_sec: u32) -> RateLimits {
        RateLimits {
            publish: limiter(publish_per_sec),
            connect: limiter(connect_per_sec),
        }
    }

    /// `Err(wait)` when the publisher must wait before its next publish.
    pub(crate) fn check_publish(&self, key: &str) -> Result<(), Duration> {
        check(&self.publish, &key.to_owned())
    }

    /// `Err(wait)` when this address must wait before opening a stream.
    pub(crate) fn check_connect(&self, ip: IpAddr) -> Result<(), Duration> {
        check(&self.connect, &ip)
    }

    /// Forgets keys back at full allowance.
    pub(crate) fn forget_idle(&self) {
        if let Some(l) = &self.publish {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.connect {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.publish.is_some() || self.connect.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_says_how_long_to_wait() {
        let r = RateLimits::new(2, 0);
        assert!(r.check_publish("a").is_ok());
        assert!(r.check_publish("a").is_ok());
        let wait = r.check_publish("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(r.check_publish("b").is_ok(), "other keys are separate");
        assert!(
            r.check_connect("127.0.0.1".parse().unwrap()).is_ok(),
            "off when 0"
        );
    }
}
