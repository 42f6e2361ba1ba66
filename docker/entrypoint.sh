#!/bin/sh
# The container's entrypoint. With no arguments or with flags (`-cluster-addr ...`), runs
#   harmonylite -config $HARMONYLITE_CONFIG [-node-id $HARMONYLITE_NODE_ID] FLAGS...
# With a command instead (`sqlite3 ...`, `bash`), runs that command.
#
# HARMONYLITE_CONFIG   the configuration file (default /etc/harmonylite/config.toml, the image's own)
# HARMONYLITE_NODE_ID  this node's id; set it, or node_id in the configuration: without either the id is derived
#                      from the machine id, which a container does not keep
# HARMONYLITE_DEMO_DB  1: create the demo Books table (/usr/share/harmonylite/demo-books.sql) when the
#                      configuration's database does not exist yet
set -eu

case "${1:-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac

config="${HARMONYLITE_CONFIG:-/etc/harmonylite/config.toml}"

if [ "${HARMONYLITE_DEMO_DB:-0}" = 1 ]; then
    db="$(sed -n 's/^[[:space:]]*db_path[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$config" | head -n 1)"
    if [ -z "$db" ]; then
        echo "harmonylite-entrypoint: HARMONYLITE_DEMO_DB=1 but $config sets no db_path" >&2
        exit 1
    fi
    if [ ! -e "$db" ]; then
        echo "harmonylite-entrypoint: creating the demo Books table in $db" >&2
        mkdir -p "$(dirname "$db")"
        # Into a temporary file first, so that a container stopped half-way leaves no half-made database.
        rm -f "$db.demo-tmp"
        sqlite3 "$db.demo-tmp" </usr/share/harmonylite/demo-books.sql
        mv "$db.demo-tmp" "$db"
    fi
fi

if [ -n "${HARMONYLITE_NODE_ID:-}" ]; then
    exec harmonylite -config "$config" -node-id "$HARMONYLITE_NODE_ID" "$@"
fi
exec harmonylite -config "$config" "$@"
