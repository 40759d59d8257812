"""Experiment configs and command lines shared by the ``pretrain`` and ``finetune`` runners.

Hydra composes each runner's structured configs (dataclasses stored in Hydra's ``ConfigStore``) with the experiment
YAML files of its ``conf/`` folder. :class:`ExperimentConfigs` adds what Hydra lacks: every key given on the command
line must exist in the schema, and an unknown one is an :class:`UnknownConfigKeyError` naming the valid keys at its
level. :func:`run_command` is the ``python -m <runner> experiment=<name> key=value ...`` entry point of both runners.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["UnknownConfigKeyError", "ExperimentConfigs", "register_shared_data_resolver", "run_command"]


class UnknownConfigKeyError(KeyError):
    """A command-line key that the schema does not have; the message names the valid keys at that level."""

    def __str__(self):
        return str(self.args[0])


def register_shared_data_resolver() -> None:
    """``${shared_data:ncedc154}`` -> ``<repository>/../shared/data/ncedc154`` (or ``$SEISBENCH_XLSTM_SHARED_DATA/...``)."""
    from seisbench_xlstm.data import shared_data_dir

    if not OmegaConf.has_resolver("shared_data"):
        OmegaConf.register_new_resolver("shared_data", lambda sub="": str(shared_data_dir() / sub))


@dataclass
class ExperimentConfigs:
    """One runner's experiments: its ``conf`` folder (``config.yaml`` + ``experiment/**.yaml``) and schema.

    :param conf_dir: the runner's Hydra config folder
    :param groups: config groups chosen on the command line (``experiment``, ``backbone``, ...)
    :param register: stores the runner's schema nodes in Hydra's ``ConfigStore`` (called before every compose)
    :param group_hints: text added to the error for an unknown key directly below a key path, e.g.
        ``{("backbone",): "Each backbone has its own keys: ..."}``
    :param free_form: key paths whose sub-keys are not checked here (checked by their consumer); command-line
        values below them are added or replaced (``++key=value``)
    """

    conf_dir: Path
    groups: tuple[str, ...]
    register: Callable[[], None]
    group_hints: Mapping[tuple[str, ...], str] = field(default_factory=dict)
    free_form: tuple[tuple[str, ...], ...] = ()

    def list_experiments(self) -> list[str]:
        """Names of the experiments (``experiment=<name>``)."""
        root = self.conf_dir / "experiment"
        return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))

    def _compose(self, overrides: list[str]) -> DictConfig:
        self.register()
        register_shared_data_resolver()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(self.conf_dir), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    def _is_free_form(self, key: str) -> bool:
        parts = tuple(key.split("."))
        return any(parts[: len(prefix)] == prefix and len(parts) > len(prefix) for prefix in self.free_form)

    def check_key(self, cfg: DictConfig, key: str) -> None:
        """Raises :class:`UnknownConfigKeyError` unless ``key`` (dotted) exists in the composed ``cfg``."""
        node: Any = cfg
        done: list[str] = []
        for part in key.split("."):
            if isinstance(node, DictConfig):
                if part not in node:
                    where = ".".join(done) or "the top level"
                    hint = self.group_hints.get(tuple(done), "")
                    raise UnknownConfigKeyError(
                        f"Unknown config key {key!r}: {part!r} is not an option of {where}. "
                        f"Valid keys there: {', '.join(str(k) for k in node.keys())}.{' ' + hint if hint else ''}"
                    )
                node = node._get_node(part)
            elif isinstance(node, ListConfig):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise UnknownConfigKeyError(
                        f"Unknown config key {key!r}: {'.'.join(done)} is a list of {len(node)} entries, not {part!r}."
                    )
                node = node._get_node(int(part))
            else:
                raise UnknownConfigKeyError(f"Unknown config key {key!r}: {'.'.join(done)} has no sub-keys.")
            done.append(part)

    def compose(self, overrides: list[str] | None = None) -> DictConfig:
        """The config from command-line style overrides (``experiment=<name>``, ``key=value``, ...), every key
        checked against the schema of the chosen groups first.

        :raises UnknownConfigKeyError: a key the schema lacks, or an attempt to add or delete keys
        :raises hydra.errors.ConfigCompositionException: bad values or unknown group options (Hydra's message lists
            the available options)
        """
        overrides = [f"++{o}" if self._is_free_form(o.split("=", 1)[0]) else o for o in (overrides or [])]
        parsed = OverridesParser.create().parse_overrides(overrides)
        schema = self._compose([o.input_line for o in parsed if o.key_or_group in self.groups])
        for o in parsed:
            key = o.key_or_group
            if key in self.groups or key.startswith("hydra") or self._is_free_form(key):
                continue
            if o.is_add() or o.is_force_add() or o.is_delete():
                raise UnknownConfigKeyError(
                    f"{o.input_line!r}: adding or deleting keys is not supported; every key is part of the schema "
                    "(set existing keys with key=value)."
                )
            self.check_key(schema, key)
        return self._compose(overrides)


def _chain(err: BaseException) -> str:
    """The messages of an exception and its causes, once each."""
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).strip()
        if text and text not in parts:
            parts.append(text)
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def run_command(
    argv: list[str] | None,
    doc: str,
    example: str,
    list_experiments: Callable[[], list[str]],
    compose_config: Callable[[list[str]], DictConfig],
    run: Callable[[DictConfig], Any],
    config_errors: tuple[type[BaseException], ...],
    run_errors: Mapping[type[BaseException], int],
) -> int:
    """``python -m <runner> experiment=<name> [key=value ...] [--print-config]``; ``--help`` lists the experiments.

    Exit codes: 0 done; 2 a configuration error (``config_errors``, Hydra's and OmegaConf's, one line on stderr);
    for errors of the run, the code ``run_errors`` maps their type to (the message on stderr).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip())
        print("\nExperiments:\n  " + "\n  ".join(list_experiments()))
        print(f"\nExample: {example}")
        return 0
    print_config = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    try:
        cfg = compose_config(argv)
    except config_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as err:
        message = _chain(err)
        if "experiment/" in message:
            message += "\nAvailable experiments: " + ", ".join(list_experiments())
        print(f"error: {message}", file=sys.stderr)
        return 2
    if print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    try:
        run(cfg)
    except tuple(run_errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return next(code for kind, code in run_errors.items() if isinstance(err, kind))
    return 0
