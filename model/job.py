"""The built-in job as the front door sees it (see :class:`runner.adapter.JobAdapter`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .__main__ import add_job_arguments, job_argv, job_command, job_identity

__all__ = ["BUILTIN", "BuiltinJob"]


class BuiltinJob:
    """The seed's MNIST CNN, ``python -m model``."""

    #: The fork server imports the training module, and with it Paddle, once.
    preload: tuple[str, ...] = ("model.train",)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_job_arguments(p)

    def argv(self, ns: argparse.Namespace, *, reference: bool = False) -> list[str]:
        if reference:
            ns = argparse.Namespace(**{**vars(ns), "break_resume": None})
        return job_argv(ns)

    def command(self, run_dir: Path, argv: Sequence[str]) -> tuple[str, ...]:
        return job_command(run_dir, argv)

    def env(self, ns: argparse.Namespace) -> dict[str, str]:
        return {}  # its options travel on its command line

    def identity(self, ns: argparse.Namespace) -> dict[str, Any]:
        return job_identity(ns, getattr(ns, "nproc_per_node", 1))

    def cache_key(self, ns: argparse.Namespace) -> str:
        from .data import cache_key

        return cache_key(ns.data)

    def prepared(self, ref_dir: Path) -> Sequence[Path]:
        from .data import CACHE

        return [ref_dir / CACHE]  # the data, prepared once by the reference

    def total_steps(self, ref_dir: Path, ns: argparse.Namespace) -> tuple[int, int]:
        import numpy as np

        from .config import TrainConfig, steps_per_epoch
        from .data import CACHE

        with np.load(ref_dir / CACHE, allow_pickle=False) as z:
            n = len(z["train_y"])
        per = steps_per_epoch(n, TrainConfig.batch_size)
        return per, per * ns.epochs


BUILTIN = BuiltinJob()
