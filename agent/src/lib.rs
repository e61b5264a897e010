//! Hallmark's on-device agent library: the device's credential lives in its TPM.
#![warn(missing_docs)]

pub mod config;
pub mod tpm;
