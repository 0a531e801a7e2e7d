//! Who may call the API: bearer JWTs, checked on every request that touches a user.
//!
//! A token's `sub` is the user it speaks for: that user may ping and go offline as
//! themself and read anyone's presence. A token whose admin claim holds the admin value
//! (back-end services) may act for any user. The API refuses to start without a key
//! unless told `--insecure-no-auth`, so a forgotten flag never exposes an open API.
//!
//! Every token that fails, for whatever reason (missing, malformed, expired, wrongly
//! signed, wrong issuer), gets the same 401 answer: telling them apart would help
//! someone probing for a key. The reason is logged at debug level; the token never is.
//!
//! A token that passed is remembered ([`VerifiedTokens`]), so a client that sends the same
//! token with every request pays for its signature check once, not on every ping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use clap::{Args, ValueEnum};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::user::UserId;

/// The default clock leeway for `exp`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// The default number of verified tokens remembered.
pub const DEFAULT_TOKEN_CACHE: usize = 65_536;

/// The default name of the claim that marks a back-end service.
pub const DEFAULT_ADMIN_CLAIM: &str = "scope";

/// The default value of the admin claim that marks a back-end service.
pub const DEFAULT_ADMIN_VALUE: &str = "presence:admin";

/// The signature algorithm of a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

/// How tokens are checked.
#[derive(Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// File holding the shared HS256 secret, at least 32 bytes (a file, so the secret is
    /// not on the command line). Surrounding whitespace is ignored.
    #[arg(
        long,
        env = "PRESENCE_JWT_SECRET_FILE",
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM file holding the public key that verifies RS256 or ES256 tokens.
    #[arg(long, env = "PRESENCE_JWT_PUBLIC_KEY", requires = "jwt_algorithm")]
    pub jwt_public_key: Option<PathBuf>,

    /// The algorithm of `--jwt-public-key`.
    #[arg(long, env = "PRESENCE_JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<KeyAlgorithm>,

    /// Seconds a token is still accepted after its `exp`, for clock differences.
    #[arg(long, env = "PRESENCE_JWT_LEEWAY", default_value_t = DEFAULT_LEEWAY_SECS)]
    pub jwt_leeway: u64,

    /// The `iss` every token must carry, when set.
    #[arg(long, env = "PRESENCE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` every token must carry, when set.
    #[arg(long, env = "PRESENCE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// The claim that marks a back-end service allowed to act for any user.
    #[arg(long, env = "PRESENCE_ADMIN_CLAIM", default_value = DEFAULT_ADMIN_CLAIM)]
    pub admin_claim: String,

    /// The value of the admin claim (one word of a space-separated string, or one entry
    /// of an array) that grants acting for any user.
    #[arg(long, env = "PRESENCE_ADMIN_VALUE", default_value = DEFAULT_ADMIN_VALUE)]
    pub admin_value: String,

    /// Verified tokens remembered, so a token sent again skips its signature check (its
    /// expiry is still checked every time); about 400 bytes each. 0 turns this off.
    #[arg(long, env = "PRESENCE_TOKEN_CACHE", default_value_t = DEFAULT_TOKEN_CACHE)]
    pub token_cache: usize,

    /// Serve without checking tokens: anyone may act for anyone. For development only.
    #[arg(long, env = "PRESENCE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// Who is calling, once their token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: anyone may do anything.
    Anyone,
    /// A user, by the token's `sub`.
    User(Arc<str>),
    /// A back-end service with the admin claim.
    Admin,
}

impl Caller {
    /// Allows acting as `user` (pinging, going offline) only to that user or an admin.
    pub fn may_act_for(&self, user: &UserId) -> Result<(), ApiError> {
        match self {
            Caller::Anyone | Caller::Admin => Ok(()),
            Caller::User(me) if **me == *user.as_str() => Ok(()),
            Caller::User(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a token may act only for its own user",
            )),
        }
    }
}

