//! Who may use the web UI: the one-time login token the daemon prints, the sessions it turns
//! into (an `HttpOnly`, `SameSite=Strict` cookie), the CSRF token every state-changing request
//! carries, and the checks of `Host` (a loopback name, against DNS rebinding), `Origin` and
//! `Sec-Fetch-Site`. Pure checks over headers; the routes apply them ([`super::routes`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};

/// The session cookie's name.
pub const COOKIE: &str = "waymark_session";

/// How long a session lasts (an operator's shift); then the daemon's login URL is needed again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// One browser's session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The token the page sends back in `X-CSRF-Token` with every state-changing request.
    pub csrf: String,
    /// A number naming the session in histories (never the cookie itself).
    pub number: u64,
    /// Where the browser logged in from.
    pub from: SocketAddr,
    created: Instant,
}

/// The web UI's access state: the address it serves, the login token not yet used, the
/// sessions.
pub struct Access {
    addr: SocketAddr,
    allow_remote: bool,
    login_token: Mutex<Option<String>>,
    sessions: Mutex<HashMap<String, Session>>,
    next_number: Mutex<u64>,
}

/// Why a request is refused: 401 (who are you?) or 403 (not this way), and the text.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No valid session (or a wrong or used login token).
    Unauthorized(String),
    /// A session, but the request may not do this (no/wrong CSRF token, foreign origin, foreign
    /// `Host`).
    Forbidden(String),
}

/// 32 random bytes from the kernel, as 64 hex digits.
pub fn random_hex() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `Host` header's host part is a loopback name (`localhost`, `127.x.y.z`, `[::1]`).
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

impl Access {
    /// The access state of a web UI serving on `addr`, with a fresh login token.
    pub fn new(addr: SocketAddr, allow_remote: bool) -> std::io::Result<Self> {
        Ok(Access {
            addr,
            allow_remote,
            login_token: Mutex::new(Some(random_hex()?)),
            sessions: Mutex::new(HashMap::new()),
            next_number: Mutex::new(1),
        })
    }

    /// Where the web UI serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to open once (`http://ADDR/?token=...`); it logs one browser in, then is used
    /// up. `None` once used.
    pub fn login_url(&self) -> Option<String> {
        let token = self.login_token.lock().expect("login token lock");
        token
            .as_ref()
            .map(|t| format!("http://{}/?token={t}", self.addr))
    }

    /// A new login URL (the previous one, used or not, stops working; sessions stay): for a
    /// second browser, asked for over the owner-only unix socket (`POST /v1/web/login-url`).
    pub fn renew_login_url(&self) -> std::io::Result<String> {
        let token = random_hex()?;
        let url = format!("http://{}/?token={token}", self.addr);
        *self.login_token.lock().expect("login token lock") = Some(token);
        Ok(url)
    }

