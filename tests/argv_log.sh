#!/bin/sh
# A connector DUMP_PREFIX / RESTORE_PREFIX for tests: appends the command line it is given to $ARGV_LOG, runs it.
printf '%s\n' "$*" >> "$ARGV_LOG"
exec "$@"
