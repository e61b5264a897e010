# Shared by scripts/bench-audit-bytes, scripts/bench-audit-soak and scripts/bench-dpop: a
# release server on a fresh data directory over plain loopback HTTP, one registered client, and
# wrk issuing client_credentials tokens to it. Source it; needs curl, and installs wrk if missing.
# SERVER_CPU / LOAD_CPU pin the server / wrk to one CPU each with taskset.

# wrk is the load generator; Debian packages it.
if ! command -v wrk >/dev/null; then
    echo "installing wrk, the load generator" >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null ||
        { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
fi

# BIN=path/to/hallmark-server uses that binary as it is (no build).
if [ -n "${BIN:-}" ]; then
    build_release() { :; }
else
    BIN=${CARGO_TARGET_DIR:-target}/release/hallmark-server
    build_release() { cargo build --release --locked -p hallmark-server >&2; }
fi

# start_server WORK [serve flags…]: init WORK/data (once) and serve it; sets PORT, PID.
start_server() {
    local work=$1
    shift
    if [ ! -d "$work/data" ]; then
        PORT=$((20000 + RANDOM % 20000))
        "$BIN" init --data-dir "$work/data" --issuer "http://127.0.0.1:$PORT" >"$work/init.json"
    fi
    RUST_LOG=${RUST_LOG:-warn} ${SERVER_CPU:+taskset -c "$SERVER_CPU"} "$BIN" serve --data-dir "$work/data" --insecure-http \
        --listen "127.0.0.1:$PORT" "$@" 2>>"$work/server.log" &
    PID=$!
    for _ in $(seq 200); do
        curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
        sleep 0.05
    done
    echo "server did not start: $(tail -5 "$work/server.log")" >&2
    return 1
}

stop_server() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}

# register_client WORK: a secret client for the load; writes WORK/load.lua for wrk.
register_client() {
    local work=$1 admin_id admin_secret admin_token reg id secret
    admin_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin_client_id"])' "$work/init.json")
    admin_secret=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin_client_secret"])' "$work/init.json")
    admin_token=$(curl -fs -u "$admin_id:$admin_secret" -d grant_type=client_credentials \
        -d scope=clients:admin "http://127.0.0.1:$PORT/oauth2/token" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    reg=$(curl -fs -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
        -d '{"client_name":"load","scope":"api:read","token_endpoint_auth_method":"client_secret_basic"}' \
        "http://127.0.0.1:$PORT/admin/clients")
    id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["client_id"])' "$reg")
    secret=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["client_secret"])' "$reg")
    cat >"$work/load.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $(printf '%s:%s' "$id" "$secret" | base64 -w0)"
LUA
}

# load WORK SECONDS [SCRIPT]: wrk against the token endpoint (SCRIPT defaults to
# WORK/load.lua); prints "TOKENS RATE" (2xx only). WRK_OUT, if set, names a file that gets
# wrk's whole report.
load() {
    local work=$1 secs=$2 script=${3:-$1/load.lua} out total bad
    out=$(${LOAD_CPU:+taskset -c "$LOAD_CPU"} wrk -t2 -c${LOAD_CONNECTIONS:-32} -d"${secs}s" \
        --latency -s "$script" "http://127.0.0.1:$PORT/oauth2/token")
    [ -z "${WRK_OUT:-}" ] || echo "$out" >"$WRK_OUT"
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    total=$((total - ${bad:-0}))
    echo "$total $(python3 -c "print(f'{$total/$secs:.0f}')")"
}

# bytes DIR: size on disk of DIR in bytes (0 if missing).
bytes() {
    [ -e "$1" ] && du -sb "$1" | cut -f1 || echo 0
}