    /// Checks the `Host` header (any request): a loopback name unless remote access was
    /// allowed, so that a page of another site whose name resolves to 127.0.0.1 (DNS
    /// rebinding) reaches nothing.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.allow_remote {
            return Ok(());
        }
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if is_loopback_host(host) {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "Host {host:?} is not a loopback name: this web UI answers only as 127.0.0.1, \
                 localhost or [::1] (start the daemon with --http-allow-remote to serve other \
                 names, behind TLS termination)"
            )))
        }
    }

    /// Exchanges the login token for a session: its cookie id and the session. The token works
    /// once.
    pub fn login(&self, token: &str, from: SocketAddr) -> Result<(String, Session), Refusal> {
        let mut slot = self.login_token.lock().expect("login token lock");
        match slot.as_deref() {
            Some(want) if constant_time_eq(want.as_bytes(), token.as_bytes()) => {
                *slot = None;
            }
            Some(_) => {
                return Err(Refusal::Unauthorized(
                    "wrong login token: open the URL the daemon printed when it started".into(),
                ))
            }
            None => {
                return Err(Refusal::Unauthorized(
                    "this login URL was used already (it works once): use the browser that \
                     opened it, or restart the daemon for a new one"
                        .into(),
                ))
            }
        }
        drop(slot);
        let id = random_hex().map_err(|e| {
            Refusal::Forbidden(format!("cannot draw a session id from /dev/urandom: {e}"))
        })?;
        let csrf = random_hex().map_err(|e| {
            Refusal::Forbidden(format!("cannot draw a CSRF token from /dev/urandom: {e}"))
        })?;
        let number = {
            let mut n = self.next_number.lock().expect("session number lock");
            let this = *n;
            *n += 1;
            this
        };
        let session = Session {
            csrf,
            number,
            from,
            created: Instant::now(),
        };
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The `Set-Cookie` value of a new session.
    pub fn cookie(id: &str) -> String {
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")
    }

    /// The session of a request, checked: a live session cookie; for any method other than
    /// GET and HEAD also the session's CSRF token in `X-CSRF-Token`, no `Origin` but this
    /// site's, and no `Sec-Fetch-Site` but `same-origin`.
    pub fn authorize(&self, method: &Method, headers: &HeaderMap) -> Result<Session, Refusal> {
        let session = cookie_value(headers, COOKIE)
            .and_then(|id| {
                let mut sessions = self.sessions.lock().expect("sessions lock");
                sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
                sessions.get(id).cloned()
            })
            .ok_or_else(|| {
                Refusal::Unauthorized(
                    "no session: open the login URL the daemon printed when it started \
                     (http://ADDR/?token=...)"
                        .into(),
                )
            })?;
        if *method == Method::GET || *method == Method::HEAD {
            return Ok(session);
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(site) = header("sec-fetch-site") {
            if site != "same-origin" {
                return Err(Refusal::Forbidden(format!(
                    "a {site} request may not change anything here (Sec-Fetch-Site)"
                )));
            }
        }
        if let Some(origin) = header("origin") {
            let host = header("host").unwrap_or("");
            let ours = [format!("http://{host}"), format!("https://{host}")];
            if !ours.iter().any(|o| o == origin) {
                return Err(Refusal::Forbidden(format!(
                    "origin {origin:?} is not this web UI (http://{host}): cross-site requests \
                     are refused"
                )));
            }
        }
        match header("x-csrf-token") {
            Some(t) if constant_time_eq(t.as_bytes(), session.csrf.as_bytes()) => Ok(session),
            Some(_) => Err(Refusal::Forbidden(
                "wrong CSRF token (X-CSRF-Token); reload the page".into(),
            )),
            None => Err(Refusal::Forbidden(
                "missing CSRF token (X-CSRF-Token): state-changing requests come from the \
                 web UI's own pages"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_loopback_host, Access, Refusal};
    use axum::http::{HeaderMap, HeaderValue, Method};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:1",
            "[::1]:9",
            "localhost",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for no in ["evil.example:8080", "10.0.0.1:80", "", "[2001:db8::1]:80"] {
            assert!(!is_loopback_host(no), "{no}");
        }
    }

    #[test]
    fn the_login_token_works_once_and_post_needs_csrf_and_our_origin() {
        let a = Access::new("127.0.0.1:1".parse().unwrap(), false).unwrap();
        let url = a.login_url().unwrap();
        let token = url.split("token=").nth(1).unwrap().to_owned();
        let from = "127.0.0.1:2".parse().unwrap();
        assert!(matches!(
            a.login("nope", from),
            Err(Refusal::Unauthorized(_))
        ));
        let (id, s) = a.login(&token, from).unwrap();
        assert!(matches!(
            a.login(&token, from),
            Err(Refusal::Unauthorized(_))
        ));
        assert!(a.login_url().is_none());
        let cookie = format!("other=1; waymark_session={id}");
        let get = headers(&[("cookie", &cookie), ("host", "127.0.0.1:1")]);
        assert_eq!(a.authorize(&Method::GET, &get).unwrap().number, s.number);
        assert!(matches!(
            a.authorize(&Method::GET, &headers(&[("host", "127.0.0.1:1")])),
            Err(Refusal::Unauthorized(_))
        ));
        assert!(matches!(
            a.authorize(&Method::POST, &get),
            Err(Refusal::Forbidden(_))
        ));
        let good = [
            ("cookie", cookie.as_str()),
            ("host", "127.0.0.1:1"),
            ("x-csrf-token", s.csrf.as_str()),
            ("origin", "http://127.0.0.1:1"),
        ];
        assert!(a.authorize(&Method::POST, &headers(&good)).is_ok());
        let mut foreign = good;
        foreign[3] = ("origin", "http://evil.example");
        assert!(matches!(
            a.authorize(&Method::POST, &headers(&foreign)),
            Err(Refusal::Forbidden(_))
        ));
        let mut wrong = good;
        wrong[2] = ("x-csrf-token", "0000");
        assert!(matches!(
            a.authorize(&Method::POST, &headers(&wrong)),
            Err(Refusal::Forbidden(_))
        ));
        let mut same_site = good.to_vec();
        same_site.push(("sec-fetch-site", "same-site"));
        assert!(matches!(
            a.authorize(&Method::POST, &headers(&same_site)),
            Err(Refusal::Forbidden(_))
        ));
    }
}
