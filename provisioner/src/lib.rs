//! `hallmark-provision`'s library: the factory station that registers devices with the server,
//! seals each device's factory secret into its TPM and writes its agent config.
//!
//! One device is [`Station::provision`]; a manifest of many is [`batch::run`]. Both are
//! idempotent: what the server and the TPM already hold decides the [`Outcome`], and nothing is
//! ever registered or sealed twice.
#![warn(missing_docs)]

pub mod batch;
pub mod cli;
pub mod config_out;
pub mod device;
pub mod report;
pub mod station;

pub use device::{DeviceSpec, Station, Step};
pub use report::{DeviceReport, Outcome};
pub use station::{StationClient, StationCredentials};
