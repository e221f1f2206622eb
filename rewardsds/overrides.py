"""The command line checked before a run starts: what Hydra would refuse, as one message naming the key, the value
and the fix.

Hydra reports a bad override (an unknown key, a value of the wrong type, a config option that does not exist, a
word that is not ``key=value``) with its own text and exit code 1, after its run folder exists, and errors the
project's resolvers raise while a sweep starts as a traceback. :func:`check` composes the config the command asks for
(a sweep: jobs that show every value it lists) exactly as Hydra will, with Hydra's compose API, resolves it, and turns
what fails into a :class:`CommandLineError` with a suggestion, before any folder is made. Whatever it does not
recognise it leaves to Hydra.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from typing import Any, Optional, Sequence

#: Hydra config groups that come from a package extra: ``hydra/<group>/<option>`` -> the extra that installs it.
EXTRA_OF_OPTION = {"hydra/sweeper/optuna": "search", "hydra/launcher/submitit_slurm": "slurm", "hydra/launcher/submitit_local": "slurm"}
#: Environment variable with the keys the running sweep varies, for the job folder names (read in each job's process).
SWEPT_KEYS_ENV = "REWARDSDS_SWEPT_KEYS"
#: Command-line flags that take no value; any other flag leaves the command to Hydra unchecked.
PLAIN_FLAGS = ("-m", "--multirun")


class CommandLineError(Exception):
    """An override Hydra would refuse, said as ``key = value: what is wrong. Fix: ...``."""

    def __init__(self, key: str, value: Any, problem: str, fix: str):
        self.key, self.value, self.problem, self.fix = key, value, problem, fix
        super().__init__(f"{key} = {value!r}: {problem}. Fix: {fix}")

    @classmethod
    def said(cls, message: str) -> "CommandLineError":
        """One already worded as ``key = value: problem. Fix: ...`` (a :class:`~rewardsds.errors.ConfigError`'s)."""
        err = cls.__new__(cls)
        Exception.__init__(err, message)
        err.key = err.value = err.problem = err.fix = None
        return err


def check(args: Sequence[str], config_package: str, subcommands: Sequence[str] = ()) -> list[str]:
    """Compose and resolve the command's config as Hydra will (for a sweep, :func:`sample_jobs`, with the sweeper's
    own params), then validate each composition as the run will; raise :class:`CommandLineError` for what Hydra or
    the project's checks would refuse.

    Args:
        args: the command line after the program name (Hydra overrides and flags).
        config_package: the package holding the Hydra configs.
        subcommands: the command's bare-word subcommands (suggested for a mistyped first word).

    Returns:
        The keys the sweep varies, on the command line and in ``hydra.sweeper.params`` (empty for a single run).
    """
    swept = swept_keys(args)
    if any(a.startswith("-") and a not in PLAIN_FLAGS for a in args):
        return swept  # flags with values (--config-name, --cfg job, ...): Hydra's own handling
    words = [a for a in args if a not in PLAIN_FLAGS]
    multirun = len(words) < len(args)
    jobs = sample_jobs(words, subcommands, multirun=multirun)
    if not jobs:
        return swept
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException

    import rewardsds.config  # noqa: F401  (registers the schemas the configs extend)

    composed: list = []
    swept_by_config = not multirun  # a sweep's own params (hydra.sweeper.params: prompts=<set>) are read once
    i = 0
    while i < len(jobs):  # first what Hydra refuses, in any job
        overrides = jobs[i]
        try:
            with initialize_config_module(config_package, version_base="1.3"):
                cfg = compose("config", overrides=overrides, return_hydra_config=True)
            _resolve_each(cfg)
        except MissingConfigException as err:
            raise _missing_option(err, overrides) from None
        except ConfigCompositionException as err:
            found = _bad_value(err, overrides, config_package)
            if found is not None:
                raise found from None
            return swept  # left to Hydra
        if not swept_by_config:
            swept_by_config = True
            extra = _sweeper_params(cfg, words)
            swept += [k for k in swept_keys(["-m", *extra]) if k not in swept]
            # the jobs Hydra's sweeper will make: the command line's values times the config's (unless those cannot
            # be listed, as an Optuna interval: then the command line's jobs)
            more = sample_jobs(words + extra, subcommands, multirun=True, ends_only=[e.split("=", 1)[0] for e in extra]) if extra else []
            if more:
                jobs = more
                continue
        composed.append((overrides, cfg))
        i += 1
    variants_checked: set = set()
    for overrides, cfg in composed:  # then what the run would refuse at its start
        try:
            _validate(cfg, overrides, config_package, variants_checked)
        except CommandLineError as err:
            if len(composed) > 1:  # say which job, since the others may be fine
                raise CommandLineError.said(f"{err} (the sweep's job {' '.join(overrides)}: a sweep starts when every "
                                            "job it lists is valid; drop the value that makes this one invalid, or run "
                                            "the valid combinations as separate sweeps)") from None
            raise
    return swept


#: how OmegaConf words an error a resolver raised (the project's resolvers raise ConfigError: prompt sets, GPU counts)
_RESOLVER_ERROR = "ConfigError raised while resolving interpolation: "


def _resolve_each(cfg) -> None:
    """Resolve every interpolation of ``cfg`` one by one (Hydra resolves them when the sweep or the job starts); raise
    the project's own check (a ConfigError inside a resolver: a missing prompts file, no GPU for the gpus launcher)
    as a :class:`CommandLineError`, and leave other failures (``${hydra:...}`` outside a Hydra run) alone."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    def walk(node) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for k in keys:
            child = node._get_node(k)
            if isinstance(child, (DictConfig, ListConfig)) and not child._is_interpolation():
                walk(child)
            elif OmegaConf.is_interpolation(node, k):
                try:
                    node[k]
                except OmegaConfBaseException as err:
                    first = str(err).splitlines()[0] if str(err) else ""
                    if first.startswith(_RESOLVER_ERROR):
                        raise CommandLineError.said(first[len(_RESOLVER_ERROR):]) from None

    walk(cfg)


def _sweeper_params(cfg, words: Sequence[str]) -> list[str]:
    """``key=sweep`` for each ``hydra.sweeper.params`` entry the command line does not set (a prompt set's
    ``prompt_index=range(0,N)``, or a sweep written in a config file)."""
    from omegaconf import DictConfig, OmegaConf

    try:
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)  # a resolver's plain dict, or a node
        params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
    except Exception:
        return []
    if not isinstance(params, dict):
        return []
    given = {w.split("=", 1)[0].lstrip("+~") for w in words}
    return [f"{k}={v}" for k, v in (params or {}).items() if str(k).lstrip("+~") not in given]


def _validate(cfg, overrides: Sequence[str], config_package: str, variants_checked: set) -> None:
    """The project's own checks (:func:`rewardsds.config.validate`; for a compare run, the overrides its variants
    replace and each variant's composition, once per command line apart from the seed), raised as a
    :class:`CommandLineError`: the run would fail on them at its start, after its folder exists. A resume is checked
    for what refuses it before the run's own config is read (:func:`rewardsds.resume.check_resume`: no such run, not
    a run folder, no checkpoint, a live writer), its config when the run reads it; what fails here for another reason
    is left to the run, which records it."""
    from omegaconf import OmegaConf

    from rewardsds.devices import check_accelerator
    from rewardsds.errors import ConfigError
    from rewardsds.resume import check_resume

    resume = OmegaConf.select(cfg, "resume", default=None)
    try:
        # what the run's device needs, and for a resume the run it continues: refused here, before Hydra makes or
        # touches a folder (the run checks them again with the same functions, for runs started from Python)
        check_accelerator(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
        if resume:
            check_resume(str(resume), OmegaConf.select(cfg, "compare.runs", default=None))
            return  # the rest of a resume's config is the run's own, rebuilt and checked when it starts
        from rewardsds.config import check_input_files, validate

        runs = OmegaConf.select(cfg, "compare.runs", default=None)
        if not runs:
            check_input_files(validate(cfg))
            return
        variants = {str(k): str(v).split() for k, v in runs.items()}
        base = compare_base(overrides)
        check_variant_overrides(base, variants)
    except ConfigError as err:
        raise CommandLineError.said(str(err)) from None
    except Exception:
        return
    for label, variant in variants.items():
        key = (tuple(base), label, tuple(variant))
        if key in variants_checked:
            continue
        variants_checked.add(key)
        _validate_variant(label, variant, variant_overrides(base, variant, int(cfg.seed)), config_package)


def _validate_variant(label: str, variant: Sequence[str], overrides: list[str], config_package: str) -> None:
    """Compose and validate one compare variant as its sub-run will; a problem names the variant."""
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException

    from rewardsds.config import validate
    from rewardsds.errors import ConfigError

    where = f" (in the compare variant {label}: compare.runs.{label}=\"{' '.join(variant)}\")"
    try:
        with initialize_config_module(config_package, version_base="1.3"):
            validate(compose("config", overrides=overrides, return_hydra_config=True))
    except MissingConfigException as err:
        raise CommandLineError.said(f"{_missing_option(err, overrides)}{where}") from None
    except ConfigCompositionException as err:
        found = _bad_value(err, overrides, config_package)
        problem = str(found) if found is not None else (f"compare.runs.{label} = {' '.join(variant)!r}: "
                                                        f"{str(err).splitlines()[0]}. Fix: check the variant's overrides")
        raise CommandLineError.said(f"{problem}{where}") from None
    except ConfigError as err:
        raise CommandLineError.said(f"{err}{where}") from None
    except Exception:
        return


#: most compositions :func:`sample_jobs` asks for (each takes about 0.1 s)
MAX_CHECKED_JOBS = 32


def sample_jobs(words: Sequence[str], subcommands: Sequence[str] = (), multirun: bool = True,
                ends_only: Sequence[str] = ()) -> list[list[str]]:
    """Jobs whose composition shows every value of the command line: the first job (each swept key at its first
    value), then each further value of a swept key with the others at their first (at most
    :data:`MAX_CHECKED_JOBS`); every job when there are at most that many. Past that, keys in ``ends_only`` show
    their first and last values only (a prompt set's ``prompt_index=range(0,N)``: the jobs between differ only in
    the prompt). Empty when a sweep cannot be listed (an Optuna interval). Raises :class:`CommandLineError` for a
    word that is not an override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    choices: list[list[str]] = []
    for i, word in enumerate(words):
        try:
            (ov,) = parser.parse_overrides([word])
        except OverrideParseException:
            raise _not_an_override(word, i, words, subcommands) from None
        if not ov.is_sweep_override():
            choices.append([word])
            continue
        if not multirun:
            key, value = word.split("=", 1)
            raise CommandLineError(key, value, "is a sweep (a comma list or a sweep function), and this is a single run",
                                   f"add -m to run one job per value, or quote the value as one string: \"{key}='{value}'\"")
        try:
            values = list(ov.sweep_string_iterator())
        except Exception:
            return []
        if not values:
            return []
        choices.append([f"{ov.get_key_element()}={v}" for v in values])
    if math.prod(len(c) for c in choices) <= MAX_CHECKED_JOBS:  # every job: a refusal does not depend on value order
        return [list(job) for job in itertools.product(*choices)]
    choices = [c[:1] + c[-1:] if override_key(c[0]) in ends_only and len(c) > 2 else c for c in choices]
    first = [c[0] for c in choices]
    jobs = [first]
    for i, options in enumerate(choices):
        for other in options[1:]:
            if len(jobs) < MAX_CHECKED_JOBS:
                jobs.append(first[:i] + [other] + first[i + 1:])
    return jobs


