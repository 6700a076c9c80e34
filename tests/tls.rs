//! TLS and mutual TLS, with certificates made here (rcgen): who gets in, who is refused during
//! the handshake, and reloading certificates without dropping connections.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use phantom::client::{TlsFiles, connect_tls};
use phantom::pb::{self, phantom_admin_client::PhantomAdminClient};
use phantom::server::{self, RunningServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd};
use tonic::Code;
use tonic::transport::Channel;

/// A certificate authority.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("self-signed").pem();
        Ca { params, key, pem }
    }

    /// A leaf certificate for `names`; `expired` makes one that ended in 2021.
    fn issue(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write pem");
    p
}

/// Writes the server's certificate and key (replacing earlier ones).
fn server_files(dir: &Path, ca: &Ca, expired: bool) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], expired);
    (
        write(dir, "server.pem", &cert),
        write(dir, "server.key", &key),
    )
}

struct TlsServer {
    server: RunningServer,
    dir: tempfile::TempDir,
}

impl TlsServer {
    async fn start(server_ca: &Ca, client_ca: Option<&Ca>) -> TlsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = server_files(dir.path(), server_ca, false);
        let mut cfg = test_config(dir.path());
        cfg.tls.cert = Some(cert);
        cfg.tls.key = Some(key);
        cfg.tls.client_ca = client_ca.map(|ca| write(dir.path(), "client-ca.pem", &ca.pem));
        let server = server::start(cfg).await.expect("TLS server starts");
        TlsServer { server, dir }
    }

    fn addr(&self) -> String {
        self.server.local_addr.to_string()
    }

    /// Connects trusting `ca`, optionally presenting a client certificate.
    async fn dial(&self, ca: &Ca, client: Option<(String, String)>) -> Result<Channel, String> {
        let d = tempfile::tempdir().expect("temp dir");
        let mut files = TlsFiles {
            ca: Some(write(d.path(), "ca.pem", &ca.pem)),
            domain: Some("localhost".into()),
            ..Default::default()
        };
        if let Some((cert, key)) = client {
            files.cert = Some(write(d.path(), "c.pem", &cert));
            files.key = Some(write(d.path(), "c.key", &key));
        }
        connect_tls(&self.addr(), &files).await
    }
}

/// A real call over `channel`: the admin lists accounts.
async fn call(channel: Channel) -> Result<(), tonic::Status> {
    PhantomAdminClient::with_interceptor(channel, Bearer::new(ADMIN))
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .map(|_| ())
}

/// A connection attempt that must not get a working channel.
async fn refused(attempt: Result<Channel, String>) {
    match attempt {
        Err(_) => {}
        Ok(channel) => {
            // Refused in the handshake: a transport failure, never an answer from a handler.
            // (Under TLS 1.3 the client learns it on its first request.) A plaintext client
            // may also read the server's TLS alert as a broken HTTP/2 frame: INTERNAL, with
            // the h2 error as its source, which the next assertion requires.
            let s = call(channel).await.expect_err("the call must fail");
            assert!(
                matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal),
                "{s:?}"
            );
            assert!(
                std::error::Error::source(&s).is_some() || s.message().contains("transport"),
                "a transport error, not a status from the server: {s:?}"
            );
        }
    }
}

#[tokio::test]
async fn tls_clients_get_in_and_plaintext_or_the_wrong_ca_do_not() {
    let ca = Ca::new("phantom test CA");
    let t = TlsServer::start(&ca, None).await;
    call(t.dial(&ca, None).await.expect("TLS connects"))
        .await
        .expect("a call over TLS works");

    // Plaintext HTTP/2 against the TLS port.
    refused(phantom::client::connect(&t.addr()).await).await;
    // A client that trusts another CA does not accept the server.
    refused(t.dial(&Ca::new("someone else"), None).await).await;
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_by_clients() {
    let ca = Ca::new("phantom test CA");
    let t = TlsServer::start(&ca, None).await;
    server_files(t.dir.path(), &ca, true);
    t.server.reload_tls().expect("reload");
    refused(t.dial(&ca, None).await).await;
}

#[tokio::test]
async fn mutual_tls_admits_only_certificates_from_the_client_ca() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let t = TlsServer::start(&server_ca, Some(&client_ca)).await;

    let good = client_ca.issue(&["app-1"], false);
    call(t.dial(&server_ca, Some(good)).await.expect("mTLS connects"))
        .await
        .expect("a call with a good client certificate works");

    // No certificate, one from another CA, an expired one: all refused in the handshake.
    refused(t.dial(&server_ca, None).await).await;
    let foreign = Ca::new("rogue CA").issue(&["app-1"], false);
    refused(t.dial(&server_ca, Some(foreign)).await).await;
    let expired = client_ca.issue(&["app-1"], true);
    refused(t.dial(&server_ca, Some(expired)).await).await;
}

