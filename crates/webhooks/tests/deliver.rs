//! One delivery attempt against receivers started here, on loopback: a
//! 2xx is delivered with the headers given; every other answer, a
//! redirect, a slow answer, a huge answer, a TLS handshake that never
//! completes and a refused destination each fail with a reason that names
//! it, within the attempt's deadline.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use webhooks::deliver::{Client, Limits};
use webhooks::target::Policy;

const LOOPBACK: Policy = Policy { allow_private: false, allow_loopback: true };

fn limits() -> Limits {
    Limits { connect: Duration::from_secs(2), attempt: Duration::from_secs(1), ..Limits::default() }
}

/// A receiver that reads one request and answers with `answer` after
/// `delay`; returns its URL and the request it read.
async fn receiver(answer: Vec<u8>, delay: Duration) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 8192];
        // Read the head and the body (Content-Length).
        loop {
            let n = s.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= head_end + 4 + length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        tokio::time::sleep(delay).await;
        let _ = s.write_all(&answer).await;
        let _ = s.shutdown().await;
        String::from_utf8_lossy(&request).to_string()
    });
    (url, task)
}

#[tokio::test]
async fn a_2xx_is_delivered_with_its_headers() {
    let client = Client::new(LOOPBACK, limits(), None).unwrap();
    let (url, seen) = receiver(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n".to_vec(), Duration::ZERO).await;
    let a = client.post(&url, &[("pypes-signature", "t=1,v1=00".into())], b"{\"a\":1}").await;
    assert!(a.delivered(), "{a:?}");
    assert_eq!(a.status, Some(204));
    let request = seen.await.unwrap();
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    assert!(request.to_ascii_lowercase().contains("pypes-signature: t=1,v1=00"), "{request}");
    assert!(request.to_ascii_lowercase().contains("content-type: application/json"), "{request}");
    assert!(request.ends_with("{\"a\":1}"), "{request}");
}

#[tokio::test]
async fn errors_redirects_and_slow_or_huge_answers_are_named() {
    let client = Client::new(LOOPBACK, limits(), None).unwrap();

    let (url, _) = receiver(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 13\r\n\r\nback at noon.".to_vec(),
        Duration::ZERO,
    )
    .await;
    let a = client.post(&url, &[], b"{}").await;
    assert_eq!(a.status, Some(503));
    let reason = a.outcome.unwrap_err();
    assert!(reason.contains("503") && reason.contains("back at noon"), "{reason}");

    let (url, _) = receiver(
        b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest\r\ncontent-length: 0\r\n\r\n".to_vec(),
        Duration::ZERO,
    )
    .await;
    let reason = client.post(&url, &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("redirects are not followed") && reason.contains("169.254.169.254"), "{reason}");

    // Slower than the attempt's deadline.
    let (url, _) = receiver(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(), Duration::from_secs(3)).await;
    let started = Instant::now();
    let a = client.post(&url, &[], b"{}").await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(a.outcome.unwrap_err().contains("no answer within 1 s"));

    // A 10 MB answer: a prefix is read, the attempt ends quickly.
    let mut huge = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 10000000\r\n\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'z', 10_000_000));
    let (url, _) = receiver(huge, Duration::ZERO).await;
    let started = Instant::now();
    let a = client.post(&url, &[], b"{}").await;
    let reason = a.outcome.unwrap_err();
    assert!(reason.contains("500") && reason.len() < 400, "{}", &reason[..reason.len().min(400)]);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_handshake_that_never_completes_ends_at_the_deadline() {
    let client = Client::new(LOOPBACK, limits(), None).unwrap();
    // Accepts TCP, never says a word: the TLS handshake hangs.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let started = Instant::now();
    let a = client.post(&format!("https://127.0.0.1:{port}/hook"), &[], b"{}").await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(a.outcome.unwrap_err().contains("no answer within"), "{:?}", a.status);
}

#[tokio::test]
async fn refused_destinations_are_never_contacted() {
    let strict = Client::new(Policy::default(), limits(), None).unwrap();
    let (url, seen) = receiver(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(), Duration::ZERO).await;
    // Plain http, and loopback, are refused by the strict policy.
    let reason = strict.post(&url, &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("destination policy") && reason.contains("https://"), "{reason}");
    let https = url.replace("http://", "https://");
    let reason = strict.post(&https, &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("loopback"), "{reason}");
    // A name that resolves to loopback is refused when it is resolved.
    let named = https.replace("127.0.0.1", "localhost");
    let reason = strict.post(&named, &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("loopback"), "{reason}");
    let reason = strict.post("https://169.254.169.254/latest/meta-data/", &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("link-local"), "{reason}");
    // The receiver saw nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!seen.is_finished());
    seen.abort();
}

