//! Data-channel key derivation: the 256-byte key block and the AEAD keys cut from it.
//!
//! The key block (OpenVPN `struct key2`; draft section "OpenVPN Key") is
//!
//! ```text
//! client-to-server cipher (64) | client-to-server HMAC (64) |
//! server-to-client cipher (64) | server-to-client HMAC (64)
//! ```
//!
//! "Client" and "server" are the TLS client and server. OpenVPN's TLS client uses it with key
//! direction `normal` and the TLS server with `inverse` (ssl.c `init_key_contexts`) — the
//! opposite of tls-crypt, where the server is `normal`.
//!
//! Two ways to fill it (ssl.c `generate_key_expansion`):
//! * TLS-EKM, when both peers support it (client `IV_PROTO` bit 3, server pushes
//!   `key-derivation tls-ekm`): RFC 5705 keying material exporter with label
//!   [`EKM_LABEL`], no context, [`KEY_BLOCK_BYTES`] bytes; see [`key_block_from_ekm`].
//! * Otherwise the legacy OpenVPN PRF on the key-method 2 randoms; see
//!   [`key_block_from_legacy_prf`].
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use zeroize::{Zeroize, Zeroizing};

use super::keys::{key_slots, slots_from_bytes, DirectionKeys, KeyIndex, KeySlots};
use super::vocabulary::{Cipher, TlsRole};

/// Size of the data-channel key block.
pub const KEY_BLOCK_BYTES: usize = 256;
/// RFC 5705 exporter label for the data-channel keys (ssl_backend.h `EXPORT_KEY_DATA_LABEL`).
pub const EKM_LABEL: &str = "EXPORTER-OpenVPN-datakeys";
/// Label of the legacy master-secret step (ssl.c: `KEY_EXPANSION_ID " master secret"`).
pub const MASTER_SECRET_LABEL: &str = "OpenVPN master secret";
/// Label of the legacy key-expansion step (ssl.c: `KEY_EXPANSION_ID " key expansion"`).
pub const KEY_EXPANSION_LABEL: &str = "OpenVPN key expansion";
/// Length of the legacy pre-master secret and master secret.
pub const SECRET_BYTES: usize = 48;
/// Length of each key-method 2 random.
pub const RANDOM_BYTES: usize = 32;
/// Length of a control-channel session id.
pub const SESSION_ID_BYTES: usize = 8;
/// Length of the AEAD implicit IV taken from the HMAC slot.
pub const IMPLICIT_IV_BYTES: usize = 8;
/// Length of an AEAD nonce (packet id + implicit IV).
pub const NONCE_BYTES: usize = 12;

/// The 256-byte data-channel key block. Wiped on drop.
pub struct KeyBlock {
    slots: KeySlots,
}

impl std::fmt::Debug for KeyBlock {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("KeyBlock { .. }")
    }
}

impl Drop for KeyBlock {
    fn drop(&mut self) {
        self.slots.zeroize();
    }
}

/// Wraps the bytes rustls exported for TLS-EKM into a key block.
///
/// The TLS glue obtains them with rustls's
/// `ConnectionCommon::export_keying_material(&mut [0u8; 256], EKM_LABEL.as_bytes(), None)`:
/// OpenVPN calls `SSL_export_keying_material` with `use_context = 0`, so the context must be
/// `None` (with TLS 1.2 `Some(&[])` would give different bytes). `exported` is wiped here; the
/// caller should wipe its own copy.
pub fn key_block_from_ekm(mut exported: [u8; KEY_BLOCK_BYTES]) -> KeyBlock {
    let block = KeyBlock {
        slots: slots_from_bytes(&exported),
    };
    exported.zeroize();
    block
}

