//! TLS 1.3 with mutual authentication between device identities.
//!
//! One verifier serves both sides. It always verifies the TLS 1.3 handshake signature with the
//! key in the peer's certificate (proof of possession — a copied certificate without its key
//! fails), then pins: an outgoing connection may require an expected device id ("peer is
//! device X but expected Y"); an incoming one accepts any key that proves possession and the
//! node classifies the peer as trusted or not. Certificates are self-signed: there is no chain
//! and no name to check. TLS 1.2, session resumption and SNI are off.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::net::device_id::DeviceId;
use crate::net::identity::Identity;

/// Errors of building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS")]
pub struct TlsSetupError(#[source] rustls::Error);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The device id of a certificate's public key.
///
/// # Errors
/// A rustls error if the certificate does not parse.
pub fn device_id_of(cert: &CertificateDer<'_>) -> Result<DeviceId, rustls::Error> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(WebpkiError(format!("{e:?}"))),
        )))
    })?;
    Ok(DeviceId::from_spki(ee.subject_public_key_info().as_ref()))
}

#[derive(Debug)]
struct WebpkiError(String);

impl std::fmt::Display for WebpkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad certificate: {}", self.0)
    }
}

impl std::error::Error for WebpkiError {}

/// The one verifier for both directions.
#[derive(Debug)]
struct PeerVerifier {
    expected: Option<DeviceId>,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(expected: Option<DeviceId>) -> Self {
        PeerVerifier {
            expected,
            algs: provider().signature_verification_algorithms,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = device_id_of(cert)?;
        match self.expected {
            Some(want) if want != got => Err(rustls::Error::General(format!(
                "peer is device {got} but expected {want}"
            ))),
            _ => Ok(()),
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// The configuration for accepting peers: any device that proves its key.
///
/// # Errors
/// [`TlsSetupError`] if the identity's key does not fit.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError)?
        .with_client_cert_verifier(Arc::new(PeerVerifier::new(None)))
        .with_single_cert(vec![identity.cert.clone()], identity.private_key())
        .map_err(TlsSetupError)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The configuration for connecting to a peer, pinned to `expected` if given.
///
/// # Errors
/// [`TlsSetupError`] if the identity's key does not fit.
pub fn client_config(
    identity: &Identity,
    expected: Option<DeviceId>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(expected)))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.private_key())
        .map_err(TlsSetupError)?;
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The server name used for connecting; never sent (SNI is off, and an IP address is never
/// sent as SNI anyway) and never checked: the peer is identified by its key.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
}

/// The device id proven by the peer of a finished handshake.
///
/// # Errors
/// A rustls error if the peer presented no certificate.
pub fn peer_id(conn: &rustls::CommonState) -> Result<DeviceId, rustls::Error> {
    let certs = conn
        .peer_certificates()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let first = certs
        .first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    device_id_of(first)
}
