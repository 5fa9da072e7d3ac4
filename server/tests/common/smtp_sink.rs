//! A minimal SMTP server on loopback that keeps every message it is given, so tests see real
//! SMTP conversations (EHLO, MAIL, RCPT, DATA) end to end; optionally it requires AUTH PLAIN,
//! and STARTTLS with a certificate from the test CA in `tests/fixtures/`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{rustls, TlsAcceptor};

/// The test CA that signed the sink's TLS certificate (for 127.0.0.1).
pub const TEST_CA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp-test-ca.pem");

pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    recipient_reply: RecipientReply,
    task: JoinHandle<()>,
}

/// A message as the sink got it.
#[derive(Clone)]
struct Received {
    data: String,
    over_tls: bool,
}

/// What the sink asks of clients.
#[derive(Clone, Default)]
struct Rules {
    /// The base64 AUTH PLAIN response that is accepted; none: no AUTH offered or needed.
    plain_auth: Option<String>,
    /// STARTTLS offered, and required before AUTH and MAIL.
    tls: Option<TlsAcceptor>,
    /// How long the answer to a message containing "slow" takes.
    slow: Duration,
    recipient_reply: RecipientReply,
}

/// The reply to every recipient (RCPT TO), e.g. "550 5.1.1 no such user"; none: accepted.
type RecipientReply = Arc<Mutex<Option<&'static str>>>;

impl Rules {
    fn refusal(&self) -> Option<&'static str> {
        *self.recipient_reply.lock().expect("sink lock")
    }
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
        Self::serve(listener, Rules { plain_auth: Some(plain_b64.to_owned()), ..Rules::default() })
    }

    /// A sink that answers each message containing "slow" only after `slow` (received at once,
    /// answered late), and refuses (554) each message containing "spam".
    pub async fn start_slow(slow: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        Self::serve(listener, Rules { slow, ..Rules::default() })
    }

    /// Like [`SmtpSink::start_with_auth`], but offering STARTTLS and requiring it before AUTH
    /// and MAIL, like a typical submission server.
    pub async fn start_with_starttls_and_auth(plain_b64: &str) -> Self {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let certs = CertificateDer::pem_file_iter(format!("{fixtures}/smtp-test-server.pem"))
            .expect("test certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("test certificate");
        let key = PrivateKeyDer::from_pem_file(format!("{fixtures}/smtp-test-server.key")).expect("test key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("TLS config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        let rules = Rules {
            plain_auth: Some(plain_b64.to_owned()),
            tls: Some(TlsAcceptor::from(Arc::new(config))),
            ..Rules::default()
        };
        Self::serve(listener, rules)
    }

    /// A sink that answers every recipient with `reply` (e.g. "550 5.1.1 no such user", or
    /// "451 4.3.0 try again later").
    pub async fn start_refusing_recipients(reply: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        Self::serve(listener, Rules { recipient_reply: Arc::new(Mutex::new(Some(reply))), ..Rules::default() })
    }

    /// From now on, recipients are accepted (e.g. a mailbox was set up meanwhile).
    pub fn accept_recipients(&self) {
        *self.recipient_reply.lock().expect("sink lock") = None;
    }

    /// On a given port (e.g. after pretending the SMTP server was down).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind SMTP sink");
        Self::serve(listener, Rules::default())
    }

    fn serve(listener: TcpListener, rules: Rules) -> Self {
        let port = listener.local_addr().expect("address").port();
        let received = Arc::new(Mutex::new(Vec::<Received>::new()));
        let recipient_reply = rules.recipient_reply.clone();
        let task = tokio::spawn(accept(listener, received.clone(), rules));
        Self { port, received, recipient_reply, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message's DATA so far.
    pub fn messages(&self) -> Vec<String> {
        self.received.lock().expect("sink lock").iter().map(|r| r.data.clone()).collect()
    }

    /// Every message's Subject so far, in the order they arrived.
    pub fn subjects(&self) -> Vec<String> {
        self.messages().iter().map(|m| subject(m)).collect()
    }

    /// For every message so far: whether it came over TLS.
    pub fn messages_over_tls(&self) -> Vec<bool> {
        self.received.lock().expect("sink lock").iter().map(|r| r.over_tls).collect()
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

async fn accept(listener: TcpListener, received: Arc<Mutex<Vec<Received>>>, rules: Rules) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        let (received, rules) = (received.clone(), rules.clone());
        tokio::spawn(async move {
            if socket.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                return;
            }
            let Some(plain) = converse(socket, false, &received, &rules).await else { return };
            // The client asked for STARTTLS: the conversation starts over, encrypted.
            let Some(acceptor) = rules.tls.clone() else { return };
            if let Ok(secure) = acceptor.accept(plain).await {
                converse(secure, true, &received, &rules).await;
            }
        });
    }
}

/// One SMTP conversation on `stream`; returns the stream when the client asks for STARTTLS
/// (only offered on a plain stream by a sink with TLS), None when it is over.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    over_tls: bool,
    received: &Mutex<Vec<Received>>,
    rules: &Rules,
) -> Option<S> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    let must_start_tls = rules.tls.is_some() && !over_tls;
    let mut authenticated = rules.plain_auth.is_none();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            if must_start_tls {
                b"250-sink\r\n250 STARTTLS\r\n"
            } else if rules.plain_auth.is_some() {
                b"250-sink\r\n250 AUTH PLAIN\r\n"
            } else {
                b"250 sink\r\n"
            }
        } else if upper.starts_with("HELO") {
            b"250 sink\r\n"
        } else if upper.starts_with("STARTTLS") && must_start_tls {
            write.write_all(b"220 go ahead\r\n").await.ok()?;
            return Some(lines.into_inner().into_inner().unsplit(write));
        } else if must_start_tls && (upper.starts_with("AUTH") || upper.starts_with("MAIL")) {
            b"530 must issue a STARTTLS command first\r\n"
        } else if upper.starts_with("AUTH PLAIN") {
            // The response on the same line, or on the next after a 334.
            let mut response = line.get("AUTH PLAIN".len()..).unwrap_or_default().trim().to_owned();
            if response.is_empty() {
                write.write_all(b"334 \r\n").await.ok()?;
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
        } else if let Some(reply) = upper.starts_with("RCPT").then(|| rules.refusal()).flatten() {
            write.write_all(format!("{reply}\r\n").as_bytes()).await.ok()?;
            continue;
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go on\r\n").await.ok()?;
            let mut data = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    break;
                }
                data.push_str(&l);
                data.push('\n');
            }
            if data.contains("spam") {
                b"554 refused as spam\r\n"
            } else {
                let slow = data.contains("slow");
                received.lock().expect("sink lock").push(Received { data, over_tls });
                if slow {
                    tokio::time::sleep(rules.slow).await;
                }
                b"250 queued\r\n"
            }
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return None;
        } else {
            b"250 ok\r\n"
        };
        write.write_all(reply).await.ok()?;
    }
    None
}

/// A message's Subject header as written (plain ASCII subjects read as they are).
pub fn subject(message: &str) -> String {
    message.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_owned()
}
