//! Provisioning one device, idempotently: what the server and the TPM already hold decides
//! what is done.
//!
//! | server says (POST /admin/devices) | TPM holds a credential¹ | outcome                     |
//! |-----------------------------------|-------------------------|-----------------------------|
//! | 201 created                       | no                      | seal, write config: `provisioned` |
//! | 201 created                       | yes                     | `tpm-occupied` (refused)    |
//! | 409, same EK                      | yes                     | `already-provisioned`²      |
//! | 409, same EK                      | no                      | withdraw, register, seal: `reprovisioned`³ |
//! | 409, other EK                     | either                  | `conflict` (refused)        |
//! | 409 `ek_in_use` (another serial)  | either                  | `conflict` (refused)        |
//!
//! ¹ The factory secret, or a device key once the agent has rotated it away on first boot.
//! ² The TPM is not touched; the config is rewritten only if missing or naming another server,
//!   client, TPM or CA (see [`config_out::ensure`]).
//! ³ The secret was lost between registration and sealing (a killed batch, a lost response).
//!   Only the server could re-issue it and it never shows a secret twice, so the registration
//!   must go. The station takes back its own registration itself (`POST
//!   /admin/devices/{client_id}/withdraw`, scope `devices:provision`: within 15 minutes of
//!   registering, while the device never rotated) and registers the device again. Past that
//!   window, or for another station's registration, it is `needs-reset`: an operator deletes
//!   the registration (`DELETE /admin/devices/{client_id}`, scope `devices:admin`) and reruns,
//!   or the station does it itself with `--reset-lost` if its client may have
//!   `devices:admin`. Deleting another station's registration is never the default: that
//!   station could be halfway through this very device.
//!
//! Every step a device passes is reported to the station's observer ([`Step`]); the binary's
//! test-only fault hook stops the process there, as a power cut would.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use hallmark_agent::tpm::{EndorsementKey, Tpm, TpmError};
use zeroize::Zeroizing;

use crate::config_out::{self, ConfigOutError, DeviceConfig};
use crate::report::{now_ms, DeviceReport, Outcome};
use crate::station::{Registration, StationClient, StationError};

/// Size of the factory secret in bytes (256 bits), as the server issues it.
pub const FACTORY_SECRET_LEN: usize = 32;

/// One device to provision (one row of a manifest).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Serial number.
    pub serial: String,
    /// Model.
    pub model: String,
    /// TCTI of its TPM.
    pub tcti: String,
    /// Where its agent config goes.
    pub config_out: PathBuf,
}

/// A step of provisioning one device, reported to the station's observer once done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// The TPM's EK and what it holds were read; nothing is registered yet.
    EkRead,
    /// The server registered the device; its secret is not sealed yet.
    Registered,
    /// A registration whose secret was lost was withdrawn; the device is not registered now.
    Withdrawn,
    /// The factory secret is sealed in the TPM and read back; the config is not written yet.
    Sealed,
    /// The agent config is written; the report line is not.
    ConfigWritten,
    /// The device's report line is written (batches only).
    Reported,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [
        Step::EkRead,
        Step::Registered,
        Step::Withdrawn,
        Step::Sealed,
        Step::ConfigWritten,
        Step::Reported,
    ];

    /// Its name, as the fault hook spells it (an interface of the test suite).
    pub fn name(self) -> &'static str {
        match self {
            Step::EkRead => "ek_read",
            Step::Registered => "registered",
            Step::Withdrawn => "withdrawn",
            Step::Sealed => "sealed",
            Step::ConfigWritten => "config_written",
            Step::Reported => "reported",
        }
    }

    /// The step of that name.
    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Told of every step every device passes: the serial and the step.
pub type Observer = Arc<dyn Fn(&str, Step) + Send + Sync>;

/// A factory station: a client of one server, the CA devices will pin, and its policy.
#[derive(Clone)]
pub struct Station {
    client: StationClient,
    ca_pem: Vec<u8>,
    reset_lost: bool,
    dpop: bool,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Station")
            .field("client", &self.client)
            .field("reset_lost", &self.reset_lost)
            .field("dpop", &self.dpop)
            .finish_non_exhaustive()
    }
}

