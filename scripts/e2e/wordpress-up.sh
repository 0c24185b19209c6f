#!/usr/bin/env bash
# Bring up Debian 12's WordPress (6.1) on 127.0.0.1 for offload's end-to-end tests:
# MariaDB as a plain process + N PHP built-in web servers sharing that one database,
# each with its own wp-content/uploads. Idempotent: what already runs is kept.
#
# Environment (all optional):
#   OFFLOAD_E2E_DIR      state root (default /tmp/offload-e2e); this script uses $OFFLOAD_E2E_DIR/wordpress
#   WP_SERVERS           number of PHP web servers (default 1)
#   WP_PORT              port of server 1 (default 18081); server i listens on WP_PORT+i-1
#   WP_DB_PORT           MariaDB TCP port on 127.0.0.1 (default 13306)
#   WP_PUBLIC_URL        fixed site address for every server (default: none, taken from each
#                        request's Host + scheme, see docs/wordpress.md)
#   WP_PUBLIC_URL_<i>    fixed site address for server i only (overrides WP_PUBLIC_URL)
#   WP_ADMIN_USER / WP_ADMIN_PASSWORD / WP_ADMIN_EMAIL  (admin / offload-test-pw / admin@example.test)
#   WP_DB_NAME / WP_DB_USER / WP_DB_PASSWORD             (offload_wp / offload / offload-db-pw)
#   WP_PHP_WORKERS       PHP_CLI_SERVER_WORKERS per server (default 4)
#   WP_SKIP_APT=1        never run apt (fail if packages are missing)
#
# Writes $OFFLOAD_E2E_DIR/wordpress/wordpress.env (KEY=value lines, see docs/wordpress.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_DIR="${OFFLOAD_E2E_DIR:-/tmp/offload-e2e}"
STATE="$E2E_DIR/wordpress"
STATE_FILE="$STATE/wordpress.env"
WP_SERVERS="${WP_SERVERS:-1}"
WP_PORT="${WP_PORT:-18081}"
WP_DB_PORT="${WP_DB_PORT:-13306}"
WP_ADMIN_USER="${WP_ADMIN_USER:-admin}"
WP_ADMIN_PASSWORD="${WP_ADMIN_PASSWORD:-offload-test-pw}"
WP_ADMIN_EMAIL="${WP_ADMIN_EMAIL:-admin@example.test}"
WP_DB_NAME="${WP_DB_NAME:-offload_wp}"
WP_DB_USER="${WP_DB_USER:-offload}"
WP_DB_PASSWORD="${WP_DB_PASSWORD:-offload-db-pw}"
WP_PHP_WORKERS="${WP_PHP_WORKERS:-4}"
DOCROOT=/usr/share/wordpress
DEBIAN_CONTENT=/var/lib/wordpress/wp-content

log() { printf '[wordpress-up %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$WP_SERVERS" =~ ^[1-9][0-9]*$ ]] || die "WP_SERVERS must be a positive integer"
t0=$(date +%s)

# ---------------------------------------------------------------- packages
# One apt command. `php` + `php8.2-fpm` + `nginx` satisfy wordpress's
# "apache2 | httpd" and "libapache2-mod-php | php" without apache2; apt-install.sh keeps
# nginx, php-fpm and mariadb from starting (nginx would grab *:80).
PACKAGES=(wordpress php php-cli php8.2-fpm nginx php-mysql php-gd php-xml php-mbstring
  php-curl php-zip php-intl mariadb-server wordpress-theme-twentytwentythree curl)
need_apt=0
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    need_apt=1
    break
  fi
done
if [[ $need_apt == 1 ]]; then
  [[ "${WP_SKIP_APT:-0}" == 1 ]] && die "packages missing and WP_SKIP_APT=1"
  [[ $(id -u) == 0 ]] || die "installing packages needs root"
  log "installing packages (apt)"
  "$here/../apt-install.sh" "${PACKAGES[@]}"
  if dpkg-query -W -f='${Status}' apache2 2>/dev/null | grep -q 'install ok installed'; then
    log "warning: apache2 is installed (not by this script's apt command?)"
  fi
fi
t_apt=$(date +%s)

mkdir -p "$STATE"

# ---------------------------------------------------------------- helpers
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  die "$3 did not listen on 127.0.0.1:$1 within $2 s"
}
read_pid() { if [[ -s "$1" ]]; then tr -dc '0-9' <"$1"; fi; }

