//! The bytes of the peer protocol: identities and fingerprints, the signed envelope that every
//! control message travels in, and the file key sealed to one recipient.
//!
//! Owns every cryptographic decision of the protocol (`PEER-PROTOCOL.md` documents them). Must
//! not: talk to the engine, touch the disk, or let a secret reach `Debug`, a log line or an error.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::privitty::FileKey;

/// The protocol's name inside every message.
pub const PROTOCOL: &str = "privitty-ctl";
/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Prefix of the signed bytes (domain separation from every other Ed25519 use).
const SIGNING_CONTEXT: &[u8] = b"privitty-ctl/v1/message\n";
/// Domain of the fingerprint hash.
const FINGERPRINT_CONTEXT: &[u8] = b"privitty-ctl/v1/fingerprint\n";
/// HKDF info prefix of a grant's key-encryption key.
const GRANT_INFO: &[u8] = b"privitty-ctl/v1/grant-key";
/// A message larger than this is dropped unread (grants are ~600 bytes).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// An identity's public half: what a `hello` carries and what gets pinned to a contact.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKeys {
    pub signing: [u8; 32],
    pub agreement: [u8; 32],
}

impl std::fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKeys({})", self.fingerprint())
    }
}

impl PublicKeys {
    /// Hex SHA-256 over both public keys: what operators compare out of band.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(FINGERPRINT_CONTEXT);
        h.update(self.signing);
        h.update(self.agreement);
        hex::encode(h.finalize())
    }

    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.signing).ok()
    }
}

/// A device's identity for one messaging account: signs messages, opens grants.
pub struct Identity {
    signing: SigningKey,
    agreement: StaticSecret,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public().fingerprint())
    }
}

impl Identity {
    pub fn generate() -> Identity {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let mut x = [0u8; 32];
        OsRng.fill_bytes(&mut x);
        Identity::from_secret_bytes(&secret_concat(&seed, &x))
    }

    /// From the 64 bytes of [`Identity::secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8; 64]) -> Identity {
        let (seed, x) = bytes.split_at(32);
        Identity {
            signing: SigningKey::from_bytes(seed.try_into().expect("32 bytes")),
            agreement: StaticSecret::from(<[u8; 32]>::try_from(x).expect("32 bytes")),
        }
    }

    /// Ed25519 seed ‖ X25519 secret: only ever sealed by the device master key.
    pub fn secret_bytes(&self) -> [u8; 64] {
        secret_concat(&self.signing.to_bytes(), &self.agreement.to_bytes())
    }

    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            signing: self.signing.verifying_key().to_bytes(),
            agreement: PublicKey::from(&self.agreement).to_bytes(),
        }
    }

    fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(&signed_bytes(message))
    }
}

fn secret_concat(a: &[u8; 32], b: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(a);
    out[32..].copy_from_slice(b);
    out
}

fn signed_bytes(message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(SIGNING_CONTEXT.len() + message.len());
    v.extend_from_slice(SIGNING_CONTEXT);
    v.extend_from_slice(message);
    v
}

/// One control message (before signing / after verification).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub proto: String,
    pub v: u32,
    /// Fingerprint of the sender's identity.
    pub from: String,
    /// Fingerprint of the one recipient; `None` only in a first `hello`.
    pub to: Option<String>,
    /// Per-sender sequence number: `(from, seq)` is seen at most once.
    pub seq: u64,
    /// Sender's clock, Unix seconds (informational).
    pub ts: i64,
    pub body: Body,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// My keys, for the contact whose address is `addr`. `reply` = an answer to the peer's hello.
    Hello {
        addr: String,
        signing: String,
        agreement: String,
        reply: bool,
    },
    /// These sequence numbers of yours arrived.
    Ack { seqs: Vec<u64> },
    /// A file key and its policy, generation `generation` of this recipient's access.
    Grant(Grant),
    /// Access to `file` ends for good: destroy the key.
    Revoke { file: Uuid, generation: u64 },
    /// Access to `file` ends until a new grant: destroy the key.
    Deny { file: Uuid, generation: u64 },
    /// The recipient asks the owner for (renewed) access to `file`.
    RenewRequest { file: Uuid },
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Hello { .. } => "hello",
            Body::Ack { .. } => "ack",
            Body::Grant(_) => "grant",
            Body::Revoke { .. } => "revoke",
            Body::Deny { .. } => "deny",
            Body::RenewRequest { .. } => "renew_request",
        }
    }
}

/// A grant: the file key sealed to the recipient and the owner's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub file: Uuid,
    /// Hex SHA-256 of the `.prv` header the key belongs to.
    pub header: String,
    pub generation: u64,
    pub key: SealedKey,
    pub download: bool,
    pub forward: bool,
    /// Unix seconds (owner's clock); `None` = never.
    pub expires_at: Option<i64>,
    pub name: String,
    pub size: u64,
}

/// A file key sealed to one X25519 public key: ephemeral key, nonce, ciphertext (base64url).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedKey {
    pub epk: String,
    pub nonce: String,
    pub ct: String,
}

