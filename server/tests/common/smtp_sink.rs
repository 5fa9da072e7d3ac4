//! A minimal SMTP server on loopback that keeps every message it is given, so tests see real
//! SMTP conversations (EHLO, MAIL, RCPT, DATA) end to end; optionally it requires AUTH PLAIN.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

/// What the sink asks of clients.
#[derive(Clone, Default)]
struct Rules {
    /// The base64 AUTH PLAIN response that is accepted; none: no AUTH offered or needed.
    plain_auth: Option<String>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        Self::serve(listener, Rules::default())
    }

    /// A sink that offers AUTH PLAIN and takes mail only after it, from a client presenting
    /// `plain_b64` (base64 of `\0user\0password`).
    pub async fn start_with_auth(plain_b64: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        Self::serve(listener, Rules { plain_auth: Some(plain_b64.to_owned()) })
    }

    /// On a given port (e.g. after pretending the SMTP server was down).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind SMTP sink");
        Self::serve(listener, Rules::default())
    }

    /// A port where nothing listens (yet).
    pub async fn unused_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address").port()
    }

    fn serve(listener: TcpListener, rules: Rules) -> Self {
        let port = listener.local_addr().expect("address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept(listener, received.clone(), rules));
        Self { port, received, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message's DATA so far.
    pub fn messages(&self) -> Vec<String> {
        self.received.lock().expect("sink lock").clone()
    }

    /// Waits (up to `secs`) until at least `n` messages arrived; returns them all.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<String> {
        for _ in 0..secs * 10 {
            if self.messages().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.messages()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, received: Arc<Mutex<Vec<String>>>, rules: Rules) {
    loop {
        let Ok((socket, _)) = listener.accept().await else { return };
        let (received, rules) = (received.clone(), rules.clone());
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            let _ = write.write_all(b"220 sink ESMTP\r\n").await;
            let mut authenticated = rules.plain_auth.is_none();
            while let Ok(Some(line)) = lines.next_line().await {
                let upper = line.to_ascii_uppercase();
                let reply: &[u8] = if upper.starts_with("EHLO") {
                    if rules.plain_auth.is_some() {
                        b"250-sink\r\n250 AUTH PLAIN\r\n"
                    } else {
                        b"250 sink\r\n"
                    }
                } else if upper.starts_with("HELO") {
                    b"250 sink\r\n"
                } else if upper.starts_with("AUTH PLAIN") {
                    // The response on the same line, or on the next after a 334.
                    let mut response = line.get("AUTH PLAIN".len()..).unwrap_or_default().trim().to_owned();
                    if response.is_empty() {
                        let _ = write.write_all(b"334 \r\n").await;
                        response = lines.next_line().await.ok().flatten().unwrap_or_default();
                    }
                    authenticated = rules.plain_auth.as_deref() == Some(response.trim());
                    if authenticated {
                        b"235 authenticated\r\n"
                    } else {
                        b"535 authentication failed\r\n"
                    }
                } else if upper.starts_with("MAIL") && !authenticated {
                    b"530 authentication required\r\n"
                } else if upper.starts_with("DATA") {
                    let _ = write.write_all(b"354 go on\r\n").await;
                    let mut data = String::new();
                    while let Ok(Some(l)) = lines.next_line().await {
                        if l == "." {
                            break;
                        }
                        data.push_str(&l);
                        data.push('\n');
                    }
                    received.lock().expect("sink lock").push(data);
                    b"250 queued\r\n"
                } else if upper.starts_with("QUIT") {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    b"250 ok\r\n"
                };
                let _ = write.write_all(reply).await;
            }
        });
    }
}
