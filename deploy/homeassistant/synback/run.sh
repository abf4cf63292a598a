#!/usr/bin/env bash
# Add-on entry point: turn the add-on options into synback.toml, then run
# the daemon in the foreground (SIGTERM from the Supervisor stops it after
# it removed partial uploads and released the NAS lock).
set -euo pipefail
synback-gen-config /data/options.json /data
synback --config /data/synback.toml check-config
exec synback --config /data/synback.toml --log-format json daemon