/// A receiver that answers every request `200 ok` (with a
/// content-length, so the connection may be kept) and closes each
/// connection after `per_connection` requests; the connections it
/// accepted so far.
async fn keep_alive_receiver(
    tls: Option<tokio_rustls::TlsAcceptor>,
    per_connection: usize,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut io: Box<dyn Stream> = match tls {
                    Some(t) => match t.accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                for _ in 0..per_connection {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 8192];
                    loop {
                        let Ok(n) = io.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length: usize = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let _ = io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    let _ = io.flush().await;
                }
                let _ = io.shutdown().await;
            });
        }
    });
    (port, accepted)
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A TLS acceptor serving `cert` with `key`.
fn acceptor(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> tokio_rustls::TlsAcceptor {
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (acceptor(&ck.cert, &ck.signing_key), ck.cert.pem())
}

#[tokio::test]
async fn https_with_the_extra_ca_and_kept_connections() {
    use std::sync::atomic::Ordering;
    let (acceptor, ca) = tls_acceptor();
    let (port, accepted) = keep_alive_receiver(Some(acceptor), usize::MAX).await;
    let url = format!("https://localhost:{port}/hook");
    let client = Client::new(LOOPBACK, limits(), Some(ca.as_bytes())).unwrap();
    for i in 0..5 {
        let a = client.post(&url, &[("pypes-event-id", format!("e{i}"))], b"{}").await;
        assert!(a.delivered(), "{a:?}");
    }
    // One TLS connection, kept between the attempts.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Without the CA, the certificate is refused and the reason says so.
    let strangers = Client::new(LOOPBACK, limits(), None).unwrap();
    let reason = strangers.post(&url, &[], b"{}").await.outcome.unwrap_err();
    assert!(
        reason.contains("TLS handshake failed")
            && reason
                .contains("the endpoint's certificate is not issued by a certificate authority this server trusts"),
        "{reason}"
    );
    // A name the certificate does not carry.
    let by_address = format!("https://127.0.0.1:{port}/hook");
    let reason = client.post(&by_address, &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("is not valid for the host name in the endpoint's URL"), "{reason}");
    // An extra CA file with no certificate in it is a clear error.
    let e = Client::new(LOOPBACK, limits(), Some(b"not a certificate")).unwrap_err();
    assert!(e.contains("no certificate"), "{e}");
}

/// A server certificate that is a CA's (`CA:TRUE`, what `openssl req
/// -x509` makes by default) is named as such, even when trusted.
#[tokio::test]
async fn a_ca_certificate_served_as_the_server_s_is_named() {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (port, _) = keep_alive_receiver(Some(acceptor(&cert, &key)), usize::MAX).await;
    let client = Client::new(LOOPBACK, limits(), Some(cert.pem().as_bytes())).unwrap();
    let reason = client.post(&format!("https://localhost:{port}/hook"), &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("the endpoint's certificate is a certificate authority's (CA:TRUE)"), "{reason}");
}

/// A leaf signed by a trusted CA but past its `notAfter` is named as
/// expired.
#[tokio::test]
async fn an_expired_certificate_is_named() {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    leaf_params.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let (port, _) = keep_alive_receiver(Some(acceptor(&leaf, &leaf_key)), usize::MAX).await;
    let client = Client::new(LOOPBACK, limits(), Some(ca.pem().as_bytes())).unwrap();
    let reason = client.post(&format!("https://localhost:{port}/hook"), &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("the endpoint's certificate has expired"), "{reason}");
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_not_reported() {
    use std::sync::atomic::Ordering;
    // Each connection serves one request and is closed afterwards, though
    // its answer did not say so: the next attempt finds it closed.
    let (port, accepted) = keep_alive_receiver(None, 1).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let client = Client::new(LOOPBACK, limits(), None).unwrap();
    for _ in 0..3 {
        let a = client.post(&url, &[], b"{}").await;
        assert!(a.delivered(), "{a:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // A port nobody listens on: could not connect, named.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://127.0.0.1:{}/hook", closed.local_addr().unwrap().port());
    drop(closed);
    let reason = client.post(&dead, &[], b"{}").await.outcome.unwrap_err();
    assert!(reason.contains("could not connect"), "{reason}");
}

#[tokio::test]
async fn an_interim_answer_and_a_chunked_one_in_the_same_packet() {
    // "100 Continue" and the final answer written at once: the client must
    // not wait for more than it already has.
    let (url, _) = receiver(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 422 Unprocessable Entity\r\ntransfer-encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n"
            .to_vec(),
        Duration::ZERO,
    )
    .await;
    let client = Client::new(LOOPBACK, limits(), None).unwrap();
    let started = Instant::now();
    let a = client.post(&url, &[], b"{}").await;
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!(a.status, Some(422));
    let reason = a.outcome.unwrap_err();
    assert!(reason.contains("422 Unprocessable Content: nope"), "{reason}");
}
