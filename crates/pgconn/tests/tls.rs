//! TLS to a real PostgreSQL (a throw-away cluster with `ssl=on` and a
//! certificate from a test CA): `sslmode=require` connects over TLS and
//! verifies the certificate; a server whose certificate another CA signed,
//! or that names another host, is refused; without `require` the session
//! is in the clear.

use pgtest::pki;

async fn ssl_of(url: &str) -> Result<String, String> {
    let t = pgconn::target(url)?;
    let (client, connection) = t.config.connect(t.tls).await.map_err(|e| format!("{e}: {e:?}"))?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn require_connects_over_verified_tls_and_refuses_what_it_cannot_verify() {
    let server = pki(&["127.0.0.1"]);
    let Some(pg) = pgtest::Cluster::start_with_tls(&server.cert_pem, &server.key_pem) else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let url = pg.url("postgres");

    let secure = format!("{url} sslmode=require sslrootcert={}", ca.display());
    assert_eq!(ssl_of(&secure).await.unwrap(), "true", "over TLS");
    let libpq_style = format!("{url} sslmode=verify-full sslrootcert={}", ca.display());
    assert_eq!(ssl_of(&libpq_style).await.unwrap(), "true");
    let uri = format!("postgres://pypes@127.0.0.1:{}/postgres?sslmode=require&sslrootcert={}", pg.port(), ca.display());
    assert_eq!(ssl_of(&uri).await.unwrap(), "true");
    // Without require: in the clear, though the server offers TLS.
    assert_eq!(ssl_of(&url).await.unwrap(), "false");

    // Another CA's certificate: refused, not taken unverified.
    let other = pki(&["127.0.0.1"]);
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    let e = ssl_of(&format!("{url} sslmode=require sslrootcert={}", other_ca.display())).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // The right CA, but the certificate names another host.
    let elsewhere = pki(&["db.example.com"]);
    let Some(pg2) = pgtest::Cluster::start_with_tls(&elsewhere.cert_pem, &elsewhere.key_pem) else { return };
    let ca2 = dir.path().join("ca2.pem");
    std::fs::write(&ca2, &elsewhere.ca_pem).unwrap();
    let e =
        ssl_of(&format!("{} sslmode=require sslrootcert={}", pg2.url("postgres"), ca2.display())).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}
