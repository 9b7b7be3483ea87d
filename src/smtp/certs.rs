//! Making certificates (rcgen), so that tests, the demo, a first try of STARTTLS and a site's
//! mutual TLS need no openssl: a self-signed certificate and its key, or a site CA and the
//! certificates it issues to each role, as PEM.

/// A certificate and its key, as PEM: self-signed, or issued by a [`SiteCa`].
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl PemPair {
    /// A certificate valid for `names` (IP addresses or DNS names), named after the first.
    pub fn self_signed(names: &[String]) -> Result<PemPair, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        // Named after its first name, so that an operator can tell certificates apart.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().map_or("hubrelay", String::as_str),
        );
        let key_pair = rcgen::KeyPair::generate()?;
        let certificate = params.self_signed(&key_pair)?;
        Ok(PemPair {
            cert_pem: certificate.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}

/// What a certificate the site CA issues may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A hub or node: a TLS server (SMTP, admin API) and a client of the other roles.
    Role,
    /// The operator's CLI: a client of the admin APIs only.
    Client,
}

/// A site's own certificate authority (`hubrelay tls generate --site`), for mutual TLS inside the
/// site: it signs one certificate per role, and every role trusts it as `tls_ca`.
pub struct SiteCa {
    certificate: rcgen::Certificate,
    key_pair: rcgen::KeyPair,
    /// Until when the certificates it issues are valid.
    until: (i32, u8, u8),
    /// From when (a day back, for clocks behind this one).
    from: (i32, u8, u8),
}

impl SiteCa {
    /// A new CA named after the site, valid `days` days from yesterday, as every certificate it
    /// issues.
    pub fn new(site: &str, days: u32) -> Result<SiteCa, rcgen::Error> {
        let today = chrono::Utc::now().date_naive();
        let ymd = |d: chrono::NaiveDate| {
            use chrono::Datelike;
            // Months and days always fit a u8.
            (d.year(), d.month() as u8, d.day() as u8)
        };
        let from = ymd(today - chrono::Days::new(1));
        let until = ymd(today + chrono::Days::new(u64::from(days)));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("hubrelay site CA ({site})"),
        );
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key_pair = rcgen::KeyPair::generate()?;
        let certificate = params.self_signed(&key_pair)?;
        Ok(SiteCa {
            certificate,
            key_pair,
            until,
            from,
        })
    }

    /// The CA's certificate (`tls_ca`).
    pub fn cert_pem(&self) -> String {
        self.certificate.pem()
    }

    /// The CA's key: needed only to issue more certificates, kept offline otherwise.
    pub fn key_pem(&self) -> String {
        self.key_pair.serialize_pem()
    }

    /// A certificate for `common_name`, valid for `names` (IP addresses or DNS names), with the
    /// extended key usages of `usage`, and a fresh key.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        usage: Usage,
    ) -> Result<PemPair, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::Role => vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(self.from.0, self.from.1, self.from.2);
        params.not_after = rcgen::date_time_ymd(self.until.0, self.until.1, self.until.2);
        let key_pair = rcgen::KeyPair::generate()?;
        let certificate = params.signed_by(&key_pair, &self.certificate, &self.key_pair)?;
        Ok(PemPair {
            cert_pem: certificate.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}
