#!/usr/bin/env python3
"""Locked (atomic read-modify-write) instructions and clock reads per request, from a
callgrind file written with --dump-instr=yes (scripts/bench/instructions.sh with LOCKED=1).

    locked.py CALLGRIND_FILE REQUESTS      # prints: <locked per request> <clock reads per request>

callgrind counts how often each instruction ran; objdump says which of them are locked
(`lock`-prefixed, or `xchg` with memory, which locks implicitly). An instruction count
weighs those as one each, though each costs several plain ones. Under valgrind the vDSO is
not used, so every clock read is a `syscall` inside glibc's clock_gettime: those are
counted as clock reads.
"""
import collections
import re
import subprocess
import sys


def executions(path):
    """{object file: {instruction address: executions}} and the function of each address."""
    # Compressed names ("(7) name" once, "(7)" after) are numbered per kind: objects
    # (ob=, cob=) apart from functions (fn=, cfn=).
    names = {"ob": {}, "fn": {}}
    counts = collections.defaultdict(collections.Counter)
    function_at = {}
    obj = function = None
    last = [0, 0]
    positions = 2
    skip_next = False

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), rest)

    def position(token, i):
        if token == "*":
            return last[i]
        last[i] = last[i] + int(token, 0) if token[0] in "+-" else int(token, 0)
        return last[i]

    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("positions:"):
                positions = len(line.split()) - 1
            elif line.startswith("ob="):
                obj = name("ob", line[3:].strip())
            elif line.startswith("fn="):
                function = name("fn", line[3:].strip())
            elif line.startswith(("cob=", "cfn=")):
                # A callee's names: only recorded, for later references by number.
                kind, rest = line.split("=", 1)
                name(kind[1:], rest.strip())
            elif line.startswith(("calls=", "jump=", "jcnd=")):
                # The next cost line is a call's inclusive cost, not executions.
                skip_next = True
            elif line[:1] in "0123456789+-*":
                tokens = line.split()
                address = position(tokens[0], 0)
                if positions > 1:
                    position(tokens[1], 1)
                if skip_next:
                    skip_next = False
                    continue
                ran = int(tokens[positions]) if len(tokens) > positions else 0
                counts[obj][address] += ran
                function_at[(obj, address)] = function
    return counts, function_at


def main():
    path, requests = sys.argv[1], float(sys.argv[2])
    counts, function_at = executions(path)
    locked = clock_reads = 0
    for obj, ran in counts.items():
        if not obj or obj.startswith("???"):
            continue
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                                 capture_output=True, text=True, check=False).stdout
        for line in listing.splitlines():
            m = re.match(r"\s*([0-9a-f]+):\s+(\S+)(.*)", line)
            if not m or int(m.group(1), 16) not in ran:
                continue
            address, mnemonic, operands = int(m.group(1), 16), m.group(2), m.group(3)
            if mnemonic == "lock" or (mnemonic.startswith("xchg") and "(" in operands):
                locked += ran[address]
            elif mnemonic == "syscall" and "clock_gettime" in (function_at[(obj, address)] or ""):
                clock_reads += ran[address]
    print(f"{locked / requests:.1f} {clock_reads / requests:.2f}")


if __name__ == "__main__":
    main()
