//! Salesforce record ids: 15 case-sensitive characters plus a 3-character checksum.
//!
//! The emulator numbers the records of each object and spells number `n` as the org would:
//! key prefix, a fixed pod and reserved part, nine base-62 digits, then the checksum that
//! makes the 18-character form case-insensitive.

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
/// Pod and reserved characters between the key prefix and the unique part.
const POD: &str = "5e0";

/// The 18-character id of record number `n` of the object with key prefix `prefix`.
pub(crate) fn sf_id(prefix: &str, n: u64) -> String {
    let mut id = String::with_capacity(18);
    id.push_str(prefix);
    id.push_str(POD);
    let mut digits = [b'0'; 9];
    let mut rest = n;
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    // Base-62 digits and checksum characters are ASCII, so these always convert.
    id.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    let suffix = checksum(id.as_bytes());
    id.push_str(std::str::from_utf8(&suffix).unwrap_or_default());
    id
}

/// The three checksum characters of a 15-character id: one per five characters, whose bits
/// say which of them are upper-case letters.
fn checksum(id15: &[u8]) -> [u8; 3] {
    let mut suffix = [0u8; 3];
    for (chunk, slot) in id15.chunks(5).zip(suffix.iter_mut()) {
        let mut bits = 0usize;
        for (position, byte) in chunk.iter().enumerate() {
            if byte.is_ascii_uppercase() {
                bits |= 1 << position;
            }
        }
        *slot = CHECKSUM[bits];
    }
    suffix
}

/// The record number and key prefix of an id in 15- or 18-character form, if it is one the
/// emulator could have issued (right pod, valid checksum when 18 characters long).
pub(crate) fn parse_sf_id(id: &str) -> Option<(&str, u64)> {
    let bytes = id.as_bytes();
    if !(bytes.len() == 15 || bytes.len() == 18) || !id.is_ascii() {
        return None;
    }
    if bytes.len() == 18 && checksum(&bytes[..15]) != bytes[15..18] {
        return None;
    }
    if &id[3..6] != POD {
        return None;
    }
    let n = bytes[6..15].iter().try_fold(0u64, |n, &byte| {
        let digit = BASE62.iter().position(|&candidate| candidate == byte)?;
        Some(n * 62 + digit as u64)
    })?;
    Some((&id[..3], n))
}

/// Whether `id` has the shape of a Salesforce id at all (`MALFORMED_ID` otherwise).
pub(crate) fn looks_like_id(id: &str) -> bool {
    (id.len() == 15 || id.len() == 18) && id.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_with_a_valid_checksum() {
        for n in [0, 1, 61, 62, 1_000_000, 13_537_086_546_263_551] {
            let id = sf_id("006", n);
            assert_eq!(id.len(), 18);
            assert_eq!(parse_sf_id(&id), Some(("006", n)), "{id}");
            assert_eq!(parse_sf_id(&id[..15]), Some(("006", n)));
        }
    }

    #[test]
    fn checksum_follows_the_upper_case_positions() {
        // A documented pair: 15-character 001A0000006Vm9r has the 18-character form ...IAC.
        assert_eq!(&checksum(b"001A0000006Vm9r"), b"IAC");
    }
}
