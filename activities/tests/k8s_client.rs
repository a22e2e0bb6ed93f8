//! Building a Kubernetes client for a plain-HTTP cluster does not read the system's CA bundle
//! (the deterministic simulation builds one per Kubernetes activity: issue 13), while an HTTPS
//! cluster whose kubeconfig names no CA still trusts exactly the system's roots.
//!
//! Its own test binary: it points `SSL_CERT_FILE` and `SSL_CERT_DIR` at paths that do not
//! exist, so that any load of the system roots fails loudly, and no other test shares the
//! process's environment.

use waymark_activities::k8s::Connection;

fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join(format!(
        "kubeconfig-{}",
        server.split(':').next().unwrap_or("x")
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    \
             user: u\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_plain_http_cluster_needs_no_system_roots_and_an_https_one_still_uses_them() {
    let dir = std::env::temp_dir().join(format!("waymark-k8s-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("no-such-ca");
    std::env::set_var("SSL_CERT_FILE", &missing);
    std::env::set_var("SSL_CERT_DIR", &missing);

    let plain = Connection {
        kubeconfig: Some(kubeconfig(&dir, "http://127.0.0.1:9")),
        ..Connection::default()
    };
    if let Err(e) = plain.client().await {
        panic!("a client for a plain-HTTP cluster must not need the system's CA bundle: {e}");
    }

    // Unchanged for HTTPS without a CA in the kubeconfig: the system's roots are loaded (and
    // here, with none to load, the client is refused).
    let tls = Connection {
        kubeconfig: Some(kubeconfig(&dir, "https://127.0.0.1:9")),
        ..Connection::default()
    };
    let Err(err) = tls.client().await else {
        panic!("an HTTPS cluster with no CA in its kubeconfig trusts the system's roots, and there are none here");
    };
    assert!(
        err.to_string().contains("CA") || err.to_string().contains("certificate"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
