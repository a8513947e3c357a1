"""`sector sphere run|stream|cancel` and `sector terasort gen|sort|validate`.

``sphere run MODULE:FUNCTION INPUT`` runs a UDF from an importable module (the current
directory is on the path, as for ``python -m``); ``sphere stream -c CMD INPUT`` pipes
each segment through a shell command on the nodes, the way the original's
``sphere_stream`` did (with ``-b N`` each output line's first token is its bucket).
Without ``--output`` the segments' output is written to stdout in segment order.
``sphere cancel JOB_ID`` cancels a running job (``sphere.api.cancel_job``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from sector.cli import output
from sector.cli.args import arg_type, import_named, parse_size, positive_int
from sector.errors import UsageError


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser], common: Any) -> None:
    s = cmd("sphere", "run user-defined functions where the data lives")
    sub = s.add_subparsers(dest="action", metavar="ACTION", required=True)

    def job_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("input", nargs="+", metavar="INPUT", help="files, directories or globs")
        p.add_argument("-o", "--output", metavar="DIR", help="Sector directory for the output")
        p.add_argument("-b", "--buckets", type=arg_type(positive_int), default=0)
        p.add_argument(
            "--records",
            type=arg_type(_records),
            default=None,
            metavar="KIND",
            help="file (whole files), lines, idx, or a record size in bytes",
        )
        p.add_argument("--replicas", type=arg_type(positive_int), default=None)
        p.add_argument("--max-unit", type=arg_type(parse_size), default=None, metavar="BYTES")
        p.add_argument("--no-speculate", action="store_true", help="no backup attempts")
        p.add_argument(
            "--required-file",
            action="append",
            default=[],
            dest="required_files",
            metavar="PATH",
            help="a Sector file (or directory) every engine sees in its working directory "
            "(repeatable)",
        )

    r = sub.add_parser("run", help="run MODULE:FUNCTION over INPUT", parents=[common])
    r.add_argument("udf", metavar="MODULE:FUNCTION")
    job_args(r)
    r.add_argument(
        "--param", type=arg_type(_json), metavar="JSON", default=None, help="passed as seg.param"
    )
    r.add_argument(
        "--reduce",
        metavar="MODULE:FUNCTION",
        default=None,
        help="with -b: run on each bucket's node over the whole bucket",
    )
    r.add_argument(
        "--reduce-records",
        type=arg_type(_reduce_records),
        default="file",
        metavar="KIND",
        help="how the reduce sees the bucket: file (one record), lines, a record size, "
        "or stream (parts not loaded: buckets larger than memory)",
    )

    k = sub.add_parser(
        "cancel",
        help="cancel a running job by id (yours, or any as an admin), whichever process "
        "drives it; its driver fails with 'job ... was cancelled'",
        parents=[common],
    )
    k.add_argument("job", metavar="JOB_ID", help="as the web page and /api/jobs show it")

    st = sub.add_parser(
        "stream", help="pipe each segment through a shell command", parents=[common]
    )
    st.add_argument("-c", "--command", dest="shell", required=True, metavar="SHELL_COMMAND")
    job_args(st)

    t = cmd("terasort", "TeraSort: generate, sort and validate 100-byte records")
    tsub = t.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = tsub.add_parser("gen", help="generate records on the nodes", parents=[common])
    g.add_argument("--records", type=arg_type(parse_size), required=True, metavar="N")
    g.add_argument("--files", type=arg_type(positive_int), default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--replicas", type=arg_type(positive_int), default=None)
    g.add_argument("path", metavar="DIR")
    so = tsub.add_parser(
        "sort", help="sort DIR into OUT (bucket by key range, sort each bucket)", parents=[common]
    )
    so.add_argument("--buckets", type=arg_type(positive_int), default=None)
    so.add_argument("--replicas", type=arg_type(positive_int), default=1)
    so.add_argument(
        "--stages",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: the sort is the bucket job's reduce (default); 2: a second job",
    )
    so.add_argument("src", metavar="DIR")
    so.add_argument("dst", metavar="OUT")
    v = tsub.add_parser(
        "validate", help="check OUT is sorted (and holds INPUT's records)", parents=[common]
    )
    v.add_argument("path", metavar="OUT")
    v.add_argument("--input", metavar="DIR", default=None)


# Checked as the command line is parsed (a usage error, before any connection).
def _reduce_records(spec: str) -> Any:
    if spec in ("file", "lines", "stream"):
        return spec
    got = _records(spec)
    if got == "idx":
        raise ValueError("must be file, lines, stream or a record size in bytes, not 'idx'")
    return got


def _records(spec: str) -> Any:
    if spec in ("file", "lines", "idx"):
        return spec
    try:
        n = parse_size(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"must be file, lines, idx or a record size in bytes, not {spec!r}")
    return n


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def _load_udf(spec: str) -> Callable[..., Any]:
    mod_name, fn_name, fn = import_named(spec, "UDF", "FUNCTION")
    if not callable(fn):
        raise UsageError(f"{mod_name} has no function {fn_name}")
    return fn


def run(c: Any, args: argparse.Namespace) -> None:
    progress = None if not args.json else False
    if args.command == "terasort":
        _terasort(c, args, progress)
        return
    if args.action == "cancel":
        rep = c.sphere.cancel(args.job)
        if args.json:
            output.emit_json(rep)
        else:
            output.echo(
                f"job {rep['job']}: cancelled on {rep['nodes']} node(s), "
                f"{rep['attempts_stopped']} running attempt(s) stopped"
            )
        return
    opts: dict[str, Any] = {
        "output": args.output,
        "buckets": args.buckets,
        "replicas": args.replicas,
        "speculate": not args.no_speculate,
        "required_files": args.required_files,
    }
    if args.max_unit:
        opts["max_unit"] = args.max_unit
        opts["min_unit"] = min(1 << 20, args.max_unit)
    records = args.records
    if args.action == "run":
        fn = _load_udf(args.udf)
        if args.param is not None:
            opts["param"] = args.param
        if args.reduce is not None:
            opts["reduce"] = _load_udf(args.reduce)
            opts["reduce_records"] = args.reduce_records
        name = args.udf
    else:
        from sector.sphere.stream import stream_udf

        fn = stream_udf
        opts["param"] = {"command": args.shell, "buckets": args.buckets}
        records = records or "lines"
        name = args.shell
    job = c.sphere.run(fn, args.input, records=records or "file", name=name, **opts)
    res = job.wait(progress=progress)
    if args.json:
        res = {k: v for k, v in res.items() if k != "results"}
        output.emit_json(res)
        if args.output is None:
            return
    if args.output is None:
        for chunk in res.get("results", []):
            output.write_bytes(chunk)
        return
    if not args.json:
        output.echo(
            f"job {res['job']}: {res['segments']} segments in {res['seconds']:.1f} s, "
            f"{len(res['files'])} files in {res['output']}"
        )


def _terasort(c: Any, args: argparse.Namespace, progress: bool | None) -> None:
    from sector.sphere import tsjob

    if args.action == "gen":
        res = tsjob.gen(
            c,
            args.path,
            args.records,
            files=args.files,
            seed=args.seed,
            replicas=args.replicas,
            progress=progress,
        )
        msg = f"generated {res['records']} records in {len(res['files'])} files ({res['seconds']:.1f} s)"
    elif args.action == "sort":
        res = tsjob.sort(
            c,
            args.src,
            args.dst,
            buckets=args.buckets,
            replicas=args.replicas,
            stages=args.stages,
            progress=progress,
        )
        msg = f"sorted {res['records']} records into {res['output']} ({res['seconds']:.1f} s)"
    else:
        res = tsjob.validate(c, args.path, input=args.input, progress=progress)
        msg = f"{res['path']}: {res['records']} records, checksum {res['checksum']}, " + (
            "sorted" if res["sorted"] else f"NOT sorted ({res['error']})"
        )
        if "same_records" in res:
            msg += (
                ", same records as the input"
                if res["same_records"]
                else ", records DIFFER from the input"
            )
    if args.json:
        output.emit_json({k: v for k, v in res.items() if k != "results"})
    else:
        output.echo(msg)
    if args.action == "validate" and not res["ok"]:
        from sector.errors import JobFailed

        raise JobFailed(res["error"] or "validation failed")
