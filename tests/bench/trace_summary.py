#!/usr/bin/env python3
"""Self time per operator in a Chrome trace written by `condensa bench train --profile`.

usage: trace_summary.py TRACE.json [TOP]
Self time = an event's duration minus its directly nested children's (per thread).
"""
import collections, json, sys

trace = json.load(open(sys.argv[1]))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
by_thread = collections.defaultdict(list)
for e in events:
    by_thread[(e.get("pid"), e.get("tid"))].append(e)
self_us = collections.Counter()
calls = collections.Counter()
wall = 0.0
for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack = []  # [event, child time]
    def close(entry):
        e, child = entry
        self_us[e["name"]] += e["dur"] - child
        calls[e["name"]] += 1
    for e in evs:
        while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
            close(stack.pop())
        if stack:
            stack[-1][1] += e["dur"]
        else:
            wall += e["dur"]
        stack.append([e, 0.0])
    while stack:
        close(stack.pop())
total = sum(self_us.values())
print(f"{'operator':48s} {'calls':>7s} {'self ms':>10s} {'share':>7s}")
for name, us in self_us.most_common(top):
    print(f"{name[:48]:48s} {calls[name]:7d} {us / 1e3:10.1f} {100 * us / total:6.1f}%")
print(f"{'total (top-level events)':48s} {'':7s} {wall / 1e3:10.1f}")
