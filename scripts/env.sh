# Sourced by scripts/test and scripts/bench: a venv with dhtmesh and its test extras (which bring the
# stock `kademlia` 2.2.3), and Debian's `dhtnode` (OpenDHT's real proxy client and server), installed
# when missing. Sets $venv.
venv="${DHTMESH_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! command -v dhtnode >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dhtnode) >/dev/null
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q ".[test]"
export PATH="$PWD/$venv/bin:$PATH"
