#!/usr/bin/env bash
# tests/test_hosts.sh: scripts/launch_hosts.sh across two hosts for real. Two Linux network namespaces joined by
# a veth pair (10.213.0.1 and 10.213.0.2, nothing else reachable) play two machines; OpenMPI launches its daemon
# on each through scripts/netns_agent.sh (an ssh stand-in) and the ranks talk TCP over the veth. Checks: 2 ranks
# per host (data parallel and --ep 2) equal one host's 4 ranks and 1 process; cutting the link mid-run ends
# mpirun and every rank with an error within 60 s; the complete checkpoints are intact; --resume on one host
# continues bit-identically. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for ip netns) and iproute2; SKIPs otherwise.
#
#   bash tests/test_hosts.sh [WORKDIR]
#
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" hosts "$@"
OWN_W=$([ $# -ge 1 ] && echo 0 || echo 1)   # lib.sh's temporary work folder is removed at exit (trap below)
BIN=./train_moe

if ! command -v mpirun > /dev/null; then
    skip "two-host checks: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"; finish
fi
if ! "$BIN" --help > /dev/null 2>&1 || ! grep -q USE_MPI build/.flags 2>/dev/null; then
    skip "two-host checks: ./train_moe was built without MPI (mpicc missing at build time)"; finish
fi
if ! command -v ip > /dev/null; then
    skip "two-host checks: the ip command is missing (apt-get install iproute2)"; finish
fi

# ---- two hosts: namespaces HA and HB, veth VA (in HA, 10.213.0.1) <-> VB (in HB, 10.213.0.2); names carry $$ so
# that parallel runs do not collide; everything is removed at exit, whatever happened
HA=tmh$$a; HB=tmh$$b; VA=tmh$$a; VB=tmh$$b
hosts_down() {
    local ns pids
    for ns in "$HA" "$HB"; do
        ip netns list 2>/dev/null | grep -q "^$ns\( \|$\)" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null)       # only what this test started runs in its namespaces
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null                # deletes the veth end inside it, and so the pair
    done
    [ "$OWN_W" = 1 ] && rm -rf "$W"
}
trap hosts_down EXIT
trap 'exit 130' INT TERM
hosts_up() {
    ip netns add "$HA" && ip netns add "$HB" \
        && ip link add "$VA" netns "$HA" type veth peer name "$VB" netns "$HB" \
        && ip -n "$HA" addr add 10.213.0.1/24 dev "$VA" && ip -n "$HB" addr add 10.213.0.2/24 dev "$VB" \
        && ip -n "$HA" link set lo up && ip -n "$HB" link set lo up \
        && ip -n "$HA" link set "$VA" up && ip -n "$HB" link set "$VB" up \
        && ip netns exec "$HA" true
}
if ! err=$(hosts_up 2>&1); then
    skip "two-host checks: cannot make network namespaces (needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN): $(echo $err | cut -c1-200)"
    finish
fi

# OpenMPI on two hosts: mpirun runs inside host A (the daemons call back to it over the veth) and starts a daemon
# on each host named in the hostfile through the agent; TCP only, only on the veth. These reach launch_hosts.sh's
# mpirun as OMPI_MCA_ variables (its interface stays HOSTFILE NP FLAGS...).
HOSTS=$W/hosts.txt
printf '%s slots=2\n%s slots=2\n' "$HA" "$HB" > "$HOSTS"
TWO_HOSTS=(env OMPI_MCA_plm_rsh_agent="$ROOT/scripts/netns_agent.sh" OMPI_MCA_plm_rsh_no_tree_spawn=1
           OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=10.213.0.0/24 OMPI_MCA_oob_tcp_if_include=10.213.0.0/24
           ip netns exec "$HA" scripts/launch_hosts.sh "$HOSTS" 4)
# one host: plain mpirun, shared memory
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ONE_HOST=(mpirun --oversubscribe --mca btl self,vader -np 4)

D=$W/data
mkdir -p "$D"
"$PY" data/shard_tool.py write "$D/train_0.bin" --random 40000 --vocab 4096 --seed 21 > /dev/null
"$PY" data/shard_tool.py write "$D/val_0.bin" --random 6000 --vocab 4096 --seed 22 > /dev/null
BASE=(--model k2-l1 --seq-len 32 --threads 1 --peak-gflops 100 --val-every 0 --sample-every 0 --tokenizer /nonexistent
      --train-data "$D/train_*.bin" --val-data "$D/val_*.bin" --adam-eps 1e-6)
oneline() { tr '\n' ' ' < "$1" | cut -c1-300; }
veth_bytes() {  # bytes through host A's end of the veth, both ways
    ip netns exec "$HA" cat "/sys/class/net/$VA/statistics/rx_bytes" "/sys/class/net/$VA/statistics/tx_bytes" \
        | awk '{ n += $1 } END { print n + 0 }'
}
# run NAME WHERE ARGS...: trains into $W/NAME on WHERE = 1 (one process), one (4 ranks, one host) or two (2 ranks
# on each host, through launch_hosts.sh); hang guard 120 s; exit code in RC
run() {
    local name=$1 where=$2; shift 2
    case $where in
        1)   timeout 120 "$BIN" "$@" --out "$W/$name" ;;
        one) timeout 120 "${ONE_HOST[@]}" "$BIN" "$@" --out "$W/$name" ;;
        two) timeout 120 "${TWO_HOSTS[@]}" "$@" --out "$W/$name" ;;
    esac > "$W/$name.out" 2> "$W/$name.err"
    RC=$?
}
same() {  # same DESC REF RUN: step losses of RUN equal REF's to 1e-5 relative (and the final weights closely)
    local msg
    msg=$("$PY" tests/compare_runs.py "$W/$2" "$W/$3" 5 --loss-rtol 1e-5 --weight-rl2 1e-4 --weight-atol 1e-4 2>&1)
    if [ $? -eq 0 ]; then pass "$1: $msg"; else fail "$1: $msg"; fi
}