/// What the legacy PRF needs from the key-method 2 exchange and the control channel.
#[derive(Clone, Copy)]
pub struct LegacyKeySource<'a> {
    /// `pre_master` from the client's key-method 2 message.
    pub pre_master: &'a [u8; SECRET_BYTES],
    /// `random1` from the client's key-method 2 message.
    pub client_random1: &'a [u8; RANDOM_BYTES],
    /// `random1` from the server's key-method 2 message.
    pub server_random1: &'a [u8; RANDOM_BYTES],
    /// `random2` from the client's key-method 2 message.
    pub client_random2: &'a [u8; RANDOM_BYTES],
    /// `random2` from the server's key-method 2 message.
    pub server_random2: &'a [u8; RANDOM_BYTES],
    /// The TLS client's own control-channel session id.
    pub client_session_id: &'a [u8; SESSION_ID_BYTES],
    /// The TLS server's own control-channel session id.
    pub server_session_id: &'a [u8; SESSION_ID_BYTES],
}

impl std::fmt::Debug for LegacyKeySource<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("LegacyKeySource { .. }")
    }
}

/// The legacy master secret: `PRF(pre_master, "OpenVPN master secret" | client random1 |
/// server random1)`, 48 bytes (ssl.c `generate_key_expansion_openvpn_prf`).
pub fn legacy_master_secret(source: &LegacyKeySource<'_>) -> Zeroizing<[u8; SECRET_BYTES]> {
    let mut master = Zeroizing::new([0u8; SECRET_BYTES]);
    tls10_prf(
        source.pre_master,
        &[
            MASTER_SECRET_LABEL.as_bytes(),
            source.client_random1,
            source.server_random1,
        ],
        master.as_mut_slice(),
    );
    master
}

/// The legacy key block: `PRF(master, "OpenVPN key expansion" | client random2 | server random2
/// | client session id | server session id)`, 256 bytes. (The draft's "OpenVPN data channel PRF"
/// section omits the session ids and shows a trailing space in the label; ssl.c is right.)
pub fn key_block_from_legacy_prf(source: &LegacyKeySource<'_>) -> KeyBlock {
    let master = legacy_master_secret(source);
    let mut bytes = Zeroizing::new([0u8; KEY_BLOCK_BYTES]);
    tls10_prf(
        &master,
        &[
            KEY_EXPANSION_LABEL.as_bytes(),
            source.client_random2,
            source.server_random2,
            source.client_session_id,
            source.server_session_id,
        ],
        bytes.as_mut_slice(),
    );
    KeyBlock {
        slots: slots_from_bytes(&bytes),
    }
}

/// The TLS 1.0/1.1 PRF (RFC 2246 section 5): `P_MD5(S1, seed) XOR P_SHA1(S2, seed)` with the
/// secret split into halves, written into `out`. OpenVPN's label is the start of `seed`.
/// Both OpenVPN uses have a 48-byte secret, so the halves are 24 bytes each and do not overlap.
pub fn tls10_prf(secret: &[u8; SECRET_BYTES], seed: &[&[u8]], out: &mut [u8]) {
    let (first_half, second_half) = secret.split_at(SECRET_BYTES / 2);
    out.fill(0);
    let md5 = Hmac::<Md5>::new((&*padded_hmac_key(first_half)).into());
    p_hash_xor(&md5, seed, out);
    let sha1 = Hmac::<Sha1>::new((&*padded_hmac_key(second_half)).into());
    p_hash_xor(&sha1, seed, out);
}

/// `key` (at most 64 bytes) zero-padded to the 64-byte block of MD5 and SHA-1. HMAC pads short
/// keys with zeros itself (RFC 2104), so the padded key gives the same MAC and lets us build the
/// MAC without a fallible length check.
fn padded_hmac_key(key: &[u8]) -> Zeroizing<[u8; 64]> {
    let mut padded = Zeroizing::new([0u8; 64]);
    for (target, source) in padded.iter_mut().zip(key) {
        *target = *source;
    }
    padded
}

/// XORs `P_hash(secret, seed)` (RFC 2246 section 5) into `out`, with `keyed` the HMAC already
/// keyed with the secret: `A(0) = seed`, `A(i) = HMAC(A(i-1))`, output
/// `HMAC(A(1) | seed) | HMAC(A(2) | seed) | ...`.
fn p_hash_xor<M: Mac + Clone>(keyed: &M, seed: &[&[u8]], out: &mut [u8]) {
    let mut a = {
        let mut mac = keyed.clone();
        for part in seed {
            mac.update(part);
        }
        mac.finalize().into_bytes()
    };
    for chunk in out.chunks_mut(a.len()) {
        let mut mac = keyed.clone();
        mac.update(&a);
        for part in seed {
            mac.update(part);
        }
        let output = mac.finalize().into_bytes();
        for (target, source) in chunk.iter_mut().zip(output.iter()) {
            *target ^= source;
        }
        let mut next = keyed.clone();
        next.update(&a);
        a = next.finalize().into_bytes();
    }
}

