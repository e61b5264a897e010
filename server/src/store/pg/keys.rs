//! Signing keys in PostgreSQL, shared by every replica: each Ed25519 seed sealed with
//! AES-256-GCM under the key-encryption key (KEK) in every replica's data directory, so the
//! database alone signs nothing. Rotation takes a transaction-level lock and re-checks that
//! it is due, so replicas rotating at once add one key; a new key is published at once and
//! signs only after `key_publish_ahead`, long after every replica's next re-read (every
//! `KEY_CHECK_INTERVAL`), so no replica signs with a key the others cannot verify.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore as _;
use zeroize::Zeroizing;

use super::{db, from_i64, pool_err, to_i64, PgStore};
use crate::keys::{KeyError, KeyFile, StoredKey};
use crate::store::StoreError;

/// Advisory lock key of key rotation.
const KEYS_LOCK: i64 = 0x6b65_7973_726f_7461;
/// Length of a GCM nonce.
const NONCE_LEN: usize = 12;
/// Associated data binding a sealed seed to its purpose and kid.
const AAD_PREFIX: &str = "hallmark signing key ";

/// The database's signing keys, as the data directory's KEK opens them.
pub struct PgKeys {
    pool: deadpool_postgres::Pool,
    kek: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for PgKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgKeys(<kek redacted>)")
    }
}

impl PgStore {
    /// This store's signing keys, sealed under `kek`.
    pub fn signing_keys(&self, kek: Zeroizing<[u8; 32]>) -> PgKeys {
        PgKeys {
            pool: self.pool.clone(),
            kek,
        }
    }
}

fn key_err(e: StoreError) -> KeyError {
    KeyError::Store {
        reason: e.to_string(),
    }
}

impl PgKeys {
    /// Every stored key, unsealed.
    pub async fn load(&self) -> Result<KeyFile, KeyError> {
        let conn = self.pool.get().await.map_err(pool_err).map_err(key_err)?;
        self.read(&conn).await
    }

    async fn read(
        &self,
        conn: &impl deadpool_postgres::GenericClient,
    ) -> Result<KeyFile, KeyError> {
        let rows = conn
            .query(
                "SELECT kid, sealed_seed, created_at, active_from FROM signing_keys
                 ORDER BY active_from",
                &[],
            )
            .await
            .map_err(db("read signing keys"))
            .map_err(key_err)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let kid: String = row.get(0);
            let seed = self.unseal(&kid, row.get(1))?;
            keys.push(StoredKey {
                seed: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed.as_slice()),
                kid,
                created_at: from_i64(row.get(2)),
                active_from: from_i64(row.get(3)),
            });
        }
        Ok(KeyFile { keys })
    }

    /// Store every key of `file` not yet stored, and drop stored keys it no longer holds.
    pub async fn save(&self, file: &KeyFile) -> Result<(), KeyError> {
        self.update(&mut |current| {
            *current = file.clone();
            true
        })
        .await
    }

    /// Change the stored keys under the rotation lock: `change` sees them as stored now and
    /// says whether to write its result.
    pub async fn update(
        &self,
        change: &mut (dyn FnMut(&mut KeyFile) -> bool + Send),
    ) -> Result<(), KeyError> {
        let mut conn = self.pool.get().await.map_err(pool_err).map_err(key_err)?;
        let tx = conn
            .transaction()
            .await
            .map_err(db("rotate signing keys"))
            .map_err(key_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await
            .map_err(db("lock signing keys"))
            .map_err(key_err)?;
        let before = self.read(&tx).await?;
        let mut after = before.clone();
        if !change(&mut after) {
            return Ok(());
        }
        for key in &after.keys {
            if before.keys.iter().any(|k| k.kid == key.kid) {
                continue;
            }
            let seed = Zeroizing::new(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&key.seed)
                    .map_err(|_| KeyError::Corrupt {
                        path: "the new signing key".into(),
                        reason: "seed is not base64url".into(),
                    })?,
            );
            tx.execute(
                "INSERT INTO signing_keys (kid, sealed_seed, created_at, active_from)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &key.kid,
                    &self.seal(&key.kid, &seed)?,
                    &to_i64(key.created_at),
                    &to_i64(key.active_from),
                ],
            )
            .await
            .map_err(db("store a signing key"))
            .map_err(key_err)?;
        }
        for key in &before.keys {
            if !after.keys.iter().any(|k| k.kid == key.kid) {
                tx.execute("DELETE FROM signing_keys WHERE kid = $1", &[&key.kid])
                    .await
                    .map_err(db("drop a signing key"))
                    .map_err(key_err)?;
            }
        }
        tx.commit()
            .await
            .map_err(db("rotate signing keys"))
            .map_err(key_err)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.kek.as_ref().into())
    }

    fn seal(&self, kid: &str, seed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = format!("{AAD_PREFIX}{kid}");
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: seed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Corrupt {
                path: "the signing key store".into(),
                reason: "cannot seal a signing key".into(),
            })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unseal(&self, kid: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let corrupt = || {
            KeyError::Corrupt {
            path: format!("signing key {kid} in the database"),
            reason: "it does not open with this data directory's kek (copy DIR/kek from the first replica)".into(),
        }
        };
        if sealed.len() <= NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let aad = format!("{AAD_PREFIX}{kid}");
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                aes_gcm::aead::Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupt())
    }
}
