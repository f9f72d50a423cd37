#!/usr/bin/env bash
# Installs the system programs the embedded stack runs, when missing: nginx, redis-server and the
# PostgreSQL server binaries (used only when no PostgreSQL/Redis answers already), and the DejaVu Sans font
# that PDF exports embed (it has Cyrillic), and OpenLDAP's slapd and client tools (the directory sign-in
# tests start a slapd of their own; ldapsearch is how an operator tests a directory bind), and Prometheus
# with promtool (tests/test_monitoring.py checks deploy/monitoring/ with them and runs a real Prometheus).
# Debian/Ubuntu (apt-get) and Red OS/RHEL (dnf). Does nothing when everything is there.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have_pg() { command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb /usr/pgsql-*/bin/initdb >/dev/null 2>&1; }
# Where the gateway looks for it (GENAI_GATEWAY_PDF_FONT; the dnf path is found when left at the default).
have_font() {
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || [ -f /usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf ] \
    || [ -f /usr/share/fonts/dejavu/DejaVuSans.ttf ]
}

missing=()
have nginx || missing+=(nginx)
have redis-server || missing+=(redis)
have_pg || missing+=(postgresql)
have_font || missing+=(font)
have slapd || missing+=(slapd)
have ldapsearch || missing+=(ldap-utils)
have promtool || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "missing: ${missing[*]}; install them as root (apt-get or dnf)" >&2; exit 1
  fi
fi

if command -v apt-get >/dev/null 2>&1; then
  packages=()
  for m in "${missing[@]}"; do
    case "$m" in
      nginx) packages+=(nginx-light) ;;
      redis) packages+=(redis-server) ;;
      postgresql) packages+=(postgresql) ;;
      font) packages+=(fonts-dejavu-core) ;;
      slapd) packages+=(slapd) ;;
      ldap-utils) packages+=(ldap-utils) ;;
      prometheus) packages+=(prometheus) ;;
    esac
  done
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
elif command -v dnf >/dev/null 2>&1; then
  packages=()
  for m in "${missing[@]}"; do
    case "$m" in
      nginx) packages+=(nginx) ;;
      redis) packages+=(redis) ;;
      postgresql) packages+=(postgresql-server) ;;
      font) packages+=(dejavu-sans-fonts) ;;
      ldap-utils) packages+=(openldap-clients) ;;
    esac
  done
  [ ${#packages[@]} -eq 0 ] || $sudo dnf install -y -q "${packages[@]}"
  # RHEL 8+ ships no OpenLDAP server (some derivatives and EPEL do): only the directory tests need it,
  # and they skip without it.
  if [[ " ${missing[*]} " == *" slapd "* ]]; then
    $sudo dnf install -y -q openldap-servers || echo "openldap-servers not available: directory tests will skip" >&2
  fi
  # Prometheus is packaged by Fedora (and EPEL) only: the monitoring tests skip without it.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    $sudo dnf install -y -q golang-github-prometheus || echo "prometheus not available: monitoring tests will skip" >&2
  fi
else
  echo "missing: ${missing[*]}; no apt-get or dnf here to install them" >&2
  exit 1
fi

if [[ " ${missing[*]} " == *" font "* ]] && ! have_font; then
  echo "DejaVuSans.ttf still missing after installing the font package; set GENAI_GATEWAY_PDF_FONT" >&2
  exit 1
fi
