# Where the project's Python 3.14 comes from; sourced by scripts/setup and
# scripts/in-env.
#
# Home Assistant needs Python >= 3.14.2. A Python on PATH that is new enough
# is used as it is. Otherwise, as root on Debian (whose releases before sid
# have no python3.14), a Debian sid root holding python3.14 is made with
# debootstrap in the cache outside the checkout, and every command runs
# inside it: chroot in a private mount namespace, with the checkout, the
# cache and /tmp bound at their own paths, so nothing stays mounted after.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${LLM_ROUTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-router}
sid_root="$cache/sid-root"
# Debian packages inside the sid root: Python, what pip builds with, what a
# real Home Assistant imports (PyTurboJPEG, ffmpeg for the voice components),
# llama.cpp's own server (llama-server, for the demo and the end-to-end
# tests), and the browser for the frontend tests.
sid_packages=(
  python3.14 python3.14-venv python3.14-dev ca-certificates
  build-essential git procps
  libturbojpeg0 ffmpeg
  llama.cpp-tools
  chromium chromium-driver fonts-dejavu-core
)

env_log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# True when $1 runs a Python >= 3.14.2 (what Home Assistant 2026.3+ needs).
python_suitable() {
  "$1" -c 'import sys; sys.exit(not sys.version_info[:3] >= (3, 14, 2))' 2>/dev/null
}

# A suitable Python on PATH, printed; fails when there is none.
host_python() {
  local candidate
  for candidate in python3.14 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_suitable "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# Whether commands run inside the sid root (no suitable Python on PATH).
uses_sid_root() {
  [[ -n ${LLM_ROUTER_USE_SID_ROOT:-} ]] && return 0
  ! host_python >/dev/null
}

# Run "$@" inside the sid root, in a private mount namespace.
run_in_sid_root() {
  # Inside, the command sees the same paths as outside; $PWD is kept.
  unshare --mount --propagation private -- bash -euc '
    sid_root=$1 root=$2 cache=$3 workdir=$4
    shift 4
    mount --rbind /dev "$sid_root/dev"
    mount --rbind /sys "$sid_root/sys"
    mount -t proc proc "$sid_root/proc"
    mount --bind /tmp "$sid_root/tmp"
    for dir in "$root" "$cache"; do
      mkdir -p "$sid_root$dir"
      mount --bind "$dir" "$sid_root$dir"
    done
    # pip warns about every find-links folder of the host that is not here.
    [[ -e $sid_root${PIP_FIND_LINKS:-/} ]] || unset PIP_FIND_LINKS
    exec chroot "$sid_root" /usr/bin/env -C "$workdir" \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      LANG=C.UTF-8 LC_ALL=C.UTF-8 LLM_ROUTER_IN_ENV=1 "$@"
  ' bash "$sid_root" "$root" "$cache" "$PWD" "$@"
}

# What pip and apt need from the host: name service, trust store, pip's
# configuration (the PIP_* variables pass through chroot by themselves).
copy_host_files() {
  local file
  for file in /etc/resolv.conf /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    # Replaced atomically and only when changed: a test reading the trust
    # store while another checkout's setup runs must never see half a file.
    if [[ -f $file ]] && ! cmp -s "$file" "$sid_root$file"; then
      mkdir -p "$sid_root$(dirname "$file")"
      cp -L "$file" "$sid_root$file.new"
      mv "$sid_root$file.new" "$sid_root$file"
    fi
  done
}

# Make the sid root, or bring its packages up to date; quick when it is.
ensure_sid_root() {
  local stamp="$sid_root/.llm-router-packages" wanted
  wanted=${sid_packages[*]}
  if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
    copy_host_files
    return 0
  fi
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    env_log "needs Python >= 3.14.2 on PATH, or root on Debian to make a Debian sid root with it"
    exit 1
  fi
  mkdir -p "$cache"
  if [[ ! -x $sid_root/usr/bin/python3.14 ]]; then
    command -v debootstrap >/dev/null || {
      env_log "installing debootstrap"
      apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    }
    local mirror
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    env_log "making a Debian sid root with python3.14 in $sid_root (about a minute)"
    rm -rf "$sid_root.new"
    debootstrap --variant=minbase --include=python3.14,python3.14-venv,ca-certificates \
      sid "$sid_root.new" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
      env_log "debootstrap failed; see $cache/debootstrap.log"
      exit 1
    }
    rm -rf "$sid_root"
    mv "$sid_root.new" "$sid_root"
  fi
  copy_host_files
  # Mirrors here may serve a frozen snapshot whose Release files expired.
  printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
    >"$sid_root/etc/apt/apt.conf.d/99llm-router"
  env_log "installing into the sid root: ${sid_packages[*]}"
  run_in_sid_root bash -euc '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    apt-get clean
  ' bash "${sid_packages[@]}" || {
    env_log "installing packages into the sid root failed"
    exit 1
  }
  echo "$wanted" >"$stamp"
}

# On a host with its own suitable Python: the programs the sid root would
# have given (llama-server, ffmpeg for Home Assistant's audio and the voice
# tests' decoding, chromium, chromedriver, a C compiler for pip to build
# pocketsphinx for scripts/stt-server), from the host's apt when
# it has their packages and we are root; otherwise a warning naming them.
ensure_host_packages() {
  local -A package_of=(
    [llama-server]=llama.cpp-tools [ffmpeg]=ffmpeg
    [chromium]=chromium [chromedriver]=chromium-driver [cc]=build-essential
  )
  local program missing=()
  for program in "${!package_of[@]}"; do
    command -v "$program" >/dev/null || missing+=("${package_of[$program]}")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    env_log "installing ${missing[*]}"
    apt-get update -qq
    if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      return 0
    fi
  fi
  env_log "warning: could not install ${missing[*]}; the demo and the end-to-end tests need them"
}
