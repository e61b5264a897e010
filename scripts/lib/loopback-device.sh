# shellcheck shell=bash
# Sourced by scripts/bench-agent and scripts/cross: one device as the factory leaves it, on
# loopback, from the workspace's real binaries —
#   a hallmark-server (TLS, its own CA) on a free port, with a factory station client;
#   a manufactured simulated TPM (`hallmark-hwsim fleet up --count 1`: swtpm over TCP);
#   the device provisioned by `hallmark-provision device` (factory secret sealed, agent.toml).
# The agent is not run here: the caller runs whichever build it measures or tests.
#
#   hm_device_up WORK BIN_DIR   sets HM_CONFIG (agent.toml), HM_ISSUER, HM_CA, HM_DEVICE_DIR
#                               and HM_ADMIN ("client_id:secret" of the server's admin client)
#   hm_device_down              stops what hm_device_up started (also on EXIT: see the trap)

hm_server_pid=""
hm_fleet_dir=""
hm_bin=""

hm_log() { echo "${HM_LOG_PREFIX:-loopback}: $*" >&2; }

hm_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# hm_json FIELD: the string FIELD of the JSON object on stdin.
hm_json() {
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

hm_device_up() {
  local work=$1 port init admin_id admin_secret token tcti i
  hm_bin=$2
  mkdir -p "$work"
  port=$(hm_free_port)
  HM_ISSUER="https://localhost:$port"
  init=$("$hm_bin/hallmark-server" init --data-dir "$work/server" --issuer "$HM_ISSUER")
  HM_CA=$(hm_json ca_cert <<<"$init")
  admin_id=$(hm_json admin_client_id <<<"$init")
  admin_secret=$(hm_json admin_client_secret <<<"$init")
  HM_ADMIN="$admin_id:$admin_secret"
  "$hm_bin/hallmark-server" serve --data-dir "$work/server" --listen "127.0.0.1:$port" \
    >/dev/null 2>"$work/server.log" &
  hm_server_pid=$!
  for i in $(seq 1 300); do
    curl -fsS --cacert "$HM_CA" "$HM_ISSUER/readyz" >/dev/null 2>&1 && break
    kill -0 "$hm_server_pid" 2>/dev/null || { cat "$work/server.log" >&2; return 1; }
    [ "$i" = 300 ] && { hm_log "server not ready after 30 s"; return 1; }
    sleep 0.1
  done
  hm_log "server $HM_ISSUER (pid $hm_server_pid)"

  # The factory station: a client with scope devices:provision, registered by the admin client.
  token=$(curl -fsS --cacert "$HM_CA" -u "$admin_id:$admin_secret" "$HM_ISSUER/oauth2/token" \
    -d grant_type=client_credentials -d scope=clients:admin | hm_json access_token)
  curl -fsS --cacert "$HM_CA" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' "$HM_ISSUER/admin/clients" \
    -d '{"client_name":"loopback station","grant_types":["client_credentials"],"scope":"devices:provision","token_endpoint_auth_method":"client_secret_basic"}' |
    python3 -c 'import json, sys; b = json.load(sys.stdin); print(json.dumps({"client_id": b["client_id"], "client_secret": b["client_secret"]}))' \
    >"$work/station.json"
  chmod 600 "$work/station.json"

  hm_fleet_dir="$work/fleet"
  "$hm_bin/hallmark-hwsim" fleet up --count 1 --dir "$hm_fleet_dir" >"$work/fleet.out"
  # manifest.csv: serial,model,tcti,config_out (the TCTI quoted: it holds a comma).
  tcti=$(python3 -c 'import csv, sys; print(next(csv.DictReader(open(sys.argv[1])))["tcti"])' \
    "$hm_fleet_dir/manifest.csv")
  hm_log "TPM $tcti"

  HM_DEVICE_DIR="$work/device"
  HM_CONFIG="$HM_DEVICE_DIR/agent.toml"
  "$hm_bin/hallmark-provision" --server "$HM_ISSUER" --ca "$HM_CA" --station "$work/station.json" \
    device --serial HM-LOOPBACK-1 --model loopback --tcti "$tcti" --config-out "$HM_CONFIG" \
    >"$work/provision.json"
  hm_log "provisioned: $(cat "$work/provision.json")"
  export HM_CONFIG HM_ISSUER HM_CA HM_DEVICE_DIR HM_ADMIN
}

# hm_check_token TOKEN: the server says (RFC 7662, asked by the admin client) that TOKEN is
# active and was issued to the provisioned device.
hm_check_token() {
  local client_id verdict
  client_id=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["client_id"])' "$HM_CONFIG")
  verdict=$(curl -fsS --cacert "$HM_CA" -u "$HM_ADMIN" "$HM_ISSUER/oauth2/introspect" \
    -d "token=$1" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("active"), d.get("client_id"))')
  if [ "$verdict" != "True $client_id" ]; then
    hm_log "not an active token of $client_id: $verdict"
    return 1
  fi
}

hm_device_down() {
  if [ -n "$hm_fleet_dir" ] && [ -n "$hm_bin" ]; then
    "$hm_bin/hallmark-hwsim" fleet down --dir "$hm_fleet_dir" >/dev/null 2>&1 || true
    hm_fleet_dir=""
  fi
  if [ -n "$hm_server_pid" ]; then
    kill -TERM "$hm_server_pid" 2>/dev/null || true
    wait "$hm_server_pid" 2>/dev/null || true
    hm_server_pid=""
  fi
}