/// Why an update was dropped (counted and logged at debug; never an error to anybody).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    NotOurs,
    Malformed,
    TooLarge,
    UnknownVersion,
    BadSignature,
    /// Signed by a key not pinned to the chat's contact (or none is pinned yet).
    UnknownSender,
}

impl Drop {
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::NotOurs => "not_a_privitty_update",
            Drop::Malformed => "malformed",
            Drop::TooLarge => "too_large",
            Drop::UnknownVersion => "unknown_version",
            Drop::BadSignature => "bad_signature",
            Drop::UnknownSender => "unknown_sender",
        }
    }
}

/// The webxdc update payload that carries one signed message:
/// `{"privitty_ctl":1,"m":"<base64url message JSON>","s":"<base64url signature>"}`.
pub fn seal_message(identity: &Identity, message: &Message) -> Value {
    let bytes = serde_json::to_vec(message).expect("a message always serialises");
    let sig = identity.sign(&bytes);
    serde_json::json!({
        "privitty_ctl": VERSION,
        "m": B64.encode(&bytes),
        "s": B64.encode(sig.to_bytes()),
    })
}

/// A parsed but not yet verified message with its signature.
#[derive(Debug)]
pub struct Unverified {
    pub message: Message,
    bytes: Vec<u8>,
    sig: Signature,
}

impl Unverified {
    /// Checks the signature with `keys` (the pinned keys of the sender, or the keys of a hello)
    /// and that `from` is their fingerprint.
    pub fn verify(self, keys: &PublicKeys) -> Result<Message, Drop> {
        if self.message.from != keys.fingerprint() {
            return Err(Drop::BadSignature);
        }
        let key = keys.verifying_key().ok_or(Drop::BadSignature)?;
        key.verify(&signed_bytes(&self.bytes), &self.sig)
            .map_err(|_| Drop::BadSignature)?;
        Ok(self.message)
    }
}

/// Parses an update payload (as found in `get_webxdc_status_updates`).
pub fn open_payload(payload: &Value) -> Result<Unverified, Drop> {
    let obj = payload.as_object().ok_or(Drop::NotOurs)?;
    let version = obj.get("privitty_ctl").ok_or(Drop::NotOurs)?;
    if version.as_u64() != Some(u64::from(VERSION)) {
        return Err(Drop::UnknownVersion);
    }
    let (Some(m), Some(s)) = (
        obj.get("m").and_then(Value::as_str),
        obj.get("s").and_then(Value::as_str),
    ) else {
        return Err(Drop::Malformed);
    };
    if m.len() > MAX_MESSAGE_BYTES * 4 / 3 + 4 {
        return Err(Drop::TooLarge);
    }
    let bytes = B64.decode(m).map_err(|_| Drop::Malformed)?;
    let sig: [u8; 64] = B64
        .decode(s)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(Drop::Malformed)?;
    let message: Message = serde_json::from_slice(&bytes).map_err(|_| Drop::Malformed)?;
    if message.proto != PROTOCOL || message.v != VERSION {
        return Err(Drop::UnknownVersion);
    }
    Ok(Unverified {
        message,
        bytes,
        sig: Signature::from_bytes(&sig),
    })
}

/// The keys a hello announces.
pub fn hello_keys(body: &Body) -> Option<PublicKeys> {
    let Body::Hello {
        signing, agreement, ..
    } = body
    else {
        return None;
    };
    Some(PublicKeys {
        signing: decode32(signing)?,
        agreement: decode32(agreement)?,
    })
}

pub fn encode32(bytes: &[u8; 32]) -> String {
    B64.encode(bytes)
}

pub fn decode32(text: &str) -> Option<[u8; 32]> {
    B64.decode(text).ok()?.try_into().ok()
}

fn grant_aad(file: Uuid, header: &str) -> Vec<u8> {
    let mut aad = GRANT_INFO.to_vec();
    aad.extend_from_slice(file.as_bytes());
    aad.extend_from_slice(header.as_bytes());
    aad
}

fn grant_kek(shared: &[u8; 32], epk: &[u8; 32], recipient: &[u8; 32], aad: &[u8]) -> [u8; 32] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(epk);
    salt[32..].copy_from_slice(recipient);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut kek = [0u8; 32];
    hk.expand(aad, &mut kek)
        .expect("32 bytes is a valid HKDF length");
    kek
}

/// Seals `key` to `recipient`'s X25519 key (ephemeral X25519, HKDF-SHA256, XChaCha20-Poly1305),
/// bound to the file id and header digest.
pub fn seal_key(recipient: &PublicKeys, file: Uuid, header: &str, key: &FileKey) -> SealedKey {
    let eph = StaticSecret::random_from_rng(OsRng);
    let epk = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(recipient.agreement));
    let aad = grant_aad(file, header);
    let kek = grant_kek(shared.as_bytes(), &epk, &recipient.agreement, &aad);
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let ct = XChaCha20Poly1305::new((&kek).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &key.0,
                aad: &aad,
            },
        )
        .expect("sealing 32 bytes in memory cannot fail");
    SealedKey {
        epk: B64.encode(epk),
        nonce: B64.encode(nonce),
        ct: B64.encode(ct),
    }
}