impl KeyBlock {
    /// Builds a key block from 256 bytes in wire order (c2s cipher, c2s HMAC, s2c cipher, s2c
    /// HMAC). `bytes` is wiped.
    pub fn from_bytes(bytes: [u8; KEY_BLOCK_BYTES]) -> Self {
        key_block_from_ekm(bytes)
    }

    /// The 256 bytes in wire order.
    pub fn as_bytes(&self) -> &[u8] {
        self.slots.as_flattened()
    }

    /// Keys protecting traffic from the TLS client to the TLS server (key 0).
    pub fn client_to_server(&self) -> DirectionKeys<'_> {
        key_slots(&self.slots, KeyIndex::Zero)
    }

    /// Keys protecting traffic from the TLS server to the TLS client (key 1).
    pub fn server_to_client(&self) -> DirectionKeys<'_> {
        key_slots(&self.slots, KeyIndex::One)
    }

    /// The AEAD send and receive keys for the side playing TLS `role`.
    pub fn data_channel_keys(&self, cipher: Cipher, role: TlsRole) -> DataChannelKeys {
        let client_to_server = AeadKey::new(cipher, self.client_to_server());
        let server_to_client = AeadKey::new(cipher, self.server_to_client());
        match role {
            TlsRole::Client => DataChannelKeys {
                send: client_to_server,
                receive: server_to_client,
            },
            TlsRole::Server => DataChannelKeys {
                send: server_to_client,
                receive: client_to_server,
            },
        }
    }
}

/// Key length of a data-channel AEAD cipher in bytes.
pub fn aead_key_len(cipher: Cipher) -> usize {
    match cipher {
        Cipher::Aes128Gcm => 16,
        Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
    }
}

/// One direction's AEAD key for the (non-epoch) DATA_V2 format. Wiped on drop.
///
/// The key is the first 16 or 32 bytes of the direction's cipher slot; the implicit IV the first
/// 8 bytes of its HMAC slot, which AEAD modes do not otherwise use (crypto.c
/// `key_ctx_update_implicit_iv`: IV length 12 minus the 4-byte packet id).
pub struct AeadKey {
    cipher: Cipher,
    key: [u8; 32],
    implicit_iv: [u8; IMPLICIT_IV_BYTES],
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AeadKey")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.implicit_iv.zeroize();
    }
}

impl AeadKey {
    fn new(cipher: Cipher, keys: DirectionKeys<'_>) -> Self {
        let mut key = [0u8; 32];
        for (target, source) in key.iter_mut().zip(keys.cipher.iter()) {
            *target = *source;
        }
        let mut implicit_iv = [0u8; IMPLICIT_IV_BYTES];
        for (target, source) in implicit_iv.iter_mut().zip(keys.hmac.iter()) {
            *target = *source;
        }
        Self {
            cipher,
            key,
            implicit_iv,
        }
    }

    /// The cipher this key is for.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The cipher key: 16 bytes for AES-128-GCM, 32 for AES-256-GCM and ChaCha20-Poly1305.
    pub fn key(&self) -> &[u8] {
        self.key
            .get(..aead_key_len(self.cipher))
            .unwrap_or(&self.key)
    }

    /// The 8-byte implicit IV.
    pub fn implicit_iv(&self) -> &[u8; IMPLICIT_IV_BYTES] {
        &self.implicit_iv
    }

