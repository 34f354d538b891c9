#!/usr/bin/env python3
"""Config fuzz test: `condensa train` on a few hundred mutations of configs/tiny.yaml.

Every mutated config must either train (exit 0) or be refused as a configuration error (exit 2)
with exactly one `condensa train: error: ...` line that names a config key (`train.steps`,
`model`) or a line of the file, within a time bound, without dying by a signal and without a
C++ exception dump (`what():`, `terminate called`, LibTorch frames). The mutations: dropped
keys and sections; wrong types; huge, negative and zero values; duplicate keys and sections;
garbage (random lines, unbalanced brackets, complex keys, extra documents, tabs, deep nesting,
truncation, bytes that are not UTF-8), one to three at a time, on every key of the schema (the
list comes from `condensa train --config-reference`). The base config trains 2 steps.

Deterministic for a given --seed. Only the Python standard library is used.

Not fuzzed with huge values: optim.lr and optim.weight_decay. Their range is deliberately open
(docs/config.md); what a diverging step does is the non-finite-step policy's call, not a
config check's.
"""
import argparse
import concurrent.futures
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

SECTIONS = ["run", "data", "model", "train", "optim", "parallel", "checkpoint", "log"]

WRONG_TYPE = ["abc", "[1, 2]", "{a: 1}", "true", "1.5", "~", "''", "0x10", "1_000", "12abc",
              "!!binary aGVsbG8=", "'5'", "yes", "[]", "{}", "- 1"]
HUGE = ["4611686018427387904", "9223372036854775807", "9223372036854775808",
        "18446744073709551616", "1e300", "1e400", "-9223372036854775808", ".inf", ".nan",
        "1099511627776", "2147483648"]
NEGATIVE = ["-1", "-1000", "-1e-300", "-0.5", "-2"]
ZERO = ["0", "0.0", "-0"]
OPEN_RANGE = {"optim.lr", "optim.weight_decay"}

GARBAGE_LINES = [
    "[", "{", "]]", "}: 1", "? [a, b]\n: 1", "{x: 1}: 2", "---\ntrain: {steps: 3}", "\tsteps: 3",
    "&a 1", "*missing", "<<: *x", "\"unterminated", "'unterminated", "key: value: more",
    "- item", ":", "!!python/object:os.system ls", "%YAML 1.2", "@bad", "`bad`", "a: |\n  text",
]

KEY_RE = re.compile(r"\| `([a-z_]+)\.([a-z_0-9]+)` \|")


def all_keys(binary):
    out = subprocess.run([binary, "train", "--config-reference"], capture_output=True, text=True,
                         check=True).stdout
    keys = KEY_RE.findall(out)
    if len(keys) < 40:
        sys.exit(f"config_fuzz: only {len(keys)} keys in --config-reference output")
    return keys


def parse(lines):
    """(section, key) -> line index, for `section:` / `  key: value` lines."""
    where, section = {}, None
    for i, line in enumerate(lines):
        m = re.match(r"^([a-z_]+):\s*$", line)
        if m:
            section = m.group(1)
            where[(section, None)] = i
            continue
        m = re.match(r"^\s+([a-z_0-9]+):", line)
        if m and section:
            where[(section, m.group(1))] = i
    return where


def set_value(lines, section, key, value):
    where = parse(lines)
    text = f"  {key}: {value}"
    if (section, key) in where:
        lines[where[(section, key)]] = text
    elif (section, None) in where:
        lines.insert(where[(section, None)] + 1, text)
    else:
        lines += [f"{section}:", text]


