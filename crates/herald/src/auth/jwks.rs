//! A JWKS fetched from a URL (`auth.jwks = "https://…"`).
//!
//! Keys are fetched on first use, when the copy is older than [`MAX_AGE`],
//! and when a token names a `kid` the set does not hold (key rotation).
//! Fetches are single-flight, and fetches for unknown `kid`s happen at most
//! once per [`MIN_INTERVAL`], so tokens with random `kid`s cannot turn the
//! hub into a flood against the identity provider; that throttle ignores
//! the other fetches, so a rotation right after one is still seen. A failed
//! fetch keeps the keys already known.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use tokio::time::Instant;

use super::keys::VerifyKey;

pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const MAX_AGE: Duration = Duration::from_secs(300);

pub(crate) struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    keys: parking_lot::RwLock<Arc<Vec<VerifyKey>>>,
    /// Held across a fetch: concurrent callers wait for the one fetch.
    fetched: tokio::sync::Mutex<Fetched>,
}

#[derive(Default)]
struct Fetched {
    /// Last fetch of any kind.
    any: Option<Instant>,
    /// Last fetch because of an unknown `kid`.
    for_unknown_kid: Option<Instant>,
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
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a TLS-capable HTTP client");
        RemoteJwks {
            url: url.to_owned(),
            client,
            keys: parking_lot::RwLock::new(Arc::new(Vec::new())),
            fetched: tokio::sync::Mutex::new(Fetched::default()),
        }
    }

    pub(crate) fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().clone()
    }

    /// Fetches the set if `reason` still calls for it once any fetch in
    /// flight has finished.
    pub(crate) async fn refresh(&self, reason: Reason) {
        let mut fetched = self.fetched.lock().await;
        let recent = |t: Option<Instant>, within: Duration| t.is_some_and(|t| t.elapsed() < within);
        let skip = match reason {
            Reason::Stale => recent(fetched.any, MAX_AGE),
            Reason::UnknownKid => recent(fetched.for_unknown_kid, MIN_INTERVAL),
        };
        if skip {
            return;
        }
        let now = Instant::now();
        fetched.any = Some(now);
        if reason == Reason::UnknownKid {
            fetched.for_unknown_kid = Some(now);
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                *self.keys.write() = Arc::new(keys);
            }
            Err(err) => {
                tracing::warn!(url = %self.url, %err, "JWKS fetch failed; keeping the keys known")
            }
        }
    }

    /// Whether the set was never fetched, or is old enough to fetch again.
    pub(crate) async fn is_stale(&self) -> bool {
        self.fetched
            .lock()
            .await
            .any
            .is_none_or(|t| t.elapsed() >= MAX_AGE)
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let set: JwkSet = resp.json().await.map_err(|e| e.to_string())?;
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
