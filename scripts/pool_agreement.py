"""Pool the selection agreement of several benchmark runs into one measurement per path.

A device call has time for about 36 agreement draws of the full-size models (the exact fp32 path alone takes
about 4 minutes for them), and a claim of at least 95% needs 73 or more. Run the benchmark again with new draws
(``--first-seed 4``: seeds 4-7 after the default 0-3; ``--per-draw`` in every run) and pool the runs here::

    python scripts/benchmark.py --out a.json --sections agreement --draws 36 --per-draw
    python scripts/benchmark.py --out b.json --sections agreement --draws 36 --per-draw --first-seed 4
    python scripts/pool_agreement.py a.json b.json --out pooled.json

Every run must measure the same thing: the same N, lookahead, set sizes and exact path, each path with the same prior
(variant and dtype), reward and engine settings, on the same GPU model
(bf16 kernels differ between GPUs, and so do the near-ties they flip; ``--mixed-devices`` pools anyway and says
so), and no draw (seed, step) twice. A path is pooled where every run measured it; the others are listed as
left out. Writes the pooled JSON (``--out``) and prints a markdown table.

A path renamed between benchmark versions pools with ``--alias "OLD=NEW"``: a run's path OLD counts as NEW. The
alias is the caller's word that both names measured one prior (an older run's variant label and unrecorded dtype
cannot say it), so for the aliased runs the prior's label and dtype are not compared; the reward and the engine
settings still are, and the output lists every alias with what each run recorded. A run that holds both names
meant something else by NEW then: that path is set aside under its own label (and left out)::

    python scripts/pool_agreement.py old_*.json new_*.json --alias "compiled, fp16 prior=compiled (default on CUDA)"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewardsds.eval.agreement import pool_reports  # noqa: E402

#: what every pooled run must share (the agreement section's settings)
SAME = ("n_noises", "views", "lookahead_steps", "n_max", "n_min", "exact")
#: what each pooled path must share across the runs (the prior variant and its dtype, the reward, the engine settings)
PATH_SAME = ("prior", "prior_dtype", "reward", "engine")
#: what an alias vouches for: the prior's variant label and its dtype, which an older benchmark named differently
ALIAS_WAIVES = ("prior", "prior_dtype")


def parse_aliases(specs: list[str] | None) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for spec in specs or []:
        old, sep, new = spec.partition("=")
        if not sep or not old.strip() or not new.strip() or old.strip() == new.strip():
            raise SystemExit(f"--alias {spec!r}: expected OLD=NEW, two different path names. Fix: e.g. "
                             '--alias "compiled, fp16 prior=compiled (default on CUDA)"')
        aliases[old.strip()] = new.strip()
    chained = sorted(set(aliases) & set(aliases.values()))
    if chained:
        raise SystemExit(f"--alias: {chained[0]!r} is both a name renamed and a new name: the aliases would chain. "
                         "Fix: rename every old name straight to the final one")
    return aliases


def apply_aliases(f: Path, data: dict, aliases: dict[str, str], section: str = "agreement") -> list[dict]:
    """Rename this run's aliased paths in place; returns what each renamed path recorded."""
    paths, renamed = data[section]["paths"], []
    for old, new in aliases.items():
        if old not in paths:
            continue
        displaced = None
        if new in paths:  # the name meant something else in that run's version: set it aside, it is not this path
            displaced = f"{new} (its meaning in {f.name})"
            paths[displaced] = paths.pop(new)
        part = paths[new] = paths.pop(old)
        part["aliased_from"] = old
        renamed.append({"file": str(f), "from": old, "to": new, **{k: part.get(k) for k in ALIAS_WAIVES},
                        "displaced": displaced})
    return renamed


def load(path: Path, section: str = "agreement") -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read a benchmark JSON ({e}). Fix: name the --out file of scripts/benchmark.py") from None
    if not isinstance(data, dict) or not data.get(section, {}).get("paths"):
        fix = ("name a benchmark JSON of a run with the mvdream_agreement section" if section == "agreement_mvdream" else
               "name a benchmark JSON of a run with the agreement (or fp32_ranking / attribution / half) section")
        raise SystemExit(f"{path}: has no {section} paths. Fix: {fix}")
    return data