# ---- 1. two hosts equal one host (same world layout: bit for bit) and one process (same global batch)
run ref1 1 "${BASE[@]}" --batch-size 8 --steps 5
[ $RC -eq 0 ] || { fail "1 process: exit $RC: $(oneline "$W/ref1.err")"; finish; }
for ep in 1 2; do
    run "one_ep$ep" one "${BASE[@]}" --batch-size 2 --ep $ep --steps 5
    [ $RC -eq 0 ] || { fail "4 ranks on one host, --ep $ep: exit $RC: $(oneline "$W/one_ep$ep.err")"; continue; }
    bytes0=$(veth_bytes)
    run "two_ep$ep" two "${BASE[@]}" --batch-size 2 --ep $ep --steps 5
    mb=$(( ($(veth_bytes) - bytes0) / 1000000 ))
    [ $RC -eq 0 ] || { fail "2 hosts x 2 ranks, --ep $ep: exit $RC: $(oneline "$W/two_ep$ep.err")"; continue; }
    # every step's gradients cross between the hosts: megabytes on the veth prove the ranks were on both
    if [ "$mb" -ge 1 ]; then pass "2 hosts x 2 ranks, --ep $ep: $mb MB crossed the veth between the hosts"
    else fail "2 hosts x 2 ranks, --ep $ep: only $mb MB crossed the veth: were the ranks on both hosts?"; fi
    same "2 hosts x 2 ranks, --ep $ep == 4 ranks on one host" "one_ep$ep" "two_ep$ep"
    same "2 hosts x 2 ranks x batch 2, --ep $ep == 1 process x batch 8" ref1 "two_ep$ep"
    if cmp -s "$W/one_ep$ep/model_00000005.bin" "$W/two_ep$ep/model_00000005.bin"; then
        pass "2 hosts, --ep $ep: final model bit-identical to one host's (same world layout)"
    else
        fail "2 hosts, --ep $ep: final model differs from one host's in its bits (the environment of the other host?)"
    fi
