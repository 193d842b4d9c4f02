"""Run a command as a child of this small process and write the child's exit status and peak
RSS (os.wait4) to a JSON file:  python rusage_shim.py RESULT.json CMD [ARG...]

Why a shim: Linux carries a process's high-water RSS into a child it forks, and across exec
(the old address space's mark goes into the child's ru_maxrss). A large launcher, such as a
pytest run past 1 GiB, would put a floor under every stage's figure. This interpreter is
started fresh (a few MiB), so the child it forks starts from a small mark and ru_maxrss is
the stage's own."""

import json
import os
import sys


def main() -> None:
    result, cmd = sys.argv[1], sys.argv[2:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            print(f"rusage_shim: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
        os._exit(127)  # exec failed: the shell's "command not found" code
    _, status, usage = os.wait4(pid, 0)
    tmp = result + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"exit_code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, f)
    os.replace(tmp, result)


if __name__ == "__main__":
    main()
