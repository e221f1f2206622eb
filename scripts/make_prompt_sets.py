"""Write the sampled prompt sets of ``conf/prompts/`` from the public prompt lists (reproducible, offline).

The RewardSDS paper evaluates on "25 random DrawBench prompts" (Table 1), "50 MS-COCO + 50 DrawBench"
(Table 2) and "30 randomly sampled prompts from DreamFusion gallery" (Table 7) without publishing which. The
sets written here are reproducible stand-ins, not the paper's lists: from each source list, the ``k`` prompts
with the smallest SHA-256 of ``"<seed>:<prompt>"`` (seed 0), listed in source order. The rule needs no random
number generator (same result in any language or version), and sets of one source are nested
(drawbench25 is contained in drawbench50). Prompts that the paper shows for an experiment are put first and
counted in ``k`` (Fig. 12 shows four prompts of the Table 7 set).

Usage (the source files are the public ones named in SOURCES; their SHA-256 is checked)::

    python scripts/make_prompt_sets.py --drawbench DrawBench.csv --coco captions_source.tsv \\
        --dreamfusion prompt_library.json --out conf/prompts
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

SEED = 0

SOURCES = {
    "drawbench": {
        "what": "DrawBench (Saharia et al. 2022, Imagen, arXiv:2205.11487): 200 prompts in 11 categories, "
                "published as a Google Sheet linked from https://imagen.research.google/",
        "file": "github.com/mwomick/VaReSynth data/DrawBench.csv @ f90470975e07e8477a7fcb99e949051859466880 "
                "(the sheet exported as CSV: columns Prompts, Category)",
        "sha256": "5f50241927354d1879b5b0b27cd3c83e8e6816a19fcc9c559053e8d09781c392",
    },
    "coco": {
        "what": "MS-COCO 2014 validation captions (Lin et al. 2014; Chen et al. 2015), the 5000-caption subset "
                "(one caption per image) that MLCommons Inference uses for its text-to-image benchmark",
        "file": "github.com/mlcommons/inference text_to_image/coco2014/captions/captions_source.tsv @ "
                "b66003e10e2db4b8c36a448b0545ec90fcc6e9e9 (columns id, image_id, caption, ...)",
        "sha256": "2eeb95637b30fe5af26dd644bafa7affe4e5472ad0bda32d0feb1bd261280d5e",
    },
    "dreamfusion": {
        "what": "DreamFusion gallery prompts (Poole et al. 2022, https://dreamfusion3d.github.io/gallery.html), "
                "415 prompts as collected by threestudio",
        "file": "github.com/threestudio-project/threestudio load/prompt_library.json (key dreamfusion) @ "
                "28d9d80d9d00f308244adfcf3be8b17ca0cb6465",
        "sha256": "ba7d448824f84ee395ea9903871315ad1d366864c96defd199e516aeb53b0779",
    },
}

# RewardSDS (arXiv:2503.09601v2) Fig. 12 shows these prompts for the Table 7 experiment (30 DreamFusion-gallery
# prompts); listed here in the gallery's spelling.
DREAMFUSION_PAPER_FIG12 = [
    "a DSLR photo of a bagel filled with cream cheese and lox",
    "a silver platter piled high with fruits",
    "a zoomed out DSLR photo of a colorful camping tent in a patch of grass",
    "a palm tree, low poly 3d model",
]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rank(text: str, seed: int = SEED) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode("utf-8")).hexdigest()


def pick(items: list[str], k: int, first: list[int] = (), seed: int = SEED) -> list[int]:
    """Indices of ``first`` plus the ``k - len(first)`` other items with the smallest hash rank, in source order."""
    rest = sorted((i for i in range(len(items)) if i not in set(first)), key=lambda i: (rank(items[i], seed), i))
    return sorted(list(first) + rest[: k - len(first)])


def read_drawbench(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["Prompts"].strip(), r["Category"].strip()) for r in csv.DictReader(f)]


def read_coco(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(" ".join(r["caption"].split()), f"caption id {r['id']}, image {r['image_id']}") for r in rows]


def read_dreamfusion(path: Path) -> list[tuple[str, str]]:
    return [(" ".join(p.split()), "") for p in json.loads(path.read_text(encoding="utf-8"))["dreamfusion"]]


def write_set(out: Path, name: str, header: list[str], source_line: str, rows: list[tuple[int, str, str]]) -> None:
    """``conf/prompts/<name>.yaml``: the header as comments (wrapped; lines starting with spaces kept), then the set."""
    import textwrap

    lines = []
    for h in header:
        if not h:
            lines.append("#")
        elif h.startswith(" "):
            lines.append(f"# {h}")
        else:
            lines += [f"# {w}" for w in textwrap.wrap(h, 108, break_on_hyphens=False)]
    lines += ["defaults:", "  - /schema/prompts/PromptSetConfig@_here_", "  - _self_", f"name: {name}",
              f"source: {json.dumps(source_line, ensure_ascii=False)}", "items:"]
    for index, text, note in rows:
        comment = f"  # {index}" + (f" {note}" if note else "")
        lines.append(f"  - {json.dumps(text, ensure_ascii=False)}{comment}")
    (out / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / f'{name}.yaml'} ({len(rows)} prompts)")


def sample_header(title: str, paper: str, src: dict, k: int, n: int, extra: list[str] = ()) -> list[str]:
    return [
        title,
        "",
        f"NOT the paper's list: {paper} and does not publish which. This is a reproducible stand-in: the {k} of "
        f"the {n} source prompts with the smallest SHA-256 of \"{SEED}:<prompt>\" (seed {SEED}), in source order "
        "(scripts/make_prompt_sets.py writes this file; sets of one source are nested).",
        *extra,
        "",
        f"Source: {src['what']}.",
        f"Read from {src['file']}; sha256 of that file {src['sha256']}.",
        "Each comment gives the prompt's 0-based position in the source list.",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drawbench", type=Path, required=True)
    ap.add_argument("--coco", type=Path, required=True)
    ap.add_argument("--dreamfusion", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "conf" / "prompts")
    ap.add_argument("--allow-other-sources", action="store_true", help="do not stop when a source file's SHA-256 differs")
    args = ap.parse_args(argv)
    for key in SOURCES:
        path = getattr(args, key)
        digest = sha256_file(path)
        if digest != SOURCES[key]["sha256"]:
            msg = f"--{key} {path}: sha256 {digest} differs from the recorded {SOURCES[key]['sha256']}"
            if not args.allow_other_sources:
                raise SystemExit(msg + " (pass --allow-other-sources to write sets from it anyway)")
            print("warning: " + msg, file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)

    db = read_drawbench(args.drawbench)
    src = SOURCES["drawbench"]
    write_set(args.out, "drawbench",
              ["DrawBench, all 200 prompts, in the order of the published sheet.", "",
               f"Source: {src['what']}.", f"Read from {src['file']}; sha256 of that file {src['sha256']}.",
               "Each comment gives the prompt's 0-based row and its DrawBench category.",
               "  rewardsds -m experiment=paper_2d prompts=drawbench strategy=none,min_max"],
              "DrawBench (arXiv:2205.11487), all 200 prompts", [(i, t, c) for i, (t, c) in enumerate(db)])
    texts = [t for t, _ in db]
    for k, table in ((25, "Table 1 and its ablations"), (50, "Table 2 (DrawBench rows)")):
        idx = pick(texts, k)
        write_set(args.out, f"drawbench{k}",
                  sample_header(f"DrawBench, {k} prompts: the prompt set of the RewardSDS paper's {table}.",
                                f"the paper samples {k} random DrawBench prompts", src, k, len(texts),
                                ["  rewardsds -m experiment=paper_2d prompts=" + f"drawbench{k} strategy=none,min_max"]),
                  f"DrawBench (arXiv:2205.11487), {k} of 200 by sha256 rank, seed {SEED}", [(i, db[i][0], db[i][1]) for i in idx])

    coco = read_coco(args.coco)
    src = SOURCES["coco"]
    idx = pick([t for t, _ in coco], 50)
    write_set(args.out, "coco50",
              sample_header("MS-COCO, 50 captions: the prompt set of the RewardSDS paper's Table 2 (MS-COCO rows).",
                            "the paper samples 50 MS-COCO captions", src, 50, len(coco),
                            ["  rewardsds -m experiment=paper_2d prompts=coco50 strategy=none,min_max"]),
              f"MS-COCO val2014 captions (MLCommons 5k subset), 50 by sha256 rank, seed {SEED}", [(i, coco[i][0], coco[i][1]) for i in idx])

    df = read_dreamfusion(args.dreamfusion)
    src = SOURCES["dreamfusion"]
    texts = [t for t, _ in df]
    missing = [p for p in DREAMFUSION_PAPER_FIG12 if p not in texts]
    if missing:
        raise SystemExit(f"--dreamfusion: the paper's Fig. 12 prompts {missing} are not in the list")
    first = [texts.index(p) for p in DREAMFUSION_PAPER_FIG12]
    idx = pick(texts, 30, first=first)
    write_set(args.out, "dreamfusion30",
              sample_header("DreamFusion gallery, 30 prompts: the prompt set of the RewardSDS paper's Table 7 (SD 2.1, no MVDream).",
                            "the paper samples 30 DreamFusion-gallery prompts", src, 30, len(texts),
                            ["The paper's Fig. 12 shows 4 prompts of its set; they are included (gallery spelling, marked "
                             "'paper Fig. 12') and count toward the 30; the other 26 follow the hash rule.",
                             "  rewardsds -m experiment=dreamfusion_nerf prompts=dreamfusion30 strategy=none,min_max"]),
              f"DreamFusion gallery via threestudio prompt_library.json; 4 from the paper's Fig. 12 + 26 by sha256 rank, seed {SEED}",
              [(i, df[i][0], "paper Fig. 12" if i in first else "") for i in idx])
    return 0


if __name__ == "__main__":
    sys.exit(main())
