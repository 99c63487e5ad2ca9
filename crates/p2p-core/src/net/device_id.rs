//! Device ids: the SHA-256 of a device's public key (its certificate's SubjectPublicKeyInfo),
//! written in Syncthing's format — base32 with a Luhn mod 32 check character after every 13
//! characters, in eight groups of seven: `P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-…`.
//!
//! The check characters catch typos when a person copies an id; parsing accepts lower case
//! and missing dashes or spaces.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A device id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 32]);

/// Why a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Wrong number of characters.
    #[error("a device id has 56 characters (8 groups of 7), got {0}")]
    Length(usize),
    /// A character outside base32.
    #[error("{0:?} is not a base32 character (A–Z, 2–7)")]
    Character(char),
    /// A check character does not match: a typo.
    #[error("check character of group {0} does not match (a typo?)")]
    Check(usize),
}

impl DeviceId {
    /// The id of a public key given as DER SubjectPublicKeyInfo.
    pub fn from_spki(spki_der: &[u8]) -> Self {
        DeviceId(Sha256::digest(spki_der).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first group of seven characters, for tables.
    pub fn short(&self) -> String {
        self.to_string()[..7].to_owned()
    }
}

fn luhn32(s: &[u8]) -> Result<u8, DeviceIdError> {
    let mut factor = 1;
    let mut sum = 0;
    for &c in s {
        let cp = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or(DeviceIdError::Character(c as char))?;
        let addend = factor * cp;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    Ok(ALPHABET[(32 - sum % 32) % 32])
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b32 = data_encoding::BASE32_NOPAD.encode(&self.0);
        let mut with_check = Vec::with_capacity(56);
        for group in b32.as_bytes().chunks(13) {
            with_check.extend_from_slice(group);
            // The alphabet is the encoder's own, so the check cannot fail.
            with_check.push(luhn32(group).unwrap_or(b'A'));
        }
        for (i, group) in with_check.chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Upper-cases and strips dashes and spaces.
pub fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = normalize(s);
        if s.len() != 56 {
            return Err(DeviceIdError::Length(s.chars().count()));
        }
        let bytes = s.as_bytes();
        let mut data = Vec::with_capacity(52);
        for (i, group) in bytes.chunks(14).enumerate() {
            let (body, check) = group.split_at(13);
            if luhn32(body)? != check[0] {
                return Err(DeviceIdError::Check(i + 1));
            }
            data.extend_from_slice(body);
        }
        let raw = data_encoding::BASE32_NOPAD
            .decode(&data)
            .map_err(|_| DeviceIdError::Length(56))?;
        let arr: [u8; 32] = raw.try_into().map_err(|_| DeviceIdError::Length(56))?;
        Ok(DeviceId(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real ids in Syncthing's format.
    const KNOWN: [&str; 2] = [
        "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2",
        "7CFNTQM-IMTJBHJ-3UWRDIU-ZGQJFR6-VCXZ3NB-XUH3KZO-N52ITXR-LAIYUAU",
    ];

    #[test]
    fn known_ids_round_trip() {
        for s in KNOWN {
            let id: DeviceId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            let sloppy = s.to_lowercase().replace('-', " ");
            assert_eq!(sloppy.parse::<DeviceId>().unwrap(), id);
        }
    }

    #[test]
    fn typos_are_caught() {
        let mut s = KNOWN[0].to_owned();
        s.replace_range(3..4, "X");
        assert!(matches!(
            s.parse::<DeviceId>(),
            Err(DeviceIdError::Check(1))
        ));
        assert!(matches!(
            "ABC".parse::<DeviceId>(),
            Err(DeviceIdError::Length(3))
        ));
        let with_one = KNOWN[0].replace('P', "1");
        assert!(matches!(
            with_one.parse::<DeviceId>(),
            Err(DeviceIdError::Character('1'))
        ));
    }

    #[test]
    fn ids_of_keys_format_and_parse() {
        let id = DeviceId::from_spki(b"some public key");
        let s = id.to_string();
        assert_eq!(s.len(), 63);
        assert_eq!(s.parse::<DeviceId>().unwrap(), id);
        assert_eq!(id.short(), &s[..7]);
    }
}
