#!/usr/bin/env bash
# Instructions the service spends on a refused request, counted by valgrind's callgrind: exact
# where the bench's CPU time swings by 10 % from one minute to the next, so it can tell a 1 %
# change. The service runs twice under callgrind with the shipped pipelines.yaml and a fresh
# database, answering FEW and then MANY wrong-key requests sent one after another on one kept-alive
# connection; the difference of the two totals over MANY - FEW is the cost of one request, without
# the start and the stop. Needs valgrind and python3.
#
#   bench/scripts/refusal-instructions.sh [BINARY] [FEW] [MANY] [METRICS_PER_BODY]
#
# (defaults: target/release/mcp-metrics, 2000, 12000, 1). Under valgrind the CPU lacks SHA
# extensions, so the key's SHA-256 counts about ten times what it costs on such a CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=$(realpath "${1:-target/release/mcp-metrics}")
few=${2:-2000}
many=${3:-12000}
metrics=${4:-1}

# The total instructions of one run answering `$1` requests.
instructions() {
    local dir port server
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    (cd "$dir" && METRICS_SERVICE_HOST=127.0.0.1 METRICS_SERVICE_PORT=$port \
        SQLITE_DB_PATH="$dir/metrics.db" OTEL_PROMETHEUS_PORT=0 RUST_LOG=warn \
        exec valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$binary" run >"$dir/log" 2>&1) &
    server=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
        sleep 0.2
    done
    python3 - "$port" "$1" "$metrics" <<'EOF'
import http.client, json, sys
port, count, metrics = (int(a) for a in sys.argv[1:])
body = json.dumps({"service": "bench", "metrics": [{"type": "custom", "value": 1.0}] * metrics})
connection = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(count):
    connection.request("POST", "/metrics", body=body,
                       headers={"X-API-Key": "wrong-key", "Content-Type": "application/json"})
    reply = connection.getresponse()
    reply.read()
    assert reply.status == 401, reply.status
EOF
    kill -TERM "$server"
    wait "$server" || true
    awk '/^summary:/ {print $2}' "$dir/callgrind.out"
    rm -rf "$dir"
}

low=$(instructions "$few")
high=$(instructions "$many")
echo "$(basename "$binary"): $(( (high - low) / (many - few) )) instructions a refused request" \
    "(bodies of $metrics metrics; $few requests: $low, $many: $high)"
