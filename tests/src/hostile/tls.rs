//! TLS as a misbehaving device does it: client configurations that accept any server and
//! present whatever certificate and key they are given (whether or not they belong together),
//! and a TLS 1.2 ClientHello built by hand.

use std::sync::Arc;

use p2p_core::net::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WantsClientCert};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ConfigBuilder, DigitallySignedStruct, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (still checking its handshake signature): for clients that
/// misbehave on purpose and do not care who the daemon is.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents a fixed certificate and signs with a fixed key, whether or not they belong
/// together (`with_client_auth_cert` would refuse a pair that does not).
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS 1.3 client configuration that accepts any server, before its client certificate is
/// chosen (`with_no_client_auth()` for a client that presents none).
pub fn tls13_any_server() -> ConfigBuilder<ClientConfig, WantsClientCert> {
    let p = provider();
    ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(p)))
}

/// A client that presents `cert` and signs with the key of `key_of`, accepting any server.
pub fn client_with(cert: CertificateDer<'static>, key_of: &Identity) -> Arc<ClientConfig> {
    let key = provider()
        .key_provider
        .load_private_key(key_of.private_key())
        .expect("load key");
    let ck = CertifiedKey::new(vec![cert], key);
    Arc::new(tls13_any_server().with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(ck)))))
}

/// A ClientHello that offers TLS 1.2 only (no supported_versions extension), with the
/// usual ECDHE suites and signature schemes, built by hand: the test's rustls has no TLS 1.2
/// (enabling its `tls12` feature would switch it on in p2pd too, through feature
/// unification).
pub fn tls12_client_hello() -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    let suites: [u16; 6] = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    let mut exts = Vec::new();
    ext(&mut exts, 10, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    ext(&mut exts, 11, &[0x01, 0x00]);
    ext(
        &mut exts,
        13,
        &[0x00, 0x08, 0x08, 0x07, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    ext(&mut exts, 0xff01, &[0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}
