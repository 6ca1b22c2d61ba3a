//! Validation of single path components ("names") as they cross the wire.
//!
//! **Architecture Invariant**: every name the server stores passed `validate_name`. The client
//! validates before sending (so applications get the errno without a round trip) and the server
//! validates again on receipt (so a hostile peer cannot store a bad name).

use crate::Errno;

/// Longest name in bytes, as on Linux (`NAME_MAX`).
pub const NAME_LEN_MAX: usize = 255;

/// Longest symlink target in bytes (`PATH_MAX` less the terminating NUL).
pub const SYMLINK_TARGET_LEN_MAX: usize = 4095;

/// Longest extended attribute name in bytes (`XATTR_NAME_MAX`).
pub const XATTR_NAME_LEN_MAX: usize = 255;

/// Largest extended attribute value in bytes (`XATTR_SIZE_MAX`).
pub const XATTR_VALUE_LEN_MAX: usize = 65536;

/// A name is 1 to 255 bytes, contains no `/` and no NUL, and is not `.` or `..`.
pub fn validate_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_LEN_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name == b"." || name == b".." {
        return Err(Errno::EINVAL);
    }
    if name.iter().any(|&byte| byte == b'/' || byte == 0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// A symlink target is 1 to 4095 bytes without NUL. It is stored as given and never followed
/// by the server.
pub fn validate_symlink_target(target: &[u8]) -> Result<(), Errno> {
    if target.is_empty() {
        return Err(Errno::ENOENT);
    }
    if target.len() > SYMLINK_TARGET_LEN_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if target.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// An xattr name is 1 to 255 bytes without NUL.
pub fn validate_xattr_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.len() > XATTR_NAME_LEN_MAX {
        return Err(Errno::ERANGE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_at_the_edges() {
        assert_eq!(validate_name(b"a"), Ok(()));
        assert_eq!(validate_name(&[b'x'; 255]), Ok(()));
        assert_eq!(validate_name(&[b'x'; 256]), Err(Errno::ENAMETOOLONG));
        assert_eq!(validate_name(b""), Err(Errno::EINVAL));
        assert_eq!(validate_name(b"."), Err(Errno::EINVAL));
        assert_eq!(validate_name(b".."), Err(Errno::EINVAL));
        assert_eq!(validate_name(b"..."), Ok(()));
        assert_eq!(validate_name(b"a/b"), Err(Errno::EINVAL));
        assert_eq!(validate_name(b"a\0b"), Err(Errno::EINVAL));
        assert_eq!(validate_name("é✓".as_bytes()), Ok(()));
        assert_eq!(validate_name(&[0xff, 0xfe]), Ok(()), "names are bytes, not UTF-8");
    }

    proptest! {
        // A name is accepted exactly when it has the shape Linux accepts for one component.
        #[test]
        fn accepted_iff_well_formed(name in proptest::collection::vec(any::<u8>(), 0..300)) {
            let well_formed = !name.is_empty()
                && name.len() <= NAME_LEN_MAX
                && name != b"."
                && name != b".."
                && !name.contains(&b'/')
                && !name.contains(&0);
            prop_assert_eq!(validate_name(&name).is_ok(), well_formed);
        }
    }
}