# ---------------------------------------------------------------- MariaDB
DB_DIR="$STATE/mysql"
DB_DATA="$DB_DIR/data"
DB_SOCK="$DB_DIR/mysqld.sock"
DB_PIDFILE="$DB_DIR/mysqld.pid"
mkdir -p "$DB_DIR"
chown mysql:mysql "$DB_DIR" 2>/dev/null || true
db_pid="$(read_pid "$DB_PIDFILE")"
if pid_alive "$db_pid" && port_open "$WP_DB_PORT"; then
  log "MariaDB already running (pid $db_pid)"
else
  if port_open "$WP_DB_PORT"; then die "127.0.0.1:$WP_DB_PORT is taken by something else"; fi
  if [[ ! -d "$DB_DATA/mysql" ]]; then
    log "mysql_install_db into $DB_DATA"
    mysql_install_db --no-defaults --datadir="$DB_DATA" --user=mysql \
      --auth-root-authentication-method=socket --skip-test-db >"$DB_DIR/install.log" 2>&1 ||
      { cat "$DB_DIR/install.log" >&2; die "mysql_install_db failed"; }
  fi
  log "starting MariaDB on 127.0.0.1:$WP_DB_PORT"
  # setsid: own session/process group, so wordpress-down.sh can stop exactly it.
  setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DATA" --socket="$DB_SOCK" \
    --pid-file="$DB_PIDFILE" --bind-address=127.0.0.1 --port="$WP_DB_PORT" --skip-networking=0 \
    --log-error="$DB_DIR/error.log" --innodb-buffer-pool-size=64M --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    </dev/null >>"$DB_DIR/stdout.log" 2>&1 &
  db_pid=$!
  echo "$db_pid" >"$DB_DIR/mariadbd.launcher.pid"
  wait_port "$WP_DB_PORT" 30 MariaDB
  for _ in $(seq 1 50); do [[ -s "$DB_PIDFILE" ]] && break; sleep 0.1; done
  db_pid="$(read_pid "$DB_PIDFILE")"
