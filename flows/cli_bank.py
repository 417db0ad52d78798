"""``hspace bank list|show|export|publish|edit|verify``: inspect, copy, publish and use direction banks (hspace.bank).

No Prefect: a bank is safetensors + JSON files, read and written by :mod:`hspace.bank`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``bank`` and its sub-commands to the top-level ``hspace`` commands."""
    bank = commands.add_parser("bank", help="list, show, export, publish and verify direction banks")
    sub = bank.add_subparsers(dest="bank_command", required=True)

    listing = sub.add_parser("list", help="the versions of a bank, the latest marked")
    listing.add_argument("url", help="bank location: a path or an fsspec URL")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="the directions of one version: method, norms, evaluation")
    show.add_argument("url")
    show.add_argument("--version", default="latest")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    add_verdict_arguments(show)
    show.set_defaults(func=_show)

    export = sub.add_parser("export", help="copy one version out: FILE.safetensors (+ FILE.json) or a new bank")
    export.add_argument("url")
    export.add_argument("--version", default="latest")
    export.add_argument(
        "--out",
        required=True,
        help="a .safetensors file (all directions, the manifest beside it as .json) or a bank folder",
    )
    export.set_defaults(func=_export)

    publish = sub.add_parser("publish", help="publish named tensors with their metadata as a new version")
    publish.add_argument("url")
    publish.add_argument(
        "--from", dest="tensors", required=True, help="safetensors file: one (T, C, H, W) tensor per direction name"
    )
    publish.add_argument(
        "--meta",
        required=True,
        help="JSON: model_fingerprint, sampler {eta, timesteps, precision}, notes, directions {name: {method, "
        "parameters, source, evaluation}} (an exported manifest works too)",
    )
    publish.add_argument("--version", default=None, help="version name (default: the next vNNNN)")
    publish.add_argument("--json", action="store_true", help="print one JSON object")
    publish.set_defaults(func=_publish)

    add_edit_command(sub)

    verify = sub.add_parser("verify", help="check every checksum of a version (or of all versions)")
    verify.add_argument("url")
    which = verify.add_mutually_exclusive_group()
    which.add_argument("--version", default="latest")
    which.add_argument("--all", action="store_true", help="every published version")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=_verify)


def _list(args: argparse.Namespace) -> None:
    from hspace.bank import latest_version, list_versions, load_bank
    from hspace.errors import HSpaceError

    try:
        latest, pointer_error = latest_version(args.url), None
    except HSpaceError as error:  # list is where a damaged bank is diagnosed: show the versions anyway
        latest, pointer_error = None, str(error)
    rows = []
    for version in list_versions(args.url):
        row: dict[str, Any] = {"version": version, "latest": version == latest}
        try:
            bank = load_bank(args.url, version)
            row.update(created=bank.created, directions=list(bank.names), model_fingerprint=bank.fingerprint)
        except HSpaceError as error:
            row["damaged"] = str(error)
        rows.append(row)
    if not rows:
        raise HSpaceError(f"no direction bank at {args.url}: publish one with `hspace bank publish`")
    if args.json:
        print(
            json.dumps(
                {
                    "url": args.url,
                    "latest": latest,
                    "versions": rows,
                    **({"latest_damaged": pointer_error} if pointer_error else {}),
                }
            )
        )
        return
    if pointer_error:
        print(f"latest pointer DAMAGED: {pointer_error}")
    width = max(len(row["version"]) for row in rows)
    for row in rows:
        if "damaged" in row:
            print(f"{row['version']:<{width}}  DAMAGED: {row['damaged']}")
            continue
        mark = "  (latest)" if row["latest"] else ""
        count = len(row["directions"])
        print(
            f"{row['version']:<{width}}  {row['created']}  {count} direction{'s' * (count != 1)}  model "
            f"{row['model_fingerprint'][:12]}{mark}"
        )


