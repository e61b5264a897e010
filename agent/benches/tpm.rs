//! Cost of the TPM operations the agent performs, against a swtpm started by the bench.
//!
//! Run: `cargo bench -p hallmark-agent --bench tpm`.

// A bench has nothing to recover from: the first failure should abort it loudly.
#![allow(clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use hallmark_agent::oauth::dpop::{self, ProofFor};
use hallmark_agent::tpm::{KeySlot, Tpm};
use hallmark_hwsim::Swtpm;

fn tpm_ops(c: &mut Criterion) {
    let sim = Swtpm::temp_manufactured().expect("swtpm starts");
    let mut tpm = Tpm::open(&sim.tcti()).expect("TPM opens");
    let secret = [0x42u8; 32];
    let jwt_signing_input = vec![b'a'; 400];

    // Every open is a new TCP connection that lingers in TIME_WAIT for a minute: keep the
    // count to a few hundred rather than criterion's usual thousands.
    let mut group = c.benchmark_group("tpm");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(200));
    group.measurement_time(Duration::from_millis(500));
    group.bench_function("open", |b| {
        b.iter(|| Tpm::open(&sim.tcti()).expect("open"));
    });
    group.finish();

    let mut group = c.benchmark_group("tpm");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(4));

    group.bench_function("seal_factory_secret+erase", |b| {
        b.iter(|| {
            tpm.seal_factory_secret(&secret).expect("seal");
            tpm.erase_factory_secret().expect("erase");
        });
    });

    tpm.seal_factory_secret(&secret).expect("seal");
    group.bench_function("unseal_factory_secret", |b| {
        b.iter(|| tpm.unseal_factory_secret().expect("unseal"));
    });

    group.bench_function("seal_blob_2KiB", |b| {
        let data = vec![7u8; 2048];
        b.iter(|| tpm.seal_blob(&data).expect("seal blob"));
    });

    let blob = tpm.seal_blob(&[7u8; 2048]).expect("seal blob");
    group.bench_function("unseal_blob_2KiB", |b| {
        b.iter(|| tpm.unseal_blob(&blob).expect("unseal blob"));
    });

    group.bench_function("create_device_key+erase", |b| {
        b.iter(|| {
            tpm.create_device_key(KeySlot::B).expect("create");
            tpm.erase_device_key(KeySlot::B).expect("erase");
        });
    });

    let key = tpm.create_device_key(KeySlot::A).expect("create");
    group.bench_function("sign_es256_400B", |b| {
        b.iter(|| {
            tpm.sign_es256(KeySlot::A, &jwt_signing_input)
                .expect("sign")
        });
    });

    // A whole DPoP proof as the agent makes one for a resource request (issue 15): header with
    // the key's JWK, claims with a fresh jti and `ath`, signed by the device key in the TPM.
    let jwk = key.jwk_json();
    let token = "a".repeat(600);
    group.bench_function("dpop_proof_with_ath", |b| {
        b.iter(|| {
            let what = ProofFor {
                method: "GET",
                url: "https://api.example/v1/telemetry",
                access_token: Some(&token),
                nonce: None,
            };
            dpop::build(&jwk, what, 1_700_000_000, |input| {
                tpm.sign_es256(KeySlot::A, input)
            })
            .expect("proof")
        });
    });

    group.bench_function("endorsement_key", |b| {
        b.iter(|| tpm.endorsement_key().expect("ek"));
    });
    group.finish();
}

criterion_group!(benches, tpm_ops);
criterion_main!(benches);
