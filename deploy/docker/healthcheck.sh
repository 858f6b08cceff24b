#!/usr/bin/env bash
# The image's healthcheck: GET /healthz on the port of SJ_METRICS__LISTEN (default 9464) and
# succeed on 200. Plain bash (/dev/tcp), so the image needs no HTTP client.
set -u
listen=${SJ_METRICS__LISTEN:-0.0.0.0:9464}
port=${listen##*:}
exec 3<>"/dev/tcp/127.0.0.1/${port:-9464}" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
IFS= read -r -t 3 status <&3 || exit 1
[[ $status == HTTP/*" 200"* ]]
