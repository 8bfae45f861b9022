//! A callback receiver as a SOAR's webhook endpoint would be: it verifies
//! the Standard Webhooks signature (refusing a bad one with 401, as the
//! official libraries' users do), keeps what it received, and answers a
//! scripted sequence of statuses (`500, 500, 200`: down twice, then up; or
//! `400` for ever: a receiver that refuses).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// One POST as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub body: serde_json::Value,
    /// Whether the signature verified with the receiver's key.
    pub verified: bool,
    /// The status it was answered.
    pub answered: u16,
}

#[derive(Default)]
struct Inner {
    script: Vec<u16>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct CallbackReceiver {
    inner: Arc<Mutex<Inner>>,
    key: Arc<Vec<u8>>,
    addr: SocketAddr,
}

impl CallbackReceiver {
    /// `secret` is the `whsec_` value; `script` the statuses to answer in
    /// turn, the last repeating (empty: always 200).
    pub async fn start(secret: &str, script: &[u16]) -> Self {
        let key = B64
            .decode(secret.trim_start_matches("whsec_"))
            .expect("a whsec_ test secret");
        let inner = Arc::new(Mutex::new(Inner {
            script: script.to_vec(),
            received: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the callback receiver");
        let addr = listener.local_addr().expect("local addr");
        let me = Self {
            inner,
            key: Arc::new(key),
            addr,
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(me.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        me
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.addr.port())
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    fn verify(&self, h: &HeaderMap, body: &[u8]) -> bool {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let (id, ts, sigs) = (
            get("webhook-id"),
            get("webhook-timestamp"),
            get("webhook-signature"),
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
        !id.is_empty() && sigs.split(' ').any(|s| s == expected)
    }
}

async fn receive(State(me): State<CallbackReceiver>, h: HeaderMap, body: Bytes) -> StatusCode {
    let verified = me.verify(&h, &body);
    let mut g = me.inner.lock().unwrap();
    let answered = if !verified {
        401
    } else if g.script.len() > 1 {
        g.script.remove(0)
    } else {
        g.script.first().copied().unwrap_or(200)
    };
    g.received.push(Received {
        webhook_id: h
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        verified,
        answered,
    });
    StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
