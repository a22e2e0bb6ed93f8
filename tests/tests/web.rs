//! The web UI (`waymark daemon --http`), in a real browser (headless chromium over `WebDriver`,
//! `fixtures/browser.rs`) and over raw HTTP: the one-time login URL, the run list, a run page
//! following its run live, approving from the page, and the refusals (no session: 401 for every
//! page and API call; a cross-site POST: 403). The daemon runs in-process with a test engine
//! whose steps wait for the test, so each change the page shows is one the test caused.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::{Client, Locator};
use tokio::sync::Semaphore;
use waymark_engine::event::Event;
use waymark_engine::{activity, Engine, Payload, RunId};

use crate::fixtures::browser::Browser;
use crate::fixtures::daemon::{DaemonSettings, InProcessDaemon};
use crate::util::{fast_retry, temp_dir, wf};

/// Safety net of every wait below (never a timing assertion).
const LIMIT: Duration = Duration::from_secs(60);

/// What the test holds of the daemon's engine: the gates its steps wait on, and a way to
/// start runs on the daemon's own runtime.
#[derive(Clone)]
struct TestEstate {
    drain: Arc<Semaphore>,
    restart: Arc<Semaphore>,
    engine: Arc<Mutex<Option<(Engine, tokio::runtime::Handle)>>>,
}

/// A runbook in miniature: a check that fails once (a retry with its error), two steps that
/// wait for the test (the first reporting progress, with a compensation), an approval, and a
/// last step.
fn web_engine(estate: &TestEstate, log: waymark_engine::log::SharedLog) -> Engine {
    let (drain, restart) = (estate.drain.clone(), estate.restart.clone());
    let tries = Arc::new(Mutex::new(0u32));
    let engine = Engine::builder(log)
        .workflow_dyn(wf("web-runbook", 1, |ctx| async move {
            ctx.step::<_, ()>("web.check", &())
                .label("check the estate")
                .retry(fast_retry())
                .await?;
            ctx.step::<_, ()>("web.drain", &())
                .label("drain node n1")
                .compensate_with("web.undo", &(), "undrain node n1")
                .await?;
            ctx.step::<_, ()>("web.restart", &())
                .label("restart node n1")
                .await?;
            let note: String = ctx.wait_for_signal("approve").await?;
            ctx.step::<_, ()>("web.finish", &())
                .label("move traffic back")
                .await?;
            Ok(Payload::encode(&format!("approved: {note}")).unwrap())
        }))
        .activity_fn("web.check", move |_, _| {
            let n = {
                let mut t = tries.lock().unwrap();
                *t += 1;
                *t
            };
            async move {
                if n == 1 {
                    Err(activity::Error::retryable("503 from yb-master (injected)"))
                } else {
                    Ok(Payload::null())
                }
            }
        })
        .activity_fn("web.drain", move |ctx, _| {
            let gate = drain.clone();
            async move {
                ctx.heartbeat(Some("load balancer 40% done".into()));
                gate.acquire().await.expect("gate").forget();
                Ok(Payload::null())
            }
        })
        .activity_fn("web.restart", move |_, _| {
            let gate = restart.clone();
            async move {
                gate.acquire().await.expect("gate").forget();
                Ok(Payload::null())
            }
        })
        .activity_fn("web.undo", |_, _| async { Ok(Payload::null()) })
        .activity_fn("web.finish", |_, _| async { Ok(Payload::null()) })
        .build();
    *estate.engine.lock().unwrap() = Some((engine.clone(), tokio::runtime::Handle::current()));
    engine
}

struct WebDaemon {
    daemon: InProcessDaemon,
    estate: TestEstate,
    _dir: tempfile::TempDir,
}

