# Sourced by the bin/ shims: bootstrap .venv, then exec one console entry point.
# usage (from a shim):  . "$(dirname "$0")/_shim.sh"; run_entry ENTRY_POINT [EXTRA] -- "$@"
root=$(cd "$(dirname "$0")/.." && pwd)
# a checkout's commands work on its own data/, scenarios/, keys/ unless told otherwise
# (installed console scripts use $OS_SANDBOX_ROOT or the current directory instead)
export OS_SANDBOX_ROOT="${OS_SANDBOX_ROOT:-$root}"
run_entry() {
    entry=$1; shift
    extras=""
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do extras="$extras $1"; shift; done
    [ "$#" -gt 0 ] && shift
    # shellcheck disable=SC2086
    python3 "$root/bin/_bootstrap.py" $extras || exit $?
    exec "$root/.venv/bin/$entry" "$@"
}
