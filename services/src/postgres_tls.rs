//! TLS to PostgreSQL, for a `DATABASE_URL` with `sslmode=require` (managed PostgreSQL services
//! ask for it): rustls, verifying the server's certificate and name against the system's
//! certificate authorities, or those of the PEM file `SSL_CERT_FILE` names (a private CA), as
//! the Redis connection does. Stricter than libpq's `require`, which checks nothing: a
//! connection that can be intercepted would carry the database's password.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls::pki_types::{InvalidDnsNameError, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Makes a verified TLS session per connection; built once per process (the authorities are
/// read from disk then).
#[derive(Clone)]
pub struct VerifiedTls {
    config: Arc<ClientConfig>,
}

impl VerifiedTls {
    /// The process's one instance, or why none could be made (no certificate authority could
    /// be read): tried again at the next connection, as a mounted file may be back by then.
    pub fn get() -> Result<Self, String> {
        static TLS: OnceLock<VerifiedTls> = OnceLock::new();
        if let Some(tls) = TLS.get() {
            return Ok(tls.clone());
        }
        let tls = Self::with_system_authorities()?;
        Ok(TLS.get_or_init(|| tls).clone())
    }

    fn with_system_authorities() -> Result<Self, String> {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
            return Err(format!(
                "no certificate authority to verify PostgreSQL's certificate with (SSL_CERT_FILE or the system's): {}",
                if why.is_empty() { "none found".to_owned() } else { why.join("; ") }
            ));
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // PostgreSQL 17 asks for it with `sslnegotiation=direct`; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self { config: Arc::new(config) })
    }
}

impl<S> MakeTlsConnect<S> for VerifiedTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = TlsSession;
    type Error = InvalidDnsNameError;

    /// `host` is the URL's host: the name (or IP address) the certificate must be for.
    fn make_tls_connect(&mut self, host: &str) -> Result<TlsSession, InvalidDnsNameError> {
        let name = ServerName::try_from(host.to_owned())?;
        Ok(TlsSession { connector: TlsConnector::from(self.config.clone()), name })
    }
}

/// One connection's handshake, to the server `name`.
pub struct TlsSession {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for TlsSession
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { Ok(TlsStream(self.connector.connect(self.name, stream).await?)) })
    }
}

/// A connection over TLS, as tokio-postgres takes it.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// None: SCRAM authentication goes without channel binding (as libpq's default `prefer`
    /// does when the server offers no binding the client supports).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