/// Why one device was not provisioned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The TPM could not be opened.
    #[error("cannot open the TPM at {tcti}")]
    OpenTpm {
        /// Its TCTI.
        tcti: String,
        /// The TPM error.
        source: TpmError,
    },
    /// The EK could not be read.
    #[error("cannot read the endorsement key")]
    ReadEk {
        /// The TPM error.
        source: TpmError,
    },
    /// The TPM's persistent handles could not be listed.
    #[error("cannot list what the TPM holds")]
    Inventory {
        /// The TPM error.
        source: TpmError,
    },
    /// Registration failed.
    #[error("cannot register the device")]
    Register {
        /// The station's error.
        source: StationError,
    },
    /// Supplying the EK public key of an earlier registration failed.
    #[error("cannot give the server the EK public key of registration {client_id}")]
    Reattest {
        /// The registration.
        client_id: String,
        /// The station's error.
        source: StationError,
    },
    /// The serial belongs to another TPM.
    #[error(
        "serial is registered to another TPM (client_id {client_id}, EK {registered}); refused"
    )]
    Conflict {
        /// The existing registration.
        client_id: String,
        /// Its EK fingerprint.
        registered: String,
    },
    /// This TPM is already registered under another serial.
    #[error("this TPM is already registered as {serial} (client_id {client_id}); refused")]
    EkInUse {
        /// The existing registration.
        client_id: String,
        /// Its serial.
        serial: String,
    },
    /// The server knows the device but its secret never reached the TPM, and this station
    /// may not take the registration back itself.
    #[error(
        "the server knows this device (client_id {client_id}) but its TPM holds no credential: \
         the factory secret was lost before sealing, and this station cannot withdraw the \
         registration itself ({why}); delete it (DELETE /admin/devices/{client_id}, scope \
         devices:admin) and rerun, or rerun with --reset-lost"
    )]
    NeedsReset {
        /// The registration to delete.
        client_id: String,
        /// Why the station could not withdraw it.
        why: String,
    },
    /// Withdrawing a registration whose secret was lost failed (not a refusal).
    #[error("cannot withdraw the registration {client_id} whose secret was lost")]
    Withdraw {
        /// The registration.
        client_id: String,
        /// The station's error.
        source: StationError,
    },
    /// The TPM holds a credential from a registration the server does not know under this
    /// serial. The registration just made was withdrawn again, unless `withdrawn` is false.
    #[error(
        "the TPM already holds a Hallmark credential from another registration; {}",
        if *withdrawn {
            "the registration just made was withdrawn: check the serial, or clear the TPM \
             (tpm2_clear) if its old registration is gone, and rerun".to_owned()
        } else {
            format!("the new registration {client_id} is unused and could not be withdrawn: \
                     delete it (DELETE /admin/devices/{client_id}, scope devices:admin), check \
                     the serial or clear the TPM (tpm2_clear), and rerun")
        }
    )]
    TpmOccupied {
        /// The registration just made.
        client_id: String,
        /// Whether it was withdrawn.
        withdrawn: bool,
    },
    /// `--reset-lost` could not delete the lost registration.
    #[error("cannot delete the lost registration {client_id}")]
    Reset {
        /// The registration.
        client_id: String,
        /// The station's error.
        source: StationError,
    },
    /// The server's factory secret is not 32 bytes of base64url.
    #[error(
        "the server's factory secret is not {FACTORY_SECRET_LEN} bytes of base64url; \
         registration {client_id} needs a reset"
    )]
    DecodeSecret {
        /// The registration.
        client_id: String,
    },
    /// Sealing failed or did not read back.
    #[error("cannot seal the factory secret; registration {client_id} needs a reset")]
    Seal {
        /// The registration.
        client_id: String,
        /// The TPM error.
        source: TpmError,
    },
    /// The sealed secret did not unseal to what was sealed.
    #[error(
        "the sealed factory secret does not read back; registration {client_id} needs a reset"
    )]
    SealReadBack {
        /// The registration.
        client_id: String,
    },
    /// The agent config could not be written or checked.
    #[error("cannot write the agent config")]
    WriteConfig {
        /// The error.
        source: ConfigOutError,
    },
}

impl DeviceError {
    /// The report outcome of this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            DeviceError::Conflict { .. } | DeviceError::EkInUse { .. } => Outcome::Conflict,
            DeviceError::NeedsReset { .. } => Outcome::NeedsReset,
            DeviceError::TpmOccupied { .. } => Outcome::TpmOccupied,
            _ => Outcome::Failed,
        }
    }
}

/// An error and its sources on one line, `outer: inner: innermost`.
pub fn one_line(err: &dyn StdError) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line.replace('\n', " ")
}

impl Station {
    /// A station using `client`, writing `ca_pem` beside every config; with `reset_lost`, it
    /// deletes and redoes registrations whose secret was lost and which it cannot withdraw
    /// itself (needs `devices:admin`).
    pub fn new(client: StationClient, ca_pem: Vec<u8>, reset_lost: bool) -> Self {
        Station {
            client,
            ca_pem,
            reset_lost,
            dpop: false,
            observer: None,
        }
    }

