//! moto's server, started once per test process, for Secrets Manager over
//! real HTTP through the real AWS SDK client.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Moto {
    pub endpoint: String,
    _child: ChildGuard,
}

/// Keeps the shell's stdin open. Statics are never dropped, so moto's
/// lifetime is tied to this pipe instead: when the test process exits the
/// pipe closes, `read` returns and the shell kills moto.
#[allow(dead_code)]
struct ChildGuard(Child, Option<std::process::ChildStdin>);

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The shared moto server, from the tests' Python environment
/// ([`crate::python_env`], made on first use).
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(start)
}

/// A moto server of its own, beside the shared one: moto is one Python
/// process, so a service given its own server does not wait for another's
/// calls (the bulk benchmark gives SQS one, whose receives scan every
/// message a queue holds). Stopped when the value is dropped.
pub fn another() -> Moto {
    start()
}

fn start() -> Moto {
    {
        let moto_server = crate::python_env().bin("moto_server");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let script =
            format!("\"$0\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; read _; kill $m");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .arg(&moto_server)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let stdin = child.stdin.take();
        let endpoint = format!("http://127.0.0.1:{port}");
        // Readiness: wait until the port accepts a connection.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} did not start ({status})", moto_server.display());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto {
            endpoint,
            _child: ChildGuard(child, stdin),
        }
    }
}
