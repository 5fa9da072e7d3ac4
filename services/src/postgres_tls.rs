//! TLS to PostgreSQL, for a `DATABASE_URL` with `sslmode=require` (managed PostgreSQL services
//! ask for it): rustls, verifying the server's certificate and name against the system's
//! certificate authorities, or those of the PEM file `SSL_CERT_FILE` names (a private CA), as
//! the Redis connection does. Stricter than libpq's `require`, which checks nothing: a
//! connection that can be intercepted would carry the database's password. libpq's
//! `verify-ca` checks the authority only, for a server reached by a name its certificate does
//! not carry (a private address in front of a managed database).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{self, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

/// What of PostgreSQL's certificate is checked, as `sslmode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateCheck {
    /// Signed by a known authority and issued for the host name of the URL (`verify-full`,
    /// and `require` here).
    AuthorityAndName,
    /// Signed by a known authority, whatever name it carries (`verify-ca`).
    AuthorityOnly,
}

/// Makes a verified TLS session per connection; built once per process and check (the
/// authorities are read from disk then).
#[derive(Clone)]
pub struct VerifiedTls {
    config: Arc<ClientConfig>,
}

impl VerifiedTls {
    /// The process's instance for `check`, or why none could be made (no certificate authority
    /// could be read): tried again at the next connection, as a mounted file may be back by then.
    pub fn get(check: CertificateCheck) -> Result<Self, String> {
        static WITH_NAME: OnceLock<VerifiedTls> = OnceLock::new();
        static AUTHORITY_ONLY: OnceLock<VerifiedTls> = OnceLock::new();
        let made = match check {
            CertificateCheck::AuthorityAndName => &WITH_NAME,
            CertificateCheck::AuthorityOnly => &AUTHORITY_ONLY,
        };
        if let Some(tls) = made.get() {
            return Ok(tls.clone());
        }
        let tls = Self::with_system_authorities(check)?;
        Ok(made.get_or_init(|| tls).clone())
    }

    fn with_system_authorities(check: CertificateCheck) -> Result<Self, String> {
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
        let provider = rustls::crypto::ring::default_provider();
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match check {
            CertificateCheck::AuthorityAndName => builder.with_root_certificates(roots),
            CertificateCheck::AuthorityOnly => {
                let verifier = AuthorityOnly { roots: Arc::new(roots), algorithms };
                builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
            }
        };
        let mut config = builder.with_no_client_auth();
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
    type Error = io::Error;

    /// `host` is the URL's host: the name (or IP address) the certificate must be for, sent
    /// to the server (SNI: some managed services route by it). Empty when the URL gives only a
    /// `hostaddr`; libpq refuses that too ("host name must be specified").
    fn make_tls_connect(&mut self, host: &str) -> io::Result<TlsSession> {
        let refused = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        if host.is_empty() {
            return Err(refused("TLS needs the server's name: DATABASE_URL gives a hostaddr but no host".to_owned()));
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| refused(format!("{host:?} is not a host name or IP address")))?;
        Ok(TlsSession { connector: TlsConnector::from(self.config.clone()), name })
    }
}

/// `verify-ca`: the chain up to a known authority is checked as for `verify-full`, the name
/// is not.
#[derive(Debug)]
struct AuthorityOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AuthorityOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
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
