#!/bin/bash
# The image's HEALTHCHECK: exits 0 when the node's health endpoint answers 200 (healthy), 1 otherwise (503:
# unhealthy, or no answer). Needs nothing but bash (its /dev/tcp).
#
# HARMONYLITE_HEALTH_PORT  the port of [health_check] bind (default 8090)
# HARMONYLITE_HEALTH_PATH  [health_check] path (default /health)
port="${HARMONYLITE_HEALTH_PORT:-8090}"
path="${HARMONYLITE_HEALTH_PATH:-/health}"

exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 4 status <&3 || { echo "no answer on 127.0.0.1:$port$path"; exit 1; }
status="${status%$'\r'}"
echo "$status"
case "$status" in
    "HTTP/1."?" 200"*) exit 0 ;;
    *) exit 1 ;;
esac
