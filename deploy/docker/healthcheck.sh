#!/bin/bash
# Docker HEALTHCHECK for synback: GET /healthz on the status listener.
# 0 when it answers 200, or when nothing listens (status_listen not set:
# the daemon is PID 1, so the container is up only while it runs).
port="${SYNBACK_STATUS_PORT:-9105}"
{ exec 3<>"/dev/tcp/127.0.0.1/${port}"; } 2>/dev/null || exit 0
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 8 _ status _ <&3 || exit 1
[ "$status" = "200" ]
