"""The last step of a sandboxed unit: credentials, capability bounding set, umask, no_new_privs
and seccomp filters, applied in the order systemd applies them, then execve of the command.

Runs inside bubblewrap under Debian's /usr/bin/python3, because libseccomp's Python binding is a
Debian package for that interpreter only. The launcher (tests/sandbox.py) works out every value
and passes it as JSON; this file decides nothing, so it stays small enough to trust.

    /usr/bin/python3 sandbox_exec.py PLAN.json COMMAND [ARG...]
"""

import ctypes
import json
import os
import sys

import seccomp

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000

libc = ctypes.CDLL(None, use_errno=True)


def prctl(option, arg):
    if libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {arg})")


def drop_bounding_set(keep):
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


def resolvable(name):
    """Whether this architecture has the call (libseccomp gives others a negative number)."""
    try:
        return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0
    except ValueError:
        return False


def syscall_filter(plan):
    """SystemCallFilter: an allow-list (default action: the error number, or kill) or a deny-list."""
    errno = plan.get("syscall_errno")
    refuse = seccomp.ERRNO(errno) if errno else seccomp.KILL_PROCESS
    if plan.get("syscall_allow") is not None:
        f = seccomp.SyscallFilter(refuse)
        for name in plan["syscall_allow"]:
            if resolvable(name):
                f.add_rule(seccomp.ALLOW, name)
    else:
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        for name in plan["syscall_deny"]:
            if resolvable(name):
                f.add_rule(refuse, name)
    return f


def address_family_filter(allowed, errno):
    """RestrictAddressFamilies: socket() with any other family fails with EAFNOSUPPORT."""
    f = seccomp.SyscallFilter(seccomp.ALLOW)
    for family in range(0, 64):
        if family not in allowed:
            f.add_rule(seccomp.ERRNO(errno), "socket", seccomp.Arg(0, seccomp.EQ, family))
    return f


def write_execute_filter(errno):
    """MemoryDenyWriteExecute, as systemd's seccomp rules: no mapping both writable and
    executable, no mprotect to executable, no executable shared memory."""
    f = seccomp.SyscallFilter(seccomp.ALLOW)
    wx = PROT_WRITE | PROT_EXEC
    f.add_rule(seccomp.ERRNO(errno), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
    for name in ("mprotect", "pkey_mprotect"):
        if resolvable(name):
            f.add_rule(seccomp.ERRNO(errno), name, seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    f.add_rule(seccomp.ERRNO(errno), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    return f


def main():
    plan = json.load(open(sys.argv[1]))
    command = sys.argv[2:]

    if plan.get("groups") is not None:
        os.setgroups(plan["groups"])
    if plan.get("gid") is not None:
        os.setgid(plan["gid"])
    if plan.get("bounding_set") is not None:
        drop_bounding_set(set(plan["bounding_set"]))
    if plan.get("uid") is not None:
        os.setuid(plan["uid"])
    if plan.get("umask") is not None:
        os.umask(plan["umask"])
    if plan.get("cwd"):
        os.chdir(plan["cwd"])
    if plan.get("no_new_privs"):
        prctl(PR_SET_NO_NEW_PRIVS, 1)

    # Filters last: from here on, only the unit's own system calls are allowed.
    filters = []
    if plan.get("mdwe"):
        filters.append(write_execute_filter(plan["mdwe_errno"]))
    if plan.get("address_families") is not None:
        filters.append(address_family_filter(set(plan["address_families"]), plan["eafnosupport"]))
    if plan.get("syscall_allow") is not None or plan.get("syscall_deny"):
        filters.append(syscall_filter(plan))
    for f in filters:
        if not plan.get("native_only", False):
            # SystemCallArchitectures unset: calls through another ABI are not refused either.
            f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.ALLOW)
        f.load()

    os.execve(command[0], command, plan["environment"])


if __name__ == "__main__":
    main()