def swept_keys(args: Sequence[str]) -> list[str]:
    """The keys a multirun command line sweeps (a comma list or a sweep function), in order; empty for a single run."""
    if not any(a in PLAIN_FLAGS for a in args):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = []
    for word in args:
        if word.startswith("-"):
            continue
        try:
            (ov,) = parser.parse_overrides([word])
        except Exception:
            continue
        if ov.is_sweep_override():
            keys.append(ov.get_key_element().lstrip("+~"))
    return keys


def _not_an_override(word: str, i: int, words: Sequence[str], subcommands: Sequence[str]) -> CommandLineError:
    if "=" not in word:
        close = difflib.get_close_matches(word, list(subcommands), n=1) if i == 0 else []
        if close:
            return CommandLineError("command", word, "is not a subcommand or a key=value override", f"did you mean "
                                    f"rewardsds {close[0]} ...? (subcommands: {', '.join(subcommands)})")
        if i > 0 and "=" in words[i - 1]:
            # the shell split `prompt=a big red disk` into `prompt=a` `big` `red` `disk`: the value is every bare word
            # up to the next override (or the end)
            key, first = words[i - 1].split("=", 1)
            rest = list(itertools.takewhile(lambda w: "=" not in w, words[i:]))
            value = " ".join([first, *rest])
            quoted = f"'{value}'" if '"' in value else f'"{value}"'
            return CommandLineError(key, value, "the shell split the value at a space", f"quote the whole value: {key}={quoted}")
        return CommandLineError("override", word, "is not key=value", "write it as key=value (rewardsds --help lists the keys)")
    key, value = word.split("=", 1)
    quoted = f'"{key}=\\"{value}\\""' if "'" in value else f'"{key}=\'{value}\'"'
    return CommandLineError(key, value, "is not a value Hydra's override grammar reads (quotes, brackets, commas and some "
                            "other characters are grammar)", f"quote the value for Hydra inside the shell's quotes: {quoted}")


