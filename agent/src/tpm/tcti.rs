//! Parsing TCTI strings strictly: tss-esapi silently ignores keys it does not know, so a typo
//! like `swtpm:prot=2321` would quietly connect to the default port.

use std::str::FromStr;

use tss_esapi::tcti_ldr::{DeviceConfig, NetworkTPMConfig, TabrmdConfig};
use tss_esapi::TctiNameConf;

use super::TpmError;

/// Parses `device:PATH`, `swtpm:host=H,port=P`, `mssim:host=H,port=P` or `tabrmd[:CONF]`.
pub(crate) fn parse(tcti: &str) -> Result<TctiNameConf, TpmError> {
    let unsupported = |reason: &str| TpmError::UnsupportedTcti {
        tcti: tcti.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    let parsed = match name {
        "device" => {
            if conf.is_empty() {
                return Err(unsupported(
                    "name the device, e.g. device:/dev/tpmrm0 (the kernel resource manager)",
                ));
            }
            DeviceConfig::from_str(conf).map(TctiNameConf::Device)
        }
        "swtpm" | "mssim" => {
            for part in conf.split(',').filter(|p| !p.is_empty()) {
                let key = part.split_once('=').map_or(part, |(k, _)| k);
                match key {
                    "host" | "port" => {}
                    "path" => {
                        return Err(unsupported(
                            "Unix-socket TCTIs cannot be passed through tss-esapi 7.7; run \
                             swtpm on TCP and use swtpm:host=127.0.0.1,port=N",
                        ))
                    }
                    _ => return Err(unsupported("only host= and port= are understood")),
                }
            }
            let network = NetworkTPMConfig::from_str(conf);
            if name == "swtpm" {
                network.map(TctiNameConf::Swtpm)
            } else {
                network.map(TctiNameConf::Mssim)
            }
        }
        "tabrmd" => TabrmdConfig::from_str(conf).map(TctiNameConf::Tabrmd),
        _ => {
            return Err(unsupported(
                "expected device:PATH, swtpm:host=H,port=P, mssim:host=H,port=P or tabrmd",
            ))
        }
    };
    parsed.map_err(|_| unsupported("malformed host or port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert!(matches!(
            parse("device:/dev/tpmrm0").unwrap(),
            TctiNameConf::Device(_)
        ));
        assert!(matches!(
            parse("swtpm:host=127.0.0.1,port=2321").unwrap(),
            TctiNameConf::Swtpm(_)
        ));
        assert!(matches!(
            parse("mssim:port=2321").unwrap(),
            TctiNameConf::Mssim(_)
        ));
    }

    #[test]
    fn rejects_what_tss_esapi_would_misread() {
        for bad in [
            "swtpm:path=/tmp/sock",
            "swtpm:prot=2321",
            "swtpm:port=notanumber",
            "device",
            "tcp:localhost",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(err, TpmError::UnsupportedTcti { .. }),
                "{bad}: {err}"
            );
        }
    }
}
