//! A webhook receiver on loopback for the tests: HTTP/1.1 with keep-alive,
//! every request kept with its headers and body, answered as its mode
//! says (up, down, flaky, hanging).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a receiver answers.
pub const UP: u8 = 0;
pub const DOWN: u8 = 1; // 503
pub const FLAKY: u8 = 2; // 503 for about one request in three
pub const HANG: u8 = 3; // reads the request, never answers

/// One request a receiver read.
#[derive(Debug, Clone)]
pub struct Got {
    pub at_micros: i64,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The answer it got was a 2xx.
    pub acked: bool,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub mode: Arc<AtomicU8>,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub counter: Arc<AtomicU64>,
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

impl Receiver {
    pub async fn start(mode: u8) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/hooks", listener.local_addr().unwrap().port());
        let r = Receiver { url, mode: Arc::new(AtomicU8::new(mode)), got: Arc::default(), counter: Arc::default() };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(me.clone().serve(s));
            }
        });
        r
    }

    /// HTTP/1.1 with keep-alive: reads requests (head, then the body by
    /// Content-Length) and answers each as the mode says.
    async fn serve(self, mut s: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut headers = HashMap::new();
            for line in head.lines().skip(1) {
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buf.len() < head_end + 4 + length {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[head_end + 4..head_end + 4 + length].to_vec();
            buf.drain(..head_end + 4 + length);
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let mode = self.mode.load(Ordering::Relaxed);
            let ok = match mode {
                UP => true,
                FLAKY => n % 3 != 1,
                HANG => {
                    self.got.lock().unwrap().push(Got { at_micros: now_micros(), headers, body, acked: false });
                    std::future::pending::<()>().await;
                    return;
                }
                _ => false,
            };
            self.got.lock().unwrap().push(Got { at_micros: now_micros(), headers, body, acked: ok });
            let answer: &[u8] = if ok {
                b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 11\r\n\r\ndown for it"
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The distinct events acknowledged, by id.
    pub fn acked_ids(&self) -> std::collections::BTreeSet<String> {
        self.got().iter().filter(|g| g.acked).map(|g| g.headers["pypes-event-id"].clone()).collect()
    }

    /// Waits until `n` distinct events of type `ty` were acknowledged.
    /// Waits (at most 30 s) until a request beyond the first `n` came.
    pub async fn wait_requests_past(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.got().len() <= n {
            assert!(Instant::now() < deadline, "no request past the first {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_acked(&self, ty: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let have: std::collections::BTreeSet<String> = self
                .got()
                .iter()
                .filter(|g| g.acked && g.headers["pypes-event-type"] == ty)
                .map(|g| g.headers["pypes-event-id"].clone())
                .collect();
            if have.len() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{} of {n} {ty} events acknowledged", have.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
