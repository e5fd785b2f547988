//! Files by hash: every byte that arrives is checked.

use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> String {
    sha256(&std::fs::read(path).expect("read file to hash"))
}

/// Writes `size` pseudo-random bytes to `path`; returns their SHA-256.
pub fn random_file(path: &Path, size: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(size as u64 ^ 0x5eed);
    let mut data = vec![0u8; size];
    rng.fill(&mut data);
    std::fs::write(path, &data).expect("write fixture");
    sha256(&data)
}
