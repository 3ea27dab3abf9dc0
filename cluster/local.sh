#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine, for trying distributed jobs without a cloud:
# one head node (no CPUs of its own) and N worker nodes, each its own `ray start --block` (its
# own raylet, object store, worker processes and temp dir), with logical GPUs (`--num-gpus`; no
# GPU needed). Every node listens on 127.0.0.1 only (GCS, raylets, workers, agents, metrics,
# the dashboard and Ray Jobs API), and token authentication is on unless --no-auth (the token
# file is made mode 0600). See cluster/README.md.
#
#   cluster/local.sh up [--workers N] [--gpus-per-worker G] [--cpus-per-worker C] [...]
#   cluster/local.sh status
#   cluster/local.sh down
set -euo pipefail

usage() {
    cat <<'EOF'
usage: cluster/local.sh up [options] | status | down

  up      start a head node and N worker nodes on this machine; returns when all have joined
  status  show the cluster's nodes and resources (ray status)
  down    stop every process `up` started

options for up:
  --workers N            worker nodes (default 2)
  --cpus-per-worker C    logical CPUs per worker node (default 1)
  --gpus-per-worker G    logical GPUs per worker node (default 0; no real GPU needed)
  --port P               GCS port of the head (default 6380: Redis may hold Ray's usual 6379)
  --dashboard-port D     dashboard and Ray Jobs API port, bound to 127.0.0.1 (default 8265)
  --client-port P        Ray Client server port (default 10001)
  --object-store-mb M    object store per node in MiB (default 256)
  --timeout S            seconds to wait for all nodes to join (default 180)
  --no-auth              turn Ray's token authentication off (default: on, token in ~/.ray/auth_token)
  -h, --help             this text

Environment: HPO_RAY_TMPDIR (default /tmp/ray-hpo-$UID) holds Ray's session files (the head's,
and each worker node's under w1/, w2/, ...), and under local-cluster/ the output of each
`ray start` and their pid files.
EOF
}

die() { echo "local.sh: error: $*" >&2; exit 1; }
usage_error() { echo "local.sh: error: $*" >&2; echo "run 'cluster/local.sh -h' for usage" >&2; exit 2; }

RAY_TMP="${HPO_RAY_TMPDIR:-/tmp/ray-hpo-$(id -u)}"   # short: Ray's socket paths live under it
STATE="$RAY_TMP/local-cluster"
PYTHON="${PYTHON:-python3}"

WORKERS=2 CPUS=1 GPUS=0 PORT=6380 DASH_PORT=8265 CLIENT_PORT=10001 OBJ_MB=256 TIMEOUT=180 AUTH=token

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }

alive() { kill -0 "$1" 2>/dev/null; }

# a pid from our pid files is still one of our `ray start --block` processes (not a reused pid)
ours() {
    alive "$1" || return 1
    local cmd
    cmd="$(tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline" || true)"
    [[ "$cmd" == *" start "*"--block"* ]]
}

# pids from the pid files, workers first (they are stopped before the head)
pid_files() {
    local f
    for f in "$STATE"/worker-*.pid "$STATE"/head.pid; do
        [[ -e "$f" ]] && echo "$f"
    done
    return 0
}

running_pids() {
    local f pid
    while read -r f; do
        pid="$(cat "$f" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && ours "$pid"; then echo "$pid"; fi
    done < <(pid_files)
    return 0
}

port_free() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# processes of this cluster still alive (Ray's own processes carry their node's session directory
# in their command line; this also finds any that left the process group of their `ray start`)
session_pids() {
    local link session sessions=() p cmd argv0
    for link in "$RAY_TMP/session_latest" "$RAY_TMP"/w*/session_latest; do
        session="$(readlink -f "$link" 2>/dev/null || true)"
        [[ -n "$session" && "$session" == "$RAY_TMP"/* ]] && sessions+=("$session")
    done
    ((${#sessions[@]})) || return 0
    for p in /proc/[0-9]*; do
        [[ "${p#/proc/}" == "$$" || "${p#/proc/}" == "${BASHPID:-}" ]] && continue
        cmd="$(tr '\0' ' ' 2>/dev/null < "$p/cmdline" || true)"
        argv0="${cmd%% *}"
        # Ray's binaries and Python processes only (not, say, a `less` reading a log file there)
        case "${argv0##*/}" in
            gcs_server|raylet|python*|ray|ray::*)
                for session in "${sessions[@]}"; do
                    if [[ "$cmd" == *"$session"* ]]; then echo "${p#/proc/}"; break; fi
                done ;;
        esac
    done
    return 0
}

