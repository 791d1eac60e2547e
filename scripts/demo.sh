#!/usr/bin/env bash
# The main job on embedded defaults (run by scripts/bootstrap.sh demo, with .venv on PATH).
set -euo pipefail

# The keys workflow: a key (made once), listed, shown, and a managed ssh config block that ssh
# itself resolves. Runs in an isolated home so the demo never touches your ~/.ssh; set
# TETHER_DEMO_REAL_HOME=1 to run it on your real home. Non-interactive and idempotent.
demo_keys() {
  local home="$HOME"
  if [ "${TETHER_DEMO_REAL_HOME:-0}" != 1 ]; then
    home="${TETHER_DEMO_HOME:-${TMPDIR:-/tmp}/tether-demo-home}"
    mkdir -p "$home"
  fi
  (
    export HOME="$home"
    echo "== keys (home: $home)"
    if ! tether keys show id_ed25519 >/dev/null 2>&1; then
      tether keys generate id_ed25519 --comment "tether-demo" </dev/null
    fi
    tether keys list
    tether keys show id_ed25519
    tether keys config add demo --host tether-demo --hostname 127.0.0.1 --identity id_ed25519
    tether keys config list
    ssh -G -T -F "$home/.ssh/config" tether-demo </dev/null | grep -E '^(hostname|identityfile) '
  )
}

# The main job: a workspace on this machine (local tunnel), paired with this same machine as
# `local`, reached by plain OpenSSH and by tether, then stopped. Its folder and host identity
# are saved to a file:// snapshot store when it stops and restored from it when it starts
# (nothing to restore the first time), so a second run comes back with the same files and
# host key. Runs as you: OpenSSH reads the ~/.ssh of your passwd entry; -F names the file
# `--connect` wrote (the same one unless HOME was moved).
demo_workspace() {
  local base="${TETHER_DEMO_DIR:-${TMPDIR:-/tmp}/tether-demo}"
  local work="$base/workspace" store="file://$base/snapshots"
  echo "== workspace (folder: $work, snapshots: $store)"
  mkdir -p "$work" "$base/snapshots"
  chmod 700 "$base" "$base/snapshots"   # the snapshots hold the host's private key
  tether down >/dev/null 2>&1 || true   # a workspace left over from an earlier run
  trap 'tether down >/dev/null 2>&1 || true' EXIT
  tether up "$work" --tunnel local --connect local --detach --autosave "$store" --restore "$store"
  tether host status
  ssh -F "$HOME/.ssh/config" -o BatchMode=yes tether-local 'echo "ssh tether-local: hello from $(hostname) as $(whoami)"'
  tether exec local -- uname -sr
  tether exec local --cwd "$work" -- sh -c 'date -u "+run at %F %T UTC" >> runs.txt; cat runs.txt'
  tether hosts
  tether down   # saves the workspace folder and the host identity one last time
  trap - EXIT
  tether snapshot ls "$store"
}

tether doctor || echo "demo: doctor found missing parts (see above); continuing" >&2
demo_keys
demo_workspace
