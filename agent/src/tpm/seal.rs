//! Sealing: the factory secret, persisted in the TPM at 0x81000010, and sealed blobs that the
//! agent keeps in its state directory (refresh tokens).
//!
//! A sealed data object holds at most MAX_SYM_DATA = 128 bytes (TPM 2.0 Part 2 §11.1.14), and
//! refresh tokens can be kilobytes. A [`SealedBlob`] therefore seals a random 256-bit key in a
//! (non-persistent) sealed data object under the SRK, and encrypts the data with AES-256-GCM
//! (`ring::aead`) under that key. Only this TPM can unseal the key, so only this TPM can read
//! the data, and GCM's tag detects any change to the ciphertext.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Private, Public, SensitiveData};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use super::{templates, Tpm, TpmError, FACTORY_SECRET_HANDLE};

/// The largest secret a sealed data object holds (MAX_SYM_DATA, TPM 2.0 Part 2 §11.1.14).
pub const MAX_SEALED_SECRET: usize = 128;

/// Format tag and version of a serialised [`SealedBlob`].
const BLOB_MAGIC: &[u8; 5] = b"HMSB\x01";
/// Additional authenticated data binding the ciphertext to this format.
const BLOB_AAD: &[u8] = b"hallmark sealed blob v1";

/// Data sealed to this TPM, to be stored outside it (see the module docs for the layout).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob {
    /// The sealed key object's TPMT_PUBLIC, marshalled.
    public: Vec<u8>,
    /// The sealed key object's TPM2B_PRIVATE contents (encrypted by the SRK).
    private: Vec<u8>,
    /// AES-GCM nonce.
    nonce: [u8; NONCE_LEN],
    /// AES-256-GCM ciphertext and tag.
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBlob")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl SealedBlob {
    /// Serialises the blob: `HMSB\x01`, then public, private and ciphertext each as a
    /// big-endian u32 length and bytes, with the 12-byte nonce before the ciphertext.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            BLOB_MAGIC.len()
                + 12
                + NONCE_LEN
                + self.public.len()
                + self.private.len()
                + self.ciphertext.len(),
        );
        out.extend_from_slice(BLOB_MAGIC);
        for part in [&self.public, &self.private] {
            put(&mut out, part);
        }
        out.extend_from_slice(&self.nonce);
        put(&mut out, &self.ciphertext);
        out
    }

    /// Parses bytes written by [`SealedBlob::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedBlob, TpmError> {
        let rest = bytes
            .strip_prefix(BLOB_MAGIC.as_slice())
            .ok_or(TpmError::BlobFormat {
                reason: "not a Hallmark sealed blob (or another version)",
            })?;
        let (public, rest) = take(rest)?;
        let (private, rest) = take(rest)?;
        let (nonce, rest) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or(TpmError::BlobFormat {
                reason: "truncated nonce",
            })?;
        let (ciphertext, rest) = take(rest)?;
        if !rest.is_empty() {
            return Err(TpmError::BlobFormat {
                reason: "trailing bytes",
            });
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        Ok(SealedBlob {
            public: public.to_vec(),
            private: private.to_vec(),
            nonce: n,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    // Parts are TPM structures (< 64 KiB) or data the caller holds in memory; a length that
    // does not fit u32 would be a multi-gigabyte refresh token.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
}

fn take(input: &[u8]) -> Result<(&[u8], &[u8]), TpmError> {
    let truncated = TpmError::BlobFormat {
        reason: "truncated",
    };
    let (len, rest) = input.split_at_checked(4).ok_or(truncated)?;
    let mut be = [0u8; 4];
    be.copy_from_slice(len);
    let len = usize::try_from(u32::from_be_bytes(be)).map_err(|_| TpmError::BlobFormat {
        reason: "length out of range",
    })?;
    rest.split_at_checked(len).ok_or(TpmError::BlobFormat {
        reason: "truncated",
    })
}

impl Tpm {
    /// Seals `secret` (1 to 128 bytes; 32 in practice) under the SRK and persists it at
    /// 0x81000010. Refuses with [`TpmError::FactorySecretPresent`] if one is already there.
    pub fn seal_factory_secret(&mut self, secret: &[u8]) -> Result<(), TpmError> {
        check_secret_size(secret)?;
        if let Some((object, public)) = self.open_persistent(FACTORY_SECRET_HANDLE)? {
            self.close(object);
            check_factory_secret(&public)?;
            return Err(TpmError::FactorySecretPresent);
        }
        let (public, private) = self.create_sealed(secret)?;
        let loaded = self
            .load_sealed(public, private)
            .map_err(self.fail("load a sealed object", |source| TpmError::Seal { source }))?;
        self.persist(loaded, FACTORY_SECRET_HANDLE)
    }

    /// Unseals the factory secret, or `None` if none is sealed.
    pub fn unseal_factory_secret(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, TpmError> {
        let Some((object, public)) = self.open_persistent(FACTORY_SECRET_HANDLE)? else {
            return Ok(None);
        };
        let result = check_factory_secret(&public).and_then(|()| self.unseal(object));
        self.close(object);
        result.map(Some)
    }

    /// Erases the factory secret; erasing an absent one succeeds.
    pub fn erase_factory_secret(&mut self) -> Result<(), TpmError> {
        let Some((object, public)) = self.open_persistent(FACTORY_SECRET_HANDLE)? else {
            return Ok(());
        };
        if let Err(err) = check_factory_secret(&public) {
            self.close(object);
            return Err(err);
        }
        self.evict(object, FACTORY_SECRET_HANDLE)
    }

    /// Seals `data` (any length) to this TPM without using a persistent handle; see the
    /// module docs for the construction.
    pub fn seal_blob(&mut self, data: &[u8]) -> Result<SealedBlob, TpmError> {
        let rng = SystemRandom::new();
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill(key.as_mut()).map_err(|_| TpmError::Random)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| TpmError::Random)?;

        let (public, private) = self.create_sealed(key.as_ref())?;
        let public = public.marshall().map_err(|source| TpmError::Structure {
            what: "sealed object public area",
            source,
        })?;
        let mut ciphertext = data.to_vec();
        aead_key(key.as_ref())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(BLOB_AAD),
                &mut ciphertext,
            )
            .map_err(|_| TpmError::BlobDecrypt)?;
        Ok(SealedBlob {
            public,
            private: private.value().to_vec(),
            nonce,
            ciphertext,
        })
    }

    /// Unseals a blob made by [`Tpm::seal_blob`] on this TPM.
    pub fn unseal_blob(&mut self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let structure = |what| move |source| TpmError::Structure { what, source };
        let public = Public::unmarshall(&blob.public).map_err(structure("sealed blob public"))?;
        let private =
            Private::try_from(blob.private.clone()).map_err(structure("sealed blob private"))?;
        let loaded = self
            .load_sealed(public, private)
            // A blob from another TPM (or another SRK) fails its integrity check here.
            .map_err(self.fail("load a sealed blob", |_| TpmError::BlobDecrypt))?;
        let object = ObjectHandle::from(loaded);
        let key = self.unseal(object);
        // Transient slots are scarce (swtpm has three).
        let _ = self
            .ctx
            .execute_without_session(|ctx| ctx.flush_context(object));
        let key = key?;
        let mut data = Zeroizing::new(blob.ciphertext.clone());
        let plain_len = aead_key(&key)?
            .open_in_place(
                Nonce::assume_unique_for_key(blob.nonce),
                Aad::from(BLOB_AAD),
                data.as_mut_slice(),
            )
            .map_err(|_| TpmError::BlobDecrypt)?
            .len();
        data.truncate(plain_len);
        Ok(data)
    }

    /// Creates (but does not load) a sealed data object holding `secret` under the SRK; the
    /// secret travels encrypted in the salted session.
    fn create_sealed(&mut self, secret: &[u8]) -> Result<(Public, Private), TpmError> {
        check_secret_size(secret)?;
        let template = templates::sealed_data()?;
        let sensitive =
            SensitiveData::try_from(secret.to_vec()).map_err(|source| TpmError::Structure {
                what: "sealed data",
                source,
            })?;
        let srk = self.srk;
        let created = self
            .with_salted_session(|ctx| {
                ctx.create(srk, template, None, Some(sensitive), None, None)
            })?
            .map_err(self.fail("seal data", |source| TpmError::Seal { source }))?;
        Ok((created.out_public, created.out_private))
    }

    /// Loads a sealed object under the SRK (TPM2_Load, Part 3 §12.2). The private area is
    /// already encrypted and integrity-protected with the SRK's seed (Part 1 §23.3), so it
    /// needs no parameter encryption: a password session with the SRK's empty auth suffices
    /// and saves the salted session's ECDH.
    fn load_sealed(&mut self, public: Public, private: Private) -> tss_esapi::Result<KeyHandle> {
        let srk = self.srk;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, private, public)
            })
    }

    /// TPM2_Unseal (Part 3 §12.7) in a salted session, so the secret returns encrypted.
    fn unseal(&mut self, object: ObjectHandle) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let data = self
            .with_salted_session(|ctx| ctx.unseal(object))?
            .map_err(self.fail("unseal data", |source| TpmError::Unseal { source }))?;
        Ok(Zeroizing::new(data.value().to_vec()))
    }
}