    /// Register devices as DPoP-bound (RFC 9449 §5.2) and write `dpop = true` into their
    /// configs, so that every token they get is bound to their TPM key.
    pub fn with_dpop(mut self, dpop: bool) -> Self {
        self.dpop = dpop;
        self
    }

    /// Tell `observer` of every step every device passes.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Report that `serial` passed `step`.
    pub fn observe(&self, serial: &str, step: Step) {
        if let Some(observer) = &self.observer {
            observer(serial, step);
        }
    }

    /// The station's server client.
    pub fn client(&self) -> &StationClient {
        &self.client
    }

    /// Provisions one device; never panics, always reports.
    pub fn provision(&self, spec: &DeviceSpec) -> DeviceReport {
        let started = Instant::now();
        let mut report = DeviceReport {
            serial: spec.serial.clone(),
            client_id: None,
            ek_fingerprint: None,
            outcome: Outcome::Failed,
            config: None,
            config_out: spec.config_out.clone(),
            duration_ms: 0,
            error: None,
            finished_at_ms: 0,
        };
        match self.provision_steps(spec, &mut report) {
            Ok(outcome) => report.outcome = outcome,
            Err(err) => {
                report.outcome = err.outcome();
                report.error = Some(one_line(&err));
            }
        }
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        report.finished_at_ms = now_ms();
        report
    }

    fn provision_steps(
        &self,
        spec: &DeviceSpec,
        report: &mut DeviceReport,
    ) -> Result<Outcome, DeviceError> {
        // One connection for the whole device: swtpm serves one client at a time, and nobody
        // else should touch this TPM while it is being provisioned.
        let mut tpm = Tpm::open(&spec.tcti).map_err(|source| DeviceError::OpenTpm {
            tcti: spec.tcti.clone(),
            source,
        })?;
        let ek = tpm
            .endorsement_key()
            .map_err(|source| DeviceError::ReadEk { source })?;
        let fingerprint = ek.fingerprint();
        report.ek_fingerprint = Some(fingerprint.clone());
        let inventory = tpm
            .inventory()
            .map_err(|source| DeviceError::Inventory { source })?;
        let holds_credential = inventory.factory_secret || inventory.slot_a || inventory.slot_b;

        self.observe(&spec.serial, Step::EkRead);

        let (client_id, secret) = match self.register(spec, &ek)? {
            Registration::Created {
                client_id,
                factory_secret,
            } => (client_id, factory_secret),
            Registration::EkInUse { client_id, serial } => {
                return Err(DeviceError::EkInUse { client_id, serial });
            }
            Registration::Exists {
                client_id,
                ek_fingerprint,
                ek_public,
            } => {
                if !ek_fingerprint.eq_ignore_ascii_case(&fingerprint) {
                    return Err(DeviceError::Conflict {
                        client_id,
                        registered: ek_fingerprint,
                    });
                }
                report.client_id = Some(client_id.clone());
                if holds_credential {
                    drop(tpm);
                    // Registered before attestation: give the server the EK it needs to
                    // attest this device's keys (it must hash to the registered fingerprint).
                    let reattested = !ek_public
                        && self.client.attest_ek(&client_id, &ek).map_err(|source| {
                            DeviceError::Reattest {
                                client_id: client_id.clone(),
                                source,
                            }
                        })?;
                    report.config = Some(self.write_config(spec, &client_id, false)?);
                    self.observe(&spec.serial, Step::ConfigWritten);
                    return Ok(if reattested {
                        Outcome::Reattested
                    } else {
                        Outcome::AlreadyProvisioned
                    });
                }
                // The secret never reached this TPM: take the registration back and start over.
                self.remove_lost(spec, &client_id)?;
                let Registration::Created {
                    client_id,
                    factory_secret,
                } = self.register(spec, &ek)?
                else {
                    // Registered again by someone else between our removal and this request.
                    return Err(DeviceError::NeedsReset {
                        client_id,
                        why: "it was registered again meanwhile".into(),
                    });
                };
                return self
                    .complete(spec, tpm, &client_id, &factory_secret, report)
                    .map(|()| Outcome::Reprovisioned);
            }
        };
        if holds_credential {
            report.client_id = Some(client_id.clone());
            // Leave nothing unused under the serial: a rerun must find the same situation, not
            // a registration it would take for this TPM's own.
            let withdrawn = self.client.withdraw_device(&client_id).unwrap_or(false);
            return Err(DeviceError::TpmOccupied {
                client_id,
                withdrawn,
            });
        }
        self.complete(spec, tpm, &client_id, &secret, report)
            .map(|()| Outcome::Provisioned)
    }

