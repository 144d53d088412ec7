#!/usr/bin/env bash
# A real mail server on loopback for the multi-gateway tests: Debian's postfix (SMTP, submission
# with SASL) and dovecot (IMAP, LMTP delivery, SASL auth) on 127.0.0.1, with plain authentication
# and every address @example.org accepted with any non-empty password.
#
#   mail-server.sh start DIR    start (or find running) → one JSON line on stdout, also DIR/ports.json:
#                               {"imap_port":…,"smtp_port":…,"domain":"example.org"}
#   mail-server.sh stop DIR     stop the daemons started in DIR and wait until they are gone
#   mail-server.sh status DIR   the JSON line and exit 0 when running; exit 1 when not
#
# Everything lives in DIR: configuration, mail, queue, logs, pid files; nothing under /etc is
# used or changed. The packages (dovecot-imapd dovecot-lmtpd postfix) are installed when missing,
# which needs root; without root the script says what is missing and exits 3 (the tests report a
# skip). Ports are picked at start among free ones (never fixed). Stop goes by the pid files and
# checks that each pid is our daemon (name, and its config or queue dir in DIR) first: a stale pid
# file never kills anything else.
#
# Exit codes: 0 ok, 1 not running (status), 2 usage, 3 cannot run here (packages missing, not
# root, DIR out of the daemons' users' reach), 4 the daemons failed (see DIR/logs/).
#
# The daemons' output goes to DIR/logs/, never to this script's stdout or stderr: a daemon that
# inherited a pipe would keep its reader from ever seeing EOF. Callers should still capture the
# script's output into files rather than pipes.
set -euo pipefail

readonly DOMAIN=example.org
readonly PACKAGES=(dovecot-imapd dovecot-lmtpd postfix)
# Ports are picked here: below the kernel's ephemeral range (32768+), where outgoing connections
# take theirs, and above most services.
readonly PORT_MIN=20000
readonly PORT_SPAN=12000
# How long the daemons may take to listen, and to exit when stopped.
readonly START_DEADLINE_S=30
readonly STOP_DEADLINE_S=15

usage() {
  echo "usage: $0 start DIR | stop DIR | status DIR" >&2
  exit 2
}

die() {
  echo "mail-server.sh: $*" >&2
  exit "${EXIT:-4}"
}