done

# ---- 2. cut the link mid-run: mpirun and every rank end with an error within 60 s
STEPS=12
L=("${BASE[@]}" --batch-size 2 --ep 2 --optim muon --steps $STEPS --ckpt-every 2 --ckpt-keep 0)
run uncut one "${L[@]}"
[ $RC -eq 0 ] || { fail "uncut reference run: exit $RC: $(oneline "$W/uncut.err")"; finish; }
timeout 150 "${TWO_HOSTS[@]}" "${L[@]}" --out "$W/cut" > "$W/cut.out" 2> "$W/cut.err" &
job=$!
for _ in $(seq 180); do compgen -G "$W/cut/DONE_*" > /dev/null && break; kill -0 $job 2>/dev/null || break; sleep 0.5; done
if ! compgen -G "$W/cut/DONE_*" > /dev/null; then
    wait $job; fail "link cut: no checkpoint appeared (exit $?): $(oneline "$W/cut.err")"; finish
fi
ip -n "$HB" link set "$VB" down
t0=$(date +%s)
left="?"
for _ in $(seq 75); do
    sleep 1
    left=$( (ip netns pids "$HA"; ip netns pids "$HB") | wc -l)
    ! kill -0 $job 2>/dev/null && [ "$left" -eq 0 ] && break
done
dt=$(( $(date +%s) - t0 ))
if kill -0 $job 2>/dev/null; then
    fail "link cut: mpirun still running ${dt}s after the cut ($left processes on the hosts); stopping it"
    hosts_pids=$( (ip netns pids "$HA"; ip netns pids "$HB") ); [ -n "$hosts_pids" ] && kill -9 $hosts_pids
    wait $job
else
    wait $job; rc=$?
    why=$(grep -m1 -E "lost communication|error" "$W/cut.err")
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$dt" -le 60 ] && [ "$left" -eq 0 ] && [ ! -e "$W/cut/DONE_$(printf %08d $STEPS)" ]; then
        pass "link cut: mpirun exit $rc, every rank and daemon on both hosts gone ${dt}s after the cut: $why"
    else
        fail "link cut: exit $rc after ${dt}s (limit 60), $left processes left on the hosts: $(oneline "$W/cut.err")"
    fi
fi
ip -n "$HB" link set "$VB" up

# ---- 3. every complete checkpoint is intact: byte for byte the uncut run's
ndone=0; bad=""
for done in "$W"/cut/DONE_*; do
    s=${done##*DONE_}
    ndone=$((ndone + 1))
    for f in "model_$s.bin" "state_${s}_r0.bin" "state_${s}_r1.bin" "state_${s}_r2.bin" "state_${s}_r3.bin"; do
        cmp -s "$W/cut/$f" "$W/uncut/$f" || bad="$bad $f"
    done
done
if [ $ndone -ge 1 ] && [ -z "$bad" ]; then pass "after the cut: $ndone complete checkpoint(s), every file identical to the uncut run's"
else fail "after the cut: $ndone complete checkpoints; damaged or different:$bad"; fi

# ---- 4. --resume on one host (same world size) continues bit-identically to the end
last=$(ls "$W"/cut/DONE_* | tail -n 1); last=$((10#${last##*DONE_}))
run cut one "${L[@]}" --resume
fin=$(printf %08d $STEPS)
if [ $RC -eq 0 ] && grep -q "resumed from step $last" "$W/cut.out" && cmp -s "$W/cut/model_$fin.bin" "$W/uncut/model_$fin.bin" \
    && cmp -s "$W/cut/state_${fin}_r3.bin" "$W/uncut/state_${fin}_r3.bin"; then
    pass "--resume on one host from step $last: the final model (step $STEPS) and state are bit-identical to the uncut run's"
else
    fail "--resume on one host from step $last: exit $RC, final model or state differs: $(oneline "$W/cut.err")"
fi
finish
