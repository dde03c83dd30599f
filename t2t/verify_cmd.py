"""``t2t verify``: are an export folder's artifacts still the ones it verified? For CI.

Every built-ok artifact of the manifest: its files against the recorded sha256, loaded and run, and its
parity check again on the images the export used against the source checkpoint. Exit status 0 when every
one passes, 1 when one does not, 2 for a folder or option that cannot be checked. Only argparse and t2t.flags are
imported at module level.
"""

from __future__ import annotations

import argparse

from t2t import flags

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="re-check an export folder: sha256 of every artifact, load and run, parity again (exit 1 on a change)",
        description="Re-check every artifact an export folder lists as built ok: its files against the sha256 "
        "recorded at export, loaded and run through its runtime, and (unless --no-parity) the parity check again "
        "on the images the export used, against the checkpoint it was exported from. Exit status: 0 all pass, "
        "1 one or more do not, 2 bad input.",
    )
    p.add_argument("folder", metavar="DIR", help="export folder written by `t2t export` (holds manifest.json)")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="the reference checkpoint (default: the one the manifest records, also found beside a moved folder)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR|digits",
        help="images for the parity check (default: the folder the export recorded, the same sample)",
    )
    p.add_argument("--no-parity", action="store_true", help="check digests, loading and running only (fast)")
    flags.add(p, "--json", help="print the records as JSON")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    import json

    from deploy.export import verify_folder

    result = verify_folder(args.folder, checkpoint=args.checkpoint, data=args.data, parity=not args.no_parity)
    if args.json:
        doc = {"folder": str(result.folder), "ok": result.ok, "reference": result.reference}
        print(json.dumps(doc | {"problems": result.problems, "artifacts": result.results}, indent=2))
        return 0 if result.ok else 1
    for problem in result.problems:
        print(f"t2t verify: {problem}")
    for r in result.results:
        par = r.get("parity") or {}
        if r["ok"]:
            how = "sha256 unchanged, loads and runs"
            if par:
                how += f", parity passed (max |Δlogit| {par['max_abs_diff']:.2g}, top-1 agreement "
                how += f"{par['top1_agreement']:.3f})"
            print(f"{r['format']}: ok ({how})")
        else:
            print(f"{r['format']}: FAILED: {'; '.join(r['problems'])}")
    n_bad = sum(not r["ok"] for r in result.results)
    where = f"parity against {result.reference}" if result.reference else "parity not re-run"
    print(f"{len(result.results) - n_bad} of {len(result.results)} artifacts verified ({where})")
    return 0 if result.ok else 1