fn check_secret_size(secret: &[u8]) -> Result<(), TpmError> {
    if secret.is_empty() || secret.len() > MAX_SEALED_SECRET {
        return Err(TpmError::SecretSize {
            len: secret.len(),
            max: MAX_SEALED_SECRET,
        });
    }
    Ok(())
}

fn check_factory_secret(public: &Public) -> Result<(), TpmError> {
    if templates::matches(public, &templates::sealed_data()?) {
        Ok(())
    } else {
        Err(TpmError::HandleOccupied {
            handle: FACTORY_SECRET_HANDLE,
            what: templates::describe(public),
            expected: "sealed factory secret",
        })
    }
}

fn aead_key(key: &[u8]) -> Result<LessSafeKey, TpmError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| TpmError::UnexpectedResponse {
        what: "the unsealed blob key is not 32 bytes".to_owned(),
    })?;
    Ok(LessSafeKey::new(unbound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_bytes_round_trip_and_reject_garbage() {
        let blob = SealedBlob {
            public: vec![1, 2, 3],
            private: vec![4, 5],
            nonce: [7; NONCE_LEN],
            ciphertext: vec![9; 40],
        };
        let bytes = blob.to_bytes();
        assert_eq!(SealedBlob::from_bytes(&bytes).unwrap(), blob);
        assert!(SealedBlob::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(SealedBlob::from_bytes(b"nope").is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SealedBlob::from_bytes(&longer).is_err());
    }
}
