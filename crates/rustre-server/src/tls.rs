//! A cluster's own certificates, made by the server on its first start with TLS, as it makes
//! its secret: a CA (its certificate is what clients trust; its key is thrown away, so it signs
//! nothing else), and the server's certificate signed by it, for the names clients connect to.
//! To change the names, or to renew, remove the directory: the next start makes new ones, and
//! clients need the new `ca.pem`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The files in a directory of TLS material (`DATA/tls` for `rustre server --tls`).
pub const CA_FILE_NAME: &str = "ca.pem";
pub const CERT_FILE_NAME: &str = "cert.pem";
pub const KEY_FILE_NAME: &str = "key.pem";

/// How long a certificate made here is valid.
pub const VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Where a server's TLS material is: its chain and key, and the CA its clients trust.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles { ca: dir.join(CA_FILE_NAME), chain: dir.join(CERT_FILE_NAME), key: dir.join(KEY_FILE_NAME) }
    }
}

/// The TLS material in `dir`, made first (for `names`: DNS names or IP addresses, besides
/// `localhost`, `127.0.0.1` and `::1`) if its key is not there. Returns the files, and whether
/// they were made now.
pub fn load_or_generate(dir: &Path, names: &[String]) -> Result<(TlsFiles, bool), MakeError> {
    let files = TlsFiles::in_dir(dir);
    if files.key.exists() {
        return Ok((files, false));
    }
    generate(&files, names)?;
    Ok((files, true))
}

fn generate(files: &TlsFiles, names: &[String]) -> Result<(), MakeError> {
    let today = days_since_epoch();
    let (year, month, day) = civil_from_days(today - 1);
    let now = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = civil_from_days(today + VALIDITY_DAYS);
    let until = rcgen::date_time_ymd(year, month, day);
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name.push(rcgen::DnType::CommonName, "rustre cluster CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    ca.not_before = now;
    ca.not_after = until;
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_certificate = ca.self_signed(&ca_key)?;

    let mut all_names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for name in names {
        if !all_names.contains(name) {
            all_names.push(name.clone());
        }
    }
    let mut server = rcgen::CertificateParams::new(all_names)?;
    server.distinguished_name.push(rcgen::DnType::CommonName, "rustre server");
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now;
    server.not_after = until;
    let key = rcgen::KeyPair::generate()?;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let certificate = server.signed_by(&key, &issuer)?;

    let dir = files.key.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    write(&files.ca, ca_certificate.pem().as_bytes(), 0o644)?;
    write(&files.chain, format!("{}{}", certificate.pem(), ca_certificate.pem()).as_bytes(), 0o644)?;
    // Last: its presence says the set is complete.
    write(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(())
}

/// Today, as days since 1970-01-01 (a day before, for a clock a little behind, is used as the
/// start of validity).
fn days_since_epoch() -> i64 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0);
    seconds / 86_400
}

/// The calendar date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

fn io(path: &Path, source: std::io::Error) -> MakeError {
    MakeError::Io { path: path.display().to_string(), source }
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), MakeError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io(path, source))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|source| io(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let (files, made) = load_or_generate(&tls, &["files.example".to_string()]).unwrap();
        assert!(made);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777, 0o600);
        let chain = std::fs::read(&files.chain).unwrap();
        let (_, made) = load_or_generate(&tls, &[]).unwrap();
        assert!(!made);
        assert_eq!(std::fs::read(&files.chain).unwrap(), chain, "kept, not made again");
        rustre_proto::tls::server_config(&files.chain, &files.key).expect("a usable chain and key");
        rustre_proto::tls::ClientTls::trusting(&files.ca, None).expect("a usable CA");
    }
}
