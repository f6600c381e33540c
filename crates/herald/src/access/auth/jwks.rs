//! A JWKS fetched from a URL (`auth.jwks = "https://…"`).
//!
//! Keys are fetched on first use, when the copy is older than [`MAX_AGE`],
//! and when a token names a `kid` the set does not hold (key rotation).
//!
//! Verification never waits for a fetch it does not need: a token whose key
//! is known verifies at once, and an old set is refreshed in the
//! background. Only a token that no known key can verify (nothing fetched
//! yet, or an unknown `kid`) waits, for the one fetch in flight (fetches are
//! single-flight), at most [`TIMEOUT`].
//!
//! Fetches for unknown `kid`s happen at most once per [`MIN_INTERVAL`], so
//! tokens with random `kid`s cannot turn the hub into a flood against the
//! identity provider. A failed fetch keeps the keys already known and is
//! tried again after a pause that doubles up to [`MIN_INTERVAL`] (not after
//! [`MAX_AGE`]). Redirects are followed only within the same scheme, host
//! and port (three at most), and a set over [`MAX_BYTES`] is refused.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use tokio::time::Instant;

use super::keys::VerifyKey;

pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const MAX_AGE: Duration = Duration::from_secs(300);
/// Longest a fetch may take, connection to last byte.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set read.
pub(crate) const MAX_BYTES: usize = 1 << 20;

pub(crate) struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    keys: parking_lot::RwLock<Arc<Vec<VerifyKey>>>,
    /// When fetches happened; never held across an await.
    fetched: parking_lot::Mutex<Fetched>,
    /// Held across a fetch: concurrent callers that must wait for keys wait
    /// for the one fetch in flight.
    flight: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Fetched {
    /// Last successful fetch.
    ok: Option<Instant>,
    /// Last fetch because of an unknown `kid`.
    for_unknown_kid: Option<Instant>,
    /// Failed fetches in a row, and when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
}

/// Why a fetch is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Never fetched, or older than [`MAX_AGE`].
    Stale,
    /// A token names a `kid` the set does not hold.
    UnknownKid,
}

impl RemoteJwks {
    pub(crate) fn new(url: &str) -> RemoteJwks {
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let first = &attempt.previous()[0];
            let next = attempt.url();
            let same = next.scheme() == first.scheme()
                && next.host_str() == first.host_str()
                && next.port_or_known_default() == first.port_or_known_default();
            let (next, hops) = (next.to_string(), attempt.previous().len());
            if !same {
                attempt.error(format!("refused a redirect to another origin ({next})"))
            } else if hops > 3 {
                attempt.error("more than three redirects")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(redirects)
            .build()
            .expect("a TLS-capable HTTP client");
        RemoteJwks {
            url: url.to_owned(),
            client,
            keys: parking_lot::RwLock::new(Arc::new(Vec::new())),
            fetched: parking_lot::Mutex::new(Fetched::default()),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().clone()
    }

    /// Whether `reason` calls for a fetch now.
    fn wanted(&self, reason: Reason) -> bool {
        let f = self.fetched.lock();
        let recent = |t: Option<Instant>, within: Duration| t.is_some_and(|t| t.elapsed() < within);
        if f.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        match reason {
            Reason::Stale => !recent(f.ok, MAX_AGE),
            Reason::UnknownKid => !recent(f.for_unknown_kid, MIN_INTERVAL),
        }
    }

    /// Whether the set was never fetched, or is old enough to fetch again.
    pub(crate) fn is_stale(&self) -> bool {
        self.wanted(Reason::Stale)
    }

    /// Fetches the set if `reason` still calls for it once any fetch in
    /// flight has finished.
    pub(crate) async fn refresh(&self, reason: Reason) {
        let _flight = self.flight.lock().await;
        if !self.wanted(reason) {
            return;
        }
        if reason == Reason::UnknownKid {
            self.fetched.lock().for_unknown_kid = Some(Instant::now());
        }
        let fetched = self.fetch().await;
        let mut f = self.fetched.lock();
        match fetched {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                *self.keys.write() = Arc::new(keys);
                f.ok = Some(Instant::now());
                f.failures = 0;
                f.retry_at = None;
            }
            Err(err) => {
                f.failures = f.failures.saturating_add(1);
                let pause = Duration::from_millis(500u64 << f.failures.min(5)).min(MIN_INTERVAL);
                f.retry_at = Some(Instant::now() + pause);
                tracing::warn!(url = %self.url, %err, retry_in = ?pause, "JWKS fetch failed; keeping the keys known")
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let mut resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
            return Err(format!("the set is over {MAX_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(format!("the set is over {MAX_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = crate::values::json::from_slice(&body).map_err(|e| e.to_string())?;
        let keys: Vec<VerifyKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    family: key.family(),
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err("the set holds no usable keys".into());
        }
        Ok(keys)
    }
}
