//! What `presence-api` needs to serve pages in a browser and to stop cleanly: CORS for the
//! origins an operator names, and a shutdown that drains requests for a bounded time.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method};
use clap::Args;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// Browser and shutdown options of `presence-api`.
#[derive(Args, Clone, Debug)]
pub struct WebArgs {
    /// Origins whose pages may call the API from a browser (`https://app.example.com`);
    /// repeat the flag or separate with commas. None by default: browsers then refuse to
    /// let pages of other origins read the answers.
    #[arg(
        long = "cors-origin",
        env = "PRESENCE_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Seconds in-flight requests get to finish after SIGINT or SIGTERM before the
    /// process exits anyway.
    #[arg(long, env = "PRESENCE_SHUTDOWN_GRACE")]
    #[arg(default_value_t = crate::api::SHUTDOWN_GRACE.as_secs())]
    pub shutdown_grace: u64,
}

impl Default for WebArgs {
    fn default() -> WebArgs {
        WebArgs {
            cors_origins: Vec::new(),
            shutdown_grace: crate::api::SHUTDOWN_GRACE.as_secs(),
        }
    }
}

impl WebArgs {
    /// `app` with CORS for the configured origins, or unchanged when there are none.
    pub fn apply_cors(&self, app: Router) -> anyhow::Result<Router> {
        if self.cors_origins.is_empty() {
            return Ok(app);
        }
        let origins = self
            .cors_origins
            .iter()
            .map(|o| parse_origin(o))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([CONTENT_TYPE, AUTHORIZATION])
            .max_age(PREFLIGHT_MAX_AGE);
        Ok(app.layer(cors))
    }

    /// The shutdown grace as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }
}

/// An origin is a scheme, a host and maybe a port: no path, no trailing slash, since a
/// browser's `Origin` header never has one and would never match.
fn parse_origin(origin: &str) -> anyhow::Result<HeaderValue> {
    let origin = origin.trim();
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    anyhow::ensure!(
        rest.is_some_and(|r| !r.is_empty() && !r.contains('/')),
        "--cors-origin {origin:?} must look like https://host[:port], without a path"
    );
    HeaderValue::from_str(origin).with_context(|| format!("--cors-origin {origin:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin with a path would never match a browser's `Origin` header: refused.
    #[test]
    fn origins_have_no_path() {
        assert!(parse_origin("https://app.example.com").is_ok());
        assert!(parse_origin("http://127.0.0.1:5173").is_ok());
        assert!(parse_origin("https://app.example.com/").is_err());
        assert!(parse_origin("app.example.com").is_err());
    }
}
