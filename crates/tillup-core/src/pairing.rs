//! Pairing a store host with a terminal's agent.
//!
//! Each agent makes its own TLS key and certificate at first start and
//! shows a **pairing code**: the first 100 bits of its certificate's
//! SHA-256, in 20 characters of Crockford's base32 (no I, L, O or U to
//! misread). The shop assistant types the code on the host; the host
//! connects, checks that the certificate it is shown has that code, and
//! from then on talks to nothing else at that address (it pins the whole
//! fingerprint). A device that answers in the terminal's place would need a
//! certificate whose hash starts with the same 100 bits.

use crate::Sha256Hex;

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of a code (5 bits each).
const CODE_CHARS: usize = 20;

/// The SHA-256 of a certificate (DER): what the host pins.
pub fn fingerprint(cert_der: &[u8]) -> Sha256Hex {
    Sha256Hex::of(cert_der)
}

/// The code a terminal shows for its certificate's fingerprint, in groups
/// of four: `ABCD-EFGH-JKMN-PQRS-TVWX`.
pub fn code(fingerprint: &Sha256Hex) -> String {
    let bits = first_bits(fingerprint);
    let mut out = String::with_capacity(CODE_CHARS + 4);
    for (i, v) in bits.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(ALPHABET[usize::from(*v)] as char);
    }
    out
}

/// Whether `typed` (as a person typed it: any case, with or without
/// dashes or spaces, O for 0 and I or L for 1) is the code of `fingerprint`.
pub fn matches(typed: &str, fingerprint: &Sha256Hex) -> bool {
    let Some(values) = parse(typed) else {
        return false;
    };
    values == first_bits(fingerprint)
}

/// Whether `typed` reads as a code at all.
pub fn is_code(typed: &str) -> bool {
    parse(typed).is_some()
}

fn parse(typed: &str) -> Option<[u8; CODE_CHARS]> {
    let mut out = [0u8; CODE_CHARS];
    let mut n = 0;
    for c in typed.chars().filter(|c| !matches!(c, '-' | ' ')) {
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        let v = ALPHABET.iter().position(|a| *a as char == c)?;
        *out.get_mut(n)? = v as u8;
        n += 1;
    }
    (n == CODE_CHARS).then_some(out)
}

/// The fingerprint's first 100 bits, 5 at a time.
fn first_bits(fingerprint: &Sha256Hex) -> [u8; CODE_CHARS] {
    let bytes = fingerprint.as_bytes();
    let mut out = [0u8; CODE_CHARS];
    for (i, v) in out.iter_mut().enumerate() {
        let bit = i * 5;
        let pair = (u16::from(bytes[bit / 8]) << 8) | u16::from(bytes[bit / 8 + 1]);
        *v = ((pair >> (11 - bit % 8)) & 0x1f) as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_however_it_is_typed() {
        let fp = fingerprint(b"a certificate");
        let c = code(&fp);
        assert_eq!(c.len(), 24);
        assert_eq!(c.matches('-').count(), 4);
        assert!(matches(&c, &fp));
        let sloppy = c
            .to_lowercase()
            .replace('-', " ")
            .replace('0', "o")
            .replace('1', "l");
        assert!(matches(&sloppy, &fp), "{sloppy}");
        assert!(is_code(&sloppy));
    }

    #[test]
    fn another_certificate_or_a_partial_code_does_not_match() {
        let fp = fingerprint(b"a certificate");
        let other = fingerprint(b"another certificate");
        assert!(!matches(&code(&other), &fp));
        let c = code(&fp);
        assert!(!matches(&c[..c.len() - 1], &fp));
        assert!(!matches(&format!("{c}0"), &fp));
        assert!(
            !matches("UUUU-UUUU-UUUU-UUUU-UUUU", &fp),
            "U is not in the alphabet"
        );
    }

    #[test]
    fn the_code_is_the_first_100_bits() {
        let fp = Sha256Hex::from_bytes([0xff; 32]);
        assert_eq!(code(&fp), "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ");
        let mut b = [0u8; 32];
        b[0] = 0b0000_1000;
        assert_eq!(code(&Sha256Hex::from_bytes(b)), "1000-0000-0000-0000-0000");
    }
}
