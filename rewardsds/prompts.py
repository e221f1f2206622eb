"""Prompt lists for sweeps: named sets (``conf/prompts/<name>.yaml``) and files of prompts, one a line.

A run takes its prompt from ``prompt=...`` or from a list plus an index::

    rewardsds -m experiment=paper_2d prompts=drawbench25 strategy=none,min_max   # 25 x 2 jobs
    rewardsds -m experiment=paper_2d prompts_file=my_prompts.txt                 # one job per line
    rewardsds experiment=paper_2d prompts=drawbench25 prompt_index=3             # one prompt of a set

In a multirun, the sweeper expands a chosen list into ``prompt_index=range(0,N)`` (the resolver
``rewardsds_prompt_sweep`` in ``conf/hydra/default.yaml``); a ``prompt_index=...`` given on the command
line wins (e.g. ``prompt_index=0,1,2`` for the first three). Each job then sets ``prompt`` from the list
(:func:`select_prompt`, called by ``rewardsds.config.validate``) and its folder is named after the index
and a slug of the prompt (``prompt=03-a_red_colored_car``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

from rewardsds.errors import ConfigError


def slugify(text: str, max_len: int = 40) -> str:
    """Lower-case words joined by ``_``, cut at a word boundary: readable in folder and run names."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    out = ""
    for w in words:
        nxt = f"{out}_{w}" if out else w
        if len(nxt) > max_len:
            break
        out = nxt
    return out or (words[0][:max_len] if words else "prompt")


class PromptSet:
    """A named, ordered list of prompts.

    Args:
        name: the set's name (``drawbench25``; a file's stem for ``prompts_file``).
        items: the prompts, in order; ``prompt_index`` counts from 0.
        source: where the prompts come from (a one-line citation, logged with the run).
    """

    def __init__(self, name: str, items: Sequence[str] = (), source: str = ""):
        self.name = name
        self.items = [str(p) for p in items]
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptSet":
        """A file of prompts: one a line; blank lines and lines starting with ``#`` are skipped."""
        p = Path(path)
        fix = "give a UTF-8 text file with one prompt a line (a relative path is taken from the launch folder)"
        if p.is_dir():
            raise ConfigError("prompts_file", str(path), "is a folder, not a file", fix)
        if not p.is_file():
            raise ConfigError("prompts_file", str(path), "does not exist", fix)
        try:
            data = p.read_bytes()
        except OSError as err:
            raise ConfigError("prompts_file", str(path), f"cannot be read ({err.strerror or err})", fix) from None
        try:
            text = data.decode("utf-8-sig")  # a leading byte-order mark is not part of the first prompt
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise ConfigError("prompts_file", str(path), f"is not UTF-8 text (byte {data[err.start]:#04x} on line {line})",
                              "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.txt > out.txt)") from None
        lines = [ln.strip() for ln in text.splitlines()]
        items = [ln for ln in lines if ln and not ln.startswith("#")]
        if not items:
            raise ConfigError("prompts_file", str(path), "holds no prompts", "write one prompt a line ('#' starts a comment line)")
        return cls(name=p.stem, items=items, source=str(p.resolve()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> str:
        return self.items[index]

    def label(self, index: int) -> str:
        """``<index>-<slug>`` with the index zero-padded to the width of the largest one (sorts in order)."""
        width = len(str(max(len(self.items) - 1, 0)))
        return f"{index:0{width}d}-{slugify(self.items[index])}"


def _absolute(path: str) -> Path:
    """A relative ``prompts_file`` is taken from the folder the command was started in."""
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(path))


def prompt_list(cfg: Any) -> Optional[tuple[PromptSet, str, Any]]:
    """The prompt list chosen by ``prompts=<set>`` or ``prompts_file=<path>``, with its key and value.

    Args:
        cfg: the composed root config (a DictConfig; missing keys count as not set).

    Returns:
        ``(PromptSet, key, value)`` or None when neither is set.
    """
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, "prompts", default=None)
    path = OmegaConf.select(cfg, "prompts_file", default=None)
    if node is not None and path:
        raise ConfigError("prompts_file", path, f"is set together with prompts={node.get('name')}",
                          "choose one prompt list: prompts=<set> or prompts_file=<path>")
    if node is not None:
        items = list(node.get("items") or [])
        name = str(node.get("name") or "")
        if not items:
            raise ConfigError("prompts.items", items, f"is empty in prompts={name}", "list at least one prompt under items:")
        return PromptSet(name=name, items=items, source=str(node.get("source") or "")), "prompts", name
    if path:
        return PromptSet.from_file(_absolute(str(path))), "prompts_file", path
    return None


