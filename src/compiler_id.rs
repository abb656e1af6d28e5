//! The identity of a compiler binary: a content digest, memoised by path/size/mtime/ctime/inode
//! under `$DISTC_DIR/compilers/` so it is computed once per compiler install, not per call.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The stat fields that must all be unchanged for a memoised digest to be trusted.
fn stamp(md: &fs::Metadata) -> String {
    format!(
        "{} {} {} {} {} {}",
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
        md.ino()
    )
}

/// SHA-256 of the compiler at `real` (already resolved, no symlinks), memoised in `distc_dir`.
pub fn compiler_digest(distc_dir: &Path, real: &Path) -> io::Result<[u8; 32]> {
    let md = fs::metadata(real)?;
    let stamp = stamp(&md);
    let memo = distc_dir.join("compilers").join(hex::encode(
        &Sha256::digest(real.as_os_str().as_bytes())[..16],
    ));
    if let Ok(text) = fs::read_to_string(&memo)
        && let Some((s, d)) = text.trim_end().rsplit_once(' ')
        && s == stamp
    {
        let mut out = [0u8; 32];
        if hex::decode_to_slice(d, &mut out).is_ok() {
            return Ok(out);
        }
    }
    let bytes = fs::read(real)?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    // Memoising is an optimisation: a read-only cache dir just means hashing every time.
    let _ = fs::create_dir_all(memo.parent().unwrap_or(distc_dir)).and_then(|()| {
        crate::bundle::write_atomic(
            &memo,
            format!("{stamp} {}\n", hex::encode(digest)).as_bytes(),
        )
    });
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memoised_and_invalidated() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("cc");
        fs::write(&c, b"one").unwrap();
        let a = compiler_digest(d.path(), &c).unwrap();
        assert_eq!(a, compiler_digest(d.path(), &c).unwrap());
        fs::write(&c, b"two").unwrap();
        let b = compiler_digest(d.path(), &c).unwrap();
        assert_ne!(a, b);
        assert_eq!(b, <[u8; 32]>::from(Sha256::digest(b"two")));
    }
}
