//! A TCP proxy that can be taken down: while down it answers every request
//! with `503 Service Unavailable` (as an overloaded AWS endpoint does) or
//! drops the connection, so tests can show an outage and the recovery.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Answer503,
    Drop,
}

#[derive(Clone)]
pub struct FlakyProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
}

impl FlakyProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(0));
        let m = mode.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                match m.load(Ordering::SeqCst) {
                    0 => {
                        tokio::spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        });
                    }
                    1 => {
                        tokio::spawn(async move {
                            let mut buf = [0u8; 16384];
                            let _ = inbound.read(&mut buf).await;
                            let body = r#"{"__type":"ServiceUnavailable","message":"Service Unavailable"}"#;
                            let resp = format!(
                                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = inbound.write_all(resp.as_bytes()).await;
                        });
                    }
                    _ => drop(inbound),
                }
            }
        });
        Self { addr, mode }
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
}
