//! Regression: the server printed its startup lines with `println!`, which
//! panics when stdout is a pipe whose reader has gone (EPIPE). A supervisor
//! that read only the first line and closed the pipe killed the server
//! (seen in CI as "tcp connect error"). Now stdout write errors are ignored.

use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_survives_a_closed_stdout() {
    let data = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args([
            "serve",
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--data-dir",
        ])
        .arg(data.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Close the read end before the server writes anything: every startup
    // line now meets a broken pipe.
    drop(child.stdout.take());
    let mut answer = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
            s.read_to_string(&mut answer).await.unwrap();
            break;
        }
    }
    assert!(answer.ends_with("ok\n"), "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "the server exited after starting");
    let _ = child.kill();
    let _ = child.wait();
}