def _missing_option(err, overrides: Sequence[str]) -> CommandLineError:
    """A config group option that does not exist (``strategy=minmax``) or comes from an extra not installed."""
    missing = str(getattr(err, "missing_cfg_file", "") or "")
    group, _, option = missing.rpartition("/")
    key = next((o.split("=", 1)[0] for o in reversed(overrides) if o.lstrip("+~").split("=", 1)[0] in (group, f"{group}@_global_")), group)
    extra = EXTRA_OF_OPTION.get(missing)
    if extra is not None:
        return CommandLineError(key, option, f"comes with the package's {extra!r} extra, which is not installed",
                                f'pip install "rewardsds[{extra}]"')
    options = [str(o) for o in (getattr(err, "options", None) or [])]
    if not group or not options:
        return CommandLineError(key or "config", option or missing, str(err).splitlines()[0], "check the spelling")
    close = difflib.get_close_matches(option, options, n=1)
    fix = f"did you mean {key}={close[0]}?" if close else f"choose one of {', '.join(options)}"
    return CommandLineError(key, option, f"is not an option of {group} (options: {', '.join(options)})", fix)


def _bad_value(err, overrides: Sequence[str], config_package: str) -> Optional[CommandLineError]:
    """An unknown key or a value of the wrong type (Hydra's ConfigCompositionException, caused by OmegaConf)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = err.__cause__
    if cause is None:
        return _key_the_option_lacks(err, overrides, config_package)
    full_key = _full_key(cause)
    if full_key is None:
        return None
    base = full_key.split("[", 1)[0]
    value = next((o.split("=", 1)[1] for o in reversed(overrides) if o.lstrip("+~").split("=", 1)[0] == base), None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        parent, _, name = base.rpartition(".")
        from rewardsds.config import key_elsewhere_fix

        rest = _without(overrides, base)
        known = _keys_at(parent, rest, config_package)
        close = difflib.get_close_matches(name, known, n=1)
        where = parent or "the root config"
        fix = (f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close
               else key_elsewhere_fix(base, value, _composed(rest, config_package, lenient=True))
               or (f"remove it; the keys of {where} are: {', '.join(known)}" if known else "remove it"))
        return CommandLineError(base, value, f"is not a key of {where}", fix + " (rewardsds --cfg job shows every key)")
    if isinstance(cause, ValidationError):
        problem = str(cause).splitlines()[0]
        node = _node_at(base, _without(overrides, base), config_package)
        if node is not None and hasattr(node, "keys"):  # a group of settings given one plain value
            fields = list(node.keys())
            return CommandLineError(base, value, f"is a group of settings ({', '.join(fields)}), not one value",
                                    f"set one of them, e.g. {base}.{fields[0]}={value}")
        if "expected one of [" in problem:
            options = [o.strip() for o in problem.split("expected one of [", 1)[1].rstrip("]").split(",")]
            bad = problem.split("'")[1] if problem.count("'") >= 2 else value
            close = difflib.get_close_matches(str(bad), options, n=1)
            return CommandLineError(full_key, bad, f"is not one of {', '.join(options)}",
                                    f"did you mean {close[0]}?" if close else f"choose one of {', '.join(options)}")
        kind = _expected_type(problem)
        return CommandLineError(full_key, value, problem.rstrip("."), f"give {kind}" if kind else "give a value of the key's type "
                                "(rewardsds --cfg job shows every key with its current value)")
    return None


def composition_error(err: Exception, overrides: Sequence[str], config_package: str) -> Optional[CommandLineError]:
    """What Hydra's compose refused (an option that does not exist, an unknown key, a value of the wrong type, a key
    an experiment sets that the chosen option lacks) as one :class:`CommandLineError`, None when not recognised.
    Usable inside a running Hydra app (a resume composes its run's config there)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if isinstance(err, MissingConfigException):
        return _missing_option(err, overrides)
    if isinstance(err, ConfigCompositionException):
        return _bad_value(err, overrides, config_package)
    return None


def _hydra_context(config_package: str):
    """Hydra's compose API for ``config_package``: the running app's (same configs) when one is initialised."""
    import contextlib

    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return contextlib.nullcontext()
    return initialize_config_module(config_package, version_base="1.3")


#: how Hydra words a key that a config file sets on a group option whose schema lacks it (it keeps no cause)
_KEY_NOT_IN_OPTION = re.compile(r"In '(?P<file>[^']+)': ConfigKeyError raised while composing config:\s*"
                                r"Key '(?P<name>[^']+)' not in '(?P<schema>[^']+)'\s*full_key: (?P<key>\S+)")


def _key_the_option_lacks(err, overrides: Sequence[str], config_package: str) -> Optional[CommandLineError]:
    """A config file (an experiment) sets a key of a group whose chosen option's schema does not have it:
    ``experiment=analytic reward=clip``, where the experiment sets ``reward.preferred`` for ``reward=analytic``.

    The message names the group option the user chose, the file that sets the key, the option that file is built
    for, and the options of the file's group that take the user's choice."""
    found = _KEY_NOT_IN_OPTION.search(str(err))
    if found is None:
        return None
    file, full_key, schema = found["file"], found["key"], found["schema"]
    group = full_key.split(".", 1)[0]
    file_group, _, file_option = file.rpartition("/")
    setter = f"{file_group}={file_option}" if file_group else f"the config {file!r}"
    chosen = next((o for o in reversed(overrides) if override_key(o).split("@", 1)[0] == group), None)
    if chosen is None:  # the option comes from a default: the file itself is what does not fit
        return CommandLineError(file_group or file, file_option or file, f"sets {full_key}, which the {group} option "
                                f"({schema}) does not have", f"choose the {group} option {setter} is built for")
    choice = chosen.split("=", 1)[1]
    own = _choice_of(group, _without(overrides, override_key(chosen)), config_package)
    fix = f"use {group}={own} with {setter}" if own else f"drop {chosen}"
    if file_group:
        takers = [o for o in _options_of(file_group, config_package) if o != file_option
                  and _composed([f"{file_group}={o}", f"{group}={choice}"], config_package) is not None]
        takers.sort(key=lambda o: _choice_of(group, [f"{file_group}={o}"], config_package) != choice)  # built for it first
        if takers:
            listed = ", ".join(f"{file_group}={o}" for o in takers[:4]) + (", ..." if len(takers) > 4 else "")
            fix += f", or another {file_group} that takes {group}={choice} ({listed})"
        else:
            fix += f" (no {file_group} option takes {group}={choice})"
    return CommandLineError(override_key(chosen), choice, f"{setter} sets {full_key}, which {group}={choice} ({schema}) "
                            "does not have", fix)


def _choice_of(group: str, overrides: Sequence[str], config_package: str) -> Optional[str]:
    """The option of ``group`` that ``overrides`` compose with (None when they do not compose)."""
    from omegaconf import OmegaConf

    cfg = _composed(overrides, config_package)
    choice = None if cfg is None else OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
    return None if choice is None else str(choice)


def _options_of(group: str, config_package: str) -> list[str]:
    """The options of a config group (its YAML files), sorted."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    with _hydra_context(config_package):
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options(group, results_filter=ObjectType.CONFIG))


def _full_key(cause) -> Optional[str]:
    key = getattr(cause, "full_key", None)
    if key:
        return str(key)
    for line in str(cause).splitlines():
        if line.strip().startswith("full_key:"):
            return line.split(":", 1)[1].strip() or None
    return None


def _expected_type(problem: str) -> Optional[str]:
    for word, kind in (("Integer", "a whole number, e.g. 8"), ("Float", "a number, e.g. 0.5"), ("valid bool", "true or false")):
        if word in problem:
            return kind
    return None


def _composed(overrides: Sequence[str], config_package: str, lenient: bool = False):
    """The config composed from ``overrides``, or None when they do not compose together.

    ``lenient``: then the config of the ones that do, for looking up what a message names: each override in the
    command's order joins those before it if they still compose, so one bad value cannot hide the node or the keys
    that another one's message names."""
    from hydra import compose

    def attempt(chosen: list[str]):
        try:
            with _hydra_context(config_package):
                return compose("config", overrides=chosen, return_hydra_config=True)
        except Exception:
            return None

    cfg = attempt(list(overrides))
    if cfg is not None or not lenient:
        return cfg
    kept: list[str] = []
    for o in overrides:
        if (trial := attempt(kept + [o])) is not None:
            kept, cfg = kept + [o], trial
    return cfg if cfg is not None else attempt([])


def _without(overrides: Sequence[str], key: str) -> list[str]:
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]


