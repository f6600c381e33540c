//! Who is asking (SPEC §5): an API key, a verified JWT, or an anonymous
//! visitor; and what they may read, write and administer.
//!
//! Credentials are resolved once per request into an [`Identity`]. Rights
//! are patterns: a request for pattern `p` is allowed when a granted pattern
//! [covers](crate::values::pattern::Pattern::covers) it, so a grant of `chat/**`
//! allows `chat/rooms/*` but a grant of `chat/*` does not allow `chat/**`.

mod jwks;
pub(crate) mod keys;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::values::pattern::Pattern;
use crate::values::topic::Topic;
use keys::{KeyError, VerifyKey};

/// What an identity may read or write.
#[derive(Debug, Clone, PartialEq)]
pub enum Rights {
    /// Every topic and pattern (an API key, dev mode, a token without limits).
    All,
    /// Those covered by one of these patterns.
    Only(Vec<Pattern>),
}

impl Rights {
    /// Whether these rights cover every topic `pattern` can match.
    pub fn allows(&self, pattern: &Pattern) -> bool {
        match self {
            Rights::All => true,
            Rights::Only(granted) => granted.iter().any(|g| g.covers(pattern)),
        }
    }

    /// Whether these rights cover `topic`.
    pub fn allows_topic(&self, topic: &Topic) -> bool {
        match self {
            Rights::All => true,
            Rights::Only(granted) => granted.iter().any(|g| g.matches(topic)),
        }
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// No auth key is configured (dev mode).
    DevMode,
    /// No credentials.
    Anonymous,
    /// One of `auth.api_keys` (its position in the list).
    ApiKey(usize),
    /// One of `auth.publisher_keys` (its position in the list).
    PublisherKey(usize),
    /// A verified JWT.
    Token,
    /// Code in the same process (`Hub::publish` from Rust).
    Embedded,
}

/// Who a request comes from and what it may do, resolved once from its
/// credentials (SPEC §5).
#[derive(Debug, Clone)]
pub struct Identity {
    /// How the caller proved it.
    pub proof: Proof,
    /// The token's `sub`.
    pub user: Option<Box<str>>,
    /// What it may subscribe to.
    pub subscribe: Rights,
    /// What it may publish to.
    pub publish: Rights,
    /// Whether it may use the admin API.
    pub admin: bool,
    /// `herald.meta`: what publish filters match.
    pub meta: Map<String, Value>,
    /// Unix seconds after which the token is no longer valid (its `exp`
    /// plus the leeway); a stream ends with `herald.token_expired` then.
    pub valid_until: Option<u64>,
}

impl Identity {
    /// Full rights: dev mode (the HTTP layer limits publish and admin to
    /// loopback there) and code in the same process.
    pub fn unrestricted(proof: Proof) -> Identity {
        Identity {
            proof,
            user: None,
            subscribe: Rights::All,
            publish: Rights::All,
            admin: true,
            meta: Map::new(),
            valid_until: None,
        }
    }

    /// Who the rate limits count this caller as.
    pub fn rate_key(&self, peer: Option<std::net::IpAddr>) -> String {
        match (&self.proof, &self.user) {
            (Proof::ApiKey(i), _) => format!("key:{i}"),
            (Proof::PublisherKey(i), _) => format!("publisher-key:{i}"),
            (_, Some(user)) => format!("user:{user}"),
            _ => format!("ip:{}", peer.map(|p| p.to_string()).unwrap_or_default()),
        }
    }
}

/// Why credentials were not accepted, or a right is missing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// `401`: credentials are needed and none were given.
    #[error("{0}")]
    Missing(String),
    /// `401`: the credentials are not valid.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `401`: the token has expired.
    #[error("the token has expired")]
    Expired,
    /// `403`: valid credentials without the right.
    #[error("{0}")]
    Forbidden(String),
}

