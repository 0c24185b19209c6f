//! Reading the PEM files the config names (the listener's certificate, the app's CA).

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use rustls::pki_types::CertificateDer;

/// The certificates in the PEM file at `path`, which the config key `key` names; the error
/// says which key, which file and why (unreadable, or no certificate in it).
pub(crate) fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let failed = |e: io::Error| format!("{key}: reading {}: {e}", path.display());
    let file = File::open(path).map_err(failed)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    if certs.is_empty() {
        return Err(format!("{key}: no certificate in {}", path.display()));
    }
    Ok(certs)
}
