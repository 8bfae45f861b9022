//! A TCP proxy that can be taken down: while down it answers every request
//! with `503 Service Unavailable` (as an overloaded AWS endpoint does) or
//! drops the connection, so tests can show an outage and the recovery. It
//! also counts the `GetSecretValue` requests it forwards, for benchmarks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Answer503,
    Drop,
}

/// What the proxy counts in forwarded requests (the AWS operation name in
/// `X-Amz-Target`).
const COUNTED: &[u8] = b"GetSecretValue";

#[derive(Clone)]
pub struct FlakyProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    seen: Arc<AtomicUsize>,
}

fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

async fn forward(inbound: TcpStream, target: SocketAddr, seen: Arc<AtomicUsize>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut ci, mut co) = inbound.into_split();
    let (mut si, mut so) = outbound.into_split();
    let up = async {
        let mut buf = vec![0u8; 16384];
        while let Ok(n) = ci.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.fetch_add(occurrences(&buf[..n], COUNTED), Ordering::SeqCst);
            if so.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = so.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut si, &mut co).await;
        let _ = co.shutdown().await;
    };
    tokio::join!(up, down);
}

async fn answer_503(mut inbound: TcpStream) {
    let mut buf = [0u8; 16384];
    let _ = inbound.read(&mut buf).await;
    let body = r#"{"__type":"ServiceUnavailable","message":"Service Unavailable"}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = inbound.write_all(resp.as_bytes()).await;
}

impl FlakyProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let (m, counter) = (mode.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                match m.load(Ordering::SeqCst) {
                    0 => {
                        tokio::spawn(forward(inbound, target, counter.clone()));
                    }
                    1 => {
                        tokio::spawn(answer_503(inbound));
                    }
                    _ => drop(inbound),
                }
            }
        });
        Self { addr, mode, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        let v = match mode {
            Mode::Up => 0,
            Mode::Answer503 => 1,
            Mode::Drop => 2,
        };
        self.mode.store(v, Ordering::SeqCst);
    }

    /// How many `GetSecretValue` requests went through.
    pub fn secret_fetches(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}