def mutate(lines, keys, rng):
    """Applies one random mutation to `lines` in place; returns its description."""
    kind = rng.choice(["drop_key", "drop_section", "wrong_type", "huge", "negative", "zero",
                       "duplicate_key", "duplicate_section", "garbage", "garbage",
                       "unknown_key"])
    section, key = rng.choice(keys)
    where = parse(lines)
    if kind == "drop_key":
        present = [sk for sk in where if sk[1] is not None]
        if not present:
            return "drop_key (none left)"
        section, key = rng.choice(present)
        del lines[where[(section, key)]]
        return f"drop {section}.{key}"
    if kind == "drop_section":
        present = [sk[0] for sk in where if sk[1] is None]
        if not present:
            return "drop_section (none left)"
        section = rng.choice(present)
        start = where[(section, None)]
        end = start + 1
        while end < len(lines) and lines[end].startswith(" "):
            end += 1
        del lines[start:end]
        return f"drop section {section}"
    if kind in ("wrong_type", "huge", "negative", "zero"):
        values = {"wrong_type": WRONG_TYPE, "huge": HUGE, "negative": NEGATIVE, "zero": ZERO}[kind]
        if kind == "huge" and f"{section}.{key}" in OPEN_RANGE:
            section, key = "model", "hidden_size"
        value = rng.choice(values)
        set_value(lines, section, key, value)
        return f"{kind} {section}.{key}={value}"
    if kind == "duplicate_key":
        value = rng.choice(ZERO + NEGATIVE + ["3", "abc"])
        set_value(lines, section, key, "2")
        i = parse(lines)[(section, key)]
        lines.insert(i + 1, f"  {key}: {value}")
        return f"duplicate {section}.{key}"
    if kind == "duplicate_section":
        lines += [f"{section}:", f"  {key}: {rng.choice(['1', 'abc', '0'])}"]
        return f"duplicate section {section}"
    if kind == "unknown_key":
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(1, 12)))
        set_value(lines, rng.choice(SECTIONS + ["extra", "Train"]), name, "1")
        return f"unknown key {name}"
    # garbage
    what = rng.choice(["line", "line", "random", "nest", "truncate", "bytes", "indent"])
    at = rng.randint(0, len(lines))
    if what == "line":
        g = rng.choice(GARBAGE_LINES)
        lines.insert(at, g)
        return f"garbage line {g!r} at {at + 1}"
    if what == "random":
        chars = "abcxyz:{}[],-?&*!|>'\"#%@` \t0123456789._"
        g = "".join(rng.choice(chars) for _ in range(rng.randint(1, 40)))
        lines.insert(at, g)
        return f"random line {g!r} at {at + 1}"
    if what == "nest":
        depth = rng.choice([50, 500, 5000])
        lines.insert(at, f"  {key}: " + "[" * depth + "]" * depth)
        return f"nesting {depth} deep at {at + 1}"
    if what == "truncate":
        text = "\n".join(lines)
        cut = rng.randint(0, len(text))
        lines[:] = text[:cut].split("\n")
        return f"truncated at byte {cut}"
    if what == "bytes":
        g = "".join(chr(rng.randint(0x80, 0xff)) for _ in range(rng.randint(1, 8)))
        lines.insert(at, g)
        return f"bytes {g.encode('latin-1')!r} at {at + 1}"
    lines.insert(at, "\t" + rng.choice(lines or ["x: 1"]).strip())
    return f"tab-indented line at {at + 1}"


def base_lines(config_path):
    lines = open(config_path).read().split("\n")
    set_value(lines, "train", "steps", "2")
    return lines


BAD_OUTPUT = ["what():", "terminate called", "Exception raised from", "frame #", "Segmentation",
              "Aborted", "core dumped", "Traceback"]
# A key, a line, or (for a file with no section left) the file itself.
KEY_NAME = re.compile(r"\b(" + "|".join(SECTIONS) + r")(\.[a-z_0-9]+)?\b|\bline \d+|config file '")


def check(case, rc, out, err, seconds, limit_s):
    """'' when the run behaved, else what was wrong."""
    if rc is None:
        return f"did not exit within {limit_s} s"
    if rc < 0:
        return f"killed by signal {-rc}"
    if rc not in (0, 2):
        return f"exit code {rc} (expected 0 or 2)"
    for bad in BAD_OUTPUT:
        if bad in out or bad in err:
            return f"output contains {bad!r}"
    if rc == 2:
        errors = [line for line in err.splitlines() if line.startswith("condensa train: error:")]
        if len(errors) != 1:
            return f"{len(errors)} error lines (expected 1)"
        others = [line for line in err.splitlines()
                  if line.strip() and not line.startswith(("condensa train: error:", "warning:"))]
        if others:
            return f"error message spans several lines: {others[0]!r}"
        if not KEY_NAME.search(errors[0][len("condensa train: error:"):]):
            return "the error names no key and no line"
    return ""


def run_case(args, index, text):
    work = tempfile.mkdtemp(prefix=f"fuzz{index:04d}_")
    try:
        path = os.path.join(work, "config.yaml")
        with open(path, "w", encoding="latin-1") as f:
            f.write(text)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.monotonic()
        try:
            p = subprocess.run([args.binary, "train", path], cwd=work, env=env,
                               capture_output=True, timeout=args.limit_s)
            rc, out, err = p.returncode, p.stdout.decode("latin-1"), p.stderr.decode("latin-1")
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, (e.stdout or b"").decode("latin-1"), (e.stderr or b"").decode(
                "latin-1")
        return rc, out, err, time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit-s", type=float, default=60, help="time bound of one run")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    args.binary = os.path.abspath(args.binary)  # the runs start in their own directories

    keys = all_keys(args.binary)
    base = base_lines(args.config)
    rng = random.Random(args.seed)
    cases = []
    for i in range(args.cases):
        lines = list(base)
        what = [mutate(lines, keys, rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        cases.append(("; ".join(what), "\n".join(lines) + "\n"))

    t0 = time.monotonic()
    failures, exits = [], {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_case, args, i, text) for i, (_, text) in enumerate(cases)]
        for i, future in enumerate(futures):
            rc, out, err, seconds = future.result()
            exits[rc] = exits.get(rc, 0) + 1
            problem = check(cases[i][0], rc, out, err, seconds, args.limit_s)
            if problem:
                failures.append((i, problem, cases[i], err))
    elapsed = time.monotonic() - t0
    summary = ", ".join(f"exit {k}: {v}" for k, v in sorted(exits.items(), key=str))
    print(f"config_fuzz: {len(cases)} mutated configs in {elapsed:.0f} s ({summary}); "
          f"{len(failures)} failed")
    for i, problem, (what, text), err in failures[:10]:
        print(f"\n--- case {i}: {what}\n{problem}\nstderr (last 800 chars):\n{err[-800:]}\n"
              f"config:\n{text}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
