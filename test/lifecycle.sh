#!/usr/bin/env bash
# The lifecycle of detached VMs, driven the way a script drives volt: start
# three VMs in the background, list them, pause one, snapshot it, stop them
# all. Every step's JSON output is parsed and checked against what should
# have happened, and at the end no VM process may be left.
#
#   VOLT=dist/volt KERNEL=vmlinux INITRD=loop.cpio.gz [WORK=dir] [MARKER=text] bash test/lifecycle.sh
#
# INITRD's guest must print MARKER on its console and then keep running.
# VMs live under ${XDG_RUNTIME_DIR:-/run}/volt, as for any volt user. JSON is
# read with jq when it is installed, else (or with JSON_TOOL=bun) with bun. Exits 0 when every check
# held; otherwise prints what failed and exits 1 (after killing any VM it started).
set -euo pipefail

VOLT=${VOLT:-dist/volt}
KERNEL=${KERNEL:?set KERNEL to a guest kernel}
INITRD=${INITRD:?set INITRD to an initramfs whose guest keeps running}
WORK=${WORK:-$(mktemp -d)}
MARKER=${MARKER:-VOLT-LOOP-READY}
BOOT_TIMEOUT_S=${BOOT_TIMEOUT_S:-180}
IDS=(lc-one lc-two lc-three)
PIDS=()
STARTED=()

step() { echo "lifecycle.sh: [${SECONDS}s] $*"; }
fail() {
  echo "lifecycle.sh: FAILED: $*" >&2
  if [[ -n "${OUT:-}" ]]; then echo "lifecycle.sh: the last command's output: $OUT" >&2; fi
  if [[ -s "$WORK/stderr" ]]; then echo "lifecycle.sh: and its stderr: $(cat "$WORK/stderr")" >&2; fi
  exit 1
}

# A process that runs (an exited one may stay a zombie until init reaps it: that is not a VM left behind).
alive() {
  local state
  state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# Kill whatever is still running at exit, so a failed run leaves no VM either.
cleanup() {
  local status=$?
  for id in "${STARTED[@]}"; do
    if ((status != 0)); then
      echo "lifecycle.sh: --- $id: inspect, console (last lines) and volt log ---" >&2
      "$VOLT" inspect "$id" --json >&2 2>/dev/null || true
      "$VOLT" logs "$id" --tail 15 >&2 2>/dev/null || true
      cat "${XDG_RUNTIME_DIR:-/run}/volt/$id/volt.log" >&2 2>/dev/null || true
    fi
    "$VOLT" kill "$id" >/dev/null 2>&1 || true
  done
  for pid in "${PIDS[@]}"; do
    if alive "$pid"; then
      echo "lifecycle.sh: killing leftover VM process $pid" >&2
      kill -9 "$pid" 2>/dev/null || true
      status=1
    fi
  done
  exit "$status"
}
trap cleanup EXIT

# json_get PATH: a value from the JSON document on stdin (PATH like .vms[0].id); fails when it is not JSON.
if [[ "${JSON_TOOL:-}" != bun ]] && command -v jq >/dev/null 2>&1; then
  JSON_TOOL=jq
  json_get() { jq -r "$1"; }
  json_len() { jq -r "$1 | length"; }
  vm_states() { jq -r '[.vms[].state] | join(",")'; }
else
  JSON_TOOL=bun
  json_get() { bun -e 'const d = JSON.parse(await Bun.stdin.text()); const p = process.argv[1]; const v = p === "." ? d : eval("d" + p); console.log(typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));' "$1"; }
  json_len() { bun -e 'const d = JSON.parse(await Bun.stdin.text()); console.log(eval("d" + process.argv[1]).length);' "$1"; }
  vm_states() { bun -e 'const d = JSON.parse(await Bun.stdin.text()); console.log(d.vms.map((v) => v.state).join(","));'; }
fi

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
  [[ "$2" == "$3" ]] || fail "$1: got '$2', expected '$3'"
}

# volt_json ARGS...: runs volt with --json, checks the output is one JSON document, sets OUT and RC.
volt_json() {
  set +e
  OUT=$("$VOLT" "$@" --json 2>"$WORK/stderr")
  RC=$?
  set -e
  printf '%s' "$OUT" | json_get . >/dev/null 2>&1 || fail "volt $* --json printed no JSON (exit $RC): $OUT $(cat "$WORK/stderr")"
}

step "volt=$VOLT kernel=$KERNEL runtime=${XDG_RUNTIME_DIR:-/run}/volt json=$JSON_TOOL"