def _show(args: argparse.Namespace) -> None:
    from hspace.bank import load_bank
    from hspace.verdicts import verdicts

    bank = load_bank(args.url, args.version)
    info = bank.info()
    judged = verdicts(bank, verdict_thresholds(args))
    for name, record in info["directions"].items():
        record.update(_norms(bank.tensor(name)), verdict=judged[name])
    if args.json:
        print(json.dumps(info))
        return
    eta = info["sampler"]["eta"]
    print(
        f"bank {bank.url} version {bank.version} ({bank.created}), model {bank.fingerprint[:12]}, "
        f"T = {bank.steps}, h = {bank.h_shape}, eta = {eta[0] if len(set(eta)) == 1 else eta}, {bank.precision}"
    )
    if bank.notes:
        print(f"notes: {bank.notes}")
    width = max(map(len, bank.names))
    for name, record in info["directions"].items():
        print(
            f"{name:<{width}}  {record['method']:<12}  |v| {record['norm']:.4g}  |v_t| {record['step_norm_min']:.4g}"
            f"..{record['step_norm_max']:.4g}  source {record['source'] or '-'}  "
            f"evaluation {_summary(record['evaluation'])}"
        )
        print(f"{'':<{width}}  verdict: {record['verdict']['kind']}: {record['verdict']['text']}")


def _export(args: argparse.Namespace) -> None:
    from hspace.bank import load_bank

    bank = load_bank(args.url, args.version)
    for path in bank.export(args.out):
        print(path)


def _publish(args: argparse.Namespace) -> None:
    import fsspec
    import safetensors.torch

    from hspace.bank import parse_meta, publish
    from hspace.errors import HSpaceError

    try:
        with fsspec.open(args.tensors, "rb") as file:
            data = file.read()
        with fsspec.open(args.meta, "rb") as file:
            meta = json.loads(file.read())
    except FileNotFoundError as error:
        raise HSpaceError(f"cannot read {error.filename or error}: no such file") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise HSpaceError(f"--meta {args.meta} is not valid JSON: {error}") from None
    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own SafetensorError for any malformed file
        raise HSpaceError(f"--from {args.tensors} is not a safetensors file: {error}") from None
    version = publish(args.url, version=args.version, **parse_meta(meta, tensors))
    print(json.dumps({"url": args.url, "version": version}) if args.json else f"published {args.url} version {version}")


def _verify(args: argparse.Namespace) -> None:
    from hspace.bank import list_versions, load_bank
    from hspace.errors import HSpaceError

    versions = [args.version]
    if args.all:
        versions = list_versions(args.url)
        if not versions:
            raise HSpaceError(f"no direction bank at {args.url}: publish one with `hspace bank publish`")
        load_bank(args.url)  # the latest pointer too: what load_bank(url) will open
    checked = {}
    for version in versions:
        bank = load_bank(args.url, version)
        checked[bank.version] = bank.verify()
    if args.json:
        print(json.dumps({"url": args.url, "verified": checked}))
        return
    for version, names in checked.items():
        print(f"{version}: {len(names)} direction{'s' * (len(names) != 1)} verified")


def _norms(tensor: Any) -> dict[str, float]:
    """|v| over all steps, and the smallest and largest |v_t|."""
    from hspace.directions import per_step_norm

    per_step = per_step_norm(tensor.float())
    return {
        "norm": float(tensor.float().norm()),
        "step_norm_min": float(per_step.min()),
        "step_norm_max": float(per_step.max()),
    }


def _summary(evaluation: dict[str, Any], limit: int = 4) -> str:
    """The first few numbers of an evaluation dict, nested keys dotted: ``auc=0.91, effect.gamma_2=0.4``."""
    flat: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat.append((prefix, value))

    walk("", evaluation)
    if not flat:
        return "-"
    shown = ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in flat[:limit]
    )
    return shown + (f" (+{len(flat) - limit} more)" if len(flat) > limit else "")


def add_verdict_arguments(parser: argparse.ArgumentParser) -> None:
    """The thresholds of the directions' verdicts (``hspace.verdicts``), for ``bank show`` and ``serve``."""
    parser.add_argument(
        "--side-ratio", type=float, default=3.0, help="clean: own effect at least this times the largest other (3)"
    )
    parser.add_argument(
        "--random-ratio", type=float, default=2.0, help="weak below this times the random twin's effect (2)"
    )
    parser.add_argument("--min-effect", type=float, default=0.25, help="weak below this many stds of own effect")


