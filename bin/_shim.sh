# Sourced by the bin/ shims: bootstrap .venv, then exec one console entry point.
# usage (from a shim):  . "$(dirname "$0")/_shim.sh"; run_entry ENTRY_POINT [EXTRA] -- "$@"
root=$(cd "$(dirname "$0")/.." && pwd)
run_entry() {
    entry=$1; shift
    extras=""
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do extras="$extras $1"; shift; done
    [ "$#" -gt 0 ] && shift
    # shellcheck disable=SC2086
    python3 "$root/bin/_bootstrap.py" $extras || exit $?
    exec "$root/.venv/bin/$entry" "$@"
}