    /// The 12-byte nonce of the packet with `packet_id`: the packet id (big-endian, as on the
    /// wire) followed by the implicit IV (crypto.c `openvpn_encrypt_aead`: the implicit IV is
    /// stored after 4 zero bytes and XORed with the packet id).
    pub fn nonce(&self, packet_id: u32) -> [u8; NONCE_BYTES] {
        let mut nonce = [0u8; NONCE_BYTES];
        let (id, rest) = nonce.split_at_mut(4);
        id.copy_from_slice(&packet_id.to_be_bytes());
        rest.copy_from_slice(&self.implicit_iv);
        nonce
    }
}

/// The AEAD keys one side uses.
#[derive(Debug)]
pub struct DataChannelKeys {
    /// Encrypts what this side sends.
    pub send: AeadKey,
    /// Decrypts what this side receives.
    pub receive: AeadKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn filled<const N: usize>(start: u8) -> [u8; N] {
        let mut bytes = [0u8; N];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = start.wrapping_add(index as u8);
        }
        bytes
    }

    struct Inputs {
        pre_master: [u8; SECRET_BYTES],
        client_random1: [u8; RANDOM_BYTES],
        server_random1: [u8; RANDOM_BYTES],
        client_random2: [u8; RANDOM_BYTES],
        server_random2: [u8; RANDOM_BYTES],
        client_session_id: [u8; SESSION_ID_BYTES],
        server_session_id: [u8; SESSION_ID_BYTES],
    }

    /// pre_master = 00..2f, client random1 = 40..5f, server random1 = 60..7f,
    /// client random2 = 80..9f, server random2 = a0..bf, client sid = c0..c7, server sid = d0..d7.
    fn inputs() -> Inputs {
        Inputs {
            pre_master: filled(0x00),
            client_random1: filled(0x40),
            server_random1: filled(0x60),
            client_random2: filled(0x80),
            server_random2: filled(0xa0),
            client_session_id: filled(0xc0),
            server_session_id: filled(0xd0),
        }
    }

    fn source(inputs: &Inputs) -> LegacyKeySource<'_> {
        LegacyKeySource {
            pre_master: &inputs.pre_master,
            client_random1: &inputs.client_random1,
            server_random1: &inputs.server_random1,
            client_random2: &inputs.client_random2,
            server_random2: &inputs.server_random2,
            client_session_id: &inputs.client_session_id,
            server_session_id: &inputs.server_session_id,
        }
    }

    /// Computed with OpenSSL 3's TLS1-PRF KDF (MD5-SHA1 is the TLS 1.0 PRF), label as the
    /// start of the seed ("OpenVPN master secret" = 4f70656e56504e206d617374657220736563726574):
    ///
    /// ```text
    /// openssl kdf -keylen 48 -kdfopt digest:MD5-SHA1 \
    ///   -kdfopt hexsecret:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
    /// 202122232425262728292a2b2c2d2e2f \
    ///   -kdfopt hexseed:4f70656e56504e206d617374657220736563726574\
    /// 404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f\
    /// 606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f \
    ///   TLS1-PRF
    /// # (the backslash-newlines inside the hex arguments join the lines)
    /// ```
    const MASTER_SECRET: &str = concat!(
        "0520ed5bef47cd2c1a5bc0e84254a42563fd7fd5caf5ccac49be59e7a71461ae",
        "9c6876df8467a4fa34cbe95fdc22977f"
    );

    /// Computed with OpenSSL as above; the secret is [`MASTER_SECRET`] and the seed is
    /// "OpenVPN key expansion" (4f70656e56504e206b657920657870616e73696f6e) | client random2 |
    /// server random2 | client session id | server session id:
    ///
    /// ```text
    /// openssl kdf -keylen 256 -kdfopt digest:MD5-SHA1 \
    ///   -kdfopt hexsecret:0520ed5bef47cd2c1a5bc0e84254a42563fd7fd5caf5ccac49be59e7a71461ae\
    /// 9c6876df8467a4fa34cbe95fdc22977f \
    ///   -kdfopt hexseed:4f70656e56504e206b657920657870616e73696f6e\
    /// 808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f\
    /// a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\
    /// c0c1c2c3c4c5c6c7d0d1d2d3d4d5d6d7 \
    ///   TLS1-PRF
    /// ```
    const KEY_BLOCK: &str = concat!(
        "42a085934accb516127a51cc5c6fb1c1aa58c888899c946a8bd1a51c861455b7",
        "684bd092ffeb31dd06e3311bf4eb1bd111431206d032b34031d2d9a58d8cc111",
        "8f1989e688d21da52bfc27fe085b6c299bb4b01e7902c57c4697efa4540533dc",
        "5d2af996532f290edc3d2b5fab8bc504ba28648ecb8b904ddd026ac340383039",
        "6e7e0cdd189f502912cdae2add214f9161b7e1bbb246eee0129e256875e55883",
        "9c9d0c57bf1a34c73b963b164e092c16f7f8b7e9335f8007525a8a80b7d85f01",
        "192917d2769e7140e7e179bc34c24cc254117766fa1c49e1a6cb039429dd5e5a",
        "23745cadb42d8a47ded6283b61768052322132bf0480518df2301105b7298698",
    );

    #[test]
    fn legacy_master_secret_matches_openssl() {
        let inputs = inputs();
        assert_eq!(
            hex(legacy_master_secret(&source(&inputs)).as_slice()),
            MASTER_SECRET
        );
    }

    #[test]
    fn legacy_key_block_matches_openssl() {
        let inputs = inputs();
        let block = key_block_from_legacy_prf(&source(&inputs));
        assert_eq!(hex(block.as_bytes()), KEY_BLOCK);
    }

    #[test]
    fn legacy_key_block_depends_on_every_input() {
        let reference = {
            let inputs = inputs();
            hex(key_block_from_legacy_prf(&source(&inputs)).as_bytes())
        };
        for field in 0..7 {
            let mut inputs = inputs();
            match field {
                0 => inputs.pre_master[47] ^= 1,
                1 => inputs.client_random1[0] ^= 1,
                2 => inputs.server_random1[31] ^= 1,
                3 => inputs.client_random2[5] ^= 1,
                4 => inputs.server_random2[6] ^= 1,
                5 => inputs.client_session_id[7] ^= 1,
                _ => inputs.server_session_id[0] ^= 1,
            }
            let block = key_block_from_legacy_prf(&source(&inputs));
            assert_ne!(hex(block.as_bytes()), reference, "field {field}");
        }
    }

    #[test]
    fn ekm_block_is_split_per_direction() {
        let block = key_block_from_ekm(filled(0));
        assert_eq!(block.client_to_server().cipher[0], 0);
        assert_eq!(block.client_to_server().hmac[0], 64);
        assert_eq!(block.server_to_client().cipher[0], 128);
        assert_eq!(block.server_to_client().hmac[0], 192);
        assert_eq!(EKM_LABEL.len(), 25);
    }

    #[test]
    fn aead_keys_come_from_slot_prefixes() {
        let block = KeyBlock::from_bytes(filled(0));
        let client = block.data_channel_keys(Cipher::Aes256Gcm, TlsRole::Client);
        let server = block.data_channel_keys(Cipher::Aes256Gcm, TlsRole::Server);
        let c2s_key: [u8; 32] = filled(0);
        let s2c_key: [u8; 32] = filled(128);
        assert_eq!(client.send.key(), &c2s_key);
        assert_eq!(client.send.implicit_iv(), &filled::<8>(64));
        assert_eq!(client.receive.key(), &s2c_key);
        assert_eq!(client.receive.implicit_iv(), &filled::<8>(192));
        // The server receives with what the client sends with, and the reverse.
        assert_eq!(server.receive.key(), client.send.key());
        assert_eq!(server.send.implicit_iv(), client.receive.implicit_iv());

        let aes128 = block.data_channel_keys(Cipher::Aes128Gcm, TlsRole::Client);
        assert_eq!(aes128.send.key(), &c2s_key[..16]);
        let chacha = block.data_channel_keys(Cipher::Chacha20Poly1305, TlsRole::Server);
        assert_eq!(chacha.send.key(), &s2c_key);
        assert_eq!(chacha.send.cipher(), Cipher::Chacha20Poly1305);

        assert_eq!(
            client.send.nonce(0x0102_0304),
            [1, 2, 3, 4, 64, 65, 66, 67, 68, 69, 70, 71]
        );
    }
}
