//! Making certificates (rcgen), so that tests, the demo and a first try of STARTTLS need no
//! openssl: a self-signed certificate and its key, as PEM.

/// A self-signed certificate and its key, as PEM.
pub struct SelfSigned {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl SelfSigned {
    /// A certificate valid for `names` (IP addresses or DNS names), named after the first.
    pub fn new(names: &[String]) -> Result<SelfSigned, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        // Named after its first name, so that an operator can tell certificates apart.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().map_or("hubrelay", String::as_str),
        );
        let key_pair = rcgen::KeyPair::generate()?;
        let certificate = params.self_signed(&key_pair)?;
        Ok(SelfSigned {
            cert_pem: certificate.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}