stop_all() {  # $1: "quiet" to print nothing (cleaning up after a failed `up`: shorter grace period)
    local quiet="${1:-}" f pid pids=() deadline left grace=30
    while read -r f; do
        pid="$(cat "$f" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && ours "$pid"; then
            pids+=("$pid")
            # each `ray start --block` leads its own process group (setsid); on SIGTERM it stops its
            # raylet, GCS, dashboard and workers; the group signal reaches any it left behind
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
    done < <(pid_files)
    # a node still starting may not answer SIGTERM for a while (its main thread waits in Ray's C++ code)
    [[ "$quiet" == quiet ]] && grace=10
    deadline=$((SECONDS + grace))
    while ((SECONDS < deadline)); do
        left=0
        for pid in ${pids[@]+"${pids[@]}"}; do
            if kill -0 -- "-$pid" 2>/dev/null || alive "$pid"; then left=1; fi
        done
        ((left == 0)) && break
        sleep 0.5
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    local stray
    stray="$(session_pids | tr '\n' ' ')"
    if [[ -n "${stray// /}" ]]; then
        sleep 2
        stray="$(session_pids | tr '\n' ' ')"
        if [[ -n "${stray// /}" ]]; then
            # shellcheck disable=SC2086
            kill -KILL $stray 2>/dev/null || true
            [[ "$quiet" == quiet ]] || echo "killed leftover Ray processes of this cluster: $stray"
        fi
    fi
    rm -f "$STATE"/*.pid "$STATE/cluster.env" "$RAY_TMP/ray_current_cluster" "$RAY_TMP"/w*/ray_current_cluster
    if [[ "$quiet" != quiet ]]; then
        if ((${#pids[@]} == 0)); then
            echo "no local Ray cluster is running"
        else
            echo "local Ray cluster stopped (${#pids[@]} ray start processes)"
        fi
    fi
}

# Every node listens on 127.0.0.1 only. Ray binds its GCS, raylet, worker processes, dashboard
# agent and metrics export to 127.0.0.1 when the node's address is 127.0.0.1 (and to every
# interface otherwise), but Ray 2.60 turns a 127.0.0.1 --node-ip-address or --address into the
# machine's address (ray._private.services.resolve_ip_for_localhost) unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with that variable `ray start --address` refuses to
# start a worker node ("Multi-node Ray clusters are not supported on Windows and OSX"). So:
#  - the head and the clients of this script run with that variable (the head's processes, Ray
#    Jobs drivers among them, inherit it, so their ray.init("127.0.0.1:P") stays on loopback);
#  - a worker node runs `ray start` through WORKER_START, which keeps 127.0.0.1 as given by
#    replacing that one private function (Ray has no public option for it) and passes the
#    variable on to the node's own processes.
# (tests/hpo/test_ray_private.py fails on a Ray without that function: hpo/ray_private.py lists it.)
LOOPBACK=RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
WORKER_START='import os, sys
from ray._private import services
services.resolve_ip_for_localhost = lambda host: host  # keep 127.0.0.1: see cluster/local.sh
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())'

# start `ray start --block ARGS...` in its own session, logging to $STATE/$1.log, pid in $1.pid;
# $2 is "head" (`ray start` with $LOOPBACK) or "worker" (WORKER_START)
start_node() {
    local name="$1" kind="$2"; shift 2
    local cmd=(env "$LOOPBACK" ray start --block)
    [[ "$kind" == worker ]] && cmd=("$PYTHON" -c "$WORKER_START" start --block)
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$STATE/$name.pid" "${cmd[@]}" "$@" \
        > "$STATE/$name.log" 2>&1 < /dev/null &
    disown "$!" 2>/dev/null || true   # no "Killed" notices from this shell when `down` ends it
    local i
    for i in $(seq 50); do
        [[ -s "$STATE/$name.pid" ]] && return 0
        sleep 0.1
    done
    die "could not start $name (see $STATE/$name.log)"
}

last_error() {  # the last line of a log that looks like an error, for one-line messages
    grep -E "Error|error|Exception|failed|Failed|abort" "$1" 2>/dev/null | tail -n 1 | cut -c1-200 || true
}

cmd_up() {
    while (($#)); do
        case "$1" in
            --workers) WORKERS="${2-}"; shift 2 || usage_error "--workers needs a value" ;;
            --cpus-per-worker) CPUS="${2-}"; shift 2 || usage_error "--cpus-per-worker needs a value" ;;
            --gpus-per-worker) GPUS="${2-}"; shift 2 || usage_error "--gpus-per-worker needs a value" ;;
            --port) PORT="${2-}"; shift 2 || usage_error "--port needs a value" ;;
            --dashboard-port) DASH_PORT="${2-}"; shift 2 || usage_error "--dashboard-port needs a value" ;;
            --client-port) CLIENT_PORT="${2-}"; shift 2 || usage_error "--client-port needs a value" ;;
            --object-store-mb) OBJ_MB="${2-}"; shift 2 || usage_error "--object-store-mb needs a value" ;;
            --timeout) TIMEOUT="${2-}"; shift 2 || usage_error "--timeout needs a value" ;;
            --no-auth) AUTH=disabled; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage_error "unknown option for up: $1" ;;
        esac
    done
    local v
    for v in WORKERS:--workers CPUS:--cpus-per-worker GPUS:--gpus-per-worker PORT:--port DASH_PORT:--dashboard-port \
             CLIENT_PORT:--client-port OBJ_MB:--object-store-mb TIMEOUT:--timeout; do
        local var="${v%%:*}"
        is_int "${!var}" || usage_error "${v#*:} must be a whole number, got '${!var}'"
    done
    ((WORKERS >= 1)) || usage_error "--workers must be at least 1"
    ((CPUS >= 1)) || usage_error "--cpus-per-worker must be at least 1"
    ((OBJ_MB >= 80)) || usage_error "--object-store-mb must be at least 80 (Ray's minimum is 75 MiB)"

    command -v ray > /dev/null || die "the 'ray' command is not on PATH (activate the project's virtual environment)"
    command -v setsid > /dev/null || die "setsid (util-linux) is needed to run the nodes in their own process groups"

    mkdir -p "$STATE"
    local running
    running="$(running_pids | tr '\n' ' ')"
    [[ -z "${running// /}" ]] || die "a local Ray cluster is already running (pids ${running% }); run 'cluster/local.sh down' first"
    rm -f "$STATE"/*.pid "$STATE"/*.log

    local port what
    for port in "$PORT:GCS, --port" "$DASH_PORT:dashboard, --dashboard-port" "$CLIENT_PORT:Ray Client, --client-port"; do
        what="${port#*:}"; port="${port%%:*}"
        port_free "$port" || die "port $port ($what) is in use; choose another"
    done

    if [[ "$AUTH" == token ]]; then
        # The token opens every node to whoever reads it: the file is for its owner only (0600;
        # `ray get-auth-token --generate` alone writes it with the umask, world-readable by default).
        if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$HOME/.ray/auth_token" ]]; then
            (umask 077 && ray get-auth-token --generate > /dev/null 2>&1) || die "could not generate a Ray token (ray get-auth-token --generate)"
            chmod 600 "$HOME/.ray/auth_token"
            echo "generated a Ray authentication token in ~/.ray/auth_token (mode 0600)"
        fi
        local token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" mode
        if [[ -z "${RAY_AUTH_TOKEN:-}" && -f "$token_file" && -O "$token_file" ]]; then
            mode="$(stat -c %a "$token_file")"
            if (( 8#$mode & 8#077 )); then
                chmod go-rwx "$token_file"
                echo "the Ray token $token_file was readable by others (mode $mode): now by its owner only"
            fi
        fi
    fi
    # Set explicitly on every node: a worker node never turns token mode on by itself
    export RAY_AUTH_MODE="$AUTH"
    export RAY_USAGE_STATS_ENABLED=0
    # `down` sends SIGTERM: stop at once instead of draining each node for 30 s
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"

    # From here on, a failure or an interrupt stops whatever was started.
    UP_DONE=0
    trap 'if ((UP_DONE == 0)); then stop_all quiet; fi' EXIT
    trap 'echo "local.sh: interrupted: stopping the nodes started so far" >&2; exit 130' INT TERM
    printf 'PORT=%s\nDASH_PORT=%s\nAUTH=%s\nWORKERS=%s\n' "$PORT" "$DASH_PORT" "$AUTH" "$WORKERS" > "$STATE/cluster.env"

    local address="127.0.0.1:$PORT" obj=$((OBJ_MB * 1024 * 1024)) deadline=$((SECONDS + TIMEOUT))
    # Common to all nodes: 127.0.0.1 as the node's address (so every Ray port of it listens on
    # loopback only: see LOOPBACK above), random ports for the per-node agents and worker processes
    # (several raylets share this host), a small object store each.
    local common=(--node-ip-address 127.0.0.1 --object-store-memory "$obj" --dashboard-agent-listen-port 0
                  --min-worker-port 0 --max-worker-port 0 --disable-usage-stats)

    start_node head head --head --port "$PORT" --node-name local-head --num-cpus 0 --num-gpus 0 \
        --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" \
        --ray-client-server-port "$CLIENT_PORT" --temp-dir "$RAY_TMP" "${common[@]}"
    local head_pid
    head_pid="$(cat "$STATE/head.pid")"
    until grep -q "Ray runtime started" "$STATE/head.log" 2>/dev/null; do
        if ! alive "$head_pid"; then
            local why; why="$(last_error "$STATE/head.log")"
            die "the head node exited during startup${why:+: $why} (log: $STATE/head.log)"
        fi
        if ((SECONDS >= deadline)); then
            die "the head node did not start within ${TIMEOUT} s (log: $STATE/head.log)"
        fi
        sleep 0.5
    done

    # Each worker node gets a temp dir of its own, as it would on its own machine: nodes sharing
    # one session directory would share runtime_resources/, and one node's runtime-env agent would
    # delete a job's working_dir while another node's processes still run in it.
    local i
    for i in $(seq "$WORKERS"); do
        start_node "worker-$i" worker --address "$address" --node-name "local-worker-$i" \
            --num-cpus "$CPUS" --num-gpus "$GPUS" --temp-dir "$RAY_TMP/w$i" "${common[@]}"
    done

    # Wait until every node is alive in the GCS (a driver asks ray.nodes()), watching the processes.
    local pids rc=0 out
    pids="$(running_pids | tr '\n' ' ')"
    out="$(env "$LOOPBACK" "$PYTHON" - "$address" "$WORKERS" "$((deadline - SECONDS))" $pids <<'EOF' 2>> "$STATE/wait.log"
import os, sys, time
address, workers, timeout, pids = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), [int(p) for p in sys.argv[4:]]
deadline = time.monotonic() + max(timeout, 1.0)

def dead():
    for p in pids:
        try:
            os.kill(p, 0)
        except ProcessLookupError:
            return p
    return None

import ray
try:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=True)
except Exception as e:  # noqa: BLE001 - one line for the shell
    print(f"cannot connect to the head at {address}: {str(e).splitlines()[0]}")
    sys.exit(3)
joined = 0
while True:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    joined = sum(1 for n in nodes if n.get("NodeManagerAddress") and n.get("Resources", {}).get("CPU", 0) > 0)
    if joined >= workers:
        res = ray.cluster_resources()
        print(f"{len(nodes)} nodes alive: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs in all")
        sys.exit(0)
    gone = dead()
    if gone is not None:
        print(f"pid:{gone}")
        sys.exit(4)
    if time.monotonic() > deadline:
        print(f"only {joined} of {workers} worker nodes joined")
        sys.exit(5)
    time.sleep(0.5)
EOF
)" || rc=$?
    if ((rc != 0)); then
        if [[ "$out" == pid:* ]]; then
            local f name
            for f in "$STATE"/*.pid; do
                [[ "$(cat "$f")" == "${out#pid:}" ]] && name="$(basename "$f" .pid)"
            done
            local why; why="$(last_error "$STATE/${name:-head}.log")"
            die "node ${name:-?} exited during startup${why:+: $why} (log: $STATE/${name:-head}.log)"
        elif ((rc == 5)); then
            die "${out} within ${TIMEOUT} s; stopped them all (logs: $STATE/)"
        else
            die "${out:-the wait for the nodes failed} (log: $STATE/wait.log)"
        fi
    fi
    UP_DONE=1
    trap - INT TERM EXIT

    echo "Ray cluster up: head + $WORKERS worker nodes ($CPUS CPU, $GPUS GPU each); $out"
    echo "  jobs:      hpo run SPEC --address $address"
    echo "  dashboard: http://127.0.0.1:$DASH_PORT   (Ray Jobs: ray job submit --address http://127.0.0.1:$DASH_PORT ...)"
    if [[ "$AUTH" == token ]]; then
        echo "  token authentication is on: export RAY_AUTH_MODE=token in the shell that connects"
        echo "             (the token is ~/.ray/auth_token; the dashboard asks for it: ray get-auth-token)"
    fi
    echo "  loopback:  every node listens on 127.0.0.1 only; Ray's own clients on this machine (ray.init,"
    echo "             ray status) need export $LOOPBACK to reach it (hpo run does not)"
    echo "  logs:      $STATE/*.log      stop: cluster/local.sh down"
}

cmd_status() {
    local running
    running="$(running_pids | tr '\n' ' ')"
    if [[ -z "${running// /}" ]]; then
        echo "no local Ray cluster is running"
        return 0
    fi
    # shellcheck disable=SC1091
    [[ -r "$STATE/cluster.env" ]] && . "$STATE/cluster.env"
    echo "ray start processes: ${running% }; address 127.0.0.1:$PORT, dashboard http://127.0.0.1:$DASH_PORT"
    env "$LOOPBACK" RAY_AUTH_MODE="${RAY_AUTH_MODE:-$AUTH}" ray status --address "127.0.0.1:$PORT"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) shift; (($# == 0)) || usage_error "down takes no options"; stop_all ;;
    status) shift; cmd_status ;;
    -h|--help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage_error "unknown command: $1" ;;
esac
