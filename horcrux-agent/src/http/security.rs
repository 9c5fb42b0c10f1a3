//! Who may talk to the agent: authentication (bearer token, basic users, or the
//! session cookie the dashboard gets for a token given once), `Host` checks against
//! DNS rebinding, `Origin` checks on `/ws` against cross-site WebSocket hijacking, and
//! the security headers every response carries.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::ServerSecurity;

/// The cookie that carries a bearer token given once to the dashboard (`/?token=`).
const SESSION_COOKIE: &str = "horcrux_token";
/// Basic credentials verified recently (bcrypt costs tens of ms): SHA-256 of
/// `user:password`, so no password is kept.
const VERIFIED_CACHE: usize = 64;

/// Content-Security-Policy of every response: no inline script or style, nothing
/// from elsewhere, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The secrets loaded at start-up (and on SIGHUP), and what was verified.
pub struct Credentials {
    token: Option<String>,
    /// user → bcrypt hash.
    users: Vec<(String, String)>,
    verified: Mutex<Vec<[u8; 32]>>,
    bcrypt_slots: tokio::sync::Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is readable by every user (mode {mode:o}): chmod o-r it")]
    WorldReadable { path: std::path::PathBuf, mode: u32 },
    #[error("{0} is empty")]
    Empty(std::path::PathBuf),
}