/// Checks credentials against the configured keys.
pub(crate) struct Authenticator {
    keys: Vec<VerifyKey>,
    remote: Option<Arc<jwks::RemoteJwks>>,
    api_keys: Vec<String>,
    publisher_keys: Vec<String>,
    anonymous_subscribe: Vec<Pattern>,
    leeway_secs: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

/// The claims Herald reads. Rights may be given as flat claims
/// (`"herald.subscribe": [...]`, as SPEC §5 writes them) or nested
/// (`"herald": {"subscribe": [...]}`); not both for the same right.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    #[serde(rename = "herald.subscribe")]
    subscribe: Option<Vec<String>>,
    #[serde(rename = "herald.publish")]
    publish: Option<Vec<String>>,
    #[serde(rename = "herald.admin")]
    admin: Option<bool>,
    #[serde(rename = "herald.meta")]
    meta: Option<Map<String, Value>>,
    herald: Option<NestedClaims>,
}

#[derive(Deserialize, Default)]
struct NestedClaims {
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    admin: Option<bool>,
    meta: Option<Map<String, Value>>,
}

fn one_of<T>(name: &str, flat: Option<T>, nested: Option<T>) -> Result<Option<T>, AuthError> {
    match (flat, nested) {
        (Some(_), Some(_)) => Err(AuthError::Invalid(format!(
            "both `herald.{name}` and `herald: {{{name}}}` are set"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// Parses granted patterns, putting the token's subject in for `{sub}`.
/// The subject must then be one literal topic segment: a subject `*`,
/// `**` or `bob/x` would otherwise widen the grant to other users' topics,
/// so such a token is refused.
fn grants(
    claim: &str,
    patterns: Vec<String>,
    sub: Option<&str>,
) -> Result<Vec<Pattern>, AuthError> {
    patterns
        .into_iter()
        .map(|p| {
            let text = if p.contains("{sub}") {
                let sub = sub.ok_or_else(|| {
                    AuthError::Invalid(format!("`{claim}` uses {{sub}} but the token has no `sub`"))
                })?;
                let literal_segment =
                    !sub.contains('/') && crate::values::topic::Topic::new(sub).is_ok();
                if !literal_segment {
                    return Err(AuthError::Invalid(format!(
                        "`{claim}` uses {{sub}}, and the token's subject {sub:?} is not one topic segment (1 or more of A-Z a-z 0-9 . _ ~ : @ -)"
                    )));
                }
                p.replace("{sub}", sub)
            } else {
                p
            };
            Pattern::parse(&text)
                .map_err(|e| AuthError::Invalid(format!("`{claim}` pattern {text:?} {e}")))
        })
        .collect()
}

/// Compares without stopping at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// `Ok(None)` when no key is configured: dev mode.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Option<Authenticator>, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.jwt_secret {
            keys.push(keys::from_secret(secret)?);
        }
        if let Some(path) = &config.jwt_public_key_file {
            keys.push(keys::from_pem_file(path)?);
        }
        let mut remote = None;
        if let Some(jwks) = &config.jwks {
            if jwks.starts_with("http://") || jwks.starts_with("https://") {
                remote = Some(Arc::new(jwks::RemoteJwks::new(jwks)));
            } else {
                keys.extend(keys::from_jwks_file(std::path::Path::new(jwks))?);
            }
        }
        if keys.is_empty()
            && config.api_keys.is_empty()
            && config.publisher_keys.is_empty()
            && remote.is_none()
        {
            return Ok(None);
        }
        let anonymous_subscribe = config
            .anonymous_subscribe
            .iter()
            .map(|p| {
                Pattern::parse(p).map_err(|e| KeyError {
                    source_name: "auth.anonymous_subscribe".into(),
                    reason: format!("pattern {p:?} {e}"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Authenticator {
            keys,
            remote,
            api_keys: config.api_keys.clone(),
            publisher_keys: config.publisher_keys.clone(),
            anonymous_subscribe,
            leeway_secs: config.leeway_secs,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        }))
    }

    /// Resolves credentials (`None`: none were sent) into an identity.
    pub(crate) async fn authenticate(
        &self,
        credentials: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Some(token) = credentials else {
            return Ok(Identity {
                proof: Proof::Anonymous,
                user: None,
                subscribe: Rights::Only(self.anonymous_subscribe.clone()),
                publish: Rights::Only(Vec::new()),
                admin: false,
                meta: Map::new(),
                valid_until: None,
            });
        };
        if let Some(i) = self
            .api_keys
            .iter()
            .position(|k| constant_time_eq(k.as_bytes(), token.as_bytes()))
        {
            return Ok(Identity::unrestricted(Proof::ApiKey(i)));
        }
        if let Some(i) = self
            .publisher_keys
            .iter()
            .position(|k| constant_time_eq(k.as_bytes(), token.as_bytes()))
        {
            return Ok(Identity {
                proof: Proof::PublisherKey(i),
                user: None,
                subscribe: Rights::Only(Vec::new()),
                publish: Rights::All,
                admin: false,
                meta: Map::new(),
                valid_until: None,
            });
        }
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut remote_keys = Arc::new(Vec::new());
        if let Some(remote) = &self.remote {
            // Fetch on first use, when old, and when the token names a key
            // no one knows yet (rotation).
            let known = |keys: &[VerifyKey]| {
                header.kid.as_ref().is_none_or(|kid| {
                    keys.iter()
                        .chain(&self.keys)
                        .any(|k| k.kid.as_ref() == Some(kid))
                })
            };
            let keys = remote.keys();
            if keys.is_empty() || !known(&keys) {
                // No known key can verify it: wait for the fetch (the one
                // in flight, or a new one).
                let reason = if keys.is_empty() {
                    jwks::Reason::Stale
                } else {
                    jwks::Reason::UnknownKid
                };
                remote.refresh(reason).await;
            } else if remote.is_stale() {
                // Known keys verify now; the set is renewed beside it.
                let remote = remote.clone();
                tokio::spawn(async move { remote.refresh(jwks::Reason::Stale).await });
            }
            remote_keys = remote.keys();
        }
        self.verify_jwt(token, &header, &remote_keys)
    }

    fn verify_jwt(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        remote_keys: &[VerifyKey],
    ) -> Result<Identity, AuthError> {
        let family = header.alg.family();
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .chain(remote_keys)
            .filter(|k| k.family == family)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!(
                "no configured key verifies {:?} tokens{}",
                header.alg,
                header
                    .kid
                    .as_deref()
                    .map(|k| format!(" with kid {k:?}"))
                    .unwrap_or_default()
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = self.audience.is_some();
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        let mut last = AuthError::Invalid("signature does not verify".into());
        for key in candidates {
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => {
                            AuthError::Invalid("not valid yet (nbf)".into())
                        }
                        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                        ErrorKind::MissingRequiredClaim(c) => {
                            AuthError::Invalid(format!("missing claim `{c}`"))
                        }
                        ErrorKind::InvalidSignature => {
                            AuthError::Invalid("signature does not verify".into())
                        }
                        _ => AuthError::Invalid(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }

    fn identity(&self, claims: Claims) -> Result<Identity, AuthError> {
        let nested = claims.herald.unwrap_or_default();
        let sub = claims.sub.as_deref();
        let mut subscribe = self.anonymous_subscribe.clone();
        if let Some(list) = one_of("subscribe", claims.subscribe, nested.subscribe)? {
            subscribe.extend(grants("herald.subscribe", list, sub)?);
        }
        let publish = match one_of("publish", claims.publish, nested.publish)? {
            Some(list) => grants("herald.publish", list, sub)?,
            None => Vec::new(),
        };
        Ok(Identity {
            proof: Proof::Token,
            user: claims.sub.map(Into::into),
            subscribe: Rights::Only(subscribe),
            publish: Rights::Only(publish),
            admin: one_of("admin", claims.admin, nested.admin)?.unwrap_or(false),
            meta: one_of("meta", claims.meta, nested.meta)?.unwrap_or_default(),
            valid_until: claims.exp.map(|e| e.saturating_add(self.leeway_secs)),
        })
    }
}

/// Fuzzing entry: the claims of a verified token (JSON) into an identity.
/// Whatever the claims, `{sub}` never widens a grant: every pattern a
/// `users/{sub}/**` grant gives is the subject's own subtree.
#[cfg(feature = "fuzzing")]
pub fn fuzz_claims(json: &[u8]) {
    let Ok(claims) = serde_json::from_slice::<Claims>(json) else {
        return;
    };
    let sub = claims.sub.clone();
    let config = AuthConfig {
        jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
        ..Default::default()
    };
    let auth = Authenticator::from_config(&config)
        .expect("valid config")
        .expect("keys");
    // The same grant, as a template, must only ever cover the subject's
    // own topics.
    let probe = Claims {
        subscribe: Some(vec!["users/{sub}/**".into()]),
        herald: None,
        publish: None,
        ..claims
    };
    if let Ok(identity) = auth.identity(probe) {
        let Rights::Only(patterns) = &identity.subscribe else {
            panic!("a token never gets all rights");
        };
        let sub = sub.expect("a {sub} grant needs a sub");
        for p in patterns {
            assert_eq!(
                p.as_str(),
                format!("users/{sub}/**"),
                "{{sub}} widened to {p:?}"
            );
        }
    }
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        let config = AuthConfig {
            jwt_secret: Some(SECRET.into()),
            api_keys: vec!["server-key-1".into()],
            anonymous_subscribe: vec!["public/**".into()],
            leeway_secs: 0,
            ..Default::default()
        };
        Authenticator::from_config(&config).unwrap().unwrap()
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn exp() -> u64 {
        now_secs() + 3600
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[tokio::test]
    async fn sub_template_and_both_claim_forms() {
        let a = auth();
        let flat = a
            .authenticate(Some(&token(json!({"sub": "alice", "exp": exp(),
                "herald.subscribe": ["users/{sub}/**"], "herald.publish": ["chat/*"]}))))
            .await
            .unwrap();
        assert!(flat.subscribe.allows(&p("users/alice/inbox")));
        assert!(!flat.subscribe.allows(&p("users/bob/inbox")));
        assert!(
            flat.subscribe.allows(&p("public/news")),
            "anonymous rights are included"
        );
        assert!(flat
            .publish
            .allows_topic(&Topic::new("chat/lobby").unwrap()));
        assert!(!flat.admin);
        let nested = a
            .authenticate(Some(&token(json!({"sub": "bob", "exp": exp(),
                "herald": {"subscribe": ["users/{sub}/**"], "admin": true, "meta": {"tenant": "acme"}}})))).await
            .unwrap();
        assert!(nested.subscribe.allows(&p("users/bob/x")));
        assert!(nested.admin);
        assert_eq!(nested.meta["tenant"], "acme");
        let both = token(json!({"exp": exp(), "herald.admin": true, "herald": {"admin": true}}));
        assert!(matches!(
            a.authenticate(Some(&both)).await,
            Err(AuthError::Invalid(_))
        ));
        let no_sub = token(json!({"exp": exp(), "herald.subscribe": ["u/{sub}"]}));
        assert!(matches!(
            a.authenticate(Some(&no_sub)).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn anonymous_and_api_keys() {
        let a = auth();
        let anon = a.authenticate(None).await.unwrap();
        assert_eq!(anon.proof, Proof::Anonymous);
        assert!(anon.subscribe.allows(&p("public/x")));
        assert!(!anon.subscribe.allows(&p("private")));
        assert!(!anon.publish.allows(&p("public/x")));
        let key = a.authenticate(Some("server-key-1")).await.unwrap();
        assert_eq!(key.proof, Proof::ApiKey(0));
        assert!(key.admin && key.publish == Rights::All);
        assert!(matches!(
            a.authenticate(Some("server-key-2")).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn expiry_is_reported_as_such() {
        let a = auth();
        let old = token(json!({"sub": "a", "exp": now_secs() - 10}));
        assert_eq!(
            a.authenticate(Some(&old)).await.unwrap_err(),
            AuthError::Expired
        );
        let no_exp = token(json!({"sub": "a"}));
        assert!(matches!(
            a.authenticate(Some(&no_exp)).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn short_secrets_are_refused_at_start() {
        let config = AuthConfig {
            jwt_secret: Some("short".into()),
            ..Default::default()
        };
        assert!(Authenticator::from_config(&config).is_err());
    }
}
