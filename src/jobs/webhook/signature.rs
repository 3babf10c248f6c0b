//! The webhook signature: `X-SandGNAT-Signature: sha256=<hex>` where hex is
//! HMAC-SHA256 of the exact body bytes with `queue.webhook_secret` as the
//! key (the scheme GitHub uses for `X-Hub-Signature-256`). The body
//! carries its own `sent_at` time and `delivery` id, so they are signed
//! too: a receiver rejects old deliveries and ignores repeated ones.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-sandgnat-signature";

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