impl WebDaemon {
    fn start() -> WebDaemon {
        let dir = temp_dir();
        let data = dir.path().join("data");
        let estate = TestEstate {
            drain: Arc::new(Semaphore::new(0)),
            restart: Arc::new(Semaphore::new(0)),
            engine: Arc::new(Mutex::new(None)),
        };
        let e = estate.clone();
        let daemon = InProcessDaemon::start_with(
            &data,
            DaemonSettings {
                http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                engine: Some(Box::new(move |log| web_engine(&e, log))),
                ..DaemonSettings::default()
            },
        );
        WebDaemon {
            daemon,
            estate,
            _dir: dir,
        }
    }

    fn login_url(&self) -> String {
        self.daemon
            .web
            .clone()
            .expect("the daemon prints a login URL when it serves --http")
    }

    fn addr(&self) -> SocketAddr {
        let url = self.login_url();
        let host = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap();
        host.parse().unwrap()
    }

    /// Starts a run of the test runbook (on the daemon's runtime), as operator `alice`.
    fn start_run(&self) -> RunId {
        let (engine, handle) = self.estate.engine.lock().unwrap().clone().expect("engine");
        let input = serde_json::json!({
            "cluster": { "name": "web-cluster" },
            "ssh": { "user": "yugabyte", "key_file": "/keys/id", "password": "hunter2-never-shown" },
        });
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let run = engine
                .start_named("web-runbook", Payload::encode(&input).unwrap(), "alice")
                .await;
            let _ = tx.send(run.map_err(|e| e.to_string()));
        });
        rx.recv_timeout(LIMIT).unwrap().expect("the run starts")
    }

    fn history(&self, run: RunId) -> Vec<Event> {
        // The daemon holds the data directory; read through its engine's log.
        let (engine, _) = self.estate.engine.lock().unwrap().clone().expect("engine");
        engine
            .log()
            .read(run)
            .unwrap()
            .into_iter()
            .map(|r| r.event)
            .collect()
    }
}