/// Refuses a secret file that every user can read.
pub fn check_private(path: &std::path::Path) -> Result<(), SecretError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    if metadata.mode() & 0o004 != 0 {
        return Err(SecretError::WorldReadable {
            path: path.to_owned(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}

impl Credentials {
    pub fn load(server: &ServerSecurity) -> Result<Self, SecretError> {
        let token = match &server.bearer_token_file {
            None => None,
            Some(path) => {
                check_private(path)?;
                let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
                    path: path.clone(),
                    source,
                })?;
                let token = text.trim().to_owned();
                if token.is_empty() {
                    return Err(SecretError::Empty(path.clone()));
                }
                Some(token)
            }
        };
        Ok(Self {
            token,
            users: server
                .basic_auth_users
                .iter()
                .map(|(user, hash)| (user.clone(), hash.clone()))
                .collect(),
            verified: Mutex::new(Vec::new()),
            bcrypt_slots: tokio::sync::Semaphore::new(BCRYPT_AT_ONCE),
        })
    }

    fn required(&self) -> bool {
        self.token.is_some() || !self.users.is_empty()
    }

    fn token_matches(&self, offered: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|token| bool::from(token.as_bytes().ct_eq(offered.as_bytes())))
    }

    /// Basic credentials: known (cached) or refused at once, or to be checked with
    /// bcrypt.
    fn basic(&self, encoded: &str) -> Admission {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return Admission::No;
        };
        let Some((user, password)) = std::str::from_utf8(&decoded)
            .ok()
            .and_then(|text| text.split_once(':'))
        else {
            return Admission::No;
        };
        let digest: [u8; 32] = sha2::Sha256::digest(&decoded).into();
        let verified = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified
            .iter()
            .any(|known| bool::from(known.ct_eq(&digest)))
        {
            return Admission::Yes;
        }
        let known = self.users.iter().find(|(name, _)| name == user);
        Admission::Verify {
            digest,
            password: password.to_owned(),
            // Unknown users cost the same work as known ones, and fail.
            hash: known
                .map_or(DUMMY_HASH, |(_, hash)| hash.as_str())
                .to_owned(),
            known: known.is_some(),
        }
    }

    /// What the request's credentials say, without the slow check.
    fn admission(&self, headers: &HeaderMap) -> Admission {
        if let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        {
            if let Some(token) = value.strip_prefix("Bearer ") {
                return Admission::from(self.token_matches(token.trim()));
            }
            if let Some(encoded) = value.strip_prefix("Basic ") {
                return self.basic(encoded);
            }
        }
        Admission::from(
            cookie(headers, SESSION_COOKIE).is_some_and(|token| self.token_matches(token)),
        )
    }

    /// Whether the request carries valid credentials. bcrypt runs on a blocking
    /// thread, [`BCRYPT_AT_ONCE`] at a time, so a flood of wrong passwords queues
    /// instead of stalling the server; verified credentials are then cached.
    async fn admits(&self, headers: &HeaderMap) -> bool {
        match self.admission(headers) {
            Admission::Yes => true,
            Admission::No => false,
            Admission::Verify {
                digest,
                password,
                hash,
                known,
            } => {
                let Ok(_slot) = self.bcrypt_slots.acquire().await else {
                    return false;
                };
                let matches = tokio::task::spawn_blocking(move || {
                    bcrypt::verify(password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                if !(known && matches) {
                    return false;
                }
                let mut verified = self
                    .verified
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if verified.len() >= VERIFIED_CACHE {
                    verified.remove(0);
                }
                verified.push(digest);
                true
            }
        }
    }
}

/// What a request's credentials say before bcrypt.
enum Admission {
    Yes,
    No,
    Verify {
        digest: [u8; 32],
        password: String,
        hash: String,
        known: bool,
    },
}

impl From<bool> for Admission {
    fn from(admitted: bool) -> Self {
        if admitted { Self::Yes } else { Self::No }
    }
}

/// bcrypt checks running at once (each takes tens of milliseconds of CPU).
const BCRYPT_AT_ONCE: usize = 2;

use sha2::Digest;

/// A valid bcrypt hash (of a random string) for timing parity.
const DUMMY_HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Names this agent answers to in `Host`.
pub fn allowed_hosts(state_hosts: &[String], listen: std::net::SocketAddr) -> HashSet<String> {
    let mut hosts: HashSet<String> = ["localhost", "127.0.0.1", "[::1]", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    hosts.extend(state_hosts.iter().cloned());
    let ip = listen.ip();
    if ip.is_unspecified() {
        // Any address of this machine.
        if let Ok(addresses) = nix::ifaddrs::getifaddrs() {
            for address in addresses {
                if let Some(ip) = address.address.and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| std::net::IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
                }) {
                    hosts.insert(host_of_ip(ip));
                }
            }
        }
    } else {
        hosts.insert(host_of_ip(ip));
    }
    if let Some(name) = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
    {
        hosts.insert(name.to_ascii_lowercase());
    }
    hosts
}

fn host_of_ip(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`).
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host.clone(), |(inside, _)| format!("{inside}]"));
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host.clone(), |(name, _)| name.to_owned())
}

/// Whether the connection is TLS (set by the server loop on every request).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTls(pub bool);

/// Every request: `Host` must name this agent (421 otherwise), credentials must be
/// valid when configured (401), `/ws` needs a same-site `Origin` (403), and every
/// response gets the security headers.
pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let mut response = check(&state, request, next).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn check(state: &AppState, request: Request, next: Next) -> Response {
    // `Host` as sent (`name:port`), and its name alone.
    let raw_host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_ascii_lowercase);
    let host = raw_host.as_deref().map(host_name);
    match &host {
        Some(name) if state.allowed_hosts.contains(name) => {}
        // HTTP/1.0 without Host: nothing to rebind.
        None => {}
        Some(name) => {
            return ApiError(
                StatusCode::MISDIRECTED_REQUEST,
                format!("this agent does not answer to host {name:?} (see server.allowed_hosts)"),
            )
            .into_response();
        }
    }
    let credentials = state
        .credentials
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if credentials.required() && !credentials.admits(request.headers()).await {
        // A token given once to the dashboard (`/?token=…`) becomes a session cookie.
        if request.uri().path() == "/"
            && let Some(token) = request.uri().query().and_then(|query| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("token="))
            })
            && credentials.token_matches(token)
        {
            return session(token, request.extensions().get::<ConnectionTls>());
        }
        let challenge = if credentials.users.is_empty() {
            "Bearer realm=\"horcrux\""
        } else {
            "Basic realm=\"horcrux\", charset=\"UTF-8\""
        };
        let mut response =
            ApiError(StatusCode::UNAUTHORIZED, "authentication required".into()).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        return response;
    }
    if request.uri().path() == "/ws"
        && let Some(origin) = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|value| value.to_str().ok())
    {
        let tls = request
            .extensions()
            .get::<ConnectionTls>()
            .is_some_and(|tls| tls.0);
        let own = raw_host.map(|raw| format!("{}://{raw}", if tls { "https" } else { "http" }));
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let allowed = own.as_deref() == Some(origin.as_str())
            || state.config.server.allowed_origins.contains(&origin);
        if !allowed {
            return ApiError(
                StatusCode::FORBIDDEN,
                format!("WebSocket from origin {origin:?} refused (see server.allowed_origins)"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Sets the session cookie for a valid token and sends the dashboard to `/`.
fn session(token: &str, tls: Option<&ConnectionTls>) -> Response {
    let secure = if tls.is_some_and(|tls| tls.0) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_without_ports() {
        assert_eq!(host_name("LocalHost:8006"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8006"), "[::1]");
        assert_eq!(host_name("evil.example:80"), "evil.example");
    }

    #[tokio::test]
    async fn credentials_check_tokens_users_and_cookies() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let credentials = Credentials {
            token: Some("tok".into()),
            users: vec![("prometheus".into(), hash)],
            verified: Mutex::new(Vec::new()),
            bcrypt_slots: tokio::sync::Semaphore::new(BCRYPT_AT_ONCE),
        };
        let headers = |name, value: &str| {
            let mut map = HeaderMap::new();
            map.insert(name, HeaderValue::from_str(value).expect("header"));
            map
        };
        let basic = |text: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        };
        let admits = async |headers: HeaderMap| credentials.admits(&headers).await;
        assert!(admits(headers(header::AUTHORIZATION, "Bearer tok")).await);
        assert!(!admits(headers(header::AUTHORIZATION, "Bearer nope")).await);
        assert!(admits(headers(header::AUTHORIZATION, &basic("prometheus:s3cret"))).await);
        // Cached the second time, still exact.
        assert!(admits(headers(header::AUTHORIZATION, &basic("prometheus:s3cret"))).await);
        assert!(!admits(headers(header::AUTHORIZATION, &basic("prometheus:wrong"))).await);
        assert!(!admits(headers(header::AUTHORIZATION, &basic("nobody:s3cret"))).await);
        assert!(admits(headers(header::COOKIE, "a=b; horcrux_token=tok")).await);
        assert!(!admits(HeaderMap::new()).await);
        assert_eq!(crate::config::bcrypt_cost(DUMMY_HASH), Some(10));
    }
}