def _node_at(key: str, overrides: Sequence[str], config_package: str):
    from omegaconf import OmegaConf

    cfg = _composed(overrides, config_package, lenient=True)
    return None if cfg is None else OmegaConf.select(cfg, key, default=None)


def _keys_at(parent: str, overrides: Sequence[str], config_package: str) -> list[str]:
    from omegaconf import OmegaConf

    cfg = _composed(overrides, config_package, lenient=True)
    if cfg is None:
        return []
    node = cfg if not parent else OmegaConf.select(cfg, parent, default=None)
    keys = [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []
    return [k for k in keys if k != "hydra"] if not parent else keys


# ----------------------------------------------------------------------------------------- compare runs' variants
def override_key(override: str) -> str:
    """The key an override sets: ``strategy`` for ``strategy=none``, ``n_noises`` for ``+n_noises=2``."""
    return override.split("=", 1)[0].lstrip("+~")


def _value_of(override: str) -> Any:
    """The value an override gives, typed as Hydra reads it (``n_noises=2`` -> 2), None for a deletion (``~key``)."""
    if "=" not in override:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).value()
    except Exception:
        return override.split("=", 1)[1]


def compare_base(overrides: Sequence[str]) -> list[str]:
    """The command line's overrides that every variant of a compare run shares (not its variants, seeds or Hydra's)."""
    return [o for o in overrides if not o.startswith(("compare.", "seed=", "hydra."))]


def variant_overrides(base: list[str], variant: list[str], seed: int) -> list[str]:
    """The overrides that compose one variant of a compare run alone (its sub-run records them, so its job command and
    its resume run that variant, not the whole comparison)."""
    return base + variant + [f"seed={seed}", "compare.runs={}", "compare.seeds=[]"]


def check_variant_overrides(base: list[str], variants: dict[str, list[str]]) -> None:
    """Raise ConfigError where a command-line override sets a key that a compare variant also sets.

    Each variant's overrides come after the command line's, so the variant's value would win and the user's
    setting would be dropped without a word (``experiment=demo n_noises=2`` would still run N = 1 and N = 8).
    """
    from rewardsds.errors import ConfigError

    for override in base:
        key = override_key(override)
        for label, variant in variants.items():
            clash = next((o for o in variant if override_key(o) == key), None)
            if clash is None:
                continue
            edited = " ".join(override.lstrip("+~") if override_key(o) == key else o for o in variant)
            raise ConfigError(
                key, _value_of(override),
                f"is set on the command line and by the compare variant {label} ({clash}), whose value would replace it",
                f"drop {override} from the command line; to change the variant, set compare.runs.{label}=\"{edited}\"; "
                "or run one configuration without variants (compare.runs={})",
            )
