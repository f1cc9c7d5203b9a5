#!/usr/bin/env bash
# fitsflow developer entry point — installs what is missing, then runs what you ask.
#
#   ./dev.sh demo [ARGS]   the main job: the end-to-end demo on this machine
#   ./dev.sh test [ARGS]   the test suite (ARGS go to pytest, e.g. -m "not ha" -x)
#   ./dev.sh bench NAME    a benchmark from bench/ (bus, ...)
#   ./dev.sh setup         only install (system packages + .venv)
#
# Works on a fresh Debian 12 (apt) or an EL9/EL10 machine (dnf); needs root or sudo for the
# system packages. Python packages go into ./.venv, nothing is installed into the system Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="$here/.venv"
RUCIO_VERSION=41.5.1   # the Rucio server the tests run (the client comes from setup.py's test extra)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

system_packages() {
    if command -v apt-get >/dev/null; then
        # activemq: the real broker the tests and the demo start privately (pulls OpenJDK 17)
        # fitsverify: the FITS standard checker the forwarder's output is tested with
        # postgresql: the registries are tested against a real PostgreSQL (started privately)
        # systemd: systemd-analyze/-sysusers/-tmpfiles check the shipped units and drop-ins
        # chromium: the status page is tested in headless Chromium (a screenshot of real data)
        # openssl: the TLS tests make their own CA (keytool comes with the JRE)
        # pcs, pacemaker-cli-utils: pacemaker/fitsflow-cib is built and checked offline (crm_verify, crm_simulate)
        # rpm, rpmlint, createrepo-c, dnf: the RPMs are built, linted and installed into a scratch root
        # python3-pip, python3-setuptools, python3-wheel: the specs build wheels with the system Python
        # busybox-static: the shell of the test-only base system in that root (scriptlets run)
        # systemd-container: the units are tested under systemd in systemd-nspawn containers
        # pacemaker, corosync, resource-agents, dbus, iproute2: tests/ha builds a 3-node cluster
        # libsystemd-dev, pkg-config, gcc, python3-dev: pip builds systemd-python (sd_notify, journal)
        # groff-base: the man pages built from the parsers are rendered in a test
        # g++, libboost-dev, libdivide-dev, nasm: EL10's python3-spead2 and python3-isal are compiled
        # from their sdists (rpm/deps)
        local want=(activemq fitsverify postgresql systemd python3-venv chromium openssl
                    pcs pacemaker-cli-utils rpm rpmlint createrepo-c dnf busybox-static
                    systemd-container pacemaker corosync resource-agents dbus iproute2
                    libsystemd-dev pkg-config gcc python3-dev groff-base
                    python3-pip python3-setuptools python3-wheel g++ libboost-dev libdivide-dev nasm)
        local missing=()
        for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
        if [ "${#missing[@]}" -gt 0 ]; then
            echo "dev.sh: installing ${missing[*]} with apt-get" >&2
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        fi
    elif command -v dnf >/dev/null; then
        as_root dnf install -y -q java-17-openjdk-headless python3 python3-pip systemd-devel gcc python3-devel >/dev/null
        if [ ! -f "${FITSFLOW_ACTIVEMQ_HOME:-/usr/share/activemq}/bin/activemq.jar" ]; then
            echo "dev.sh: ActiveMQ is not packaged for EL: unpack Apache ActiveMQ 5.17+ and set" \
                 "FITSFLOW_ACTIVEMQ_HOME to its directory (see docs/install.md)" >&2
            exit 1
        fi
    else
        echo "dev.sh: neither apt-get nor dnf found; install ActiveMQ and Java 17 by hand" >&2
    fi
}

python_venv() {
    local py="${PYTHON:-python3}"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "dev.sh: $py is older than 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    # Reinstall only when setup.py changed since the last install.
    local stamp="$venv/.fitsflow-installed"
    if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
        "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]"
        touch "$stamp"
    fi
    # A Rucio server for the archive's Rucio tests (fitsflow.testing.rucio starts it privately):
    # its own virtualenv, since the server pins its own Flask, SQLAlchemy and Alembic.
    local rucio="$venv/rucio-server" want="rucio[postgresql]==$RUCIO_VERSION"
    if [ ! -f "$rucio/.installed" ] || [ "$(cat "$rucio/.installed")" != "$want" ]; then
        rm -rf "$rucio"
        "$py" -m venv "$rucio"
        "$rucio/bin/pip" install -q --disable-pip-version-check "$want" gunicorn
        echo "$want" > "$rucio/.installed"
    fi
}

promtool_tool() {
    # promtool checks and unit-tests etc/prometheus's alert rules. Taken from Debian's
    # prometheus package without installing it (that would start a Prometheus server here).
    if [ -x "$venv/bin/promtool" ] || command -v promtool >/dev/null || ! command -v apt-get >/dev/null; then
        return 0
    fi
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) ||
        { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
          (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); } || true
    if (cd "$tmp" && dpkg-deb -x prometheus_*.deb x 2>/dev/null); then
        cp "$tmp/x/usr/bin/promtool" "$venv/bin/promtool"
    else
        echo "dev.sh: could not fetch promtool (Debian's prometheus package); the alert-rule tests will say so" >&2
    fi
    rm -rf "$tmp"
}

setup() { system_packages; python_venv; promtool_tool; }

cmd="${1:-}"; shift || true
case "$cmd" in
    setup) setup ;;
    test)  setup; exec "$venv/bin/python" -m pytest "$@" ;;
    demo)  setup; exec "$venv/bin/fitsflow-demo" "$@" ;;
    bench) setup; name="${1:?usage: ./dev.sh bench NAME}"; shift; exec "$venv/bin/python" "bench/$name.py" "$@" ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
