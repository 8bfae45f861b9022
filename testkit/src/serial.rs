//! An HTTP proxy that lets one request at a time through to moto.
//!
//! moto's server is threaded and checks a DynamoDB condition and applies
//! the write without a lock, so two concurrent conditional writes can both
//! pass; real DynamoDB serialises the writes to an item. Tests of concurrent
//! claims and budget takes go through this proxy so they show the
//! function's conditions, not moto's race. Clients still send concurrently;
//! only moto's side is one at a time, as DynamoDB is per item.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

pub struct SerialProxy {
    addr: SocketAddr,
    ops: Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
}

/// The operation a DynamoDB request names (`X-Amz-Target:
/// DynamoDB_20120810.PutItem` → `PutItem`).
fn operation(head: &[u8]) -> Option<String> {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-amz-target"))
        .map(|(_, v)| v.trim().rsplit('.').next().unwrap_or("").to_string())
}

/// The position just past the blank line that ends the head, if read.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads one request (head and a Content-Length body; the AWS SDK sends
/// no chunked bodies). `None` when the client has closed.
async fn read_request(client: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = head_end(buf) {
            let total = end + content_length(&buf[..end]);
            while buf.len() < total {
                let n = client.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            let rest = buf.split_off(total);
            return Some(std::mem::replace(buf, rest));
        }
        let n = client.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one request on its own connection, asking moto to close it after
/// the answer, so the answer is everything up to EOF.
async fn exchange(target: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    let end = head_end(request)?;
    let mut upstream = TcpStream::connect(target).await.ok()?;
    let mut out = Vec::with_capacity(request.len() + 20);
    out.extend_from_slice(&request[..end - 2]);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&request[end..]);
    upstream.write_all(&out).await.ok()?;
    let mut answer = Vec::new();
    upstream.read_to_end(&mut answer).await.ok()?;
    Some(answer)
}

/// One request per client connection: moto's answer carries
/// `Connection: close`, so the client opens a new connection for the next.
async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    gate: Arc<Mutex<()>>,
    ops: Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
) {
    let mut buf = Vec::new();
    let Some(request) = read_request(&mut client, &mut buf).await else {
        return;
    };
    if let Some(op) = head_end(&request).and_then(|end| operation(&request[..end])) {
        *ops.lock().expect("ops").entry(op).or_default() += 1;
    }
    let answer = {
        let _one_at_a_time = gate.lock().await;
        exchange(target, &request).await
    };
    if let Some(answer) = answer {
        let _ = client.write_all(&answer).await;
    }
    let _ = client.shutdown().await;
}

impl SerialProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the serial proxy");
        let addr = listener.local_addr().expect("addr");
        let gate = Arc::new(Mutex::new(()));
        let ops = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let counted = ops.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(serve(client, target, gate.clone(), counted.clone()));
            }
        });
        Self { addr, ops }
    }

    /// DynamoDB requests seen so far, by operation.
    pub fn calls(&self) -> std::collections::BTreeMap<String, usize> {
        self.ops.lock().expect("ops").clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
