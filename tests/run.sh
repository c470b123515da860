#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): set up what every test tier needs, then run
# the whole suite in two fresh virtual environments, never the machine's own site-packages:
#
#   newest  the built wheel (not the checkout: what the package forgot to ship fails here),
#           installed with --upgrade and no pins, so a new upstream release that breaks us fails;
#   oldest  an editable checkout with the lowest versions pyproject.toml declares (ipython,
#           ipykernel, ipywidgets, paramiko, dill, jupyter_client, distributed), pinned with a constraints file,
#           on the oldest Python it declares (3.9) where this machine has one (pyenv's, say).
#
# Each leg runs `pip check`, prints the versions it tests, and fails when any test fails.
# As root it installs the system packages the tiers need (OpenSSH server and client, nftables,
# iproute2, PAM's TOTP module and oathtool, python3-venv for the SSH hosts' Dask Python, Chromium). Without root it says, in one line, which tiers
# it skips and why, and runs the rest.
#
#   RJOBS_LEGS="newest"      run one leg only (default: "newest oldest")
#   RJOBS_VENVS=DIR          where the venvs go (default: .venvs, recreated each run)
#   RJOBS_LEG_TIMEOUT=SECS   a leg's tests are interrupted after this long (default 2100: a hang fails the run)
#   PYTHON=python3.12        the interpreter the newest leg's venv is made from
#   PYTHON_OLDEST=PATH       the oldest leg's (default: a Python 3.9 found here, else $PYTHON)
#   extra arguments          are passed to pytest, e.g. `bash tests/run.sh -x -k kernel`
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
legs="${RJOBS_LEGS:-newest oldest}"
venvs="${RJOBS_VENVS:-$repo/.venvs}"
python="${PYTHON:-python3}"
# the versions the oldest leg pins: the lower bounds in pyproject.toml of these distributions
oldest_of="ipython ipykernel ipywidgets paramiko dill jupyter_client distributed"

system_packages="openssh-server openssh-client nftables iproute2 procps libpam-google-authenticator oathtool python3-venv"
browser_packages="chromium"
select=()
if [ "$(id -u)" = 0 ]; then
    missing=""
    for package in $system_packages $browser_packages; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        echo "== apt-get install:$missing"
        apt-get update -q >/dev/null || { echo "apt-get update failed" >&2; exit 1; }
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $system_packages >/dev/null \
            || { echo "apt-get install of $system_packages failed" >&2; exit 1; }
        # chromium with its recommended packages (fonts), as ../shared/browser-testing-notes.md measured
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $browser_packages >/dev/null \
            || { echo "apt-get install of $browser_packages failed" >&2; exit 1; }
    fi
    mkdir -p /run/sshd && chmod 755 /run/sshd
else
    echo "== not root: skipping the ssh, namespace and browser tiers (they need root to install OpenSSH and Chromium and to create network namespaces; run as root to include them)"
    select=(-m "not ssh and not browser")
fi

lowest_constraints() {
    # "name>=version" in pyproject.toml, for the distributions in $oldest_of, as name==version
    local name
    for name in $oldest_of; do
        grep -oiE "\"${name//_/[-_]}>=[^\",;]+" pyproject.toml | head -1 | sed -E 's/^"//; s/>=/==/'
    done
}

oldest_python() {
    if [ -n "${PYTHON_OLDEST:-}" ]; then echo "$PYTHON_OLDEST"; return; fi
    local candidate
    for candidate in python3.9 "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.9*/bin/python3; do
        if "$candidate" -c 'import sys, venv; assert sys.version_info[:2] == (3, 9)' >/dev/null 2>&1; then
            echo "$candidate"; return
        fi
    done
    echo "$python"
}

other_dask() {
    # RJOBS_DASK_OTHER_PYTHON: a Python with other versions of Python and distributed than the leg's
    # own, whose scheduler the version-mismatch test connects to. The oldest leg takes the newest
    # leg's venv (or a venv of $PYTHON with the newest distributed); the newest leg a venv of the
    # oldest Python with the lowest distributed pyproject.toml allows.
    local leg="$1" other="$venvs/dask-other-$1" interpreter requirement
    if [ "$leg" = oldest ] && [ -x "$venvs/newest/bin/python" ]; then
        export RJOBS_DASK_OTHER_PYTHON="$venvs/newest/bin/python"; return
    fi
    if [ "$leg" = oldest ]; then
        interpreter="$python"; requirement="distributed"
    else
        interpreter="$(oldest_python)"
        requirement="$(grep -oiE '"distributed>=[^",;]+' pyproject.toml | head -1 | sed -E 's/^"//; s/>=/==/')"
    fi
    rm -rf "$other"
    "$interpreter" -m venv "$other"
    "$other/bin/python" -m pip install -q "$requirement"
    export RJOBS_DASK_OTHER_PYTHON="$other/bin/python"
}

run_leg() {
    local leg="$1"; shift
    local venv="$venvs/$leg"
    local interpreter="$python"
    [ "$leg" = oldest ] && interpreter="$(oldest_python)"
    echo "== leg $leg: a fresh venv in $venv, from $("$interpreter" --version 2>&1) ($interpreter)"
    rm -rf "$venv"
    "$interpreter" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    case "$leg" in
        newest)
            "$venv/bin/python" -m pip wheel -q --no-deps -w "$venv/dist" "$repo"
            local wheel
            wheel=$(ls "$venv"/dist/jupyter_rjobs-*.whl)
            "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager "$wheel[test,dask]"
            export RJOBS_EXPECT_INSTALL=wheel ;;
        oldest)
            lowest_constraints > "$venv/constraints.txt"
            echo "== pins: $(tr '\n' ' ' < "$venv/constraints.txt")"
            "$venv/bin/python" -m pip install -q -e "$repo[test,dask]" -c "$venv/constraints.txt"
            export RJOBS_EXPECT_INSTALL=editable ;;
        *) echo "unknown leg $leg (newest or oldest)" >&2; exit 2 ;;
    esac
    "$venv/bin/python" -m pip check
    other_dask "$leg"
    echo "== leg $leg tests: $("$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(ipython|ipykernel|ipywidgets|jupyter.client|jupyterlab|paramiko|dill|dask|distributed|pytest)==' | tr '\n' ' ')"
    # pytest from outside the checkout, so `import jupyter_rjobs` (and `python -m jupyter_rjobs` in
    # the demo test) gets the installed package, not the source tree beside it
    # a leg that hangs is ended after RJOBS_LEG_TIMEOUT s (default 35 min; a leg takes about 10):
    # SIGINT first, so pytest says what ran and where it stood, then SIGKILL a minute later
    (cd "$venv" && timeout -s INT -k 60 "${RJOBS_LEG_TIMEOUT:-2100}" \
        "$venv/bin/python" -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -p no:cacheprovider --durations=10 \
        ${select[@]+"${select[@]}"} "$@" "$repo/tests")
}

for leg in $legs; do
    run_leg "$leg" "$@"
done
echo "== every leg passed: $legs"