/// Opens a key sealed to `identity`; `None` when it was not sealed to it or was altered.
pub fn open_key(
    identity: &Identity,
    file: Uuid,
    header: &str,
    sealed: &SealedKey,
) -> Option<FileKey> {
    let epk = decode32(&sealed.epk)?;
    let nonce: [u8; 24] = B64.decode(&sealed.nonce).ok()?.try_into().ok()?;
    let ct = B64.decode(&sealed.ct).ok()?;
    let shared = identity.agreement.diffie_hellman(&PublicKey::from(epk));
    if !shared.was_contributory() {
        return None;
    }
    let aad = grant_aad(file, header);
    let kek = grant_kek(shared.as_bytes(), &epk, &identity.public().agreement, &aad);
    let key = XChaCha20Poly1305::new((&kek).into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: &aad,
            },
        )
        .ok()?;
    Some(FileKey(key.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(from: &Identity, seq: u64, body: Body) -> Message {
        Message {
            proto: PROTOCOL.into(),
            v: VERSION,
            from: from.public().fingerprint(),
            to: None,
            seq,
            ts: 1_700_000_000,
            body,
        }
    }

    #[test]
    fn a_signed_message_verifies_with_its_keys_only() {
        let alice = Identity::generate();
        let mallory = Identity::generate();
        let m = message(&alice, 7, Body::Ack { seqs: vec![1, 2] });
        let payload = seal_message(&alice, &m);
        let got = open_payload(&payload)
            .unwrap()
            .verify(&alice.public())
            .unwrap();
        assert_eq!(got, m);
        // Another key: refused.
        assert_eq!(
            open_payload(&payload)
                .unwrap()
                .verify(&mallory.public())
                .unwrap_err(),
            Drop::BadSignature
        );
        // One changed byte of the message: refused.
        let mut bytes = B64.decode(payload["m"].as_str().unwrap()).unwrap();
        let i = bytes.iter().position(|b| *b == b'7').unwrap();
        bytes[i] = b'8';
        let mut forged = payload.clone();
        forged["m"] = Value::String(B64.encode(&bytes));
        assert_eq!(
            open_payload(&forged)
                .unwrap()
                .verify(&alice.public())
                .unwrap_err(),
            Drop::BadSignature
        );
        // Mallory signing a message that claims to be from alice: refused with alice's keys.
        let claimed = message(
            &alice,
            8,
            Body::RenewRequest {
                file: Uuid::new_v4(),
            },
        );
        let forged = seal_message(&mallory, &claimed);
        assert_eq!(
            open_payload(&forged)
                .unwrap()
                .verify(&alice.public())
                .unwrap_err(),
            Drop::BadSignature
        );
        // ... and with mallory's keys the fingerprint does not match `from`.
        assert_eq!(
            open_payload(&forged)
                .unwrap()
                .verify(&mallory.public())
                .unwrap_err(),
            Drop::BadSignature
        );
    }

    #[test]
    fn foreign_and_malformed_payloads_are_told_apart() {
        assert_eq!(
            open_payload(&serde_json::json!("hi")).unwrap_err(),
            Drop::NotOurs
        );
        assert_eq!(
            open_payload(&serde_json::json!({"x":1})).unwrap_err(),
            Drop::NotOurs
        );
        assert_eq!(
            open_payload(&serde_json::json!({"privitty_ctl":2,"m":"","s":""})).unwrap_err(),
            Drop::UnknownVersion
        );
        assert_eq!(
            open_payload(&serde_json::json!({"privitty_ctl":1,"m":"!!","s":""})).unwrap_err(),
            Drop::Malformed
        );
        let big = "A".repeat(MAX_MESSAGE_BYTES * 2);
        assert_eq!(
            open_payload(&serde_json::json!({"privitty_ctl":1,"m":big,"s":""})).unwrap_err(),
            Drop::TooLarge
        );
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_recipient_file_and_header() {
        let bob = Identity::generate();
        let eve = Identity::generate();
        let key = FileKey::random();
        let file = Uuid::new_v4();
        let sealed = seal_key(&bob.public(), file, "abcd", &key);
        assert_eq!(open_key(&bob, file, "abcd", &sealed).unwrap().0, key.0);
        assert!(open_key(&eve, file, "abcd", &sealed).is_none());
        assert!(open_key(&bob, Uuid::new_v4(), "abcd", &sealed).is_none());
        assert!(open_key(&bob, file, "abce", &sealed).is_none());
        let secret = bob.secret_bytes();
        let again = Identity::from_secret_bytes(&secret);
        assert_eq!(again.public(), bob.public());
        assert!(open_key(&again, file, "abcd", &sealed).is_some());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let id = Identity::generate();
        let text = format!("{id:?} {:?}", FileKey::random());
        assert!(!text.contains(&hex::encode(id.secret_bytes())));
        assert!(text.starts_with("Identity("));
    }
}