# 1-2. Three VMs in the background, each booted (its console marker in its log) before the next starts:
# booting is what loads a nested-KVM host most, and three at once have crashed an emulated L1.
for id in "${IDS[@]}"; do
  for attempt in 1 2; do
    # --snapshot-dir: the sandbox lets a VM write snapshots only where it was told it may.
    volt_json run --detach --id "$id" --kernel "$KERNEL" --initrd "$INITRD" --mem 128 --snapshot-dir "$WORK"
    expect_eq "run --detach $id: exit" "$RC" 0
    STARTED+=("$id")
    expect_eq "run --detach $id: ok" "$(printf '%s' "$OUT" | json_get .ok)" true
    expect_eq "run --detach $id: id" "$(printf '%s' "$OUT" | json_get .id)" "$id"
    pid=$(printf '%s' "$OUT" | json_get .pid)
    [[ "$pid" =~ ^[0-9]+$ ]] || fail "run --detach $id: pid '$pid'"
    sleep 1
    alive "$pid" && break
    # Under the nested setup a guest very rarely triple-faults on its first entries while another VM runs
    # (seen once in a clean-clone CI run); one more start is the recovery, said loudly. Twice is a failure.
    ((attempt == 1)) || fail "run --detach $id: pid $pid is not running"
    step "WARNING: $id (pid $pid) ended right after starting: $("$VOLT" inspect "$id" --json 2>/dev/null | tr -d '\n' | grep -o '"detail": *"[^"]*"' | head -1); starting it once more"
    "$VOLT" ls --json >/dev/null 2>&1 || true
  done
  [[ -S "$(printf '%s' "$OUT" | json_get .apiSocket)" ]] || fail "run --detach $id: no API socket"
  PIDS+=("$pid")
  console_log=$(printf '%s' "$OUT" | json_get .consoleLog)
  step "started $id (pid $pid)"
  # The log file itself, not `volt logs` in a loop: each volt start is costly on an emulated host.
  deadline=$((SECONDS + BOOT_TIMEOUT_S))
  until grep -q "$MARKER" "$console_log"; do
    ((SECONDS < deadline)) || fail "$id: no '$MARKER' on its console within ${BOOT_TIMEOUT_S}s"
    sleep 0.5
  done
  volt_json logs "$id"
  expect_eq "logs $id: ok" "$(printf '%s' "$OUT" | json_get .ok)" true
  printf '%s' "$OUT" | json_get .text | grep -q "$MARKER" || fail "volt logs $id --json: no '$MARKER' in its text"
  step "$id booted"
done

# 3. All three are listed, running, with their pids and machine size.
volt_json ls
expect_eq "ls: exit" "$RC" 0
expect_eq "ls: ok" "$(printf '%s' "$OUT" | json_get .ok)" true
expect_eq "ls: count" "$(printf '%s' "$OUT" | json_len .vms)" 3
for i in 0 1 2; do
  id=$(printf '%s' "$OUT" | json_get ".vms[$i].id")
  expect_eq "ls: vm $i state" "$(printf '%s' "$OUT" | json_get ".vms[$i].state")" running
  expect_eq "ls: vm $i memory" "$(printf '%s' "$OUT" | json_get ".vms[$i].memoryMiB")" 128
  case " ${IDS[*]} " in *" $id "*) ;; *) fail "ls: unexpected VM $id" ;; esac
done
step "ls lists the three, running"

# 4. Pause one; pausing it again is refused and changes nothing.
volt_json pause lc-two
expect_eq "pause: exit" "$RC" 0
expect_eq "pause: state" "$(printf '%s' "$OUT" | json_get .state)" paused
volt_json pause lc-two
expect_eq "pause again: exit" "$RC" 2
expect_eq "pause again: error kind" "$(printf '%s' "$OUT" | json_get .error.kind)" state
volt_json inspect lc-two
expect_eq "inspect: state" "$(printf '%s' "$OUT" | json_get .vm.state)" paused
API_SOCKET=$(printf '%s' "$OUT" | json_get .vm.apiSocket)
step "lc-two paused"

# 5. Snapshot the paused VM; it stays paused, the others keep running.
volt_json snapshot create --api-socket "$API_SOCKET" "$WORK/lc-two-snapshot"
expect_eq "snapshot create: exit" "$RC" 0
expect_eq "snapshot create: ok" "$(printf '%s' "$OUT" | json_get .ok)" true
expect_eq "snapshot create: dir" "$(printf '%s' "$OUT" | json_get .snapshot.dir)" "$WORK/lc-two-snapshot"
volt_json snapshot inspect "$WORK/lc-two-snapshot"
expect_eq "snapshot inspect: memory" "$(printf '%s' "$OUT" | json_get .snapshot.memorySizeBytes)" $((128 * 1024 * 1024))
volt_json ls
# Sorted by id: lc-one, lc-three, lc-two.
expect_eq "ls after snapshot: states" "$(printf '%s' "$OUT" | vm_states)" "running,running,paused"
step "lc-two snapshotted to $WORK/lc-two-snapshot"

# 6. Stop all three (the paused one too); each stop waits for its process and reports how it ended.
for id in "${IDS[@]}"; do
  volt_json stop "$id"
  expect_eq "stop $id: exit" "$RC" 0
  expect_eq "stop $id: ok" "$(printf '%s' "$OUT" | json_get .ok)" true
  expect_eq "stop $id: outcome" "$(printf '%s' "$OUT" | json_get .outcome)" signal
  expect_eq "stop $id: VM exit status" "$(printf '%s' "$OUT" | json_get .exitCode)" 0
  step "stopped $id"
done

# 7. Nothing left: no VM listed, their directories cleaned, every process gone.
volt_json ls
expect_eq "final ls: count" "$(printf '%s' "$OUT" | json_len .vms)" 0
expect_eq "final ls: cleaned" "$(printf '%s' "$OUT" | json_len .cleaned)" 3
for pid in "${PIDS[@]}"; do
  if alive "$pid"; then fail "VM process $pid is still running"; fi
done
step "ok: three VMs started, listed, paused, snapshotted and stopped; no VM process left"