def select_prompt(cfg: Any) -> None:
    """Set ``cfg.prompt`` from the chosen prompt list and ``prompt_index`` (in place; no list: no change).

    A resumed run (``resume=<run>``) whose list and index are those its run recorded keeps the prompt the run
    recorded (its ``config_resolved.yaml``): the list is not read again, so a prompts file edited, moved or deleted
    since the run started, or a copy of the run folder on another machine, continues the run's own prompt.

    Raises:
        ConfigError: ``prompt_index`` without a list, a list without ``prompt_index``, or an index out of range.
    """
    from omegaconf import OmegaConf

    recorded = _recorded_prompt(cfg)
    if recorded is not None:
        cfg.prompt = recorded
        return
    chosen = prompt_list(cfg)
    index = OmegaConf.select(cfg, "prompt_index", default=None)
    if chosen is None:
        if index is not None:
            raise ConfigError("prompt_index", index, "is set but no prompt list is chosen",
                              "add prompts=<set> (conf/prompts/) or prompts_file=/path/prompts.txt, or drop prompt_index")
        return
    prompts, key, value = chosen
    n = len(prompts)
    if index is None:
        raise ConfigError(key, value, f"holds {n} prompts but prompt_index is not set",
                          f"run a multirun (rewardsds -m ... {key}={value}) for one job per prompt, or pick one with "
                          f"prompt_index=<0..{n - 1}>; a sweep over several sets needs prompt_index=range(0,N) on the "
                          "command line")
    if not 0 <= int(index) < n:
        raise ConfigError("prompt_index", index, f"is out of range for {key}={value} ({n} prompts)", f"use 0..{n - 1}")
    cfg.prompt = prompts[int(index)]


def _recorded_prompt(cfg: Any) -> Optional[str]:
    """The prompt the run that ``cfg`` resumes chose from the same prompt list and index, else None."""
    from omegaconf import OmegaConf

    from rewardsds.resume import resolve_resume, saved_config

    resume = OmegaConf.select(cfg, "resume", default=None)
    if not resume:
        return None
    try:
        _, run_dir = resolve_resume(str(resume))
    except ConfigError:
        return None  # the resume itself reports it
    saved = saved_config(run_dir) if run_dir is not None else None
    prompt = OmegaConf.select(saved, "prompt", default=None) if saved is not None else None
    if not isinstance(prompt, str) or not prompt:
        return None

    def chosen(c: Any) -> tuple:
        return (OmegaConf.select(c, "prompts.name", default=None), OmegaConf.select(c, "prompts_file", default=None),
                OmegaConf.select(c, "prompt_index", default=None))

    return prompt if chosen(saved) == chosen(cfg) and any(v is not None for v in chosen(cfg)) else None


def sweep_params(_root_: Any = None) -> dict[str, str]:
    """Resolver ``rewardsds_prompt_sweep`` (``hydra.sweeper.params``): one job per prompt of the chosen list.

    Returns ``{"prompt_index": "range(0,N)"}`` when a list is chosen, else ``{}``. Command-line sweeps of
    ``prompt_index`` replace it (the basic sweeper lets later overrides of a key win).
    """
    chosen = prompt_list(_root_) if _root_ is not None else None
    return {"prompt_index": f"range(0,{len(chosen[0])})"} if chosen else {}
