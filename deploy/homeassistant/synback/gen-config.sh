#!/usr/bin/env bash
# Turns the add-on's options.json into a synback config, with jq only (no
# bashio), so that it can be tested outside Home Assistant.
#
#   gen-config.sh OPTIONS_JSON OUT_DIR
#
# Writes OUT_DIR/synback.toml and OUT_DIR/nas-password (mode 600; the
# password never goes into the TOML), and uses OUT_DIR/state as the state
# folder. Folder names in `folders` become sources below
# $SYNBACK_SOURCE_ROOT (default: the root, where Home Assistant maps them:
# /config, /share, /ssl, /addons).
set -euo pipefail
options="$1"
out="$2"
root="${SYNBACK_SOURCE_ROOT:-}"

umask 077
mkdir -p "$out/state"
jq -j '.nas_password' "$options" > "$out/nas-password"

# jq's @json of a string is also a valid TOML basic string.
jq -r --arg root "$root" --arg out "$out" '
def s: @json;
def nonempty(k): (.[k] // "") != "";
"# Generated from the add-on options by gen-config.sh: edit the options, not this file.",
"[nas]",
"url = \(.nas_url | s)",
"user = \(.nas_user | s)",
"password_file = \("\($out)/nas-password" | s)",
(if nonempty("pin_sha256") then "pin_sha256 = \(.pin_sha256 | s)" else empty end),
"",
"[state]",
"dir = \("\($out)/state" | s)",
"",
"[daemon]",
"# Reached by Home Assistant ingress from the Supervisor network; only the",
"# Supervisor (the ingress proxy) is served, not other add-ons.",
"status_listen = \"0.0.0.0:9105\"",
"allow_remote = true",
"trusted_peers = [\"172.30.32.2\"]",
"log_format = \"json\"",
"",
"[[job]]",
"name = \(.job // "homeassistant" | s)",
"sources = [\(.folders | map("\($root)/\(.)" | s) | join(", "))]",
"excludes = [\(.excludes // [] | map(s) | join(", "))]",
"share = \(.share | s)",
"path = \(.path | s)",
"volume_size = \(.volume_size // "1GiB" | s)",
(if nonempty("schedule") then "schedule = \(.schedule | s)" else empty end),
(if nonempty("timezone") then "timezone = \(.timezone | s)" else empty end),
"",
"[job.retention]",
(["keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"][] as $k
  | select((.[$k] // 0) > 0) | "\($k) = \(.[$k])"),
(if nonempty("encryption_recipient")
 then "", "[job.encryption]", "recipients = [\(.encryption_recipient | s)]"
 else empty end)
' "$options" > "$out/synback.toml"