/// Checks bearer tokens, or lets everyone in when authentication is off.
pub struct Authenticator {
    verifier: Option<Verifier>,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
    admin_claim: String,
    admin_value: String,
    verified: VerifiedTokens,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl Authenticator {
    /// Builds the checker `args` describe; an error when no key is configured and
    /// `--insecure-no-auth` was not given, or when the key cannot be read.
    pub fn from_args(args: &AuthArgs) -> anyhow::Result<Authenticator> {
        let (key, algorithm) = match (&args.jwt_secret_file, &args.jwt_public_key) {
            (Some(path), _) => (secret_key(path)?, Algorithm::HS256),
            (None, Some(path)) => public_key(path, args.jwt_algorithm)?,
            (None, None) if args.insecure_no_auth => {
                tracing::warn!("authentication is off (--insecure-no-auth): development only");
                return Ok(Authenticator { verifier: None });
            }
            (None, None) => anyhow::bail!(
                "no token key: give --jwt-secret-file or --jwt-public-key, or \
                 --insecure-no-auth for development"
            ),
        };
        tracing::info!(?algorithm, "checking bearer tokens");
        Ok(Authenticator {
            verifier: Some(Verifier {
                key,
                validation: validation(args, algorithm),
                admin_claim: args.admin_claim.clone(),
                admin_value: args.admin_value.clone(),
                verified: VerifiedTokens::new(args.token_cache, args.jwt_leeway),
            }),
        })
    }

    /// The caller behind `headers`, or the one 401 answer every bad token gets.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Caller::Anyone);
        };
        let token = bearer_token(headers).ok_or_else(unauthorized)?;
        let now = unix_now();
        if let Some(caller) = verifier.verified.get(token, now) {
            return Ok(caller);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|e| {
                tracing::debug!(reason = ?e.kind(), "rejected a bearer token");
                unauthorized()
            })?
            .claims;
        let caller = match verifier.is_admin(&claims) {
            true => Caller::Admin,
            false => Caller::User(claims.sub.into()),
        };
        verifier
            .verified
            .insert(token, caller.clone(), claims.exp, now);
        Ok(caller)
    }
}

/// Tokens that passed every check, by their whole text (signature included, so only the
/// very token that was verified can match), with the caller they proved and their expiry.
///
/// Memory is bounded by keeping two generations: new tokens go into the young one, and
/// when it holds half the capacity the old generation is dropped and the young one takes
/// its place. A token found in the old generation moves back into the young one, so tokens
/// in use stay while tokens no longer sent fall out within two generations. Expiry is
/// checked on every lookup with the same leeway as a full check, so a remembered token
/// stops working when the full check would have refused it. Behind a back-end that
/// relays pings with one service token every request hits; with a token per user, it hits
/// when the cache holds the tokens one API instance sees in a ping interval.
struct VerifiedTokens {
    generation_size: usize,
    leeway: u64,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: HashMap<Box<str>, Verified>,
    old: HashMap<Box<str>, Verified>,
}

#[derive(Clone)]
struct Verified {
    caller: Caller,
    exp: u64,
}

impl VerifiedTokens {
    fn new(capacity: usize, leeway: u64) -> VerifiedTokens {
        VerifiedTokens {
            generation_size: capacity / 2,
            leeway,
            generations: Mutex::default(),
        }
    }

    /// The caller `token` proved, if it was verified before and has not expired at `now`.
    fn get(&self, token: &str, now: u64) -> Option<Caller> {
        if self.generation_size == 0 {
            return None;
        }
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let found = match g.young.get(token) {
            Some(v) => v.clone(),
            None => {
                let (token, v) = g.old.remove_entry(token)?;
                self.add(&mut g, token, v.clone());
                v
            }
        };
        (found.exp.saturating_add(self.leeway) >= now).then_some(found.caller)
    }

    /// Remembers that `token` proved `caller` until `exp`.
    fn insert(&self, token: &str, caller: Caller, exp: u64, now: u64) {
        if self.generation_size == 0 || exp.saturating_add(self.leeway) < now {
            return;
        }
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        self.add(&mut g, token.into(), Verified { caller, exp });
    }