def pool(files: list[Path], mixed_devices: bool = False, per_draw: bool = False,
         aliases: dict[str, str] | None = None, section: str = "agreement") -> dict:
    runs = [(f, load(f, section)) for f in files]
    for old in aliases or {}:  # a misspelt alias would otherwise change nothing, silently
        if not any(old in d[section]["paths"] for _, d in runs):
            known = sorted({n for _, d in runs for n in d[section]["paths"]})
            raise SystemExit(f"--alias {old}={aliases[old]}: no run measured a path {old!r}. Fix: name one of the "
                             f"runs' paths: {', '.join(map(repr, known))}")
    renamed = [r for f, data in runs for r in apply_aliases(f, data, aliases or {}, section)]
    first_file, first = runs[0]
    for f, data in runs[1:]:
        for key in SAME:
            a, b = first[section].get(key), data[section].get(key)
            if a != b:
                raise SystemExit(f"{section}.{key} is {a!r} in {first_file} but {b!r} in {f}: pool runs that measured the same "
                                 f"thing. Fix: leave {f} out, or measure it again with the first run's settings")
        if data.get("device") != first.get("device") and not mixed_devices:
            raise SystemExit(f"device is {first.get('device')!r} in {first_file} but {data.get('device')!r} in {f}: bf16 near-ties "
                             "flip differently on each GPU. Fix: pool runs of one GPU model, or pass --mixed-devices to pool "
                             "them anyway (the output then says so)")
    names = [n for n in first[section]["paths"] if all(n in d[section]["paths"] for _, d in runs)]
    every = {n for _, d in runs for n in d[section]["paths"]}
    out = {"files": [str(f) for f, _ in runs], "devices": sorted({str(d.get("device")) for _, d in runs}), "section": section,
           **{k: first[section].get(k) for k in SAME if k in first[section]}, "paths": {}, "left_out": sorted(every - set(names)),
           "aliases": renamed}
    for name in names:
        parts = [d[section]["paths"][name] for _, d in runs]
        files = [f for f, _ in runs]
        for key in PATH_SAME:  # one label, one measurement: e.g. the default's path before and after its dtype changed
            # an alias vouches for the prior's label and dtype: those compare within the aliased runs and within the others
            group = (lambda part: "aliased_from" in part) if key in ALIAS_WAIVES else (lambda part: None)
            ref: dict = {}
            for f, part in zip(files, parts):
                f0, p0 = ref.setdefault(group(part), (f, part))
                if part.get(key) != p0.get(key):
                    raise SystemExit(f"path {name!r}: {key} is {p0.get(key)!r} in {f0} but {part.get(key)!r} in {f}: "
                                     "the same name measured different things (None: not recorded by that run's benchmark). "
                                     f"Fix: pool runs that measured the path alike, or leave {f} out")
        try:
            rep = pool_reports(parts)
        except ValueError as e:
            raise SystemExit(f"path {name!r}: {e}") from None
        row = rep.to_json(per_draw=per_draw)
        row["misses"] = [{k: r.get(k) for k in ("seed", "step", "t", "top_match", "bottom_match", "regret")}
                         for r in rep.per_draw if not r["match"]]
        row.update(rep.bar())
        out["paths"][name] = row
    return out


def markdown(out: dict) -> str:
    lines = [f"pooled from {len(out['files'])} runs on {', '.join(out['devices'])} ({out.get('section', 'agreement')}: "
             f"N={out['n_noises']}{' x ' + str(out['views']) + ' views' if out.get('views') else ''}, "
             f"lookahead {out['lookahead_steps']}, top-{out['n_max']} / bottom-{out['n_min']})", "",
             "| path | draws | both sets (95% interval) | top | bottom | rank corr | regret mean / max | by t | misses at t | "
             "on-by-default bar (95%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in out["paths"].items():
        lo, hi = p["agreement_ci95"]
        by_t = ", ".join(f"{k}: {v['agreement']:.0%} of {v['n']}" for k, v in p["by_t"].items())
        lines.append(f"| {name} | {p['n_draws']} | {p['agreement']:.1%} ({lo:.1%}-{hi:.1%}) | {p['top_agreement']:.1%} | "
                     f"{p['bottom_agreement']:.1%} | {p['rank_correlation']:.3f} | {p['regret_mean']:.4f} / {p['regret_max']:.3f} | "
                     f"{by_t} | {', '.join(str(m['t']) for m in p['misses']) or '-'} | "
                     f"{'shown' if p['default_shown'] else 'meets, not shown' if p['default_ok'] else 'misses'} |")
    if len(out["devices"]) > 1:
        lines.append("\nmixed devices: the runs come from different GPUs")
    for name in out["left_out"]:
        lines.append(f"\nleft out: {name!r} (not measured in every run)")
    for a in out.get("aliases", []):
        lines.append(f"\naliased: {a['from']!r} in {a['file']} pooled as {a['to']!r} (that run recorded prior "
                     f"{a['prior']!r}, dtype {a['prior_dtype'] or 'not recorded'})"
                     + (f"; its own {a['to']!r} is set aside as {a['displaced']!r}" if a["displaced"] else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="benchmark JSONs (scripts/benchmark.py --out, run with --per-draw)")
    ap.add_argument("--out", type=Path, default=None, help="write the pooled JSON here (and the table beside it, .md)")
    ap.add_argument("--mixed-devices", action="store_true", help="pool runs of different GPUs (said in the output)")
    ap.add_argument("--per-draw", action="store_true", help="keep every pooled draw's row in the JSON")
    ap.add_argument("--section", default="agreement", choices=["agreement", "agreement_mvdream"],
                    help="which agreement of the JSONs to pool: SD's (agreement) or MVDream's (agreement_mvdream, the "
                         "benchmark's mvdream_agreement section)")
    ap.add_argument("--alias", action="append", default=None, metavar="OLD=NEW",
                    help="pool a run's path OLD as NEW (a path renamed between benchmark versions; repeatable)")
    args = ap.parse_args(argv)
    out = pool(args.files, args.mixed_devices, args.per_draw, parse_aliases(args.alias), args.section)
    table = markdown(out)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
        args.out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