/// One HTTP/1.1 request over TCP; returns the status, the headers (lower-case names) and the
/// body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    // A stream (follow) answers with headers first: read what comes until the server closes or
    // the head and some body arrived.
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&resp);
        if text.contains("text/event-stream") && text.contains("\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

/// Logs in over raw HTTP with the login URL: the session cookie (`name=value`).
fn login(addr: SocketAddr, url: &str) -> String {
    let path = url.split_once(&addr.to_string()).unwrap().1;
    let (code, headers, body) = http(addr, "GET", path, &[], "");
    assert_eq!(code, 303, "the login URL redirects: {body}");
    assert_eq!(headers.get("location").map(String::as_str), Some("/"));
    let cookie = headers.get("set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token of a session, as its pages carry it.
fn csrf_of(addr: SocketAddr, cookie: &str) -> String {
    let (code, _, page) = http(addr, "GET", "/", &[("Cookie", cookie)], "");
    assert_eq!(code, 200, "{page}");
    let at = page
        .find("name=\"csrf-token\" content=\"")
        .expect("csrf meta")
        + 27;
    page[at..at + 64].to_owned()
}

/// Polls an async probe every 100 ms until it returns something (failing after [`LIMIT`]).
async fn until<T, F, Fut>(c: &Client, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    until_within(c, LIMIT, what, probe).await
}

/// [`until`] with its own safety net (a whole maintenance run takes minutes). Giving up, it
/// says what the browser shows (its address and the page's markup) and saves a screenshot.
async fn until_within<T, F, Fut>(c: &Client, limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() >= limit {
            let url = c
                .current_url()
                .await
                .map_or_else(|e| format!("(no address: {e})"), |u| u.to_string());
            // The page's markup: the states' reasons are in `title` attributes.
            let text: String = c
                .execute("return document.body.outerHTML", vec![])
                .await
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "(no page)".into())
                .chars()
                .take(4000)
                .collect();
            let shot = artifact(&format!(
                "gave-up-{}.png",
                what.replace([' ', '/', '\'', '"'], "-")
            ));
            let saved = match c.screenshot().await {
                Ok(png) => std::fs::write(&shot, png).map_or_else(
                    |e| format!("not saved: {e}"),
                    |()| shot.display().to_string(),
                ),
                Err(e) => format!("none: {e}"),
            };
            panic!("gave up waiting for {what}; the browser is at {url}, screenshot {saved}, showing:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

fn artifact(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_page_follows_its_run_live_and_approves_it_from_the_browser() {
    let d = WebDaemon::start();
    let run = d.start_run();
    let browser = Browser::start(1280, 1500).await;
    let c = &browser.client;

    // The login URL sets the cookie and drops the token from the address bar.
    c.goto(&d.login_url()).await.unwrap();
    let url = c.current_url().await.unwrap();
    assert_eq!(url.path(), "/", "{url}");
    assert!(
        url.query().is_none(),
        "the token is dropped from the URL: {url}"
    );
    // Opened again in the same browser, the (used) login URL leads to the list, not an error.
    c.goto(&d.login_url()).await.unwrap();
    let again = c.current_url().await.unwrap();
    assert!(again.query().is_none() && again.path() == "/", "{again}");
    until(c, "the list after the second visit", || async {
        text_of(c, "#runs thead").await
    })
    .await;
    let cookie = c.get_named_cookie("waymark_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(
        format!("{:?}", cookie.same_site()),
        "Some(Strict)",
        "the session cookie is SameSite=Strict"
    );

    // The run list: the run, its state, cluster and operator.
    let row = format!("tr[data-run='{run}']");
    let listed = until(c, "the run in the list", || async {
        text_of(c, &row).await.filter(|t| t.contains("web-cluster"))
    })
    .await;
    assert!(
        listed.contains("running") && listed.contains("alice"),
        "{listed}"
    );

    // Its page: the retried check with its error, the current step with its progress.
    c.find(Locator::Css(&format!("{row} a.run-link")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(c, "the run page on the drain step", || async {
        text_of(c, "#current-step .label")
            .await
            .filter(|t| t == "drain node n1")
    })
    .await;
    until(c, "the drain step's progress", || async {
        text_of(c, "#current-progress")
            .await
            .filter(|t| t.contains("40% done"))
    })
    .await;
    let timeline = text_of(c, "#timeline").await.unwrap();
    assert!(
        timeline.contains("check the estate") && timeline.contains("503 from yb-master"),
        "the retry and its error are on the timeline: {timeline}"
    );
    let input = c
        .execute(
            "return document.getElementById('input').textContent",
            vec![],
        )
        .await
        .unwrap();
    let input = input.as_str().unwrap();
    assert!(input.contains("web-cluster"), "{input}");
    assert!(
        !input.contains("hunter2"),
        "a secret reached the page: {input}"
    );

    // Live: the test finishes the drain; the page shows the restart without a reload (a mark
    // left on the window survives only if the page was not loaded again).
    c.execute("window.__sameDocument = true", vec![])
        .await
        .unwrap();
    d.estate.drain.add_permits(1);
    until(c, "the current step becoming the restart", || async {
        text_of(c, "#current-step .label")
            .await
            .filter(|t| t == "restart node n1")
    })
    .await;
    d.estate.restart.add_permits(1);
    until(c, "the run waiting for its approval", || async {
        text_of(c, "#current-step .label")
            .await
            .filter(|t| t.starts_with("waiting"))
    })
    .await;
    let same = c
        .execute("return window.__sameDocument === true", vec![])
        .await
        .unwrap();
    assert_eq!(same, serde_json::json!(true), "the page was reloaded");
    let sequence = text_of(c, "#sequence").await.unwrap();
    assert!(
        sequence.contains("Waymark"),
        "the sequence picture: {sequence}"
    );
    c.screenshot()
        .await
        .map(|png| std::fs::write(artifact("run-page-1280.png"), png).unwrap())
        .unwrap();

    // A cross-site POST from another loopback port (same site, so the strict cookie goes
    // along), as a page there would send it: refused, nothing journaled.
    let attacker = attacker_page(d.addr(), run);
    c.goto(&format!("http://{attacker}/")).await.unwrap();
    let answer = until(c, "the cross-site form's answer", || async {
        let url = c.current_url().await.ok()?;
        (url.port() == Some(d.addr().port())).then_some(())?;
        text_of(c, "body").await
    })
    .await;
    assert!(
        answer.contains("not this web UI") || answer.contains("Sec-Fetch-Site"),
        "{answer}"
    );
    assert!(
        !d.history(run)
            .iter()
            .any(|e| matches!(e, Event::SignalReceived { name, .. } if name == "cancel")),
        "a cross-site POST cancelled the run"
    );

    // Approve from the page, with a reason; the run continues and completes.
    c.goto(&format!("http://{}/runs/{run}", d.addr()))
        .await
        .unwrap();
    until(c, "the buttons", || async {
        text_of(c, "#run-state").await.filter(|t| t == "running")
    })
    .await;
    c.find(Locator::Css("button[data-signal='approve']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#reason"))
        .await
        .unwrap()
        .send_keys("estate checked by the on-call")
        .await
        .unwrap();
    c.find(Locator::Css("#send-signal"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(c, "the outcome on the page", || async {
        text_of(c, "#outcome")
            .await
            .filter(|t| t.starts_with("completed"))
    })
    .await;
    let history = d.history(run);
    let approval = history.iter().find_map(|e| match e {
        Event::SignalReceived {
            name,
            payload,
            sent_by,
        } if name == "approve" => Some((payload.clone(), sent_by.clone())),
        _ => None,
    });
    let (reason, by) = approval.expect("the approval is journaled");
    assert_eq!(reason.0, "\"estate checked by the on-call\"");
    assert!(by.contains("via web session 1 from 127.0.0.1"), "{by}");
    let signals = text_of(c, "#timeline").await.unwrap();
    assert!(
        signals.contains("approve by") && signals.contains("web session"),
        "{signals}"
    );
    c.screenshot()
        .await
        .map(|png| std::fs::write(artifact("run-page-completed-1280.png"), png).unwrap())
        .unwrap();

    // Cancel from the page: a second run, cancelled while it drains; its compensation runs and
    // is drawn as one.
    let second = d.start_run();
    c.goto(&format!("http://{}/runs/{second}", d.addr()))
        .await
        .unwrap();
    until(c, "the second run draining", || async {
        text_of(c, "#current-step .label")
            .await
            .filter(|t| t == "drain node n1")
    })
    .await;
    c.find(Locator::Css("button[data-signal='cancel']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#reason"))
        .await
        .unwrap()
        .send_keys("the change window was cancelled")
        .await
        .unwrap();
    c.find(Locator::Css("#send-signal"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(c, "the cancel journaled", || async {
        d.history(second)
            .iter()
            .any(|e| matches!(e, Event::SignalReceived { name, .. } if name == "cancel"))
            .then_some(())
    })
    .await;
    d.estate.drain.add_permits(1);
    let undo = until(c, "the compensation on the timeline", || async {
        text_of(c, "#timeline .row.comp")
            .await
            .filter(|t| t.contains("undrain node n1"))
    })
    .await;
    let bar_colour = c
        .execute(
            "return getComputedStyle(document.querySelector('#timeline .row.comp .bar')).backgroundColor \
             !== getComputedStyle(document.querySelector('#timeline .row.st-completed:not(.comp) .bar')).backgroundColor",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        bar_colour,
        serde_json::json!(true),
        "a compensation has its own colour: {undo}"
    );
    until(c, "the cancelled outcome", || async {
        text_of(c, "#outcome").await.filter(|t| t == "cancelled")
    })
    .await;

    // A phone's width: one column, nothing wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "wider than a phone by {overflow} px"
    );
    c.screenshot()
        .await
        .map(|png| std::fs::write(artifact("run-page-390.png"), png).unwrap())
        .unwrap();
    browser.close().await;
}

/// Serves, on another loopback port, a page whose form posts a `cancel` to the web UI at once.
fn attacker_page(target: SocketAddr, run: RunId) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let page = format!(
        "<!doctype html><form method=POST enctype=text/plain \
         action=\"http://{target}/web/api/runs/{run}/signal\">\
         <input name='{{\"signal\":\"cancel\",\"reason\":\"x\",\"pad\":\"' value='\"}}'></form>\
         <script>document.forms[0].submit()</script>"
    );
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

#[test]
fn without_a_session_every_page_and_api_call_is_refused() {
    let d = WebDaemon::start();
    let run = d.start_run();
    let addr = d.addr();
    let signal = r#"{"signal":"cancel","reason":"x"}"#;
    let refused = |cookie: Option<&str>, what: &str| {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(c) = cookie {
            h.push(("Cookie", c));
        }
        for (method, path) in [
            ("GET", "/".to_owned()),
            ("GET", format!("/runs/{run}")),
            ("GET", "/assets/run.js".to_owned()),
            ("GET", "/web/api/runs".to_owned()),
            ("GET", format!("/web/api/runs/{run}")),
            ("GET", format!("/web/api/runs/{run}/follow")),
            ("POST", format!("/web/api/runs/{run}/signal")),
            ("GET", "/no/such/page".to_owned()),
        ] {
            let (code, _, body) = http(addr, method, &path, &h, signal);
            assert_eq!(code, 401, "{what}: {method} {path} answered {code}: {body}");
            assert!(
                !body.contains(&run.to_string()) || path.contains(&run.to_string()),
                "{body}"
            );
        }
    };
    refused(None, "no cookie");
    refused(Some("waymark_session=00ff"), "a made-up cookie");
    let (code, _, body) = http(addr, "GET", "/?token=0123456789abcdef", &[], "");
    assert_eq!(code, 401, "a wrong token: {body}");

    // The login URL works once.
    let url = d.login_url();
    let cookie = login(addr, &url);
    let path = url.split_once(&addr.to_string()).unwrap().1;
    let (code, _, body) = http(addr, "GET", path, &[], "");
    assert_eq!(code, 401, "a used login URL: {body}");
    assert!(body.contains("used already"), "{body}");

    // With the session: pages and API answer (the control of the refusals above).
    for path in [
        format!("/runs/{run}"),
        "/web/api/runs".to_owned(),
        "/assets/run.js".to_owned(),
    ] {
        let (code, headers, body) = http(addr, "GET", &path, &[("Cookie", &cookie)], "");
        assert_eq!(code, 200, "{path}: {body}");
        assert!(headers["content-security-policy"].contains("script-src 'self'"));
    }
    let (code, _, body) = http(addr, "GET", "/web/api/runs", &[("Cookie", &cookie)], "");
    assert_eq!(code, 200);
    assert!(
        body.contains(&run.to_string()) && body.contains("web-cluster"),
        "{body}"
    );
    assert!(!body.contains("hunter2"), "{body}");

    // A name other than loopback in Host (DNS rebinding) reaches nothing, session or not.
    let (code, _, body) = http(
        addr,
        "GET",
        "/web/api/runs",
        &[("Host", "evil.example:80"), ("Cookie", &cookie)],
        "",
    );
    assert_eq!(code, 403, "{body}");
    assert!(d
        .history(run)
        .iter()
        .all(|e| !matches!(e, Event::SignalReceived { .. })));
}

#[test]
fn a_state_changing_request_needs_the_csrf_token_and_this_origin() {
    let d = WebDaemon::start();
    let run = d.start_run();
    let addr = d.addr();
    let cookie = login(addr, &d.login_url());
    let csrf = csrf_of(addr, &cookie);
    let own = format!("http://{addr}");
    let path = format!("/web/api/runs/{run}/signal");
    let body = r#"{"signal":"hold","reason":"checking the load balancer"}"#;
    let post = |headers: &[(&str, &str)]| {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Cookie", cookie.as_str()),
        ];
        h.extend_from_slice(headers);
        http(addr, "POST", &path, &h, body)
    };
    for (what, headers) in [
        ("no CSRF token", vec![("Origin", own.as_str())]),
        (
            "a wrong CSRF token",
            vec![("Origin", own.as_str()), ("X-CSRF-Token", "00")],
        ),
        (
            "a foreign Origin",
            vec![("Origin", "http://evil.example"), ("X-CSRF-Token", &csrf)],
        ),
        (
            "another port's Origin",
            vec![("Origin", "http://127.0.0.1:1"), ("X-CSRF-Token", &csrf)],
        ),
        (
            "a cross-site fetch",
            vec![("Sec-Fetch-Site", "cross-site"), ("X-CSRF-Token", &csrf)],
        ),
    ] {
        let (code, _, answer) = post(&headers);
        assert_eq!(code, 403, "{what}: {answer}");
    }
    assert!(
        d.history(run)
            .iter()
            .all(|e| !matches!(e, Event::SignalReceived { .. })),
        "a refused request was journaled"
    );
    let (code, _, answer) = post(&[
        ("Origin", own.as_str()),
        ("X-CSRF-Token", &csrf),
        ("Sec-Fetch-Site", "same-origin"),
    ]);
    assert_eq!(code, 200, "the page's own request: {answer}");
    let held = d.history(run).into_iter().find_map(|e| match e {
        Event::SignalReceived { name, sent_by, .. } if name == "hold" => Some(sent_by),
        _ => None,
    });
    assert!(held.is_some_and(|by| by.contains("via web session")));
}

#[test]
fn the_web_ui_binds_loopback_unless_allowed_otherwise() {
    let dir = temp_dir();
    let err = InProcessDaemon::try_start(
        &dir.path().join("data"),
        DaemonSettings {
            http: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            ..DaemonSettings::default()
        },
    )
    .err()
    .expect("a non-loopback --http is refused");
    assert!(
        err.contains("--http-allow-remote") && err.contains("SSH tunnel"),
        "{err}"
    );
}

/// The login URL the daemon left in `data`'s owner-only file (its stdout not a terminal).
fn login_url_from_file(data: &std::path::Path) -> String {
    let file = data.join("web-login-url");
    // Written whole (renamed into place), so any content read is the whole URL.
    crate::util::eventually_blocking(
        LIMIT,
        &format!("the daemon's login URL in {}", file.display()),
        || {
            std::fs::read_to_string(&file)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        },
    )
}

fn addr_of(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .and_then(|r| r.split_once("/?token="))
        .map_or_else(
            || panic!("a login URL http://ADDR/?token=...: {url:?}"),
            |(a, _)| a.parse().unwrap(),
        )
}

/// `waymark daemon --http 127.0.0.1:0` with its stdout not a terminal (a service manager's
/// journal, which others may read): the login URL never goes to stdout or stderr; it is in an
/// owner-only file of the data directory, whose path stderr names; it works once;
/// `waymark web-login` prints a new one over the socket; the file goes when the daemon stops.
#[test]
fn piped_the_daemon_leaves_its_login_url_in_an_owner_only_file_not_on_stdout() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut child = crate::util::waymark(&data)
        .args(["daemon", "--http", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn waymark daemon");
    let mut stdout = child.stdout.take().unwrap();
    let daemon = crate::fixtures::daemon::DaemonProcess { child };
    let url = login_url_from_file(&data);
    let file = data.join("web-login-url");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the login URL file is owner-only");
    let addr = addr_of(&url);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{url}");
    let cookie = login(addr, &url);
    let (code, _, _) = http(addr, "GET", "/web/api/runs", &[("Cookie", &cookie)], "");
    assert_eq!(code, 200);
    let path = url.split_once(&addr.to_string()).unwrap().1;
    let (code, _, _) = http(addr, "GET", path, &[], "");
    assert_eq!(code, 401, "the login URL works once");

    // A second browser: `waymark web-login` asks the daemon for a new URL.
    let out = crate::util::waymark(&data)
        .arg("web-login")
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "{out:?}");
    assert_ne!(again, url);
    assert_eq!(addr_of(&again), addr);
    let second = login(addr, &again);
    assert_ne!(second, cookie);

    let err = daemon.sigterm();
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let token = |u: &str| u.split("token=").nth(1).unwrap().to_owned();
    for secret in [token(&url), token(&again)] {
        assert!(!out.contains(&secret), "a login token on stdout: {out}");
        assert!(!err.contains(&secret), "a login token on stderr: {err}");
    }
    assert!(
        err.contains(&file.display().to_string()) && err.contains("waymark web-login"),
        "stderr says where the URL is: {err}"
    );
    assert!(!file.exists(), "the dead URL's file is removed at stop");
    // Without a daemon, web-login says what to start.
    let out = crate::util::waymark(&data)
        .arg("web-login")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--http"), "{err}");
}

/// The daemon process on `data` serving the web UI on a free loopback port; its login URL.
fn daemon_with_web(data: &std::path::Path) -> (crate::fixtures::daemon::DaemonProcess, String) {
    let child = crate::util::waymark(data)
        .args(["daemon", "--http", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn waymark daemon");
    let daemon = crate::fixtures::daemon::DaemonProcess { child };
    let url = login_url_from_file(data);
    assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
    (daemon, url)
}

/// The real runbook against the sandbox: the page shows the run waiting for its approval, the
/// operator approves it there, and the current step moves on through the runbook without a
/// reload until the run completes. Its screenshot is the README's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_maintenance_run_is_approved_and_followed_in_the_browser() {
    let dir = temp_dir();
    let sb = crate::util::SandboxProcess::start(&dir.path().join("estate"), 10);
    let inventory = sb.dir.join("inventory.toml");
    let text = std::fs::read_to_string(&inventory).unwrap();
    assert!(text.contains("require_approval = false"), "{text}");
    std::fs::write(
        &inventory,
        text.replace("require_approval = false", "require_approval = true"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (_daemon, url) = daemon_with_web(&data);
    let out = crate::util::waymark(&data)
        .args(["start", "yb-maintenance", "--detach", "--inventory"])
        .arg(&inventory)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let run = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let browser = Browser::start(1280, 2200).await;
    let c = &browser.client;
    c.goto(&url).await.unwrap();
    let row = format!("tr[data-run='{run}'] a.run-link");
    until(c, "the run in the list", || async {
        c.find(Locator::Css(&row)).await.ok()
    })
    .await
    .click()
    .await
    .unwrap();
    until_within(
        c,
        Duration::from_secs(300),
        "the run waiting for its approval",
        || async {
            let wait = text_of(c, "#timeline").await?;
            let now = text_of(c, "#current-step .label").await?;
            (wait.contains("waiting for approve until") && now == "waiting for approve")
                .then_some(())
        },
    )
    .await;
    c.execute("window.__sameDocument = true", vec![])
        .await
        .unwrap();
    c.find(Locator::Css("button[data-signal='approve']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#reason"))
        .await
        .unwrap()
        .send_keys("change window CHG-1234 approved")
        .await
        .unwrap();
    c.find(Locator::Css("#send-signal"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The current step changes as the runbook goes on, in the same document.
    let first = until_within(
        c,
        Duration::from_secs(300),
        "a step of the runbook running",
        || async {
            text_of(c, "#current-step .label")
                .await
                .filter(|t| !t.starts_with("waiting") && t != "–" && t != "finished")
        },
    )
    .await;
    let second = until_within(c, Duration::from_secs(300), "the next step", || async {
        text_of(c, "#current-step .label")
            .await
            .filter(|t| *t != first && !t.starts_with("waiting"))
    })
    .await;
    assert_ne!(first, second);
    let outcome = until_within(c, Duration::from_secs(900), "the run's outcome", || async {
        text_of(c, "#outcome").await.filter(|t| t != "not finished")
    })
    .await;
    assert!(outcome.starts_with("completed"), "{outcome}");
    let same = c
        .execute("return window.__sameDocument === true", vec![])
        .await
        .unwrap();
    assert_eq!(same, serde_json::json!(true), "the page was reloaded");
    let timeline = text_of(c, "#timeline").await.unwrap();
    assert!(
        timeline.contains("approve by") && timeline.contains("via web session 1"),
        "{timeline}"
    );
    let sequence = text_of(c, "#sequence").await.unwrap();
    for system in ["AWS ELBv2", "Kubernetes", "yb-master API"] {
        assert!(
            sequence.contains(system),
            "{system} in the picture: {sequence}"
        );
    }
    let png = c.screenshot().await.unwrap();
    std::fs::write(artifact("sandbox-run-page-1280.png"), png).unwrap();
    // The README's picture: the top of the page (run, now, timeline).
    c.set_window_size(1280, 1500).await.unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(artifact("sandbox-run-page-readme.png"), png).unwrap();
    browser.close().await;
}

/// The theme follows the browser's `prefers-color-scheme`: light by default, dark when the
/// browser asks for dark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_theme_follows_the_browser() {
    let mut luminance = Vec::new();
    for (flags, name) in [(&[][..], "light"), (&["--force-dark-mode"][..], "dark")] {
        // One daemon per browser: a login URL logs one browser in.
        let d = WebDaemon::start();
        let _run = d.start_run();
        let browser = Browser::start_with(1280, 900, flags).await;
        let c = &browser.client;
        c.goto(&d.login_url()).await.unwrap();
        until(c, "the run list", || async {
            text_of(c, "#runs tbody tr").await
        })
        .await;
        let l = c
            .execute(
                "const [r, g, b] = getComputedStyle(document.body).backgroundColor \
                   .match(/\\d+/g).map(Number); return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255",
                vec![],
            )
            .await
            .unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(artifact(&format!("run-list-{name}.png")), png).unwrap();
        luminance.push(l.as_f64().unwrap());
        browser.close().await;
    }
    assert!(luminance[0] > 0.8, "light theme by default: {luminance:?}");
    assert!(
        luminance[1] < 0.2,
        "dark theme when the browser prefers dark: {luminance:?}"
    );
}

/// A second browser (a phone after the laptop) gets its own login URL from the owner-only unix
/// socket; the new URL works once, the first browser keeps its session.
#[test]
fn a_second_browser_gets_a_new_login_url_over_the_unix_socket() {
    let d = WebDaemon::start();
    let addr = d.addr();
    let first = login(addr, &d.login_url());
    let (code, body) = crate::util::http_unix(&d.daemon.socket, "POST", "/v1/web/login-url", None);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let url = v["url"].as_str().unwrap().to_owned();
    assert_ne!(url, d.login_url());
    assert!(url.starts_with(&format!("http://{addr}/?token=")), "{url}");
    let second = login(addr, &url);
    assert_ne!(first, second);
    for cookie in [&first, &second] {
        let (code, _, _) = http(addr, "GET", "/web/api/runs", &[("Cookie", cookie)], "");
        assert_eq!(code, 200, "both sessions work");
    }
    let path = url.split_once(&addr.to_string()).unwrap().1;
    let (code, _, _) = http(addr, "GET", path, &[], "");
    assert_eq!(code, 401, "the new URL works once too");
    // Without --http, the socket says so.
    let dir = temp_dir();
    let plain = InProcessDaemon::start(&dir.path().join("data"));
    let (code, body) = crate::util::http_unix(&plain.socket, "POST", "/v1/web/login-url", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("--http"), "{body}");
}
