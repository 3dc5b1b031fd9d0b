//! Dashboard sessions: an API key entered once on the login page becomes
//! a random session token, held by the browser in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` when the page came over TLS), so
//! the key itself is never stored in the browser or put in a URL. The
//! monitor keeps only the tokens' digests — in memory, for the check
//! every request makes, and in its store, so a restart or an upgrade
//! logs nobody out — each until it expires or its owner logs out.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The cookie's name.
pub const COOKIE: &str = "citadel_session";

/// Sessions kept at most; past this the oldest are dropped first.
const MOST: usize = 10_000;

/// What is kept of a token.
pub type TokenDigest = [u8; 32];

/// The digest of `token`.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The live sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Token digest → when it expires, ms since the epoch.
    expiries: Mutex<HashMap<TokenDigest, u64>>,
}

impl Sessions {
    /// The sessions `kept` (digest, expiry) by the store.
    pub fn restore(kept: Vec<(TokenDigest, u64)>) -> Sessions {
        Sessions {
            expiries: Mutex::new(kept.into_iter().collect()),
        }
    }

    /// A new session lasting until `expires_ms`; returns its token.
    pub fn open(&self, now_ms: u64, expires_ms: u64) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut expiries = self.expiries.lock().expect("sessions poisoned");
        expiries.retain(|_, expires| *expires > now_ms);
        if expiries.len() >= MOST {
            let oldest = expiries
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                expiries.remove(&oldest);
            }
        }
        expiries.insert(digest(&token), expires_ms);
        token
    }

    /// Whether `token` is a live session.
    pub fn valid(&self, token: &str, now_ms: u64) -> bool {
        let expiries = self.expiries.lock().expect("sessions poisoned");
        expiries.get(&digest(token)).is_some_and(|expires| *expires > now_ms)
    }

    /// End the session of `token`.
    pub fn close(&self, token: &str) {
        self.expiries.lock().expect("sessions poisoned").remove(&digest(token));
    }
}

/// The session token a request's cookies carry.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Whether the browser reached us over TLS (directly or, as a proxy in
/// front says, through one): the cookie is then `Secure`.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that holds `token` for `max_age_s`.
pub fn set_cookie(token: &str, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_expire_and_close() {
        let sessions = Sessions::default();
        let token = sessions.open(1_000, 2_000);
        assert_eq!(token.len(), 64);
        assert!(sessions.valid(&token, 1_500));
        assert!(!sessions.valid(&token, 2_000), "expired");
        assert!(!sessions.valid("0".repeat(64).as_str(), 1_500));
        let other = sessions.open(1_000, 9_000);
        assert_ne!(token, other);
        sessions.close(&other);
        assert!(!sessions.valid(&other, 1_500));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_is_strict() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; citadel_session=abc; b=2".parse().unwrap());
        assert_eq!(token(&headers), Some("abc"));
        headers.insert("cookie", "citadel_session=".parse().unwrap());
        assert_eq!(token(&headers), None);
        let cookie = set_cookie("abc", 60, true);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/", "Max-Age=60"] {
            assert!(cookie.contains(part), "{cookie} lacks {part}");
        }
        assert!(!set_cookie("abc", 60, false).contains("Secure"));
    }
}
