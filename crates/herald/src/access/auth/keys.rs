//! Verification keys from configuration: a shared secret (HS*), a PEM
//! public key (RS*, ES*, EdDSA) and a JWKS file. Each key carries its
//! algorithm family, and a token is only ever checked against keys of its
//! header's family: an HS256 token is never verified with an RSA public key
//! used as an HMAC secret (algorithm confusion).

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{AlgorithmFamily, DecodingKey};

pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub family: AlgorithmFamily,
}

/// A key that could not be loaded: the hub does not start.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub(crate) struct KeyError {
    pub source_name: String,
    pub reason: String,
}

fn key_error(source_name: impl Into<String>, reason: impl ToString) -> KeyError {
    KeyError {
        source_name: source_name.into(),
        reason: reason.to_string(),
    }
}

pub(crate) fn from_secret(secret: &str) -> Result<VerifyKey, KeyError> {
    if secret.len() < 32 {
        return Err(key_error(
            "auth.jwt_secret",
            "must be at least 32 bytes (HMAC secrets shorter than the hash are guessable)",
        ));
    }
    Ok(VerifyKey {
        kid: None,
        key: DecodingKey::from_secret(secret.as_bytes()),
        family: AlgorithmFamily::Hmac,
    })
}

type PemLoader = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

pub(crate) fn from_pem_file(path: &Path) -> Result<VerifyKey, KeyError> {
    let name = format!("auth.jwt_public_key_file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| key_error(&name, e))?;
    let attempts: [(PemLoader, AlgorithmFamily); 3] = [
        (DecodingKey::from_rsa_pem, AlgorithmFamily::Rsa),
        (DecodingKey::from_ec_pem, AlgorithmFamily::Ec),
        (DecodingKey::from_ed_pem, AlgorithmFamily::Ed),
    ];
    attempts
        .iter()
        .find_map(|(load, family)| {
            load(&pem).ok().map(|key| VerifyKey {
                kid: None,
                key,
                family: *family,
            })
        })
        .ok_or_else(|| {
            key_error(
                name,
                "not an RSA, EC (P-256/P-384) or Ed25519 public key in PEM",
            )
        })
}

pub(crate) fn from_jwks_file(path: &Path) -> Result<Vec<VerifyKey>, KeyError> {
    let name = format!("auth.jwks {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| key_error(&name, e))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| key_error(&name, e))?;
    if set.keys.is_empty() {
        return Err(key_error(name, "holds no keys"));
    }
    set.keys
        .iter()
        .map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| key_error(&name, e))?;
            Ok(VerifyKey {
                kid: jwk.common.key_id.clone(),
                family: key.family(),
                key,
            })
        })
        .collect()
}