[ $# -eq 2 ] || usage
cmd=$1
[ -n "$2" ] || usage
if [ "$cmd" = start ]; then
  mkdir -p "$2"
elif [ ! -d "$2" ]; then
  echo "mail-server.sh: not running: $2 does not exist" >&2
  [ "$cmd" = stop ] && exit 0
  exit 1
fi
DIR=$(cd "$2" && pwd -P)

POSTFIX_CONF=$DIR/postfix
POSTFIX_QUEUE=$DIR/postfix-queue
POSTFIX_PID=$POSTFIX_QUEUE/pid/master.pid
DOVECOT_CONF=$DIR/dovecot.conf
DOVECOT_BASE=$DIR/dovecot-run
DOVECOT_PID=$DOVECOT_BASE/master.pid
LOGS=$DIR/logs
PORTS=$DIR/ports.json

# --- processes -------------------------------------------------------------------------------------

# The pid in FILE when it names a live process that is ours: the expected name, and tied to DIR
# (dovecot: started with our config; postfix's master: its working directory is our queue).
our_pid() {
  local file=$1 name=$2 pid
  [ -f "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  case $name in
    dovecot) tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DOVECOT_CONF" || return 1 ;;
    master) [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$POSTFIX_QUEUE" ] || return 1 ;;
  esac
  echo "$pid"
}

dovecot_pid() { our_pid "$DOVECOT_PID" dovecot; }
postfix_pid() { our_pid "$POSTFIX_PID" master; }

# The direct children of PID (the daemons' worker processes).
children_of() {
  local parent=$1 stat line ppid
  for stat in /proc/[0-9]*/stat; do
    # (A process may end between the glob and the read.)
    { read -r line <"$stat"; } 2>/dev/null || continue
    # After the name (which may hold spaces): state, then the parent pid.
    read -r _ ppid _ <<<"${line##*) }"
    if [ "$ppid" = "$parent" ]; then
      stat=${stat#/proc/}
      echo "${stat%/stat}"
    fi
  done
}

# Waits until none of the given pids exists; false after DEADLINE seconds.
wait_gone() {
  local deadline=$1
  shift
  local end=$((SECONDS + deadline)) pid alive
  while :; do
    alive=
    for pid in "$@"; do
      # A zombie is gone for our purpose: it holds no port and no file.
      if [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
        alive="$alive $pid"
      fi
    done
    [ -z "$alive" ] && return 0
    [ $SECONDS -ge $end ] && { echo "$alive"; return 1; }
    sleep 0.05
  done
}

stop_daemons() {
  local pids=() pid
  for pid in $(dovecot_pid || true) $(postfix_pid || true); do
    pids+=("$pid" $(children_of "$pid"))
    kill -TERM "$pid" 2>/dev/null || true
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  local left
  if ! left=$(wait_gone "$STOP_DEADLINE_S" "${pids[@]}"); then
    echo "mail-server.sh: still running after ${STOP_DEADLINE_S}s, killing:$left" >&2
    kill -KILL $left 2>/dev/null || true
    wait_gone 5 $left >/dev/null || die "processes$left did not exit"
  fi
}

# --- ports -----------------------------------------------------------------------------------------

# Every local TCP port in use (listening or connected), one per line.
used_ports() {
  local f line local_addr
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] || continue
    while read -r _ local_addr _; do
      [ "$local_addr" = local_address ] && continue
      echo $((16#${local_addr##*:}))
    done <"$f"
  done
}

# Whether 127.0.0.1:PORT is in LISTEN state.
listening() {
  local want
  want=$(printf '0100007F:%04X' "$1")
  awk -v a="$want" '$2 == a && $4 == "0A" {found=1} END {exit !found}' /proc/net/tcp
}

pick_ports() {
  local used taken=" " p n=0
  used=" $(used_ports | tr '\n' ' ') "
  PICKED=()
  while [ ${#PICKED[@]} -lt 4 ]; do
    n=$((n + 1))
    [ $n -lt 10000 ] || die "no free port found in $PORT_MIN..$((PORT_MIN + PORT_SPAN))"
    p=$((PORT_MIN + (RANDOM * 32768 + RANDOM) % PORT_SPAN))
    case "$used$taken" in *" $p "*) continue ;; esac
    taken="$taken$p "
    PICKED+=("$p")
  done
}

# --- packages --------------------------------------------------------------------------------------

have_packages() {
  command -v postfix >/dev/null && command -v dovecot >/dev/null &&
    [ -x /usr/lib/dovecot/imap ] && [ -x /usr/lib/dovecot/lmtp ] && [ -x /usr/lib/postfix/sbin/master ]
}

# Pids of the system-wide daemons (the packages' defaults), to check the install started none.
system_daemons() {
  local f
  for f in /run/dovecot/master.pid /var/spool/postfix/pid/master.pid; do
    [ -f "$f" ] && [ -d "/proc/$(tr -dc '0-9' <"$f")" ] && echo "$f"
  done
  true
}

install_packages() {
  if [ "$(id -u)" != 0 ]; then
    EXIT=3 die "missing Debian packages: ${PACKAGES[*]} (postfix, dovecot or its imap/lmtp are not installed); install them as root: apt-get install -y --no-install-recommends ${PACKAGES[*]}, or run the tests as root"
  fi
  command -v apt-get >/dev/null || EXIT=3 die "missing packages ${PACKAGES[*]} and no apt-get to install them"
  echo "mail-server.sh: installing ${PACKAGES[*]}" >&2
  # Concurrent tests install once: the first holds the lock, the others find the packages.
  # (fd 9 is closed again before any daemon starts: they would hold the lock forever.)
  exec 9>/tmp/privitty-mail-server-install.lock
  flock 9
  if have_packages; then
    exec 9>&-
    return 0
  fi
  local before policy_made=
  before=$(system_daemons)
  # The package scripts must not start system daemons: Debian asks /usr/sbin/policy-rc.d first
  # (101 = not allowed). Docker-style machines have one; elsewhere one is put for the install only.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# privitty mail-server.sh: no daemon starts during its install\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  local apt=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${PACKAGES[@]}")
  local ok=1
  if ! "${apt[@]}" >"$LOGS/apt.log" 2>&1; then
    # A machine that never ran `apt-get update` has no lists to find the packages in.
    apt-get update -q -o DPkg::Lock::Timeout=300 >>"$LOGS/apt.log" 2>&1 &&
      "${apt[@]}" >>"$LOGS/apt.log" 2>&1 || ok=
  fi
  [ -n "$policy_made" ] && rm -f /usr/sbin/policy-rc.d
  exec 9>&-
  [ -n "$ok" ] || EXIT=3 die "apt-get install ${PACKAGES[*]} failed; see $LOGS/apt.log: $(tail -n 3 "$LOGS/apt.log" | tr '\n' ' ')"
  local after
  after=$(system_daemons)
  if [ "$after" != "$before" ]; then
    echo "mail-server.sh: warning: the package install started system daemons ($after); they are not used here" >&2
  fi
}

# --- configuration ---------------------------------------------------------------------------------

# The daemons' unprivileged users (mail, postfix, dovecot, dovenull) must reach into DIR: every
# directory above it must let others through.
check_reachable() {
  local d=$DIR
  while [ "$d" != / ]; do
    d=$(dirname "$d")
    if [ "$(( 0$(stat -c %a "$d") & 1 ))" = 0 ]; then
      EXIT=3 die "$d is not searchable by other users (mode $(stat -c %a "$d")), so the mail and postfix users cannot reach $DIR; use a directory under /tmp (or set TMPDIR to one)"
    fi
  done
}

write_config() {
  local imap=$1 smtp=$2 lmtp=$3 auth=$4
  mkdir -p "$POSTFIX_CONF" "$POSTFIX_QUEUE" "$DIR/postfix-data" "$DIR/dovecot-state" "$DIR/mail" "$LOGS"
  # The daemons' unprivileged users (mail, postfix, dovecot, dovenull) must reach into DIR.
  chmod 0755 "$DIR" "$POSTFIX_CONF" "$DIR/dovecot-state"
  chown root:root "$POSTFIX_QUEUE"
  chown postfix "$DIR/postfix-data"
  chown mail:mail "$DIR/mail"
  chmod 0750 "$DIR/mail"

  cat >"$DOVECOT_CONF" <<EOF
# Written by tests/scripts/mail-server.sh for a test mail server; regenerated at every start.
protocols = imap lmtp
listen = 127.0.0.1
base_dir = $DOVECOT_BASE
state_dir = $DIR/dovecot-state
log_path = $LOGS/dovecot.log
info_log_path = $LOGS/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 8
first_valid_gid = 8
mail_location = maildir:$DIR/mail/%d/%n/Maildir
namespace inbox {
  inbox = yes
}
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = static
  args = uid=mail gid=mail home=$DIR/mail/%d/%n allow_all_users=yes
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp
  }
}
service auth {
  inet_listener auth-inet {
    address = 127.0.0.1
    port = $auth
  }
}
EOF

  cat >"$POSTFIX_CONF/main.cf" <<EOF
# Written by tests/scripts/mail-server.sh for a test mail server; regenerated at every start.
compatibility_level = 3.6
queue_directory = $POSTFIX_QUEUE
data_directory = $DIR/postfix-data
maillog_file = $LOGS/postfix.log
maillog_file_prefixes = $LOGS
myhostname = localhost.localdomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
relayhost =
default_transport = error:outbound mail disabled
relay_transport = error:outbound mail disabled
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
virtual_mailbox_domains = $DOMAIN
virtual_transport = lmtp:inet:127.0.0.1:$lmtp
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:$auth
smtpd_tls_security_level = none
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination
message_size_limit = 104857600
mailbox_size_limit = 0
virtual_mailbox_limit = 0
EOF

  # No chroot (column 5 = n): the queue directory is not prepared as a chroot jail.
  cat >"$POSTFIX_CONF/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$smtp inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

# --- commands --------------------------------------------------------------------------------------

ports_json() {
  [ -f "$PORTS" ] && cat "$PORTS"
}

running() {
  dovecot_pid >/dev/null && postfix_pid >/dev/null && [ -f "$PORTS" ]
}

# Starts both daemons on the picked ports; false (after stopping what did start) when a port was
# taken meanwhile or a daemon failed, with the reason in $START_ERROR.
try_start() {
  local imap=$1 smtp=$2 lmtp=$3 auth=$4
  write_config "$@"
  START_ERROR=
  # The daemons get files, never this script's stdout/stderr (a reader would never see EOF).
  if ! dovecot -c "$DOVECOT_CONF" </dev/null >>"$LOGS/dovecot-start.log" 2>&1; then
    START_ERROR="dovecot did not start: $(tail -n 3 "$LOGS/dovecot-start.log" | tr '\n' ' ')"
    stop_daemons
    return 1
  fi
  # `master -w` (used by `postfix start`) returns only once master runs, or fails.
  if ! postfix -c "$POSTFIX_CONF" start </dev/null >>"$LOGS/postfix-start.log" 2>&1; then
    START_ERROR="postfix did not start: $(tail -n 3 "$LOGS/postfix-start.log" | tr '\n' ' ')"
    stop_daemons
    return 1
  fi
  local end=$((SECONDS + START_DEADLINE_S)) p missing
  while :; do
    missing=
    for p in "$@"; do listening "$p" || missing="$missing $p"; done
    [ -z "$missing" ] && break
    if ! dovecot_pid >/dev/null || ! postfix_pid >/dev/null || [ $SECONDS -ge $end ]; then
      START_ERROR="not listening on 127.0.0.1:{${missing# }} (dovecot: $(tail -n 2 "$LOGS/dovecot.log" 2>/dev/null | tr '\n' ' ') postfix: $(tail -n 2 "$LOGS/postfix.log" 2>/dev/null | tr '\n' ' '))"
      stop_daemons
      return 1
    fi
    sleep 0.05
  done
  printf '{"imap_port":%d,"smtp_port":%d,"domain":"%s"}\n' "$imap" "$smtp" "$DOMAIN" >"$PORTS.tmp"
  mv "$PORTS.tmp" "$PORTS"
}

start() {
  mkdir -p "$LOGS"
  if running; then
    ports_json
    return 0
  fi
  # Half a server (one daemon died) is restarted whole.
  stop_daemons
  rm -f "$PORTS"
  have_packages || install_packages
  [ "$(id -u)" = 0 ] || EXIT=3 die "the daemons need root to start (they switch to the mail, postfix and dovecot users)"
  check_reachable
  local attempt
  for attempt in 1 2 3; do
    pick_ports
    if try_start "${PICKED[@]}"; then
      ports_json
      return 0
    fi
    echo "mail-server.sh: attempt $attempt: $START_ERROR" >&2
  done
  die "could not start: $START_ERROR (logs in $LOGS)"
}

case $cmd in
  start) start ;;
  install)
    # CI installs ahead of the tests; a no-op when the packages are there.
    mkdir -p "$LOGS"
    have_packages || install_packages
    ;;
  stop)
    stop_daemons
    rm -f "$PORTS"
    ;;
  status)
    if running; then
      ports_json
    else
      echo "mail-server.sh: not running in $DIR" >&2
      exit 1
    fi
    ;;
  *) usage ;;
esac
