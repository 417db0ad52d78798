"""What the ``hspace`` command modules share: list parsers, the runner argument group, checks and printing.

Imports nothing heavy (no torch, diffusers or Prefect), so that ``hspace --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hspace.errors import HSpaceError

if TYPE_CHECKING:
    from flows.runner import RunnerChoice

T = TypeVar("T")


def _items(text: str, parse: Callable[[str], T], what: str) -> list[T]:
    try:
        values = [parse(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}")
    return values


def ints(text: str) -> list[int]:
    """Comma-separated integers: ``2,5,10`` (sample ids, step indices, counts)."""
    return _items(text, int, "integers")


def floats(text: str) -> list[float]:
    """Comma-separated numbers: ``1,2.5``."""
    return _items(text, float, "numbers")


def names(text: str) -> list[str]:
    """Comma-separated names: ``smile,hat``."""
    return _items(text, str.strip, "names")


def eta(text: str) -> float | list[float]:
    """``1.0`` for every step, or one value per step: ``0,0.5,1``."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"eta must be a number or comma-separated numbers; got {text!r}") from None
    return values[0] if len(values) == 1 else values


def add_runner_arguments(parser: argparse.ArgumentParser, what: str = "the tasks") -> None:
    """``--workers N | --dask-address URL | --threads N`` (where ``what`` runs) and ``--no-progress``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=_workers,
        nargs="?",
        const="all",
        metavar="N",
        help=f"run {what} on a local Dask cluster of N worker processes; with --device cuda one per GPU, each "
        "pinned to its own (N alone: every visible GPU)",
    )
    where.add_argument("--dask-address", help=f"run {what} on an existing Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--threads", type=int, default=1, help=f"threads of the default (in-process) runner of {what}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _workers(text: str) -> int | str:
    """``--workers``: a number, or ``all`` (also what ``--workers`` alone gives): one per visible GPU."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of workers or nothing (one per GPU); got {text!r}"
        ) from None


def add_precision_argument(parser: argparse.ArgumentParser, default: str | None = "fp32", note: str = "") -> None:
    """``--precision fp32|bf16|fp16``: the dtype the U-Net runs in (``hspace.models.PRECISIONS``)."""
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default=default,
        help="the U-Net's dtype: fp32 (TF32 on CUDA), bf16 or fp16; the scheduler stays float32 " + note,
    )


def add_conditioning_arguments(
    parser: argparse.ArgumentParser, *, prompt_list: bool = False, edit_branch: bool = False, default: str | None = None
) -> None:
    """``--prompt``, ``--negative-prompt``, ``--guidance`` (text-conditional models only; an error for others),
    ``--prompts FILE`` (one prompt per line, one per sample) and ``--edit-branch`` where they apply. ``default``
    names where unset ones come from ("the corpus's"); else the defaults are diffusers' (empty prompts, 7.5)."""
    group = parser.add_argument_group("text-conditional models (Stable Diffusion pipelines; an error for others)")
    group.add_argument("--prompt", help=f"the prompt of every sample (default: {default or 'the empty prompt'})")
    if prompt_list:
        group.add_argument(
            "--prompts", type=Path, metavar="FILE", help="a text file with one prompt per line, one per sample"
        )
    group.add_argument(
        "--negative-prompt", help=f"the prompt of the unconditional pass (default: {default or 'the empty prompt'})"
    )
    group.add_argument(
        "--guidance", type=float, help=f"classifier-free guidance scale w >= 1, 1 = none (default: {default or 7.5})"
    )
    if edit_branch:
        group.add_argument(
            "--edit-branch",
            choices=("both", "cond"),
            help="add the edit to h in both guidance passes (default) or in the conditional one only",
        )


def conditioning_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`add_conditioning_arguments`'s options that were given (a prompt file read
    into a list)."""
    values = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "guidance": args.guidance,
        "edit_branch": getattr(args, "edit_branch", None),
    }
    if getattr(args, "prompts", None) is not None:
        try:
            values["prompts"] = args.prompts.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise HSpaceError(f"cannot read the prompt list {args.prompts}: {error}") from None
    return {key: value for key, value in values.items() if value is not None}


def add_microbatch_argument(parser: argparse.ArgumentParser) -> None:
    """``--microbatch N``: samples per U-Net pass, a corpus setting (a resumed build uses the same)."""
    parser.add_argument(
        "--microbatch",
        type=int,
        help="samples per U-Net pass (a corpus setting). Default: 1 on the CPU, where a sample is then bitwise "
        "the same in any batch (32 is about 3x faster there); the whole shard on a GPU",
    )


def add_evaluation_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--<prefix>batch`` and ``--<prefix>block``: how an evaluation is cut into U-Net passes and tasks."""
    parser.add_argument(
        f"--{prefix}batch",
        type=int,
        default=8,
        help="evaluation samples per U-Net pass, each with all its edits (the passes decide the bits)",
    )
    parser.add_argument(
        f"--{prefix}block",
        type=int,
        default=32,
        help="evaluation samples per task, in whole passes (any block gives the same result)",
    )


def runner_choice(args: argparse.Namespace) -> RunnerChoice:
    """The :class:`flows.runner.RunnerChoice` of the arguments of :func:`add_runner_arguments` (checked)."""
    from flows.runner import RunnerChoice

    return RunnerChoice(threads=args.threads, workers=args.workers, dask_address=args.dask_address)


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse (one line, exit 1) any of the integer options ``names`` that is not positive."""
    for name in names:
        if getattr(args, name) <= 0:
            raise HSpaceError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")


def print_info(info: dict[str, Any], as_json: bool, *, skip: tuple[str, ...] = ()) -> None:
    """``info`` as one JSON object, or as aligned ``key  value`` lines with long lists shortened."""
    if as_json:
        print(json.dumps(info))
        return
    width = max(map(len, info))
    for key, value in info.items():
        if key in skip:
            continue
        if isinstance(value, list) and len(value) > 12:
            value = f"{value[:6]} ... {value[-3:]} ({len(value)} values)"
        print(f"{key:<{width}}  {value}")


def progress_printer(tag: str) -> Callable[[str], None]:
    """A ``progress`` callback that prints ``[tag] message`` to stderr at once."""

    def say(message: str) -> None:
        print(f"[{tag}] {message}", file=sys.stderr, flush=True)

    return say


def png_out(path: str) -> Path:
    """A ``.png`` path to write, in a folder that exists (refused otherwise, before any work)."""
    from hspace.errors import HSpaceError

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise HSpaceError(f"--out/--plot must name a .png file; got {path}")
    if not out.parent.is_dir():
        raise HSpaceError(f"the folder {out.parent} does not exist: create it first")
    return out


def save_png(picture: Any, out: Path) -> None:
    """Write a PIL picture to ``out`` atomically (never a half-written PNG under the final name)."""
    from hspace.files import atomic_write

    atomic_write(out, lambda staging: picture.save(staging, format="PNG"))
