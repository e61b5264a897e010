//! What the agent tests check on both sides of a device's credential: the server's view of the
//! device (admin API), and "exactly one live credential" after a rotation — one key in the
//! TPM, the same kid on the server, no pending key, the factory secret refused, and a token
//! from the agent that the server accepts.

use serde_json::Value;

use crate::device::Device;
use crate::server::TestServer;

/// `GET /admin/devices/{client_id}` with an admin token: the operator's view of the device.
pub fn device_view(server: &TestServer, client_id: &str) -> Value {
    let token = server.admin_token("devices:admin");
    let mut r = server
        .http
        .get(&server.url(&format!("/admin/devices/{client_id}")))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Exactly one live key, no factory secret, rotation `done`; the server agrees on the kid,
/// holds no pending key, refuses the factory secret and issues tokens to the key. Returns the
/// status (`status --json`) of the device.
pub fn assert_one_live_key(server: &TestServer, device: &Device) -> Value {
    let inventory = device.inventory();
    assert!(!inventory.factory_secret, "factory secret still sealed");
    assert!(
        inventory.slot_a ^ inventory.slot_b,
        "expected exactly one key: {inventory:?}"
    );
    let status = device.status_json();
    assert_eq!(status["credential"], "key", "{status}");
    assert_eq!(status["rotation"]["state"], "done", "{status}");
    assert_eq!(status["rotation"]["slot"], status["slot"], "{status}");
    let kid = status["jwk"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(status["rotation"]["kid"], kid.as_str(), "{status}");
    let view = device_view(server, &device.client_id);
    assert_eq!(view["credential"], "key", "{view}");
    assert_eq!(view["key_kid"], kid.as_str(), "{view}");
    assert!(view.get("pending_kid").is_none(), "{view}");
    let (code, _) = server.post_form(
        "/oauth2/token",
        Some((&device.client_id, &device.factory_secret)),
        &[("grant_type", "client_credentials")],
    );
    assert_eq!(code, 401, "the factory secret still works");
    let token = device.agent_ok(&["token"]);
    let body = server.introspect(token.trim());
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["client_id"], device.client_id.as_str(), "{body}");
    status
}
