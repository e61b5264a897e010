//! The withdrawal window in process, with a chosen clock: a station may take back its own
//! unused registration for 15 minutes after making it, and not a second later.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod device_support;

use device_support::{now, InProcess};
use hallmark_server::config::ConfigLayer;
use hallmark_server::oauth::devices::{
    DeviceRegistration, Registered, Withdrawal, WITHDRAW_WINDOW,
};
use hallmark_server::oauth::RequestCtx;

async fn register(s: &InProcess, serial: &str, ek: u8, at: u64) -> String {
    let req: DeviceRegistration = serde_json::from_value(serde_json::json!({
        "serial": serial, "model": "gw", "ek_fingerprint": format!("{ek:02x}").repeat(32),
    }))
    .unwrap();
    match s
        .oauth
        .register_device(req, "station-1", &RequestCtx::at(at))
        .await
        .unwrap()
    {
        Registered::Created { client_id, .. } => client_id,
        _ => panic!("not created"),
    }
}

#[tokio::test]
async fn withdrawal_is_possible_only_within_the_window() {
    let s = InProcess::start(ConfigLayer::default()).await;
    let t = now();
    let late = register(&s, "HM-LATE", 1, t).await;
    let ctx = RequestCtx::at(t + WITHDRAW_WINDOW + 1);
    assert!(matches!(
        s.oauth
            .withdraw_device(&late, "station-1", &ctx)
            .await
            .unwrap(),
        Withdrawal::Refused(_)
    ));
    assert!(s.oauth.device_view(&late).await.unwrap().is_some(), "kept");

    let timely = register(&s, "HM-TIMELY", 2, t).await;
    let ctx = RequestCtx::at(t + WITHDRAW_WINDOW);
    assert_eq!(
        s.oauth
            .withdraw_device(&timely, "station-2", &ctx)
            .await
            .unwrap(),
        Withdrawal::NotFound,
        "another station's device"
    );
    assert_eq!(
        s.oauth
            .withdraw_device(&timely, "station-1", &ctx)
            .await
            .unwrap(),
        Withdrawal::Withdrawn
    );
    assert!(s.oauth.device_view(&timely).await.unwrap().is_none());
}
