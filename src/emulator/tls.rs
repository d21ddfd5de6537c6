//! HTTPS for the emulator: a throwaway certificate authority and a loopback certificate it
//! signs, made fresh at every start.
//!
//! Some clients only speak HTTPS (simple-salesforce builds every URL as `https://`), and
//! pipewarden must trust an extra CA from its configuration as it would behind a corporate
//! proxy; serving with a private CA exercises exactly that.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its handshake before the emulator drops it, so one stalled
/// client cannot hold up the others (handshakes run in the accept loop).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the emulator could not set up HTTPS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificates could not be made.
    #[error("generating the emulator's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused them.
    #[error("configuring TLS: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// The CA certificate clients must trust, and the acceptor serving the signed certificate.
pub(crate) struct TlsMaterial {
    /// PEM of the CA certificate.
    pub ca_pem: String,
    acceptor: TlsAcceptor,
}

/// Makes a CA and a certificate for `localhost`, `127.0.0.1` and `::1` signed by it.
pub(crate) fn generate() -> Result<TlsMaterial, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = named("pipewarden CRM emulator CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let mut server_params = CertificateParams::new(names)?;
    server_params.distinguished_name = named("pipewarden CRM emulator");
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &ca)?;

    let chain = vec![
        CertificateDer::from(server_cert.der().to_vec()),
        CertificateDer::from(ca.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    // Name the provider: the dependency tree enables both of rustls' backends, so it cannot
    // pick one by itself.
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A listener that hands axum TLS streams, skipping clients whose handshake fails.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    /// Serves TLS on an already bound listener.
    pub fn new(tcp: TcpListener, material: &TlsMaterial) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: material.acceptor.clone(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%err, "emulator: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handshake = self.acceptor.accept(stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(err)) => tracing::debug!(%err, %peer, "emulator: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "emulator: TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
