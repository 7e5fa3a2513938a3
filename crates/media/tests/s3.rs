//! The S3-compatible store against a real S3 API: the shared conformance
//! checks. Needs the `s3` feature and `PYPES_TEST_S3_ENDPOINT` (e.g. a
//! local moto or MinIO server with a bucket `PYPES_TEST_S3_BUCKET`,
//! default "pypes-test"); `.ci/s3.sh` starts moto from PyPI and runs this.
//! Without an endpoint the suite says it did not run, and fails under CI.
#![cfg(feature = "s3")]

use media::s3::{S3BlobStore, S3Config};

fn store() -> Option<S3BlobStore> {
    let Ok(endpoint) = std::env::var("PYPES_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but PYPES_TEST_S3_ENDPOINT is not: the S3 suite must run in CI (.ci/s3.sh)"
        );
        eprintln!("S3 blob store suite DID NOT RUN: set PYPES_TEST_S3_ENDPOINT (see .ci/s3.sh)");
        return None;
    };
    let config = S3Config {
        bucket: std::env::var("PYPES_TEST_S3_BUCKET").unwrap_or_else(|_| "pypes-test".into()),
        endpoint: endpoint.clone(),
        region: "us-east-1".into(),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        prefix: format!("run-{}/", uuid::Uuid::new_v4()),
        allow_http: endpoint.starts_with("http://"),
    };
    Some(S3BlobStore::new(&config).expect("configure the S3 store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms() {
    if let Some(store) = store() {
        media::conformance::run_all(&store).await;
    }
}