def verdict_thresholds(args: argparse.Namespace) -> Any:
    from hspace.verdicts import Thresholds

    return Thresholds(side_ratio=args.side_ratio, random_ratio=args.random_ratio, min_effect=args.min_effect)


def add_edit_command(sub: argparse._SubParsersAction) -> None:
    """``bank edit``: apply named directions to seeds or photos, a labelled grid (flows/bank_edit.py)."""
    from flows.cli_args import add_conditioning_arguments, add_precision_argument, ints

    edit = sub.add_parser("edit", help="apply a bank's directions to seeds or your photos: a labelled grid PNG")
    edit.add_argument("url", help="the bank")
    edit.add_argument("--version", default="latest")
    edit.add_argument("--model", required=True, help="the bank's model (built-in name, folder or hub id)")
    inputs = edit.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--seeds", type=ints, help="sample seeds, e.g. 0,1,2")
    inputs.add_argument("--image", nargs="+", help="photo files (any size: centre-cropped and resized)")
    inputs.add_argument("--images", help="a folder of photos (.png, .jpg, .jpeg)")
    edit.add_argument(
        "--set", action="append", default=[], help="one row of edits that add, e.g. smile=2,hat=-1; repeatable"
    )
    edit.add_argument("--sweep", action="append", default=[], help="rows along one direction, e.g. smile=-2:2:5")
    edit.add_argument("--out", required=True, help="the grid, a .png file")
    edit.add_argument("--json", action="store_true", help="print what was written (and photo errors) as JSON")
    edit.add_argument("--no-progress", action="store_true", help="no progress bar")
    edit.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(edit, default=None, note="(default: the bank's)")
    add_conditioning_arguments(edit, edit_branch=True, default="the bank's")
    edit.set_defaults(func=_edit)


def _edit(args: argparse.Namespace) -> int:
    import sys

    from flows.bank_edit import edit_grid, parse_set, parse_sweep
    from flows.cli_args import png_out
    from hspace.bank import load_bank
    from hspace.errors import HSpaceError
    from hspace.images import image_files
    from hspace.render import labeled_grid

    out = png_out(args.out)
    rows = [parse_set(v) for v in args.set] + [row for v in args.sweep for row in parse_sweep(v)]
    if not rows:
        raise HSpaceError("give at least one --set NAME=GAMMA or --sweep NAME=START:STOP:COUNT")
    bank = load_bank(args.url, args.version)
    model = bank_model(args, bank)
    photos = None if args.seeds else [str(p) for p in (args.image or image_files(args.images))]
    grid = edit_grid(
        model, bank, rows, seeds=args.seeds, photos=photos, photo_labels=photos, progress=not args.no_progress
    )
    labeled_grid(grid.cells, grid.row_labels, grid.column_labels).save(out, format="PNG")
    for photo in grid.photos:
        print(f"hspace: {photo['note']}", file=sys.stderr)
        if photo["warning"]:
            print(f"hspace: warning: {photo['photo']}: {photo['warning']}", file=sys.stderr)
    report = {"out": str(out), "rows": grid.row_labels, "columns": grid.column_labels, "photos": grid.photos}
    print(json.dumps(report) if args.json else f"written: {out}")
    return 0


def bank_model(args: argparse.Namespace, bank: Any) -> Any:
    """The model ``--model`` names, in ``--precision`` (default: the bank's), sampling with the bank's prompt,
    negative prompt and guidance unless the options give others (then refused, in one line, as a mismatch)."""
    from flows.cli_args import conditioning_arguments
    from hspace.conditioning import parse_conditioning
    from hspace.models import load_model

    conditioning = parse_conditioning(**conditioning_arguments(args), recorded=bank.conditioning)
    model = load_model(args.model, device=args.device, precision=args.precision or bank.precision)
    model = model.conditioned(conditioning)
    bank.check_model(model)
    return model
