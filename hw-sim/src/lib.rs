//! Simulated hardware for Hallmark's tests and demo: swtpm instances, fleets and faults.
//!
//! Every test that needs a TPM starts its own:
//!
//! ```no_run
//! # fn main() -> Result<(), hallmark_hwsim::SwtpmError> {
//! let tpm = hallmark_hwsim::Swtpm::temp_manufactured()?;
//! let tcti = tpm.tcti(); // "swtpm:host=127.0.0.1,port=…": hand it to the agent
//! # Ok(()) }
//! ```
//!
//! Nothing in production code depends on this crate.
#![warn(missing_docs)]

pub mod cli;
pub mod demo;
pub mod dpop_proofs;
pub mod fleet;
pub mod fleet_load;
mod manufacture;
mod swtpm;

pub use manufacture::{is_manufactured, LocalCa, ManufactureError};
pub use swtpm::{tcti_for_port, Swtpm, SwtpmError};