    /// A fresh registration's remaining steps: seal its secret, write the config.
    fn complete(
        &self,
        spec: &DeviceSpec,
        mut tpm: Tpm,
        client_id: &str,
        secret: &str,
        report: &mut DeviceReport,
    ) -> Result<(), DeviceError> {
        report.client_id = Some(client_id.to_owned());
        self.observe(&spec.serial, Step::Registered);
        seal(&mut tpm, client_id, secret)?;
        drop(tpm);
        self.observe(&spec.serial, Step::Sealed);
        report.config = Some(self.write_config(spec, client_id, true)?);
        self.observe(&spec.serial, Step::ConfigWritten);
        Ok(())
    }

    /// Remove a registration whose secret was lost: withdrawn by this station if it may (its
    /// own, recent, never rotated), else deleted with `--reset-lost`, else `needs-reset`.
    fn remove_lost(&self, spec: &DeviceSpec, client_id: &str) -> Result<(), DeviceError> {
        let why = match self.client.withdraw_device(client_id) {
            Ok(true) => {
                self.observe(&spec.serial, Step::Withdrawn);
                return Ok(());
            }
            Ok(false) => "it is another station's registration".to_owned(),
            Err(StationError::Refused {
                status: 409,
                description,
                ..
            }) => description.unwrap_or_else(|| "the server refused".into()),
            Err(source) => {
                return Err(DeviceError::Withdraw {
                    client_id: client_id.to_owned(),
                    source,
                })
            }
        };
        if !self.reset_lost {
            return Err(DeviceError::NeedsReset {
                client_id: client_id.to_owned(),
                why,
            });
        }
        self.client
            .delete_device(client_id)
            .map_err(|source| DeviceError::Reset {
                client_id: client_id.to_owned(),
                source,
            })?;
        Ok(())
    }

    fn register(
        &self,
        spec: &DeviceSpec,
        ek: &EndorsementKey,
    ) -> Result<Registration, DeviceError> {
        self.client
            .register_device(&spec.serial, &spec.model, ek, self.dpop)
            .map_err(|source| DeviceError::Register { source })
    }

    fn write_config(
        &self,
        spec: &DeviceSpec,
        client_id: &str,
        force: bool,
    ) -> Result<crate::report::ConfigAction, DeviceError> {
        let device = DeviceConfig {
            issuer: self.client.server().to_owned(),
            client_id: client_id.to_owned(),
            tcti: spec.tcti.clone(),
            serial: spec.serial.clone(),
            dpop: self.dpop,
        };
        config_out::ensure(&spec.config_out, &device, &self.ca_pem, force)
            .map_err(|source| DeviceError::WriteConfig { source })
    }
}

/// Seals the 32 raw bytes of the base64url factory secret (the agent re-encodes them when it
/// authenticates) and reads them back.
fn seal(tpm: &mut Tpm, client_id: &str, encoded: &str) -> Result<(), DeviceError> {
    let decode_failed = || DeviceError::DecodeSecret {
        client_id: client_id.to_owned(),
    };
    let raw = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| decode_failed())?,
    );
    if raw.len() != FACTORY_SECRET_LEN {
        return Err(decode_failed());
    }
    let seal_failed = |source| DeviceError::Seal {
        client_id: client_id.to_owned(),
        source,
    };
    tpm.seal_factory_secret(&raw).map_err(seal_failed)?;
    let unsealed = tpm.unseal_factory_secret().map_err(seal_failed)?;
    if unsealed.as_deref().map(|v| v.as_slice()) != Some(raw.as_slice()) {
        return Err(DeviceError::SealReadBack {
            client_id: client_id.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_sources() {
        let err = DeviceError::WriteConfig {
            source: ConfigOutError::Write {
                path: "/x".into(),
                source: std::io::Error::other("disk\nfull"),
            },
        };
        assert_eq!(
            one_line(&err),
            "cannot write the agent config: cannot write /x: disk full"
        );
    }

    #[test]
    fn outcomes_of_refusals() {
        assert_eq!(
            DeviceError::NeedsReset {
                client_id: "c".into(),
                why: "w".into(),
            }
            .outcome(),
            Outcome::NeedsReset
        );
        assert_eq!(
            DeviceError::Conflict {
                client_id: "c".into(),
                registered: "e".into()
            }
            .outcome(),
            Outcome::Conflict
        );
    }
}
