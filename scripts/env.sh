# Sourced by scripts/test and scripts/bench: a venv with dhtmesh, its test extras (which bring the
# stock `kademlia` 2.2.3) and its bench extras (Dask's `distributed`, the jobs benchmark's anchor: a few
# seconds more, and its test at toy size runs both sides), Debian's `dhtnode` (OpenDHT's real proxy
# client and server), `chromium` (the real browser that loads the cross-origin attack page) and
# `redis-server` (the streams benchmark's anchor: ptg-api-server keeps its streams in Redis), installed
# when missing. Sets $venv.
venv="${DHTMESH_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
missing=""
for package in dhtnode chromium redis-server; do  # each package installs a command of its name
    command -v "$package" >/dev/null || missing="$missing $package"
done
if [ -n "$missing" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    # shellcheck disable=SC2086  # one word per package
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q ".[test,bench]"
export PATH="$PWD/$venv/bin:$PATH"
# ptgctl, ptg-api-server's real client (MIT), is on no registry: the streams tests drive the proxy with
# it, installed from the copy kept beside the tests (the one in ../shared/clients/ it came from).
if ! "$venv/bin/python" -c "import ptgctl" 2>/dev/null; then
    ptgctl_src="$(mktemp -d)"
    tar -xzf tests/clients/ptgctl-632056c.tar.gz -C "$ptgctl_src"
    "$venv/bin/python" -m pip install -q "$ptgctl_src/ptgctl"
    rm -rf "$ptgctl_src"
fi
