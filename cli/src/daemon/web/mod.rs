//! The web UI of `waymark daemon --http ADDR`: the list of runs, each run's timeline followed
//! live, its input, outcome and sequence picture, and the operator's buttons (approve, hold,
//! resume, cancel, each with a reason, journaled with the web session's operator). Plain HTML,
//! CSS and JavaScript from `cli/assets/`, compiled into the binary: no build step, no CDN.
//!
//! [`auth`]: the one-time login URL, the session cookie and the CSRF checks; `data`: what the
//! pages show, from the log; `routes`: the pages, their JSON API and the live stream
//! (server-sent events over [`crate::follow::follow_lines`]).

pub mod auth;
mod data;
mod routes;

pub use auth::Access;
pub(super) use routes::app;

/// Whether `--http ADDR` may be served: a loopback address, or any with `--http-allow-remote`.
pub fn check_bind(addr: std::net::SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "--http {addr} is not a loopback address: the web UI is plain HTTP with a session \
             cookie, so it binds loopback only; reach it through an SSH tunnel \
             (`ssh -L 8080:127.0.0.1:{port} HOST`, then http://127.0.0.1:8080), or pass \
             --http-allow-remote and put it behind TLS termination",
            port = addr.port()
        ))
    }
}
