#!/usr/bin/env bash
# Installs ast-edge as a systemd service on this machine. Run as root from a checkout on which
# deploy/setup.sh (or `npm ci --omit=dev`) has run. Safe to run again: it updates the app and the unit,
# and never touches an existing /etc/ast-edge/config.yaml or /etc/ast-edge/env.
#
#   deploy/install.sh                   copy the app to /opt/ast-edge, install, enable and start
#   deploy/install.sh --link            /opt/ast-edge becomes a symlink to this checkout (development devices)
#   deploy/install.sh --example NAME    first config from deploy/examples/NAME.yaml (default: test)
#   deploy/install.sh --no-start        install only: no enable, no start
#   deploy/install.sh --dry-run         print what would be done, change nothing
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
APP=/opt/ast-edge
ETC=/etc/ast-edge
STATE=/var/lib/ast-edge
UNIT=/etc/systemd/system/ast-edge.service
USER_NAME=ast-edge

dry_run=0
start=1
link=0
example=test

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --no-start) start=0 ;;
    --link) link=1 ;;
    --example) example=${2:?--example needs a name}; shift ;;
    --example=*) example=${1#--example=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

say() { echo "install: $*"; }
die() { echo "install: $*" >&2; exit 1; }
# Runs a command, or prints it under --dry-run.
run() {
  if ((dry_run)); then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

example_file="$REPO/deploy/examples/$example.yaml"
[[ -f "$example_file" ]] || die "no example config $example_file"
[[ -f "$REPO/deploy/ast-edge.service" ]] || die "$REPO does not look like an ast-edge checkout"
if ((EUID != 0 && !dry_run)); then die "run as root (or with --dry-run to see what would be done)"; fi
[[ -d "$REPO/node_modules" ]] || die "$REPO/node_modules is missing: run deploy/setup.sh (or npm ci --omit=dev) first"

# systemd starts the agent with PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, and
# ProtectHome hides /home and /root: a node from nvm in a home folder is not found by the service.
node_bin=$(PATH=/usr/local/bin:/usr/bin:/bin command -v node || true)
if [[ -z "$node_bin" ]]; then
  say "warning: no node in /usr/local/bin, /usr/bin or /bin; the service will not start without one (Node.js >= 20)"
elif (($("$node_bin" -p 'process.versions.node.split(".")[0]') < 20)); then
  say "warning: $node_bin is $("$node_bin" --version); the agent needs Node.js >= 20"
fi

# 1. Groups and the service user (no login, home = state folder).
for group in video render; do
  if ! getent group "$group" >/dev/null; then
    say "creating system group $group (the unit's SupplementaryGroups= needs it to exist)"
    run groupadd --system "$group"
  fi
done
if getent passwd "$USER_NAME" >/dev/null; then
  say "user $USER_NAME exists"
else
  say "creating system user $USER_NAME"
  run useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
    --comment "ast-edge inspection agent" "$USER_NAME"
fi

# 2. Folders. State and caches belong to the agent; configuration is root's, readable by the agent's group.
run install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
for dir in "$STATE" "$STATE/models" "$STATE/trt-cache" "$STATE/cache"; do
  run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$dir"
done

# 3. The app.
if ((link)); then
  case "$REPO" in
    /home/*|/root/*|/run/user/*) say "warning: $REPO is under a home folder, which the unit hides (ProtectHome=yes)" ;;
  esac
  if [[ -d "$APP" && ! -L "$APP" ]]; then
    [[ -z "$(ls -A "$APP")" ]] || die "$APP is a folder with an installed copy; remove it to use --link"
    run rmdir "$APP"
  fi
  say "linking $APP -> $REPO"
  run ln -sfn "$REPO" "$APP"
else
  [[ "$REPO" != "$APP" && "$(readlink -f "$APP" 2>/dev/null)" != "$REPO" ]] || die "$REPO is $APP itself; run install.sh from a checkout elsewhere, or use --link"
  say "copying the app to $APP"
  staging="$APP.new"
  parts=()
  for part in bin src deploy docs models package.json package-lock.json node_modules README.md; do
    if [[ -e "$REPO/$part" ]]; then parts+=("$part"); fi
  done
  run rm -rf "$staging"
  run install -d -m 0755 "$staging"
  if ((dry_run)); then
    echo "+ tar -C $REPO -c ${parts[*]} | tar -C $staging -x"
  else
    tar -C "$REPO" -c "${parts[@]}" | tar -C "$staging" -x --no-same-owner
  fi
  run chown -R root:root "$staging"
  # Swapped in with two renames, so the agent never starts from a half-copied tree.
  run rm -rf "$APP.old"
  if [[ -L "$APP" ]]; then
    run rm "$APP"
  elif [[ -e "$APP" ]]; then
    run mv "$APP" "$APP.old"
  fi
  run mv "$staging" "$APP"
  run rm -rf "$APP.old"
fi

# 4. Configuration: a first one from the example, never over an existing file.
if [[ -e "$ETC/config.yaml" ]]; then
  say "keeping existing $ETC/config.yaml"
else
  say "installing $ETC/config.yaml from deploy/examples/$example.yaml (edit station, source and model.bundle)"
  if ((dry_run)); then
    echo "+ sed 's#\$schema=../config.schema.json#\$schema=$APP/deploy/config.schema.json#' $example_file > $ETC/config.yaml"
  else
    sed "s#\$schema=../config.schema.json#\$schema=$APP/deploy/config.schema.json#" "$example_file" > "$ETC/config.yaml.tmp"
    mv "$ETC/config.yaml.tmp" "$ETC/config.yaml"
  fi
  run chown root:"$USER_NAME" "$ETC/config.yaml"
  run chmod 0640 "$ETC/config.yaml"
fi
if [[ -e "$ETC/env" ]]; then
  say "keeping existing $ETC/env"
else
  say "installing $ETC/env (root only: systemd reads it before dropping privileges)"
  if ((dry_run)); then
    echo "+ write $ETC/env (commented template)"
  else
    (
      umask 077
      cat > "$ETC/env" <<'EOF'
# Environment of the ast-edge service: secrets and per-device values that override config.yaml.
# One VAR=value per line; an empty value counts as unset. Apply with: systemctl restart ast-edge
#AST_EDGE_MQTT_URL=mqtts://broker.example:8883
#AST_EDGE_MQTT_USERNAME=station-1
#AST_EDGE_MQTT_PASSWORD=
#AST_EDGE_MODEL_BUNDLE=/var/lib/ast-edge/models/current
#AST_EDGE_STATE_DIR=/var/lib/ast-edge
#AST_EDGE_HTTP_PORT=9108
EOF
    )
  fi
  run chown root:root "$ETC/env"
  run chmod 0600 "$ETC/env"
fi

# 5. The unit (ours: local changes go in drop-ins), then systemd.
if cmp -s "$REPO/deploy/ast-edge.service" "$UNIT"; then
  say "unit $UNIT up to date"
else
  say "installing unit $UNIT"
  run install -m 0644 -o root -g root "$REPO/deploy/ast-edge.service" "$UNIT"
fi

if [[ ! -d /run/systemd/system ]]; then
  say "systemd is not running here (image build or container): enable later with systemctl enable --now ast-edge"
  exit 0
fi
run systemctl daemon-reload
if ((start)); then
  if systemctl is-active --quiet ast-edge.service; then
    # A running agent keeps the old code and unit until restarted.
    run systemctl enable ast-edge.service
    run systemctl restart ast-edge.service
  else
    run systemctl enable --now ast-edge.service
  fi
  say "done: systemctl status ast-edge, journalctl -u ast-edge -f"
else
  say "installed, not started: systemctl enable --now ast-edge"
fi