    fn add(&self, g: &mut Generations, token: Box<str>, verified: Verified) {
        if g.young.len() >= self.generation_size {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(token, verified);
    }
}

/// Seconds since the Unix epoch on this host's clock, as token expiry is written.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    fn is_admin(&self, claims: &Claims) -> bool {
        match claims.rest.get(&self.admin_claim) {
            Some(Value::String(words)) => words.split_whitespace().any(|w| w == self.admin_value),
            Some(Value::Array(items)) => {
                items.iter().any(|v| v.as_str() == Some(&self.admin_value))
            }
            _ => false,
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Caller, ApiError> {
        app.auth.identify(&parts.headers)
    }
}

fn secret_key(path: &Path) -> anyhow::Result<DecodingKey> {
    let text = std::fs::read(path)
        .with_context(|| format!("reading the token secret {}", path.display()))?;
    let secret = text.trim_ascii();
    anyhow::ensure!(
        secret.len() >= 32,
        "the token secret {} must hold at least 32 bytes",
        path.display()
    );
    DecodingKey::from_secret(secret)
        .with_context(|| format!("loading the token secret {}", path.display()))
}

fn public_key(
    path: &Path,
    algorithm: Option<KeyAlgorithm>,
) -> anyhow::Result<(DecodingKey, Algorithm)> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the token public key {}", path.display()))?;
    let loaded = match algorithm.context("--jwt-public-key needs --jwt-algorithm")? {
        KeyAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem).map(|k| (k, Algorithm::RS256)),
        KeyAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)),
    };
    loaded.with_context(|| format!("loading the token public key {}", path.display()))
}

fn validation(args: &AuthArgs, algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = args.jwt_leeway;
    v.set_required_spec_claims(&["exp", "sub"]);
    if let Some(issuer) = &args.jwt_issuer {
        v.set_issuer(&[issuer]);
    }
    match &args.jwt_audience {
        Some(audience) => v.set_audience(&[audience]),
        None => v.validate_aud = false,
    }
    v
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive, as HTTP says.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The one answer to every missing or bad token.
fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
    )
    .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn reads_only_bearer_tokens() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    fn user(name: &str) -> Caller {
        Caller::User(name.into())
    }

    #[test]
    fn remembers_tokens_until_they_expire() {
        let tokens = VerifiedTokens::new(8, 30);

        tokens.insert("a.b.c", user("ann"), 1_000, 900);
        tokens.insert("stale", user("bob"), 1_000, 1_031);

        assert_eq!(tokens.get("a.b.c", 1_030), Some(user("ann")));
        assert_eq!(tokens.get("a.b.c", 1_031), None);
        assert_eq!(tokens.get("a.b.", 900), None);
        assert_eq!(tokens.get("stale", 1_000), None);
    }

    #[test]
    fn keeps_tokens_in_use_and_stays_bounded() {
        let tokens = VerifiedTokens::new(8, 0);
        tokens.insert("kept", Caller::Admin, 10_000, 0);

        for i in 0..100 {
            tokens.insert(&format!("t{i}"), user("x"), 10_000, 0);
            assert_eq!(tokens.get("kept", 0), Some(Caller::Admin), "after {i}");
        }
        let g = tokens.generations.lock().unwrap();

        assert!(g.young.len() + g.old.len() <= 8);
    }

    #[test]
    fn a_zero_capacity_remembers_nothing() {
        let tokens = VerifiedTokens::new(0, 0);

        tokens.insert("a", Caller::Admin, 10_000, 0);

        assert_eq!(tokens.get("a", 0), None);
    }

    #[test]
    fn refuses_to_start_without_a_key() {
        let args = AuthArgs::default();

        let refused = Authenticator::from_args(&args);
        let open = Authenticator::from_args(&AuthArgs {
            insecure_no_auth: true,
            ..args
        });

        assert!(refused.is_err());
        assert_eq!(
            open.unwrap().identify(&HeaderMap::new()).unwrap(),
            Caller::Anyone
        );
    }
}