fi
mysql_root() { mysql --no-defaults --protocol=socket --socket="$DB_SOCK" -uroot "$@"; }
mysql_root <<SQL
CREATE DATABASE IF NOT EXISTS \`$WP_DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$WP_DB_USER'@'127.0.0.1' IDENTIFIED BY '$WP_DB_PASSWORD';
CREATE USER IF NOT EXISTS '$WP_DB_USER'@'localhost' IDENTIFIED BY '$WP_DB_PASSWORD';
GRANT ALL PRIVILEGES ON \`$WP_DB_NAME\`.* TO '$WP_DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`$WP_DB_NAME\`.* TO '$WP_DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
t_db=$(date +%s)

# ---------------------------------------------------------------- WordPress config
CONFIG="$STATE/wp-config.php"
SALTS="$STATE/salts"
if [[ ! -s "$SALTS" ]]; then
  for _ in 1 2 3 4 5 6 7 8; do
    head -c 48 /dev/urandom | base64 | tr -d '\n/+=' ; echo
  done >"$SALTS"
fi
mapfile -t salt <"$SALTS"
sed -e "s|@DB_NAME@|$WP_DB_NAME|" -e "s|@DB_USER@|$WP_DB_USER|" \
  -e "s|@DB_PASSWORD@|$WP_DB_PASSWORD|" -e "s|@DB_PORT@|$WP_DB_PORT|" \
  -e "s|@SALT1@|${salt[0]}|" -e "s|@SALT2@|${salt[1]}|" -e "s|@SALT3@|${salt[2]}|" \
  -e "s|@SALT4@|${salt[3]}|" -e "s|@SALT5@|${salt[4]}|" -e "s|@SALT6@|${salt[5]}|" \
  -e "s|@SALT7@|${salt[6]}|" -e "s|@SALT8@|${salt[7]}|" \
  "$here/wordpress/config.php.in" >"$CONFIG.tmp"
mv "$CONFIG.tmp" "$CONFIG"
# Debian's wp-config.php loads /etc/wordpress/config-$WORDPRESS_CONFIG.php when the
# server sets WORDPRESS_CONFIG (our php -S processes do); this stub then loads the
# config of whichever state dir that server belongs to.
ETC_STUB=/etc/wordpress/config-offload-e2e.php
cat >"$ETC_STUB.tmp" <<'PHP'
<?php
/* Written by offload's scripts/e2e/wordpress-up.sh: loads the e2e state dir's config. */
$offload_config = getenv('OFFLOAD_WP_CONFIG');
if (!$offload_config || !is_file($offload_config)) {
    header('HTTP/1.0 500 Internal Server Error');
    echo "OFFLOAD_WP_CONFIG is not set or missing\n";
    exit(1);
}
require $offload_config;
PHP
mv "$ETC_STUB.tmp" "$ETC_STUB"
chmod 644 "$ETC_STUB"

# ---------------------------------------------------------------- web servers
declare -a web_pid web_port web_content web_public
start_web() { # index
  local i=$1 port=$((WP_PORT + $1 - 1)) dir="$STATE/web$1" pub_var="WP_PUBLIC_URL_$1"
  local pub="${!pub_var:-${WP_PUBLIC_URL:-}}"
  local content="$dir/wp-content" pidfile="$dir/php.pid" pid
  mkdir -p "$content/uploads" "$content/upgrade"
  for sub in themes plugins languages index.php; do
    [[ -e "$content/$sub" || -L "$content/$sub" ]] || ln -s "$DEBIAN_CONTENT/$sub" "$content/$sub"
  done
  # The e2e site's own must-use plugins (see the folder), from this checkout.
  ln -sfn "$here/wordpress/mu-plugins" "$content/mu-plugins"
  chmod -R a+rwX "$content/uploads" "$content/upgrade"
  web_port[i]=$port web_content[i]=$content web_public[i]=$pub
  pid="$(read_pid "$pidfile")"
  if pid_alive "$pid" && port_open "$port"; then
    if [[ "$(cat "$dir/public_url" 2>/dev/null)" == "$pub" ]]; then
      log "web server $i already running on 127.0.0.1:$port (pid $pid)"
      web_pid[i]=$pid
      return
    fi
    log "web server $i: public URL changed, restarting"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do pid_alive "$pid" || break; sleep 0.1; done
  fi
  if port_open "$port"; then die "127.0.0.1:$port is taken by something else"; fi
  log "starting web server $i on 127.0.0.1:$port (content $content, public ${pub:-<from Host>})"
  printf '%s' "$pub" >"$dir/public_url"
  (
    cd "$DOCROOT"
    env WORDPRESS_CONFIG=offload-e2e OFFLOAD_WP_CONFIG="$CONFIG" \
      OFFLOAD_WP_CONTENT_DIR="$content" OFFLOAD_WP_PUBLIC_URL="$pub" OFFLOAD_WP_SERVER="$i" \
      PHP_CLI_SERVER_WORKERS="$WP_PHP_WORKERS" \
      setsid php -d upload_max_filesize=64M -d post_max_size=64M -d memory_limit=512M \
      -d max_execution_time=120 -d display_errors=stderr -d log_errors=1 \
      -S "127.0.0.1:$port" -t "$DOCROOT" "$here/wordpress/router.php" \
      </dev/null >>"$dir/php.log" 2>&1 &
    echo $! >"$pidfile"
  )
  pid="$(read_pid "$pidfile")"
  web_pid[i]=$pid
  wait_port "$port" 20 "web server $i"
}
for ((i = 1; i <= WP_SERVERS; i++)); do start_web "$i"; done
t_web=$(date +%s)

# ---------------------------------------------------------------- install the site
base="http://127.0.0.1:$WP_PORT"
installed=$(mysql_root -N -e "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='$WP_DB_NAME' AND table_name='wp_options'")
if [[ "$installed" != 0 ]] && [[ -n $(mysql_root -N -e "SELECT 1 FROM \`$WP_DB_NAME\`.wp_users WHERE user_login='$WP_ADMIN_USER'") ]]; then
  log "site already installed"
else
  log "installing the site via /wp-admin/install.php?step=2"
  out="$STATE/install.html"
  code=$(curl -sS -o "$out" -w '%{http_code}' -H 'Expect:' --max-time 120 \
    --data-urlencode "weblog_title=offload e2e" \
    --data-urlencode "user_name=$WP_ADMIN_USER" \
    --data-urlencode "admin_password=$WP_ADMIN_PASSWORD" \
    --data-urlencode "admin_password2=$WP_ADMIN_PASSWORD" \
    --data-urlencode "pw_weak=1" \
    --data-urlencode "admin_email=$WP_ADMIN_EMAIL" \
    --data-urlencode "blog_public=0" \
    --data-urlencode "language=" \
    "$base/wp-admin/install.php?step=2")
  if [[ "$code" != 200 ]] || ! grep -q 'wp-login.php' "$out"; then
    die "install failed (HTTP $code), see $out"
  fi
fi
# Pretty permalinks (/%postname%/), so /wp-json/ and post URLs look like a real site's.
mysql_root "$WP_DB_NAME" <<'SQL'
UPDATE wp_options SET option_value='/%postname%/' WHERE option_name='permalink_structure';
DELETE FROM wp_options WHERE option_name='rewrite_rules';
SQL
t_install=$(date +%s)

# smoke check: REST index answers on every server
for ((i = 1; i <= WP_SERVERS; i++)); do
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 "http://127.0.0.1:${web_port[i]}/wp-json/")
  [[ "$code" == 200 ]] || die "web server $i: /wp-json/ answered $code"
done

# ---------------------------------------------------------------- state file
db_pid="$(read_pid "$DB_PIDFILE")"
{
  echo "# written by scripts/e2e/wordpress-up.sh at $(date -u +%FT%TZ)"
  echo "WP_STATE_DIR=$STATE"
  echo "WP_DOCROOT=$DOCROOT"
  echo "WP_CONFIG_FILE=$CONFIG"
  echo "WP_SERVERS=$WP_SERVERS"
  echo "WP_URL=http://127.0.0.1:$WP_PORT"
  echo "WP_ADMIN_USER=$WP_ADMIN_USER"
  echo "WP_ADMIN_PASSWORD=$WP_ADMIN_PASSWORD"
  echo "WP_ADMIN_EMAIL=$WP_ADMIN_EMAIL"
  echo "WP_DB_HOST=127.0.0.1"
  echo "WP_DB_PORT=$WP_DB_PORT"
  echo "WP_DB_SOCKET=$DB_SOCK"
  echo "WP_DB_NAME=$WP_DB_NAME"
  echo "WP_DB_USER=$WP_DB_USER"
  echo "WP_DB_PASSWORD=$WP_DB_PASSWORD"
  echo "WP_DB_PID=$db_pid"
  for ((i = 1; i <= WP_SERVERS; i++)); do
    echo "WP_${i}_PORT=${web_port[i]}"
    echo "WP_${i}_URL=http://127.0.0.1:${web_port[i]}"
    echo "WP_${i}_PID=${web_pid[$i]}"
    echo "WP_${i}_CONTENT_DIR=${web_content[$i]}"
    echo "WP_${i}_UPLOADS_DIR=${web_content[$i]}/uploads"
    echo "WP_${i}_PUBLIC_URL=${web_public[$i]}"
    echo "WP_${i}_LOG=$STATE/web$i/php.log"
  done
} >"$STATE_FILE.tmp"
mv "$STATE_FILE.tmp" "$STATE_FILE"
t_end=$(date +%s)
log "ready in $((t_end - t0)) s (apt $((t_apt - t0)) s, db $((t_db - t_apt)) s, web $((t_web - t_db)) s, install $((t_install - t_web)) s); state: $STATE_FILE"
echo "$STATE_FILE"
