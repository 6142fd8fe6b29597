# Shared by the scripts in this folder: where things live, and how to install Debian packages.
# shellcheck shell=bash
BCM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Slow builds (LND, btcd, Kafka) are kept here between runs; a fresh clone reuses them.
BCM_CACHE=${BCM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bcm}
BCM_VENV=${BCM_VENV:-$BCM_ROOT/.venv}
export BCM_ROOT BCM_CACHE BCM_VENV

log() { printf '==> %s\n' "$*" >&2; }

# apt_install CMD PKG [CMD PKG ...]: installs each Debian package whose command is missing.
apt_install() {
  local missing=()
  while [ $# -gt 0 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install_packages "${missing[@]}"
}

# apt_install_packages PKG...: installs the Debian packages named, unconditionally.
apt_install_packages() {
  log "installing Debian packages: $*"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