#[tokio::test]
async fn reloading_certificates_keeps_open_connections_and_serves_new_ones_with_the_new_ones() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let t = TlsServer::start(&old_ca, None).await;
    let open = t.dial(&old_ca, None).await.expect("connects");
    call(open.clone()).await.expect("works");

    // A broken file is refused and changes nothing.
    let cert_path = t.dir.path().join("server.pem");
    let good_cert = std::fs::read_to_string(&cert_path).expect("read");
    std::fs::write(&cert_path, "not a certificate").expect("write");
    let err = t.server.reload_tls().expect_err("garbage is refused");
    assert!(err.contains("tls.cert"), "{err}");
    std::fs::write(&cert_path, good_cert).expect("write");
    call(
        t.dial(&old_ca, None)
            .await
            .expect("old config still in force"),
    )
    .await
    .expect("works");

    server_files(t.dir.path(), &new_ca, false);
    t.server.reload_tls().expect("reload");
    call(t.dial(&new_ca, None).await.expect("new certificate served"))
        .await
        .expect("works");
    refused(t.dial(&old_ca, None).await).await;
    // The connection opened before the reload was not dropped.
    call(open).await.expect("the open connection still works");
}

#[tokio::test]
async fn phantomctl_speaks_tls_and_mtls() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let t = TlsServer::start(&server_ca, Some(&client_ca)).await;
    let dir = t.dir.path();
    let ca = write(dir, "trust.pem", &server_ca.pem);
    let (cert, key) = client_ca.issue(&["ctl"], false);
    let (cert, key) = (write(dir, "ctl.pem", &cert), write(dir, "ctl.key", &key));
    let ctl = |extra: &[&Path]| {
        // tokio's Command: the server under test runs on this test's runtime.
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_phantomctl"));
        cmd.args([
            "--server",
            &t.addr(),
            "--token",
            ADMIN,
            "--tls-domain",
            "localhost",
        ]);
        cmd.arg("--ca").arg(&ca);
        if let [c, k] = extra {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
        cmd.args(["account", "create", "tlsuser"]);
        cmd.kill_on_drop(true).output()
    };
    let ok = ctl(&[&cert, &key]).await.expect("phantomctl runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("tlsuser"));
    let no_cert = ctl(&[]).await.expect("phantomctl runs");
    assert!(!no_cert.status.success(), "no client certificate: refused");
}

#[tokio::test]
async fn the_binary_reloads_certificates_on_sighup() {
    use std::io::{BufRead, BufReader};
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = server_files(dir.path(), &old_ca, false);
    let config = write(
        dir.path(),
        "config.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n\
             [auth]\nadmin_token = \"{ADMIN}\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("data"),
            cert,
            key
        ),
    );
    let mut child = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_phantom-grpc-api"))
            .arg("--config")
            .arg(&config)
            .env_remove("PHANTOM_ADMIN_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn server"),
    );
    let addr = listening_addr(child.0.stdout.take().expect("stdout"));
    let dial = |ca: &Ca| {
        let d = tempfile::tempdir().expect("temp dir");
        let files = TlsFiles {
            ca: Some(write(d.path(), "ca.pem", &ca.pem)),
            domain: Some("localhost".into()),
            ..Default::default()
        };
        let addr = addr.clone();
        async move {
            let channel = connect_tls(&addr, &files).await;
            drop(d);
            channel
        }
    };
    let open = dial(&old_ca).await.expect("connects");
    call(open.clone()).await.expect("works");

    server_files(dir.path(), &new_ca, false);
    child.signal("HUP");
    // The server logs the reload: that is the event to wait for.
    let stderr = child.0.stderr.take().expect("stderr");
    let reloaded = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("TLS certificates reloaded"))
    });
    assert!(
        tokio::time::timeout(WAIT, reloaded)
            .await
            .expect("reload logged in time")
            .expect("reader"),
        "the server logged the reload"
    );
    call(dial(&new_ca).await.expect("new certificate"))
        .await
        .expect("works");
    call(open)
        .await
        .expect("the connection from before SIGHUP still works");
}
